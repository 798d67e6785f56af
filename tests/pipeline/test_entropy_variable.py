"""A recorded variable added as a registry entry: the clean pass's softmax entropy."""

import numpy as np
import torch
import xarray as xr
from scipy.special import softmax

from scorebank.pipeline.config import resolve_config
from scorebank.pipeline.scoring import score
from scorebank.pipeline.training import example_scores


def test_entropy_equals_the_definition_and_is_stored(tmp_path):
    logits = np.random.default_rng(0).normal(0, 3, (7, 10)).astype(np.float32)
    got = example_scores(torch.from_numpy(logits), torch.zeros(7, dtype=torch.int64))["entropy"].numpy()
    p = softmax(logits.astype(np.float64), axis=1)
    np.testing.assert_allclose(got, -(p * np.log(p)).sum(1), rtol=1e-5)
    score(resolve_config(limit=100, epochs=1, batch_size=25), (0,), tmp_path / "s.zarr", device="cpu")
    h = xr.open_zarr(tmp_path / "s.zarr").entropy.sel(run=0).values  # (epoch, example)
    assert np.isfinite(h).all() and (h >= 0).all() and (h <= np.log(10) + 1e-6).all()
