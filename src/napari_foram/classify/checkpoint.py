"""Classifier checkpoints: one safetensors file with the model's tensors and a JSON record.

Layout of a checkpoint file
---------------------------
- tensors, fp32: ``conv.*`` (VGG16 conv blocks, 14,714,688 values = 58.9 MB) and ``head.*``
  (the dense head: 12,878,660 values = 51.5 MB for (512, 64) units and 4 classes), and
  optionally ``density.*`` (the feature density of `napari_foram.classify.density`, about
  4.2 MB, kept in head-only files too).
  A *head-only* checkpoint stores just ``head.*`` (51.5 MB instead of 110.4 MB) and names
  its backbone (``"imagenet"``, ``"none"`` + seed, or a weights file); loading rebuilds the
  backbone from that source and checks it against the stored ``backbone_sha256``.
- metadata key ``napari_foram.model``: a JSON object with the format name and version,
  class names, head configuration, preprocessing, backbone, training record and metrics,
  software versions, creation time and ``content_sha256``, a digest over that JSON and all
  tensors. The digest catches edits and corruption (not a signature: anyone who edits the
  file on purpose can recompute it).

No pickle anywhere: safetensors holds only raw tensors and strings.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import struct
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from napari_foram._versions import software_versions
from napari_foram.classify.architecture import backbone_named
from napari_foram.classify.backbone import (
    INPUT_CONVENTIONS,
    RANDOM_BACKBONE,
    check_convention,
    file_sha256,
)
from napari_foram.classify.density import STATE_PREFIX as DENSITY_PREFIX
from napari_foram.classify.density import FeatureDensity
from napari_foram.classify.model import (
    DEFAULT_DROPOUT,
    DEFAULT_HIDDEN_UNITS,
    INPUT_SIZE,
    FORAMNet,
    build_model,
    build_model_with_weights,
    check_layout,
    describe_weights_source,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: Name and version of the file format; bump the version on incompatible changes.
FORMAT_NAME = "napari-foram-classifier"
FORMAT_VERSION = 1
#: safetensors metadata key holding the JSON record.
METADATA_KEY = "napari_foram.model"
#: A safetensors header larger than this is not one of ours (guards against garbage).
_MAX_HEADER_BYTES = 16 * 1024 * 1024


@dataclass
class ModelInfo:
    """Everything needed to rebuild, preprocess for, and describe a trained classifier.

    Attributes
    ----------
    class_names
        Output classes in logit order, e.g. ("planktic", "calcareous benthic", ...).
    hidden_units, dropout
        Head configuration (the study: (512, 64), 0.2).
    input_size
        Side of the square input crop in pixels (224).
    scale
        Kept for checkpoints written before `input_convention` existed: "0-1".
    imagenet_normalize
        Kept for old checkpoints: True meant the "torchvision" convention, False "study".
        Always equal to ``input_convention == "torchvision"``.
    input_convention
        How uint8 RGB pixels become network input: "torchvision", "caffe" or "study"
        (`napari_foram.classify.backbone.INPUT_CONVENTIONS`). Empty in an old record:
        derived from `imagenet_normalize`, so old checkpoints load as they did.
    backbone
        Backbone architecture name ("vgg16").
    backbone_weights
        Where the backbone's starting weights came from: "imagenet", "none", or
        "file:NAME:SHA16" (see `describe_weights_source`).
    backbone_id
        Which weights those were: "vgg16-imagenet-keras", "vgg16-imagenet-torchvision",
        "vgg16-random" or "vgg16-file:NAME" ("" in records written before it existed).
        With `backbone_sha256` it identifies the backbone exactly.
    unsure_rule
        When a specimen is "unsure" (likely none of the classes) rather than its
        arg-max class: ``{"measure": "mutual_information" | "entropy" | "vote",
        "threshold": t, ...}``, unsure when the measure exceeds t. {} for no rule.
    backbone_seed
        Seed of the random backbone when `backbone_weights` is "none", else None.
    feature_layout
        What the head reads (`napari_foram.classify.model.FEATURE_LAYOUTS`): "flat"
        (the study's 25088 values; every record written before it existed) or "pooled".
    crop_policy
        How a picture that is not a tray frame becomes the 224 px input
        (`napari_foram.training.crops.CROP_POLICIES`): "native" (cut at its own scale,
        the study's; every older record) or "fit" (scaled so the specimen fills the
        window). Training used it; `classify` on picture files uses the same.
    temperature
        The calibration temperature T fitted on held-out crops; already folded into the
        last layer (logits / T), recorded so a reader knows it was applied. 1.0: none.
    head_only
        True when the file holds only the head and the backbone is rebuilt on load.
    backbone_sha256
        Digest of the conv tensors, used to check a rebuilt backbone; "" if unknown.
    training, metrics
        Free-form JSON-able records (data, epochs, learning rate...; accuracies...).
    software
        Versions of the software that wrote the file.
    created
        ISO 8601 UTC creation time.
    sha256
        Digest of the whole file (filled in by save/load, not stored in the file).
    path
        Where the checkpoint was loaded from (not stored in the file).
    """

    class_names: tuple[str, ...]
    hidden_units: tuple[int, ...] = DEFAULT_HIDDEN_UNITS
    dropout: float = DEFAULT_DROPOUT
    input_size: int = INPUT_SIZE
    scale: str = "0-1"
    imagenet_normalize: bool = False
    input_convention: str = ""
    backbone: str = "vgg16"
    backbone_weights: str = "imagenet"
    backbone_id: str = ""
    backbone_seed: int | None = None
    feature_layout: str = "flat"
    crop_policy: str = "native"
    temperature: float = 1.0
    unsure_rule: dict[str, Any] = field(default_factory=dict)
    head_only: bool = False
    backbone_sha256: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    software: dict[str, str] = field(default_factory=dict)
    created: str = ""
    sha256: str = ""
    path: str | None = None

    def __post_init__(self) -> None:
        self.class_names = tuple(str(c) for c in self.class_names)
        self.hidden_units = tuple(int(u) for u in self.hidden_units)
        if len(self.class_names) < 2:
            raise ValueError(f"need at least 2 class names, got {list(self.class_names)}")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class names must be unique, got {list(self.class_names)}")
        if self.scale != "0-1":
            raise ValueError(f"unsupported input scale {self.scale!r} (only '0-1')")
        if self.input_size != INPUT_SIZE:
            raise ValueError(f"VGG16 head needs {INPUT_SIZE} px crops, got {self.input_size}")
        if not self.input_convention:
            self.input_convention = "torchvision" if self.imagenet_normalize else "study"
        check_convention(self.input_convention)
        self.imagenet_normalize = self.input_convention == "torchvision"
        check_layout(self.feature_layout)
        if self.crop_policy not in ("native", "fit"):
            raise ValueError(f"unknown crop policy {self.crop_policy!r} (use native or fit)")
        if not (isinstance(self.temperature, int | float) and 0 < self.temperature < 1e6):
            raise ValueError(f"temperature must be a positive number, got {self.temperature!r}")
        if not isinstance(self.unsure_rule, dict):
            raise ValueError(f"unsure_rule must be a mapping, got {self.unsure_rule!r}")

    @property
    def input_description(self) -> str:
        """The input convention in words."""
        return INPUT_CONVENTIONS[self.input_convention]

    @property
    def num_classes(self) -> int:
        """K, the number of classes."""
        return len(self.class_names)

    @classmethod
    def for_model(
        cls, model: FORAMNet, class_names: tuple[str, ...] | list[str], **kwargs: Any
    ) -> ModelInfo:
        """A record whose head configuration is read from `model`."""
        return cls(
            class_names=tuple(class_names),
            hidden_units=model.hidden_units,
            dropout=model.dropout,
            feature_layout=model.feature_layout,
            **{"backbone": model.backbone.name, **kwargs},
        )

    def _stored_dict(self) -> dict[str, Any]:
        """The fields written into the file (file digest and load path excluded)."""
        d = asdict(self)
        d.pop("sha256")
        d.pop("path")
        d["class_names"] = list(self.class_names)
        d["hidden_units"] = list(self.hidden_units)
        return d


def new_classifier(
    class_names: Sequence[str],
    *,
    backbone_weights: str | Path = "imagenet",
    hidden_units: Sequence[int] = DEFAULT_HIDDEN_UNITS,
    dropout: float = DEFAULT_DROPOUT,
    seed: int = 0,
    input_convention: str | None = None,
    imagenet_normalize: bool | None = None,
    download: bool | None = None,
    feature_layout: str = "flat",
) -> tuple[FORAMNet, ModelInfo]:
    """A fresh (untrained-head) model and the matching `ModelInfo`, ready to train or save.

    Arguments as for `build_model`; `class_names` fixes K and the logit order.
    `input_convention` defaults to the one the weights carry ("torchvision" for a random
    backbone: centred inputs keep more signal through random layers); the older
    `imagenet_normalize` flag, when given, means "torchvision" (True) or "study" (False).
    """
    model, weights = build_model_with_weights(
        len(class_names),
        backbone_weights=backbone_weights,
        hidden_units=hidden_units,
        dropout=dropout,
        seed=seed,
        download=download,
        feature_layout=feature_layout,
    )
    if input_convention is None and imagenet_normalize is not None:
        input_convention = "torchvision" if imagenet_normalize else "study"
    if input_convention is None:
        input_convention = weights.convention if weights is not None else "torchvision"
    source = describe_weights_source(backbone_weights)
    info = ModelInfo.for_model(
        model,
        tuple(class_names),
        backbone_weights=source,
        backbone_id=weights.name if weights is not None else RANDOM_BACKBONE,
        backbone_seed=int(seed) if source == "none" else None,
        input_convention=check_convention(input_convention),
    )
    return model, info


def _tensor_digest(tensors: Mapping[str, torch.Tensor], h: Any = None) -> Any:
    """Feed names, dtypes, shapes and bytes of `tensors` (sorted by name) into a sha256."""
    h = hashlib.sha256() if h is None else h
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h


def _content_digest(record: dict[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """Digest over the JSON record (without its own digest field) and the tensors."""
    body = {k: v for k, v in record.items() if k != "content_sha256"}
    h = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    return str(_tensor_digest(tensors, h).hexdigest())


#: The one tensor allowed to hold +inf: the mean of a class the density never saw.
_INF_ALLOWED = DENSITY_PREFIX + "class_means"


def nonfinite_tensor(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first tensor (sorted) holding NaN or inf values, or None.

    NaN or inf weights make every prediction NaN (or a meaningless arg-max): a model that
    holds them is broken, whatever its digest says. The feature density's class means
    may be +inf (a class absent from its training crops), never NaN.
    """
    for name in sorted(tensors):
        t = tensors[name]
        if not t.is_floating_point():
            continue
        bad = torch.isnan(t) if name == _INF_ALLOWED else ~torch.isfinite(t)
        if bool(bad.any()):
            return name
    return None


def conv_sha256(model: FORAMNet) -> str:
    """Digest of the backbone's conv tensors (identifies the exact backbone weights)."""
    return str(_tensor_digest(model.conv.state_dict()).hexdigest())


def save_checkpoint(
    path: str | Path, model: FORAMNet, info: ModelInfo, *, head_only: bool = False
) -> str:
    """Write `model` and `info` to one safetensors file; return the file's sha256 hex.

    Parameters
    ----------
    path
        Destination (conventionally ``*.safetensors``); written atomically.
    model
        The trained network; its head configuration must match `info`.
    info
        The record to store; `created`, `software`, `head_only` and `backbone_sha256`
        are filled in here. `info.sha256` and `info.path` are updated on return.
    head_only
        Store only the head tensors (the backbone is rebuilt from `info.backbone_weights`
        on load).

    Raises
    ------
    ValueError
        `model` and `info` disagree, a tensor holds NaN or inf values (a diverged
        training), or the training/metrics records are not JSON-able.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if model.num_classes != info.num_classes:
        raise ValueError(
            f"model has {model.num_classes} outputs but info names {info.num_classes} classes"
        )
    if model.feature_layout != info.feature_layout:
        raise ValueError(
            f"model reads {model.feature_layout!r} features but info says {info.feature_layout!r}"
        )
    if tuple(model.hidden_units) != info.hidden_units or model.dropout != info.dropout:
        raise ValueError(
            f"model head {model.hidden_units}/dropout {model.dropout} differs from info "
            f"{info.hidden_units}/dropout {info.dropout}"
        )
    if head_only and info.backbone_weights == "none" and info.backbone_seed is None:
        raise ValueError("a head-only checkpoint of a random backbone needs backbone_seed")
    info.head_only = head_only
    info.backbone_sha256 = conv_sha256(model)
    info.software = software_versions("torch", "torchvision", "safetensors")
    info.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    state = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
    }
    if head_only:
        state = {k: v for k, v in state.items() if k.startswith(("head.", DENSITY_PREFIX))}
    if (bad := nonfinite_tensor(state)) is not None:
        raise ValueError(f"refusing to save {path.name}: tensor {bad} holds NaN/inf values")
    record = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **info._stored_dict()}
    try:
        json.dumps(record)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"training/metrics records must be JSON-able: {exc}") from exc
    record["content_sha256"] = _content_digest(record, state)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(record)})
        tmp.replace(path)  # readers never see a half-written checkpoint
    finally:
        tmp.unlink(missing_ok=True)
    info.sha256 = file_sha256(path)
    info.path = str(path)
    return info.sha256


def _read_header(path: Path) -> dict[str, Any]:
    """Parse and sanity-check a safetensors header; ValueError with a one-line reason."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path.name} is not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", prefix)
        if n < 2 or n > min(_MAX_HEADER_BYTES, size - 8):
            raise ValueError(f"{path.name} is not a safetensors file (bad header length)")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{path.name} is not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path.name} is not a safetensors file (header is not an object)")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(entry["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise ValueError(f"{path.name}: malformed entry for tensor {name!r}") from None
    if 8 + n + end != size:
        raise ValueError(
            f"{path.name} is truncated or padded: {size} bytes, header describes {8 + n + end}"
        )
    return header


