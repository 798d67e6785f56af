"""Names of the held-out score groups, declared once for the writers
(:mod:`scorebank.pipeline.holdout`, :mod:`scorebank.pipeline.memorization`) and the readers
(:mod:`scorebank.analysis.label_issues`, :mod:`scorebank.analysis.memorization`).  The
layouts are documented in the writers' module docstrings.

Each unit of work of such a group (a fold of a holdout seed, a memorisation model) keeps its
status in its own record while it is trained, ``checkpoints/GROUP/[SEED/]run-N.json``, beside
the lock its owner holds (:class:`scorebank.pipeline.subset_group.UnitWriter`); the command's
coordinator copies the records into the group's status table (attribute ``folds`` /
``models``) when it ends.  :func:`live_unit_status` is what a reader shows meanwhile."""

from __future__ import annotations

import os

from scorebank.stores import schema as S
from scorebank.stores.zarrstore import read_run_records, run_folder, run_owner_active

# ---------------------------------------------------------------- holdout/ (K-fold out-of-fold probabilities)
HOLDOUT_GROUP = "holdout"
SEED = "seed"
CLASS = "class"
FOLD = "fold"
ASSIGNED_FOLD = "assigned_fold"  # (seed, example) int64
PROBABILITY = "probability"  # (seed, example, class) float32
FOLD_DONE = "fold_done"  # (seed, fold) bool
ATTR_HOLDOUT = "holdout"  # the HoldoutSpec as JSON
ATTR_FOLDS = "folds"  # status table: {"<seed>/<fold>": status record of that fold's model}

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
ATTR_MODELS = "models"  # status table: {"<model>": status record of that model}
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


def live_unit_status(path: str | os.PathLike, name: str, table: dict | None = None) -> dict[str, dict]:
    """The status of every unit of the store's group ``name`` as a reader should show it now:
    the group's status table ``table`` (``{unit key: record}``) updated by the units' own
    records (``checkpoints/NAME/run-N.json`` and, one level per leading part of the key, in
    numbered sub-folders: key ``"SEED/FOLD"``); a unit recorded ``running`` whose owner is gone
    (nobody holds its lock: ``kill -9``, a lost worker) is ``interrupted``.  Also reads a
    retrain group's runs (``name`` = ``retrain/NAME``, keys = seeds)."""
    units = {str(k): dict(v) for k, v in (table or {}).items() if isinstance(v, dict)}
    top = run_folder(path, name)
    if not top.is_dir():
        return units
    for folder in sorted({f.parent for f in top.rglob("run-*.json")}):
        prefix = folder.relative_to(top).parts
        if not all(p.isdigit() for p in prefix):
            continue
        sub = "/".join((name, *prefix))
        for n, record in read_run_records(path, sub).items():
            if record.get("status") == S.RUN_RUNNING and not run_owner_active(path, int(n), sub):
                record = {**record, "status": S.RUN_INTERRUPTED}
            units["/".join((*prefix, n))] = record
    return dict(sorted(units.items(), key=lambda kv: _numeric(kv[0])))  # 0/2 before 0/10, as trained


def _numeric(key: str) -> tuple:
    return tuple((0, int(p), "") if p.lstrip("-").isdigit() else (1, 0, p) for p in key.split("/"))
