"""The recorder API: a user's own loop writes a normal scorebank store."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr

from scorebank.core.errors import ConfigMismatchError, InvalidArgumentError, RunFailedError
from scorebank.pipeline.datasets import load_dataset
from scorebank.pipeline.models import build_model
from scorebank.pipeline.record import (EpochOrderError, ExampleIndexError, IndexedDataset,
                                       LabelMismatchError, Recorder, ShapeError, dataset_fingerprint,
                                       model_identity)
from scorebank.pipeline.scoring import score
from scorebank.pipeline.training import epoch_generators, to_device_data
from scorebank.stores import schema as S

SCORE_VARS = (S.MARGIN, S.EL2N, S.LOSS, S.CORRECT, S.TRAIN_CORRECT, S.NORM_PRODUCT, S.TRAIN_ACCURACY,
              S.TRAIN_LOSS, S.TEST_ACCURACY, S.TEST_LOSS, S.COMPLETED, S.RECORDED, S.LABEL, S.TRUE_LABEL,
              S.CORRUPTED, S.ORIGINAL_INDEX)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit=200)


def plain_loop(cfg, data, path, seed, *, grand=False, epochs=None):
    """A user's loop mirroring the built-in trainer: same model, init seed, data order and
    optimiser, written through the recorder."""
    dev = torch.device("cpu")
    dd = to_device_data(data, data.train_labels, dev)
    torch.manual_seed(seed)
    model = build_model(cfg.model, tuple(dd.train_x.shape[1:]), dd.num_classes, batchnorm=cfg.batchnorm,
                        init_std=cfg.init_std, width=cfg.width)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay)
    rec = Recorder.create(path, labels=data.train_labels, epochs=cfg.epochs, dataset=data.name,
                          class_names=data.class_names, inputs=data.train_images,
                          original_index=data.original_index, grand=grand,
                          config={"model": cfg.model, "lr": cfg.lr})
    n = dd.train_x.shape[0]
    with rec.run(seed=seed) as run:
        run.record_epoch(0, model, dd.train_x, test=(dd.test_x, dd.test_y), grand=grand)
        for epoch in range(1, (epochs or cfg.epochs) + 1):
            g_perm, _ = epoch_generators(seed, epoch, dev)
            perm = torch.randperm(n, generator=g_perm)
            model.train()
            for start in range(0, n, cfg.batch_size):
                idx = perm[start:start + cfg.batch_size]
                logits = model(dd.train_x[idx])
                loss = F.cross_entropy(logits, dd.train_y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                run.observe(epoch, idx, logits, dd.train_y[idx])
            run.record_epoch(epoch, model, dd.train_x, test=(dd.test_x, dd.test_y), grand=grand)
    return rec


def test_plain_loop_equals_score_bit_for_bit(tmp_path, tiny_config, digits):
    cfg = tiny_config(grand_epochs="0,3")
    score(cfg, (0,), tmp_path / "score.zarr", device="cpu", data=digits)
    plain_loop(cfg, digits, tmp_path / "rec.zarr", seed=0, grand=True)
    a, b = xr.open_zarr(tmp_path / "score.zarr"), xr.open_zarr(tmp_path / "rec.zarr")
    for name in SCORE_VARS:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    ga, gb = a[S.GRAND].values, b[S.GRAND].values  # built-in: GraNd at 0 and 3; the loop: every epoch
    np.testing.assert_array_equal(ga[:, [0, 3]], gb[:, [0, 3]])
    assert not np.isnan(gb).any()
    assert a.attrs["dataset_fingerprint"] == b.attrs["dataset_fingerprint"]  # uint8 inputs: same scheme
    assert b.attrs["runs"]["0"]["status"] == "complete"
    assert b.attrs["runs"]["0"]["model"] == "scorebank.pipeline.models.MLP"
    assert json.loads(b.attrs["config"])["user"] == {"lr": 0.05, "model": "mlp"}
    assert json.loads(b.attrs["config"])["record_epochs"] == [0, 1, 2, 3]
    assert b.attrs["recorder"]["model"] == "scorebank.pipeline.models.MLP"


def test_fingerprint_matches_imagedata_and_hashes_inputs(digits):
    assert dataset_fingerprint(digits.train_labels, digits.train_images, digits.original_index) == digits.fingerprint
    x = torch.from_numpy(digits.train_images)
    assert dataset_fingerprint(digits.train_labels, x, digits.original_index) == digits.fingerprint
    floats = dataset_fingerprint(digits.train_labels, x.float())
    changed = x.float().clone()
    changed[7, 0, 3, 3] += 1
    assert floats != dataset_fingerprint(digits.train_labels, changed)
    ds = torch.utils.data.TensorDataset(x.float(), torch.from_numpy(digits.train_labels))
    assert dataset_fingerprint(digits.train_labels, ds) == floats  # item by item = the whole array
    labels_only = dataset_fingerprint(digits.train_labels)
    assert labels_only != floats and labels_only != dataset_fingerprint(digits.train_labels[::-1].copy())


def test_model_identity_names_class_and_shapes():
    a = model_identity(torch.nn.Linear(3, 2))
    assert a["model"] == "torch.nn.modules.linear.Linear" and a["parameters"] == 8
    assert a["parameter_shapes"] == model_identity(torch.nn.Linear(3, 2))["parameter_shapes"]
    assert a["parameter_shapes"] != model_identity(torch.nn.Linear(3, 4))["parameter_shapes"]


# ----------------------------------------------------------------- a small helper setting
N, K = 30, 3


def small(tmp_path, **kw):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 4, generator=g)
    y = torch.arange(N) % K
    rec = Recorder.create(tmp_path / "s.zarr", labels=y.numpy(), epochs=2, dataset="toy", inputs=x, **kw)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, K))
    return rec, model, x, y


def reference_scores(model, x, y):
    """margin, EL2N, loss straight from their definitions (float64)."""
    with torch.no_grad():
        f = model(x).double()
    true = f[torch.arange(len(y)), y]
    other = f.clone()
    other[torch.arange(len(y)), y] = -np.inf
    margin = true - other.max(1).values
    el2n = (f.softmax(1) - F.one_hot(y, f.shape[1]).double()).norm(dim=1)
    loss = -f.log_softmax(1)[torch.arange(len(y)), y]
    return margin.numpy(), el2n.numpy(), loss.numpy()


def test_values_inflight_and_loader_sources(tmp_path):
    rec, model, x, y = small(tmp_path)
    loader = torch.utils.data.DataLoader(IndexedDataset(torch.utils.data.TensorDataset(x, y)),
                                         batch_size=7, shuffle=True,
                                         generator=torch.Generator().manual_seed(1))
    seen_correct = np.zeros(N, bool)
    with rec.run(seed=3) as run:
        assert run.completed_epochs == () and run.next_epoch == 0
        run.record_epoch(0, model, x, test=(x[:10], y[:10]))
        for idx, xb, yb in loader:
            logits = model(xb)
            seen_correct[idx.numpy()] = (logits.argmax(1) == yb).numpy() & (
                logits.topk(2).values[:, 0] > logits.topk(2).values[:, 1]).numpy()
            run.observe(1, idx, logits, yb)
        # the clean pass from a shuffled DataLoader of (index, x, y) gives the tensor path's values
        run.record_epoch(1, model, loader, test=torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x[:10], y[:10]), batch_size=4))
        assert run.completed_epochs == (0, 1)
    ds = xr.open_zarr(rec.path)
    margin, el2n, loss = reference_scores(model, x, y)
    np.testing.assert_allclose(ds.margin.sel(run=3, epoch=1).values, margin, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.el2n.sel(run=3, epoch=1).values, el2n, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.loss.sel(run=3, epoch=1).values, loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ds.correct.sel(run=3, epoch=1).values, margin > 0)
    np.testing.assert_array_equal(ds.train_correct.sel(run=3, epoch=1).values, seen_correct)
    assert not ds.train_correct.sel(run=3, epoch=0).values.any()
    with torch.no_grad():
        acc = float((model(x[:10]).argmax(1) == y[:10]).float().mean())
    assert float(ds.test_accuracy.sel(run=3, epoch=1).values) == pytest.approx(acc)
    assert ds.completed.sel(run=3).values.tolist() == [True, True, False]
    assert ds.attrs["runs"]["3"]["status"] == "interrupted"  # epoch 2 missing: resumable
    with rec.run(seed=3) as run:  # resume
        assert run.completed_epochs == (0, 1) and run.next_epoch == 2
        run.record_epoch(2, model, None)  # no clean pass: completed, not recorded
    ds = xr.open_zarr(rec.path)
    assert ds.recorded.sel(run=3).values.tolist() == [True, True, False]
    assert np.isnan(ds.margin.sel(run=3, epoch=2).values).all()
    assert ds.attrs["runs"]["3"]["status"] == "complete"


def test_create_reopens_same_settings_and_refuses_others(tmp_path):
    rec, model, x, y = small(tmp_path, config={"lr": 0.1})
    again = Recorder.create(tmp_path / "s.zarr", labels=y.numpy(), epochs=2, dataset="toy", inputs=x,
                            config={"lr": 0.1})
    assert again.path == rec.path
    with pytest.raises(ConfigMismatchError, match=r"user: store has \{'lr': 0.1\}, asked \{'lr': 0.2\}"):
        Recorder.create(tmp_path / "s.zarr", labels=y.numpy(), epochs=2, dataset="toy", inputs=x,
                        config={"lr": 0.2})
    with pytest.raises(ConfigMismatchError, match="dataset_fingerprint"):
        Recorder.create(tmp_path / "s.zarr", labels=y.numpy(), epochs=2, dataset="toy", inputs=x + 1,
                        config={"lr": 0.1})
    with pytest.raises(InvalidArgumentError, match="JSON-serialisable"):
        Recorder.create(tmp_path / "t.zarr", labels=y.numpy(), epochs=2, config={"f": object()})
    assert not (tmp_path / "t.zarr").exists()
    with pytest.raises(LabelMismatchError, match="label 3 is outside 0..2"):
        Recorder.create(tmp_path / "t.zarr", labels=[0, 1, 3], epochs=2, class_names=["a", "b", "c"])


def store_state(path):
    ds = xr.open_zarr(path)
    return {name: ds[name].values.copy() for name in ds.variables}, dict(ds.attrs)


def assert_unchanged(path, before):
    values, attrs = store_state(path)
    for name, v in before[0].items():
        np.testing.assert_array_equal(values[name], v, err_msg=name)
    assert attrs["runs"] == before[1]["runs"]


def test_bad_inputs_one_line_errors_store_unchanged(tmp_path):
    rec, model, x, y = small(tmp_path)
    with rec.run(seed=0) as run:
        run.record_epoch(0, model, x)
        before = store_state(rec.path)
        logits = model(x[:5]).detach()
        cases = [
            (lambda: run.observe(1, torch.arange(5), logits[:, :2], y[:5]), ShapeError, r"2 classes, the store 3"),
            (lambda: run.observe(1, torch.arange(4), logits, y[:4]), ShapeError, r"shape \(4, classes\)"),
            (lambda: run.observe(1, torch.tensor([0, 1, 2, 3, 30]), logits, y[:5]), ExampleIndexError,
             r"index 30 is out of range 0..29"),
            (lambda: run.observe(1, torch.arange(5), logits, (y[:5] + 1) % K), LabelMismatchError,
             r"example 0 has label 1 but the store holds 0"),
            (lambda: run.observe(0, torch.arange(5), logits, y[:5]), EpochOrderError, "initialisation"),
            (lambda: run.observe(3, torch.arange(5), logits, y[:5]), EpochOrderError, r"outside 0..2"),
            (lambda: run.record_epoch(0, model, x), EpochOrderError, "epoch 0 of run seed 0 is already recorded"),
            (lambda: run.record_epoch(1, model, x[:20]), ShapeError, r"hold 20 examples, the store 30"),
            (lambda: run.record_epoch(1, model, (x, (y + 1) % K)), LabelMismatchError, "has label"),
            (lambda: run.record_epoch(1, model, x, grand=True), InvalidArgumentError, "without GraNd"),
            (lambda: run.record_epoch(1, torch.nn.Linear(4, K), x), ConfigMismatchError, "parameter shapes"),
        ]
        for call, error, message in cases:
            with pytest.raises(error, match=message) as info:
                call()
            assert "\n" not in str(info.value)
            assert_unchanged(rec.path, before)
        # observed twice in one epoch
        run2 = run
    rec2, model2, x2, y2 = small(tmp_path / "b")
    with rec2.run(seed=0) as run2:
        run2.record_epoch(0, model2, x2)
        run2.observe(1, torch.tensor([4, 5]), model2(x2[[4, 5]]), y2[[4, 5]])
        with pytest.raises(ExampleIndexError, match="example 5 was observed twice in epoch 1"):
            run2.observe(1, torch.tensor([5, 6]), model2(x2[[5, 6]]), y2[[5, 6]])
    loader = torch.utils.data.DataLoader(IndexedDataset(torch.utils.data.TensorDataset(x2, y2)), batch_size=8,
                                         drop_last=True)
    with rec2.run(seed=1) as run3:
        with pytest.raises(ExampleIndexError, match="missed 6 of 30 examples"):
            run3.record_epoch(0, model2, loader)
        assert run3.completed_epochs == ()


def test_nonfinite_marks_failed(tmp_path):
    rec, model, x, y = small(tmp_path)
    with rec.run(seed=0) as run:
        run.record_epoch(0, model, x)
        bad = model(x[:4]).detach()
        bad[1, 0] = float("nan")
        with pytest.raises(RunFailedError, match="non-finite logits in epoch 1"):
            run.observe(1, torch.arange(4), bad, y[:4])
    ds = xr.open_zarr(rec.path)
    assert ds.attrs["runs"]["0"]["status"] == "failed" and ds.attrs["runs"]["0"]["failed_epoch"] == 1
    assert ds.completed.sel(run=0).values.tolist() == [True, False, False]
    with pytest.raises(RunFailedError, match="failed at epoch 1"):
        with rec.run(seed=0):
            pass
    with torch.no_grad():
        model[2].weight.fill_(float("inf"))
    with rec.run(seed=1) as run:
        with pytest.raises(RunFailedError, match="non-finite loss at epoch 0"):
            run.record_epoch(0, model, x)
    ds = xr.open_zarr(rec.path)
    assert ds.attrs["runs"]["1"]["status"] == "failed"
    assert not ds.completed.sel(run=1).values.any()


def test_checkpoint_roundtrip(tmp_path):
    rec, model, x, y = small(tmp_path)
    with rec.run(seed=0) as run:
        assert run.load_checkpoint() is None
        run.save_checkpoint({"model": model.state_dict(), "epoch": 1})
    with rec.run(seed=0) as run:
        state = run.load_checkpoint()
    assert state["epoch"] == 1
    torch.testing.assert_close(state["model"]["0.weight"], model[0].weight.detach())


def test_cli_commands_work_on_recorder_store(tmp_path, tiny_config, digits):
    cfg = tiny_config(epochs=2)
    plain_loop(cfg, digits, tmp_path / "a.zarr", seed=0)
    plain_loop(cfg, digits, tmp_path / "b.zarr", seed=1)
    from typer.testing import CliRunner

    from scorebank.cli.main import app

    runner = CliRunner()
    for args in (["info", str(tmp_path / "a.zarr")],
                 ["analyze", str(tmp_path / "a.zarr"), "forgetting"],
                 ["select", str(tmp_path / "a.zarr"), "--score", "el2n@2", "--strategy", "keep-highest",
                  "--keep", "0.5", "--out", str(tmp_path / "keep.json")],
                 ["export", str(tmp_path / "a.zarr"), str(tmp_path / "a.scorebank.zip")],
                 ["merge", str(tmp_path / "a.scorebank.zip"), str(tmp_path / "b.zarr"), "--out",
                  str(tmp_path / "both.zarr")],
                 ["info", str(tmp_path / "both.zarr")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    keep = json.loads((tmp_path / "keep.json").read_text())
    assert len(keep["indices"]) == 100
    both = xr.open_zarr(tmp_path / "both.zarr")
    assert both.sizes["run"] == 2
    np.testing.assert_array_equal(both.margin.isel(run=1).values,
                                  xr.open_zarr(tmp_path / "b.zarr").margin.isel(run=0).values)


class KeywordNet(torch.nn.Module):
    """A model called with keyword inputs that returns a dict, like Hugging Face models."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(4, K)

    def forward(self, features):
        return {"logits": self.net(features)}


