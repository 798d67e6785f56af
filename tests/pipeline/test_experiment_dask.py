"""``run_experiment(client=...)``: every stage that trains (score, retrain with its random
baseline, prune-curve, easy-hard, holdout) runs its runs as Dask tasks on a real process
LocalCluster (2 workers, 1 thread each), and the experiment's stores and results equal a
sequential run's bit for bit (torch pinned to 1 thread here, as on the workers)."""

import json

import numpy as np
import pytest
import zarr

from scorebank.pipeline import experiment as X

pytest.importorskip("distributed")

TINY = """
[experiment]
name = "tiny-dask"

[stores.d]
path = "d.zarr"

[stages.score]
kind = "score"
dataset = "digits"
limit = 200
model = "mlp"
width = 16
epochs = 3
batch-size = 32
lr = 0.05
seeds = "0-1"

[stages.pick]
kind = "select"
score = "el2n@1"
strategy = "keep-highest"
keep = 0.5

[stages.again]
kind = "retrain"
manifest = "pick"
seeds = "0-1"
baseline = "random"

[stages.prune]
kind = "prune-curve"
score = "el2n@1"
strategies = ["keep-lowest", "random"]
prune = [0.5]
seeds = "0"

[stages.eh]
kind = "easy-hard"
threshold = 0.3
seeds = "0-1"
epochs = 2

[stages.ho]
kind = "holdout"
folds = 2
seeds = "0"

[stages.report]
kind = "report"
per-class = 1
"""

TRAINING_STAGES = {"score", "again", "prune", "eh", "ho"}


@pytest.fixture
def client(process_client):
    """The session's process LocalCluster (tests/pipeline/conftest.py), both workers up."""
    process_client.wait_for_workers(2)
    return process_client


def arrays(path) -> dict[str, np.ndarray]:
    """Every array of the store, its subgroups' included (retrain/, easy_hard/, holdout/)."""
    group = zarr.open_group(path, mode="r")
    return {name: arr[...] for name, arr in group.members(max_depth=None) if isinstance(arr, zarr.Array)}


def test_every_training_stage_on_workers_equals_sequential(tmp_path, client, one_thread):
    exp = X.parse_experiment(TINY, "tiny.toml")
    events = []
    par = X.run_experiment(exp, tmp_path / "w", device="cpu", client=client, progress=events.append)
    seq = X.run_experiment(exp, tmp_path / "s", device="cpu")

    got, ref = arrays(tmp_path / "w" / "d.zarr"), arrays(tmp_path / "s" / "d.zarr")
    assert got.keys() == ref.keys()
    groups = {name.split("/")[0] for name in ref}
    assert {"retrain", "easy_hard", "holdout"} <= groups
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    assert par["stages"] == seq["stages"]
    assert json.loads((tmp_path / "w" / "results.json").read_text()) == par

    # the workers' training events reached the client, for every stage that trains
    trained = {ev.stage.name for ev in events if ev.kind == "run" and ev.run_event.kind == "epoch"}
    assert trained == TRAINING_STAGES
    # the holdout stage's number: each seed's out-of-fold accuracy, from the stored probabilities
    ho = zarr.open_group(tmp_path / "s" / "d.zarr" / "holdout", mode="r")
    labels = zarr.open_array(tmp_path / "s" / "d.zarr" / "label", mode="r")[:]
    acc = float((ho["probability"][0].argmax(axis=1) == labels).mean())
    assert seq["stages"]["ho"]["results"]["out_of_fold_accuracy"] == {"0": acc}
    assert np.isfinite(ho["probability"][0]).all() and ho["fold_done"][:].all()

    # done stages are recognised from the stores on both sides: nothing runs again
    events = []
    X.run_experiment(exp, tmp_path / "w", device="cpu", client=client, progress=events.append)
    assert [ev.stage.name for ev in events if ev.kind == "start"] == []


def test_holdout_stage_keys_are_validated_up_front():
    text = TINY.replace("folds = 2", "folds = 1")
    with pytest.raises(X.ExperimentError) as err:
        X.parse_experiment(text, "tiny.toml")
    assert str(err.value) == "tiny.toml: stage 'ho': key 'folds' must be 2..1000, got 1"
    with pytest.raises(X.ExperimentError, match="stage 'ho': unknown key 'fold' for kind 'holdout'; it takes "
                                                "folds, seeds"):
        X.parse_experiment(TINY.replace("folds = 2", "fold = 2"), "tiny.toml")
