"""``scorebank retrain``, ``prune-curve`` and ``compress`` through the CLI."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from scorebank.cli.main import app

runner = CliRunner()
TINY = ["--limit", "120", "--width", "16", "--batch-size", "24", "--quiet", "--device", "cpu"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def listing(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, files in os.walk(path) for f in files)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A 120-example store with two 3-epoch runs, and a manifest selected from it."""
    root = tmp_path_factory.mktemp("cli")
    store = root / "s.zarr"
    r = invoke("score", *TINY, "--epochs", "3", "--seeds", "0-1", "--store", store)
    assert r.exit_code == 0, r.output
    from scorebank.analysis.selection import select, to_manifest
    from scorebank.stores.manifest import write_manifest

    sel = select(store, "keep-highest", score="el2n@2", fraction=0.5, class_balanced=True)
    write_manifest(root / "keep.json", to_manifest(sel, store, name="keep-el2n"))
    return root


@pytest.fixture
def work(base, tmp_path):
    shutil.copytree(base, tmp_path / "w")
    return tmp_path / "w"


def test_retrain_with_baseline_then_rerun_skips(work):
    store = work / "s.zarr"
    r = invoke("retrain", store, "--manifest", work / "keep.json", "--seeds", "0-1", "--baseline", "random",
               "--epochs", "2", "--quiet")
    assert r.exit_code == 0, r.output
    assert "keep-el2n" in r.output and "keep-el2n.random" in r.output
    assert "budget steps: 5 steps/epoch x 2 epochs = 10 optimiser steps" in r.output  # ceil(120 / 24) = 5
    a = xr.open_zarr(store, group="retrain/keep-el2n")
    b = xr.open_zarr(store, group="retrain/keep-el2n.random")
    assert a.run.values.tolist() == [0, 1] and a.sizes["epoch"] == 3 and a.sizes["kept"] == b.sizes["kept"] == 60
    assert json.loads(a.attrs["retrain"])["training"]["epochs"] == 2
    r = invoke("retrain", store, "--manifest", work / "keep.json", "--seeds", "0-1", "--baseline", "random",
               "--epochs", "2", "--json")
    assert r.exit_code == 0, r.output
    assert "skipped" not in r.stdout  # JSON only on stdout; the progress bar is on stderr
    rows = json.loads(r.stdout)
    assert [row["group"] for row in rows] == ["keep-el2n", "keep-el2n.random"]
    finals = a.final_test_accuracy.values.astype(float)
    assert rows[0]["mean"] == pytest.approx(finals.mean()) and rows[0]["seeds"] == [0, 1]
    r = invoke("retrain", store, "--manifest", work / "keep.json", "--seeds", "0-1", "--epochs", "2", "--quiet")
    assert r.exit_code == 0 and "keep-el2n: already finished, skipped seeds 0, 1" in r.output


def _manifest_with(work, **changes):
    doc = json.loads((work / "keep.json").read_text())
    doc.update(changes)
    path = work / "bad.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("changes, extra, code, message", [
    (dict(dataset_fingerprint="sha256:" + "f" * 64), [], 1, "fingerprint 'sha256:ffff"),
    (dict(indices=[], counts_per_class={}, n_kept=0), [], 2, "the subset is empty"),
    (dict(indices=[5, 120], counts_per_class={"0": 2}, n_kept=2), [], 2, "index 120 is out of range"),
    ({}, ["--epochs", "0"], 2, "--budget steps with --epochs 0 yields 0 optimiser steps"),
    ({}, ["--budget", "forever"], 2, "unknown --budget 'forever'"),
    ({}, ["--seeds", "2-1"], 2, "bad seed list '2-1'"),
    ({}, ["--lr", "0"], 2, "--lr must be a positive number, got 0.0"),
])
def test_retrain_bad_input_one_line_and_nothing_written(work, changes, extra, code, message):
    store = work / "s.zarr"
    before = listing(store)
    r = invoke("retrain", store, "--manifest", _manifest_with(work, **changes), "--seeds", "0", *extra)
    assert r.exit_code == code, r.output
    assert message in " ".join(r.output.split())
    assert len(r.output.strip().splitlines()) == 1
    assert listing(store) == before


