"""AUM's own cut-off (Pleiss et al. 2020 Sec. 3): the 99th percentile of the threshold samples'
AUM, real examples below it flagged; ``analyze aum`` and the own-threshold columns of ``analyze
noise``, checked against a straightforward implementation on a scored digits store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from scorebank.analysis.aum import aum_cutoff, aum_flags
from scorebank.analysis.noise import noise_detection
from scorebank.cli.main import app
from scorebank.pipeline.config import resolve_config
from scorebank.pipeline.scoring import score
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError


def _config(**overrides):
    fields = dict(dataset="digits", limit=150, model="mlp", width=16, epochs=3, batch_size=32, lr=0.05,
                  label_noise=0.2, threshold_samples=True)
    fields.update(overrides)
    return resolve_config(**fields)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("aumthr") / "t.zarr"
    score(_config(), (0, 1), path, device="cpu")
    return path


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    path = tmp_path_factory.mktemp("aumplain") / "p.zarr"
    score(_config(threshold_samples=False, epochs=1), (0,), path, device="cpu")
    return path


def _percentile(values, q):
    """numpy's default ('linear') percentile, by hand: position q/100 * (m - 1) in the sorted values."""
    v = sorted(float(x) for x in values)
    pos = q / 100 * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _by_hand(path, epoch, q=99.0):
    ds = xr.open_zarr(path)
    m = ds[S.TRAIN_MARGIN].values.astype(np.float64)  # (run, epoch, example)
    n = m.shape[2]
    aum = np.array([sum(sum(m[r, e, i] for e in range(1, epoch + 1)) / epoch for r in range(m.shape[0])) / m.shape[0]
                    for i in range(n)])
    ts = ds[S.THRESHOLD_SAMPLE].values
    cut = _percentile(aum[ts], q)
    flagged = [i for i in range(n) if not ts[i] and aum[i] < cut]
    noisy = [i for i in range(n) if not ts[i] and ds[S.CORRUPTED].values[i]]
    hits = len(set(flagged) & set(noisy))
    return aum, ts, cut, flagged, noisy, hits


@pytest.mark.parametrize("epoch, q", [(3, 99.0), (2, 90.0)])
def test_cutoff_flags_real_examples_below_the_percentile(store, epoch, q):
    aum, ts, cut, flagged, noisy, hits = _by_hand(store, epoch, q)
    res = aum_flags(store, epoch, percentile=q)
    assert res.spec == f"aum@{epoch}" and res.runs == (0, 1)
    np.testing.assert_allclose(res.aum, aum, rtol=1e-12)
    assert res.threshold == pytest.approx(cut, rel=1e-12)
    assert sorted(np.flatnonzero(res.flagged).tolist()) == flagged
    assert not (res.flagged & ts).any() and res.n_flagged == len(flagged) > 0
    assert res.precision == pytest.approx(hits / len(flagged)) and res.recall == pytest.approx(hits / len(noisy))
    assert list(res.ranked) == sorted(flagged, key=lambda i: (aum[i], i))


def test_cutoff_on_a_small_example():
    aum = np.array([0.5, -1.0, 2.0, -3.0, 0.0, 1.0])
    ts = np.array([True, True, False, False, False, False])
    threshold, flagged = aum_cutoff(aum, ts, 50.0)
    assert threshold == pytest.approx(-0.25)  # halfway between -1.0 and 0.5
    assert flagged.tolist() == [False, False, False, True, False, False]  # a threshold sample is never flagged


@pytest.mark.parametrize("q", [np.int64(50), np.float32(50.0), 50])
def test_the_percentile_may_be_a_numpy_scalar(q):
    aum = np.array([0.5, -1.0, 2.0, -3.0, 0.0, 1.0])
    ts = np.array([True, True, False, False, False, False])
    assert aum_cutoff(aum, ts, q)[0] == pytest.approx(-0.25)
    with pytest.raises(InvalidArgumentError, match=r"got np.True_"):
        aum_cutoff(aum, ts, np.bool_(True))


def test_store_without_threshold_samples_is_refused_in_one_line(plain):
    with pytest.raises(InvalidArgumentError, match="--threshold-samples"):
        aum_flags(plain, 1)
    r = CliRunner().invoke(app, ["analyze", str(plain), "aum"])
    assert r.exit_code == 2
    assert r.output.startswith("error: this store has no AUM threshold samples") and r.output.count("\n") == 1
    assert "scorebank score --threshold-samples" in r.output


