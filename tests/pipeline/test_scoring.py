import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import xarray as xr

from scorebank.pipeline import scoring
from scorebank.pipeline.scoring import score
from scorebank.stores import schema as S
from scorebank.stores import target
from scorebank.stores.errors import ConfigMismatchError, InvalidArgumentError, RunFailedError, StoreExistsError
from scorebank.stores.location import open_scores
from scorebank.stores.summary import summarize

ISSUE_NAMES = {  # the names the foundation issue lists for the xarray view
    "run", "epoch", "example", "original_index",
    "margin", "el2n", "loss", "correct", "train_correct",
    "norm_product", "train_accuracy", "train_loss", "test_accuracy", "test_loss", "completed", "recorded",
    "label", "true_label", "corrupted",
}
STORE_NAMES = ISSUE_NAMES | {"train_margin", "input_norm"}  # and format 2's (issue 14)


def assert_stores_equal(a, b):
    da, db = xr.open_zarr(a), xr.open_zarr(b)
    assert set(da.variables) == set(db.variables)
    for name in da.variables:
        np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=name)
    assert {k: v["status"] for k, v in da.attrs["runs"].items()} == {k: v["status"] for k, v in db.attrs["runs"].items()}


def test_store_schema_and_values(tmp_path, tiny_config):
    cfg = tiny_config(record_epochs="0,2,3")
    score(cfg, (0, 1), tmp_path / "s.zarr", device="cpu")
    ds = xr.open_zarr(tmp_path / "s.zarr")  # plain xarray, no scorebank involved
    assert set(ds.variables) == STORE_NAMES
    assert dict(ds.sizes) == {"run": 2, "epoch": 4, "example": 200}
    assert ds.run.values.tolist() == [0, 1]
    # NaN where the clean pass did not run, values where it did
    assert ds.recorded.values.tolist() == [[True, False, True, True]] * 2
    assert np.isnan(ds.margin.sel(epoch=1).values).all()
    assert not np.isnan(ds.margin.sel(epoch=[0, 2, 3]).values).any()
    assert np.isnan(ds.train_accuracy.sel(epoch=1).values).all()
    assert ds.completed.values.all()
    np.testing.assert_array_equal(ds.correct.values, ds.margin.values > 0)
    np.testing.assert_allclose(ds.train_accuracy.sel(epoch=3).values, ds.correct.sel(epoch=3).mean("example").values,
                               rtol=1e-6)
    np.testing.assert_allclose(ds.train_loss.sel(epoch=3).values, ds.loss.sel(epoch=3).mean("example").values,
                               rtol=1e-5)
    assert not ds.train_correct.sel(epoch=0).values.any()
    inflight = ds.train_correct.mean("example").values  # (run, epoch): learning shows in flight too
    assert (0 < inflight[:, 1]).all() and (inflight[:, 1] < inflight[:, 3]).all()
    assert (np.diff(ds.original_index.values) > 0).all()
    cfg_back = json.loads(ds.attrs["config"])
    assert cfg_back["record_epochs"] == [0, 2, 3] and ds.attrs["dataset"] == "digits"
    assert ds.attrs["dataset_fingerprint"].startswith("sha256:")
    assert ds.attrs["runs"]["0"]["status"] == "complete"
    s = summarize(open_scores(tmp_path / "s.zarr"))
    assert [r.last_epoch for r in s.runs] == [3, 3]
    assert s.runs[0].test_accuracy == pytest.approx(float(ds.test_accuracy.values[0, 3]))


def test_recorded_values_match_the_checkpointed_model(tmp_path, tiny_config):
    """The stored clean-pass margins are the final model's eval-mode margins."""
    from scorebank.pipeline.datasets import load_dataset
    from scorebank.pipeline.training import example_scores, new_model, to_device_data

    cfg = tiny_config(model="cnn5", width=4, epochs=2)
    path = tmp_path / "s.zarr"
    score(cfg, (3,), path, device="cpu")
    data = load_dataset("digits", limit=200)
    dd = to_device_data(data, data.train_labels, torch.device("cpu"))
    model = new_model(cfg, dd, 3, torch.device("cpu"))
    state = torch.load(path / "checkpoints" / "run-3.pt", weights_only=True)
    assert state["epoch"] == 2
    model.load_state_dict(state["model"])
    model.eval()
    with torch.no_grad():
        ref = example_scores(model(dd.train_x), dd.train_y)
    ds = xr.open_zarr(path)
    np.testing.assert_allclose(ds.margin.values[0, 2], ref[S.MARGIN].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.el2n.values[0, 2], ref[S.EL2N].numpy(), rtol=1e-5, atol=1e-6)


