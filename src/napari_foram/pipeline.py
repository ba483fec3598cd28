"""frame -> detect -> de-duplicate -> classify -> store: the same code for every source.

`CountingPipeline.process(frame)` is what the live widget, the tray scan, the batch folder
runner and the demo all call, one frame at a time, on one worker thread.

The detector is a seam (`Detector`): the pipeline asks it for a frame's specimens and
their crops, and records what it says about itself. `StudyDetector` (the study's two-pass
connected-component detector, `napari_foram.detect`) is the default; another detector
(a learned one, another microscope's segmentation) is one class with the same two methods.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from napari_foram.defaults import MC_SAMPLES
from napari_foram.detect import DetectionParams, Detections, detect, equivalent_diameter
from napari_foram.frames import Frame
from napari_foram.tally.columns import model_provenance, specimen_columns
from napari_foram.tally.dedup import SpecimenRegistry

if TYPE_CHECKING:
    from napari_foram.classify.predict import Predictions, Predictor
    from napari_foram.tally.store import TallyStore


@runtime_checkable
class Detector(Protocol):
    """What the pipeline needs of a detector."""

    def __call__(self, frame: Frame) -> Detections:
        """The specimens of `frame`, each with its ``CROP_SIZE`` crop (``crops`` set)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """Its settings, JSON-ready: kept in the store's provenance as ``"detector"``."""
        ...


@dataclass(frozen=True)
class StudyDetector:
    """The study's connected-component detector (`napari_foram.detect.detect`) with
    `params`, at the frame's pixel size and its camera's bit depth.
    """

    params: DetectionParams = field(default_factory=DetectionParams)

    def __call__(self, frame: Frame) -> Detections:
        """The specimens `detect` finds in `frame` with `params`, each with its crop."""
        return detect(
            frame.image,
            self.params,
            pixel_size_um=frame.pixel_size_um,
            bit_depth=_frame_bit_depth(frame),
        )

    def to_dict(self) -> dict[str, Any]:
        """`params`, JSON-ready (`DetectionParams.to_dict`)."""
        return self.params.to_dict()


