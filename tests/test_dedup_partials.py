"""Views cut by a field edge: counted once when nothing counted whole explains them.

Fields are drawn windows of one drawn tray (bright shapes on a dark tray), placed at their
stage positions; the counts come from the real pipeline (detector, registry, classifier
with random weights, no store).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_foram.detect import DetectionParams
from napari_foram.frames import Frame
from napari_foram.tally.dedup import SpecimenRegistry

PIXEL_UM = 2.5
# The drawn tray has no wall: nothing at a field's edge is tray border.
PARAMS = DetectionParams(mask_border=False)


def _tray(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    return np.full(shape, 20, np.uint8), yy, xx


def _field(tray: np.ndarray, index: int, rows: slice, cols: slice) -> Frame:
    """Tray pixels rows x cols as a frame; tray pixel (r, c) lies at (c, r) * PIXEL_UM."""
    centre = (
        (cols.start + cols.stop - 1) / 2 * PIXEL_UM,
        (rows.start + rows.stop - 1) / 2 * PIXEL_UM,
    )
    return Frame(tray[rows, cols], index=index, stage_xy_um=centre, pixel_size_um=PIXEL_UM)


def _touching_pair() -> tuple[Frame, Frame]:
    """A tube with a round specimen against its side, lower down; a field seeing both
    whole, and one whose bottom edge cuts through both.

    The whole view tells the two apart; in the cut view they are one object, whose box
    neither specimen's box holds (the tube rises above the round one, which reaches
    left of the tube), nor the union of the two boxes (its top-left corner is empty).
    """
    tray, yy, xx = _tray((700, 700))
    tray[((yy - 380) / 130.0) ** 2 + ((xx - 400) / 38.0) ** 2 <= 1] = 200  # the tube
    tray[(yy - 420) ** 2 + (xx - 323) ** 2 <= 45**2] = 200  # the round one, touching
    whole = _field(tray, 0, slice(100, 700), slice(0, 700))
    cut = _field(tray, 1, slice(0, 420), slice(0, 700))
    return whole, cut


@pytest.mark.parametrize("whole_first", [True, False], ids=["whole_first", "cut_first"])
def test_cut_view_of_a_touching_pair_counted_whole_elsewhere_is_not_counted_again(
    random_predictor, whole_first
):
    from napari_foram.pipeline import CountingPipeline

    whole, cut = _touching_pair()
    pipeline = CountingPipeline(random_predictor, detection=PARAMS, mc_samples=1)
    frames = [whole, cut] if whole_first else [cut, whole]
    results = {f.index: pipeline.process(f) for f in frames}
    # The situation under test: two whole specimens here, one object cut by the edge there.
    assert len(results[whole.index].new_rows) == 2
    assert len(results[cut.index].detections) == 1
    assert results[cut.index].detections.at_edge.all()
    assert pipeline.finish() == []
    assert pipeline.specimens_counted == 2


def test_specimens_only_ever_seen_cut_are_counted_once_each(random_predictor):
    from napari_foram.pipeline import CountingPipeline

    # Two specimens on the scan's bottom edge (the tray goes on beyond the last row of
    # fields), each cut in two overlapping fields, and a whole one beside them.
    tray, yy, xx = _tray((600, 900))
    for cx in (330, 560):
        tray[(yy - 420) ** 2 + (xx - cx) ** 2 <= 50**2] = 200
    tray[(yy - 200) ** 2 + (xx - 450) ** 2 <= 50**2] = 200
    pipeline = CountingPipeline(random_predictor, detection=PARAMS, mc_samples=1)
    for i, cols in enumerate([slice(0, 650), slice(250, 900)]):
        result = pipeline.process(_field(tray, i, slice(0, 420), cols))
        assert len(result.new_rows) == (1 if i == 0 else 0)  # the whole one, once
    cut_only = pipeline.finish()
    assert len(cut_only) == 2 and pipeline.specimens_counted == 3
    # Each near its true centre (the visible half: above it), one per specimen.
    x_um = sorted(float(r.sample_xy_um[0, 0]) for r in cut_only)
    assert np.allclose(x_um, [330 * PIXEL_UM, 560 * PIXEL_UM], atol=10)


def test_covers_pixels_needs_the_pixels_inside_known_extents():
    reg = SpecimenRegistry()
    # Two touching specimens' extents: a tall one, and a round one left of it, lower.
    reg.register(
        np.array([[1000.0, 950.0], [820.0, 1050.0]]),
        np.array([200.0, 225.0]),
        np.array([[905.0, 625.0, 1095.0, 1275.0], [707.0, 937.0, 932.0, 1162.0]]),
    )
    # The top of both, as one cut object: an L of pixels whose box corner is empty.
    tube = np.stack(np.meshgrid(np.arange(910, 1090, 5.0), np.arange(630, 1050, 5.0)), -1)
    round_top = np.stack(np.meshgrid(np.arange(712, 905, 5.0), np.arange(950, 1050, 5.0)), -1)
    cut = np.concatenate([tube.reshape(-1, 2), round_top.reshape(-1, 2)])
    # The box's corner (min x, min y) lies in no known extent: a test on the box fails.
    assert not reg.covers_pixels(cut.min(axis=0)[None, :])
    assert reg.covers_pixels(cut)  # the two together hold every pixel
    # A new specimen beside them: some of its pixels in a known extent, most not.
    beside = np.stack(np.meshgrid(np.arange(1050, 1250, 5.0), np.arange(630, 800, 5.0)), -1)
    assert not reg.covers_pixels(beside.reshape(-1, 2))
    assert not SpecimenRegistry().covers_pixels(cut)
