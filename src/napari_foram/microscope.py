"""Counting at the microscope: one object that the live widget and `napari-foram live` share.

`MicroscopeCounter` holds a microscope (a Micro-Manager configuration, or the built-in simulated
tray), a classifier, a tally store and the sample being counted. It switches samples in
one call, and runs snaps, live preview and tray scans through a `CountingSession`
(blocking calls: the widget runs them on a worker thread, the command line in its own).
No Qt here; no pymmcore-plus either (that lives in the adapter, `acquire._mm*`).
"""

from __future__ import annotations

import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_foram.defaults import MC_SAMPLES
from napari_foram.demo_scene import SimulatedMicroscopeSettings
from napari_foram.detect import DetectionParams

if TYPE_CHECKING:
    from collections.abc import Callable

    from napari_foram.acquire import MicroscopeCapabilities
    from napari_foram.classify.predict import Predictor
    from napari_foram.demo_scene import SimulatedMicroscopeRig
    from napari_foram.frames import Frame
    from napari_foram.pipeline import CountingPipeline, FrameResult
    from napari_foram.session import CountingSession, ScanReport
    from napari_foram.tally.stats import UnsureRule
    from napari_foram.tally.store import SampleRecord, TallyStore

#: The count most census protocols aim for per sample (Fatela & Taborda 2002 and the
#: study: ~300 specimens give percentages to a few per cent).
DEFAULT_TARGET_COUNT = 300


