"""``scorebank holdout``, ``scorebank memorization`` and ``analyze STORE label-issues`` end to
end on a tiny digits store: JSON outputs, exit codes, one-line errors, nothing half-written.

The commands are registered on a local app the way cli/main.py and cli/analyze.py register
them (``register(app)``; ``analyze_app.command("label-issues")``)."""

import json
import os

import numpy as np
import pytest
import typer
import xarray as xr
from typer.testing import CliRunner

from scorebank.cli import holdout as holdout_cli
from scorebank.cli.analyze import analyze_main
from scorebank.cli.main import app as main_app

runner = CliRunner()
TINY = ("--limit", "200", "--width", "16", "--batch-size", "32", "--epochs", "2", "--label-noise", "0.2")


def make_app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    holdout_cli.register(app)
    analyze = typer.Typer()
    analyze.callback()(analyze_main)
    analyze.command("label-issues")(holdout_cli.label_issues_command)
    app.add_typer(analyze, name="analyze")
    score = next(c for c in main_app.registered_commands if c.name == "score")
    app.command("score")(score.callback)
    return app


APP = make_app()


def invoke(*args):
    return runner.invoke(APP, [str(a) for a in args])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "noisy.zarr"
    r = invoke("score", *TINY, "--seeds", "1", "--store", path, "--quiet", "--device", "cpu")
    assert r.exit_code == 0, r.output
    return path


def test_holdout_then_label_issues(store, tmp_path):
    r = invoke("holdout", store, "--folds", "3", "--seeds", "0-1", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["folds"] == 3 and [s["folds_trained"] for s in doc["seeds"]] == [3, 3]
    r = invoke("holdout", store, "--folds", "3", "--seeds", "0-1", "--device", "cpu", "--quiet")
    assert r.exit_code == 0 and "already done" in r.stdout
    r = invoke("analyze", store, "label-issues", "--json", "--out", tmp_path / "keep.json", "--name", "clean")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    keep = json.loads((tmp_path / "keep.json").read_text())
    flagged = [row["example"] for row in doc["issues"]]
    assert doc["n_issues"] == len(flagged) and doc["holdout_seeds"] == [0, 1]
    assert sorted(set(keep["indices"]) | set(flagged)) == list(range(200))
    assert not set(keep["indices"]) & set(flagged)
    r = invoke("analyze", store, "label-issues", "--rows", "3")
    assert r.exit_code == 0 and "flagged by confident learning" in r.stdout


def test_memorization_json(store):
    r = invoke("memorization", store, "--subsets", "3", "--keep", "0.7", "--influence", "--top-k", "2",
               "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["models"] == 3 and doc["trained"] == 3 and doc["influence_k"] == 2
    ds = xr.open_zarr(store, group="memorization")
    mem = ds["memorization"].values
    assert doc["most_memorized"][0]["memorization"] == pytest.approx(np.nanmax(mem))
    assert ds["influence_index"].shape == (360, 2)


@pytest.mark.parametrize("args, code, text", [
    (("holdout", "{store}", "--folds", "1"), 2, "--folds"),
    (("holdout", "{store}", "--seeds", "x"), 2, "seed list"),
    (("memorization", "{store}", "--keep", "1.5"), 2, "--keep"),
    (("memorization", "{store}", "--influence", "--top-k", "0"), 2, "--top-k"),
    (("holdout", "{missing}"), 2, "no scorebank store"),
    (("analyze", "{missing}", "label-issues"), 2, "nope.zarr"),
])
def test_errors_are_one_line_with_exit_codes(store, tmp_path, args, code, text):
    before = sorted(os.listdir(store))
    r = invoke(*[a.format(store=store, missing=tmp_path / "nope.zarr") for a in args])
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and text in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert sorted(os.listdir(store)) == before


def test_label_issues_without_holdout_fails_with_exit_1(store, tmp_path):
    import shutil

    from scorebank.stores.create import consolidate

    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    shutil.rmtree(copy / "holdout", ignore_errors=True)
    consolidate(copy)
    r = invoke("analyze", copy, "label-issues")
    assert r.exit_code == 1, r.output
    assert "scorebank holdout" in r.output and len(r.output.strip().splitlines()) == 1
