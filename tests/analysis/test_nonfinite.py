"""One non-finite rule for every score (the registry's): finite values only, except forgetting
of never-learned examples with never_learned="inf"; refused in one line naming score and count."""

import warnings

import numpy as np
import pytest

from scorebank.analysis import (average_score, average_scores, margin_distribution, margin_overlaps,
                                noise_detection, run_scores, select, sensitivity_curve, spearman_matrix)
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError, ScorebankError


@pytest.fixture
def bad(make_store):
    rng = np.random.default_rng(1)
    margin = rng.normal(size=(3, 7, 40))
    margin[1, 4, [3, 9]] = np.inf  # two examples of run 1 at epoch 4
    margin[2, 5, 7] = np.nan  # recorded, yet missing
    loss = rng.exponential(size=(3, 7, 40))
    loss[0, 2, 5] = -np.inf
    return make_store(chunk=16, label_noise=0.25, overrides={S.MARGIN: margin, S.LOSS: loss})


@pytest.mark.parametrize("call", [
    lambda p: average_score(p, "loss@2"),
    lambda p: average_scores(p, ["el2n@2", "loss@2"]),
    lambda p: run_scores(p, "loss@2", runs=[0]),
    lambda p: select(p, "keep-highest", score="loss@2", fraction=0.5),
    lambda p: select(p, "stratified", score="loss@2", fraction=0.5),
    lambda p: spearman_matrix(p, ["loss@2", "el2n@2"]),
    lambda p: sensitivity_curve(p, "loss@2"),
    lambda p: noise_detection(p, ["loss@2"]),
], ids=["average", "averages", "per-run", "select", "stratified", "correlation", "sensitivity", "noise"])
def test_an_infinite_score_is_refused_everywhere(bad, call):
    with pytest.raises(ScorebankError, match=r"^score 'loss@2' is infinite for 1 example\(s\), e\.g\. example 5;") as info:
        call(bad.path)
    assert not isinstance(info.value, InvalidArgumentError) and "\n" not in str(info.value)
    assert "forgetting (with --never-learned inf)" in str(info.value)  # the exception, from the registry


def test_infinite_margins_are_refused_and_finite_epochs_still_work(bad):
    with pytest.raises(ScorebankError, match=r"'margin@4' is infinite for 2 example\(s\), e\.g\. example 3"):
        average_score(bad.path, "margin@4")
    with pytest.raises(ScorebankError, match=r"'nmargin@4' is infinite for 2 example\(s\)"):
        average_score(bad.path, "nmargin@4", runs=[1])
    with pytest.raises(ScorebankError, match=r"'margin@5' has missing \(NaN\) values for 1 example\(s\), e\.g\. example 7"):
        average_score(bad.path, "margin@5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning on the way
        with pytest.raises(ScorebankError, match=r"'nmargin@4' is not finite \(NaN or inf\) for 2 example\(s\) "
                                                 r"in run 1 \(and at 1 more"):
            margin_distribution(bad.path)
        with pytest.raises(ScorebankError, match=r"'nmargin@5' is not finite \(NaN or inf\) for 1 example\(s\) in run 2;"):
            margin_distribution(bad.path, runs=[0, 2])
        with pytest.raises(ScorebankError, match=r"'nmargin@4' is not finite \(NaN or inf\) for 2 example\(s\) in run 1"):
            margin_overlaps(bad.path, k=3)
        res = margin_distribution(bad.path, epochs=[0, 1, 6])
        assert np.isfinite(res["auc"].values).all()
        sets = margin_overlaps(bad.path, k=3, runs=[0])
        assert np.isfinite(sets["retention"].values).all()
    expected = bad[S.MARGIN][:, 3].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(average_score(bad.path, "margin@3").values, expected, rtol=1e-12)


def test_never_learned_forgetting_may_be_inf_on_request_only(make_store):
    tc = np.random.default_rng(5).random((3, 7, 30)) < 0.5
    tc[:, 1, 3:] = True  # every other example is learned at epoch 1 ...
    tc[:, :, :3] = False  # ... and three never, in any run
    st = make_store(n=30, overrides={S.TRAIN_CORRECT: tc}, seed=2)
    inf = average_score(st.path, "forgetting", never_learned="inf").values
    assert np.isposinf(inf[:3]).all() and np.isfinite(inf[3:]).all()
    sel = select(st.path, "stratified", score="forgetting", never_learned="inf", fraction=0.5, bins=3)
    assert sel.n_kept == 15 and sel.parameters["never_learned"] == "inf"
    corr = spearman_matrix(st.path, ["forgetting", "el2n@2"], never_learned="inf")
    assert np.isfinite(corr.values).all()