def test_deterministic_bit_for_bit(tmp_path, tiny_config):
    cfg = tiny_config(model="cnn5", width=4, augment=True)
    score(cfg, (0,), tmp_path / "a.zarr", device="cpu")
    score(cfg, (0,), tmp_path / "b.zarr", device="cpu")
    assert_stores_equal(tmp_path / "a.zarr", tmp_path / "b.zarr")
    other = tmp_path / "c.zarr"
    score(cfg, (1,), other, device="cpu")
    assert not np.array_equal(xr.open_zarr(other).margin.values, xr.open_zarr(tmp_path / "a.zarr").margin.values)


class Crash(Exception):
    pass


def test_resume_after_crash_equals_uninterrupted(tmp_path, tiny_config, monkeypatch):
    cfg = tiny_config(model="cnn5", width=4, augment=True, epochs=4, optimizer="rm3")
    score(cfg, (0, 1), tmp_path / "ref.zarr", device="cpu")

    def crash_at(seed, epoch):
        def progress(event):
            if event.kind == "epoch" and event.seed == seed and event.epoch == epoch:
                raise Crash
        return progress

    path = tmp_path / "crash.zarr"
    with pytest.raises(Crash):
        score(cfg, (0, 1), path, device="cpu", progress=crash_at(1, 2))
    runs = xr.open_zarr(path).attrs["runs"]
    assert runs["0"]["status"] == "complete" and runs["1"]["status"] == "interrupted"  # its owner is gone

    # a crash after an epoch's values were written but before its checkpoint replaced the old one
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        if obj.get("epoch") == 3:
            raise Crash
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(scoring.torch, "save", failing_save)
    with pytest.raises(Crash):
        score(cfg, (0, 1), path, device="cpu")
    assert xr.open_zarr(path).completed.values[1].tolist() == [True, True, True, True, False]
    assert torch.load(path / "checkpoints" / "run-1.pt", weights_only=True)["epoch"] == 2
    monkeypatch.setattr(scoring.torch, "save", real_save)
    outcomes = score(cfg, (0, 1), path, device="cpu")
    assert [(o.seed, o.skipped) for o in outcomes] == [(0, True), (1, False)]
    assert_stores_equal(path, tmp_path / "ref.zarr")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_on_cuda_continues_from_the_checkpoint(tmp_path, tiny_config):
    """Checkpoints hold the CPU RNG state, which must be restored as a CPU tensor even when
    the run trains on the GPU; the resumed run ends where an uninterrupted one does."""
    cfg = tiny_config(model="cnn5", width=4, epochs=3, optimizer="rm3")
    score(cfg, (0,), tmp_path / "ref.zarr", device="cuda")

    def crash_after_epoch_1(event):
        if event.kind == "epoch" and event.epoch == 1:
            raise Crash

    path = tmp_path / "crash.zarr"
    with pytest.raises(Crash):
        score(cfg, (0,), path, device="cuda", progress=crash_after_epoch_1)
    assert [(o.seed, o.skipped) for o in score(cfg, (0,), path, device="cuda")] == [(0, False)]
    ref, got = xr.open_zarr(tmp_path / "ref.zarr"), xr.open_zarr(path)
    assert got.completed.values.all()
    # cuDNN kernels need not be bit-for-bit deterministic: same trajectory up to float noise
    np.testing.assert_allclose(got.test_accuracy.values, ref.test_accuracy.values, atol=0.02)


