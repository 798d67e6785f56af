import itertools

import numpy as np
import pytest
from scipy.stats import spearmanr

from scorebank.analysis import sensitivity_curve, spearman, spearman_matrix
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError


def _forgetting_mean(reference, st, never="count"):
    return np.mean([reference(st[S.TRAIN_CORRECT][i], st[S.COMPLETED][i], never)[3]
                    for i in range(len(st.seeds))], axis=0)


def test_spearman_matrix_matches_scipy(store, reference):
    specs = ["el2n@2", "grand@0", "forgetting", "margin@6", "nmargin@6"]
    got = spearman_matrix(store.path, specs)
    rho = store[S.NORM_PRODUCT][:, 6]
    columns = [store[S.EL2N][:, 2].astype(float).mean(0), store[S.GRAND][:, 0].astype(float).mean(0),
               _forgetting_mean(reference, store), store[S.MARGIN][:, 6].astype(float).mean(0),
               (store[S.MARGIN][:, 6].astype(float) / rho[:, None]).mean(0)]
    expected = spearmanr(np.column_stack(columns)).statistic
    np.testing.assert_allclose(got.values, expected, atol=1e-12)
    assert got["score_a"].values.tolist() == specs


def test_spearman_with_never_learned_inf(make_store, reference):
    tc = np.random.default_rng(1).random((3, 7, 30)) < 0.6
    tc[:, 1, 5:] = True
    tc[:, :, :5] = False  # five examples never learned in any run: score inf (Data Diet)
    st = make_store(n=30, overrides={S.TRAIN_CORRECT: tc}, seed=4)
    for never in ("count", "inf"):
        got = spearman_matrix(st.path, ["forgetting", "el2n@3", "loss@5"], never_learned=never)
        forget = _forgetting_mean(reference, st, never)
        assert np.isinf(forget[:5]).all() == (never == "inf")
        columns = [forget, st[S.EL2N][:, 3].astype(float).mean(0), st[S.LOSS][:, 5].astype(float).mean(0)]
        expected = spearmanr(np.column_stack(columns)).statistic
        np.testing.assert_allclose(got.values, expected, atol=1e-12)
    # inf and count rank the never-learned examples alike (above every other), so rho agrees
    np.testing.assert_allclose(spearman_matrix(st.path, ["forgetting", "el2n@3"], never_learned="inf").values,
                               spearman_matrix(st.path, ["forgetting", "el2n@3"]).values, atol=1e-12)


def test_spearman_of_constant_is_nan():
    assert np.isnan(spearman(np.ones(5), np.arange(5)))
    assert spearman(np.arange(6), np.arange(6)[::-1]) == pytest.approx(-1.0)


def test_matrix_needs_two_scores(store):
    with pytest.raises(InvalidArgumentError, match="at least two scores"):
        spearman_matrix(store.path, ["el2n@1"])


def test_sensitivity_curve_enumerates_all_subsets(make_store):
    st = make_store(seeds=(0, 1, 2, 3), n=50)
    got = sensitivity_curve(st.path, "el2n@3", draws=10)
    per_run = st[S.EL2N][:, 3].astype(float)
    full = per_run.mean(0)
    for k in range(1, 5):
        corr = [spearmanr(per_run[list(c)].mean(0), full).statistic
                for c in itertools.combinations(range(4), k)]
        row = got.sel(k=k)
        assert int(row["subsets"]) == len(corr)
        assert float(row["mean"]) == pytest.approx(np.mean(corr), abs=1e-12)
        assert float(row["std"]) == pytest.approx(np.std(corr), abs=1e-12)
        assert float(row["min"]) == pytest.approx(min(corr), abs=1e-12)
        assert float(row["max"]) == pytest.approx(max(corr), abs=1e-12)
    assert float(got.sel(k=4)["mean"]) == pytest.approx(1.0)


def test_sensitivity_curve_random_subsets_are_reproducible(make_store):
    st = make_store(seeds=(0, 1, 2, 3, 4), n=30)
    a = sensitivity_curve(st.path, "loss@1", draws=3, seed=5)
    b = sensitivity_curve(st.path, "loss@1", draws=3, seed=5)
    assert a.identical(b)
    assert a["subsets"].values.tolist() == [3, 3, 3, 3, 1]  # C(5,k) > 3 except k = 5
    per_run = st[S.LOSS][:, 1].astype(float)
    full = per_run.mean(0)
    for k in (1, 2):  # every drawn subset's correlation lies within the exact range
        exact = [spearmanr(per_run[list(c)].mean(0), full).statistic
                 for c in itertools.combinations(range(5), k)]
        assert min(exact) - 1e-12 <= float(a.sel(k=k)["min"]) <= float(a.sel(k=k)["max"]) <= max(exact) + 1e-12
    with pytest.raises(InvalidArgumentError, match="draws 0"):
        sensitivity_curve(st.path, "loss@1", draws=0)


def test_ranks_from_packed_keys_equal_scipy_where_values_are_closer_than_the_kept_bits():
    """sort_order keeps the top 64 - b bits of each value's key (b bits hold a position):
    values differing only below them (here a few units in the last place), signed zeros,
    infinities, subnormals and large tie groups must still rank as scipy ranks them."""
    from scipy.stats import rankdata

    from scorebank.analysis.correlation import average_ranks, sort_order

    rng = np.random.default_rng(5)
    n = 50_000
    ulps = 1.0 + rng.integers(0, 40, n) * 2.0**-52  # 40 values a few ulps apart, many ties each
    mixed = np.round(rng.normal(size=n), 2) * rng.choice([1.0, -1.0, 5e-324, 1e300], n)
    mixed[rng.random(n) < 0.01] = -0.0
    mixed[rng.random(n) < 0.01] = np.inf
    mixed[rng.random(n) < 0.01] = -np.inf
    for x in (ulps, -ulps, mixed, rng.normal(size=n), np.r_[0.0, -0.0, 0.0, -0.0]):
        np.testing.assert_array_equal(average_ranks(x), rankdata(x, method="average"))
        order, xs = sort_order(x)
        np.testing.assert_array_equal(np.sort(order), np.arange(x.size))  # a permutation
        np.testing.assert_array_equal(xs, np.sort(x))
