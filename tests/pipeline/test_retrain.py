"""Retraining on a subset (Data Diet protocol): what the trainer draws, the step budget,
resume, the random baseline, the summary, and refused inputs."""

import dataclasses
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from scorebank.pipeline import retrain as R
from scorebank.pipeline.retrain import (RETRAIN_SEED_OFFSET, check_indices, random_subset, retrain,
                                        retrain_manifest, retrain_summary, step_budget)
from scorebank.pipeline.training import to_device_data
from scorebank.stores.errors import ConfigMismatchError, InvalidArgumentError
from scorebank.stores.location import open_scores

N, BATCH, EPOCHS = 200, 32, 3  # N: the examples of ``data`` (tests/conftest.py)
# ``store`` (tests/conftest.py): a fresh copy of a store scored with runs 0 and 1
STORE_CONFIG = dict(epochs=EPOCHS, batch_size=BATCH)
STORE_BUILD = dict(seeds=(0, 1))


def listing(path):
    return sorted((os.path.relpath(os.path.join(d, f), path), os.path.getsize(os.path.join(d, f)))
                  for d, _, files in os.walk(path) for f in files)


class Recorder:
    """Wraps the real gradient estimator and records every minibatch it is given."""

    def __init__(self, inner, batches):
        self.inner, self.batches = inner, batches

    def compute(self, model, x, y):
        self.batches.append(x.detach().clone())
        return self.inner.compute(model, x, y)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


@pytest.fixture
def drawn(monkeypatch, data):
    """Example indices of every minibatch the retrain's trainer draws, in order."""
    import scorebank.pipeline.robust as robust

    batches = []
    real = robust.make_estimator
    monkeypatch.setattr(robust, "make_estimator", lambda *a, **k: Recorder(real(*a, **k), batches))
    x = to_device_data(data, data.train_labels, torch.device("cpu")).train_x
    row = {x[i].numpy().tobytes(): i for i in range(x.shape[0])}
    assert len(row) == N  # every training image is distinct, so a row names its example

    def indices():
        return [[row[b[i].numpy().tobytes()] for i in range(b.shape[0])] for b in batches]

    return indices


# ----------------------------------------------------------------------------- budget
def test_step_budget_arithmetic():
    b = step_budget("steps", n_full=50_000, n_subset=20_000, batch_size=128, epochs=200)
    assert (b.steps_per_epoch, b.total_steps, b.trainer_steps_per_epoch) == (391, 78_200, 391)
    b = step_budget("epochs", n_full=50_000, n_subset=20_000, batch_size=128, epochs=200)
    assert (b.steps_per_epoch, b.total_steps, b.trainer_steps_per_epoch) == (157, 31_400, None)
    b = step_budget("steps", n_full=1437, n_subset=1, batch_size=1437, epochs=1)
    assert (b.steps_per_epoch, b.total_steps) == (1, 1)
    with pytest.raises(InvalidArgumentError, match="yields 0 optimiser steps"):
        step_budget("steps", n_full=200, n_subset=50, batch_size=32, epochs=0)
    with pytest.raises(InvalidArgumentError, match="unknown --budget 'iterations'"):
        step_budget("iterations", n_full=200, n_subset=50, batch_size=32, epochs=3)


def test_trainer_draws_only_the_subset_with_the_full_data_step_count(store, drawn, data):
    subset = np.arange(3, N, 4)  # 50 examples
    retrain(store, subset, "every4th", (0,), device="cpu", data=data)
    batches = drawn()
    per_epoch = math.ceil(N / BATCH)  # 7 steps, as an epoch over all 200 examples
    assert len(batches) == EPOCHS * per_epoch
    assert all(len(b) == BATCH for b in batches)  # fixed steps: every minibatch is full
    for e in range(EPOCHS):
        seq = [i for b in batches[e * per_epoch:(e + 1) * per_epoch] for i in b]  # 224 draws
        for k in range(0, len(seq) - len(subset) + 1, len(subset)):  # consecutive fresh permutations
            assert sorted(seq[k:k + len(subset)]) == subset.tolist()
        assert set(seq) == set(subset.tolist())


