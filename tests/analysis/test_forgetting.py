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
