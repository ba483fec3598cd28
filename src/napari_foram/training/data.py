"""Labelled crops from folders, stratified splits, and crop extraction from whole frames.

A data folder has one subfolder per class (torchvision's ImageFolder layout)::

    DATA/planktic/img_001.png
    DATA/sediment/IMG_0042.tif
    ...

Images of any size, bit depth and channel count are brought to 224 x 224 x 3 uint8 by the
model's crop policy (`napari_foram.pictures`), recorded in the checkpoint, so a model
sees in training what it sees in use:

- ``fit`` (the default): a picture up to 1024 px a side is scaled so the specimen fills
  the window, padded with its own background; in a larger image (a frame) the largest
  whole specimen's box is fitted;
- ``native`` (the study's crops): a picture up to 448 px a side is centred on the window
  at its own scale (cut, or padded with black); in a larger image the crop is cut around
  the largest whole specimen at its own scale.

A 224 x 224 crop (``extract-crops``, review exports) is the same under both.

Files that cannot be used are skipped and each gets one line in the returned ``skipped``
list (file and reason): nothing crashes the load, nothing is dropped silently.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram.detect import CROP_SIZE, DetectionParams, detect
from napari_foram.frames import IMAGE_SUFFIXES, read_image, to_rgb_uint8
from napari_foram.pictures import DEFAULT_CROP_POLICY, check_crop_policy, picture_to_crop

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from napari_foram._progress import ProgressCallback

#: Under the "native" policy, images up to this side are crops (centred); larger ones are
#: frames (detected).
MAX_CROP_SIDE = 2 * CROP_SIZE
#: Images with a side shorter than this hold too little to classify: skipped.
MIN_SIDE_PX = 16
#: Default stratified split: train, validation, test (the study: 80/10/10).
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_NAMES = ("train", "val", "test")
#: Crops per contact sheet (an 8 x 8 grid).
CONTACT_SHEET_MAX = 64


@dataclass
class LabelledCrops:
    """Crops with their class labels, as loaded by `load_image_folder`.

    Attributes
    ----------
    crops
        (N, 224, 224, 3) uint8 RGB.
    labels
        (N,) int64 class indices into `class_names`.
    class_names
        The K class names, in label order.
    paths
        (N,) source file of each crop.
    skipped
        One "path: reason" line per file that was not used.
    how
        (N,) how each crop was made: "fitted" / "centred" (a picture, by the crop
        policy) or "detected" / "centre" (a frame, cut around its largest specimen or,
        with none found, its centre).
    crop_policy
        The crop policy the crops were made with (`napari_foram.pictures`).
    """

    crops: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    paths: list[Path]
    skipped: list[str] = field(default_factory=list)
    how: list[str] = field(default_factory=list)
    root: Path | None = None
    crop_policy: str = DEFAULT_CROP_POLICY

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __iter__(self) -> Iterator[Any]:
        """Unpack as ``crops, labels, class_names, paths``."""
        return iter((self.crops, self.labels, self.class_names, self.paths))

    def subset(self, indices: np.ndarray | Sequence[int]) -> LabelledCrops:
        """The crops at `indices` (same class names)."""
        idx = np.asarray(indices, dtype=np.int64)
        return LabelledCrops(
            crops=self.crops[idx],
            labels=self.labels[idx],
            class_names=self.class_names,
            paths=[self.paths[i] for i in idx],
            skipped=list(self.skipped),
            how=[self.how[i] for i in idx] if self.how else [],
            root=self.root,
            crop_policy=self.crop_policy,
        )

    def relative_paths(self) -> list[str]:
        """Paths relative to the data folder (POSIX style), for split files and reports."""
        if self.root is None:
            return [p.as_posix() for p in self.paths]
        return [p.relative_to(self.root).as_posix() for p in self.paths]

    def counts(self) -> dict[str, int]:
        """Crops per class."""
        n = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(n[i]) for i, name in enumerate(self.class_names)}

    def data_hash(self) -> str:
        """SHA-256 over the crops' pixels and labels (keys feature caches)."""
        h = hashlib.sha256()
        h.update(f"{self.crops.shape}|{list(self.class_names)}|".encode())
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.crops).tobytes())
        return h.hexdigest()


def image_to_crop(
    image: np.ndarray,
    params: DetectionParams | None = None,
    crop_policy: str = DEFAULT_CROP_POLICY,
) -> tuple[np.ndarray, str]:
    """One (224, 224, 3) uint8 crop from any image by `crop_policy`, and how it was made
    (`napari_foram.pictures.picture_to_crop`).

    Raises
    ------
    ValueError
        An unusable image (see `napari_foram.frames.check_image`) or one with a side
        under 16 px.
    """
    rgb = to_rgb_uint8(image)
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE_PX:
        raise ValueError(f"image is {h} x {w} px, smaller than {MIN_SIDE_PX} px a side")
    return picture_to_crop(image, crop_policy, params)


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise ValueError(f"data folder not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root} has no class subfolders (expected ROOT/<class>/<image>)")
    return folders


