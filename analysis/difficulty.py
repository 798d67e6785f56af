"""Example difficulty (Zielinski, Krishnan, Chatterjee 2021, "Coherent gradients at scale",
Sec. 4.2-4.3, after Arpit et al. 2017).

In one run, train until the training accuracy first reaches a threshold (50% in the paper);
the examples classified correctly at that point are *easy*, the rest *hard*.  Repeating
this over runs, an example's *difficulty* is the number of runs in which it is hard
(0 = "super easy" ... R = "super hard").

Here, per run, the epoch is the first recorded (clean pass ran, epoch completed) epoch whose
clean-pass ``train_accuracy`` is at least the threshold, and easy means ``correct`` at that
epoch.
"""

from __future__ import annotations

from collections.abc import Iterable

import dask.array as da
import numpy as np
import xarray as xr

from scorebank.analysis import access
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError, ScorebankError


def threshold_epochs(store: access.StoreLike, *, threshold: float = 0.5,
                     runs: Iterable[int] | None = None, scheduler=None) -> xr.DataArray:
    """Per run, the first recorded epoch whose training accuracy is >= ``threshold``
    (a (run,) int64 DataArray, -1 where never).  Reads only per-(run, epoch) arrays
    (``scheduler`` is accepted for uniformity)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise InvalidArgumentError(
            f"threshold {threshold!r} is not a training accuracy in (0, 1]; e.g. 0.5")
    ds = access.open_store(store)
    seeds = access.resolve_runs(ds, runs)
    acc = access.per_epoch(ds, S.TRAIN_ACCURACY, seeds)
    hit = access.recorded_mask(ds, seeds) & (np.nan_to_num(acc, nan=-1.0) >= threshold)
    ep = access.epochs(ds)
    values = np.asarray([int(ep[np.flatnonzero(h)[0]]) if h.any() else access.NEVER for h in hit],
                        dtype=np.int64)
    return xr.DataArray(values, dims=(S.RUN,), coords={S.RUN: np.asarray(seeds, dtype=np.int64)},
                        name="threshold_epoch", attrs={"threshold": float(threshold)})


def difficulty(store: access.StoreLike, *, threshold: float = 0.5, runs: Iterable[int] | None = None,
               scheduler=None) -> xr.Dataset:
    """Coherent Gradients' difficulty: in how many runs each example is *hard* (not
    classified correctly at the run's first recorded epoch with training accuracy >=
    ``threshold``).

    ``runs`` defaults to all completed runs; every run must reach the threshold
    (:class:`ScorebankError` names those that do not).  Returns a Dataset with
    ``difficulty`` (example) int64 in 0..R, ``hard`` (run, example) bool,
    ``threshold_epoch`` and ``train_accuracy`` (run) at that epoch."""
    ds = access.open_store(store)
    seeds = access.resolve_runs(ds, runs)
    te = threshold_epochs(ds, threshold=threshold, runs=seeds)
    never = [s for s, e in zip(seeds, te.values) if e == access.NEVER]
    if never:
        acc = access.per_epoch(ds, S.TRAIN_ACCURACY, never)
        best = np.where(access.recorded_mask(ds, never), np.nan_to_num(acc, nan=-1.0), -1.0).max(axis=1)
        listing = ", ".join(f"run {s} (best {b:.4f})" for s, b in zip(never, best))
        raise ScorebankError(
            f"train accuracy never reaches the threshold {threshold!r} in {listing}; lower "
            "--threshold or leave those runs out with --runs")
    run_pos = access.run_positions(ds, seeds)
    pos = [access.epoch_position(ds, int(e)) for e in te.values]
    correct = da.concatenate([access.select(ds, S.CORRECT, runs=[rp], epochs=p)
                              for rp, p in zip(run_pos, pos)], axis=0)
    hard = ~correct
    hard_np, diff = access.compute(hard, hard.sum(axis=0, dtype=np.int64), scheduler=scheduler)
    acc = access.per_epoch(ds, S.TRAIN_ACCURACY, seeds)[np.arange(len(seeds)), pos]
    out = xr.Dataset({"difficulty": ((S.EXAMPLE,), np.asarray(diff, dtype=np.int64)),
                      "hard": ((S.RUN, S.EXAMPLE), np.asarray(hard_np, dtype=bool)),
                      "threshold_epoch": te,
                      "train_accuracy": ((S.RUN,), acc.astype(np.float64))},
                     coords={S.RUN: np.asarray(seeds, dtype=np.int64)})
    out.attrs.update(threshold=float(threshold),
                     definition="number of runs in which the example is misclassified when train "
                                "accuracy first reaches the threshold (Coherent Gradients Sec. 4.3)")
    return out
