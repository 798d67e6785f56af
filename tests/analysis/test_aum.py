"""AUM, data-map and input-norm scores (registry entries) against numpy on a scored store:
aum@E = mean in-flight margin over epochs 1..E (Pleiss et al. 2020); confidence@E /
variability@E / correctness@E = mean / population std of exp(-loss) / mean correctness over
epochs 1..E of the clean pass (Swayamdipta et al. 2020, allenai/cartography's np.mean, np.std);
input_norm = ||normalised input||_2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from scorebank.analysis.scores import average_score, parse_score, run_scores
from scorebank.pipeline.config import resolve_config
from scorebank.pipeline.datasets import load_dataset
from scorebank.pipeline.scoring import score
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    config = resolve_config(dataset="digits", limit=150, model="mlp", width=16, epochs=3, batch_size=32, lr=0.05,
                            label_noise=0.2)
    path = tmp_path_factory.mktemp("aum") / "s.zarr"
    score(config, (0, 1), path, device="cpu")
    return path


def _by_hand(values: np.ndarray, last: int, reduce) -> np.ndarray:
    """values (run, epoch, example) -> reduce over epochs 1..last per run, then mean over runs."""
    per_run = [[reduce(values[r, 1:last + 1, i]) for i in range(values.shape[2])] for r in range(values.shape[0])]
    return np.mean(np.asarray(per_run, dtype=np.float64), axis=0)


def test_aum_is_the_mean_in_flight_margin_over_epochs_1_to_e(store):
    ds = xr.open_zarr(store)
    m = ds[S.TRAIN_MARGIN].values.astype(np.float64)
    for e in (1, 3):
        got = average_score(store, f"aum@{e}").values
        np.testing.assert_allclose(got, _by_hand(m, e, lambda v: sum(v) / len(v)), rtol=1e-12)
    assert not parse_score("aum@3").high_is_hard


def test_data_map_scores_follow_cartography(store):
    ds = xr.open_zarr(store)
    p = np.exp(-ds[S.LOSS].values.astype(np.float64))
    correct = ds[S.CORRECT].values.astype(np.float64)
    np.testing.assert_allclose(average_score(store, "confidence@3").values, _by_hand(p, 3, np.mean), rtol=1e-12)
    pop_std = lambda v: (sum((x - sum(v) / len(v)) ** 2 for x in v) / len(v)) ** 0.5  # noqa: E731
    np.testing.assert_allclose(average_score(store, "variability@3").values, _by_hand(p, 3, pop_std),
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(average_score(store, "correctness@2").values, _by_hand(correct, 2, np.mean))
    assert parse_score("variability@3").high_is_hard and not parse_score("confidence@3").high_is_hard


def test_input_norm_is_the_norm_of_the_normalised_input(store):
    data = load_dataset("digits", limit=150)
    x = data.train_images.astype(np.float64) / 255.0  # (N, C, H, W)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    std = x.std(axis=(0, 2, 3), keepdims=True)
    std = np.where(std > 0, std, 1.0)
    want = np.sqrt((((x - mean) / std) ** 2).sum(axis=(1, 2, 3)))
    got = run_scores(store, "input_norm")
    assert got.shape == (2, 150)
    np.testing.assert_allclose(got.values[0], want, rtol=1e-5)
    np.testing.assert_array_equal(got.values[0], got.values[1])
    with pytest.raises(InvalidArgumentError, match="takes no epoch"):
        parse_score("input_norm@3")


def test_summaries_need_recorded_epochs_1_to_e(store):
    with pytest.raises(InvalidArgumentError, match=r"aum@4 is out of range"):
        average_score(store, "aum@4")
    with pytest.raises(InvalidArgumentError, match=r"confidence@0 is out of range"):
        average_score(store, "confidence@0")


def test_format1_archive_has_no_aum_or_input_norm():
    from pathlib import Path

    archive = Path(__file__).resolve().parents[1] / "data" / "format1.scorebank.zip"
    for spec in ("aum@1", "input_norm"):
        with pytest.raises(Exception, match="store format 1 has no"):
            average_score(archive, spec)
    assert np.isfinite(average_score(archive, "confidence@1").values).all()  # from loss: format 1 has it