def _files(folder: Path) -> list[Path]:
    # Everything but folders and hidden entries: a FIFO or a broken link is listed as
    # skipped by the reader (one line why), never dropped without a word.
    return sorted(p for p in folder.rglob("*") if not p.is_dir() and not p.name.startswith("."))


def shown_path(path: Path) -> str:
    r"""`path` as printable text: bytes that are not UTF-8 as ``\xff`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _name_problem(path: Path, root: Path) -> str | None:
    """Why a file cannot be used for its name alone, or None.

    A name that is not valid UTF-8 (the file system keeps the bytes; Python holds them
    as surrogates) cannot be written to the CSV and JSON files that name the crops, and
    would make a split file that no other tool reads back: the file is skipped and
    listed. Only the part below the data folder is looked at.
    """
    try:
        path.relative_to(root).as_posix().encode("utf-8")
    except UnicodeEncodeError:
        return f"{shown_path(path)}: file name is not valid UTF-8 (rename it to use it)"
    return None


def load_image_folder(
    root: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    params: DetectionParams | None = None,
    progress: ProgressCallback | None = None,
    crop_policy: str = DEFAULT_CROP_POLICY,
) -> LabelledCrops:
    """Load an ImageFolder of labelled images as 224 x 224 crops.

    Parameters
    ----------
    root
        Folder with one subfolder per class (nested subfolders belong to their class).
        Files directly in `root` are ignored (reports, CSVs, contact sheets live there).
    class_names
        The class order to label with (e.g. a model's classes). Every subfolder must be
        one of them; classes without a folder simply have no crops. Default: the
        subfolder names, sorted.
    params
        Detector settings for images larger than a crop.
    crop_policy
        How a picture becomes the 224 px input (`napari_foram.pictures`): "fit" (the
        default for training) or "native"; evaluation passes the model's own.
    progress
        ``progress(done, total, message)`` after each file.

    Returns
    -------
    LabelledCrops
        Unpacks as ``crops, labels, class_names, paths``; ``skipped`` lists the files
        not used, each with its reason.

    Raises
    ------
    ValueError
        No such folder, no class subfolders, a subfolder not among `class_names`, or no
        usable image at all.
    """
    root = Path(root)
    check_crop_policy(crop_policy)
    folders = _class_folders(root)
    names = tuple(class_names) if class_names is not None else tuple(f.name for f in folders)
    unknown = [f.name for f in folders if f.name not in names]
    if unknown:
        raise ValueError(f"class folder(s) {unknown} are not among the classes {list(names)}")
    jobs = [(names.index(f.name), path) for f in folders for path in _files(f)]
    crops: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[Path] = []
    how: list[str] = []
    skipped: list[str] = []
    for done, (label, path) in enumerate(jobs, start=1):
        if (problem := _name_problem(path, root)) is not None:
            skipped.append(problem)
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(f"{path}: not an image file ({path.suffix or 'no suffix'})")
        else:
            try:
                crop, made = image_to_crop(read_image(path), params, crop_policy)
            except ValueError as exc:  # read_image/check_image: one-line reasons
                reason = str(exc).removeprefix(f"{path}: ")
                skipped.append(f"{path}: {reason}")
            else:
                crops.append(crop)
                labels.append(label)
                paths.append(path)
                how.append(made)
        if progress is not None:
            progress(done, len(jobs), path.name)
    if not crops:
        raise ValueError(f"no usable images under {root} ({len(skipped)} file(s) skipped)")
    return LabelledCrops(
        crops=np.stack(crops),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=names,
        paths=paths,
        skipped=skipped,
        how=how,
        root=root,
        crop_policy=crop_policy,
    )


# ----------------------------------------------------------------------------- splits
def split_indices(
    labels: np.ndarray | Sequence[int],
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> dict[str, np.ndarray]:
    """A stratified train/validation/test split of sample indices.

    Each class is shuffled with `seed` and cut by `fractions`, rounding to whole
    samples; a non-zero fraction gets at least one sample of every class, and training
    keeps at least one.

    Parameters
    ----------
    labels
        (N,) class indices.
    seed
        Same seed and labels, same split.
    fractions
        (train, val, test) shares summing to 1; val or test may be 0.

    Returns
    -------
    dict
        ``{"train": idx, "val": idx, "test": idx}``, each a sorted int64 array.

    Raises
    ------
    ValueError
        Fractions that do not sum to 1, or a class too small for the split.
    """
    y = np.asarray(labels, dtype=np.int64)
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6 or fr[0] <= 0:
        raise ValueError(f"fractions must be (train, val, test) >= 0 summing to 1, got {fr}")
    rng = np.random.default_rng(int(seed))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLIT_NAMES}
    needed = 1 + sum(1 for f in fr[1:] if f > 0)
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        n = idx.size
        if n < needed:
            raise ValueError(
                f"class {cls} has {n} sample(s); a split with fractions {fr} needs {needed}"
            )
        n_val = max(1, round(fr[1] * n)) if fr[1] > 0 else 0
        n_test = max(1, round(fr[2] * n)) if fr[2] > 0 else 0
        while n - n_val - n_test < 1:  # keep one for training: take from the larger share
            if n_val >= n_test and n_val > 1:
                n_val -= 1
            else:
                n_test -= 1
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val : n_val + n_test])
        parts["train"].append(idx[n_val + n_test :])
    return {
        name: np.sort(np.concatenate(chunks)).astype(np.int64) if chunks else np.zeros(0, np.int64)
        for name, chunks in parts.items()
    }


def save_split(
    path: str | Path,
    split: dict[str, np.ndarray],
    data: LabelledCrops,
    *,
    seed: int,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> None:
    """Write a split as JSON, naming files (relative to the data folder), not indices.

    Naming files keeps the split valid when the folder is listed in another order, and
    lets `load_split` refuse a data folder that has changed.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        # A FIFO would block here and a device (/dev/null) would lose the split.
        raise ValueError(f"{path}: is not a regular file; the split file must be a file path")
    rel = data.relative_paths()
    record = {
        "format": "napari-foram-split",
        "version": 1,
        "seed": int(seed),
        "fractions": [float(f) for f in fractions],
        "class_names": list(data.class_names),
        "counts": {
            name: {
                c: int(np.sum(data.labels[split[name]] == i))
                for i, c in enumerate(data.class_names)
            }
            for name in SPLIT_NAMES
        },
        **{name: [rel[i] for i in split[name]] for name in SPLIT_NAMES},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def load_split(path: str | Path, data: LabelledCrops) -> dict[str, np.ndarray]:
    """Indices into `data` of a split written by `save_split`.

    Raises
    ------
    ValueError
        Not a split file, or it does not match `data` (files missing on either side).
    """
    from napari_foram._outputs import read_small_file

    path = Path(path)
    # Only a regular file of bounded size: a FIFO or /dev/zero would hang the command.
    raw = read_small_file(path, "split file")
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read split file {path}: {exc}".splitlines()[0]) from None
    if not isinstance(record, dict) or record.get("format") != "napari-foram-split":
        raise ValueError(f"{path} is not a napari-foram split file")
    position = {p: i for i, p in enumerate(data.relative_paths())}
    out: dict[str, np.ndarray] = {}
    listed = 0
    for name in SPLIT_NAMES:
        files = record.get(name, [])
        missing = [f for f in files if f not in position]
        if missing:
            raise ValueError(
                f"split {path.name} names {len(missing)} file(s) not in the data, "
                f"e.g. {missing[0]}"
            )
        out[name] = np.sort(np.asarray([position[f] for f in files], dtype=np.int64))
        listed += len(files)
    if listed != len(position):
        raise ValueError(
            f"split {path.name} covers {listed} files but the data has {len(position)}: "
            "make a new split"
        )
    return out


# ----------------------------------------------------------------------------- extract-crops
def _check_crops_output(src: Path, out: Path, folders: Sequence[Path]) -> None:
    """ValueError (one line) unless `extract_crops` may write to `out`: not the source
    folder nor inside it (a rerun would read the crops as frames), no class folder of
    the output that is the source folder, nothing inside a tally store, no FIFO or
    device where a file goes. Creates `out`, as the writer would.
    """
    from napari_foram._outputs import check_output_dir, check_output_file

    real_src = os.path.realpath(src)
    for folder in folders:
        if os.path.realpath(out / folder.name) == real_src:
            raise ValueError(
                f"{out / folder.name}: the crops of class {folder.name!r} would be written "
                f"into the source folder {src}"
            )
    check_output_dir(out, "crops folder", inputs=[src])
    check_output_file(out / "crops.csv", "crop table", inputs=[src])
    for folder in folders:
        check_output_file(out / f"contact_sheet_{folder.name}.png", "contact sheet")


def contact_sheet(crops: np.ndarray, columns: int = 8, tile: int = 112) -> np.ndarray:
    """A grid image of up to 64 crops, each shrunk to `tile` px, 2 px white gutters.

    Parameters
    ----------
    crops
        (N, S, S, 3) uint8; only the first 64 are used.

    Returns
    -------
    (H, W, 3) uint8
    """
    crops = np.asarray(crops)[:CONTACT_SHEET_MAX]
    n = len(crops)
    if n == 0:
        return np.full((tile, tile, 3), 255, np.uint8)
    step = max(1, crops.shape[1] // tile)
    small = crops[:, ::step, ::step][:, :tile, :tile]
    cols = min(columns, n)
    rows = -(-n // cols)
    gap = 2
    t = small.shape[1]
    sheet = np.full((rows * (t + gap) + gap, cols * (t + gap) + gap, 3), 255, np.uint8)
    for i, c in enumerate(small):
        r, q = divmod(i, cols)
        y, x = gap + r * (t + gap), gap + q * (t + gap)
        sheet[y : y + t, x : x + t] = c
    return sheet


def extract_crops(
    src_dir: str | Path,
    out_dir: str | Path,
    *,
    params: DetectionParams | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Detect specimens in every image of SRC/<class>/ and write their crops by class.

    Writes ``OUT/<class>/<stem>_<k>.png`` (224 x 224 RGB, k = 0, 1, ... over the whole
    specimens of that image), ``OUT/crops.csv`` (one row per crop: crop file, source image,
    class, centroid, bounding box, area) and ``OUT/contact_sheet_<class>.png`` (up to 64
    crops per class). OUT is then a data folder for `load_image_folder` (files directly
    in it are ignored there).

    Returns
    -------
    dict
        ``crops`` per class, ``images`` read, ``skipped`` ("path: reason" lines, files
        whose name is not valid UTF-8 among them), ``csv`` and ``contact_sheets`` paths.

    Raises
    ------
    ValueError
        Before anything is written: OUT is SRC or inside it (a rerun would read crops as
        frames), lies in a tally store, or a file to write is a folder, FIFO or device.
    """
    import imageio.v3 as iio

    from napari_foram.tally.export import safe_text

    src, out = Path(src_dir), Path(out_dir)
    folders = _class_folders(src)
    _check_crops_output(src, out, folders)
    jobs = [(f.name, path) for f in folders for path in _files(f)]
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    per_class: dict[str, list[np.ndarray]] = {f.name: [] for f in folders}
    n_images = 0
    for done, (name, path) in enumerate(jobs, start=1):
        if progress is not None:
            progress(done - 1, len(jobs), path.name)
        if (problem := _name_problem(path, src)) is not None:
            skipped.append(problem)
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(f"{path}: not an image file ({path.suffix or 'no suffix'})")
            continue
        try:
            det = detect(read_image(path), params, crops=True)
        except ValueError as exc:
            skipped.append(f"{path}: {str(exc).removeprefix(f'{path}: ')}")
            continue
        n_images += 1
        assert det.crops is not None
        class_dir = out / name
        class_dir.mkdir(parents=True, exist_ok=True)
        stem = path.relative_to(src / name).with_suffix("").as_posix().replace("/", "__")
        for k, i in enumerate(np.flatnonzero(det.whole)):
            crop_path = class_dir / f"{stem}_{k}.png"
            iio.imwrite(crop_path, det.crops[i])
            per_class[name].append(det.crops[i])
            y, x = det.centroid[i]
            r0, c0, r1, c1 = (int(v) for v in det.bbox[i])
            rows.append(
                {
                    "crop": crop_path.relative_to(out).as_posix(),
                    "source": str(path),
                    "class": name,
                    "centroid_y": round(float(y), 2),
                    "centroid_x": round(float(x), 2),
                    "bbox_min_row": r0,
                    "bbox_min_col": c0,
                    "bbox_max_row": r1,
                    "bbox_max_col": c1,
                    "area_px": round(float(det.area_px[i]), 1),
                }
            )
    if progress is not None:
        progress(len(jobs), len(jobs), "done")
    csv_path = out / "crops.csv"
    columns = [
        "crop",
        "source",
        "class",
        "centroid_y",
        "centroid_x",
        "bbox_min_row",
        "bbox_min_col",
        "bbox_max_row",
        "bbox_max_col",
        "area_px",
    ]
    # Text from outside (folder and file names) is kept from being read as a formula by
    # a spreadsheet, as in every CSV the project writes (`tally.export.safe_text`); a
    # source folder whose own path is not UTF-8 is written escaped rather than failing
    # after the crops were written.
    with csv_path.open("w", newline="", encoding="utf-8", errors="backslashreplace") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(
            {k: safe_text(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows
        )
    sheets = []
    for name, crops in per_class.items():
        if crops:
            sheet_path = out / f"contact_sheet_{name}.png"
            iio.imwrite(sheet_path, contact_sheet(np.stack(crops)))
            sheets.append(str(sheet_path))
    return {
        "crops": {name: len(c) for name, c in per_class.items()},
        "images": n_images,
        "skipped": skipped,
        "csv": str(csv_path),
        "contact_sheets": sheets,
    }