def keyword_examples(x, y):
    """Examples as dicts of keyword inputs and labels (a list is a map-style data set)."""
    return [{"features": xi, "labels": yi} for xi, yi in zip(x, y)]


def test_dict_batches_and_label_noise(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 4, generator=g)
    true = torch.arange(N) % K
    noisy = true.clone()
    noisy[:6] = (noisy[:6] + 1) % K
    rec = Recorder.create(tmp_path / "n.zarr", labels=noisy, true_labels=true, epochs=1, inputs=x)
    model = KeywordNet()
    loader = torch.utils.data.DataLoader(IndexedDataset(keyword_examples(x, noisy)), batch_size=8, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    with rec.run(seed=0) as run:
        values = run.record_epoch(0, model, loader,
                                  test=torch.utils.data.DataLoader(keyword_examples(x, true), batch_size=5))
    margin, _, loss = reference_scores(model.net, x, noisy)
    ds = xr.open_zarr(rec.path)
    np.testing.assert_allclose(ds.margin.sel(run=0, epoch=0).values, margin, rtol=1e-5, atol=1e-6)
    corrupt = np.arange(N) < 6
    assert ds.corrupted.values.tolist() == corrupt.tolist()
    assert values["corrupt_accuracy"] == pytest.approx((margin[corrupt] > 0).mean())
    assert values["pristine_accuracy"] == pytest.approx((margin[~corrupt] > 0).mean())
    assert values["pristine_loss"] == pytest.approx(loss[~corrupt].mean(), rel=1e-5)
    assert values["test_accuracy"] == pytest.approx((reference_scores(model.net, x, true)[0] > 0).mean())


def test_accelerator_checks_are_raised_by_record_epoch(tmp_path, monkeypatch):
    """On an accelerator observe() reads no flag per batch; record_epoch raises what it found
    before writing (exercised on the CPU by taking that path)."""
    from scorebank.pipeline import record

    monkeypatch.setattr(record, "_defer_checks", lambda device: True)
    rec, model, x, y = small(tmp_path)
    with rec.run(seed=0) as run:
        run.record_epoch(0, model, x)
        logits = model(x).detach()
        run.observe(1, torch.arange(10), logits[:10], y[:10])
        run.observe(1, torch.arange(5, 15), logits[5:15], y[5:15])  # 5..9 again: no error yet
        before = store_state(rec.path)
        with pytest.raises(ExampleIndexError, match="example 5 was observed 2 times in epoch 1"):
            run.record_epoch(1, model, x)
        assert_unchanged(rec.path, before)
    with rec.run(seed=1) as run:
        run.record_epoch(0, model, x)
        run.observe(1, torch.arange(4), logits[:4], (y[:4] + 1) % K)
        with pytest.raises(LabelMismatchError, match="4 observed label"):
            run.record_epoch(1, model, x)
    with rec.run(seed=2) as run:
        run.record_epoch(0, model, x)
        bad = logits[:4].clone()
        bad[0, 0] = float("inf")
        run.observe(1, torch.arange(4), bad, y[:4])
        with pytest.raises(RunFailedError, match="non-finite logits in epoch 1"):
            run.record_epoch(1, model, x)
    assert xr.open_zarr(rec.path).attrs["runs"]["2"]["status"] == "failed"