def test_kill_9_leaves_readable_resumable_store(tmp_path):
    args = ["--dataset", "digits", "--model", "cnn5", "--width", "8", "--epochs", "8", "--batch-size", "16",
            "--seeds", "0", "--device", "cpu", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-c", "import torch; torch.set_num_threads(1); from scorebank.cli.main import main; main()",
           "score", *args]
    path = tmp_path / "k.zarr"
    proc = subprocess.Popen(cmd + ["--store", str(path)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = path / "checkpoints" / "run-0.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ds = open_scores(path)  # readable after kill -9
    done = ds.completed.values[0]
    assert done[0] and not done.all(), "the kill should land mid-run"
    summarize(ds)
    resumed = subprocess.run(cmd + ["--store", str(path)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    ref = subprocess.run(cmd + ["--store", str(tmp_path / "ref.zarr")], env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    assert_stores_equal(path, tmp_path / "ref.zarr")


def test_config_mismatch_overwrite_and_new_seeds(tmp_path, tiny_config):
    path = tmp_path / "s.zarr"
    cfg = tiny_config()
    score(cfg, (0,), path, device="cpu")
    before = xr.open_zarr(path).margin.values.copy()
    with pytest.raises(ConfigMismatchError, match=r"lr: store has 0.05, asked 0.1"):
        score(tiny_config(lr=0.1), (0,), path, device="cpu")
    score(cfg, (0, 4), path, device="cpu")  # new seed, same configuration: extends `run`
    ds = xr.open_zarr(path)
    assert ds.run.values.tolist() == [0, 4]
    np.testing.assert_array_equal(ds.margin.values[0], before[0])
    assert ds.completed.values.all()
    score(tiny_config(lr=0.1), (2,), path, device="cpu", overwrite=True)
    ds = xr.open_zarr(path)
    assert ds.run.values.tolist() == [2] and json.loads(ds.attrs["config"])["lr"] == 0.1


def test_refuses_foreign_paths(tmp_path, tiny_config):
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("precious")
    with pytest.raises(StoreExistsError, match="not a scorebank store"):
        score(tiny_config(), (0,), foreign, device="cpu", overwrite=True)
    assert (foreign / "chapter1.tex").read_text() == "precious"


def test_diverging_run_is_marked_failed_and_others_finish(tmp_path, tiny_config):
    from scorebank.pipeline import training

    path = tmp_path / "s.zarr"
    real = training.Trainer.train_epoch

    def poisoned(self):
        inflight, diverged = real(self)
        if self.seed == 1 and self.epoch == 2:
            return inflight, True
        return inflight, diverged

    training.Trainer.train_epoch = poisoned
    try:
        with pytest.raises(RunFailedError, match="seed 1 at epoch 2"):
            score(tiny_config(), (0, 1, 2), path, device="cpu")
    finally:
        training.Trainer.train_epoch = real
    ds = xr.open_zarr(path)
    assert ds.attrs["runs"]["1"] == {"status": "failed", "failed_epoch": 2}
    assert ds.attrs["runs"]["0"]["status"] == ds.attrs["runs"]["2"]["status"] == "complete"
    assert ds.completed.values[1].tolist() == [True, True, False, False]
    assert np.isnan(ds.margin.values[1, 2:]).all()


def test_real_divergence_with_huge_learning_rate(tmp_path, tiny_config):
    with pytest.raises(RunFailedError, match="diverged"):
        score(tiny_config(lr=1e12, momentum=0.0, weight_decay=0.0, epochs=2), (0,), tmp_path / "s.zarr", device="cpu")
    assert xr.open_zarr(tmp_path / "s.zarr").attrs["runs"]["0"]["status"] == "failed"


def test_label_noise_store(tmp_path, tiny_config):
    score(tiny_config(label_noise=0.4, epochs=1), (0,), tmp_path / "s.zarr", device="cpu")
    ds = xr.open_zarr(tmp_path / "s.zarr")
    corrupted = ds.corrupted.values
    np.testing.assert_array_equal(corrupted, ds.label.values != ds.true_label.values)
    assert 0.3 < corrupted.mean() <= 0.4
    np.testing.assert_array_equal(np.bincount(ds.label.values), np.bincount(ds.true_label.values))
    correct = ds.correct.values[0, 1]
    assert float(ds.pristine_accuracy.values[0, 1]) == pytest.approx(correct[~corrupted].mean())
    assert float(ds.corrupt_accuracy.values[0, 1]) == pytest.approx(correct[corrupted].mean())
    assert set(ds.variables) == STORE_NAMES | {"pristine_accuracy", "pristine_loss", "corrupt_accuracy", "corrupt_loss"}


def test_no_seeds_refused(tmp_path, tiny_config):
    with pytest.raises(InvalidArgumentError, match="no seeds"):
        score(tiny_config(), (), tmp_path / "s.zarr", device="cpu")
    assert not (tmp_path / "s.zarr").exists()


def test_grand_recorded_only_at_requested_epochs(tmp_path, tiny_config):
    from scorebank.pipeline.datasets import load_dataset
    from scorebank.pipeline.training import new_model, to_device_data

    path = tmp_path / "s.zarr"
    score(tiny_config(model="cnn5", width=4, grand_epochs="0,2"), (0,), path, device="cpu")
    ds = xr.open_zarr(path)
    assert set(ds.variables) == STORE_NAMES | {"grand"}
    g = ds.grand.values[0]
    assert not np.isnan(g[[0, 2]]).any() and np.isnan(g[[1, 3]]).all()
    # epoch 0 = at initialisation: one backward per example on the freshly seeded model
    data = load_dataset("digits", limit=200)
    dd = to_device_data(data, data.train_labels, torch.device("cpu"))
    model = new_model(tiny_config(model="cnn5", width=4), dd, 0, torch.device("cpu")).eval()
    for i in (0, 57, 199):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(dd.train_x[i:i + 1]), dd.train_y[i:i + 1]).backward()
        norm = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))
        assert g[0, i] == pytest.approx(norm.item(), rel=1e-4)


def test_grand_only_needs_no_training(tmp_path):
    from typer.testing import CliRunner

    from scorebank.cli.main import app

    path = tmp_path / "g.zarr"
    r = CliRunner().invoke(app, ["score", "--grand-only", "--seeds", "0-3", "--limit", "100", "--width", "8",
                                 "--store", str(path), "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    ds = xr.open_zarr(path)
    assert dict(ds.sizes) == {"run": 4, "epoch": 1, "example": 100}
    assert not np.isnan(ds.grand.values).any() and not ds.train_correct.values.any()
    assert json.loads(ds.attrs["config"])["epochs"] == 0
    assert not np.array_equal(ds.grand.values[0], ds.grand.values[1])  # seeds differ at init


# ----------------------------------------------------------------------------- refusals under the lock
def test_configuration_is_checked_again_under_the_lock(tmp_path, tiny_config, monkeypatch):
    """A concurrent `score --overwrite` with another configuration replaces the store after
    the first check and before the lock: the writer must refuse, not add its runs."""
    path = tmp_path / "s.zarr"
    mine, theirs = tiny_config(epochs=1), tiny_config(epochs=1, lr=0.01)
    score(mine, (0,), path, device="cpu")
    real_probe = scoring.probe_model

    def probe_then_replaced(*args):
        monkeypatch.setattr(scoring, "probe_model", real_probe)
        score(theirs, (5,), path, device="cpu", overwrite=True)  # the other process
        real_probe(*args)

    monkeypatch.setattr(scoring, "probe_model", probe_then_replaced)
    events = []
    with pytest.raises(ConfigMismatchError, match=r"lr: store has 0\.01, asked 0\.05"):
        score(mine, (0, 1), path, device="cpu", progress=events.append)
    assert events == []
    ds = xr.open_zarr(path)
    assert ds.run.values.tolist() == [5] and json.loads(ds.attrs["config"])["lr"] == 0.01


def test_overwrite_is_checked_again_under_the_lock(tmp_path, tiny_config, monkeypatch):
    """Between `--overwrite` creating the new store and locking it, another process
    replaces it: the configuration check under the lock catches that too."""
    path = tmp_path / "s.zarr"
    mine, theirs = tiny_config(epochs=1), tiny_config(epochs=1, lr=0.01)
    score(mine, (0,), path, device="cpu")
    real_create = target.create_store

    def create_then_replaced(p, **kw):
        real_create(p, **kw)
        monkeypatch.setattr(target, "create_store", real_create)
        score(theirs, (5,), path, device="cpu", overwrite=True)

    monkeypatch.setattr(target, "create_store", create_then_replaced)
    with pytest.raises(ConfigMismatchError, match="different configuration"):
        score(mine, (0,), path, device="cpu", overwrite=True)
    assert xr.open_zarr(path).run.values.tolist() == [5]


def test_mismatch_shows_a_short_difference_before_any_event(tmp_path, tiny_config):
    path = tmp_path / "s.zarr"
    score(tiny_config(epochs=7), (0,), path, device="cpu")
    events = []
    with pytest.raises(ConfigMismatchError) as info:
        score(tiny_config(epochs=9), (0,), path, device="cpu", progress=events.append)
    message = str(info.value)
    assert "epochs: store has 7, asked 9" in message
    assert "record_epochs: store has 0..7 (8), asked 0..9 (10)" in message
    assert "(0, 1, 2" not in message and events == []


# ----------------------------------------------------------------------------- absurd sizes
def test_a_model_too_large_is_refused_before_the_store_exists(tmp_path, tiny_config):
    path = tmp_path / "s.zarr"
    with pytest.raises(InvalidArgumentError, match="parameters .* at most 8,589,934,592: use a smaller --width"):
        score(tiny_config(model="resnet18", width=16384), (0,), path, device="cpu")
    assert not path.exists()


def test_a_model_that_cannot_be_allocated_leaves_no_store(tmp_path, tiny_config, monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
                           "you tried to allocate 400000000000 bytes.")

    monkeypatch.setattr(scoring, "new_model", no_memory)
    path = tmp_path / "s.zarr"
    with pytest.raises(scoring.ModelBuildError, match="could not build --model 'mlp' .*not enough memory"):
        score(tiny_config(), (0,), path, device="cpu")
    assert not path.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    score(tiny_config(epochs=1), (0,), path, device="cpu")  # the corrected re-run is not refused
    assert xr.open_zarr(path).completed.values.all()
