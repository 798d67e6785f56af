"""Memorisation and influence estimates from subset training (Feldman & Zhang, NeurIPS 2020,
"What neural networks memorize and why", Sec. 3 / Alg. 1).

From M models, model m trained on a random subset S_m (``in_subset[m, i]``: i in S_m) and
its clean-pass correctness ``correct[m, i]`` on training example i:

* ``n_in(i)`` = #{m : i in S_m}, ``n_out(i)`` = M - n_in(i);
* ``p_in(i)`` = mean of ``correct[m, i]`` over the models with i in S_m, ``p_out(i)`` the
  same over the models without i;
* memorisation ``mem(i) = p_in(i) - p_out(i)``;
* its standard error ``se(i) = sqrt(p_in (1 - p_in) / n_in + p_out (1 - p_out) / n_out)``,
  the binomial standard errors of the two independent means combined.

Both are NaN for an example with no model on one side.  The influence of training example i
on test example j is estimated the same way with correctness on j:
``infl(i, j) = P[correct on j | i in S] - P[correct on j | i not in S]``; only the ``k``
largest per test example are kept (:func:`influence_topk`).

High memorisation marks examples that are fitted only when trained on: rare or atypical
examples and, above all, mislabelled ones (high = suspicious, like high EL2N).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from scorebank.stores import heldout as H
from scorebank.stores import schema as S
from scorebank.stores.arrays import create_array
from scorebank.stores.errors import InvalidArgumentError, ScorebankError


@dataclass(frozen=True)
class Estimate:
    """Per example (N,): ``mem``, ``se``, ``p_in``, ``p_out`` (float64, NaN where a side has
    no model), ``n_in`` and ``n_out`` (int64)."""

    mem: np.ndarray
    se: np.ndarray
    p_in: np.ndarray
    p_out: np.ndarray
    n_in: np.ndarray
    n_out: np.ndarray


def _masks(in_subset, correct) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(in_subset, dtype=bool)
    c = np.asarray(correct, dtype=bool)
    if a.ndim != 2 or c.ndim != 2 or a.shape[0] != c.shape[0]:
        raise InvalidArgumentError(f"in_subset {a.shape!r} and correctness {c.shape!r} must be (models, examples) "
                                   "arrays with the same number of models")
    if a.shape[0] == 0:
        raise InvalidArgumentError("no completed models; run 'scorebank memorization STORE --subsets M' first")
    return a, c


def _ratio(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, k / np.maximum(n, 1), np.nan)


def memorization_estimate(in_subset, correct) -> Estimate:
    """The estimator of the module docstring from ``in_subset`` and ``correct``, both
    (models, examples) bool."""
    a, c = _masks(in_subset, correct)
    if a.shape != c.shape:
        raise InvalidArgumentError(f"in_subset {a.shape!r} and correct {c.shape!r} must have the same shape")
    m = a.shape[0]
    n_in = a.sum(0).astype(np.int64)  # (N,)
    n_out = m - n_in
    p_in = _ratio((a & c).sum(0), n_in)
    p_out = _ratio((~a & c).sum(0), n_out)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(p_in * (1 - p_in) / n_in + p_out * (1 - p_out) / n_out)
    return Estimate(p_in - p_out, se, p_in, p_out, n_in, n_out)


def check_top_k(k) -> int:
    """``k`` influences per test example: a positive integer (InvalidArgumentError otherwise)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidArgumentError(f"--top-k must be a positive integer, got {k!r}")
    return int(k)


