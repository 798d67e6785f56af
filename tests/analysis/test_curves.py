import numpy as np
import pytest
import zarr

from scorebank.analysis import training_curves
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError

NOISE = (S.PRISTINE_ACCURACY, S.PRISTINE_LOSS, S.CORRUPT_ACCURACY, S.CORRUPT_LOSS)
CLEAN = (S.TRAIN_ACCURACY, S.TRAIN_LOSS) + NOISE
TEST = (S.TEST_ACCURACY, S.TEST_LOSS)


@pytest.fixture(scope="module")
def noisy_store(tmp_path_factory):
    """Two runs of a real (tiny) training with half the labels corrupted."""
    from scorebank.pipeline.config import resolve_config
    from scorebank.pipeline.scoring import score

    path = tmp_path_factory.mktemp("curves") / "noisy.zarr"
    score(resolve_config(dataset="digits", limit=120, model="mlp", width=8, epochs=2, batch_size=32,
                         label_noise=0.5), (0, 1), path, device="cpu")
    return path


def _raw(path):
    root = zarr.open_group(path, mode="r", zarr_format=3)
    return {name: np.asarray(root[name][:]) for name in CLEAN + TEST + (S.COMPLETED, S.RECORDED, S.CORRECT,
                                                                         S.LOSS, S.CORRUPTED)}


def test_curves_of_a_real_noisy_store_are_the_stored_values(noisy_store):
    raw = _raw(noisy_store)
    got = training_curves(noisy_store)
    assert got[S.RUN].values.tolist() == [0, 1] and got[S.EPOCH].values.tolist() == [0, 1, 2]
    assert got.attrs["label_noise"] is True and got.attrs["n_corrupted"] == int(raw[S.CORRUPTED].sum()) > 0
    assert raw[S.COMPLETED].all() and raw[S.RECORDED].all()
    for name in CLEAN + TEST:
        np.testing.assert_array_equal(got[name].values, raw[name].astype(np.float64))
    # and those stored values are the clean-pass means over the two groups (w.r.t. the training label)
    c = raw[S.CORRUPTED]
    for r in range(2):
        for e in range(3):
            correct, loss = raw[S.CORRECT][r, e], raw[S.LOSS][r, e].astype(np.float64)
            assert got[S.PRISTINE_ACCURACY].values[r, e] == pytest.approx(correct[~c].mean(), abs=1e-6)
            assert got[S.CORRUPT_ACCURACY].values[r, e] == pytest.approx(correct[c].mean(), abs=1e-6)
            assert got[S.PRISTINE_LOSS].values[r, e] == pytest.approx(loss[~c].mean(), rel=1e-5)
            assert got[S.CORRUPT_LOSS].values[r, e] == pytest.approx(loss[c].mean(), rel=1e-5)
            assert got[S.TRAIN_ACCURACY].values[r, e] == pytest.approx(correct.mean(), abs=1e-6)
    one = training_curves(noisy_store, runs=[1])
    assert one[S.RUN].values.tolist() == [1]
    np.testing.assert_array_equal(one[S.CORRUPT_ACCURACY].values, raw[S.CORRUPT_ACCURACY][1:].astype(np.float64))


def test_nan_where_not_recorded_or_completed(make_store):
    completed = np.ones((3, 7), bool)
    completed[1, 5:] = False
    recorded = np.ones((3, 7), bool)
    recorded[:, [2, 4]] = False
    st = make_store(label_noise=0.3, completed=completed, recorded=recorded,
                    statuses={0: S.RUN_COMPLETE, 1: S.RUN_FAILED, 2: S.RUN_COMPLETE})
    raw = _raw(st.path)
    got = training_curves(st.path)  # the completed runs only
    assert got[S.RUN].values.tolist() == [0, 2]
    both = training_curves(st.path, runs=[2, 1])
    assert both[S.RUN].values.tolist() == [2, 1]
    for res, rows in ((got, [0, 2]), (both, [2, 1])):
        done = raw[S.COMPLETED][rows]
        rec = raw[S.RECORDED][rows] & done
        np.testing.assert_array_equal(res[S.COMPLETED].values, done)
        np.testing.assert_array_equal(res[S.RECORDED].values, rec)
        for name in CLEAN + TEST:
            mask = done if name in TEST else rec
            for i, r in enumerate(rows):
                for e in range(7):
                    v = res[name].values[i, e]
                    if mask[i, e]:
                        assert v == float(raw[name][r, e]), (name, r, e)
                    else:
                        assert np.isnan(v), (name, r, e)
    assert np.isnan(both[S.TEST_ACCURACY].values[1, 5:]).all()
    assert np.isnan(got[S.CORRUPT_ACCURACY].values[:, [2, 4]]).all()


def test_store_without_label_noise_and_bad_runs(store):
    got = training_curves(store.path)
    assert got.attrs["label_noise"] is False
    assert not any(name in got for name in NOISE)
    np.testing.assert_array_equal(got[S.TRAIN_ACCURACY].values, store[S.TRAIN_ACCURACY].astype(np.float64))
    with pytest.raises(InvalidArgumentError, match=r"run\(s\) \[7\] not in the store"):
        training_curves(store.path, runs=[7])


def test_curves_figure(noisy_store, tmp_path):
    from scorebank.analysis.plots import plot_training_curves

    out = plot_training_curves(training_curves(noisy_store), tmp_path / "f" / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
