"""Per-run summary of a store, read from the small per-(run, epoch) arrays only (never
the per-example scores), so it is cheap even for remote or archived stores."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import numpy as np
import xarray as xr

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
