"""K-fold out-of-fold probabilities: the fold assignment, the stored probabilities against
models trained independently, resume per fold, new seeds, and refused inputs."""

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from scorebank.pipeline.holdout import HOLDOUT_SEED_OFFSET, MAX_FOLDS, fold_assignment, holdout, trainer_seed
from scorebank.pipeline.scoring import prepare_labels
from scorebank.pipeline.training import Trainer, to_device_data
from scorebank.stores.errors import ConfigMismatchError, InvalidArgumentError

N, EPOCHS = 200, 2  # N: the examples of ``data`` (tests/conftest.py)
STORE_CONFIG = dict(epochs=EPOCHS, label_noise=0.2)  # ``config``; ``store``: a copy of its store


# ----------------------------------------------------------------------------- folds
@pytest.mark.parametrize("k", [2, 3, 5, 7])
def test_every_example_is_held_out_once_and_classes_are_balanced(k):
    labels = np.random.default_rng(1).integers(0, 4, size=101)
    for seed in (0, 1):
        folds = fold_assignment(labels, k, seed)
        assert folds.shape == (101,) and folds.dtype == np.int64
        # a partition: every example in exactly one fold, every fold used
        held = np.stack([folds == f for f in range(k)])  # (k, N)
        assert (held.sum(0) == 1).all() and held.any(1).all()
        sizes = held.sum(1)
        assert sizes.max() - sizes.min() <= 1
        for c in range(4):
            per_fold = held[:, labels == c].sum(1)
            assert per_fold.max() - per_fold.min() <= 1, (c, per_fold)


def test_fold_assignment_is_seeded():
    labels = np.repeat(np.arange(3), 20)
    a = fold_assignment(labels, 4, 0)
    assert np.array_equal(a, fold_assignment(labels, 4, 0))
    assert not np.array_equal(a, fold_assignment(labels, 4, 1))


@pytest.mark.parametrize("k", [1, 0, -2, MAX_FOLDS + 1, 2.5, True])
def test_bad_fold_counts_are_refused(k):
    with pytest.raises(InvalidArgumentError, match="--folds"):
        fold_assignment(np.zeros(10_000, dtype=np.int64), k, 0)


# ----------------------------------------------------------------------------- probabilities
def independent_oof(config, data, folds, seed):
    """Out-of-fold probabilities computed directly: per fold a Trainer on the other folds,
    then softmax of its eval-mode logits on the held-out fold."""
    labels = prepare_labels(config, data)
    dd = to_device_data(data, labels, torch.device("cpu"))
    assigned = fold_assignment(labels, folds, seed)
    out = np.full((labels.size, data.num_classes), np.nan, dtype=np.float32)
    for k in range(folds):
        pool = torch.from_numpy(np.flatnonzero(assigned != k))
        trainer = Trainer(config, dd, HOLDOUT_SEED_OFFSET + seed * MAX_FOLDS + k, torch.device("cpu"), indices=pool)
        for _ in range(config.epochs):
            trainer.train_epoch()
        trainer.model.eval()
        with torch.no_grad():
            held = np.flatnonzero(assigned == k)
            out[held] = trainer.model(dd.train_x[held]).softmax(1).numpy()
    return assigned, out


def test_stored_probabilities_equal_independently_trained_folds(store, data, config):
    outcomes = holdout(store, 3, [4], device="cpu", data=data)
    assert [(o.seed, o.folds_trained, o.folds_skipped) for o in outcomes] == [(4, 3, 0)]
    ds = xr.open_zarr(store, group="holdout")
    assert dict(ds.sizes) == {"seed": 1, "example": N, "class": 10, "fold": 3}
    assert ds["probability"].dims == ("seed", "example", "class")
    assigned, expected = independent_oof(config, data, 3, 4)
    assert np.array_equal(ds["assigned_fold"].values[0], assigned)
    np.testing.assert_array_equal(ds["probability"].values[0], expected)
    assert ds["fold_done"].values.all()
    np.testing.assert_allclose(ds["probability"].values.sum(-1), 1.0, rtol=1e-5)
    assert trainer_seed(4, 2) == HOLDOUT_SEED_OFFSET + 4 * MAX_FOLDS + 2


