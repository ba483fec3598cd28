"""Counting specimens once across overlapping views, and the tray mosaic."""

from __future__ import annotations

import numpy as np
import pytest

from napari_foram.frames import Frame
from napari_foram.mosaic import Mosaic
from napari_foram.tally.dedup import SpecimenRegistry


def test_same_specimen_seen_again_is_a_duplicate():
    reg = SpecimenRegistry()
    first = reg.match(np.array([[100.0, 100.0], [600.0, 100.0]]), np.array([200.0, 200.0]))
    assert first.tolist() == [-1, -1] and len(reg) == 2
    # 30 um away (centroid jitter between fields) is the same; 400 um away is new.
    again = reg.match(np.array([[130.0, 100.0], [100.0, 500.0]]), np.array([200.0, 200.0]))
    assert again.tolist() == [0, -1] and len(reg) == 3


def test_neighbours_closer_than_their_size_but_distinct_small_specimens():
    reg = SpecimenRegistry(tolerance_fraction=0.5, min_tolerance_um=5)
    out = reg.match(np.array([[0.0, 0.0], [60.0, 0.0]]), np.array([100.0, 100.0]))
    # 60 um apart with 100 um diameters: tolerance 50 um, so two specimens.
    assert out.tolist() == [-1, -1]


def test_one_batch_never_counts_one_specimen_twice():
    reg = SpecimenRegistry()
    out = reg.match(np.array([[0.0, 0.0], [5.0, 0.0]]), np.array([150.0, 150.0]))
    assert out.tolist() == [-1, 0]


def test_mismatched_lengths_refused():
    with pytest.raises(ValueError, match="positions but"):
        SpecimenRegistry().match(np.zeros((2, 2)), np.zeros(3))


def test_mosaic_pastes_frames_where_the_stage_was():
    world = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    px = 2.0
    # Two 20x30 fields whose centres sit at world pixel (9.5, 14.5) and (29.5, 44.5).
    fields = [((0, 0), world[0:20, 0:30]), ((20, 30), world[20:40, 30:60])]
    frames = [
        Frame(img, stage_xy_um=((c + 14.5) * px, (r + 9.5) * px), pixel_size_um=px)
        for (r, c), img in fields
    ]
    mosaic = Mosaic.covering([f.stage_xy_um for f in frames], (20, 30), px)
    assert mosaic.image.shape == (40, 60, 3)
    for f in frames:
        assert mosaic.paste(f)
    assert np.array_equal(mosaic.image[0:20, 0:30], world[0:20, 0:30])
    assert np.array_equal(mosaic.image[20:40, 30:60], world[20:40, 30:60])
    assert not mosaic.paste(Frame(world[:5, :5]))
