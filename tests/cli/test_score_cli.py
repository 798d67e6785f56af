import json

import pytest
import xarray as xr
from typer.testing import CliRunner

from scorebank.cli.main import app

runner = CliRunner()
TINY = ["--limit", "120", "--width", "8", "--epochs", "2", "--batch-size", "32", "--quiet", "--device", "cpu"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_score_then_info(tmp_path):
    store = tmp_path / "s.zarr"
    r = invoke("score", *TINY, "--seeds", "0-1", "--store", store)
    assert r.exit_code == 0, r.output
    assert "complete" in r.output
    r = invoke("info", store)
    assert r.exit_code == 0 and "digits" in r.output and "120 examples" in " ".join(r.output.split())
    r = invoke("info", store, "--json")
    doc = json.loads(r.output)
    assert [run["seed"] for run in doc["runs"]] == [0, 1]
    assert doc["runs"][0]["last_epoch"] == 2 and doc["n_examples"] == 120
    ds = xr.open_zarr(store)
    assert doc["runs"][1]["test_accuracy"] == pytest.approx(float(ds.test_accuracy.values[1, 2]))
    r = invoke("score", *TINY, "--seeds", "0-1", "--store", store)  # idempotent
    assert r.exit_code == 0 and "skipped: seeds 0, 1" in " ".join(r.output.split())


@pytest.mark.parametrize("args, message", [
    (["--dataset", "imagenet"], "unknown data set 'imagenet'"),
    (["--model", "vgg16"], "unknown model 'vgg16'"),
    (["--schedule", "multistep:5,2:0.1"], "bad --schedule 'multistep:5,2:0.1'"),
    (["--seeds", "3-1"], "bad seed list '3-1'"),
    (["--seeds", "a"], "bad seed list 'a'"),
    (["--lr", "-1"], "--lr must be a positive number, got -1.0"),
    (["--record-epochs", "0,9"], "outside 0..2"),
    (["--label-noise", "2"], "--label-noise"),
    (["--optimizer", "m3"], "divisible by 3"),
    (["--device", "tpu"], "unknown --device 'tpu'"),
    (["--dataset", "cifar10", "--no-download", "--data-dir", "/nonexistent/cifar"], "does not exist"),
    (["--dataset", "imagefolder:/nonexistent/tree"], "does not exist"),
    (["--grand-only", "--grand-epochs", "3"], "--grand-only"),
])
def test_bad_arguments_exit_2_and_write_nothing(tmp_path, args, message):
    store = tmp_path / "s.zarr"
    r = invoke("score", *TINY, "--store", store, *args)
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split())
    assert len(r.output.strip().splitlines()) == 1  # one line
    assert not store.exists() and list(tmp_path.iterdir()) == []


def test_config_mismatch_exits_1(tmp_path):
    store = tmp_path / "s.zarr"
    assert invoke("score", *TINY, "--seeds", "0", "--store", store).exit_code == 0
    r = invoke("score", *TINY, "--seeds", "0", "--store", store, "--lr", "0.2")
    assert r.exit_code == 1
    assert "lr: store has 0.05, asked 0.2" in " ".join(r.output.split())


def test_store_path_that_holds_no_store_is_a_bad_argument(tmp_path):
    """A store path that does not exist, or exists but holds no store, is the user's bad
    argument: exit 2, one line."""
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "nothing.zarr", tmp_path / "empty"):
        for command in (["info", path], ["info", path, "--json"], ["export", path, tmp_path / "a.scorebank.zip"]):
            r = invoke(*command)
            assert r.exit_code == 2, r.output
            assert "no scorebank store" in r.output and len(r.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_info_shows_pristine_and_corrupt_accuracy(tmp_path):
    store = tmp_path / "n.zarr"
    assert invoke("score", *TINY, "--seeds", "0", "--label-noise", "0.5", "--store", store).exit_code == 0
    r = invoke("info", store)
    assert "pristine" in r.output and "corrupt" in r.output
    doc = json.loads(invoke("info", store, "--json").output)
    ds = xr.open_zarr(store)
    assert doc["runs"][0]["pristine_accuracy"] == pytest.approx(float(ds.pristine_accuracy.values[0, 2]))
    assert doc["runs"][0]["corrupt_accuracy"] == pytest.approx(float(ds.corrupt_accuracy.values[0, 2]))


def test_config_mismatch_draws_no_progress_bar(tmp_path):
    store = tmp_path / "s.zarr"
    assert invoke("score", *TINY, "--seeds", "0", "--store", store).exit_code == 0
    loud = [a for a in TINY if a != "--quiet"]
    r = invoke("score", *loud, "--seeds", "0", "--store", store, "--lr", "0.2")
    assert r.exit_code == 1
    assert r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1, r.output


def test_ctrl_c_says_where_and_the_rerun_resumes(tmp_path, monkeypatch):
    from scorebank.cli import progress

    store, reference = tmp_path / "s.zarr", tmp_path / "ref.zarr"
    assert invoke("score", *TINY, "--seeds", "0-1", "--store", reference).exit_code == 0
    deliver = progress.RunProgress.__call__

    def ctrl_c_after_epoch_1_of_seed_1(self, event, prefix=""):
        deliver(self, event, prefix)
        if event.kind == "epoch" and event.seed == 1 and event.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(progress.RunProgress, "__call__", ctrl_c_after_epoch_1_of_seed_1)
    r = invoke("score", *TINY, "--seeds", "0-1", "--store", store)
    assert r.exit_code == 130, r.output
    assert r.output.strip().splitlines()[-1] == "interrupted: seed 1 at epoch 1; run the same command to resume"
    monkeypatch.undo()
    doc = json.loads(invoke("info", store, "--json").output)
    assert [run["status"] for run in doc["runs"]] == ["complete", "interrupted"]
    assert "interrupted" in invoke("info", store).output
    r = invoke("score", *TINY, "--seeds", "0-1", "--store", store)
    assert r.exit_code == 0, r.output
    assert "resuming seed 1 from epoch 1" in r.output and "skipped: seeds 0" in r.output
    a, b = xr.open_zarr(store), xr.open_zarr(reference)
    assert (a.margin.values == b.margin.values).all() and (a.loss.values == b.loss.values).all()