def test_epoch_budget_is_one_pass_over_the_subset(store, drawn, data):
    subset = np.arange(0, 50)
    retrain(store, subset, "first50", (0,), budget="epochs", device="cpu", data=data)
    batches = drawn()
    assert [len(b) for b in batches] == [32, 18] * EPOCHS
    for e in range(EPOCHS):
        assert sorted(batches[2 * e] + batches[2 * e + 1]) == subset.tolist()
    spec, idx, _ = R.read_retrain(store, "first50")
    assert (spec.budget, spec.steps_per_epoch, spec.total_steps) == ("epochs", 2, 2 * EPOCHS)
    np.testing.assert_array_equal(idx, subset)


# ----------------------------------------------------------------------------- store layout, resume
def test_group_layout_and_provenance(store, data):
    subset = np.array([5, 1, 9, 100, 150])  # unsorted on purpose: stored sorted
    res = retrain(store, subset, "five", (2, 0), overrides={"lr": 0.02}, device="cpu", data=data)
    ds = xr.open_zarr(store, group="retrain/five")
    assert ds.run.values.tolist() == [2, 0] and ds.epoch.values.tolist() == list(range(EPOCHS + 1))
    assert ds.completed.values.all()
    assert ds.indices.values.tolist() == [1, 5, 9, 100, 150]
    np.testing.assert_array_equal(ds.final_test_accuracy.values, ds.test_accuracy.values[:, -1])
    assert [o.final_test_accuracy for o in res.outcomes] == ds.final_test_accuracy.values.tolist()
    spec = json.loads(ds.attrs["retrain"])
    assert spec["training"]["lr"] == 0.02 and spec["training"]["epochs"] == EPOCHS
    assert spec["training"]["record_epochs"] == [] and spec["subset_size"] == 5
    assert spec["seed_offset"] == RETRAIN_SEED_OFFSET and spec["n_full"] == N
    assert {k: v["status"] for k, v in ds.attrs["runs"].items()} == {"2": "complete", "0": "complete"}
    ckpt = torch.load(store / "checkpoints" / "retrain" / "five" / "run-2.pt", weights_only=True)
    assert ckpt["seed"] == RETRAIN_SEED_OFFSET + 2 and ckpt["epoch"] == EPOCHS
    # the root store still opens through the consolidated metadata
    assert open_scores(store).sizes["run"] == 2


class Interrupt(Exception):
    pass