@pytest.mark.parametrize("value", ["0", "101", "nan", "-5"])
def test_bad_percentile_is_exit_2(store, value):
    r = CliRunner().invoke(app, ["analyze", str(store), "aum", "--percentile", value])
    assert r.exit_code == 2 and r.output.startswith("error: --percentile must be a number in (0, 100]")


def test_negative_rows_is_exit_2(store):
    r = CliRunner().invoke(app, ["analyze", str(store), "aum", "--rows", "-1"])
    assert r.exit_code == 2 and r.output == "error: --rows must be 0 or more, got -1\n", r.output


def test_cli_json_and_manifest(store, tmp_path):
    aum, ts, cut, flagged, noisy, hits = _by_hand(store, 3)
    out = tmp_path / "keep.json"
    r = CliRunner().invoke(app, ["analyze", str(store), "aum", "--json", "--out", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["threshold"] == pytest.approx(cut) and doc["n_flagged"] == len(flagged)
    assert doc["n_threshold_samples"] == int(ts.sum()) == 150 // 11
    assert doc["precision"] == pytest.approx(hits / len(flagged)) and doc["n_corrupted"] == len(noisy)
    assert sorted(f["example"] for f in doc["flagged"]) == flagged
    manifest = json.loads(out.read_text())
    assert manifest["indices"] == [i for i in range(150) if i not in flagged and not ts[i]]
    assert manifest["parameters"]["n_dropped"] == len(flagged)


def _roc_auc_by_hand(hardness, positive):
    pos = [h for h, p in zip(hardness, positive) if p]
    neg = [h for h, p in zip(hardness, positive) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_noise_leaves_threshold_samples_out_and_reports_aum_own_threshold(store):
    aum, ts, cut, flagged, noisy, hits = _by_hand(store, 3)
    res = noise_detection(store, ["aum@3", "el2n@3"])
    real = ~ts
    corrupted = xr.open_zarr(store)[S.CORRUPTED].values[real]
    assert int(res["n_threshold_samples"]) == int(ts.sum()) and int(res["n_corrupted"]) == len(noisy)
    assert list(res[S.EXAMPLE].values) == list(np.flatnonzero(real))
    assert float(res["roc_auc"].sel(score="aum@3")) == pytest.approx(_roc_auc_by_hand(-aum[real], corrupted))
    assert float(res["own_n_flagged"].sel(score="aum@3")) == len(flagged)
    assert float(res["own_precision"].sel(score="aum@3")) == pytest.approx(hits / len(flagged))
    assert float(res["own_recall"].sel(score="aum@3")) == pytest.approx(hits / len(noisy))
    assert np.isnan(float(res["own_n_flagged"].sel(score="el2n@3")))
    assert str(res["own_rule"].sel(score="el2n@3").item()) == ""


def test_noise_cli_shows_own_threshold_only_for_scores_with_one(store, plain):
    r = CliRunner().invoke(app, ["analyze", str(store), "noise", "aum@3", "el2n@3", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["score"]: row for row in json.loads(r.output)["scores"]}
    assert rows["aum@3"]["own_threshold"]["n_flagged"] == len(_by_hand(store, 3)[3])
    assert "own_threshold" not in rows["el2n@3"]
    r = CliRunner().invoke(app, ["analyze", str(plain), "noise", "aum@1", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["scores"][0]["own_threshold"] is None and "n_threshold_samples" not in doc
    r = CliRunner().invoke(app, ["analyze", str(store), "noise", "aum@3", "el2n@3"])
    assert r.exit_code == 0 and "—" in r.output and "13 AUM threshold samples left" in r.output


def test_plot_marks_the_own_threshold_at_its_operating_point(store, tmp_path):
    from scorebank.analysis.noise_plots import own_operating_point, plot_noise_curves

    aum, ts, cut, flagged, noisy, hits = _by_hand(store, 3)
    res = noise_detection(store, ["aum@3"])
    n_clean = int((~ts).sum()) - len(noisy)
    fpr, tpr, p = own_operating_point(res, 0, res[S.CORRUPTED].values)
    assert fpr == pytest.approx((len(flagged) - hits) / n_clean)
    assert tpr == pytest.approx(hits / len(noisy)) and p == pytest.approx(hits / len(flagged))
    png = plot_noise_curves(res, tmp_path / "roc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
