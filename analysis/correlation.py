"""Spearman rank correlations between scores, and the sensitivity of an averaged score to
the number of runs averaged.

* :func:`spearman_matrix`: the Spearman rank correlation of every pair of scores, each
  averaged over runs (Data Diet, Paul et al. 2021, appendix D.3 / Fig. 12, compares
  GraNd at initialisation, EL2N at epoch 20 and forgetting at epoch 200 this way).
* :func:`sensitivity_curve`: Data Diet appendix D.1 (Figs. 9 and 10, left): the Spearman
  correlation between the score averaged over ``k`` runs and the score averaged over all
  ``R`` runs, for ``k = 1..R``, with its mean and spread over ``k``-subsets of the runs.

Spearman's rho is Pearson's correlation of the ranks, ties getting their average rank;
it is NaN when a score is constant (no ranking).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

import numpy as np
import xarray as xr

from scorebank.analysis import access
from scorebank.analysis.scores import ScoreSpec, checked_averages, lazy_average_scores, parse_score, run_scores
from scorebank.stores.errors import InvalidArgumentError


def sort_order(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(order, x[order])``: an order that sorts the 1-D ``x`` ascending, equal values in
    any order (what ``np.argsort(x)`` gives, up to the order within ties), and the sorted
    values.

    For float64 ``x`` of up to 2^32 values (no NaN), about twice as fast as
    ``np.argsort``: each value becomes an unsigned 64-bit key ordered as the floats are
    (sign bit flipped for positives, all bits for negatives; -0.0 taken as 0.0), its low
    ``b`` bits replaced by the value's position (``b`` bits hold any position), and the
    keys are sorted with ``np.sort`` (vectorised, unlike ``argsort``); the positions are
    read back from the low bits.  Values whose keys agree above the low bits but differ
    (closer than one part in 2^(52-b)) are then ordered by value within their group."""
    x = np.asarray(x).ravel()
    n = x.size
    bits = max(1, (n - 1).bit_length())
    if x.dtype != np.float64 or bits > 32 or n < 2:
        order = np.argsort(x)
        return order, x[order]
    # two buffers of the size of x (key and work), reused in place throughout
    key = (x + 0.0).view(np.uint64)  # a new array; -0.0 + 0.0 is 0.0: one key for equal values
    work = key >> np.uint64(63)  # 1 for negatives
    np.negative(work, out=work)  # all bits for negatives (unsigned wrap-around), 0 otherwise
    work |= np.uint64(1 << 63)  # and the sign bit for everything
    key ^= work
    low = np.uint64((1 << bits) - 1)
    key &= ~low
    work.fill(1)
    work[0] = 0
    np.cumsum(work, out=work)  # 0, 1, ..., n - 1: the positions
    key |= work
    key.sort()
    np.bitwise_and(key, low, out=work)
    order = work.view(np.int64)  # positions < 2^32: the same values as signed integers
    key >>= np.uint64(bits)  # the truncated keys, ascending
    xs = x[order]
    same = key[1:] == key[:-1]
    bad = same & (xs[1:] != xs[:-1])
    if bad.any():  # groups of equal truncated keys holding different values: sort them by value
        group = np.cumsum(np.concatenate(([True], ~same))) - 1  # group of each sorted position
        redo = np.zeros(int(group[-1]) + 1, dtype=bool)
        redo[group[1:][bad]] = True
        pos = np.flatnonzero(redo[group])
        sub = np.lexsort((xs[pos], group[pos]))
        order[pos] = order[pos][sub]
        xs[pos] = xs[pos][sub]
    return order, xs


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties getting the average of their ranks: the same float64
    values as ``scipy.stats.rankdata(x, method="average")`` (all NaN when ``x`` holds a NaN),
    from one unstable sort (:func:`sort_order`; SciPy's is a stable merge sort, slower at
    1.28M values).  A tie group occupying sorted positions ``lo..hi-1`` (0-based) gets
    ``(lo + hi + 1) / 2`` whatever the order within it, so stability is not needed."""
    x = np.asarray(x).ravel()
    n = x.size
    if x.dtype.kind in "fc" and np.isnan(x).any():
        return np.full(n, np.nan)
    order, xs = sort_order(x)
    first = np.empty(n, dtype=bool)  # sorted position starts a tie group
    first[:1] = True
    np.not_equal(xs[1:], xs[:-1], out=first[1:])
    out = np.empty(n, dtype=np.float64)
    if first.all():  # no ties: the ranks are the sorted positions + 1
        xs.fill(1.0)  # xs is ours and no longer needed: 1, 2, ..., n in its place (exact below 2^53)
        out[order] = np.cumsum(xs, out=xs)
        return out
    group = np.cumsum(first)  # 1-based tie group of each sorted position
    bounds = np.append(np.flatnonzero(first), n)  # group g spans bounds[g-1]..bounds[g]-1
    out[order] = 0.5 * (bounds[group] + bounds[group - 1] + 1)
    return out


def _centred_ranks(x: np.ndarray) -> np.ndarray | None:
    r = average_ranks(x)
    r -= r.mean()
    norm = math.sqrt(float(r @ r))
    if norm == 0:
        return None
    r /= norm
    return r


def _centred_ranks_or_zeros(x: np.ndarray) -> np.ndarray:
    """:func:`_centred_ranks`, zeros for a constant ``x`` (centred ranks of anything else
    are never all zero: their norm is 1)."""
    r = _centred_ranks(x)
    return np.zeros(np.shape(x), dtype=np.float64) if r is None else r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two equally long vectors (NaN if either is constant)."""
    ra, rb = _centred_ranks(np.asarray(a)), _centred_ranks(np.asarray(b))
    if ra is None or rb is None:
        return math.nan
    return float(np.clip(ra @ rb, -1.0, 1.0))


