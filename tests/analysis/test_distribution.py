import numpy as np
import pytest

from scorebank.analysis import margin_distribution, sorted_margins
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError


def stats(values: np.ndarray, gammas):
    """AUC by numpy's trapezoid over [0, 1] of the sorted values, and counts within gamma."""
    s = np.sort(values)
    auc = np.trapezoid(s, np.linspace(0, 1, s.size)) if s.size > 1 else s[0]
    return auc, s[0], [int((s <= s[0] + g).sum()) for g in gammas]


@pytest.mark.parametrize("blocks", [False, True])
def test_matches_numpy(make_store, request, blocks):
    if blocks:
        request.getfixturevalue("small_blocks")
    rec = np.ones((2, 5), bool)
    rec[1, 2] = False
    lab = np.array([0] * 20 + [1] * 19 + [2])  # class 2 has a single example
    st = make_store(seeds=(0, 1), epochs=4, recorded=rec, chunk=16, overrides={S.LABEL: lab})
    gammas = (0.01, 0.1, 0.5)
    got = margin_distribution(st.path, gammas=gammas)
    assert got["epoch"].values.tolist() == [0, 1, 2, 3, 4]
    for i in range(2):
        for e in range(5):
            if not rec[i, e]:
                assert np.isnan(got["auc"].values[i, e]) and np.isnan(got["n_within"].values[:, i, e]).all()
                continue
            nm = st[S.MARGIN][i, e].astype(np.float64) / st[S.NORM_PRODUCT][i, e]
            auc, smallest, counts = stats(nm, gammas)
            assert got["auc"].values[i, e] == pytest.approx(auc, rel=1e-12, abs=1e-12)
            assert got["smallest"].values[i, e] == smallest
            assert got["mean"].values[i, e] == pytest.approx(nm.mean())
            assert got["n_within"].values[:, i, e].tolist() == counts
            for c in range(3):
                auc_c, smallest_c, counts_c = stats(nm[lab == c], gammas)
                assert got["class_auc"].values[c, i, e] == pytest.approx(auc_c, rel=1e-12, abs=1e-12)
                assert got["class_smallest"].values[c, i, e] == smallest_c
                assert got["class_n_within"].values[:, c, i, e].tolist() == counts_c
    assert got["class_size"].values.tolist() == [20, 19, 1]
    assert got["class_name"].values.tolist() == ["c0", "c1", "c2"]


def test_sorted_margins_and_errors(make_store):
    rec = np.ones((1, 4), bool)
    rec[0, 2] = False
    st = make_store(seeds=(5,), epochs=3, n=30, recorded=rec)
    curve = sorted_margins(st.path, run=5, epochs=[0, 3], points=30)
    nm = np.sort(st[S.MARGIN][0, 3].astype(np.float64) / st[S.NORM_PRODUCT][0, 3])
    np.testing.assert_allclose(curve.sel(epoch=3).values, nm)
    with pytest.raises(InvalidArgumentError, match=r"epoch\(s\) \[2\] not recorded in run 5.*0-1, 3"):
        sorted_margins(st.path, run=5, epochs=[2])
    with pytest.raises(InvalidArgumentError, match="gamma -0.1"):
        margin_distribution(st.path, gammas=(-0.1,))
