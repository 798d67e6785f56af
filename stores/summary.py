"""Per-run summary of a store, read from the small per-(run, epoch) arrays only (never
the per-example scores), so it is cheap even for remote or archived stores; and the status
of the units of its training groups (retrain runs, holdout folds, memorisation models:
:func:`training_groups`), read from their status tables and records only."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from scorebank.core.registry import Registry
from scorebank.stores import heldout as H
from scorebank.stores import schema as S


@dataclass(frozen=True)
class RunSummary:
    run: int  # the store's run id (== seed except in merged stores, which renumber repeated seeds)
    seed: int  # the training seed
    status: str
    last_epoch: int | None  # last completed epoch
    failed_epoch: int | None
    train_accuracy: float  # clean pass at the last recorded completed epoch (NaN if none)
    test_accuracy: float  # at the last completed epoch
    separation_epoch: int | None  # first recorded epoch with clean-pass train accuracy 1.0
    pristine_accuracy: float = math.nan  # with label noise: clean-pass accuracy on uncorrupted examples
    corrupt_accuracy: float = math.nan  # ... and on corrupted ones (w.r.t. their corrupted label)
    source: str | None = None  # merged stores: the store or archive the run came from


@dataclass(frozen=True)
class StoreSummary:
    dataset: str
    fingerprint: str
    n_examples: int
    epochs: int  # highest epoch of the store
    recorded_epochs: tuple[int, ...]  # clean-pass epochs named by the configuration
    features: tuple[str, ...]
    config: dict
    runs: tuple[RunSummary, ...]

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def separation_epochs(train_accuracy: np.ndarray, recorded: np.ndarray, epochs: np.ndarray) -> list[int | None]:
    """Margins paper's data separation: per run, the first recorded epoch whose clean-pass
    training accuracy is 100% (None if never).  Arrays are (run, epoch)."""
    out: list[int | None] = []
    for acc, rec in zip(train_accuracy, recorded):
        hit = np.flatnonzero(rec & (acc >= 1.0))
        out.append(int(epochs[hit[0]]) if hit.size else None)
    return out


#: Arrays the summary reads (the label-noise ones too when the store has that feature).
SUMMARY_ARRAYS = (S.RUN, S.EPOCH, S.EXAMPLE, S.COMPLETED, S.RECORDED, S.TRAIN_ACCURACY, S.TEST_ACCURACY)
NOISE_ARRAYS = (S.PRISTINE_ACCURACY, S.CORRUPT_ACCURACY)


def _live_runs(ds: xr.Dataset, runs_attr: dict) -> dict:
    """The runs' status now for a store directory, local or on an object store (the per-run
    records of runs being written; ``interrupted`` for a run whose owner is gone:
    ``zarrstore.live_runs``, ``objectstore.object_live_runs``), else the consolidated ``runs``
    attribute."""
    source = ds.encoding.get("source")
    if isinstance(runs_attr, dict) and isinstance(source, str) and "://" not in source \
            and os.path.isfile(os.path.join(source, "zarr.json")):
        from scorebank.stores.zarrstore import live_runs

        return live_runs(source, runs_attr)
    if isinstance(runs_attr, dict) and isinstance(source, str):
        from scorebank.stores.objectstore import object_live_runs, writable_url

        if writable_url(source):  # a store written on an object store: its records and leases
            return object_live_runs(source, runs_attr)
    return runs_attr


def summarize(ds: xr.Dataset, shown: str | None = None) -> StoreSummary:
    """The store's summary.  ``ds`` is what :func:`~scorebank.stores.location.open_scores`
    returned; ``shown`` names the store in errors.  A store lacking an array the summary
    reads, with attributes of the wrong type or with a chunk that cannot be decoded raises
    a :class:`~scorebank.stores.errors.ScorebankError` naming it."""
    from scorebank.stores.location import check_attributes, check_dataset, reading, store_config

    shown = shown or str(ds.encoding.get("source") or "Dataset")
    features = check_attributes(ds.attrs, shown)
    noisy = S.FEATURE_LABEL_NOISE in features or any(name in ds for name in NOISE_ARRAYS)
    check_dataset(ds, shown, SUMMARY_ARRAYS + (NOISE_ARRAYS if noisy else ()))

    def values(name: str) -> np.ndarray:
        with reading(shown, name):
            return ds[name].values

    epochs = values(S.EPOCH)
    completed = values(S.COMPLETED)
    recorded = values(S.RECORDED)
    train_acc = values(S.TRAIN_ACCURACY)
    test_acc = values(S.TEST_ACCURACY)
    runs_attr = _live_runs(ds, ds.attrs.get(S.ATTR_RUNS, {}))
    seps = separation_epochs(train_acc, recorded & completed, epochs)
    pristine = values(S.PRISTINE_ACCURACY) if noisy else None
    corrupt = values(S.CORRUPT_ACCURACY) if noisy else None
    run_ids = values(S.RUN).tolist()
    # merged stores (scorebank.stores.merge) carry the training seed and source per run
    seeds = values(S.SEED).tolist() if S.SEED in ds.coords else run_ids
    sources = values(S.SOURCE).tolist() if S.SOURCE in ds.coords else [None] * len(run_ids)
    rows = []
    for i, run in enumerate(run_ids):
        info = runs_attr.get(str(run), {})
        done = np.flatnonzero(completed[i])
        rec_done = np.flatnonzero(completed[i] & recorded[i])
        rows.append(RunSummary(
            run=int(run), seed=int(seeds[i]), source=None if sources[i] is None else str(sources[i]),
            status=info.get("status", S.RUN_PENDING),
            last_epoch=int(epochs[done[-1]]) if done.size else None,
            failed_epoch=info.get("failed_epoch"),
            train_accuracy=float(train_acc[i, rec_done[-1]]) if rec_done.size else math.nan,
            test_accuracy=float(test_acc[i, done[-1]]) if done.size else math.nan,
            separation_epoch=seps[i],
            pristine_accuracy=float(pristine[i, rec_done[-1]]) if noisy and rec_done.size else math.nan,
            corrupt_accuracy=float(corrupt[i, rec_done[-1]]) if noisy and rec_done.size else math.nan))
    config = store_config(ds.attrs, shown)
    return StoreSummary(dataset=ds.attrs.get(S.ATTR_DATASET) or "?",
                        fingerprint=ds.attrs.get(S.ATTR_FINGERPRINT) or "?",
                        n_examples=int(ds.sizes[S.EXAMPLE]), epochs=int(epochs[-1]) if len(epochs) else 0,
                        recorded_epochs=config.record_epochs if config else (),
                        features=tuple(ds.attrs.get(S.ATTR_FEATURES, ())),
                        config=dataclasses.asdict(config) if config else {}, runs=tuple(rows))


# ----------------------------------------------------------------------------- training groups
@dataclass(frozen=True)
class TrainingGroupKind:
    """A kind of group whose units of work are trained like runs (each under its own lock,
    with its own status record): what one unit is called, the attribute holding the group's
    consolidated status table, and the keys of the units the coordinator allocated."""

    unit: str
    status_attr: str
    keys: Callable[[Any], list[str]]  # zarr group -> unit keys
    nested: bool = False  # the kind's folder holds one group per sub-folder (retrain/NAME)


def _retrain_keys(group) -> list[str]:
    return [str(int(s)) for s in group[S.RUN][:]]


def _holdout_keys(group) -> list[str]:
    return [f"{int(s)}/{k}" for s in group[H.SEED][:] for k in range(group[H.FOLD].shape[0])]


def _memorization_keys(group) -> list[str]:
    return [str(int(m)) for m in group[H.MODEL][:]]


TRAINING_GROUPS: Registry[TrainingGroupKind] = Registry("training group", "info")
TRAINING_GROUPS.add(S.RETRAIN_GROUP, TrainingGroupKind("run", S.ATTR_RUNS, _retrain_keys, nested=True),
                    help="retrain/NAME: one run per seed (retrain, prune-curve, easy-hard)")
TRAINING_GROUPS.add(H.HOLDOUT_GROUP, TrainingGroupKind("fold", H.ATTR_FOLDS, _holdout_keys),
                    help="one model per (seed, fold): key SEED/FOLD")
TRAINING_GROUPS.add(H.MEMORIZATION_GROUP, TrainingGroupKind("model", H.ATTR_MODELS, _memorization_keys),
                    help="one model per random subset: key MODEL")

#: the order in which :meth:`GroupStatus.describe` counts statuses
STATUS_ORDER = (S.RUN_COMPLETE, S.RUN_RUNNING, S.RUN_INTERRUPTED, S.RUN_FAILED, S.RUN_PENDING)


@dataclass(frozen=True)
class GroupStatus:
    """The units of one training group and their status now (``pending``: no record yet)."""

    group: str  # "retrain/NAME", "holdout", "memorization"
    unit: str  # what one unit is: "run", "fold", "model"
    status: dict  # unit key -> status record

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for record in self.status.values():
            out[record.get("status", S.RUN_PENDING)] = out.get(record.get("status", S.RUN_PENDING), 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (STATUS_ORDER + (kv[0],)).index(kv[0])))

    def describe(self) -> str:
        """One line, e.g. ``holdout: 15 folds: 14 complete, 1 interrupted (0/3)``."""
        parts = []
        for status, n in self.counts().items():
            part = f"{n} {status}"
            if status not in (S.RUN_COMPLETE, S.RUN_PENDING):
                keys = [k for k, r in self.status.items() if r.get("status", S.RUN_PENDING) == status]
                part += f" ({', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''})"
            parts.append(part)
        n = len(self.status)
        return f"{self.group}: {n} {self.unit}{'' if n == 1 else 's'}: {', '.join(parts) or 'none'}"


def training_groups(location: str | os.PathLike) -> list[GroupStatus]:
    """The status now of every training group (:data:`TRAINING_GROUPS`) of the local store
    directory ``location``, as ``info`` shows score runs (:func:`_live_runs`): each group's
    status table updated by its units' own records, a unit recorded ``running`` whose owner
    is gone shown ``interrupted`` (:func:`scorebank.stores.heldout.live_unit_status`).
    Empty for anything but a local store directory (archives, URLs: not read)."""
    import zarr

    from scorebank.stores.heldout import live_unit_status

    path = Path(location) if not isinstance(location, str) or "://" not in location else None
    if path is None or not (path / "zarr.json").is_file():
        return []
    names = []
    for kind_name in TRAINING_GROUPS:
        kind = TRAINING_GROUPS.get(kind_name)
        folder = path / kind_name
        subs = sorted(d for d in folder.iterdir() if d.is_dir()) if kind.nested and folder.is_dir() else [folder]
        names.extend((f"{kind_name}/{d.name}" if kind.nested else kind_name, kind) for d in subs)
    out = []
    for name, kind in names:
        if not (path / name / "zarr.json").is_file():
            continue
        group = zarr.open_group(path / name, mode="r", zarr_format=3, use_consolidated=False)
        try:
            keys = kind.keys(group)
        except KeyError:  # not a training group of this kind (e.g. a group left half-made)
            continue
        table = group.attrs.get(kind.status_attr) or {}
        live = live_unit_status(path, name, table if isinstance(table, dict) else {})
        out.append(GroupStatus(name, kind.unit, {k: live.get(k, {"status": S.RUN_PENDING}) for k in keys}))
    return out
