"""Subset training for memorisation estimates: the subset masks, the recorded correctness
against independently trained models, resume per model, adding models, refused inputs."""

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from scorebank.pipeline.memorization import (MEMORIZATION_SEED_OFFSET, memorization, subset_mask, subset_size)
from scorebank.pipeline.scoring import prepare_labels
from scorebank.pipeline.training import Trainer, to_device_data
from scorebank.stores.errors import ConfigMismatchError, InvalidArgumentError

N, EPOCHS = 200, 2  # N: the examples of ``data`` (tests/conftest.py)
STORE_CONFIG = dict(epochs=EPOCHS, label_noise=0.2)  # ``config``; ``store``: a copy of its store


def test_subset_masks_have_the_rounded_size_and_are_seeded_by_model():
    assert subset_size(10, 0.7) == 7 and subset_size(200, 0.7) == 140 and subset_size(5, 0.5) == 3
    masks = np.stack([subset_mask(200, 140, m) for m in range(50)])
    assert (masks.sum(1) == 140).all()
    assert np.array_equal(masks[3], subset_mask(200, 140, 3))
    assert len({m.tobytes() for m in masks}) == 50
    # every example is in about 70% of the subsets
    assert 0.4 < masks.mean(0).min() and masks.mean(0).max() < 0.95


def independent_correct(config, data, mask, model):
    labels = prepare_labels(config, data)
    dd = to_device_data(data, labels, torch.device("cpu"))
    trainer = Trainer(config, dd, MEMORIZATION_SEED_OFFSET + model, torch.device("cpu"),
                      indices=torch.from_numpy(np.flatnonzero(mask)))
    for _ in range(config.epochs):
        trainer.train_epoch()
    trainer.model.eval()
    with torch.no_grad():
        train = trainer.model(dd.train_x).argmax(1) == dd.train_y
        test = trainer.model(dd.test_x).argmax(1) == dd.test_y
    return train.numpy(), test.numpy()


def test_records_equal_independently_trained_models(store, data, config):
    events = []
    outcome = memorization(store, 2, 0.7, device="cpu", data=data, progress=events.append)
    assert (outcome.trained, outcome.skipped, outcome.failed) == (2, 0, ())
    assert [(e.kind, e.seed, e.group) for e in events if e.kind != "epoch"] == [
        ("start", 0, "memorization"), ("start", 1, "memorization")]
    assert [(e.epoch, e.done) for e in events if e.seed == 1 and e.kind == "epoch"] == [(0, 1), (1, 2), (2, 3)]
    ds = xr.open_zarr(store, group="memorization")
    assert dict(ds.sizes) == {"model": 2, "example": N, "test_example": 360}
    assert ds["completed"].values.all()
    for m in range(2):
        mask = ds["in_subset"].values[m]
        assert np.array_equal(mask, subset_mask(N, 140, m))
        train, test = independent_correct(config, data, mask, m)
        assert np.array_equal(ds["correct"].values[m], train)
        assert np.array_equal(ds["test_correct"].values[m], test)


def test_resume_and_more_models(store, data):
    memorization(store, 2, 0.7, device="cpu", data=data)
    group = zarr.open_group(store / "memorization", mode="r+")
    before = group["correct"][:]
    group["completed"][1] = False  # a crash before model 1's done flag
    group["correct"][1, :] = False
    outcome = memorization(store, 3, 0.7, device="cpu", data=data)
    assert (outcome.trained, outcome.skipped) == (2, 1)
    ds = xr.open_zarr(store, group="memorization")
    assert ds["model"].values.tolist() == [0, 1, 2]
    assert np.array_equal(ds["correct"].values[:2], before)
    assert memorization(store, 3, 0.7, device="cpu", data=data).trained == 0


def test_other_keep_is_refused_unless_overwrite(store, data):
    memorization(store, 1, 0.7, device="cpu", data=data)
    with pytest.raises(ConfigMismatchError, match="keep: group has 0.7, asked 0.5"):
        memorization(store, 1, 0.5, device="cpu", data=data)
    memorization(store, 1, 0.5, device="cpu", data=data, overwrite=True)
    assert xr.open_zarr(store, group="memorization")["in_subset"].values.sum() == 100


@pytest.mark.parametrize("subsets, keep, message", [(0, 0.7, "--subsets"), (2, 1.0, "--keep"), (2, 0.0, "--keep"),
                                                    (2, float("nan"), "--keep"), (2, 0.001, "--keep")])
def test_bad_arguments_write_nothing(store, data, subsets, keep, message):
    with pytest.raises(InvalidArgumentError, match=message):
        memorization(store, subsets, keep, device="cpu", data=data)
    assert not (store / "memorization").exists()
