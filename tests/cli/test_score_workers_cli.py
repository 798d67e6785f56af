"""``scorebank score --workers N / --scheduler ADDRESS``: runs as Dask tasks on a process
LocalCluster built by the CLI; equal to the sequential command bit for bit (one torch thread
on both sides); bad combinations are one-line usage errors (exit 2)."""

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from scorebank.cli.main import app

runner = CliRunner()
TINY = ("--dataset", "digits", "--limit", "200", "--model", "mlp", "--width", "16", "--epochs", "2",
        "--batch-size", "32", "--device", "cpu", "--quiet")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("args, message", [
    (("--workers", "0"), "--workers 0 is out of range; give 1..256"),
    (("--workers", "2", "--scheduler", "tcp://127.0.0.1:1"), "give --workers 2 or --scheduler 'tcp://127.0.0.1:1', not both"),
    (("--gpus-per-run", "1"), "--gpus-per-run asks Dask workers for GPUs; give --workers or --scheduler too"),
    (("--scheduler", "nowhere"), "--scheduler 'nowhere' is not a scheduler address"),
])
def test_bad_dispatch_options_are_usage_errors(tmp_path, args, message):
    r = invoke("score", *TINY, "--store", tmp_path / "s.zarr", *args)
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not (tmp_path / "s.zarr").exists()


def test_workers_2_equals_sequential_bit_for_bit(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker's task
    try:
        par = invoke("score", *TINY, "--seeds", "0-3", "--workers", "2", "--store", tmp_path / "w.zarr")
        seq = invoke("score", *TINY, "--seeds", "0-3", "--store", tmp_path / "s.zarr")
    finally:
        torch.set_num_threads(before)
    assert par.exit_code == 0, par.output
    assert seq.exit_code == 0, seq.output
    w, s = (zarr.open_group(tmp_path / n, mode="r") for n in ("w.zarr", "s.zarr"))
    assert sorted(n for n, _ in w.arrays()) == sorted(n for n, _ in s.arrays())
    for name, arr in s.arrays():
        np.testing.assert_array_equal(w[name][...], arr[...], err_msg=name)
    assert w.attrs["runs"] == s.attrs["runs"]


def test_lost_coordinator_then_the_same_command_resumes(tmp_path):
    """The coordinator and its LocalCluster killed together (kill -9 of the process group,
    as when the machine or session dies): re-running the command resumes every run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from scorebank.pipeline.config import resolve_config
    from scorebank.pipeline.scoring import score

    path = tmp_path / "lost.zarr"
    args = ["score", "--dataset", "digits", "--limit", "200", "--model", "mlp", "--width", "16", "--epochs", "12",
            "--batch-size", "32", "--device", "cpu", "--quiet", "--seeds", "0-1", "--workers", "2", "--store", str(path)]
    cmd = [sys.executable, "-c", "from scorebank.cli.main import main; main()", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not list((path / "checkpoints").glob("run-*.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not zarr.open_group(path, mode="r")["completed"][...].all(), "the kill should land mid-run"
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = resolve_config(dataset="digits", limit=200, model="mlp", width=16, epochs=12, batch_size=32)
        score(cfg, (0, 1), tmp_path / "ref.zarr", device="cpu")
    finally:
        torch.set_num_threads(before)
    got, ref = (zarr.open_group(p, mode="r") for p in (path, tmp_path / "ref.zarr"))
    for name, arr in ref.arrays():
        np.testing.assert_array_equal(got[name][...], arr[...], err_msg=name)
    assert got.attrs["runs"] == ref.attrs["runs"]


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "s.zarr"
    r = invoke("score", *TINY, "--seeds", "0", "--store", path)
    assert r.exit_code == 0, r.output
    return path


@pytest.mark.parametrize("command", [
    ("retrain", "{store}", "--manifest", "{store}/missing.json"),
    ("prune-curve", "{store}", "--score", "el2n@1", "--prune", "0.5", "--out", "{store}/curve"),
    ("easy-hard", "{store}"),
])
def test_training_commands_take_the_dispatch_options(tiny_store, command):
    args = [a.format(store=tiny_store) for a in command]
    r = invoke(*args, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1")
    assert r.exit_code == 2, r.output
    assert "give --workers 2 or --scheduler 'tcp://127.0.0.1:1', not both" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tiny_store / "retrain").exists() and not (tiny_store / "easy_hard").exists()