def test_interrupt_then_resume_equals_uninterrupted(store, tmp_path, data):
    other = tmp_path / "other.zarr"
    shutil.copytree(store, other)
    subset = np.arange(0, N, 3)
    retrain(store, subset, "third", (0, 1), device="cpu", data=data)

    def stop(event):
        if event.kind == "epoch" and event.seed == 1 and event.epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        retrain(other, subset, "third", (0, 1), device="cpu", data=data, progress=stop)
    ds = xr.open_zarr(other, group="retrain/third")
    assert ds.completed.values.tolist() == [[True] * 4, [True, True, True, False]]
    assert ds.attrs["runs"]["1"]["status"] == "interrupted"  # its owner is gone
    res = retrain(other, subset, "third", (0, 1), device="cpu", data=data)
    assert [o.skipped for o in res.outcomes] == [True, False]
    a, b = xr.open_zarr(store, group="retrain/third"), xr.open_zarr(other, group="retrain/third")
    for name in ("test_accuracy", "test_loss", "completed", "final_test_accuracy", "indices"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    for seed in (0, 1):
        sa = torch.load(store / "checkpoints/retrain/third" / f"run-{seed}.pt", weights_only=True)
        sb = torch.load(other / "checkpoints/retrain/third" / f"run-{seed}.pt", weights_only=True)
        for k in sa["model"]:
            assert torch.equal(sa["model"][k], sb["model"][k]), k
    # new seeds extend the group; finished ones are skipped
    res = retrain(other, subset, "third", (0, 1, 4), device="cpu", data=data)
    assert [o.skipped for o in res.outcomes] == [True, True, False]
    assert xr.open_zarr(other, group="retrain/third").run.values.tolist() == [0, 1, 4]


def test_summary_mean_band_and_full_data_reference(store, data):
    retrain(store, np.arange(100), "half", (0, 1, 2), device="cpu", data=data)
    (row,) = retrain_summary(store, ["half"])
    finals = xr.open_zarr(store, group="retrain/half").final_test_accuracy.values.astype(np.float64)
    assert row.final_accuracies == tuple(finals.tolist()) and row.seeds == (0, 1, 2)
    assert row.mean == pytest.approx(finals.mean(), abs=0)
    assert (row.p16, row.p84) == tuple(np.percentile(finals, [16, 84]).tolist())
    full = open_scores(store).test_accuracy.values[:, -1].astype(np.float64)
    assert row.full_data_accuracy == full.mean() and row.difference == row.mean - full.mean()
    assert (row.subset_size, row.n_full, row.budget) == (100, N, "steps")


# ----------------------------------------------------------------------------- manifests and baseline
def make_manifest(store, tmp_path, *, class_balanced, fraction=0.3, name=None):
    from scorebank.analysis.selection import select, to_manifest
    from scorebank.stores.manifest import write_manifest

    sel = select(store, "keep-highest", score="el2n@1", fraction=fraction, class_balanced=class_balanced)
    m = to_manifest(sel, store, name=name or f"el2n-cb{int(class_balanced)}")
    return write_manifest(tmp_path / f"{m.name}.json", m), m


def test_random_baseline_matches_size_and_class_counts(store, tmp_path, data):
    path, m = make_manifest(store, tmp_path, class_balanced=True)
    results = retrain_manifest(store, path, (0,), baseline="random", baseline_seed=3,
                               overrides={"epochs": 1}, device="cpu", data=data)
    assert [r.group for r in results] == [m.name, m.name + ".random"]
    main, base = results
    np.testing.assert_array_equal(main.indices, m.indices)
    labels = data.train_labels
    assert len(base.indices) == len(m.indices) == 60
    assert np.bincount(labels[base.indices], minlength=10).tolist() == [m.counts_per_class[str(c)] for c in range(10)]
    assert not np.array_equal(base.indices, m.indices)
    np.testing.assert_array_equal(base.indices, random_subset(labels, 60, 3, class_counts=[6] * 10))
    g = zarr.open_group(store / "retrain" / (m.name + ".random"), mode="r")
    assert g.attrs["manifest"]["baseline_of"] == m.name and g.attrs["manifest"]["class_balanced"] is True
    doc = zarr.open_group(store / "retrain" / m.name, mode="r").attrs["manifest"]
    assert doc["name"] == m.name and doc["dataset_fingerprint"] == data.fingerprint and "indices" not in doc
    assert json.loads(g.attrs["retrain"])["source"] == "random-baseline"
    # the baseline and the manifest retrain are paired: same retrain seed, same initialisation
    ca = torch.load(store / "checkpoints/retrain" / m.name / "run-0.pt", weights_only=True)
    cb = torch.load(store / "checkpoints/retrain" / (m.name + ".random") / "run-0.pt", weights_only=True)
    assert ca["seed"] == cb["seed"] == RETRAIN_SEED_OFFSET


def test_unbalanced_manifest_gets_a_uniform_baseline(store, tmp_path, data):
    path, m = make_manifest(store, tmp_path, class_balanced=False, fraction=0.25)
    results = retrain_manifest(store, path, (0,), baseline="random", overrides={"epochs": 1}, device="cpu", data=data)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(results[1].indices, np.sort(rng.choice(N, size=50, replace=False)))
    assert results[1].spec.class_balanced is False and results[1].spec.subset_size == m.n_kept == 50


# ----------------------------------------------------------------------------- refused inputs
def test_check_indices():
    np.testing.assert_array_equal(check_indices([3, 1, 2], 5), [1, 2, 3])
    with pytest.raises(InvalidArgumentError, match="empty"):
        check_indices([], 5)
    with pytest.raises(InvalidArgumentError, match="index 5 is out of range; the store has examples 0..4"):
        check_indices([0, 5], 5)
    with pytest.raises(InvalidArgumentError, match="index -1 is out of range"):
        check_indices([-1], 5)
    with pytest.raises(InvalidArgumentError, match="index 2 appears more than once"):
        check_indices([2, 0, 2], 5)
    with pytest.raises(InvalidArgumentError, match="1-D array of integers"):
        check_indices([0.5, 1.0], 5)


def _bad_manifest(tmp_path, m, **changes):
    doc = m.to_dict()
    doc.update(changes)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("changes, error, message", [
    (dict(dataset_fingerprint="sha256:" + "0" * 64), ConfigMismatchError, "fingerprint 'sha256:000"),
    (dict(indices=[], counts_per_class={}, n_kept=0), InvalidArgumentError, "the subset is empty"),
    (dict(indices=[0, 1, 200], counts_per_class={"0": 3}, n_kept=3), InvalidArgumentError, "index 200 is out of range"),
    (dict(n_examples=1797), ConfigMismatchError, "1797 examples"),
])
def test_bad_manifest_is_refused_and_nothing_is_written(store, tmp_path, data, changes, error, message):
    _, m = make_manifest(store, tmp_path, class_balanced=False)
    before = listing(store)
    with pytest.raises(error, match=message):
        retrain_manifest(store, _bad_manifest(tmp_path, m, **changes), (0,), baseline="random", device="cpu", data=data)
    assert listing(store) == before


@pytest.mark.parametrize("kwargs, message", [
    (dict(overrides={"epochs": 0}), "yields 0 optimiser steps"),
    (dict(overrides={"limit": 100}), "--limit 100 differs from the store's 200"),
    (dict(overrides={"record_epochs": (0,)}), "cannot override 'record_epochs'"),
    (dict(overrides={"optimizer": "m3"}), "divisible by 3"),
    (dict(budget="iterations"), "unknown --budget 'iterations'"),
    (dict(baseline="shuffled"), "unknown --baseline 'shuffled'"),
    (dict(name="../escape"), "bad group name '../escape'"),
])
def test_bad_options_are_refused_and_nothing_is_written(store, tmp_path, data, kwargs, message):
    path, _ = make_manifest(store, tmp_path, class_balanced=False)
    before = listing(store)
    with pytest.raises(InvalidArgumentError, match=message.replace("(", r"\(")):
        retrain_manifest(store, path, (0,), device="cpu", data=data, **kwargs)
    assert listing(store) == before


def test_existing_group_with_other_options_is_refused_then_replaced(store, data):
    retrain(store, np.arange(20), "g", (0,), overrides={"epochs": 1}, device="cpu", data=data)
    before = listing(store)
    with pytest.raises(ConfigMismatchError, match="training.lr: group has 0.05, asked 0.1"):
        retrain(store, np.arange(20), "g", (0,), overrides={"epochs": 1, "lr": 0.1}, device="cpu", data=data)
    with pytest.raises(ConfigMismatchError, match="indices"):
        retrain(store, np.arange(1, 21), "g", (0,), overrides={"epochs": 1}, device="cpu", data=data)
    assert listing(store) == before
    retrain(store, np.arange(1, 21), "g", (0,), overrides={"epochs": 1}, device="cpu", data=data, overwrite=True)
    assert xr.open_zarr(store, group="retrain/g").indices.values.tolist() == list(range(1, 21))


def test_retrain_config_keeps_store_options_and_drops_the_clean_pass(store):
    from scorebank.pipeline.scoring import read_store_config

    base = read_store_config(store)
    cfg = R.retrain_config(base, {"weight_decay": 0.0, "schedule": "multistep:2:0.1"})
    assert dataclasses.replace(cfg, weight_decay=base.weight_decay, schedule=base.schedule, record_epochs=base.record_epochs) == base
    assert cfg.record_epochs == () and cfg.grand_epochs == () and cfg.schedule == "multistep:2:0.1"
