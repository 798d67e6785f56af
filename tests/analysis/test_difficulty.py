import numpy as np
import pytest

from scorebank.analysis import difficulty, threshold_epochs
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError, ScorebankError


def test_difficulty_counts_hard_runs(make_store):
    rng = np.random.default_rng(4)
    correct = rng.random((3, 6, 25)) < 0.5
    acc = np.array([[0.1, 0.3, 0.6, 0.7, 0.8, 0.9],
                    [0.2, 0.5, 0.5, 0.9, 0.9, 0.9],
                    [0.1, 0.2, 0.3, 0.4, 0.55, 0.9]], dtype=np.float32)
    rec = np.ones((3, 6), bool)
    rec[1, 1] = False  # run 1 reaches 0.5 at epoch 1, but it was not recorded there
    st = make_store(epochs=5, n=25, recorded=rec, overrides={S.CORRECT: correct, S.TRAIN_ACCURACY: acc})
    got = difficulty(st.path, threshold=0.5)
    first = []
    for a, r in zip(acc, rec):
        first.append(next(e for e in range(6) if r[e] and a[e] >= 0.5))
    assert got["threshold_epoch"].values.tolist() == first == [2, 2, 4]
    hard = np.stack([~correct[i, first[i]] for i in range(3)])
    np.testing.assert_array_equal(got["hard"].values, hard)
    np.testing.assert_array_equal(got["difficulty"].values, hard.sum(axis=0))
    np.testing.assert_allclose(got["train_accuracy"].values, [acc[i, first[i]] for i in range(3)])
    assert threshold_epochs(st.path, threshold=0.85).values.tolist() == [5, 3, 5]


def test_threshold_never_reached_and_bad_threshold(make_store):
    acc = np.full((2, 4), 0.4, np.float32)
    acc[0, 3] = 0.8
    st = make_store(seeds=(0, 1), epochs=3, overrides={S.TRAIN_ACCURACY: acc})
    with pytest.raises(ScorebankError, match=r"never reaches the threshold 0.5 in run 1 \(best 0.4000\)"):
        difficulty(st.path)
    assert difficulty(st.path, runs=[0])["threshold_epoch"].values.tolist() == [3]
    for bad in (0, 1.5, "half"):
        with pytest.raises(InvalidArgumentError, match="not a training accuracy in"):
            difficulty(st.path, threshold=bad)
