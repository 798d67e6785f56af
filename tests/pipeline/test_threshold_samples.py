"""AUM's threshold samples (``score --threshold-samples``, Pleiss et al. 2020 Sec. 3): N // (C+1)
seeded examples moved to a fake class C, a network with C+1 outputs, every recorded value on all
C+1 logits, the choice recorded in the store as ``threshold_sample``; stores without the option
unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr

from scorebank.pipeline.config import resolve_config
from scorebank.pipeline.datasets import load_dataset
from scorebank.pipeline.models import build_model
from scorebank.pipeline.scoring import prepare_labels, score
from scorebank.pipeline.threshold_samples import choose_threshold_samples, threshold_count
from scorebank.pipeline.training import load_checkpoint
from scorebank.stores import schema as S
from scorebank.stores.errors import ConfigMismatchError

N, C = 150, 10  # digits --limit 150


def _config(**overrides):
    fields = dict(dataset="digits", limit=N, model="mlp", width=16, epochs=2, batch_size=32, lr=0.05,
                  label_noise=0.2, threshold_samples=True)
    fields.update(overrides)
    return resolve_config(**fields)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    path = tmp_path_factory.mktemp("thr") / "t.zarr"
    score(_config(), (0,), path, device="cpu")
    return path


@pytest.mark.parametrize("n, classes", [(150, 10), (1437, 10), (10, 3), (3, 10), (1000, 1)])
def test_count_is_n_over_c_plus_one(n, classes):
    mask = choose_threshold_samples(n, classes, seed=4)
    assert mask.shape == (n,) and mask.dtype == bool
    assert int(mask.sum()) == threshold_count(n, classes) == n // (classes + 1)


def test_choice_is_seeded_and_independent_of_the_label_noise_draw():
    a, b = choose_threshold_samples(1437, 10, 0), choose_threshold_samples(1437, 10, 0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, choose_threshold_samples(1437, 10, 1))
    noise_rng = np.random.default_rng(0)  # what uniform label noise with seed 0 draws first
    noise_pick = np.zeros(1437, bool)
    noise_pick[noise_rng.choice(1437, size=130, replace=False)] = True
    assert not np.array_equal(a, noise_pick)


def test_store_records_the_threshold_samples_and_the_fake_class(scored):
    ds = xr.open_zarr(scored)
    config = _config()
    data = load_dataset("digits", limit=N)
    mask = ds[S.THRESHOLD_SAMPLE].values
    assert mask.dtype == bool and int(mask.sum()) == N // (C + 1)
    np.testing.assert_array_equal(mask, choose_threshold_samples(N, C, config.label_noise_seed))
    labels = ds[S.LABEL].values
    assert (labels[mask] == C).all()
    np.testing.assert_array_equal(labels[~mask], prepare_labels(config, data)[~mask])  # label noise unchanged
    np.testing.assert_array_equal(ds[S.CORRUPTED].values, labels != data.train_labels)
    assert ds.attrs[S.ATTR_CLASS_NAMES] == [str(c) for c in range(C)] + ["threshold"]
    assert sorted(ds.attrs[S.ATTR_FEATURES]) == [S.FEATURE_LABEL_NOISE, S.FEATURE_THRESHOLD_SAMPLES]
    assert json.loads(ds.attrs[S.ATTR_CONFIG])["threshold_samples"] is True


def _margins_by_hand(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.array([row[y] - max(v for j, v in enumerate(row) if j != y) for row, y in zip(logits, labels)])


def test_margin_and_test_accuracy_use_all_c_plus_one_logits(scored):
    """The final checkpoint's network has C+1 outputs; the stored clean-pass margin is over all of
    them against the assigned label (C for threshold samples); test accuracy is the argmax over
    all C+1."""
    ds = xr.open_zarr(scored)
    data = load_dataset("digits", limit=N)
    state = load_checkpoint(scored / S.CHECKPOINT_DIR / "run-0.pt")
    model = build_model("mlp", data.input_shape, C + 1, width=16)
    model.load_state_dict(state["model"])
    model.eval()
    x = data.train_images.astype(np.float64) / 255.0
    mean, std = x.mean(axis=(0, 2, 3), keepdims=True), x.std(axis=(0, 2, 3), keepdims=True)
    std = np.where(std > 0, std, 1.0)
    with torch.no_grad():
        logits = model(torch.tensor((x - mean) / std, dtype=torch.float32)).numpy()
        xt = (data.test_images.astype(np.float64) / 255.0 - mean) / std
        test_logits = model(torch.tensor(xt, dtype=torch.float32)).numpy()
    assert logits.shape == (N, C + 1)
    np.testing.assert_allclose(ds[S.MARGIN].sel(run=0, epoch=2).values,
                               _margins_by_hand(logits, ds[S.LABEL].values), rtol=1e-4, atol=1e-5)
    acc = float(np.mean(test_logits.argmax(axis=1) == data.test_labels))
    assert float(ds[S.TEST_ACCURACY].sel(run=0, epoch=2)) == pytest.approx(acc, abs=1e-6)
    assert np.isfinite(ds[S.TRAIN_MARGIN].sel(run=0, epoch=2).values).all()


def test_without_the_option_stores_are_as_before(tmp_path):
    config = _config(threshold_samples=False, epochs=1)
    # left out of the stored text and the identity while off: older stores keep their identity hash
    assert "threshold_samples" not in json.loads(config.to_json()) and "threshold_samples" not in config.identity()
    assert "threshold_samples" in _config().identity()
    score(config, (0,), tmp_path / "plain.zarr", device="cpu")
    ds = xr.open_zarr(tmp_path / "plain.zarr")
    assert S.THRESHOLD_SAMPLE not in ds and ds[S.LABEL].values.max() < C
    assert S.FEATURE_THRESHOLD_SAMPLES not in ds.attrs[S.ATTR_FEATURES]
    assert len(ds.attrs[S.ATTR_CLASS_NAMES]) == C


def test_the_store_is_extended_with_the_same_option_and_refused_without(scored, tmp_path):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(scored, copy)
    before = xr.open_zarr(copy)[S.THRESHOLD_SAMPLE].values
    score(_config(), (0, 1), copy, device="cpu")  # seed 0 skipped, seed 1 added
    ds = xr.open_zarr(copy)
    assert list(ds[S.RUN].values) == [0, 1]
    np.testing.assert_array_equal(ds[S.THRESHOLD_SAMPLE].values, before)
    with pytest.raises(ConfigMismatchError, match="threshold_samples"):
        score(_config(threshold_samples=False), (2,), copy, device="cpu")


def test_a_non_boolean_setting_is_refused():
    from scorebank.core.errors import InvalidArgumentError
    from scorebank.pipeline.threshold_samples import threshold_mask

    import dataclasses

    with pytest.raises(InvalidArgumentError, match="--threshold-samples must be true or false, got 'yes'"):
        _config(threshold_samples="yes")  # resolve_config
    unresolved = dataclasses.replace(_config(threshold_samples=False), threshold_samples="yes")
    with pytest.raises(InvalidArgumentError, match="--threshold-samples is a flag"):
        threshold_mask(unresolved, N, C)  # a library config that skipped resolve_config


def test_retraining_keeps_the_fake_class_and_its_output(scored, tmp_path):
    """A retrain on a subset that keeps threshold samples trains them on class C with C + 1
    outputs, as scored (it crashed with 'Target 10 is out of bounds' before)."""
    import shutil

    from scorebank.pipeline.retrain import load_store_data, retrain

    store = tmp_path / "t.zarr"
    shutil.copytree(scored, store)
    ds = xr.open_zarr(store)
    ts = np.flatnonzero(ds[S.THRESHOLD_SAMPLE].values)
    indices = np.union1d(ts, np.arange(0, N, 3))  # every threshold sample and a third of the rest
    sd = load_store_data(store, device="cpu")
    assert sd.device_data.num_classes == C + 1
    assert (sd.labels[ts] == C).all() and (sd.labels >= C).sum() == ts.size
    result = retrain(store, indices, "keep-ts", (0,), device="cpu")
    assert result.outcomes[0].status == "complete"
    acc = xr.open_zarr(store, group="retrain/keep-ts")["test_accuracy"].values
    assert np.isfinite(acc[:, 1:]).all()


def test_held_out_training_refuses_a_threshold_store(scored):
    from scorebank.pipeline.holdout import holdout
    from scorebank.stores.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="scored with --threshold-samples"):
        holdout(scored, 2, (0,), device="cpu")