@dataclass
class FrameResult:
    """What one frame contributed.

    Attributes
    ----------
    detections
        Every object found in the frame, clipped ones included.
    new_rows
        Indices into `detections` of the specimens counted for the first time.
    duplicate_rows
        Indices of whole specimens already counted from an earlier frame.
    predictions
        Classification of the new specimens (same order as `new_rows`), or None if none.
    sample_xy_um
        (n, 2) sample coordinates of every detection (NaN without stage/pixel size).
    replaced_rows
        Indices of duplicates whose view was clearly sharper than the stored one: their
        crop, position in this frame and classification replaced the stored record.
    seconds
        Wall time spent on the frame, by stage.
    """

    frame: Frame
    detections: Detections
    new_rows: np.ndarray
    duplicate_rows: np.ndarray
    predictions: Predictions | None
    sample_xy_um: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)
    replaced_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class _Partial:
    """A specimen seen so far only cut by the frame edge (one sighting of it).

    Only a crop-sized stand-in of the frame is kept, not the frame: a scan would otherwise
    hold every field in memory until its end.
    """

    frame: Frame
    detections: Detections
    box_um: tuple[float, float, float, float]
    area_px: float
    #: (k, 2) its pixels in sample coordinates (`_pixels_um`): what decides whether
    #: specimens counted whole explain it (`SpecimenRegistry.covers_pixels`).
    points_um: np.ndarray

    @property
    def centre_um(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box_um
        return ((x0 + x1) / 2, (y0 + y1) / 2)


@dataclass
class _Staged:
    """One frame of a `process_many` batch between de-duplication and classification."""

    frame: Frame
    det: Detections
    xy: np.ndarray
    new_rows: np.ndarray
    new_of: np.ndarray | None  # registry entries of the new rows (None: no position)
    dup_rows: np.ndarray
    better: np.ndarray  # duplicates whose sharper view replaces the stored one
    better_of: np.ndarray
    t_detect: float
    t_dedup: float


def _boxes_overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


class CountingPipeline:
    """Turns frames into counted, classified specimens in a tally store.

    Parameters
    ----------
    predictor
        A built classifier (reused for every frame).
    store, sample_id
        Where counted specimens go; None keeps results in memory only.
    detection
        Settings of the default detector (`StudyDetector`); ignored with `detector`.
    detector
        Finds a frame's specimens (`Detector`); default: `StudyDetector(detection)`.
    mc_samples
        Monte Carlo dropout passes per specimen (1 = deterministic).
    include_clipped
        Count objects cut by the frame edge at once (off: wait for a whole view; what
        was only ever seen cut is counted once by `finish`).
    better_view_ratio
        A later whole view of a stored specimen replaces its crop and classification when
        its sharpness (`views_sharpness`) exceeds the stored view's by this factor (a
        specimen first seen out of focus, then in focus). None: never replace.
    keep_features
        Return each new specimen's pooled backbone features with its predictions
        (`Predictions.kept_features`) and keep them in the store, so that it can be
        classified again without the backbone (`napari_foram.reclassify`). Default: when
        writing into a store.
    """

    def __init__(
        self,
        predictor: Predictor,
        *,
        store: TallyStore | None = None,
        sample_id: str | None = None,
        detection: DetectionParams | None = None,
        mc_samples: int = MC_SAMPLES,
        include_clipped: bool = False,
        registry: SpecimenRegistry | None = None,
        better_view_ratio: float | None = 1.25,
        keep_features: bool | None = None,
        detector: Detector | None = None,
    ) -> None:
        if store is not None and not sample_id:
            raise ValueError("a sample_id is needed to write into a store")
        self.predictor = predictor
        self.store = store
        self.sample_id = sample_id
        self.detection = detection or DetectionParams()
        self.detector: Detector = detector or StudyDetector(self.detection)
        self.mc_samples = int(mc_samples)
        self.include_clipped = include_clipped
        self.registry = registry or SpecimenRegistry()
        #: Frames seen without stage position or pixel size: counted per frame, not deduped.
        self.frames_without_position = 0
        self.frames_processed = 0
        self.specimens_counted = 0
        #: Specimens found in the store when the pipeline started (a resumed sample).
        self.specimens_resumed = 0
        #: Specimens seen only cut by the frame edge so far (resolved by `finish`).
        self.partials: list[_Partial] = []
        self.better_view_ratio = better_view_ratio
        #: Stored specimens whose record a sharper view replaced.
        self.views_replaced = 0
        #: Stored specimens whose features could not be kept (int8 path, another backbone
        #: than the sample's): classified again later from their crops.
        self.features_not_kept = 0
        # Per registry entry: its row in the store (-1: not stored) and the sharpness of
        # the stored view (NaN: not measured yet, e.g. resumed from the store).
        self._store_row = np.zeros(0, dtype=np.int64)
        self._sharpness = np.zeros(0)
        self._provenance_checked = False
        self.keep_features = store is not None if keep_features is None else bool(keep_features)
        if store is not None and sample_id is not None:
            self._resume_from_store()
        self._book_registered()

    def _resume_from_store(self) -> None:
        """Continue a sample: specimens already in the store are known, never recounted."""
        assert self.store is not None and self.sample_id is not None
        if self.sample_id not in self.store.samples():
            return
        rows = self.store.read_specimens(
            self.sample_id,
            columns=["stage_x_um", "stage_y_um", "area_px", "bbox", "centroid_y", "centroid_x"],
        )
        xy = np.column_stack([rows["stage_x_um"], rows["stage_y_um"]])
        known = np.isfinite(xy).all(axis=1)
        if not known.any():
            return
        # The store keeps areas and boxes in pixels; the provenance keeps the pixel size
        # (the newest entry that has one: later entries may note other things).
        pixel_size = self.store.latest_provenance(self.sample_id, "pixel_size_um")
        if not pixel_size:
            raise ValueError(
                f"sample {self.sample_id!r} has stored positions but no pixel size in its "
                "provenance: cannot resume it without counting its specimens twice"
            )
        pixel_um = float(pixel_size)
        diam = equivalent_diameter(rows["area_px"][known]) * pixel_um
        # Extents in sample coordinates from each box around its centroid, so that a cut
        # view of a long specimen is still recognised as part of it (`covers`).
        bbox = rows["bbox"][known].astype(float)
        cy, cx = rows["centroid_y"][known], rows["centroid_x"][known]
        x, y = xy[known, 0], xy[known, 1]
        # A camera mounted turned or mirrored (its pixel-size affine transform, kept with
        # the microscope's provenance) maps pixel extents onto other stage axes.
        affine = self.store.latest_provenance(self.sample_id, "pixel_affine")
        a, b, c, d = (float(v) for v in affine) if affine else (pixel_um, 0, 0, pixel_um)
        dcols = (bbox[:, 1] - 0.5 - cx, bbox[:, 3] - 0.5 - cx)
        drows = (bbox[:, 0] - 0.5 - cy, bbox[:, 2] - 0.5 - cy)
        xs = np.array([x + a * dc + b * dr for dc in dcols for dr in drows])
        ys = np.array([y + c * dc + d * dr for dc in dcols for dr in drows])
        boxes = np.column_stack([xs.min(axis=0), ys.min(axis=0), xs.max(axis=0), ys.max(axis=0)])
        self.registry.register(xy[known], diam, boxes)
        self.specimens_resumed = int(known.sum())
        self._book_registered(store_rows=np.flatnonzero(known))

    def _record_provenance(self, frame: Frame) -> None:
        """Before the first rows: make sure the sample's provenance names this model, these
        settings and the pixel size (resuming needs it), adding an entry if not.
        """
        assert self.store is not None and self.sample_id is not None
        self._provenance_checked = True
        # A model that knows classes the store does not: the store's list grows (old
        # counts keep their classes), never a match by position.
        missing = [c for c in self.predictor.class_names if c not in self.store.class_names]
        if missing:
            self.store.add_classes(missing)
        latest = self.store.provenance(self.sample_id)
        wanted = self.provenance()
        if frame.pixel_size_um is not None:
            wanted["pixel_size_um"] = frame.pixel_size_um
        # A rule of an earlier model must not outlive it: this model has none.
        stale_rule = "unsure_rule" in latest and "unsure_rule" not in wanted
        if stale_rule or any(latest.get(k) != v for k, v in wanted.items()):
            dropped = ("set_at", "from_row", "unsure_rule")
            kept = {k: v for k, v in latest.items() if k not in dropped}
            self.store.set_provenance(self.sample_id, {**kept, **wanted})

    def provenance(self) -> dict[str, Any]:
        """Model and detector settings, for the store's per-sample record.

        The model's unsure rule goes in as ``"unsure_rule"`` when it has one (none: no
        key, so the records of old models stay as they were); the tally reads it back
        with `TallyStore.unsure_rule`.
        """
        info = self.predictor.info
        out: dict[str, Any] = {
            "model_sha256": info.sha256,
            "class_names": list(info.class_names),
            "mc_samples": self.mc_samples,
            "detector": self.detector.to_dict(),
            "include_clipped": self.include_clipped,
            "dedup_tolerance_fraction": self.registry.tolerance_fraction,
            **model_provenance(info),
            # Which compute path counted these specimens (fp32, bf16 or int8 conv blocks).
            "classify_precision": self.predictor.precision,
        }
        return out

    def process(self, frame: Frame) -> FrameResult:
        """Detect, de-duplicate, classify and store the specimens of one frame."""
        return self.process_many([frame])[0]

    def process_many(self, frames: list[Frame]) -> list[FrameResult]:
        """`process` for several frames, classifying all their new specimens in one batch.

        Frames are detected and de-duplicated in order (a specimen seen in two of them is
        counted in the first), then every new crop goes through the classifier in one call
        -- on a GPU one frame's ~100 crops leave it half idle -- and each frame's specimens
        are stored in frame order. Results equal those of `process` frame by frame.
        """
        staged = []
        for frame in frames:
            t0 = time.perf_counter()
            det = self.detector(frame)
            if det.crops is None:
                raise ValueError(f"the detector {self.detector!r} cut no crops")
            t1 = time.perf_counter()
            xy, new_rows, new_of, dup_rows, dup_of = self._deduplicate(frame, det)
            better, better_of = self._better_views(det, dup_rows, dup_of)
            t2 = time.perf_counter()
            staged.append(
                _Staged(
                    frame, det, xy, new_rows, new_of, dup_rows, better, better_of, t1 - t0, t2 - t1
                )
            )

        t2 = time.perf_counter()
        crops = []
        for st in staged:
            for rows in (st.new_rows, st.better):
                if len(rows):
                    assert st.det.crops is not None  # checked when detected
                    crops.append(st.det.crops[rows])
        everything = None
        if crops:
            everything = self.predictor.predict(
                np.concatenate(crops),
                mc_samples=self.mc_samples,
                keep_features=self.keep_features,
            )
        # Frames of one batch share the classification time in proportion to their crops.
        classify_s = time.perf_counter() - t2
        n_total = max(sum(len(st.new_rows) + len(st.better) for st in staged), 1)

        results = []
        offset = 0
        for st in staged:
            frame, det, xy, new_rows, better = st.frame, st.det, st.xy, st.new_rows, st.better
            predictions = better_pred = None
            if len(new_rows):
                assert everything is not None
                predictions = everything.take(np.arange(offset, offset + len(new_rows)))
                offset += len(new_rows)
            if len(better):
                assert everything is not None
                better_pred = everything.take(np.arange(offset, offset + len(better)))
                offset += len(better)
            t3 = time.perf_counter()
            if self.store is not None and predictions is not None:
                first = self._append(frame, det, new_rows, xy, predictions)
                if st.new_of is not None:
                    self._store_row[st.new_of] = first + np.arange(len(new_rows))
            if better_pred is not None:
                self._replace(frame, det, better, st.better_of, better_pred)
            t4 = time.perf_counter()
            self.frames_processed += 1
            self.specimens_counted += len(new_rows)
            results.append(
                FrameResult(
                    frame=frame,
                    detections=det,
                    new_rows=new_rows,
                    duplicate_rows=st.dup_rows,
                    predictions=predictions,
                    sample_xy_um=xy,
                    seconds={
                        "detect": st.t_detect,
                        "dedup": st.t_dedup,
                        "classify": classify_s * (len(new_rows) + len(better)) / n_total,
                        "store": t4 - t3,
                    },
                    replaced_rows=better,
                )
            )
        return results

    def _deduplicate(
        self, frame: Frame, det: Detections
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """Sample coordinates of every detection; the new rows and their registry entries
        (None: not registered, no position); the rows already counted and their entries.
        """
        n = len(det)
        xy = np.full((n, 2), np.nan)
        for i, (cy, cx) in enumerate(det.centroid):
            pos = frame.pixel_to_stage_um(cy, cx)
            if pos is not None:
                xy[i] = pos
        candidates = np.arange(n) if self.include_clipped else np.flatnonzero(det.whole)
        none = np.zeros(0, dtype=np.int64)
        if frame.stage_xy_um is None or frame.pixel_size_um is None:
            # No way to tell a specimen seen before from a new one: count per frame.
            self.frames_without_position += 1
            return xy, candidates, None, none, none
        diam_um = det.equivalent_diameter_px[candidates] * frame.pixel_size_um
        boxes = np.array([_box_um(frame, det.bbox[r]) for r in candidates]).reshape(-1, 4)
        n_before = len(self.registry)
        match = self.registry.match(xy[candidates], diam_um, boxes)
        new_rows, dup_rows = candidates[match < 0], candidates[match >= 0]
        # The registry appends new specimens in order: their entries follow the old ones.
        new_of = n_before + np.arange(len(new_rows))
        self._book_registered(sharpness=_crop_sharpness(det, new_rows))
        if not self.include_clipped:
            self._track_partials(frame, det, xy)
        return xy, new_rows, new_of, dup_rows, match[match >= 0]

    def _book_registered(
        self, *, store_rows: np.ndarray | None = None, sharpness: np.ndarray | None = None
    ) -> None:
        """Extend the per-specimen book (store row, view sharpness) to the registry's new
        entries, so that entry i of the registry is entry i of the book.
        """
        grow = len(self.registry) - self._store_row.size
        if grow <= 0:
            return
        rows = np.full(grow, -1, dtype=np.int64) if store_rows is None else store_rows
        sharp = np.full(grow, np.nan) if sharpness is None else sharpness
        if len(rows) != grow or len(sharp) != grow:
            raise RuntimeError("specimen book out of step with the registry")
        self._store_row = np.concatenate([self._store_row, np.asarray(rows, np.int64)])
        self._sharpness = np.concatenate([self._sharpness, np.asarray(sharp, float)])

    def _better_views(
        self, det: Detections, dup_rows: np.ndarray, dup_of: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Duplicates whose view is clearly sharper than the stored one: (rows, entries)."""
        none = np.zeros(0, dtype=np.int64)
        if self.better_view_ratio is None or self.store is None or not len(dup_rows):
            return none, none
        # A specimen first seen earlier in the same `process_many` batch has no store row
        # yet (rows are written after the batch is classified) but will have one before
        # this frame's replacements are written: it counts as stored, so a batch decides
        # exactly as frame-by-frame processing does.
        pending = (self._store_row[dup_of] < 0) & np.isfinite(self._sharpness[dup_of])
        stored = (self._store_row[dup_of] >= 0) | pending
        rows, entries = dup_rows[stored], dup_of[stored]
        if not len(rows):
            return none, none
        unknown = np.isnan(self._sharpness[entries])
        if unknown.any():  # resumed specimens: measure the stored crops once
            assert self.sample_id is not None
            todo = np.unique(entries[unknown])
            crops = self.store.read_crops(self.sample_id, self._store_row[todo])
            self._sharpness[todo] = views_sharpness(crops)
        sharp = _crop_sharpness(det, rows)
        better = sharp > self.better_view_ratio * self._sharpness[entries]
        # One replacement per specimen and frame: its sharpest view.
        order = np.argsort(-sharp)
        seen: set[int] = set()
        keep = []
        for i in order:
            if better[i] and int(entries[i]) not in seen:
                seen.add(int(entries[i]))
                keep.append(i)
        keep_arr = np.sort(np.asarray(keep, dtype=np.int64))
        self._sharpness[entries[keep_arr]] = sharp[keep_arr]
        return rows[keep_arr], entries[keep_arr]

    def _replace(
        self,
        frame: Frame,
        det: Detections,
        rows: np.ndarray,
        entries: np.ndarray,
        pred: Predictions,
    ) -> None:
        """Overwrite stored specimens' view with this frame's sharper one (not a new count).

        The stage position stays the registered one (the specimen's identity); the frame,
        centroid, box, area, crop and classification come from the sharper view.
        """
        assert self.store is not None and self.sample_id is not None and det.crops is not None
        if not self._provenance_checked:
            self._record_provenance(frame)
        pred = pred.in_classes(self.store.class_names)
        store_rows = self._store_row[entries]
        self.store.update_specimens(
            self.sample_id, store_rows, **specimen_columns(frame, det, rows, pred)
        )
        self._keep_features(store_rows, pred)
        self.views_replaced += len(rows)

    def _track_partials(self, frame: Frame, det: Detections, xy: np.ndarray) -> None:
        """Remember edge-cut sightings of specimens not (yet) counted; forget those that a
        whole view has since counted.

        A sighting is explained by counted specimens when their extents hold its pixels,
        not merely its box: where a specimen touching a neighbour is cut by the edge, the
        two are one object there, and only the pair together holds it.
        """
        self.partials = [p for p in self.partials if not self.registry.covers_pixels(p.points_um)]
        # Cut by the frame edge, not touching the tray wall (wall remnants at a field's
        # edge look like cut specimens; a specimen against the wall cannot be counted).
        for row in np.flatnonzero(det.at_edge & ~det.at_border & ~det.artifact):
            points = _pixels_um(frame, det, int(row))
            if self.registry.covers_pixels(points):
                continue  # a part of specimens already counted whole
            self.partials.append(
                _Partial(
                    *_stand_in(frame, det, int(row)),
                    box_um=_box_um(frame, det.bbox[row]),
                    area_px=det.area_px[row],
                    points_um=points,
                )
            )

    def finish(self) -> list[FrameResult]:
        """End of a scan: count, once each, the specimens only ever seen cut by an edge.

        Sightings from different fields whose boxes overlap (in sample coordinates) are
        one specimen; its largest view is classified and stored. Returns one result per
        such specimen, shaped like `process` results (the "frame" is the crop).
        """
        if self.store is not None and self.sample_id and self.frames_without_position:
            # Say so in the record: these frames could not be de-duplicated.
            self.store.set_provenance(
                self.sample_id,
                {
                    "frames_counted_per_frame": self.frames_without_position,
                    "why": "no stage position or pixel size: specimens counted per frame",
                },
            )
        pending = [p for p in self.partials if not self.registry.covers_pixels(p.points_um)]
        self.partials = []
        groups: list[list[_Partial]] = []
        for part in pending:
            joined = [g for g in groups if any(_boxes_overlap(part.box_um, q.box_um) for q in g)]
            merged = [part] + [q for g in joined for q in g]
            groups = [g for g in groups if not any(g is j for j in joined)] + [merged]
        chosen = [max(g, key=lambda q: q.area_px) for g in groups]
        if not chosen:
            return []
        crops = np.concatenate(
            [c.detections.crops for c in chosen if c.detections.crops is not None]
        )
        predictions = self.predictor.predict(
            crops, mc_samples=self.mc_samples, keep_features=self.keep_features
        )
        results = []
        for i, part in enumerate(chosen):
            pred = predictions.take(np.array([i]))
            xy = np.array([part.centre_um])
            assert part.frame.pixel_size_um is not None
            self.registry.register(
                xy,
                part.detections.equivalent_diameter_px * part.frame.pixel_size_um,
                np.array([part.box_um]),
            )
            # Only ever seen cut: nothing to compare a later view with, never replaced.
            self._book_registered(sharpness=np.array([np.inf]))
            if self.store is not None:
                first = self._append(part.frame, part.detections, np.array([0]), xy, pred)
                self._store_row[-1] = first
            self.specimens_counted += 1
            results.append(
                FrameResult(
                    frame=part.frame,
                    detections=part.detections,
                    new_rows=np.array([0]),
                    duplicate_rows=np.zeros(0, dtype=np.int64),
                    predictions=pred,
                    sample_xy_um=xy,
                )
            )
        return results

    def _append(
        self,
        frame: Frame,
        det: Detections,
        rows: np.ndarray,
        xy: np.ndarray,
        pred: Predictions,
    ) -> int:
        """Store the specimens `rows` of `det`; returns the store row of the first one."""
        from napari_foram.tally.store import SpecimenBatch

        assert self.store is not None and self.sample_id is not None and det.crops is not None
        if not self._provenance_checked:
            self._record_provenance(frame)
        n = len(rows)
        # Columns by class name: the store may know classes this model does not.
        pred = pred.in_classes(self.store.class_names)
        batch = SpecimenBatch(
            stage_x_um=xy[rows, 0],
            stage_y_um=xy[rows, 1],
            **specimen_columns(frame, det, rows, pred),
        )
        first = self.store.append_specimens(self.sample_id, batch) - n
        self._keep_features(np.arange(first, first + n), pred)
        return first

    def _keep_features(self, store_rows: np.ndarray, pred: Predictions) -> None:
        """Keep the specimens' pooled features in the store (see `tally.store._kept`), so
        that they can be classified again without the backbone. Features of another
        backbone than the sample's are not mixed in (`features_not_kept` counts them).
        """
        assert self.store is not None and self.sample_id is not None
        if pred.kept_features is None or not len(store_rows):
            self.features_not_kept += len(store_rows)
            return
        if not self.store.write_features(
            self.sample_id, store_rows, pred.kept_features, self.predictor.feature_space
        ):
            self.features_not_kept += len(store_rows)


def _frame_bit_depth(frame: Frame) -> int | None:
    """The camera's significant bits (``frame.metadata["bit_depth"]``) when they fit the
    pixels, else None (`detect` then picks the smallest common depth holding the data).

    Checked, not trusted: a depth the data exceeds (a misconfigured camera) would
    saturate every bright pixel, which the automatic choice never does.
    """
    bits = frame.metadata.get("bit_depth")
    image = frame.image
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        return None
    if not np.issubdtype(image.dtype, np.integer) or not 1 <= bits <= 8 * image.itemsize:
        return None
    if image.size and int(image.max()) > 2 ** int(bits) - 1:
        return None
    return int(bits)


def views_sharpness(crops: np.ndarray) -> np.ndarray:
    """How sharp each crop is: variance of the Laplacian of its image at half size.

    (N, S, S[, 3]) -> (N,). Colour crops are measured on green, the channel that carries
    most of the luma (and one channel instead of three: a third of the work). Summing
    2 x 2 pixels first keeps camera noise from passing for detail, so two noisy frames of
    one in-focus specimen score alike while a defocused view scores far lower. Vectorised
    over the stack: it runs on every new and every re-seen specimen, up to ~100 a frame.
    """
    arr = np.asarray(crops)
    plane = arr[..., 1] if arr.ndim == 4 else arr
    g = plane.astype(np.float32)
    n, h, w = g.shape
    g = g[:, : h - h % 2, : w - w % 2]
    half = g[:, ::2, ::2] + g[:, 1::2, ::2] + g[:, ::2, 1::2] + g[:, 1::2, 1::2]
    lap = (
        4 * half[:, 1:-1, 1:-1]
        - half[:, :-2, 1:-1]
        - half[:, 2:, 1:-1]
        - half[:, 1:-1, :-2]
        - half[:, 1:-1, 2:]
    )
    return lap.reshape(n, -1).var(axis=1) / 16.0  # in (grey levels)^2 of the 2 x 2 mean


def view_sharpness(crop: np.ndarray) -> float:
    """`views_sharpness` of one crop."""
    return float(views_sharpness(np.asarray(crop)[None])[0])


def _crop_sharpness(det: Detections, rows: np.ndarray) -> np.ndarray:
    if not len(rows) or det.crops is None:
        return np.full(len(rows), np.nan)
    return views_sharpness(det.crops[rows])


def _box_um(frame: Frame, bbox: np.ndarray) -> tuple[float, float, float, float]:
    """A pixel box (min_row, min_col, max_row, max_col) as (x0, y0, x1, y1) in um."""
    y0, x0, y1, x1 = (float(v) for v in bbox)
    a = frame.pixel_to_stage_um(y0 - 0.5, x0 - 0.5)
    b = frame.pixel_to_stage_um(y1 - 0.5, x1 - 0.5)
    assert a is not None and b is not None
    # A camera mounted rotated or mirrored (Frame.pixel_affine) swaps or flips the corners.
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1]))


def _pixels_um(frame: Frame, det: Detections, row: int) -> np.ndarray:
    """(k, 2) sample coordinates (x_um, y_um) of detection `row`'s pixels, one point per
    pixel of the label image at the detector's working scale.
    """
    s = det.work_scale
    r0, c0, r1, c1 = (int(v) // s for v in det.bbox[row])
    rr, cc = np.nonzero(det.labels[r0 : r1 + 1, c0 : c1 + 1] == det.label[row])
    # Working pixel (i, j) stands for full-resolution pixels [i*s, (i+1)*s): its centre.
    y = (rr + r0 + 0.5) * s - 0.5
    x = (cc + c0 + 0.5) * s - 0.5
    # Pixel -> sample coordinates is affine (`Frame.pixel_to_stage_um`): an origin and
    # one step per column and per row.
    origin = frame.pixel_to_stage_um(0.0, 0.0)
    right = frame.pixel_to_stage_um(0.0, 1.0)
    down = frame.pixel_to_stage_um(1.0, 0.0)
    assert origin is not None and right is not None and down is not None
    o, dx, dy = np.array(origin), np.subtract(right, origin), np.subtract(down, origin)
    return o + x[:, None] * dx + y[:, None] * dy


def _stand_in(frame: Frame, det: Detections, row: int) -> tuple[Frame, Detections]:
    """The crop of detection `row` as a small frame of its own, and that one detection in
    it, placed so that sample coordinates stay right.
    """
    assert det.crops is not None
    size = det.crops.shape[1]
    cy, cx = det.centroid[row]
    top, left = round(cy) - size // 2, round(cx) - size // 2
    centre = frame.pixel_to_stage_um(top + (size - 1) / 2, left + (size - 1) / 2)
    one = det.take(np.array([row]))
    one = replace(
        one,
        centroid=one.centroid - [top, left],
        bbox=one.bbox - [top, left, top, left],
    )
    crop_frame = Frame(
        image=det.crops[row],
        index=frame.index,
        stage_xy_um=centre,
        pixel_size_um=frame.pixel_size_um,
        timestamp=frame.timestamp,
        source=frame.source,
        metadata={**frame.metadata, "clipped_view": True},
        pixel_affine=frame.pixel_affine,
    )
    return crop_frame, one
