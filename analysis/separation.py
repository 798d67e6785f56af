"""Data separation (Banburski et al. 2021, "Distribution of classification margins",
Sec. 2.1 and Sec. 5): the data are *separated* when every training example is classified
correctly, i.e. clean-pass training accuracy is 100% (0% training error).

Per run, the separation epoch is the first recorded (clean pass ran, epoch completed) epoch
whose ``train_accuracy`` is 1.0, the same definition ``scorebank info`` shows.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xarray as xr

from scorebank.analysis import access
from scorebank.stores import schema as S
from scorebank.stores.summary import separation_epochs


def data_separation(store: access.StoreLike, *, runs: Iterable[int] | None = None,
                    scheduler=None) -> xr.DataArray:
    """First epoch at which each run's clean-pass training accuracy is 100%.

    Returns a (run,) int64 DataArray, :data:`~scorebank.analysis.access.NEVER` (-1) for runs
    that never separate.  ``runs`` defaults to all completed runs.  Reads only the small
    per-(run, epoch) arrays, so ``scheduler`` is accepted for uniformity but not needed."""
    ds = access.open_store(store)
    seeds = access.resolve_runs(ds, runs)
    acc = access.per_epoch(ds, S.TRAIN_ACCURACY, seeds)
    rec = access.recorded_mask(ds, seeds)
    seps = separation_epochs(acc, rec, access.epochs(ds))
    values = np.asarray([access.NEVER if s is None else s for s in seps], dtype=np.int64)
    out = xr.DataArray(values, dims=(S.RUN,), coords={S.RUN: np.asarray(seeds, dtype=np.int64)},
                       name="separation_epoch")
    out.attrs["definition"] = "first recorded epoch with clean-pass train accuracy 1.0 (margins paper)"
    return out


def final_epochs(store: access.StoreLike, *, runs: Iterable[int] | None = None,
                 scheduler=None) -> xr.DataArray:
    """Each run's last recorded (clean pass ran, epoch completed) epoch, -1 if none.
    Reads only per-(run, epoch) flags (``scheduler`` is accepted for uniformity)."""
    ds = access.open_store(store)
    seeds = access.resolve_runs(ds, runs)
    rec = access.recorded_mask(ds, seeds)
    ep = access.epochs(ds)
    values = np.asarray([int(ep[np.flatnonzero(r)[-1]]) if r.any() else access.NEVER for r in rec],
                        dtype=np.int64)
    return xr.DataArray(values, dims=(S.RUN,), coords={S.RUN: np.asarray(seeds, dtype=np.int64)},
                        name="final_epoch")


def final_train_accuracy(store: access.StoreLike, *, runs: Iterable[int] | None = None,
                         scheduler=None) -> xr.DataArray:
    """Each run's clean-pass training accuracy at its last recorded epoch
    (:func:`final_epochs`), as a (run,) float64 DataArray; NaN for a run with no recorded
    epoch.  Reads only per-(run, epoch) values (``scheduler`` is accepted for uniformity)."""
    ds = access.open_store(store)
    seeds = access.resolve_runs(ds, runs)
    final = final_epochs(ds, runs=seeds).values
    acc = access.per_epoch(ds, S.TRAIN_ACCURACY, seeds)
    ep = access.epochs(ds)
    values = np.asarray([float(acc[i, int(np.flatnonzero(ep == f)[0])]) if f >= 0 else np.nan
                         for i, f in enumerate(final)], dtype=np.float64)
    out = xr.DataArray(values, dims=(S.RUN,), coords={S.RUN: np.asarray(seeds, dtype=np.int64)},
                       name="final_train_accuracy")
    out.attrs["definition"] = "clean-pass train accuracy at the run's last recorded epoch"
    return out