def spearman_matrix(store: access.StoreLike, specs: Sequence[str | ScoreSpec], *,
                    runs: Iterable[int] | None = None, reduce: str = "mean",
                    never_learned: str = "count", scheduler=None) -> xr.DataArray:
    """Spearman rank correlation matrix of scores averaged over runs (Data Diet D.3).

    ``specs`` like ``["el2n@20", "grand@0", "forgetting@200", "margin@200"]``; each is
    averaged over ``runs`` (default: all completed runs) as in
    :func:`scorebank.analysis.scores.average_scores`, all in one Dask pass.  Returns a
    symmetric (score_a, score_b) DataArray with coordinates the spec strings."""
    if len(specs) < 2:
        raise InvalidArgumentError(
            f"a correlation needs at least two scores, got {[str(s) for s in specs]!r}; "
            "e.g. el2n@20 grand@0 forgetting")
    lazy = lazy_average_scores(store, specs, runs=runs, reduce=reduce, never_learned=never_learned)
    names = list(lazy.data_vars)
    # the ranking of each averaged score (a sort of N values, most of the work at ImageNet
    # size) is one more task of the same Dask pass (an array task, so that it shares the
    # averages' optimised graph instead of computing them again), and the rankings run in
    # parallel; (N,) in one block -> (N,) centred ranks, zeros for a constant score
    lazy_ranks = [lazy[n].data.rechunk(-1).map_blocks(_centred_ranks_or_zeros, dtype=np.float64)
                  for n in names]
    computed = access.compute(*[lazy[n].data for n in names], *lazy_ranks, scheduler=scheduler)
    avg = checked_averages(lazy, computed[:len(names)])  # NaN / infinite scores refused before ranks are used
    ranks = [r if r.any() else None for r in computed[len(names):]]
    k = len(names)
    mat = np.full((k, k), np.nan)
    for i in range(k):
        for j in range(i, k):
            if ranks[i] is not None and ranks[j] is not None:
                mat[i, j] = mat[j, i] = 1.0 if i == j else float(np.clip(ranks[i] @ ranks[j], -1, 1))
    out = xr.DataArray(mat, dims=("score_a", "score_b"), coords={"score_a": names, "score_b": names},
                       name="spearman")
    out.attrs.update(avg.attrs)
    return out


def _subsets(r: int, k: int, draws: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    if math.comb(r, k) <= draws:
        return list(itertools.combinations(range(r), k))
    return [tuple(sorted(rng.choice(r, k, replace=False).tolist())) for _ in range(draws)]


def sensitivity_curve(store: access.StoreLike, spec: str | ScoreSpec, *, runs: Iterable[int] | None = None,
                      draws: int = 20, seed: int = 0, never_learned: str = "count",
                      scheduler=None) -> xr.Dataset:
    """Data Diet appendix D.1: Spearman correlation between ``spec`` averaged over ``k``
    runs and averaged over all ``R`` chosen runs, for ``k = 1..R``.

    For each ``k`` every ``k``-subset of the runs is used when there are at most ``draws``
    of them, otherwise ``draws`` subsets drawn uniformly at random (generator seeded with
    ``seed``).  Returns a Dataset over ``k`` with ``mean``, ``std`` (population standard
    deviation), ``min`` and ``max`` of the correlation across subsets and ``subsets``
    (how many were used).  Reads the per-run scores once."""
    if int(draws) < 1:
        raise InvalidArgumentError(f"draws {draws!r} must be a positive integer")
    spec = parse_score(spec)
    per_run = run_scores(store, spec, runs=runs, never_learned=never_learned, scheduler=scheduler)
    values = per_run.values  # (R, N)
    r = values.shape[0]
    ref = _centred_ranks(values.mean(axis=0))
    rng = np.random.default_rng(seed)
    stats = {name: np.full(r, np.nan) for name in ("mean", "std", "min", "max")}
    used = np.zeros(r, dtype=np.int64)
    for k in range(1, r + 1):
        corr = []
        for subset in _subsets(r, k, int(draws), rng):
            sub = _centred_ranks(values[list(subset)].mean(axis=0))
            corr.append(math.nan if sub is None or ref is None else float(np.clip(sub @ ref, -1, 1)))
        c = np.asarray(corr)
        used[k - 1] = c.size
        if np.isfinite(c).all():
            stats["mean"][k - 1], stats["std"][k - 1] = c.mean(), c.std()
            stats["min"][k - 1], stats["max"][k - 1] = c.min(), c.max()
    ks = np.arange(1, r + 1)
    out = xr.Dataset({name: ("k", v) for name, v in stats.items()} | {"subsets": ("k", used)},
                     coords={"k": ks})
    out.attrs.update(spec=str(spec), runs=[int(s) for s in per_run[per_run.dims[0]].values],
                     draws=int(draws), seed=int(seed))
    return out