class MicroscopeCounter:
    """A microscope, a classifier and a tally store, counting one sample at a time.

    Parameters
    ----------
    predictor
        The classifier (built once; reused for every sample).
    store
        The tally store written to (open for writing; its classes must be the model's).
    mc_samples
        Monte Carlo dropout passes per specimen.
    detection
        Detector settings.
    target_count
        Specimens wanted per sample; `progress` reports against it.
    """

    def __init__(
        self,
        predictor: Predictor,
        store: TallyStore,
        *,
        mc_samples: int = MC_SAMPLES,
        detection: DetectionParams | None = None,
        target_count: int = DEFAULT_TARGET_COUNT,
    ) -> None:
        if list(store.class_names) != list(predictor.info.class_names):
            raise ValueError(
                f"the store counts {store.class_names} but the model predicts "
                f"{list(predictor.info.class_names)}: use another store or model"
            )
        self.predictor = predictor
        self.store = store
        self.mc_samples = int(mc_samples)
        self.detection = detection or DetectionParams()
        self.target_count = int(target_count)
        self.core: Any = None
        # A core napari-micromanager (or pymmcore-gui) opened: used, never unloaded.
        self.core_is_shared = False
        self.capabilities: MicroscopeCapabilities | None = None
        self.rig: SimulatedMicroscopeRig | None = None
        self.microscope_info: dict[str, Any] = {}
        self.sample_id: str | None = None
        self.pipeline: CountingPipeline | None = None
        self.session: CountingSession | None = None
        self._snaps = 0

    # ---------------------------------------------------------------- microscope
    def connect_simulated(self, settings: SimulatedMicroscopeSettings | None = None) -> None:
        """Use the built-in simulated microscope over a synthetic tray."""
        from napari_foram.demo_scene import build_simulated_rig

        self.rig = build_simulated_rig(settings or SimulatedMicroscopeSettings())
        self._disconnect()
        self.core = self.rig.core
        self.microscope_info = self.rig.describe()
        self._check_microscope()

    def connect_config(
        self, path: str | Path, *, adapter_path: str | Path | None = None, core: Any = None
    ) -> None:
        """Use a Micro-Manager hardware configuration file (real device adapters), found
        in `adapter_path` or where ``MICROMANAGER_PATH`` / ``mmcore use`` point; `core`:
        one `acquire.load_config_core` already loaded with it (this counter owns it).
        """
        from napari_foram.acquire import load_config_core

        if core is None:
            core = load_config_core(path, adapter_path=adapter_path or None)
        self._disconnect()
        self.core, self.rig = core, None
        self.microscope_info = {"microscope": "Micro-Manager", "config": str(path)}
        self._check_microscope()

    def connect_shared(self, core: Any = None) -> None:
        """Use the microscope napari-micromanager or pymmcore-gui already opened in this
        process: `core` (napari-micromanager's window's), else ``CMMCorePlus.instance()``.
        Its configuration is theirs: closing this counter leaves it loaded and unchanged.
        """
        from napari_foram.acquire import shared_core

        core = shared_core(core)
        self._disconnect()
        self.core, self.rig, self.core_is_shared = core, None, True
        config = ""
        with suppress(Exception):
            config = str(core.systemConfigurationFile() or "")
        self.microscope_info = {"microscope": "Micro-Manager (shared core)", "config": config}
        self._check_microscope()

    def _check_microscope(self) -> None:
        """The configuration check: what the microscope can do, kept with the provenance."""
        from napari_foram.acquire import microscope_capabilities

        self.capabilities = microscope_capabilities(self.core)
        if not self.capabilities.can_snap:
            why = self.capabilities.notes[0]
            self._disconnect()
            raise ValueError(why)
        # What the source says of itself (the simulated tray's description) wins.
        self.microscope_info = {**self.capabilities.as_dict(), **self.microscope_info}

    def _disconnect(self) -> None:
        """Let go of the current microscope: a core this counter loaded is unloaded (the
        hardware is free for other programs), a shared one is left as it is.
        """
        from napari_foram.acquire import release_core

        self.stop()
        if self.core is not None and self.rig is None and not self.core_is_shared:
            release_core(self.core)
        self.core, self.core_is_shared, self.capabilities = None, False, None

    def _need_core(self) -> Any:
        if self.core is None:
            raise ValueError("no microscope: connect the simulated one or a configuration")
        return self.core

    def mm_core(self) -> Any:
        """The connected Micro-Manager core (a `CMMCorePlus`; `UniMMCore` for the
        simulated microscope), for pymmcore-widgets' controls; None before connecting.
        """
        return self.core

    def viewing_live(self) -> bool:
        """Whether a view-only live view (pymmcore-widgets' Live) runs on the core: nothing
        of it is counted (another tool's acquisition is not one).
        """
        from napari_foram.acquire import view_stream_running

        return self.core is not None and not self.busy and view_stream_running(self.core)

    def stop_viewing(self) -> None:
        """End a view-only live view: counting needs the camera."""
        from napari_foram.acquire import stop_view_stream

        if self.viewing_live():
            stop_view_stream(self.core)

    def viewed_frame(self) -> Frame | None:
        """The camera's newest picture from a view-only snap or live view, as a `Frame`
        placed where the stage stands (None if there is none); never counted.
        """
        from napari_foram.acquire import viewed_frame

        return None if self.core is None else viewed_frame(self.core)

    def frame_shape(self) -> tuple[int, ...]:
        """Shape of the frames the connected camera delivers."""
        from napari_foram.acquire import camera_frame_shape

        return camera_frame_shape(self._need_core())

    # ---------------------------------------------------------------- samples
    def start_sample(self, record: SampleRecord) -> int:
        """Count into `record`'s sample from now on (created, or resumed if stored).

        Returns the number of specimens the sample already holds. Refused while an
        acquisition runs: stop it first.
        """
        from napari_foram.pipeline import CountingPipeline
        from napari_foram.session import CountingSession

        if self.busy:
            raise ValueError("an acquisition is running: stop it before switching sample")
        if record.sample_id not in self.store.samples():
            self.store.add_sample(record)
        pipeline = CountingPipeline(
            self.predictor,
            store=self.store,
            sample_id=record.sample_id,
            detection=self.detection,
            mc_samples=self.mc_samples,
        )
        if self.microscope_info:
            self.store.set_provenance(
                record.sample_id, {**pipeline.provenance(), **self.microscope_info}
            )
        self.sample_id, self.pipeline = record.sample_id, pipeline
        self.session = CountingSession(pipeline)
        return self.store.n_specimens(record.sample_id)

    def _need_session(self) -> CountingSession:
        if self.session is None:
            raise ValueError("no sample: fill in the sample record and start it first")
        return self.session

    @property
    def busy(self) -> bool:
        """Whether a live preview or a scan is running."""
        return self.session is not None and self.session.mode in ("live", "scan")

    # ---------------------------------------------------------------- acquisition
    def snap(self) -> FrameResult:
        """Take and count one frame."""
        core, session = self._need_core(), self._need_session()
        self._snaps += 1
        return session.snap(core, index=self._snaps - 1)

    def live(
        self,
        *,
        max_frames: int | None = None,
        max_seconds: float | None = None,
        on_result: Callable[[FrameResult], None] | None = None,
    ) -> ScanReport:
        """Live preview until `stop` (blocking)."""
        core, session = self._need_core(), self._need_session()
        return session.live(
            core, max_frames=max_frames, max_seconds=max_seconds, on_result=on_result
        )

    def plan_scan(
        self,
        rows: int,
        cols: int,
        overlap: float,
        *,
        z_planes: int = 1,
        z_step_um: float = 30.0,
    ) -> Any:
        """The MDA sequence of a tray scan of rows x cols fields: centred on the simulated
        tray, or on where the stage stands with a real microscope. ``z_planes > 1`` takes
        a z-stack per field (`z_step_um` apart, around the current focus), counted from
        its fused extended-depth-of-field image.
        """
        from napari_foram.acquire import tray_scan_sequence

        core = self._need_core()
        caps = self.capabilities
        if caps is not None and not caps.can_scan:
            raise ValueError(next(n for n in caps.notes if not n.startswith("No Z")))
        if caps is not None and z_planes > 1 and not caps.can_z_stack:
            raise ValueError(next(n for n in caps.notes if n.startswith("No Z")))
        if self.rig is not None:
            return self.rig.grid_sequence(
                rows, cols, overlap, z_planes=z_planes, z_step_um=z_step_um
            )
        return tray_scan_sequence(
            core,
            rows=rows,
            cols=cols,
            overlap_fraction=overlap,
            z_planes=z_planes,
            z_step_um=z_step_um,
        )

    def field_positions(self, sequence: Any) -> list[tuple[float, float]]:
        """Stage positions (x_um, y_um) of the fields a planned scan will image."""
        from napari_foram.acquire import sequence_xy_positions

        return sequence_xy_positions(sequence)

    def pixel_size_um(self) -> float | None:
        """Micrometres per camera pixel (None if the configuration has none)."""
        from napari_foram.acquire import camera_pixel_size_um

        return camera_pixel_size_um(self._need_core())

    def scan(
        self,
        rows: int,
        cols: int,
        overlap: float,
        *,
        on_result: Callable[[FrameResult], None] | None = None,
        progress: Callable[..., None] | None = None,
        hardware_sequencing: bool = False,
        z_planes: int = 1,
        z_step_um: float = 30.0,
        sequence: Any = None,
        save_raw: str | Path | None = None,
    ) -> ScanReport:
        """Run a tray scan (blocking): `sequence` from `plan_scan`, or planned here.

        `save_raw` keeps the raw frames (a new ``*.ome.zarr`` folder, see
        `acquire.run_scan`) and links them from the sample's provenance, so a count can
        be audited and recounted (`session.count_saved_scan`, ``napari-foram batch``).
        """
        core, session = self._need_core(), self._need_session()
        if sequence is None:
            sequence = self.plan_scan(rows, cols, overlap, z_planes=z_planes, z_step_um=z_step_um)
        if save_raw is not None:
            assert self.sample_id is not None  # _need_session: a sample is started
            # Linked before the scan: frames written by a scan that stops early are
            # still the sample's.
            # still the sample's. A whole entry (the latest plus the link): readers take
            # the model and the pixel size from the latest entry.
            self.store.set_provenance(
                self.sample_id,
                {
                    **self.store.provenance(self.sample_id),
                    "raw_frames": str(Path(save_raw).resolve()),
                    # Colour frames go through the adapter's own writer (the sink's
                    # writes mono frames only).
                    "raw_frames_writer": (
                        "napari-foram (ome-writers)"
                        if len(self.frame_shape()) == 3
                        else "pymmcore-plus (ome-writers)"
                    ),
                },
            )
        return session.scan(
            core,
            sequence,
            on_result=on_result,
            progress=progress,
            hardware_sequencing=hardware_sequencing,
            save_to=save_raw,
        )

    def stop(self) -> None:
        """Stop the running live preview or scan (any thread)."""
        if self.session is not None:
            self.session.stop()

    def pause(self, paused: bool = True) -> None:
        """Pause or resume the running tray scan (any thread)."""
        self._need_session().pause(paused)

    # ---------------------------------------------------------------- read-outs
    @property
    def unsure_rule(self) -> UnsureRule:
        """The classifier's unsure rule (empty if it has none): what the pipeline records
        in the sample's provenance, so counting new predictions with it agrees with the
        store's `sample_summary`.
        """
        from napari_foram.tally.columns import model_unsure_rule
        from napari_foram.tally.stats import UnsureRule

        return UnsureRule.from_dict(model_unsure_rule(self.predictor.info))

    def summary(self) -> dict[str, Any] | None:
        """`TallyStore.sample_summary` of the current sample (None before one is started):
        the numbers the tally widget and the exports show.
        """
        if self.sample_id is None:
            return None
        return self.store.sample_summary(self.sample_id, target=self.target_count)

    def tally(self) -> dict[str, int]:
        """Counts per class of the current sample, as stored (reviewed labels win; the
        specimens the model's unsure rule calls unsure are in no class: `unsure`).
        """
        names = list(self.store.class_names)
        summary = self.summary()
        if summary is None:
            return dict.fromkeys(names, 0)
        return {name: int(n) for name, n in zip(names, summary["counts"], strict=True)}

    def unsure(self) -> int:
        """Specimens of the current sample the model's unsure rule puts in no class."""
        summary = self.summary()
        return 0 if summary is None else int(summary["n_unsure"])

    def progress(self) -> tuple[int, int]:
        """(specimens counted in a class in the sample, target count)."""
        return sum(self.tally().values()), self.target_count

    def stats(self) -> dict[str, float]:
        """Frames processed and dropped, backlog and frames per second of the session."""
        if self.session is None:
            return {"processed": 0, "dropped": 0, "backlog": 0, "frames_per_s": 0.0}
        return self.session.stats()

    def close(self) -> None:
        """Stop anything running, let go of the microscope (a shared core keeps its
        configuration) and close the store.
        """
        self._disconnect()
        self.store.close()


def open_or_create_store(path: str | Path, class_names: list[str]) -> TallyStore:
    """The store at `path` opened for writing, created for `class_names` if absent."""
    from napari_foram.tally.store import TallyStore

    path = Path(path)
    if path.exists():
        return TallyStore.open(path, mode="a")
    path.parent.mkdir(parents=True, exist_ok=True)
    return TallyStore.create(path, classes=class_names)


def default_store_path(root: str | Path | None = None) -> Path:
    """``~/napari-foram-runs/live-<date-time>.zarr`` (or under `root`)."""
    base = Path(root) if root is not None else Path.home() / "napari-foram-runs"
    return base / f"live-{time.strftime('%Y%m%d-%H%M%S')}.zarr"
