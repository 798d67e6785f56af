import numpy as np

from scorebank.analysis import data_separation, final_epochs
from scorebank.stores import schema as S


def test_first_recorded_epoch_at_full_train_accuracy(make_store):
    acc = np.array([[0.1, 0.5, 1.0, 0.9, 1.0, 1.0, 1.0],
                    [0.1, 0.5, 0.9, 0.99, 0.999, 0.95, 0.99],
                    [0.2, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    rec = np.ones((3, 7), bool)
    rec[2, 1:3] = False  # run 2 reached 100% at epoch 1 but the clean pass did not run there
    st = make_store(overrides={S.TRAIN_ACCURACY: acc}, recorded=rec)
    got = data_separation(st.path)
    expected = []
    for a, r in zip(acc, rec):
        hits = [e for e in range(7) if r[e] and a[e] >= 1.0]
        expected.append(hits[0] if hits else -1)
    assert got.values.tolist() == expected == [2, -1, 3]
    assert got["run"].values.tolist() == [0, 1, 2]
    assert data_separation(st.path, runs=[2]).values.tolist() == [3]


def test_final_epochs(make_store):
    rec = np.ones((2, 7), bool)
    rec[1, 5:] = False
    st = make_store(seeds=(3, 4), recorded=rec)
    assert final_epochs(st.path).values.tolist() == [6, 4]


def test_final_train_accuracy(make_store):
    from scorebank.analysis.separation import final_train_accuracy

    acc = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                    [0.1, 0.2, 0.3, 0.4, 0.5, 0.625, 0.75],
                    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]], dtype=np.float32)
    rec = np.ones((3, 7), bool)
    rec[1, 6] = False  # last recorded epoch of run 1 is 5
    rec[2, :] = False  # run 2 never recorded
    st = make_store(overrides={S.TRAIN_ACCURACY: acc}, recorded=rec)
    got = final_train_accuracy(st.path)
    assert got["run"].values.tolist() == [0, 1, 2] and got.dtype == np.float64
    assert got.values[:2].tolist() == [float(np.float32(0.7)), 0.625]
    assert np.isnan(got.values[2])
    assert final_train_accuracy(st.path, runs=[1]).values.tolist() == [0.625]
