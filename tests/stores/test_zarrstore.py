import os

import numpy as np
import pytest
import xarray as xr
import zarr

from scorebank.stores import schema as S
from scorebank.stores.errors import StoreExistsError, StoreLockedError, StoreNotFoundError
from scorebank.stores.location import open_scores
from scorebank.stores.zarrstore import (StoreWriteError, StoreWriter, atomic_file, create_store, remove_store,
                                       writer_active)


def make(path, n=5, epochs=3, seeds=(0, 1), features=frozenset()):
    labels = np.arange(n) % 3
    create_store(path, n_epochs=epochs, labels=labels, true_labels=labels, original_index=np.arange(n) * 10,
                 seeds=seeds, features=features, attrs={S.ATTR_CONFIG: "{}"})


def test_new_store_reads_nan_and_false(tmp_path):
    make(tmp_path / "s.zarr", features=frozenset({S.FEATURE_GRAND}))
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert np.isnan(ds.margin.values).all() and np.isnan(ds.grand.values).all()
    assert np.isnan(ds.norm_product.values).all()
    assert not ds.completed.values.any() and not ds.correct.values.any()
    assert ds.original_index.values.tolist() == [0, 10, 20, 30, 40]
    assert ds.label.values.tolist() == [0, 1, 2, 0, 1]
    assert ds.margin.encoding["chunks"] == (1, 1, 5)


