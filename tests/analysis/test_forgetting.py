import numpy as np
import pytest

from scorebank.analysis import forgetting
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError


def test_hand_made_sequence_has_three_forgetting_events(make_store):
    # epochs 0..8; example 0: 1 0 1 0 1 1 0 1 over epochs 1..8 -> three 1->0 transitions
    seq = np.array([0, 1, 0, 1, 0, 1, 1, 0, 1], bool)
    tc = np.zeros((1, 9, 3), bool)
    tc[0, :, 0] = seq
    tc[0, 5:, 1] = True  # learned at epoch 5, never forgotten
    # example 2: never correct
    st = make_store(seeds=(7,), epochs=8, n=3, overrides={S.TRAIN_CORRECT: tc})
    out = forgetting(st.path)
    assert out["events"].sel(run=7).values.tolist() == [3, 0, 0]
    assert out["never_learned"].sel(run=7).values.tolist() == [False, False, True]
    assert out["learned_epoch"].sel(run=7).values.tolist() == [8, 5, -1]
    assert out["presentations"].values.tolist() == [8]
    assert out["score"].sel(run=7).values.tolist() == [3.0, 0.0, 9.0]  # never learned: 8 + 1
    assert forgetting(st.path, never_learned="inf")["score"].values[0, 2] == np.inf
    # forgetting@4 counts epochs 1..4 only: 1 0 1 0 -> two events
    assert forgetting(st.path, epoch=4)["events"].values[0].tolist() == [2, 0, 0]


@pytest.mark.parametrize("blocks", [False, True])
def test_random_store_matches_loops(store, request, blocks, reference):
    if blocks:
        request.getfixturevalue("small_blocks")
        from scorebank.analysis import access

        ds = access.open_store(store.path)
        assert len(access.select(ds, S.TRAIN_CORRECT, runs=[0], epochs=np.arange(1, 7)).chunks[1]) == 3
    out = forgetting(store.path)
    for i, seed in enumerate(store.seeds):
        ev, never, learned, score = reference(store[S.TRAIN_CORRECT][i], store[S.COMPLETED][i])
        np.testing.assert_array_equal(out["events"].sel(run=seed).values, ev)
        np.testing.assert_array_equal(out["never_learned"].sel(run=seed).values, never)
        np.testing.assert_array_equal(out["learned_epoch"].sel(run=seed).values, learned)
        np.testing.assert_array_equal(out["score"].sel(run=seed).values, score)


def test_forgetting_at_epoch_and_gap_in_completion(make_store, small_blocks, reference):
    completed = np.ones((2, 9), bool)
    completed[1, 4] = False  # a gap: epochs 3 and 5 are no consecutive pair
    completed[1, 8] = False  # and the run stopped before epoch 8
    st = make_store(seeds=(0, 1), epochs=8, n=30, completed=completed, seed=3,
                    statuses={0: S.RUN_COMPLETE, 1: S.RUN_FAILED})
    out = forgetting(st.path, runs=[0, 1])
    for i in range(2):
        ev, never, learned, score = reference(st[S.TRAIN_CORRECT][i], completed[i])
        np.testing.assert_array_equal(out["events"].values[i], ev)
        np.testing.assert_array_equal(out["learned_epoch"].values[i], learned)
        np.testing.assert_array_equal(out["score"].values[i], score)
    assert out["presentations"].values.tolist() == [8, 6]
    at5 = forgetting(st.path, runs=[0], epoch=5)
    cut = completed[0].copy()
    cut[6:] = False
    np.testing.assert_array_equal(at5["events"].values[0], reference(st[S.TRAIN_CORRECT][0], cut)[0])
    with pytest.raises(InvalidArgumentError, match=r"run\(s\) \[1\] have not completed them.*1-3"):
        forgetting(st.path, runs=[0, 1], epoch=5)


def test_bad_arguments(store):
    with pytest.raises(InvalidArgumentError, match="'sometimes'.*'count'.*'inf'"):
        forgetting(store.path, never_learned="sometimes")
    with pytest.raises(InvalidArgumentError, match=r"forgetting@0.*1 <= E <= 6"):
        forgetting(store.path, epoch=0)
    with pytest.raises(InvalidArgumentError, match=r"forgetting@7.*1 <= E <= 6"):
        forgetting(store.path, epoch=7)


