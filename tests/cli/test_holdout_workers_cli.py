"""``scorebank holdout`` / ``scorebank memorization`` with ``--workers N`` / ``--scheduler``:
the folds run as Dask tasks on a process LocalCluster built by the CLI, with the same
``--json`` output and the same holdout group as the sequential command (one torch thread on
both sides); bad combinations are one-line usage errors (exit 2) that write nothing."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from scorebank.cli.main import app

runner = CliRunner()
TINY = ("--dataset", "digits", "--limit", "200", "--model", "mlp", "--width", "16", "--epochs", "2",
        "--batch-size", "32", "--label-noise", "0.2", "--device", "cpu", "--quiet")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    path = tmp_path_factory.mktemp("holdout-workers") / "s.zarr"
    r = invoke("score", *TINY, "--seeds", "0", "--store", path)
    assert r.exit_code == 0, r.output
    return path


@pytest.mark.parametrize("command", ["holdout", "memorization"])
@pytest.mark.parametrize("args, message", [
    (("--workers", "0"), "--workers 0 is out of range; give 1..256"),
    (("--workers", "2", "--scheduler", "tcp://127.0.0.1:1"), "give --workers 2 or --scheduler 'tcp://127.0.0.1:1', not both"),
    (("--gpus-per-run", "1"), "--gpus-per-run asks Dask workers for GPUs; give --workers or --scheduler too"),
    (("--scheduler", "nowhere"), "--scheduler 'nowhere' is not a scheduler address"),
])
def test_bad_dispatch_options_are_usage_errors(scored, command, args, message):
    before = sorted(os.listdir(scored))
    r = invoke(command, scored, "--device", "cpu", "--quiet", *args)
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert sorted(os.listdir(scored)) == before


def test_holdout_workers_2_equals_sequential(scored, tmp_path):
    par, seq = tmp_path / "w.zarr", tmp_path / "q.zarr"
    shutil.copytree(scored, par)
    shutil.copytree(scored, seq)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker's task
    try:
        w = invoke("holdout", par, "--folds", "2", "--seeds", "0-1", "--device", "cpu", "--workers", "2", "--json")
        s = invoke("holdout", seq, "--folds", "2", "--seeds", "0-1", "--device", "cpu", "--json")
    finally:
        torch.set_num_threads(before)
    assert w.exit_code == 0, w.output
    assert s.exit_code == 0, s.output
    doc = json.loads(w.stdout)
    assert doc == dict(json.loads(s.stdout), store=str(par))
    assert [(r["seed"], r["folds_trained"]) for r in doc["seeds"]] == [(0, 2), (1, 2)]
    a, b = (zarr.open_group(p / "holdout", mode="r") for p in (par, seq))
    for name, arr in b.arrays():
        np.testing.assert_array_equal(a[name][...], arr[...], err_msg=name)
    assert a.attrs["folds"] == b.attrs["folds"]