def test_resume_retrains_only_unfinished_folds_and_adds_seeds(store, data):
    holdout(store, 3, [0], device="cpu", data=data)
    before = xr.open_zarr(store, group="holdout")["probability"].values.copy()
    # a crash after fold 1's probabilities were partly written, before its done flag
    group = zarr.open_group(store / "holdout", mode="r+")
    assigned = group["assigned_fold"][0, :]
    row = group["probability"][0, :, :]
    row[assigned == 1] = np.nan
    group["probability"][0, :, :] = row
    group["fold_done"][0, 1] = False
    events = []
    outcomes = holdout(store, 3, [0, 1], device="cpu", data=data, progress=events.append)
    assert [(o.seed, o.folds_trained, o.folds_skipped) for o in outcomes] == [(0, 1, 2), (1, 3, 0)]
    assert [(e.kind, e.seed, e.group) for e in events if e.kind in ("skip", "start")] == [
        ("skip", 0, "holdout fold 0"), ("start", 0, "holdout fold 1"), ("skip", 0, "holdout fold 2"),
        ("start", 1, "holdout fold 0"), ("start", 1, "holdout fold 1"), ("start", 1, "holdout fold 2")]
    fold0 = [e for e in events if e.kind == "epoch" and e.seed == 1 and e.group == "holdout fold 0"]
    assert [(e.epoch, e.done, e.total) for e in fold0] == [(e, e + 1, EPOCHS + 1) for e in range(EPOCHS + 1)]
    status = zarr.open_group(store / "holdout").attrs["folds"]
    assert {k: v["status"] for k, v in status.items()} == {f"{s}/{k}": "complete" for s in (0, 1) for k in range(3)}
    ds = xr.open_zarr(store, group="holdout")
    assert ds["seed"].values.tolist() == [0, 1]
    np.testing.assert_array_equal(ds["probability"].values[0], before[0])
    assert not np.isnan(ds["probability"].values).any()
    # a finished group: nothing to do
    again = holdout(store, 3, [0, 1], device="cpu", data=data)
    assert [(o.folds_trained, o.folds_skipped) for o in again] == [(0, 3), (0, 3)]


def test_other_fold_count_is_refused_unless_overwrite(store, data):
    holdout(store, 2, [0], device="cpu", data=data)
    with pytest.raises(ConfigMismatchError, match="folds: group has 2, asked 3"):
        holdout(store, 3, [0], device="cpu", data=data)
    holdout(store, 3, [0], device="cpu", data=data, overwrite=True)
    assert xr.open_zarr(store, group="holdout").sizes["fold"] == 3


@pytest.mark.parametrize("folds, seeds, message", [(1, [0], "--folds"), (N + 1, [0], "exceeds"),
                                                   (3, [], "no seeds"), (3, [0, 0], "repeats")])
def test_bad_arguments_write_nothing(store, data, folds, seeds, message):
    with pytest.raises(InvalidArgumentError, match=message):
        holdout(store, folds, seeds, device="cpu", data=data)
    assert not (store / "holdout").exists()


def test_ctrl_c_marks_the_fold_interrupted_and_a_rerun_finishes_it(store, data, config):
    def interrupt(event):
        if event.group == "holdout fold 1" and event.kind == "epoch" and event.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        holdout(store, 3, [4], device="cpu", data=data, progress=interrupt)
    group = zarr.open_group(store / "holdout")
    assert group["fold_done"][0, :].tolist() == [True, False, False]
    assert group.attrs["folds"]["4/1"] == {"status": "interrupted", "epoch": 1}
    assert xr.open_zarr(store, group="holdout").sizes["seed"] == 1  # consolidated, readable
    outcomes = holdout(store, 3, [4], device="cpu", data=data)
    assert [(o.folds_trained, o.folds_skipped) for o in outcomes] == [(2, 1)]
    _, expected = independent_oof(config, data, 3, 4)
    np.testing.assert_array_equal(xr.open_zarr(store, group="holdout")["probability"].values[0], expected)
