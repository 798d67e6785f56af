"""Training accuracy per difficulty level (Coherent Gradients, Sec. 4.3 and Fig. 5a).

Difficulty comes from one set of runs (typically SGD runs:
:func:`scorebank.analysis.difficulty.difficulty`, the number of runs in which an example
is hard); the accuracy comes from another run (typically an RM3 run), as the fraction of
the examples at each difficulty level that it classifies correctly (clean pass, ``correct``)
at a chosen recorded epoch.  Both stores must describe the same examples (same dataset
fingerprint); they may be the same store.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xarray as xr

from scorebank.analysis import access
from scorebank.analysis.difficulty import difficulty
from scorebank.stores import schema as S
from scorebank.stores.errors import ConfigMismatchError, InvalidArgumentError


def accuracy_by_difficulty(store: access.StoreLike, run: int, *, difficulty_store: access.StoreLike | None = None,
                           epoch: int | None = None, threshold: float = 0.5,
                           difficulty_runs: Iterable[int] | None = None, scheduler=None) -> xr.Dataset:
    """Per difficulty level d = 0..R: ``count`` of examples and ``accuracy`` of ``run`` of
    ``store`` on them at ``epoch`` (default: the run's last recorded completed epoch)."""
    ds = access.open_store(store)
    dds = ds if difficulty_store is None else access.open_store(difficulty_store)
    if ds.attrs.get(S.ATTR_FINGERPRINT) != dds.attrs.get(S.ATTR_FINGERPRINT):
        raise ConfigMismatchError(
            f"the difficulty store describes data set {dds.attrs.get(S.ATTR_FINGERPRINT)!r} but the store "
            f"{ds.attrs.get(S.ATTR_FINGERPRINT)!r}; both must hold the same examples")
    seeds = access.resolve_runs(ds, [run])
    usable = access.recorded_mask(ds, seeds)[0] & access.completed_mask(ds, seeds)[0]
    epochs = access.epochs(ds)
    if epoch is None:
        if not usable.any():
            raise InvalidArgumentError(f"run {run!r} has no recorded completed epoch")
        epoch = int(epochs[np.flatnonzero(usable)[-1]])
    pos = access.epoch_position(ds, epoch)
    if not usable[pos]:
        raise InvalidArgumentError(
            f"epoch {epoch!r} of run {run!r} has no clean pass; recorded: {access.format_epochs(epochs[usable])}")
    diff = difficulty(dds, threshold=threshold, runs=difficulty_runs, scheduler=scheduler)
    d = diff["difficulty"].values
    (correct,) = access.compute(access.select(ds, S.CORRECT, runs=access.run_positions(ds, seeds), epochs=pos),
                                scheduler=scheduler)
    correct = np.asarray(correct)[0]
    levels = np.arange(diff.sizes[S.RUN] + 1)
    count = np.bincount(d, minlength=len(levels))
    hits = np.bincount(d, weights=correct.astype(np.float64), minlength=len(levels))
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(count > 0, hits / np.maximum(count, 1), np.nan)
    return xr.Dataset({"count": (("difficulty",), count.astype(np.int64)),
                       "accuracy": (("difficulty",), accuracy)},
                      coords={"difficulty": levels},
                      attrs={"run": int(run), "epoch": int(epoch), "threshold": float(threshold),
                             "difficulty_runs": [int(s) for s in diff[S.RUN].values]})
