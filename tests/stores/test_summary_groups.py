"""The status of a store's training groups (retrain/NAME, holdout, memorization) as ``info``
shows runs: the group's consolidated status table updated by the units' own records, a unit
recorded ``running`` whose owner is gone shown ``interrupted``, units without a record
``pending``."""

import json

import numpy as np
import pytest

from scorebank.pipeline.holdout import holdout
from scorebank.pipeline.memorization import memorization
from scorebank.pipeline.retrain import retrain
from scorebank.pipeline.subset_group import UnitWriter
from scorebank.stores import schema as S
from scorebank.stores.summary import GroupStatus, training_groups
from scorebank.stores.zarrstore import run_record_path

STORE_CONFIG = dict(epochs=2, label_noise=0.2)  # ``config``; ``store``: a copy of its store


def statuses(path) -> dict[str, dict[str, str]]:
    return {g.group: {k: r["status"] for k, r in g.status.items()} for g in training_groups(path)}


def test_a_fresh_store_has_no_training_groups(store):
    assert training_groups(store) == []
    assert training_groups("s3://bucket/x.zarr") == [] and training_groups(store / "nothing") == []


def test_holdout_units_interrupted_pending_and_running_while_owned(store, data):
    def interrupt(event):
        if event.group == "holdout fold 1" and event.kind == "epoch" and event.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        holdout(store, 3, [0], device="cpu", data=data, progress=interrupt)
    assert statuses(store) == {"holdout": {"0/0": S.RUN_COMPLETE, "0/1": S.RUN_INTERRUPTED, "0/2": S.RUN_PENDING}}
    # an owner training fold 2 now (this process holds the fold's lock): running
    with UnitWriter(store, "holdout", "folds", (0, 2)) as unit:
        unit.set_status({"status": S.RUN_RUNNING})
        assert statuses(store)["holdout"]["0/2"] == S.RUN_RUNNING
    # the owner gone without a word (kill -9): interrupted
    assert statuses(store)["holdout"]["0/2"] == S.RUN_INTERRUPTED
    (group,) = training_groups(store)
    assert group.counts() == {S.RUN_COMPLETE: 1, S.RUN_INTERRUPTED: 2}
    assert group.describe() == "holdout: 3 folds: 1 complete, 2 interrupted (0/1, 0/2)"


def test_memorization_and_retrain_groups(store, data):
    memorization(store, 2, 0.7, device="cpu", data=data)
    retrain(store, np.arange(100), "half", [0, 1], overrides={"epochs": 1}, device="cpu", data=data)
    # retrain run 1's owner killed while it trained: its record says running, nobody holds its lock
    run_record_path(store, 1, "retrain/half").write_text(json.dumps({"status": S.RUN_RUNNING, "device": "cpu"}))
    assert statuses(store) == {"retrain/half": {"0": S.RUN_COMPLETE, "1": S.RUN_INTERRUPTED},
                               "memorization": {"0": S.RUN_COMPLETE, "1": S.RUN_COMPLETE}}
    described = [g.describe() for g in training_groups(store)]
    assert described == ["retrain/half: 2 runs: 1 complete, 1 interrupted (1)", "memorization: 2 models: 2 complete"]


def test_describe_lists_at_most_eight_keys():
    status = {str(m): {"status": S.RUN_FAILED} for m in range(10)}
    line = GroupStatus("memorization", "model", status).describe()
    assert line == "memorization: 10 models: 10 failed (0, 1, 2, 3, 4, 5, 6, 7, ...)"


def test_info_shows_the_groups_and_json_adds_them_only_when_there_are_some(store, data):
    """``scorebank info`` prints one line per training group after the runs; ``--json`` gains
    ``groups`` only for a store that has some (other stores print what they always did)."""
    from typer.testing import CliRunner

    from scorebank.cli.main import app

    before = json.loads(CliRunner().invoke(app, ["info", str(store), "--json"]).output)
    assert "groups" not in before
    retrain(store, np.arange(100), "half", [0], overrides={"epochs": 1}, device="cpu", data=data)
    shown = CliRunner().invoke(app, ["info", str(store)])
    assert shown.exit_code == 0 and "retrain/half: 1 run: 1 complete" in shown.output
    after = json.loads(CliRunner().invoke(app, ["info", str(store), "--json"]).output)
    assert after["groups"] == [{"group": "retrain/half", "unit": "run",
                                "status": {"0": training_groups(store)[0].status["0"]}}]
    assert after["groups"][0]["status"]["0"]["status"] == S.RUN_COMPLETE
    assert {k: v for k, v in after.items() if k != "groups"} == before
