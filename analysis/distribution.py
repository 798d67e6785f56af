"""Statistics of the distribution of normalised margins (Banburski et al. 2021,
"Distribution of classification margins", Sec. 4.2 and Fig. 2; per class, Sec. 4.3 and
Fig. 3).

For one run and epoch let ``m_0 <= m_1 <= ... <= m_{n-1}`` be the sorted normalised margins
``margin / rho`` (rho = ``norm_product``) of the ``n`` training examples (or of one class).

* **AUC**: the area under the sorted-margin curve drawn over ``[0, 1]``, i.e. ``m_i`` at
  ``x_i = i / (n - 1)``, by the trapezoidal rule:
  ``(sum_i m_i - (m_0 + m_{n-1}) / 2) / (n - 1)`` (``m_0`` when ``n == 1``).  The paper finds
  a larger AUC predicts a smaller test error.
* **Small-margin count**: the number of examples with ``m_i <= m_0 + gamma``, the examples
  within ``gamma`` of the smallest margin (the paper uses gamma = 0.01 and 0.1, the cutoff
  of the ramp loss).

Two streaming passes over ``margin``: the first finds minimum, maximum, sum and count per
(run, epoch, class), the second counts the examples within gamma of the minimum.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import dask.array as da
import numpy as np
import xarray as xr

from scorebank.analysis import access
from scorebank.analysis.scores import check_finite_nmargins, lazy_nonfinite_nmargins
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError

_MIN, _MAX, _SUM, _COUNT = range(4)


def _normalised(x: np.ndarray, rho: np.ndarray, loc) -> np.ndarray:
    (r0, _), (e0, e1), _ = loc
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return x.astype(np.float64) / rho[r0, e0:e1][None, :, None]


def _groups(lab: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(lab, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(np.bincount(lab, minlength=n_classes))))
    return order, bounds


def _block_moments(x, lab, rho, n_classes, block_info=None):
    """(1, e, n) margins -> (1, e, 1, classes + 1, 4) min, max, sum, count (all last)."""
    m = _normalised(x, rho, block_info[0]["array-location"])[0]  # (e, n)
    e = m.shape[0]
    out = np.empty((1, e, 1, n_classes + 1, 4))
    out[..., _MIN], out[..., _MAX], out[..., _SUM], out[..., _COUNT] = np.inf, -np.inf, 0.0, 0.0
    order, bounds = _groups(lab, n_classes)
    ms = m[:, order]
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite margins are refused after the pass
        for c in range(n_classes + 1):
            seg = m if c == n_classes else ms[:, bounds[c]:bounds[c + 1]]
            if seg.shape[1] == 0:
                continue
            out[0, :, 0, c, _MIN] = seg.min(axis=1)
            out[0, :, 0, c, _MAX] = seg.max(axis=1)
            out[0, :, 0, c, _SUM] = seg.sum(axis=1)
            out[0, :, 0, c, _COUNT] = seg.shape[1]
    return out


def _block_within(x, lab, rho, thresholds, n_classes, block_info=None):
    """(1, e, n) margins -> (1, e, 1, classes + 1, gammas) counts of m <= threshold."""
    (r0, _), (e0, e1), _ = block_info[0]["array-location"]
    m = _normalised(x, rho, block_info[0]["array-location"])[0]
    thr = thresholds[r0, e0:e1]  # (e, classes + 1, gammas)
    out = np.zeros((1, m.shape[0], 1, n_classes + 1, thr.shape[-1]))
    order, bounds = _groups(lab, n_classes)
    ms = m[:, order]
    for c in range(n_classes + 1):
        seg = m if c == n_classes else ms[:, bounds[c]:bounds[c + 1]]
        for g in range(thr.shape[-1]):
            out[0, :, 0, c, g] = (seg <= thr[:, c, g][:, None]).sum(axis=1)
    return out


def check_gammas(gammas: float | Iterable[float]) -> tuple[float, ...]:
    vals = (gammas,) if isinstance(gammas, (int, float)) else tuple(gammas)
    if not vals:
        raise InvalidArgumentError("no gamma given; pass cutoffs like 0.01,0.1")
    for g in vals:
        if not isinstance(g, (int, float)) or isinstance(g, bool) or not np.isfinite(g) or g < 0:
            raise InvalidArgumentError(f"gamma {g!r} must be a finite number >= 0, e.g. 0.01")
    return tuple(float(g) for g in vals)


def margin_distribution(store: access.StoreLike, *, gammas: float | Iterable[float] = (0.01, 0.1),
                        runs: Iterable[int] | None = None, epochs: Sequence[int] | None = None,
                        scheduler=None) -> xr.Dataset:
    """Margins paper Sec. 4.2: per run and epoch, the AUC of the sorted normalised-margin
    curve and the number of examples within ``gamma`` of the smallest normalised margin,
    overall and per class (by training label).

    ``epochs`` defaults to every epoch recorded in some chosen run, ``runs`` to all
    completed runs.  Returns a Dataset with ``auc``, ``smallest``, ``largest``, ``mean``
    (run, epoch), ``n_within`` (gamma, run, epoch) and the same per class as
    ``class_auc``, ``class_smallest``, ``class_n_within`` (with a ``class`` dimension)
    plus ``class_size``; NaN where a run did not record the epoch."""
    gam = check_gammas(gammas)
    ds = access.open_store(store)
    seeds = access.resolve_runs(ds, runs)
    pos, valid, rho = access.margin_epochs(ds, seeds, epochs)
    rho = np.where(valid, rho, np.nan)
    lab = access.labels(ds)
    k = access.n_classes(ds, lab)
    x = access.select(ds, S.MARGIN, runs=access.run_positions(ds, seeds), epochs=pos, itemsize=8)
    lab_d = da.from_array(lab, chunks=(x.chunks[2],))
    out_chunks = (x.chunks[0], x.chunks[1], (1,) * len(x.chunks[2]), (k + 1,))
    moments = da.map_blocks(_block_moments, x, lab_d, rho, k, new_axis=[3, 4], dtype=np.float64,
                            chunks=out_chunks + ((4,),), meta=np.empty((0,) * 5))
    (mom, bad) = access.compute(moments, lazy_nonfinite_nmargins(x, rho), scheduler=scheduler)
    check_finite_nmargins(bad, valid, seeds, access.epochs(ds)[pos])
    mn, mx = mom[..., _MIN].min(axis=2), mom[..., _MAX].max(axis=2)  # (run, epoch, group)
    total, count = mom[..., _SUM].sum(axis=2), mom[..., _COUNT].sum(axis=2)
    thresholds = mn[..., None] + np.asarray(gam)[None, None, None, :]
    within = da.map_blocks(_block_within, x, lab_d, rho, thresholds, k, new_axis=[3, 4],
                           dtype=np.float64, chunks=out_chunks + ((len(gam),),),
                           meta=np.empty((0,) * 5))
    (win,) = access.compute(within, scheduler=scheduler)
    n_within = win.sum(axis=2)  # (run, epoch, group, gamma)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where(count > 1, (total - (mn + mx) / 2) / (count - 1), np.where(count == 1, mn, np.nan))
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    bad = ~valid[:, :, None]
    for arr in (auc, mean, mn, mx):
        arr[np.broadcast_to(bad, arr.shape)] = np.nan
    n_within = np.where(bad[..., None], np.nan, n_within)
    smallest = np.where(np.isfinite(mn), mn, np.nan)
    largest = np.where(np.isfinite(mx), mx, np.nan)
    re = (S.RUN, S.EPOCH)
    names = access.class_names(ds)
    result = xr.Dataset(
        {"auc": (re, auc[..., k]), "smallest": (re, smallest[..., k]), "largest": (re, largest[..., k]),
         "mean": (re, mean[..., k]),
         "n_within": (("gamma",) + re, np.moveaxis(n_within[:, :, k, :], -1, 0)),
         "class_auc": (("class",) + re, np.moveaxis(auc[..., :k], -1, 0)),
         "class_smallest": (("class",) + re, np.moveaxis(smallest[..., :k], -1, 0)),
         "class_n_within": (("gamma", "class") + re, np.moveaxis(n_within[:, :, :k, :], (-1, -2), (0, 1))),
         "class_size": (("class",), np.bincount(lab, minlength=k).astype(np.int64))},
        coords={S.RUN: np.asarray(seeds, dtype=np.int64), S.EPOCH: access.epochs(ds)[pos],
                "gamma": np.asarray(gam), "class": np.arange(k), "class_name": ("class", names)})
    result.attrs["definition"] = ("AUC of the sorted normalised margins over [0, 1] (trapezoid) and "
                                  "examples within gamma of the smallest (margins paper Sec. 4.2)")
    return result


def sorted_margins(store: access.StoreLike, *, run: int, epochs: Sequence[int], scheduler=None,
                   points: int = 1000) -> xr.DataArray:
    """The sorted normalised-margin curve of one run at some epochs (margins paper Figs. 2
    and 3), subsampled to ``points`` evenly spaced quantile positions; (epoch, position)
    with position in [0, 1].  Holds one epoch of margins (N values) at a time."""
    ds = access.open_store(store)
    (seed,) = access.resolve_runs(ds, [run])
    pos = [access.epoch_position(ds, e) for e in epochs]
    rho = access.per_epoch(ds, S.NORM_PRODUCT, [seed])[0]
    rec = access.recorded_mask(ds, [seed])[0]
    missing = [int(e) for e, p in zip(epochs, pos) if not rec[p]]
    if missing:
        raise InvalidArgumentError(
            f"epoch(s) {missing!r} not recorded in run {seed}; recorded epochs: "
            f"{access.format_epochs(access.epochs(ds)[rec])}")
    n = int(ds.sizes[S.EXAMPLE])
    at = np.linspace(0, 1, max(2, min(points, n)))
    curves = []
    run_pos = access.run_positions(ds, [seed])
    for p in pos:
        (m,) = access.compute(access.select(ds, S.MARGIN, runs=run_pos, epochs=int(p))[0], scheduler=scheduler)
        srt = np.sort(np.asarray(m, dtype=np.float64) / float(rho[p]))
        curves.append(np.interp(at, np.linspace(0, 1, n) if n > 1 else np.zeros(1), srt))
    return xr.DataArray(np.asarray(curves), dims=(S.EPOCH, "position"),
                        coords={S.EPOCH: np.asarray(epochs, dtype=np.int64), "position": at},
                        name="sorted_nmargin", attrs={"run": int(seed)})
