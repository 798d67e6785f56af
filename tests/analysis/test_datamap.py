"""Data maps (analysis/datamap.py): coordinates per example against numpy (epochs 1..E,
population std, mean over runs), the paper's 33% regions by hand, the figure and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scorebank.analysis.datamap import data_map, region_summary
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError


def test_coordinates_and_regions_by_hand(make_store):
    st = make_store(n=60, label_noise=0.2, seed=1, epochs=5)
    got = data_map(st.path, 4)
    p = np.exp(-st[S.LOSS][:, 1:5].astype(np.float64))  # (run, epoch 1..4, example)
    conf = p.mean(1).mean(0)
    var = np.sqrt(((p - p.mean(1, keepdims=True)) ** 2).mean(1)).mean(0)
    corr = st[S.CORRECT][:, 1:5].mean(1).mean(0)
    np.testing.assert_allclose(got["confidence"].values, conf, rtol=1e-12)
    np.testing.assert_allclose(got["variability"].values, var, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(got["correctness"].values, corr)
    k = round(0.33 * 60)
    for name, key in (("easy-to-learn", -conf), ("hard-to-learn", conf), ("ambiguous", -var)):
        want = sorted(range(60), key=lambda i: (key[i], i))[:k]
        assert sorted(np.flatnonzero(got[name].values)) == sorted(want), name
    assert not (got["easy-to-learn"].values & got["hard-to-learn"].values).any()
    rows = region_summary(got)
    assert [r["region"] for r in rows] == ["easy-to-learn", "ambiguous", "hard-to-learn"]
    for r in rows:
        mask = got[r["region"]].values
        assert r["examples"] == k and r["corrupted"] == int(st[S.CORRUPTED][mask].sum())
        assert r["confidence"] == pytest.approx(conf[mask].mean())
    assert data_map(st.path).attrs["epoch"] == 5


def test_epoch_out_of_range_is_refused(make_store):
    st = make_store(n=30, seed=2)
    with pytest.raises(InvalidArgumentError, match="confidence@9 is out of range"):
        data_map(st.path, 9)


def test_cli_datamap_json_and_plot(make_store, tmp_path):
    from typer.testing import CliRunner

    from scorebank.cli.main import app

    st = make_store(n=60, label_noise=0.2, seed=1)
    png = tmp_path / "map.png"
    result = CliRunner().invoke(app, ["analyze", str(st.path), "datamap", "--epoch", "3", "--json", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    ref = data_map(st.path, 3)
    assert doc["epoch"] == 3 and doc["n_examples"] == 60
    assert doc["regions"] == region_summary(ref)
    assert doc["ambiguous_and_hard"] == int((ref["ambiguous"] & ref["hard-to-learn"]).sum())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = CliRunner().invoke(app, ["analyze", str(st.path), "datamap"], env={"COLUMNS": "80"})
    assert table.exit_code == 0 and "hard-to-learn" in table.output and " corrupted " in table.output