def test_missing_store_and_manifest(work):
    r = invoke("retrain", work / "nope.zarr", "--manifest", work / "keep.json")
    assert r.exit_code == 2 and "no scorebank store at" in r.output
    r = invoke("retrain", work / "s.zarr", "--manifest", work / "nope.json")
    assert r.exit_code == 2 and "no manifest file at" in r.output


@pytest.mark.parametrize("command", [("retrain", "--manifest", "keep.json"), ("compress", "--run", "0", "--keep", "10"),
                                     ("easy-hard",)])
def test_writing_commands_refuse_an_archive_and_say_how_to_unpack_it(work, command):
    archive = work / "s.scorebank.zip"
    assert invoke("export", work / "s.zarr", archive, "--quiet").exit_code == 0
    before = archive.read_bytes()
    args = [work / a if a.endswith(".json") else a for a in command[1:]]
    r = invoke(command[0], archive, *args)
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert f"{str(archive)!r} is a file (an archive is read-only)" in " ".join(r.output.split())
    assert f"scorebank import {archive} DIR" in " ".join(r.output.split())
    assert archive.read_bytes() == before
    url = "http://127.0.0.1:9/s.scorebank.zip"
    r = invoke(command[0], url, *args)
    assert r.exit_code == 2, r.output
    assert f"{url!r} is a URL (read-only)" in r.output and f"scorebank import {url} DIR" in r.output


def test_prune_curve_writes_table_and_figure_and_resumes(work):
    store, out = work / "s.zarr", work / "curve"
    args = ["prune-curve", store, "--score", "el2n@2", "--strategies", "keep-highest,random", "--prune", "0.5,0.75",
            "--seeds", "0-1", "--epochs", "1", "--out", out, "--quiet"]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(f"{out}.csv")))
    assert [(x["strategy"], x["fraction_pruned"], x["subset_size"], x["n_seeds"]) for x in rows] == [
        ("keep-highest", "0.5", "60", "2"), ("keep-highest", "0.75", "30", "2"),
        ("random", "0.5", "60", "2"), ("random", "0.75", "30", "2")]
    doc = json.loads(open(f"{out}.json").read())
    for row, x in zip(doc["rows"], rows):
        finals = xr.open_zarr(store, group=f"retrain/{x['group']}").final_test_accuracy.values.astype(float)
        assert row["accuracies"] == finals.tolist()
        assert float(x["mean"]) == pytest.approx(finals.mean())
        assert (float(x["p16"]), float(x["p84"])) == pytest.approx(tuple(np.percentile(finals, [16, 84])))
    assert doc["full_data"]["accuracies"] == xr.open_zarr(store).test_accuracy.values[:, -1].astype(float).tolist()
    assert open(f"{out}.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    stamps = {p: os.path.getmtime(store / "checkpoints" / "retrain" / x["group"] / "run-0.pt")
              for p, x in enumerate(rows)}
    r = invoke(*args)  # finished cells are skipped: no checkpoint is rewritten
    assert r.exit_code == 0, r.output
    assert {p: os.path.getmtime(store / "checkpoints" / "retrain" / x["group"] / "run-0.pt")
            for p, x in enumerate(rows)} == stamps


def test_sliding_window(work):
    store, out = work / "s.zarr", work / "win"
    r = invoke("prune-curve", store, "--score", "el2n@2", "--strategy", "window", "--offsets", "0,0.25", "--keep",
               "0.5", "--seeds", "0", "--epochs", "1", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(f"{out}.csv")))
    assert [(x["strategy"], x["offset"], x["fraction_kept"], x["subset_size"]) for x in rows] == [
        ("window", "0.0", "0.5", "60"), ("window", "0.25", "0.5", "60")]


