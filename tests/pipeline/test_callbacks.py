"""The Lightning and Hugging Face callbacks record tiny digits runs into working stores.

These need the extras (``pip install "scorebank[lightning,hf]"``); CI installs them."""

import json
import logging

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
import xarray as xr

from scorebank.pipeline.callbacks import HFRecorder, LightningRecorder
from scorebank.pipeline.datasets import load_dataset
from scorebank.pipeline.record import IndexedDataset, Recorder
from scorebank.pipeline.training import to_device_data

EPOCHS = 2


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits", limit=120)
    dd = to_device_data(data, data.train_labels, torch.device("cpu"))
    return data, dd


def new_recorder(path, data, dd):
    return Recorder.create(path, labels=data.train_labels, epochs=EPOCHS, dataset="digits",
                           class_names=data.class_names, inputs=data.train_images,
                           original_index=data.original_index, config={"framework": path.stem})


def mlp(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))


def reference_margin(net, x, y):
    """f_y - max_{j != y} f_j from the definition."""
    with torch.no_grad():
        f = net(x).double()
    rows = torch.arange(len(y))
    true = f[rows, y]
    f[rows, y] = -np.inf
    return (true - f.max(1).values).numpy()


def check_store(path, seen, net, dd):
    """Every epoch written, in-flight correctness as seen in the loop, the final clean pass
    equal to the definition on the trained model."""
    ds = xr.open_zarr(path)
    run = int(ds.run.values[0])
    assert ds.attrs["runs"][str(run)]["status"] == "complete"
    assert ds.completed.values.all() and ds.recorded.values.all()
    for epoch, correct in seen.items():
        np.testing.assert_array_equal(ds.train_correct.sel(run=run, epoch=epoch).values, correct)
    np.testing.assert_allclose(ds.margin.sel(run=run, epoch=EPOCHS).values,
                               reference_margin(net, dd.train_x, dd.train_y), rtol=1e-5, atol=1e-5)
    assert np.isfinite(ds.test_accuracy.values).all()


