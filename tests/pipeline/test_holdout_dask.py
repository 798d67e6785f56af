"""Holdout folds and memorisation models as Dask tasks on a real process LocalCluster (2
workers, 1 thread each) on CPU: the group equals the sequential one bit for bit (values and
status table), every unit's epochs reach the client's one progress callback, a re-run skips
every unit, and a worker killed mid-fold is retried with the same result."""

import os
import signal

import numpy as np
import pytest
import zarr

from scorebank.pipeline.holdout import holdout
from scorebank.pipeline.memorization import memorization
from scorebank.stores import schema as S
from scorebank.stores.zarrstore import read_run_records

pytest.importorskip("distributed")

EPOCHS = 2
STORE_CONFIG = dict(epochs=EPOCHS, label_noise=0.2)  # ``config``; ``digits_store(config)``: copies of its store


@pytest.fixture
def client(process_client):
    """The session's process LocalCluster (tests/pipeline/conftest.py), both workers up."""
    process_client.wait_for_workers(2)
    return process_client


def assert_same_group(a, b, name: str, status_attr: str) -> None:
    """Every array of group ``name`` of stores ``a`` and ``b`` equal bit for bit, and the
    status tables equal."""
    groups = [zarr.open_group(p / name, mode="r") for p in (a, b)]
    got, ref = ({n: arr[...] for n, arr in g.arrays()} for g in groups)
    assert got.keys() == ref.keys()
    for n in ref:
        np.testing.assert_array_equal(got[n], ref[n], err_msg=n)
    assert groups[0].attrs[status_attr] == groups[1].attrs[status_attr]


def epoch_events(events) -> list[tuple]:
    return sorted((e.group, e.seed, e.epoch) for e in events if e.kind == "epoch")


def test_holdout_folds_as_tasks_equal_sequential(digits_store, config, data, client, one_thread):
    par, seq = digits_store(config, copy_to="w.zarr"), digits_store(config, copy_to="s.zarr")
    events = []
    outcomes = holdout(par, 2, [0, 1], device="cpu", client=client, progress=events.append)  # workers load the data
    holdout(seq, 2, [0, 1], device="cpu", data=data)
    assert [(o.seed, o.folds_trained, o.folds_skipped) for o in outcomes] == [(0, 2, 0), (1, 2, 0)]
    assert_same_group(par, seq, "holdout", "folds")
    status = zarr.open_group(par / "holdout").attrs["folds"]
    assert {k: v["status"] for k, v in status.items()} == {f"{s}/{k}": S.RUN_COMPLETE for s in (0, 1)
                                                           for k in range(2)}
    assert not np.isnan(zarr.open_group(par / "holdout")["probability"][...]).any()  # no fold's write lost
    # one aggregated view: every fold's every epoch reached the client's callback
    assert epoch_events(events) == [(f"holdout fold {k}", s, e) for k in range(2) for s in (0, 1)
                                    for e in range(EPOCHS + 1)]
    # each fold's status in its own record
    assert {k: v["status"] for k, v in read_run_records(par, "holdout/1").items()} == {
        str(k): S.RUN_COMPLETE for k in range(2)}
    again = holdout(par, 2, [0, 1], device="cpu", data=data, client=client)
    assert [(o.folds_trained, o.folds_skipped) for o in again] == [(0, 2), (0, 2)]


def test_memorization_models_as_tasks_equal_sequential(digits_store, config, data, client, one_thread):
    par, seq = digits_store(config, copy_to="w.zarr"), digits_store(config, copy_to="s.zarr")
    events = []
    outcome = memorization(par, 4, 0.7, device="cpu", data=data, client=client, progress=events.append)
    memorization(seq, 4, 0.7, device="cpu", data=data)
    assert (outcome.trained, outcome.skipped, outcome.failed) == (4, 0, ())
    assert_same_group(par, seq, "memorization", "models")
    assert zarr.open_group(par / "memorization")["completed"][...].tolist() == [True] * 4
    assert epoch_events(events) == [("memorization", m, e) for m in range(4) for e in range(EPOCHS + 1)]
    # more models: only the new ones are tasks
    more = memorization(par, 6, 0.7, device="cpu", data=data, client=client)
    assert (more.trained, more.skipped) == (2, 4)


def test_worker_killed_mid_fold_is_retried_and_equals_sequential(digits_store, tiny_config, data, client,
                                                                 one_thread):
    # folds long enough (about a second each) to be still training when the kill lands
    cfg = tiny_config(epochs=150, label_noise=0.2, record_epochs=(0, 150))
    par, seq = digits_store(cfg, copy_to="k.zarr"), digits_store(cfg, copy_to="s.zarr")
    pids = client.run(os.getpid)  # worker address -> pid
    seen, killed = [], []

    def kill_workers(event):
        seen.append(event)
        if killed or event.kind != "epoch" or event.epoch < 2:
            return
        killed.append((event.group, event.seed))
        for pid in pids.values():  # whichever worker trains that fold
            os.kill(pid, signal.SIGKILL)

    holdout(par, 2, [0], device="cpu", data=data, client=client, progress=kill_workers)
    assert killed, "the workers should have been killed"
    # the fold being trained was started again from scratch (folds keep no checkpoint)
    starts = [(e.group, e.seed) for e in seen if e.kind == "start"]
    assert starts.count(killed[0]) == 2, [e.describe() for e in seen if e.kind != "epoch"]
    holdout(seq, 2, [0], device="cpu", data=data)
    assert_same_group(par, seq, "holdout", "folds")
