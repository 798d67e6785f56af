"""Overlaps of the sets of examples with the smallest normalised margins (Banburski et al.
2021, "Distribution of classification margins": Fig. 6 and appendix C.1, Figs. 8 and 9).

The *k-set* of a run at an epoch is the ``k`` examples with the smallest normalised margin
``margin / rho`` (rho = ``norm_product``) there, the "support vectors" of the margins
paper; equal margins are ordered by example index.

* :func:`pairwise_overlap` (Fig. 6, bottom): for every pair of runs and every recorded
  epoch, the fraction ``|A ∩ B| / k`` of the two runs' k-sets that they share.
* :func:`final_set_retention` (Figs. 8 and 9): within a run, the fraction of the k-set of
  its final (last recorded) epoch already in the k-set at each earlier epoch, and at the
  data-separation epoch (:mod:`scorebank.analysis.separation`).

:func:`smallest_margin_sets` streams ``margin`` once: each block keeps its ``max(k)``
smallest candidates per (run, epoch), and the candidates of all blocks are merged, so
memory never holds more than a block of margins.  Dividing by rho > 0, one number per
(run, epoch), does not change the order of the examples, so the sets are found on the raw
margins; (run, epoch) pairs without a recorded clean pass or a finite positive rho are
left out.  Recorded normalised margins must be finite (the score registry's rule): a NaN
or infinite one is refused in one line naming the run, epoch and number of examples.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import dask.array as da
import numpy as np
import xarray as xr

from scorebank.analysis import access
from scorebank.analysis.scores import check_finite_nmargins, lazy_nonfinite_nmargins
from scorebank.analysis.separation import data_separation
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError

_PAD = float(2**52)  # candidate index that sorts after every real one


def check_ks(ks: int | Iterable[int], n_examples: int) -> tuple[int, ...]:
    """Validate set sizes: positive integers at most the number of examples."""
    vals = (ks,) if isinstance(ks, (int, np.integer)) else tuple(ks)
    if not vals:
        raise InvalidArgumentError("no k given; pass set sizes like 20,100,200")
    out = []
    for k in vals:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise InvalidArgumentError(f"k {k!r} must be a positive integer (a set size like 20)")
        if k > n_examples:
            raise InvalidArgumentError(
                f"k {int(k)!r} is larger than the data set ({n_examples} examples); "
                f"use k <= {n_examples}")
        out.append(int(k))
    return tuple(sorted(set(out)))


#: The bound on a row's k-th smallest margin comes from every ``_STRIDE``-th value of it (a
#: sample of 4096 of a 65,536-example chunk): sixteen times fewer values to partition.
_STRIDE = 16


def _kth_bounds(rows: np.ndarray, kk: int) -> np.ndarray:
    """(rows,) a value at least the ``kk``-th smallest of each row of the 2-D ``rows``
    (NaN sorting last; inf when a row has fewer than ``kk`` numbers), close to it.

    The ``kk``-th smallest of a sample of a row (every ``stride``-th value) is never below
    the row's own, and, the sample being spread over the row, about the ``stride * kk``-th
    smallest of the row: every value up to it is a candidate, a few thousand per row
    instead of a partition of the whole row.  Rows whose sample has fewer than ``kk``
    numbers are partitioned whole (the exact ``kk``-th)."""
    stride = max(1, min(_STRIDE, rows.shape[1] // (4 * kk)))
    thr = np.partition(rows[:, ::stride], kk - 1, axis=1)[:, kk - 1]
    short = np.isnan(thr)
    if stride > 1 and short.any():
        thr[short] = np.partition(rows[short], kk - 1, axis=1)[:, kk - 1]
    return np.where(np.isnan(thr), np.inf, thr)


def _block_candidates(x: np.ndarray, k: int, block_info=None) -> np.ndarray:
    """The ``k`` smallest (value, example index) of each (run, epoch) row of a block, by
    value then index, NaN excluded; rows with fewer values are padded with (inf, _PAD)."""
    offset = block_info[0]["array-location"][2][0]
    r, e, n = x.shape
    out = np.empty((r * e, k, 2), dtype=np.float64)
    out[..., 0] = np.inf
    out[..., 1] = _PAD
    rows2 = x.reshape(r * e, n)  # (run, epoch, example) -> (run x epoch, example)
    kk = min(k, n)
    thr = _kth_bounds(rows2, kk) if kk < n else np.full(r * e, np.inf, dtype=rows2.dtype)
    for i in range(r * e):
        row = rows2[i]
        cand = np.flatnonzero(row <= thr[i])  # the kk smallest, and more values up to the bound
        if cand.size == 0:
            continue
        vals = row[cand]
        if cand.size > 2 * kk:  # keep the kk smallest and their ties before sorting
            keep = vals <= np.partition(vals, kk - 1)[kk - 1]
            cand, vals = cand[keep], vals[keep]
        take = np.lexsort((cand, vals))[:kk]
        out[i, :take.size, 0] = vals[take]
        out[i, :take.size, 1] = cand[take] + offset
    return out.reshape(r, e, 1, k, 2)


def _block_nonfinite(x: np.ndarray) -> np.ndarray:
    """(r, e, n) margins -> (r, e, 1) counts of NaN and infinite values."""
    return np.count_nonzero(~np.isfinite(x), axis=2)[:, :, None]


#: Smallest rho for which ``margin / rho`` of a finite float32 margin cannot overflow float64
#: (float32's largest value over float64's, with room to spare).
_SAFE_RHO = 1e-250


def _lazy_nonfinite(x, rho: np.ndarray, valid: np.ndarray):
    """Per (run, epoch): how many normalised margins ``x / rho`` are not finite, counted
    where ``valid``.  With every valid rho at least :data:`_SAFE_RHO`, ``x / rho`` is finite
    exactly when the float32 margin is, so the margins are counted as they are (no float64
    copy of the block); otherwise :func:`scorebank.analysis.scores.lazy_nonfinite_nmargins`
    divides."""
    if not (rho[valid] >= _SAFE_RHO).all():
        return lazy_nonfinite_nmargins(x, np.where(valid, rho, np.nan))
    counts = da.map_blocks(_block_nonfinite, x, dtype=np.int64,
                           chunks=(x.chunks[0], x.chunks[1], (1,) * len(x.chunks[2])),
                           meta=np.empty((0, 0, 0), dtype=np.int64))
    return counts.sum(axis=2)


def _merge(cand: np.ndarray, k: int) -> np.ndarray:
    """(run, epoch, blocks, k, 2) candidates -> (run, epoch, k) indices of the k smallest."""
    r, e, b = cand.shape[:3]
    flat = cand.reshape(r * e, b * k, 2)
    order = np.lexsort((flat[..., 1], flat[..., 0]), axis=-1)[:, :k]
    idx = np.take_along_axis(flat[..., 1], order, axis=1)
    return idx.reshape(r, e, k)


def smallest_margin_sets(store: access.StoreLike, k: int, *, runs: Iterable[int] | None = None,
                         epochs: Sequence[int] | None = None, scheduler=None) -> xr.DataArray:
    """The ``k`` examples with the smallest normalised margin per run and epoch.

    Returns a (run, epoch, rank) int64 DataArray of example indices (rank 0 = smallest
    margin; ties by example index), -1 at (run, epoch) pairs whose clean pass was not
    recorded.  ``epochs`` defaults to every epoch recorded in at least one chosen run;
    ``runs`` to all completed runs."""
    ds = access.open_store(store)
    n = int(ds.sizes[S.EXAMPLE])
    if not isinstance(k, (int, np.integer)):
        raise InvalidArgumentError(f"k {k!r} must be one positive integer")
    (k,) = check_ks(k, n)
    seeds = access.resolve_runs(ds, runs)
    ep = access.epochs(ds)
    pos, valid, rho = access.margin_epochs(ds, seeds, epochs)
    # rho > 0 is one number per (run, epoch): margin / rho orders examples as margin does
    x = access.select(ds, S.MARGIN, runs=access.run_positions(ds, seeds), epochs=pos)
    cand = da.map_blocks(_block_candidates, x, k, new_axis=[3, 4], dtype=np.float64,
                         chunks=(x.chunks[0], x.chunks[1], (1,) * len(x.chunks[2]), (k,), (2,)),
                         meta=np.empty((0,) * 5, dtype=np.float64))
    cand_np, bad = access.compute(cand, _lazy_nonfinite(x, rho, valid), scheduler=scheduler)
    check_finite_nmargins(bad, valid, seeds, ep[pos])
    idx = _merge(np.asarray(cand_np), k)
    ok = valid & (idx < n).all(axis=2)
    sets = np.where(ok[:, :, None], idx, -1).astype(np.int64)
    return xr.DataArray(sets, dims=(S.RUN, S.EPOCH, "rank"),
                        coords={S.RUN: np.asarray(seeds, dtype=np.int64), S.EPOCH: ep[pos]},
                        name="smallest_margin_set", attrs={"k": int(k)})


def _pairwise(sets: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """(run, epoch, kmax) sets -> (k, epoch, run, run) overlap fractions (NaN if missing)."""
    r, e, kmax = sets.shape
    out = np.full((len(ks), e, r, r), np.nan)
    for j in range(e):
        s = sets[:, j, :]
        ok = (s[:, 0] >= 0)
        ids, inv = np.unique(s[ok], return_inverse=True)
        rank = np.full((r, ids.size), kmax, dtype=np.int64)
        rows = np.repeat(np.flatnonzero(ok), kmax)
        rank[rows, inv.reshape(-1)] = np.tile(np.arange(kmax), int(ok.sum()))
        for i, k in enumerate(ks):
            member = (rank < k).astype(np.float64)
            frac = member @ member.T / k
            frac[~ok, :] = np.nan
            frac[:, ~ok] = np.nan
            out[i, j] = frac
    return out


def _pairwise_dataset(sets: xr.DataArray, ks: tuple[int, ...]) -> xr.Dataset:
    ov = _pairwise(sets.values, ks)
    r = sets.sizes[S.RUN]
    iu = np.triu_indices(r, 1)
    pairs = ov[:, :, iu[0], iu[1]]  # (k, epoch, pair)
    complete = np.isfinite(pairs).all(axis=2)
    filled = np.where(complete[..., None], pairs, 0.0)
    stats = {name: np.where(complete, fn(filled, axis=2), np.nan)
             for name, fn in (("mean", np.mean), ("min", np.min), ("max", np.max))}
    coords = {"k": np.asarray(ks), S.EPOCH: sets[S.EPOCH].values, S.RUN: sets[S.RUN].values,
              "other_run": sets[S.RUN].values}
    out = xr.Dataset({"overlap": (("k", S.EPOCH, S.RUN, "other_run"), ov)}
                     | {n: (("k", S.EPOCH), v) for n, v in stats.items()}, coords=coords)
    out.attrs["definition"] = "|A ∩ B| / k of the k smallest normalised margins (margins paper Fig. 6)"
    return out


def pairwise_overlap(store: access.StoreLike, *, k: int | Iterable[int] = (20, 100, 200),
                     runs: Iterable[int] | None = None, epochs: Sequence[int] | None = None,
                     scheduler=None) -> xr.Dataset:
    """Margins paper Fig. 6: overlap of the k smallest-normalised-margin sets between runs.

    Returns a Dataset with ``overlap`` (k, epoch, run, other_run): ``|A ∩ B| / k`` for the
    k-sets A, B of the two runs at that epoch (1 on the diagonal, NaN where a run is not
    recorded), and ``mean``, ``min``, ``max`` (k, epoch) over the distinct pairs (NaN at
    epochs some run did not record).  Needs at least two runs."""
    ds = access.open_store(store)
    ks = check_ks(k, int(ds.sizes[S.EXAMPLE]))
    seeds = _two_or_more(access.resolve_runs(ds, runs))
    sets = smallest_margin_sets(ds, max(ks), runs=seeds, epochs=epochs, scheduler=scheduler)
    return _pairwise_dataset(sets, ks)


def _two_or_more(seeds: list[int]) -> list[int]:
    if len(seeds) < 2:
        raise InvalidArgumentError(
            f"pairwise overlap needs at least two runs, got {seeds!r}; name more with --runs")
    return seeds


def _retention_dataset(ds: xr.Dataset, sets: xr.DataArray, ks: tuple[int, ...]) -> xr.Dataset:
    seeds = [int(s) for s in sets[S.RUN].values]
    sep = data_separation(ds, runs=seeds).values
    s = sets.values  # (run, epoch, kmax)
    ep = sets[S.EPOCH].values
    ret = np.full((len(ks), len(seeds), ep.size), np.nan)
    final = np.full(len(seeds), access.NEVER, dtype=np.int64)
    at_sep = np.full((len(ks), len(seeds)), np.nan)
    for r in range(len(seeds)):
        rec = s[r, :, 0] >= 0
        if not rec.any():
            continue
        last = np.flatnonzero(rec)[-1]
        final[r] = ep[last]
        sep_pos = np.flatnonzero(ep == sep[r])
        for i, kk in enumerate(ks):
            frac = np.isin(s[r, :, :kk], s[r, last, :kk]).sum(axis=1) / kk
            ret[i, r] = np.where(rec, frac, np.nan)
            if sep[r] != access.NEVER and sep_pos.size:
                at_sep[i, r] = ret[i, r, sep_pos[0]]
    out = xr.Dataset({"retention": (("k", S.RUN, S.EPOCH), ret),
                      "at_separation": (("k", S.RUN), at_sep),
                      "final_epoch": ((S.RUN,), final),
                      "separation_epoch": ((S.RUN,), sep.astype(np.int64))},
                     coords={"k": np.asarray(ks), S.RUN: np.asarray(seeds, dtype=np.int64), S.EPOCH: ep})
    out.attrs["definition"] = ("fraction of the final-epoch k smallest-normalised-margin set present "
                               "at each epoch (margins paper Figs. 8-9)")
    return out


def final_set_retention(store: access.StoreLike, *, k: int | Iterable[int] = (20, 100, 200),
                        runs: Iterable[int] | None = None, scheduler=None) -> xr.Dataset:
    """Margins paper Figs. 8-9: the fraction of a run's final-epoch k-set present in its
    k-set at every recorded epoch and at the data-separation epoch.

    The final epoch is the run's last recorded epoch.  Returns a Dataset with
    ``retention`` (k, run, epoch) (NaN at epochs the run did not record),
    ``at_separation`` (k, run) (NaN for runs that never separate), ``final_epoch`` (run)
    and ``separation_epoch`` (run, -1 = never)."""
    ds = access.open_store(store)
    ks = check_ks(k, int(ds.sizes[S.EXAMPLE]))
    seeds = access.resolve_runs(ds, runs)
    sets = smallest_margin_sets(ds, max(ks), runs=seeds, scheduler=scheduler)
    return _retention_dataset(ds, sets, ks)


def margin_overlaps(store: access.StoreLike, *, k: int | Iterable[int] = (20, 100, 200),
                    runs: Iterable[int] | None = None, scheduler=None) -> xr.Dataset:
    """:func:`final_set_retention` and, with two or more runs, :func:`pairwise_overlap`
    (as ``pairwise``, ``pairwise_mean``, ``pairwise_min``, ``pairwise_max``) from one
    pass over ``margin``."""
    ds = access.open_store(store)
    ks = check_ks(k, int(ds.sizes[S.EXAMPLE]))
    seeds = access.resolve_runs(ds, runs)
    sets = smallest_margin_sets(ds, max(ks), runs=seeds, scheduler=scheduler)
    out = _retention_dataset(ds, sets, ks)
    if len(seeds) >= 2:
        pair = _pairwise_dataset(sets, ks).rename(
            {"overlap": "pairwise", "mean": "pairwise_mean", "min": "pairwise_min", "max": "pairwise_max"})
        out = out.merge(pair)
    return out