def test_creation_is_atomic(tmp_path, monkeypatch):
    import scorebank.stores.create as zs

    def boom(path):
        raise RuntimeError("disk full")

    monkeypatch.setattr(zs, "consolidate", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        make(tmp_path / "s.zarr")
    assert list(tmp_path.iterdir()) == []  # neither the store nor a partial directory


def test_write_epoch_touches_only_that_epochs_chunks(tmp_path):
    path = tmp_path / "s.zarr"
    make(path, n=4, epochs=5)
    with StoreWriter(path) as w:
        w.write_epoch(1, 2, {S.MARGIN: np.arange(4, dtype="f4")}, {S.TEST_ACCURACY: 0.5})
        before = {p: p.stat().st_mtime_ns for p in path.rglob("c/*/*/*")}
        w.write_epoch(1, 3, {S.MARGIN: np.ones(4, dtype="f4")}, {S.TEST_ACCURACY: 0.75})
    after = {p: p.stat().st_mtime_ns for p in path.rglob("c/*/*/*")}
    new_or_changed = {p.relative_to(path).as_posix() for p in after if before.get(p) != after[p]}
    assert new_or_changed == {"margin/c/1/3/0"}  # per-example chunks of epoch 3 only
    ds = xr.open_zarr(path)
    assert ds.margin.values[1, 2].tolist() == [0, 1, 2, 3]
    assert ds.test_accuracy.values[1].tolist()[2:4] == [0.5, 0.75]
    assert ds.completed.values[1].tolist() == [False, False, True, True, False, False]


def test_lock_refuses_second_writer(tmp_path):
    make(tmp_path / "s.zarr")
    with StoreWriter(tmp_path / "s.zarr"):
        with pytest.raises(StoreLockedError, match="another scorebank process"):
            with StoreWriter(tmp_path / "s.zarr"):
                pass
    with StoreWriter(tmp_path / "s.zarr"):  # released
        pass


def test_remove_store_refuses_a_store_being_written_and_leaves_nothing(tmp_path):
    make(tmp_path / "s.zarr")
    with StoreWriter(tmp_path / "s.zarr"):
        with pytest.raises(StoreLockedError, match="another scorebank process"):
            remove_store(tmp_path / "s.zarr")
        assert open_scores(tmp_path / "s.zarr").sizes["run"] == 2
    remove_store(tmp_path / "s.zarr")
    assert os.listdir(tmp_path) == []


def test_add_runs_and_status(tmp_path):
    path = tmp_path / "s.zarr"
    make(path, seeds=(3,))
    with StoreWriter(path) as w:
        w.write_epoch(3, 0, {S.LOSS: np.full(5, 2.0, "f4")}, {})
        w.add_runs((3, 7, 9))
        w.write_epoch(9, 1, {S.LOSS: np.full(5, 1.0, "f4")}, {})
        w.set_run_status(7, S.RUN_FAILED, failed_epoch=1)
    ds = open_scores(path)
    assert ds.run.values.tolist() == [3, 7, 9]
    assert ds.loss.values[0, 0].tolist() == [2.0] * 5 and ds.loss.values[2, 1].tolist() == [1.0] * 5
    assert np.isnan(ds.loss.values[1]).all()
    assert ds.attrs["runs"] == {"3": {"status": "pending"}, "7": {"status": "failed", "failed_epoch": 1},
                                "9": {"status": "pending"}}


def test_foreign_paths_are_not_touched(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.txt").write_text("keep")
    with pytest.raises(StoreExistsError, match="not a scorebank store"):
        remove_store(tmp_path / "data")
    with pytest.raises(StoreExistsError, match="already exists"):
        make(tmp_path / "data")
    assert (tmp_path / "data" / "x.txt").read_text() == "keep"
    with pytest.raises(StoreNotFoundError):
        StoreWriter(tmp_path / "data")
    zarr.open_group(tmp_path / "plain.zarr", mode="w", zarr_format=3)
    with pytest.raises(StoreNotFoundError, match="not a scorebank store"):
        open_scores(tmp_path / "plain.zarr")
    with pytest.raises(StoreNotFoundError, match="no scorebank store"):
        open_scores(tmp_path / "absent")


def test_lock_taken_on_a_store_replaced_meanwhile_is_refused(tmp_path, monkeypatch):
    """The lock file is opened, then another process replaces the store (remove + create)
    before flock: the lock held is the old store's, so the writer must not go on."""
    import scorebank.stores.zarrstore as zs

    path = tmp_path / "s.zarr"
    make(path)
    real_flock = zs.fcntl.flock
    replaced = []

    def flock(f, op):
        if not replaced and op & zs.fcntl.LOCK_EX:
            replaced.append(True)
            remove_store(path)
            make(path, seeds=(7,))
        return real_flock(f, op)

    monkeypatch.setattr(zs.fcntl, "flock", flock)
    with pytest.raises(StoreLockedError, match="was replaced by another scorebank process"):
        with StoreWriter(path):
            pass
    with StoreWriter(path) as writer:  # the next attempt locks the new store
        assert writer.seeds == (7,)


def test_writer_sees_the_store_as_it_is_under_the_lock(tmp_path):
    path = tmp_path / "s.zarr"
    make(path)
    writer = StoreWriter(path)
    with StoreWriter(path) as other:
        other.add_runs((0, 1, 2))
    with writer:
        assert writer.seeds == (0, 1, 2)


def test_atomic_file_turns_write_failures_into_one_line_errors(tmp_path):
    target = tmp_path / "ck.pt"
    target.write_bytes(b"old")
    with pytest.raises(StoreWriteError) as info:
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("PytorchStreamWriter failed writing file data/0:\nNo space left on device")
    assert str(info.value).startswith(f"could not write {str(target)!r}: PytorchStreamWriter failed writing file "
                                      "data/0: No space left on device;")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["ck.pt"]
    with pytest.raises(StoreWriteError, match="Permission denied"):
        with atomic_file(target):
            raise PermissionError(13, "Permission denied")


def test_writer_active_only_while_a_writer_holds_the_lock(tmp_path):
    path = tmp_path / "s.zarr"
    make(path)
    assert not writer_active(path)  # no lock file yet
    with StoreWriter(path):
        assert writer_active(path)
    assert not writer_active(path)
    with StoreWriter(path):  # probing does not disturb the writer's lock
        writer_active(path)
        with pytest.raises(StoreLockedError):
            StoreWriter(path).__enter__()


def test_run_writer_owns_its_run_and_a_lost_owner_reads_as_interrupted(tmp_path):
    from scorebank.stores.summary import summarize
    from scorebank.stores.zarrstore import RunWriter, live_runs, read_run_records, run_owner_active

    path = tmp_path / "s.zarr"
    make(path)
    values = {S.MARGIN: np.arange(5, dtype=np.float32)}
    with RunWriter(path, 1) as run:
        run.set_status(S.RUN_RUNNING, device="cpu")
        run.write_epoch(0, values, {S.TEST_ACCURACY: 0.5})
        run.write_epoch(1, values, {S.TEST_ACCURACY: 0.75})
        assert run_owner_active(path, 1) and not run_owner_active(path, 0)
        with pytest.raises(StoreLockedError, match="run seed 1 of store"):
            RunWriter(path, 1).__enter__()
        assert live_runs(path)["1"] == {"status": S.RUN_RUNNING, "device": "cpu"}
        assert live_runs(path)["0"] == {"status": S.RUN_PENDING}
    # the owner is gone with the run still 'running' (as after kill -9): readers say interrupted
    assert read_run_records(path) == {"1": {"status": S.RUN_RUNNING, "device": "cpu"}}
    assert live_runs(path)["1"] == {"status": S.RUN_INTERRUPTED, "device": "cpu"}
    assert zarr.open_group(path, mode="r").attrs[S.ATTR_RUNS]["1"] == {"status": S.RUN_PENDING}  # not consolidated
    summary = summarize(open_scores(path, complete=False))
    assert [(r.seed, r.status, r.last_epoch) for r in summary.runs] == [(0, S.RUN_PENDING, None),
                                                                        (1, S.RUN_INTERRUPTED, 1)]
    # only this run's chunks were written
    got = zarr.open_group(path, mode="r")
    np.testing.assert_array_equal(got[S.MARGIN][1, :2], [values[S.MARGIN]] * 2)
    assert np.isnan(got[S.MARGIN][0]).all() and not got[S.COMPLETED][0].any()
    with StoreWriter(path) as writer:
        runs = writer.consolidate_runs()
    assert runs == {"0": {"status": S.RUN_PENDING}, "1": {"status": S.RUN_INTERRUPTED, "device": "cpu"}}
    assert xr.open_zarr(path).attrs[S.ATTR_RUNS] == runs  # consolidated metadata too


def test_run_writer_refuses_a_run_the_coordinator_did_not_allocate(tmp_path):
    from scorebank.stores.errors import InvalidArgumentError
    from scorebank.stores.zarrstore import RunWriter, run_owner_active

    make(tmp_path / "s.zarr")
    with pytest.raises(InvalidArgumentError, match="has no run seed 7; the coordinator allocates runs first"):
        RunWriter(tmp_path / "s.zarr", 7).__enter__()
    assert not run_owner_active(tmp_path / "s.zarr", 7)  # the refused writer let its lock go