def read_model_info(path: str | Path) -> ModelInfo:
    """The record of a checkpoint without loading its tensors (checks the header only)."""
    path = Path(path)
    info, _ = _read_record(path)
    return info


def _read_record(path: Path) -> tuple[ModelInfo, dict[str, Any]]:
    from napari_foram._outputs import check_input_file

    # Missing, a folder, or a FIFO / device (which would block the read): each said as
    # what it is, not as "not found".
    check_input_file(path, "checkpoint")
    header = _read_header(path)
    meta = header.get("__metadata__") or {}
    if METADATA_KEY not in meta:
        raise ValueError(f"{path.name} is a safetensors file but not a napari-foram checkpoint")
    try:
        record = json.loads(meta[METADATA_KEY])
    except json.JSONDecodeError:
        raise ValueError(f"{path.name}: checkpoint record is not valid JSON") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT_NAME:
        raise ValueError(f"{path.name}: not a {FORMAT_NAME} record")
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path.name}: checkpoint format version {version!r} is not supported "
            f"(this napari-foram reads version {FORMAT_VERSION})"
        )
    names = {f.name for f in fields(ModelInfo)}
    required = [
        f.name for f in fields(ModelInfo) if f.default is MISSING and f.default_factory is MISSING
    ]
    if missing := [name for name in required if name not in record]:
        # Said in the record's own terms (a damaged or hand-edited header), not as the
        # dataclass's TypeError.
        raise ValueError(
            f"{path.name}: damaged checkpoint record: no {', '.join(map(repr, missing))} field"
        )
    try:
        info = ModelInfo(**{k: v for k, v in record.items() if k in names})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path.name}: damaged checkpoint record: {exc}") from None
    return info, record


