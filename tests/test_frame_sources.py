"""Frame sources: a session counts a folder, a replay or a saved scan as it counts a core."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from napari_foram.acquire.sources import FolderSource, MicroManagerSource, ReplaySource
from napari_foram.frames import Frame
from napari_foram.pipeline import CountingPipeline
from napari_foram.session import CountingSession, FrameSource, frame_source
from napari_foram.synthetic import render_tray


@pytest.fixture(scope="module")
def trays() -> list[np.ndarray]:
    return [render_tray(seed=s, n_specimens=6, shape=(400, 560)).image for s in (1, 2, 3)]


def test_a_folder_is_counted_field_by_field(trays, tmp_path, random_predictor):
    for i, image in enumerate(trays):
        Image.fromarray(image).save(tmp_path / f"field_{i + 1}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    source = FolderSource(tmp_path, pixel_size_um=None)
    assert isinstance(source, FrameSource)
    assert [p.name for p in source.files] == ["field_1.png", "field_2.png", "field_3.png"]
    assert np.array_equal(source.snap(1).image, trays[1])
    pipeline = CountingPipeline(random_predictor)
    seen: list[int] = []
    report = CountingSession(pipeline).scan(
        source, None, on_result=lambda r: seen.append(r.frame.index)
    )
    assert report.error is None and report.frames_processed == 3 and seen == [0, 1, 2]
    expected = sum(
        len(CountingPipeline(random_predictor).process(Frame(image=im, index=i)).new_rows)
        for i, im in enumerate(trays)
    )
    assert report.specimens_counted == expected > 0
    with pytest.raises(ValueError, match="no live view"):
        CountingSession(pipeline).live(source, max_frames=1)


def test_a_replay_pauses_and_stops_between_frames(trays, random_predictor):
    frames = [Frame(image=trays[i % 3], index=i) for i in range(8)]
    handed = threading.Event()
    release = threading.Event()

    def slow_frames():
        for frame in frames:
            yield frame
            if frame.index == 1:
                handed.set()
                release.wait(10)  # hold here until the test has paused the replay

    source = ReplaySource(slow_frames, fields=8)
    session = CountingSession(CountingPipeline(random_predictor))
    out: dict[str, object] = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", session.scan(source, None)))
    thread.start()
    assert handed.wait(30)
    session.pause()
    release.set()
    processed_at_pause = session.stats()["processed"]
    thread.join(0.5)
    assert thread.is_alive()  # held: the replay waits between frames
    session.stop()
    thread.join(30)
    report = out["r"]
    assert report.error.startswith("stopped after field")  # type: ignore[attr-defined]
    assert report.frames_acquired <= 3 and processed_at_pause <= 3  # type: ignore[attr-defined]


def test_a_core_is_wrapped_and_a_source_passes_through(trays):
    source = ReplaySource(lambda: [Frame(image=trays[0], index=0)], fields=1)
    assert frame_source(source) is source
    assert isinstance(frame_source(object()), MicroManagerSource)
