"""Where VGG16 backbone weights come from, what they are, and what input they expect.

A set of ImageNet VGG16 weights is only half of a backbone: the other half is the input
convention it was trained with. Feeding Keras/Caffe weights torchvision's 0-1 normalised
pixels (or the other way round) gives features that still look like features and are
quietly worse. So every weights source here carries its convention, every checkpoint
records it (`ModelInfo.input_convention`), and inference uses what the checkpoint says.

Conventions (all RGB; ``x`` is the uint8 pixel value)
------------------------------------------------------
``torchvision``
    ``(x / 255 - mean) / std`` with ImageNet mean (0.485, 0.456, 0.406) and std
    (0.229, 0.224, 0.225): torchvision's ``vgg16-397923af.pth``.
``caffe``
    ``x - (123.68, 116.779, 103.939)``, no scaling: Keras ``VGG16(weights="imagenet")``,
    the weights the reference study used (Keras "caffe" mode, channels given as RGB).
``study``
    ``x / 255``, nothing removed: what the study's own code fed its network; selectable
    to reproduce the paper.

Resolving ``"imagenet"`` (`resolve_backbone`), in this order:

1. the file named by ``$NAPARI_FORAM_VGG16_WEIGHTS`` (``.safetensors`` or ``.pth``);
2. torch hub's cached torchvision file ``<hub>/checkpoints/vgg16-397923af.pth``;
3. torchvision's download into torch hub's cache (528 MB, a progress bar, the file's
   sha256 prefix checked), by default: as cellpose and stardist fetch their models, a
   first run gets the real backbone. Turned off by ``$NAPARI_FORAM_NO_DOWNLOAD=1``
   (`NO_DOWNLOAD_ENV`), the CLI's ``--no-download-weights``, an unticked checkbox in the
   live widget, or ``download=False``; an explicit choice wins over the variable;

else one `MissingWeightsError` that names all three ways (and, when a download was tried,
why it failed). Before 528 MB are asked for, one request with a short timeout
(`REACHABILITY_TIMEOUT_S`) checks that the server answers, so an offline machine falls
back at once instead of hanging; a negative answer is kept for the rest of the process.
torchvision writes the download to a ``.partial`` temporary file beside the cache file
and moves it into place only once its hash matches, so an interrupted or corrupt download
is never found as weights. Files are read as tensors only: safetensors holds nothing
else, and ``.pth`` files go through ``torch.load(..., weights_only=True)``, which refuses
pickled objects.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import torch

from napari_foram.reasons import one_line

#: Environment variable naming an ImageNet VGG16 weights file (checked first).
WEIGHTS_ENV = "NAPARI_FORAM_VGG16_WEIGHTS"
#: File name of torchvision's ImageNet VGG16 weights (as in torch hub's cache).
IMAGENET_FILENAME = "vgg16-397923af.pth"
#: Where torchvision downloads them from (read at call time: tests point it elsewhere).
IMAGENET_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
#: Environment variable that turns the download off ("1", "true", "yes", "on"; "0",
#: "false", "no", "off" or empty leave it on): the offline behaviour, fallbacks and all.
NO_DOWNLOAD_ENV = "NAPARI_FORAM_NO_DOWNLOAD"
#: Seconds the check that the download server answers may take (DNS, connect, reply).
#: Short: an offline machine must fall back at once, not hang in front of a user.
REACHABILITY_TIMEOUT_S = 3.0
#: URL -> why it did not answer: asked once per process (an offline demo start, a widget
#: reconnect and a training run must not each wait again).
_UNREACHABLE: dict[str, str] = {}
_FALSE_WORDS = ("", "0", "false", "no", "off")

#: Input conventions: name -> one-line description (module docstring has the maths).
INPUT_CONVENTIONS: dict[str, str] = {
    "torchvision": "RGB / 255, minus ImageNet mean (0.485, 0.456, 0.406), / std "
    "(0.229, 0.224, 0.225)",
    "caffe": "RGB 0-255 minus mean (123.68, 116.779, 103.939), no scaling (Keras/Caffe)",
    "study": "RGB / 255, nothing removed (the reference study's code)",
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN = (123.68, 116.779, 103.939)

#: Backbone names recorded in checkpoints (`ModelInfo.backbone_id`).
KERAS_IMAGENET = "vgg16-imagenet-keras"
TORCHVISION_IMAGENET = "vgg16-imagenet-torchvision"
RANDOM_BACKBONE = "vgg16-random"

#: sha256 of files we know, so a renamed copy is still recognised for what it is.
_KNOWN_FILES = {
    # The Keras ImageNet conv weights in torchvision key names (the shared weights file).
    "a7302eb8a99ff78bd3167df6accff2b1c05900b57b56adcf7cd34afb55139591": (
        KERAS_IMAGENET,
        "caffe",
    ),
}
#: A .pth/.safetensors file larger than this is not a VGG16 state_dict (guards reads).
_MAX_WEIGHTS_BYTES = 2 * 1024**3


class MissingWeightsError(FileNotFoundError, ValueError):
    """Pretrained backbone weights are not on this machine (also a ValueError: bad input)."""


@dataclass(frozen=True)
class BackboneWeights:
    """VGG16 conv tensors and what they are.

    Attributes
    ----------
    conv
        Tensors keyed as ``nn.Sequential`` indices of torchvision's ``vgg16().features``
        (``"0.weight"`` ... ``"28.bias"``).
    name
        `KERAS_IMAGENET`, `TORCHVISION_IMAGENET`, or ``"vgg16-file:<file name>"``.
    convention
        The input convention these weights expect (a key of `INPUT_CONVENTIONS`).
    origin
        How they were found, for messages and provenance (e.g. "$NAPARI_FORAM_VGG16_WEIGHTS
        (/path/file.safetensors)").
    file_sha256
        Digest of the file read (a download's too, once torchvision has checked it).
    """

    conv: dict[str, torch.Tensor]
    name: str
    convention: str
    origin: str
    file_sha256: str = ""


def check_convention(name: str) -> str:
    """`name` if it is a known input convention, else a one-line ValueError."""
    if name not in INPUT_CONVENTIONS:
        raise ValueError(
            f"unknown input convention {name!r}: use one of {', '.join(INPUT_CONVENTIONS)}"
        )
    return name


def convention_affine(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (scale, offset) so that network input = uint8 pixel * scale + offset."""
    check_convention(name)
    if name == "torchvision":
        scale = tuple(1.0 / (255.0 * s) for s in _IMAGENET_STD)
        offset = tuple(-m / s for m, s in zip(_IMAGENET_MEAN, _IMAGENET_STD, strict=True))
        return scale, offset
    if name == "caffe":
        return (1.0, 1.0, 1.0), tuple(-m for m in _CAFFE_MEAN)
    return (1.0 / 255.0,) * 3, (0.0, 0.0, 0.0)


def to_network_input(x01: torch.Tensor, convention: str) -> torch.Tensor:
    """(B, 3, H, W) RGB in 0-1 -> network input under `convention` (training's path)."""
    scale, offset = convention_affine(convention)
    s = torch.tensor(scale, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1) * 255.0
    o = torch.tensor(offset, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
    return x01 * s + o


def imagenet_weights_path() -> Path:
    """Where torch hub keeps torchvision's ImageNet VGG16 weights on this machine."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILENAME


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_allowed(choice: bool | None = None) -> bool:
    """Whether ImageNet weights may be downloaded: `choice` when the caller made one (an
    option, a checkbox), else yes unless ``$NAPARI_FORAM_NO_DOWNLOAD`` says no.
    """
    if choice is not None:
        return bool(choice)
    return os.environ.get(NO_DOWNLOAD_ENV, "").strip().lower() in _FALSE_WORDS


def _network_reason(exc: BaseException) -> str:
    """One line for a failed request: a URLError by its cause ("Name or service not
    known", "Connection refused"), not urllib's "<urlopen error ...>" wrapping.
    """
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        cause = exc.reason
        return one_line(cause) if isinstance(cause, BaseException) else str(cause)
    return one_line(exc) or type(exc).__name__


def download_unreachable_reason(url: str | None = None) -> str:
    """Why the server of `url` (default `IMAGENET_URL`) gives no answer to a HEAD request
    within `REACHABILITY_TIMEOUT_S`, in one line, or "" when it answers; a negative
    answer is kept for the rest of the process.

    An HTTP answer of any status counts as reachable (the download then says what is
    wrong). urllib honours the ``https_proxy`` / ``no_proxy`` variables, as torch's
    download does. The request runs in a daemon thread that is waited for at most the
    timeout, since a name lookup ignores socket timeouts and could otherwise hang.
    """
    url = url or IMAGENET_URL
    if url in _UNREACHABLE:
        return _UNREACHABLE[url]
    timeout = float(REACHABILITY_TIMEOUT_S)
    outcome: list[str] = []

    def ask() -> None:
        request = urllib.request.Request(
            url, method="HEAD", headers={"User-Agent": "napari-foram"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                outcome.append("")
        except urllib.error.HTTPError:
            outcome.append("")  # the server answered: reachable
        except Exception as exc:  # no name, refused, a timeout, a reset, TLS: all say "no"
            outcome.append(_network_reason(exc))

    worker = threading.Thread(target=ask, name="napari-foram-reachability", daemon=True)
    worker.start()
    worker.join(timeout)
    why = outcome[0] if outcome else f"no answer within {timeout:g} s"
    if why:
        host = urlsplit(url).netloc
        why = f"{host} unreachable ({why})"
        _UNREACHABLE[url] = why
    return why


def _download_note(download: bool | None, failure: str) -> str:
    """What the missing-weights message says about the download: why it failed, or how
    to allow it.
    """
    if failure:
        return f"the download of {IMAGENET_URL} failed: {failure}"
    if download is None and not download_allowed():
        how = f"unset ${NO_DOWNLOAD_ENV} or pass --download-weights"
    else:
        how = "--download-weights"
    return f"or allow the download of {IMAGENET_URL} ({how})"


def _missing_message(download: bool | None = False, failure: str = "") -> str:
    env = os.environ.get(WEIGHTS_ENV)
    first = (
        f"${WEIGHTS_ENV} is set to {env}, which is not a file"
        if env
        else (f"set ${WEIGHTS_ENV} to a VGG16 weights file (.safetensors or .pth)")
    )
    return (
        f"ImageNet VGG16 weights not found: {first}; or put {IMAGENET_FILENAME} in torch "
        f"hub's cache at {imagenet_weights_path()}; {_download_note(download, failure)}"
    )


def locate_imagenet_weights(*, required: bool = False) -> tuple[Path, str] | None:
    """(file, how it was found) of ImageNet weights on this machine, without reading it:
    ``$NAPARI_FORAM_VGG16_WEIGHTS``, then torch hub's cached torchvision file.

    None when neither is there, or `MissingWeightsError` naming every way to provide them
    when `required`. A variable that names no file is always an error: the user meant it.
    """
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise MissingWeightsError(_missing_message())
        return path, f"${WEIGHTS_ENV} ({path})"
    cached = imagenet_weights_path()
    if cached.is_file():
        return cached, f"torch hub cache ({cached})"
    if required:
        raise MissingWeightsError(_missing_message())
    return None


def download_imagenet_weights() -> tuple[Path, dict[str, object]]:
    """Download torchvision's ImageNet VGG16 weights into torch hub's cache and load them
    as tensors: (the cached file, its state_dict).

    torchvision's own path (``torch.hub.load_state_dict_from_url``): a progress bar on
    stderr, the sha256 prefix in the file name checked, the file written to a temporary
    ``.partial`` name and moved into place only when whole and matching. The server is
    asked first whether it answers (`download_unreachable_reason`), so an offline machine
    fails in at most `REACHABILITY_TIMEOUT_S` seconds.

    Raises
    ------
    MissingWeightsError
        The server does not answer or the download failed: one line naming every way to
        provide weights and why the download failed.
    """
    url = IMAGENET_URL
    failure = download_unreachable_reason(url)
    if not failure:
        dest = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlsplit(url).path).name
        try:
            state = torch.hub.load_state_dict_from_url(
                url, progress=True, check_hash=True, map_location="cpu", weights_only=True
            )
        except Exception as exc:  # network, HTTP status, hash, disk, unpickling: one reason
            failure = _network_reason(exc)
        else:
            if isinstance(state, dict):
                return dest, state
            failure = f"{dest.name} is not a state_dict (got {type(state).__name__})"
    raise MissingWeightsError(_missing_message(True, failure))


def imagenet_weights_file(*, download: bool | None = None) -> tuple[Path, str]:
    """(file, how it was found) of ImageNet weights: `locate_imagenet_weights`, else the
    download into torch hub's cache when `download_allowed` (`download`).

    Raises
    ------
    MissingWeightsError
        None found and no download allowed, or the download failed (one line).
    """
    found = locate_imagenet_weights()
    if found is not None:
        return found
    if not download_allowed(download):
        raise MissingWeightsError(_missing_message(download))
    path, _ = download_imagenet_weights()  # the tensors are read later, when needed
    return path, f"download ({IMAGENET_URL})"


def resolve_backbone(
    source: str | Path, *, download: bool | None = None, convention: str | None = None
) -> BackboneWeights:
    """The conv tensors of a weights source, with their name and input convention.

    Parameters
    ----------
    source
        ``"imagenet"`` (environment variable, torch hub cache, then download; see the
        module docstring) or the path of a weights file.
    download
        With ``"imagenet"``: whether torchvision may download its weights when neither
        the environment variable nor the cache gives a file (`download_allowed`: None
        means yes unless ``$NAPARI_FORAM_NO_DOWNLOAD`` says no).
    convention
        Override the convention the file says or implies (a file of unknown origin).

    Raises
    ------
    MissingWeightsError
        No weights where asked (the message names every way to provide them, and why a
        download failed).
    ValueError
        An unreadable file, a pickled object, or tensors that are not VGG16 conv layers.
    """
    if convention is not None:
        check_convention(convention)
    if str(source) == "imagenet":
        found = locate_imagenet_weights()
        if found is not None:
            path, origin = found
            return read_weights_file(path, convention=convention, origin=origin)
        if not download_allowed(download):
            raise MissingWeightsError(_missing_message(download))
        # Left in torch hub's cache under torchvision's name: the next call finds it there.
        path, state = download_imagenet_weights()
        conv = _conv_tensors(state, path.name)
        _check_vgg16_shapes(conv, path.name)
        name, implied = _identify(path, "", {})
        return BackboneWeights(
            conv=conv,
            name=name,
            convention=convention or implied,
            origin=f"download ({IMAGENET_URL})",
            file_sha256=file_sha256(path),  # the same provenance as when found in the cache
        )
    path = Path(source).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"backbone weights file not found: {path}")
    return read_weights_file(path, convention=convention)


def read_weights_file(
    path: str | Path, *, convention: str | None = None, origin: str = ""
) -> BackboneWeights:
    """Read VGG16 conv weights from a ``.safetensors`` or ``.pth`` file, tensors only.

    The convention comes from, in order: the `convention` argument, a file we know by
    its sha256, the safetensors metadata (``input_convention``, or an ``input`` text that
    describes 0-255 minus the mean), torchvision's file name; otherwise "torchvision"
    (what a ``.pth`` of torchvision's VGG16 expects).
    """
    path = Path(path)
    if convention is not None:
        check_convention(convention)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ValueError(f"cannot read backbone weights {path}: {exc.strerror}") from None
    if size > _MAX_WEIGHTS_BYTES:
        raise ValueError(f"{path.name} is {size / 1e9:.1f} GB: not a VGG16 weights file")
    digest = file_sha256(path)
    metadata: dict[str, str] = {}
    with path.open("rb") as fh:
        head = fh.read(8)
    if _looks_like_safetensors(path, head, size):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                metadata = dict(fh.metadata() or {})
                state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as exc:
            reason = one_line(exc)
            raise ValueError(f"cannot read backbone weights {path.name}: {reason}") from None
    else:
        try:
            # weights_only: plain tensors and containers; a pickled object is refused.
            loaded = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as exc:
            reason = one_line(exc)
            if "weights_only" in str(exc) or "Unsupported global" in str(exc):
                reason = "it holds pickled Python objects, not only tensors (refused)"
            raise ValueError(
                f"cannot read backbone weights {path.name}: {reason or type(exc).__name__}"
            ) from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path.name} is not a state_dict (got {type(loaded).__name__})")
        state = loaded
    conv = _conv_tensors(state, path.name)
    _check_vgg16_shapes(conv, path.name)
    name, implied = _identify(path, digest, metadata)
    return BackboneWeights(
        conv=conv,
        name=name,
        convention=convention or implied,
        origin=origin or f"file ({path})",
        file_sha256=digest,
    )


def _looks_like_safetensors(path: Path, head: bytes, size: int) -> bool:
    if path.suffix == ".safetensors":
        return True
    if len(head) < 8:
        return False
    (n,) = struct.unpack("<Q", head)
    return 2 <= n <= size - 8 and path.suffix not in (".pth", ".pt")


def _identify(path: Path, digest: str, metadata: dict[str, str]) -> tuple[str, str]:
    """(backbone name, implied input convention) of a weights file."""
    if digest in _KNOWN_FILES:
        return _KNOWN_FILES[digest]
    stated = metadata.get("input_convention", "")
    if stated in INPUT_CONVENTIONS:
        return f"vgg16-file:{path.name}", stated
    text = metadata.get("input", "").lower()
    source = metadata.get("source", "").lower()
    if "0-255" in text and "mean" in text:
        return (KERAS_IMAGENET if "keras" in source else f"vgg16-file:{path.name}"), "caffe"
    if path.name == IMAGENET_FILENAME:
        return TORCHVISION_IMAGENET, "torchvision"
    return f"vgg16-file:{path.name}", "torchvision"


def _conv_tensors(state: dict[str, object], where: str) -> dict[str, torch.Tensor]:
    """Keep the ``features.*`` tensors of a full vgg16 state_dict, prefix stripped."""
    conv = {
        k.removeprefix("features."): v
        for k, v in state.items()
        if isinstance(k, str) and k.startswith("features.") and isinstance(v, torch.Tensor)
    }
    if not conv:
        # Also accept a bare conv-block state_dict (keys "0.weight", ...).
        conv = {
            k: v
            for k, v in state.items()
            if isinstance(k, str) and k.split(".", 1)[0].isdigit() and isinstance(v, torch.Tensor)
        }
    if not conv:
        raise ValueError(f"{where} holds no VGG16 conv tensors ('features.*' keys)")
    return conv


# The layer plan and the shapes it gives live here, not in `model`: checking a weights
# file needs them, and `model` builds on this module.
#: VGG16 layer plan (torchvision's configuration "D"): channels per conv, "M" = max-pool.
VGG16_PLAN: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


def vgg16_conv_shapes() -> dict[str, tuple[int, ...]]:
    """Shapes of VGG16's conv tensors, keyed as in torchvision's ``vgg16().features``."""
    shapes: dict[str, tuple[int, ...]] = {}
    in_channels, index = 3, 0
    for item in VGG16_PLAN:
        if item == "M":
            index += 1
            continue
        assert isinstance(item, int)
        shapes[f"{index}.weight"] = (item, in_channels, 3, 3)
        shapes[f"{index}.bias"] = (item,)
        in_channels, index = item, index + 2  # conv + ReLU
    return shapes


def _check_vgg16_shapes(conv: dict[str, torch.Tensor], where: str) -> None:
    """One-line ValueError unless `conv` has exactly VGG16's 13 conv layers' shapes."""
    expected = vgg16_conv_shapes()
    if set(conv) != set(expected):
        missing = sorted(set(expected) - set(conv))[:2]
        extra = sorted(set(conv) - set(expected))[:2]
        raise ValueError(
            f"{where} is not VGG16's conv layers (missing {missing}, unexpected {extra})"
        )
    for key, shape in expected.items():
        if tuple(conv[key].shape) != shape:
            raise ValueError(
                f"{where} is not VGG16: {key} has shape {tuple(conv[key].shape)}, "
                f"VGG16 has {shape}"
            )
