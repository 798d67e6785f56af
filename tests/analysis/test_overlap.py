import numpy as np
import pytest

from scorebank.analysis import final_set_retention, margin_overlaps, pairwise_overlap, smallest_margin_sets
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError


def k_smallest(margin_row: np.ndarray, rho: float, k: int) -> list[int]:
    """Plain sort by (normalised margin, index)."""
    nm = margin_row.astype(np.float64) / rho
    return sorted(range(nm.size), key=lambda i: (nm[i], i))[:k]


@pytest.mark.parametrize("blocks", [False, True])
def test_sets_match_plain_sort(store, request, blocks):
    if blocks:
        request.getfixturevalue("small_blocks")
    got = smallest_margin_sets(store.path, 7)  # 7 < chunk of 16: merges candidates of 3 blocks
    for i in range(3):
        for e in range(7):
            expected = k_smallest(store[S.MARGIN][i, e], store[S.NORM_PRODUCT][i, e], 7)
            assert got.values[i, e].tolist() == expected
    big = smallest_margin_sets(store.path, 30)  # k larger than a block
    assert big.values[1, 3].tolist() == k_smallest(store[S.MARGIN][1, 3], store[S.NORM_PRODUCT][1, 3], 30)


def test_pairwise_overlap_matches_intersections(store):
    got = pairwise_overlap(store.path, k=(5, 12))
    for k in (5, 12):
        for e in range(7):
            sets = [set(k_smallest(store[S.MARGIN][i, e], store[S.NORM_PRODUCT][i, e], k)) for i in range(3)]
            pairs = []
            for a in range(3):
                for b in range(3):
                    frac = len(sets[a] & sets[b]) / k
                    assert got["overlap"].sel(k=k, epoch=e).values[a, b] == pytest.approx(frac)
                    if a < b:
                        pairs.append(frac)
            assert float(got["mean"].sel(k=k, epoch=e)) == pytest.approx(np.mean(pairs))
            assert float(got["min"].sel(k=k, epoch=e)) == pytest.approx(min(pairs))
            assert float(got["max"].sel(k=k, epoch=e)) == pytest.approx(max(pairs))


def test_retention_and_separation(make_store):
    rec = np.ones((2, 7), bool)
    rec[0, 3] = False
    rec[1, 6] = False  # run 1's final recorded epoch is 5
    acc = np.full((2, 7), 0.5, np.float32)
    acc[0, 4:] = 1.0  # run 0 separates at 4; run 1 never
    st = make_store(seeds=(0, 1), recorded=rec, overrides={S.TRAIN_ACCURACY: acc}, chunk=16)
    got = final_set_retention(st.path, k=(4, 10))
    assert got["final_epoch"].values.tolist() == [6, 5]
    assert got["separation_epoch"].values.tolist() == [4, -1]
    for k in (4, 10):
        for i, final in ((0, 6), (1, 5)):
            target = set(k_smallest(st[S.MARGIN][i, final], st[S.NORM_PRODUCT][i, final], k))
            for e in range(7):
                value = float(got["retention"].sel(k=k, epoch=e).values[i])
                if not rec[i, e]:
                    assert np.isnan(value)
                    continue
                now = set(k_smallest(st[S.MARGIN][i, e], st[S.NORM_PRODUCT][i, e], k))
                assert value == pytest.approx(len(now & target) / k)
        assert float(got["at_separation"].sel(k=k).values[0]) == float(got["retention"].sel(k=k, epoch=4).values[0])
        assert np.isnan(got["at_separation"].sel(k=k).values[1])
    both = margin_overlaps(st.path, k=(4, 10))
    np.testing.assert_array_equal(both["retention"].values, got["retention"].values)
    # epoch 3 (not recorded by run 0) and 6 (not by run 1) have no pairwise value
    assert np.isnan(both["pairwise_mean"].sel(k=4, epoch=3)) and np.isnan(both["pairwise_mean"].sel(k=4, epoch=6))
    assert np.isfinite(both["pairwise_mean"].sel(k=4, epoch=2))


def test_bad_k_and_single_run(store):
    with pytest.raises(InvalidArgumentError, match=r"k 41 is larger than the data set \(40 examples\)"):
        pairwise_overlap(store.path, k=(5, 41))
    with pytest.raises(InvalidArgumentError, match="k 0 must be a positive integer"):
        final_set_retention(store.path, k=0)
    with pytest.raises(InvalidArgumentError, match="at least two runs"):
        pairwise_overlap(store.path, k=5, runs=[1])


@pytest.mark.parametrize("k", [1, 20, 50])
def test_block_candidates_from_a_sampled_bound_match_a_full_sort(k):
    """Rows long enough for the k-th smallest to be bounded from a strided sample: random,
    ascending (the sample then bounds far from the k-th), heavily tied, mostly NaN, all
    NaN and constant rows all give the k smallest (value, index) of a plain sort."""
    from scorebank.analysis.overlap import _block_candidates

    rng = np.random.default_rng(k)
    n, offset = 3000, 500
    rows = [rng.normal(size=n), np.sort(rng.normal(size=n)), np.round(rng.normal(size=n), 1),
            np.where(rng.random(n) < 0.99, np.nan, rng.normal(size=n)), np.full(n, np.nan), np.zeros(n)]
    x = np.asarray(rows, dtype=np.float32).reshape(2, 3, n)
    got = _block_candidates(x, k, block_info=[{"array-location": [(0, 2), (4, 7), (offset, offset + n)]}])
    assert got.shape == (2, 3, 1, k, 2)
    for i, row in enumerate(x.reshape(6, n)):
        ok = np.flatnonzero(~np.isnan(row))
        want = ok[np.lexsort((ok, row[ok]))][:k]
        cand = got.reshape(6, k, 2)[i]
        assert cand[:want.size, 1].tolist() == (want + offset).tolist()
        assert cand[:want.size, 0].tolist() == row[want].astype(np.float64).tolist()
        assert (cand[want.size:, 0] == np.inf).all()