@pytest.mark.parametrize("args, message", [
    (["--strategies", "window", "--prune", "0.5"], "cannot make a pruning curve"),
    (["--prune", "0.5,1.0"], "(fraction pruned) 1.0 is outside [0, 1)"),
    (["--prune", "a,b"], "bad --prune 'a,b'"),
    (["--strategy", "window", "--offsets", "0.6", "--keep", "0.5"], "runs past the end"),
    (["--strategy", "window", "--offsets", "0.1"], "the fraction of the data each window keeps"),
    (["--score", "nonsense@1", "--prune", "0.5"], "nonsense"),
    # the old spellings: --fractions meant pruned here and --fraction means kept in select
    (["--fractions", "0.5"], "prune-curve has no --fraction/--fractions"),
    (["--fraction", "0.5"], "give --prune 0.2,0.4 for the fractions pruned, or --keep F"),
    (["--strategy", "window", "--offsets", "0.1", "--fraction", "0.5"], "prune-curve has no --fraction"),
])
def test_prune_curve_bad_input(work, args, message):
    store = work / "s.zarr"
    before = listing(store)
    base = ["--score", "el2n@2"] if "--score" not in args else []
    r = invoke("prune-curve", store, *base, *args, "--seeds", "0", "--out", work / "c", "--quiet")
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split())
    assert len(r.output.strip().splitlines()) == 1
    assert listing(store) == before and not (work / "c.csv").exists()


def test_compress_refusals(work):
    store = work / "s.zarr"
    before = listing(store)
    r = invoke("compress", store, "--run", "0", "--keep", "121")
    assert r.exit_code == 2 and "--keep must be an integer in 1..120" in r.output
    r = invoke("compress", store, "--run", "0", "--keep", "10")
    assert r.exit_code == 1, r.output
    assert "run 0 never separated its training data" in " ".join(r.output.split())
    assert "reached epoch 3 with best recorded training accuracy" in " ".join(r.output.split())
    assert len(r.output.strip().splitlines()) == 1
    assert listing(store) == before


def test_compress_a_separated_run(tmp_path):
    store = tmp_path / "sep.zarr"
    r = invoke("score", "--limit", "200", "--width", "64", "--batch-size", "20", "--lr", "0.05", "--epochs", "8",
               "--quiet", "--device", "cpu", "--seeds", "0", "--store", store)
    assert r.exit_code == 0, r.output
    fig = tmp_path / "c.png"
    r = invoke("compress", store, "--run", "0", "--keep", "100", "--schedule", "continuous", "--max-epochs-per-stage",
               "2", "--figure", fig, "--quiet")
    assert r.exit_code == 0, r.output
    ds = xr.open_zarr(store, group="compress/run0-continuous-keep100")
    from scorebank.pipeline.compress import continuous_sizes

    assert ds.stage_size.values.tolist() == [200, *continuous_sizes(200, 100)]
    assert "recorded compress/run0-continuous-keep100" in r.output and fig.read_bytes()[:4] == b"\x89PNG"


def test_retrain_ctrl_c_names_group_seed_and_epoch_then_resumes(work, monkeypatch):
    from scorebank.cli import progress

    store = work / "s.zarr"
    deliver = progress.RunProgress.__call__

    def ctrl_c_after_epoch_1(self, event, prefix=""):
        deliver(self, event, prefix)
        if event.kind == "epoch" and event.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(progress.RunProgress, "__call__", ctrl_c_after_epoch_1)
    args = ["retrain", store, "--manifest", work / "keep.json", "--seeds", "0", "--epochs", "2", "--quiet"]
    r = invoke(*args)
    assert r.exit_code == 130, r.output
    assert r.output.strip().splitlines()[-1] == ("interrupted: keep-el2n seed 0 at epoch 1; run the same command "
                                                 "to resume")
    monkeypatch.undo()
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert "resuming keep-el2n seed 0 from epoch 1" in r.output
    assert xr.open_zarr(store, group="retrain/keep-el2n").completed.values.all()