def load_checkpoint(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    backbone_weights: str | Path | None = None,
) -> tuple[FORAMNet, ModelInfo]:
    """Load a checkpoint written by `save_checkpoint`, refusing anything inconsistent.

    Parameters
    ----------
    path
        The ``.safetensors`` file.
    device
        Where to put the model.
    backbone_weights
        Head-only checkpoints only: where to rebuild the backbone from, overriding the
        recorded source (e.g. the local path of ``vgg16-397923af.pth``).

    Returns
    -------
    (model, info)
        The model in eval mode on `device`, and its record (with `sha256` of the file).

    Raises
    ------
    ValueError
        Missing file, not a safetensors file, truncated, wrong format version, edited
        record or tensors (digest mismatch), tensors that do not fit the recorded head and
        class count, tensors holding NaN or inf values, or a rebuilt backbone that differs
        from the one trained with.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    info, record = _read_record(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path.name}: cannot read tensors: {exc}".splitlines()[0]) from None
    if record.get("content_sha256") != _content_digest(record, tensors):
        raise ValueError(f"{path.name}: content digest mismatch (file edited or corrupted)")
    # The digest covers the tensors as stored; the model computes in fp32 (a float16 or
    # bfloat16 file, e.g. a converted one, loads converted).
    for name, t in tensors.items():
        if not t.is_floating_point():
            if not name.startswith(DENSITY_PREFIX):
                raise ValueError(f"{path.name}: tensor {name} holds {t.dtype}, not floats")
        elif t.dtype != torch.float32:
            tensors[name] = t.to(torch.float32)
    if (bad := nonfinite_tensor(tensors)) is not None:
        raise ValueError(f"checkpoint {path.name}: tensor {bad} holds NaN/inf values")
    # The optional feature density travels beside the network's own tensors.
    density_tensors = {k: tensors.pop(k) for k in list(tensors) if k.startswith(DENSITY_PREFIX)}
    try:
        density = FeatureDensity.from_state(density_tensors)
    except ValueError as exc:
        raise ValueError(f"{path.name}: {exc}") from None
    if density is not None and density.class_means.shape[0] != info.num_classes:
        raise ValueError(f"{path.name}: the feature density does not fit the class count")

    try:
        architecture = backbone_named(info.backbone)
    except ValueError as exc:
        raise ValueError(f"{path.name}: {exc}") from None
    # Build on the meta device (no memory, no init cost) just to learn the expected shapes.
    with torch.device("meta"):
        skeleton = FORAMNet(
            info.num_classes,
            hidden_units=info.hidden_units,
            dropout=info.dropout,
            feature_layout=info.feature_layout,
            backbone=architecture,
        )
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if info.head_only:
        expected = {k: s for k, s in expected.items() if k.startswith("head.")}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path.name}: tensors do not match the recorded model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(
                f"{path.name}: tensor {name} has shape {tuple(tensors[name].shape)}, the record "
                f"({info.num_classes} classes, units {list(info.hidden_units)}) needs {shape}"
            )

    if info.head_only:
        source = backbone_weights if backbone_weights is not None else info.backbone_weights
        if str(source).startswith("file:"):
            raise ValueError(
                f"{path.name} was trained on backbone {source}: pass that file as backbone_weights"
            )
        model = build_model(
            info.num_classes,
            backbone_weights=source,
            hidden_units=info.hidden_units,
            dropout=info.dropout,
            seed=info.backbone_seed or 0,
            feature_layout=info.feature_layout,
            backbone=architecture,
        )
        if info.backbone_sha256 and conv_sha256(model) != info.backbone_sha256:
            raise ValueError(
                f"{path.name}: the backbone rebuilt from {source} differs from the one the "
                "head was trained on"
            )
        if (bad := nonfinite_tensor(model.conv.state_dict())) is not None:
            raise ValueError(f"backbone {source}: tensor conv.{bad} holds NaN/inf values")
        model.head.load_state_dict(
            {k.removeprefix("head."): v for k, v in tensors.items()}, strict=True
        )
    else:
        model = skeleton
        model.load_state_dict(tensors, strict=True, assign=True)
    model.density = density
    info.sha256 = file_sha256(path)
    info.path = str(path)
    return model.to(device).eval(), info
