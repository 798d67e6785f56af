"""The memorisation estimator and its standard error on hand-computed toy subsets, the top-k
influence against a per-pair loop, and the estimates stored in a store."""

import math
import shutil

import numpy as np
import pytest
import xarray as xr

from scorebank.analysis.memorization import (influence_topk, memorization_estimate, memorization_scores,
                                             record_estimates, stored_influence)
from scorebank.stores.errors import InvalidArgumentError, ScorebankError

# 5 models (rows) x 4 training examples (columns)
IN = np.array([[1, 1, 0, 1],
               [1, 0, 1, 1],
               [0, 1, 1, 1],
               [1, 1, 0, 1],
               [0, 0, 1, 1]], dtype=bool)
OK = np.array([[1, 1, 0, 1],
               [1, 0, 1, 0],
               [1, 0, 1, 1],
               [1, 1, 1, 1],
               [0, 1, 0, 1]], dtype=bool)


def test_estimator_matches_hand_computed_values():
    est = memorization_estimate(IN, OK)
    # example 0: in models 0,1,3 (correct 1,1,1) -> 3/3; out models 2,4 (correct 1,0) -> 1/2
    # example 1: in models 0,2,3 (1,0,1) -> 2/3; out models 1,4 (0,1) -> 1/2
    # example 2: in models 1,2,4 (1,1,0) -> 2/3; out models 0,3 (0,1) -> 1/2
    # example 3: in every model (1,0,1,1,1) -> 4/5; never out -> undefined
    np.testing.assert_array_equal(est.n_in, [3, 3, 3, 5])
    np.testing.assert_array_equal(est.n_out, [2, 2, 2, 0])
    np.testing.assert_allclose(est.p_in[:3], [1.0, 2 / 3, 2 / 3], rtol=1e-15)
    np.testing.assert_allclose(est.p_out[:3], [0.5, 0.5, 0.5], rtol=1e-15)
    np.testing.assert_allclose(est.mem[:3], [0.5, 1 / 6, 1 / 6], rtol=1e-14)
    se0 = math.sqrt(0 / 3 + 0.25 / 2)
    se1 = math.sqrt((2 / 3) * (1 / 3) / 3 + 0.25 / 2)
    np.testing.assert_allclose(est.se[:3], [se0, se1, se1], rtol=1e-14)
    assert est.p_in[3] == pytest.approx(0.8) and math.isnan(est.p_out[3])
    assert math.isnan(est.mem[3]) and math.isnan(est.se[3])


def test_estimator_refuses_mismatched_or_empty_records():
    with pytest.raises(InvalidArgumentError, match="same"):
        memorization_estimate(IN, OK[:, :3])
    with pytest.raises(InvalidArgumentError, match="no completed models"):
        memorization_estimate(IN[:0], OK[:0])


def loop_influence(a, t):
    """infl[i, j] by the definition, one pair at a time (NaN when a side is empty)."""
    n, m = a.shape[1], t.shape[1]
    out = np.full((n, m), np.nan)
    for i in range(n):
        if a[:, i].all() or not a[:, i].any():
            continue
        for j in range(m):
            out[i, j] = t[a[:, i], j].mean() - t[~a[:, i], j].mean()
    return out


def test_influence_topk_hand_computed():
    test_ok = np.array([[1], [0], [1], [1], [0]], dtype=bool)  # one test example
    # i=0: in (0,1,3) -> 2/3, out (2,4) -> 1/2: 1/6;  i=1: in (0,2,3) -> 1, out (1,4) -> 0: 1
    # i=2: in (1,2,4) -> 1/3, out (0,3) -> 1: -2/3;   i=3: never out -> never chosen
    idx, val = influence_topk(IN, test_ok, 4)
    assert idx.tolist() == [[1, 0, 2, -1]]
    np.testing.assert_allclose(val[0, :3], [1.0, 1 / 6, -2 / 3], rtol=1e-14)
    assert math.isnan(val[0, 3])


@pytest.mark.parametrize("block", [1, 3, 256])
def test_influence_topk_matches_the_definition(block):
    rng = np.random.default_rng(0)
    a = rng.random((12, 30)) < 0.6
    t = rng.random((12, 7)) < 0.5
    full = loop_influence(a, t)
    idx, val = influence_topk(a, t, 5, block=block)
    for j in range(7):
        key = np.where(np.isnan(full[:, j]), -np.inf, full[:, j])
        order = sorted(range(30), key=lambda i: (-key[i], i))[:5]  # largest first, ties by index
        assert idx[j].tolist() == order
        np.testing.assert_allclose(val[j], full[order, j], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_top_k(k):
    with pytest.raises(InvalidArgumentError, match="--top-k"):
        influence_topk(IN, OK, k)


# ----------------------------------------------------------------------------- in a store
# ``base_store`` / ``store`` (tests/conftest.py): scored, then 4 subset models keeping 70%
STORE_CONFIG = dict(epochs=2)
STORE_BUILD = dict(memorization=(4, 0.7))


@pytest.fixture
def store(module_store):  # not tests/analysis/conftest.py's
    return module_store


def test_recorded_estimates_equal_the_estimator_on_the_records(store):
    import zarr

    group = zarr.open_group(store / "memorization", mode="r+")
    group["completed"][3] = False  # an unfinished model is left out
    attr = record_estimates(store, influence_k=3)
    assert attr == {"models": 3, "influence_k": 3}
    ds = xr.open_zarr(store, group="memorization")
    a, c, t = (ds[v].values[:3] for v in ("in_subset", "correct", "test_correct"))
    est = memorization_estimate(a, c)
    np.testing.assert_array_equal(ds["memorization"].values, est.mem)
    np.testing.assert_array_equal(ds["memorization_se"].values, est.se)
    np.testing.assert_array_equal(ds["n_in"].values, a.sum(0))
    idx, val = influence_topk(a, t, 3)
    infl = stored_influence(store)
    np.testing.assert_array_equal(infl["influence_index"].values, idx)
    np.testing.assert_array_equal(infl["influence"].values, val)
    scores = memorization_scores(store)
    assert scores.attrs["models"] == 3
    np.testing.assert_array_equal(scores["memorization"].values, est.mem)
    # without --influence the old influence arrays go
    assert record_estimates(store) == {"models": 3, "influence_k": None}
    assert "influence" not in xr.open_zarr(store, group="memorization")
    with pytest.raises(ScorebankError, match="no influence"):
        stored_influence(store)


def test_a_store_without_records_is_reported(tmp_path, base_store):
    path = tmp_path / "s.zarr"
    shutil.copytree(base_store, path)
    shutil.rmtree(path / "memorization")
    from scorebank.stores.create import consolidate

    consolidate(path)
    with pytest.raises(ScorebankError, match="scorebank memorization"):
        memorization_scores(path)
    with pytest.raises(ScorebankError, match="scorebank memorization"):
        record_estimates(path)
