"""Review: check and correct a sample's labels in order of uncertainty, then retrain.

The classifier's MC-dropout statistics say which specimens it is unsure of. A person who
looks at those first removes most of the tally's classification error with the fewest
looks. This module is the Qt-free core of that loop (the widget ``Foram review`` and the
CLI command ``export-reviewed`` are thin layers over it):

- `ReviewSession`: a queue over one sample of a tally store, sorted by an uncertainty
  measure (`MEASURES`), filtered by predicted class, review status and an uncertainty
  range, with the actions accept, relabel, dubious, reject and a multi-level undo. Every
  verdict is written to the store at once (status, reviewed class, reviewer, time), so the
  tallies and exports use it immediately and nothing is lost on a crash.
- `expected_misclassified`: how many of the sample's counted specimens are expected to
  carry a wrong label, and the "review until expected misclassified < X" mode
  (`ReviewSession.set_target`).
- `export_validated_crops`: the confirmed and relabelled crops of a store as an
  ImageFolder (``<out>/<class>/<sample>_<row>.png``), and `fine_tune`: a new checkpoint
  trained on such a folder with the project's training code (the same as
  ``napari-foram train``, phase 1: the head on the current model's frozen backbone).

Expected number of misclassified specimens
------------------------------------------
A specimen the model labelled k with mean MC-dropout probabilities p is wrong with
probability 1 - p_k; the label is the arg-max, so that is 1 - max(p). Summed over the
specimens that count and that no person has validated, this is the expected number of
wrong labels in the tally (linearity of expectation; no independence needed)::

    E = sum over counted, unvalidated i of (1 - p_i[label_i])

Confirmed and relabelled specimens contribute 0 (a person fixed their label), rejected
ones and duplicates are not counted at all. A *dubious* specimen still counts as its
prediction, so it keeps contributing 1 - max(p): a person looked but could not confirm
the label. The estimate is as good as the model's calibration (see ``napari-foram
evaluate``: reliability diagram, ECE).
"""

# The queue's measure, re-exported: review code reads it beside the queue it orders.
from napari_foram.tally.stats import uncertainty

from ._export import (
    ExportedCrops,
    export_validated_crops,
    validated_rows,
)
from ._finetune import (
    FineTuneResult,
    _backbone_source,
    default_checkpoint_path,
    default_export_dir,
    fine_tune,
    resolve_model,
)
from ._queue import (
    DEFAULT_VAL_FRACTION,
    MEASURES,
    REVIEW_COLUMNS,
    STATUS_FILTERS,
    VALIDATED,
    QueueFilter,
    ReviewProgress,
    ReviewStep,
    expected_misclassified,
    misclassification_probability,
    queue_order,
)
from ._session import (
    ReviewSession,
)

__all__ = [
    "DEFAULT_VAL_FRACTION",
    "MEASURES",
    "REVIEW_COLUMNS",
    "STATUS_FILTERS",
    "VALIDATED",
    "ExportedCrops",
    "FineTuneResult",
    "QueueFilter",
    "ReviewProgress",
    "ReviewSession",
    "ReviewStep",
    "_backbone_source",
    "default_checkpoint_path",
    "default_export_dir",
    "expected_misclassified",
    "export_validated_crops",
    "fine_tune",
    "misclassification_probability",
    "queue_order",
    "resolve_model",
    "uncertainty",
    "validated_rows",
]
