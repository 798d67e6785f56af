"""In-flight margin (``train_margin``, format 2): the margin of each example on the logits of
the training step that presented it, before the update (AUM's M_t, Pleiss et al. 2020),
checked against logits captured from the model's own forward calls."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from scorebank.pipeline.datasets import load_dataset
from scorebank.pipeline.scoring import prepare_labels, score
from scorebank.pipeline.training import Trainer, to_device_data
from scorebank.stores import schema as S


def _margins_by_hand(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = np.empty(len(labels), dtype=np.float64)
    for i, (row, y) in enumerate(zip(logits, labels)):
        others = [v for j, v in enumerate(row) if j != y]
        out[i] = row[y] - max(others)
    return out


def test_train_margin_is_the_margin_of_the_training_forward_pass(tiny_config):
    config = tiny_config(label_noise=0.2, batch_size=32)
    data = load_dataset("digits", limit=200)
    dd = to_device_data(data, prepare_labels(config, data), torch.device("cpu"))
    trainer = Trainer(config, dd, 3, torch.device("cpu"))
    rows = {dd.train_x[i].numpy().tobytes(): i for i in range(dd.train_x.shape[0])}
    seen: dict[int, float] = {}

    def hook(module, inputs, output):  # the training step's forward: rows of train_x, unaugmented
        if not module.training:
            return
        x, logits = inputs[0].detach().numpy(), output.detach().numpy()
        idx = np.array([rows[r.tobytes()] for r in x])
        for i, m in zip(idx, _margins_by_hand(logits, dd.train_y.numpy()[idx])):
            seen[int(i)] = m

    handle = trainer.model.register_forward_hook(hook)
    inflight, diverged = trainer.train_epoch()
    handle.remove()
    assert not diverged and len(seen) == 200
    want = np.array([seen[i] for i in range(200)])
    np.testing.assert_allclose(inflight[S.TRAIN_MARGIN], want, rtol=1e-5, atol=1e-6)
    assert inflight[S.TRAIN_MARGIN].dtype == np.float32
    np.testing.assert_array_equal(inflight[S.TRAIN_CORRECT], inflight[S.TRAIN_MARGIN] > 0)


def test_a_scored_store_records_train_margin_from_epoch_1(tiny_config, tmp_path):
    config = tiny_config(epochs=2)
    score(config, (0, 1), tmp_path / "s.zarr", device="cpu")
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert ds.attrs[S.ATTR_WRITER_FORMAT] == S.FORMAT_VERSION == 2 and ds.attrs[S.ATTR_FORMAT] == 1
    m = ds[S.TRAIN_MARGIN].values  # (run, epoch, example)
    assert m.dtype == np.float32 and m.shape == (2, 3, 200)
    assert np.isnan(m[:, 0]).all() and np.isfinite(m[:, 1:]).all()
    np.testing.assert_array_equal(ds[S.TRAIN_CORRECT].values[:, 1:], m[:, 1:] > 0)
    assert not np.array_equal(m[0], m[1])  # each run its own margins
