"""Frame sources a counting session consumes (`napari_foram.session.FrameSource`).

- `MicroManagerSource`: a Micro-Manager core (the real C++ `CMMCorePlus` with a lab's
  configuration, or the simulated microscope's `UniMMCore`): snaps, live streams and MDA
  tray scans, through the adapter (`_mm.py`, `_mm_scan.py`).
- `ReplaySource`: frames taken earlier, replayed in the order they were taken, with pause
  and stop: the base of the two below, and of any camera outside Micro-Manager whose
  frames arrive as an iterable.
- `SavedScanSource`: a tray scan saved as OME-Zarr (``--save-raw``).
- `FolderSource`: the images of a folder, in natural order, as fields without stage
  positions (each is counted on its own: there is nothing to de-duplicate across).

None of them imports pymmcore-plus: the adapter modules do, and this one calls them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_foram.frames import IMAGE_SUFFIXES, Frame, natural_key, read_image
from napari_foram.reasons import one_line

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

__all__ = ["FolderSource", "MicroManagerSource", "ReplaySource", "Replayed", "SavedScanSource"]


class MicroManagerSource:
    """Frames of a Micro-Manager core (the session's default for a core)."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def snap(self, index: int = 0) -> Frame:
        """One image snapped by the core's camera now, at stage position and focus as they are."""
        from napari_foram.acquire import snap_frame

        return snap_frame(self.core, index=index)

    def stream(self, emit: Callable[[Frame], None]) -> Any:
        """The core's live mode as a `LiveStream` handing each camera image to `emit`."""
        from napari_foram.acquire import LiveStream

        return LiveStream(self.core, emit)

    def acquire(
        self,
        plan: Any,
        emit: Callable[[Frame], None],
        *,
        hardware_sequencing: bool = False,
        save_to: str | Path | None = None,
    ) -> Any:
        """Run `plan` (an MDA sequence) on the core with `run_scan`; its `ScanResult`."""
        from napari_foram.acquire import run_scan

        return run_scan(
            self.core,
            plan,
            on_frame=emit,
            hardware_sequencing=hardware_sequencing,
            save_to=save_to,
        )

    def layout(self, plan: Any) -> tuple[int, int]:
        """(distinct stage positions, focal planes per field) of the MDA sequence `plan`."""
        from napari_foram.acquire import sequence_xy_positions, sequence_z_planes

        return len(sequence_xy_positions(plan)) or 1, sequence_z_planes(plan)

    def cancel(self) -> None:
        """Ask the core's running MDA to stop after the current field (`cancel_scan`)."""
        from napari_foram.acquire import cancel_scan

        cancel_scan(self.core)

    def pause(self, paused: bool) -> None:
        """Pause (or resume) the core's running MDA after the current field; the stage stays."""
        from napari_foram.acquire import pause_scan

        pause_scan(self.core, paused)


@dataclass(frozen=True)
class Replayed:
    """What a replay did (the fields a session reads of an acquisition)."""

    frames_delivered: int
    error: str | None
    cancelled: bool


class ReplaySource:
    """Frames replayed in order: `acquire` hands each to the session, honouring pause and
    stop between frames. `frames` is called anew for every replay.
    """

    def __init__(
        self, frames: Callable[[], Iterable[Frame]], *, fields: int, z_planes: int = 1
    ) -> None:
        self._frames = frames
        self._fields, self._z_planes = max(int(fields), 1), max(int(z_planes), 1)
        self._cancel = threading.Event()
        self._running = threading.Event()
        self._running.set()

    def snap(self, index: int = 0) -> Frame:
        """Frame `index` of the replay (read anew); a `ValueError` past the last one."""
        for i, frame in enumerate(self._frames()):
            if i == index:
                return frame
        raise ValueError(f"there is no frame {index} to snap")

    def stream(self, emit: Callable[[Frame], None]) -> Any:
        """Never a stream: a replay has no live view (`ValueError` saying to scan instead)."""
        raise ValueError(f"{type(self).__name__} has no live view: count it as a scan")

    def acquire(
        self,
        plan: Any,
        emit: Callable[[Frame], None],
        *,
        hardware_sequencing: bool = False,
        save_to: str | Path | None = None,
    ) -> Replayed:
        """Hand every frame to `emit` in order, waiting while paused; how far it got.

        `plan` and `hardware_sequencing` mean nothing to a replay; `save_to` is refused
        (`ValueError`): the frames are saved already. An unreadable frame ends the replay
        with its reason in `Replayed.error`.
        """
        if save_to is not None:
            raise ValueError("these frames are saved already: nothing to save again")
        self._cancel.clear()
        self._running.set()
        delivered = 0
        frames = iter(self._frames())
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except Exception as exc:  # an unreadable frame ends the replay with its reason
                return Replayed(delivered, one_line(exc), self._cancel.is_set())
            while not self._running.wait(0.05):
                if self._cancel.is_set():
                    break
            if self._cancel.is_set():
                return Replayed(delivered, None, True)
            emit(frame)  # the receiver's errors are the receiver's: they propagate
            delivered += 1
        return Replayed(delivered, None, self._cancel.is_set())

    def layout(self, plan: Any) -> tuple[int, int]:
        """(fields, focal planes per field) given at construction, whatever `plan` is."""
        return self._fields, self._z_planes

    def cancel(self) -> None:
        """Stop the running replay before its next frame (releasing a pause)."""
        self._cancel.set()
        self._running.set()

    def pause(self, paused: bool) -> None:
        """Hold (True) or release (False) the running replay between frames."""
        if paused:
            self._running.clear()
        else:
            self._running.set()


class SavedScanSource(ReplaySource):
    """A tray scan saved as OME-Zarr, replayed at its stage positions (overlapping fields
    count each specimen once, z-stacks are fused, as the live scan did).
    """

    def __init__(self, path: str | Path) -> None:
        from napari_foram.acquire.saved import read_saved_scan

        self.scan = read_saved_scan(path)
        super().__init__(
            self.scan.frames, fields=len(self.scan.series), z_planes=self.scan.z_planes
        )


class FolderSource(ReplaySource):
    """The images of a folder (natural order), as fields at no stage position."""

    def __init__(self, folder: str | Path, *, pixel_size_um: float | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"{self.folder}: not a folder")
        self.files = sorted(
            (
                p
                for p in self.folder.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            ),
            key=lambda p: natural_key(p.name),
        )
        if not self.files:
            raise ValueError(f"{self.folder}: no images")
        self.pixel_size_um = pixel_size_um
        super().__init__(self._read, fields=len(self.files))

    def _read(self) -> Iterator[Frame]:
        for i, path in enumerate(self.files):
            yield Frame(
                image=read_image(path),
                index=i,
                pixel_size_um=self.pixel_size_um,
                timestamp=time.time(),
                source=str(path),
            )
