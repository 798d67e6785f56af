"""Runs as Dask tasks on a real process LocalCluster (2 workers, 1 thread each) on CPU: the
store equals the sequential one bit for bit, also after a worker is killed mid-run."""

import os
import signal

import numpy as np
import pytest
import zarr

from scorebank.pipeline.scoring import score
from scorebank.stores import schema as S
from scorebank.stores.errors import StoreLockedError
from scorebank.stores.zarrstore import StoreWriter, read_run_records

distributed = pytest.importorskip("distributed")


@pytest.fixture
def client(process_client):
    """The session's process LocalCluster (tests/pipeline/conftest.py; ``one_thread`` too)."""
    return process_client


def arrays(path) -> dict[str, np.ndarray]:
    group = zarr.open_group(path, mode="r")
    return {name: arr[...] for name, arr in group.arrays()}


def assert_same_store(a, b) -> None:
    got, ref = arrays(a), arrays(b)
    assert got.keys() == ref.keys()
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    runs = [zarr.open_group(p, mode="r").attrs[S.ATTR_RUNS] for p in (a, b)]
    assert runs[0] == runs[1]


def test_workers_equal_sequential_bit_for_bit(tmp_path, tiny_config, client, one_thread):
    cfg = tiny_config(epochs=3)
    events = []
    outcomes = score(cfg, (0, 1, 2, 3), tmp_path / "w.zarr", device="cpu", client=client, progress=events.append)
    score(cfg, (0, 1, 2, 3), tmp_path / "s.zarr", device="cpu")
    assert_same_store(tmp_path / "w.zarr", tmp_path / "s.zarr")
    assert [o.seed for o in outcomes] == [0, 1, 2, 3] and not any(o.skipped for o in outcomes)
    # one aggregated view: every run's every epoch reached the client's callback
    epochs = sorted((e.seed, e.epoch) for e in events if e.kind == "epoch")
    assert epochs == [(s, e) for s in range(4) for e in range(4)]
    # each run's status in its own record; the coordinator consolidated them into `runs`
    records = read_run_records(tmp_path / "w.zarr")
    assert {k: v["status"] for k, v in records.items()} == {str(s): S.RUN_COMPLETE for s in range(4)}
    # re-running the same command skips every run
    again = score(cfg, (0, 1, 2, 3), tmp_path / "w.zarr", device="cpu", client=client)
    assert all(o.skipped for o in again)


def test_worker_killed_mid_run_is_retried_and_resumes(tmp_path, tiny_config, client, one_thread):
    cfg = tiny_config(epochs=30)
    pids = client.run(os.getpid)  # worker address -> pid
    seen, killed = [], []

    def kill_first_busy_worker(event):
        seen.append(event)
        if killed or event.kind != "epoch" or event.epoch < 2:
            return
        for address, keys in client.processing().items():
            if keys and address in pids:
                os.kill(pids[address], signal.SIGKILL)
                killed.append(address)
                return

    score(cfg, (0, 1, 2, 3), tmp_path / "k.zarr", device="cpu", client=client, progress=kill_first_busy_worker)
    assert killed, "a worker should have been killed"
    # a run started again after the kill: from its checkpoint (resume) or, killed before its
    # first checkpoint, from the start
    again = [e for e in seen if e.kind == "resume"]
    starts = [e.seed for e in seen if e.kind == "start"]
    assert again or len(starts) > len(set(starts)), [e.describe() for e in seen]
    score(cfg, (0, 1, 2, 3), tmp_path / "s.zarr", device="cpu")
    assert_same_store(tmp_path / "k.zarr", tmp_path / "s.zarr")


def test_a_second_coordinator_is_refused_in_one_line(tmp_path, tiny_config, client):
    cfg = tiny_config(epochs=1)
    path = tmp_path / "c.zarr"
    score(cfg, (0,), path, device="cpu")
    with StoreWriter(path):  # the first coordinator holds the store's lock
        with pytest.raises(StoreLockedError, match="being written by another scorebank process"):
            score(cfg, (0, 1), path, device="cpu", client=client)


def test_prune_curve_cells_as_tasks_equal_sequential(tmp_path, tiny_config, client, one_thread):
    import shutil

    from scorebank.pipeline.prune_curve import prune_curve

    base = tmp_path / "base.zarr"
    score(tiny_config(epochs=2), (0,), base, device="cpu")
    shutil.copytree(base, tmp_path / "seq.zarr")
    kwargs = dict(score="el2n@1", strategies=["keep-highest", "random"], seeds=(0, 1), fractions=[0.5],
                  overrides={"epochs": 2}, device="cpu")
    events = []
    par = prune_curve(base, client=client, progress=events.append, **kwargs)
    seq = prune_curve(tmp_path / "seq.zarr", **kwargs)
    assert [r.accuracies for r in par.rows] == [r.accuracies for r in seq.rows]
    assert {(e.cell, e.event.seed) for e in events if e.event.kind == "epoch"} == {(c, s) for c in (0, 1)
                                                                                   for s in (0, 1)}
    for group in ("retrain/" + r.group for r in seq.rows):
        assert_same_store(base / group, tmp_path / "seq.zarr" / group)


def test_easy_hard_networks_as_tasks_equal_sequential(tmp_path, tiny_config, client, one_thread):
    import shutil

    from scorebank.pipeline.easyhard import easy_hard

    base = tmp_path / "base.zarr"
    score(tiny_config(limit=300, width=32, epochs=4), (0,), base, device="cpu")
    shutil.copytree(base, tmp_path / "seq.zarr")
    kwargs = dict(seeds=(0, 1), threshold=0.5, run=0, test_fraction=0.2, overrides={"epochs": 2}, device="cpu")
    events = []
    par = easy_hard(base, client=client, progress=events.append, **kwargs)
    seq = easy_hard(tmp_path / "seq.zarr", **kwargs)
    np.testing.assert_array_equal(par["accuracy"].values, seq["accuracy"].values)
    assert {(e.group.rsplit("/", 1)[1], e.seed) for e in events if e.kind == "epoch"} == {
        (g, s) for g in ("easy-train", "hard-train") for s in (0, 1)}