@pytest.mark.parametrize("never,reduce", [("count", "mean"), ("inf", "sum")])
def test_summary_matches_plain_numpy(make_store, reference, never, reduce):
    from scorebank.analysis.forgetting import forgetting_summary

    completed = np.ones((3, 9), bool)
    completed[2, 7:] = False  # run 2 stopped early: fewer presentations
    tc = np.random.default_rng(5).random((3, 9, 50)) < 0.6
    tc[1, :, 3] = False  # never learned in one run
    tc[:, :, 9] = False  # never learned in any run
    st = make_store(seeds=(4, 5, 6), epochs=8, n=50, completed=completed, seed=11,
                    statuses={4: S.RUN_COMPLETE, 5: S.RUN_COMPLETE, 6: S.RUN_FAILED},
                    overrides={S.TRAIN_CORRECT: tc})
    summary = forgetting_summary(forgetting(st.path, runs=[4, 5, 6], never_learned=never), st[S.LABEL],
                                 reduce=reduce, top=7)
    refs = [reference(st[S.TRAIN_CORRECT][i], completed[i], never) for i in range(3)]
    for i, (seed, row) in enumerate(zip((4, 5, 6), summary.per_run)):
        ev, nev, learned, _ = refs[i]
        learned_ev = [int(ev[x]) for x in range(50) if not nev[x]]
        stays = sorted(int(e) for e in learned if e >= 0)
        mid = len(stays) // 2
        median = (stays[mid] if len(stays) % 2 else (stays[mid - 1] + stays[mid]) / 2) if stays else None
        assert (row.run, row.presentations, row.never_learned, row.max_events) == (
            seed, int(completed[i, 1:].sum()), int(sum(nev)), int(max(ev)))
        assert row.unforgettable == sum(1 for x in range(50) if not nev[x] and ev[x] == 0)
        assert row.mean_events == pytest.approx(sum(learned_ev) / len(learned_ev), rel=1e-15)
        assert row.median_learned_epoch == median
    totals = [sum(float(r[3][x]) for r in refs) for x in range(50)]
    expected = totals if reduce == "sum" else [t / 3 for t in totals]
    assert summary.score.tolist() == expected
    best = sorted(range(50), key=lambda x: (-expected[x], x))[:7]
    assert [(r.example, r.score, r.label) for r in summary.most_forgotten] == [
        (x, expected[x], int(st[S.LABEL][x])) for x in best]
    assert {3, 9} <= set(best)  # never-learned examples rank first
    if never == "inf":
        assert summary.quantiles["mean"] == np.inf and summary.most_forgotten[1].score == np.inf
    ordered = sorted(expected)
    assert summary.quantiles["median"] == ordered[49 // 2] and summary.quantiles["max"] == ordered[-1]
    doc = summary.to_dict()
    assert list(doc) == ["spec", "runs", "never_learned", "reduce", "per_run", "score", "most_forgotten"]
    assert doc["runs"] == [4, 5, 6] and doc["spec"] == "forgetting" and doc["never_learned"] == never
    assert list(doc["per_run"][0]) == ["run", "presentations", "never_learned", "unforgettable", "mean_events",
                                       "max_events", "median_learned_epoch"]
    assert doc["most_forgotten"][0] == {"example": best[0], "score": expected[best[0]],
                                        "label": int(st[S.LABEL][best[0]])}


def test_summary_ties_top_and_bad_arguments(make_store):
    from scorebank.analysis.forgetting import forgetting_summary

    tc = np.zeros((1, 5, 4), bool)
    tc[0, 1:, 1] = [1, 0, 1, 0]  # two events
    tc[0, 1:, 2] = [1, 0, 1, 1]  # one event
    tc[0, 1:, 3] = [1, 0, 0, 1]  # one event; example 0 never learned: 4 + 1
    st = make_store(seeds=(0,), epochs=4, n=4, overrides={S.TRAIN_CORRECT: tc, S.LABEL: np.array([2, 1, 0, 1])})
    out = forgetting(st.path)
    s = forgetting_summary(out, st[S.LABEL], top=10)
    assert [(r.example, r.score, r.label) for r in s.most_forgotten] == [
        (0, 5.0, 2), (1, 2.0, 1), (2, 1.0, 0), (3, 1.0, 1)]  # the tie 2, 3 by position
    (row,) = s.per_run
    assert (row.never_learned, row.unforgettable, row.mean_events, row.max_events) == (1, 0, 4 / 3, 2)
    assert row.median_learned_epoch == 3.5  # stays learned: example 2 from epoch 3, example 3 from 4
    assert forgetting_summary(out, st[S.LABEL], top=2).most_forgotten[-1].example == 1
    assert forgetting_summary(out, st[S.LABEL], top=0).most_forgotten == []
    assert forgetting_summary(out, st[S.LABEL], top=-3).most_forgotten == []
    with pytest.raises(InvalidArgumentError, match="reduce 'median'"):
        forgetting_summary(out, st[S.LABEL], reduce="median")
    with pytest.raises(InvalidArgumentError, match=r"labels of shape \(3,\)"):
        forgetting_summary(out, st[S.LABEL][:3])
