"""Scores added as one registry entry: the toy ``prob@E`` (softmax probability of the label)."""

import numpy as np
import pytest

from scorebank.analysis import average_score, noise_detection, parse_score, select
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError


def test_prob_is_exp_of_minus_the_loss_averaged_over_runs(store):
    expected = np.exp(-store[S.LOSS][:, 3, :].astype(np.float64)).mean(axis=0)
    got = average_score(store.path, "prob@3")
    np.testing.assert_allclose(got.values, expected, rtol=1e-12)
    assert parse_score("prob@3").high_is_hard is False  # a low probability of the label is hard
    with pytest.raises(InvalidArgumentError, match=r"'prob' needs an epoch: write prob@E"):
        parse_score("prob")


def test_prob_low_end_is_hard_in_select_and_noise(make_store):
    st = make_store(label_noise=0.25, seed=3)
    prob = np.exp(-st[S.LOSS][:, 2, :].astype(np.float64)).mean(axis=0)
    sel = select(st.path, "stratified", score="prob@2", fraction=0.5, hard_cutoff=0.25, bins=1)
    hardest = sorted(range(40), key=lambda i: (prob[i], i))[:10]  # dropped first: the lowest probabilities
    assert not set(hardest) & set(sel.indices.tolist()) and sel.parameters["hard_end"] == "low"
    res = noise_detection(st.path, ["prob@2"])
    corrupted = st[S.CORRUPTED]
    # ROC AUC by pairs: a corrupted example is harder (lower probability) than a clean one
    pairs = [(1.0 if prob[a] < prob[b] else 0.5 if prob[a] == prob[b] else 0.0)
             for a in np.flatnonzero(corrupted) for b in np.flatnonzero(~corrupted)]
    assert float(res["roc_auc"].sel(score="prob@2")) == pytest.approx(np.mean(pairs), abs=1e-12)


def test_a_score_on_a_variable_newer_than_the_store_format_is_refused_in_one_line(store, monkeypatch):
    """A future entry reading a variable added in a later format: on a store of the current
    format the registry's variables say so before anything is read."""
    from scorebank.analysis.registry import SCORES, ScoreKind, at_epoch, clean_pass
    from scorebank.core.registry import Entry
    from scorebank.stores.location import MissingVariableError

    now = S.FORMAT_VERSION  # the format the test store is written in
    newer = S.Variable("inflight_margin", (S.RUN, S.EPOCH, S.EXAMPLE), "float32", "toy", since=now + 1)
    monkeypatch.setitem(S.BY_NAME, newer.name, newer)
    kind = ScoreKind("toy", lambda ds, seeds, epoch, options: at_epoch(ds, newer.name, seeds, epoch),
                     high_is_hard=False, variables=(newer.name,), available=clean_pass)
    monkeypatch.setattr(SCORES, "_entries", {**SCORES._entries, "toy": Entry("toy", kind, "a toy")})
    with pytest.raises(MissingVariableError, match=rf"^score 'toy@3' needs 'inflight_margin', but store format {now} "
                                                   rf"has no 'inflight_margin' \(added in format {now + 1}\)") as info:
        average_score(store.path, "toy@3")
    assert "\n" not in str(info.value)


def test_building_blocks_for_scores_over_epochs_and_per_example(make_store):
    import dask

    from scorebank.analysis import access
    from scorebank.analysis.registry import epochs_through, per_example

    rec = np.ones((3, 7), bool)
    rec[1, 5] = False  # run 1 has no clean pass at epoch 5
    st = make_store(recorded=rec, chunk=16)
    ds = access.open_store(st.path)
    got = epochs_through(ds, S.LOSS, [2, 0], 3, "confidence@3")
    assert got.shape == (2, 3, 40)
    (values,) = dask.compute(np.exp(-got).mean(axis=1))  # e.g. data maps' confidence over epochs 1..3
    expected = np.exp(-st[S.LOSS][[2, 0], 1:4].astype(np.float64)).mean(axis=1)
    np.testing.assert_allclose(values, expected, rtol=1e-12)
    with pytest.raises(InvalidArgumentError, match=r"'?confidence@6'? needs epochs 1\.\.6 recorded, but run\(s\) "
                                                   r"\[1\] lack some; epochs >= 1 recorded in all chosen runs: 1-4, 6"):
        epochs_through(ds, S.LOSS, [0, 1], 6, "confidence@6")
    with pytest.raises(InvalidArgumentError, match=r"confidence@9 is out of range.*1 <= E <= 6"):
        epochs_through(ds, S.LOSS, [0], 9, "confidence@9")
    (labels,) = dask.compute(per_example(ds, S.LABEL, [0, 1, 2]))
    np.testing.assert_array_equal(labels, np.broadcast_to(st[S.LABEL].astype(np.float64), (3, 40)))
