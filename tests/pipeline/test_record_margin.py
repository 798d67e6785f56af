"""The recorder's ``observe`` records the in-flight margin (``train_margin``, AUM's M_t) from
the logits it is given, as ``score`` does, so ``aum@E`` works on recorder stores."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from scorebank.analysis.scores import average_score
from scorebank.pipeline.record import Recorder
from scorebank.stores import schema as S

N, K, E = 23, 4, 2


def _margin_by_hand(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.array([row[y] - max(v for j, v in enumerate(row) if j != y) for row, y in zip(logits, labels)])


def _record(run, g, y, skip_in_epoch_1=None) -> np.ndarray:
    """Observe random logits for every example each epoch (but ``skip_in_epoch_1`` in epoch 1);
    returns the margins by hand (epoch, example), NaN where not observed."""
    want = np.full((E + 1, N), np.nan)
    model = torch.nn.Linear(3, K)
    run.record_epoch(0, model, None)
    for epoch in range(1, E + 1):
        order = torch.randperm(N, generator=g)
        shown = order[order != skip_in_epoch_1] if epoch == 1 and skip_in_epoch_1 is not None else order
        for start in range(0, len(shown), 5):
            idx = shown[start:start + 5]
            logits = torch.randn(len(idx), K, generator=g) * 3
            run.observe(epoch, idx, logits, y[idx])
            want[epoch, idx.numpy()] = _margin_by_hand(logits.double().numpy(), y[idx].numpy())
        run.record_epoch(epoch, model, None)
    return want


def test_observe_records_the_margin_of_the_given_logits_and_aum_reads_it(tmp_path):
    g = torch.Generator().manual_seed(5)
    y = torch.arange(N) % K
    rec = Recorder.create(tmp_path / "r.zarr", labels=y.numpy(), epochs=E, dataset="toy")
    with rec.run(seed=0) as run:
        want = _record(run, g, y)
    with rec.run(seed=1) as run:
        want1 = _record(run, g, y, skip_in_epoch_1=N - 1)
    ds = xr.open_zarr(tmp_path / "r.zarr")
    for seed, w in ((0, want), (1, want1)):
        got = ds[S.TRAIN_MARGIN].sel(run=seed).values
        assert got.dtype == np.float32 and np.isnan(got[0]).all()
        np.testing.assert_allclose(got[1:], w[1:], rtol=1e-6, atol=1e-6)  # NaN where not observed
        np.testing.assert_array_equal(ds[S.TRAIN_CORRECT].sel(run=seed).values[1:], w[1:] > 0)
    assert np.isnan(ds[S.TRAIN_MARGIN].sel(run=1, epoch=1).values[N - 1])
    aum = average_score(tmp_path / "r.zarr", "aum@2", runs=[0]).values
    np.testing.assert_allclose(aum, (want[1] + want[2]) / 2, rtol=1e-6, atol=1e-6)
