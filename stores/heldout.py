"""Names of the held-out score groups, declared once for the writers
(:mod:`scorebank.pipeline.holdout`, :mod:`scorebank.pipeline.memorization`) and the readers
(:mod:`scorebank.analysis.label_issues`, :mod:`scorebank.analysis.memorization`).  The
layouts are documented in the writers' module docstrings."""

from __future__ import annotations

from scorebank.stores import schema as S

# ---------------------------------------------------------------- holdout/ (K-fold out-of-fold probabilities)
HOLDOUT_GROUP = "holdout"
SEED = "seed"
CLASS = "class"
FOLD = "fold"
ASSIGNED_FOLD = "assigned_fold"  # (seed, example) int64
PROBABILITY = "probability"  # (seed, example, class) float32
FOLD_DONE = "fold_done"  # (seed, fold) bool
ATTR_HOLDOUT = "holdout"  # the HoldoutSpec as JSON

# ---------------------------------------------------------------- memorization/ (subset training)
MEMORIZATION_GROUP = "memorization"
MODEL = "model"
TEST_EXAMPLE = "test_example"
IN_SUBSET = "in_subset"  # (model, example) bool
CORRECT = S.CORRECT  # (model, example) bool
TEST_CORRECT = "test_correct"  # (model, test_example) bool
COMPLETED = S.COMPLETED  # (model,) bool
#: the records the training writes; everything else in the group is a derived estimate
MEMORIZATION_RECORDS = (MODEL, S.EXAMPLE, TEST_EXAMPLE, IN_SUBSET, CORRECT, TEST_CORRECT, COMPLETED)
ATTR_MEMORIZATION = "memorization"  # the MemorizationSpec as JSON
# estimates (scorebank.analysis.memorization)
MEMORIZATION = "memorization"  # (example,) float64
MEMORIZATION_SE = "memorization_se"  # (example,) float64
N_IN = "n_in"  # (example,) int64
N_OUT = "n_out"  # (example,) int64
RANK = "rank"
INFLUENCE = "influence"  # (test_example, rank) float64
INFLUENCE_INDEX = "influence_index"  # (test_example, rank) int64
ATTR_ESTIMATES = "estimates"  # written last: {"models": M, "influence_k": k or None}


def drop_estimates(group_dir, group) -> None:
    """Remove the derived estimates (every array but :data:`MEMORIZATION_RECORDS`, and the
    ``estimates`` attribute, first) from the memorization group ``group`` stored at the local
    directory ``group_dir``."""
    import shutil
    from pathlib import Path

    if ATTR_ESTIMATES in group.attrs:
        del group.attrs[ATTR_ESTIMATES]
    for name in list(group.array_keys()):
        if name not in MEMORIZATION_RECORDS:
            shutil.rmtree(Path(group_dir) / name)