def check_commands(tmp_path, a, b):
    """analyze forgetting, select, export and merge work on recorder stores."""
    from typer.testing import CliRunner

    from scorebank.cli.main import app

    runner = CliRunner()
    for args in (["analyze", str(a), "forgetting", "--json"],
                 ["select", str(a), "--score", "forgetting", "--strategy", "keep-highest", "--keep", "0.5",
                  "--out", str(tmp_path / "keep.json")],
                 ["export", str(a), str(tmp_path / "a.scorebank.zip")],
                 ["merge", str(tmp_path / "a.scorebank.zip"), str(b), "--out", str(tmp_path / "both.zarr")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    assert len(json.loads((tmp_path / "keep.json").read_text())["indices"]) == 60
    both = xr.open_zarr(tmp_path / "both.zarr")
    assert both.run.values.tolist() == [0, 1]
    np.testing.assert_array_equal(both.margin.sel(run=1).values, xr.open_zarr(b).margin.isel(run=0).values)


# ------------------------------------------------------------------ Lightning
class LitNet(pl.LightningModule):
    def __init__(self, seed):
        super().__init__()
        self.net = mlp(seed)
        self.seen: dict[int, np.ndarray] = {}

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        idx, x, y = batch
        logits = self(x)
        seen = self.seen.setdefault(self.current_epoch + 1, np.zeros(120, bool))
        seen[idx.numpy()] = (logits.argmax(1) == y).numpy()  # no ties in float logits here
        return {"loss": F.cross_entropy(logits, y), "logits": logits}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def lightning_fit(path, seed, data, dd):
    rec = new_recorder(path, data, dd)
    model = LitNet(seed)
    loader = torch.utils.data.DataLoader(IndexedDataset(torch.utils.data.TensorDataset(dd.train_x, dd.train_y)),
                                         batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))
    callback = LightningRecorder(rec, seed=seed, train=dd.train_x, test=(dd.test_x, dd.test_y))
    trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(model, loader)
    return model


def test_lightning_callback(tmp_path, digits):
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    data, dd = digits
    model = lightning_fit(tmp_path / "lightning.zarr", 0, data, dd)
    check_store(tmp_path / "lightning.zarr", model.seen, model.net, dd)
    ds = xr.open_zarr(tmp_path / "lightning.zarr")
    assert ds.attrs["runs"]["0"]["model"] == f"{LitNet.__module__}.LitNet"
    lightning_fit(tmp_path / "other.zarr", 1, data, dd)
    check_commands(tmp_path, tmp_path / "lightning.zarr", tmp_path / "other.zarr")


# ------------------------------------------------------------------ Hugging Face
class HFNet(torch.nn.Module):
    """What the Trainer expects of a model: keyword inputs, a dict with loss and logits."""

    def __init__(self, seed):
        super().__init__()
        self.net = mlp(seed)
        self.seen: dict[int, np.ndarray] = {}
        self.epoch = 0

    def forward(self, pixel_values, labels=None):
        logits = self.net(pixel_values)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


def hf_examples(x, y):
    """Examples as the Trainer takes them (a list is a map-style data set): keyword inputs."""
    return [{"pixel_values": xi, "labels": yi} for xi, yi in zip(x, y)]


class Watch(transformers.TrainerCallback):
    """Independently records what the training forward passes saw (registered after
    HFRecorder, whose pre-hook has already taken ``index`` out: it reads it from there)."""

    def __init__(self, model, rec):
        self.model, self.rec = model, rec

    def on_train_begin(self, args, state, control, **kwargs):
        def hook(module, a, kw, out):
            if module.training:
                epoch = int(state.epoch or 0) + 1  # state.epoch: fraction of epochs done
                seen = module.seen.setdefault(epoch, np.zeros(120, bool))
                seen[self.rec._last_index.numpy()] = (out["logits"].argmax(1) == kw["labels"]).numpy()
        self.model.register_forward_hook(hook, with_kwargs=True)


def hf_fit(path, seed, data, dd):
    rec = new_recorder(path, data, dd)
    model = HFNet(seed)
    args = transformers.TrainingArguments(output_dir=str(path.parent / f"hf-{seed}"), num_train_epochs=EPOCHS,
                                          per_device_train_batch_size=32, learning_rate=0.1, seed=seed,
                                          use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
                                          remove_unused_columns=False, lr_scheduler_type="constant",
                                          optim="sgd", disable_tqdm=True, dataloader_num_workers=0)
    recorder = HFRecorder(rec, seed=seed, train=dd.train_x, test=(dd.test_x, dd.test_y))
    trainer = transformers.Trainer(model=model, args=args,
                                   train_dataset=IndexedDataset(hf_examples(dd.train_x, dd.train_y)),
                                   callbacks=[recorder])
    original = recorder._pre

    def keep_index(module, a, kw):  # let the test's watcher see the indices the recorder took
        recorder._last_index = kw.get("index")
        return original(module, a, kw)

    recorder._pre = keep_index
    trainer.add_callback(Watch(model, recorder))
    trainer.train()
    return model


def test_hf_callback(tmp_path, digits):
    transformers.logging.set_verbosity_error()
    data, dd = digits
    model = hf_fit(tmp_path / "hf.zarr", 0, data, dd)
    assert sorted(model.seen) == [1, 2]
    check_store(tmp_path / "hf.zarr", model.seen, model.net, dd)
    assert xr.open_zarr(tmp_path / "hf.zarr").attrs["runs"]["0"]["model"] == f"{HFNet.__module__}.HFNet"
    hf_fit(tmp_path / "other.zarr", 1, data, dd)
    check_commands(tmp_path, tmp_path / "hf.zarr", tmp_path / "other.zarr")


class LossOnly(LitNet):
    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx)["loss"]


def test_callback_errors_are_one_line_and_release_the_store(tmp_path, digits):
    from scorebank.pipeline.record import ShapeError

    data, dd = digits
    rec = new_recorder(tmp_path / "hf.zarr", data, dd)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), num_train_epochs=1, use_cpu=True,
                                          report_to=[], save_strategy="no", remove_unused_columns=False,
                                          disable_tqdm=True)
    trainer = transformers.Trainer(model=HFNet(0), args=args, train_dataset=hf_examples(dd.train_x, dd.train_y),
                                   callbacks=[HFRecorder(rec, seed=0, train=dd.train_x)])
    with pytest.raises(ShapeError, match="carry no 'index' column"):
        trainer.train()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    loader = torch.utils.data.DataLoader(IndexedDataset(torch.utils.data.TensorDataset(dd.train_x, dd.train_y)),
                                         batch_size=32)
    fit = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     callbacks=[LightningRecorder(other := new_recorder(tmp_path / "pl.zarr", data, dd), seed=1,
                                                  train=dd.train_x)])
    with pytest.raises(ShapeError, match="must return {'loss': loss, 'logits': logits}"):
        fit.fit(LossOnly(1), loader)
    for store, seed in ((rec, 0), (other, 1)):  # epoch 0 was written, then the run stopped
        ds = xr.open_zarr(store.path)
        assert ds.attrs["runs"][str(seed)]["status"] == "interrupted"
        assert ds.completed.values.tolist() == [[True, False, False]]
        with store.run(seed=seed) as run:  # the store is not left locked
            assert run.completed_epochs == (0,)