def influence_topk(in_subset, test_correct, k: int, *, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most positive influences on each test example: ``(indices, values)``, both
    (test, k); ``values[j, r]`` = infl(indices[j, r], j), sorted by decreasing value, equal
    values by increasing training index.  Training examples with no model on one side are
    never chosen; when fewer than ``k`` remain the rest read index -1 and NaN.  Computed in
    blocks of ``block`` test examples (memory O(N * block))."""
    a, t = _masks(in_subset, test_correct)
    m, n = a.shape
    k = min(check_top_k(k), n)
    af = a.astype(np.float64)  # (M, N); 0/1 products and sums are exact in float64
    n_in = af.sum(0)  # (N,)
    n_out = m - n_in
    valid = (n_in > 0) & (n_out > 0)
    total = t.sum(0).astype(np.float64)  # (T,)
    n_test = t.shape[1]
    indices = np.full((n_test, k), -1, dtype=np.int64)
    values = np.full((n_test, k), np.nan, dtype=np.float64)
    for start in range(0, n_test, block):
        cols = slice(start, min(start + block, n_test))
        k_in = af.T @ t[:, cols].astype(np.float64)  # (N, b): models with i in S that get j right
        with np.errstate(invalid="ignore", divide="ignore"):
            infl = k_in / n_in[:, None] - (total[None, cols] - k_in) / n_out[:, None]  # (N, b)
        key = np.where(valid[:, None], infl, -np.inf)
        order = np.argsort(-key, axis=0, kind="stable")[:k]  # (k, b): largest first, ties by index
        chosen = np.take_along_axis(infl, order, axis=0)  # (k, b)
        ok = valid[order]
        indices[cols] = np.where(ok, order, -1).T
        values[cols] = np.where(ok, chosen, np.nan).T
    return indices, values


# ----------------------------------------------------------------------------- the store
_NONE_YET = "run 'scorebank memorization STORE --subsets 100' first"


def _group(store):
    """The store's memorization group (read-only) and the store's display name."""
    from scorebank.stores.location import open_group

    root, where = open_group(store)
    try:
        group = root[H.MEMORIZATION_GROUP]
    except KeyError:
        raise ScorebankError(f"the store at {where.shown!r} has no memorization records; {_NONE_YET}") from None
    return group, where.shown


def _completed_records(group) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(in_subset, correct, test_correct) of the completed models."""
    rows = np.flatnonzero(np.asarray(group[H.COMPLETED][:], dtype=bool))  # (completed,)
    return (np.asarray(group[H.IN_SUBSET][:], dtype=bool)[rows], np.asarray(group[H.CORRECT][:], dtype=bool)[rows],
            np.asarray(group[H.TEST_CORRECT][:], dtype=bool)[rows])


def memorization_scores(store) -> xr.Dataset:
    """Per example: ``memorization``, ``memorization_se``, ``n_in``, ``n_out``, estimated from
    every completed model of the store's memorization group (a store directory, archive or
    URL); attribute ``models`` (how many).  Raises :class:`ScorebankError` when there is none."""
    group, shown = _group(store)
    a, c, _ = _completed_records(group)
    if a.shape[0] == 0:
        raise ScorebankError(f"the memorization records of {shown!r} have no completed model; {_NONE_YET}")
    est = memorization_estimate(a, c)
    out = xr.Dataset({H.MEMORIZATION: (S.EXAMPLE, est.mem), H.MEMORIZATION_SE: (S.EXAMPLE, est.se),
                      H.N_IN: (S.EXAMPLE, est.n_in), H.N_OUT: (S.EXAMPLE, est.n_out)},
                     coords={S.EXAMPLE: np.arange(est.mem.size)})
    out.attrs["models"] = int(a.shape[0])
    return out


def memorization_score(store) -> np.ndarray:
    """``(N,)`` float64: the memorisation estimate of every training example (high =
    memorised: atypical or mislabelled)."""
    return np.asarray(memorization_scores(store)[H.MEMORIZATION].values)


def stored_influence(store) -> xr.Dataset:
    """The top-k influences :func:`record_estimates` stored: ``influence_index`` and
    ``influence`` over (test_example, rank)."""
    group, shown = _group(store)
    est = group.attrs.get(H.ATTR_ESTIMATES)
    if not est or not est.get("influence_k"):
        raise ScorebankError(f"the store at {shown!r} holds no influence estimates; run "
                             "'scorebank memorization STORE --subsets M --influence'")
    dims = (H.TEST_EXAMPLE, H.RANK)
    return xr.Dataset({H.INFLUENCE_INDEX: (dims, np.asarray(group[H.INFLUENCE_INDEX][:])),
                       H.INFLUENCE: (dims, np.asarray(group[H.INFLUENCE][:]))}, attrs=dict(est))


def record_estimates(store: str | os.PathLike, *, influence_k: int | None = None) -> dict:
    """Compute the estimates from the completed models and store them in the memorization
    group: ``memorization``, ``memorization_se``, ``n_in``, ``n_out`` (example,) and, with
    ``influence_k``, the top-k influences ``influence_index`` and ``influence`` (test_example,
    rank).  Old estimates are dropped first and the attribute ``estimates`` (``models`` used,
    ``influence_k``) is written last, so estimates without it are incomplete.  Holds the
    store's writer lock.  Returns that attribute."""
    import zarr

    from scorebank.stores.zarrstore import StoreWriter, consolidate, require_store_directory

    path = Path(require_store_directory(store, "memorization"))
    gdir = path / H.MEMORIZATION_GROUP
    if not (gdir / "zarr.json").is_file():
        raise ScorebankError(f"the store at {os.fspath(store)!r} has no memorization records; {_NONE_YET}")
    with StoreWriter(path):
        group = zarr.open_group(gdir, mode="r+", zarr_format=3, use_consolidated=False)
        a, c, t = _completed_records(group)
        est = memorization_estimate(a, c)
        infl = influence_topk(a, t, influence_k) if influence_k is not None else None
        H.drop_estimates(gdir, group)
        n = est.mem.size
        chunks = (max(1, min(n, S.PER_EXAMPLE_CHUNK)),)
        for name, values, description in (
                (H.MEMORIZATION, est.mem, "memorisation estimate P(correct | in subset) - P(correct | held out) "
                                          "(Feldman & Zhang 2020)"),
                (H.MEMORIZATION_SE, est.se, "standard error of the estimate (binomial SEs of both means)"),
                (H.N_IN, est.n_in, "completed models whose subset holds the example"),
                (H.N_OUT, est.n_out, "completed models whose subset leaves the example out")):
            create_array(group, name, dims=(S.EXAMPLE,), data=values, chunks=chunks,
                         attributes={"description": description})
        if infl is not None:
            idx, val = infl
            dims = (H.TEST_EXAMPLE, H.RANK)
            create_array(group, H.INFLUENCE_INDEX, dims=dims, data=idx, fill_value=-1,
                         attributes={"description": "training examples with the largest influence on the test "
                                                    "example, largest first (-1: none)"})
            create_array(group, H.INFLUENCE, dims=dims, data=val,
                         attributes={"description": "infl(i, j) = P(correct on test j | i in) - P(correct on "
                                                    "test j | i out) of those training examples"})
        attr = {"models": int(a.shape[0]), "influence_k": None if infl is None else int(infl[0].shape[1])}
        group.attrs[H.ATTR_ESTIMATES] = attr  # last: the estimates are complete
        consolidate(path)
    return attr
