"""`napari-foram`: the command line over the same core functions the widgets use.

Every command explains itself with --help, shows progress on long work, and on bad input
exits non-zero with one line that says why. Heavy imports (torch, napari, pymmcore-plus)
happen inside the commands, so `napari-foram --help` is instant.
"""

# Each command module registers its commands on `app` when imported; the order of these
# imports is the order of the commands in `napari-foram --help`.
from ._app import CommandError, app  # isort: skip
from ._acquire import demo, live  # isort: skip
from ._count import batch_cmd, classify, detect_cmd, synth  # isort: skip
from ._tally import check_cmd, export, export_reviewed_cmd  # isort: skip
from ._reclassify import model_card_cmd, reclassify_cmd  # isort: skip
from ._train import bench, evaluate_cmd, extract_crops_cmd, train  # isort: skip
from ._main import main  # isort: skip

__all__ = [
    "CommandError",
    "app",
    "batch_cmd",
    "bench",
    "check_cmd",
    "classify",
    "demo",
    "detect_cmd",
    "evaluate_cmd",
    "export",
    "export_reviewed_cmd",
    "extract_crops_cmd",
    "live",
    "main",
    "model_card_cmd",
    "reclassify_cmd",
    "synth",
    "train",
]
