"""Writing stores on object stores: ``scorebank score --store s3://...`` against a real
S3-compatible server (moto's server mode on 127.0.0.1, :mod:`tests.stores.s3server`), and
the lease rules of :mod:`scorebank.stores.objectstore` on fsspec's in-memory file system."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError, StoreExistsError, StoreLockedError, StoreNotFoundError
from scorebank.stores.location import open_scores
from scorebank.stores.objectstore import (CREATING, STORE_LEASE, Lease, LeaseLostError, ObjectLocation,
                                          create_object_store, is_object_store, lease_fresh)
from scorebank.stores.summary import summarize
from scorebank.stores.target import store_target

HERE = os.path.dirname(__file__)
sys.path.insert(0, HERE)
import s3server  # noqa: E402

BUCKET = "scores"
#: The command both stores are written with (1 torch thread: bit-identical values).
ARGS = ["--dataset", "digits", "--limit", "200", "--model", "mlp", "--width", "16", "--epochs", "4",
        "--batch-size", "16", "--seeds", "0-1", "--device", "cpu", "--quiet"]
CLI = [sys.executable, "-c", "import torch; torch.set_num_threads(1); from scorebank.cli.main import main; main()",
       "score", *ARGS]


@pytest.fixture(scope="module")
def s3():
    with s3server.start(BUCKET) as env:
        yield env


def _fs():
    import fsspec

    return fsspec.filesystem("s3")


def _values_equal(a, b) -> None:
    assert sorted(a.variables) == sorted(b.variables)
    for name in a.variables:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    skip = {S.ATTR_CREATED, S.ATTR_STORE_ID, S.ATTR_RUNS}
    assert {k: v for k, v in a.attrs.items() if k not in skip} == {k: v for k, v in b.attrs.items() if k not in skip}


def test_score_into_s3_killed_and_resumed_equals_a_local_store(s3, tmp_path):
    from scorebank.pipeline.config import resolve_config
    from scorebank.pipeline.scoring import score

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    url = f"s3://{BUCKET}/runs/killed.zarr"
    proc = subprocess.Popen(CLI + ["--store", url], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    fs, checkpoint = _fs(), f"{BUCKET}/runs/killed.zarr/checkpoints/run-0.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not fs.exists(checkpoint):
        fs.invalidate_cache()
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)  # the writer dies mid-run, holding its leases
    proc.wait()

    ds = open_scores(url)  # readable after kill -9
    done = ds.completed.values
    assert done[0, 0] and not done.all(), "the kill should land mid-run"
    statuses = {r.seed: r.status for r in summarize(ds).runs}
    assert statuses[0] == S.RUN_INTERRUPTED  # its owner's lease names a dead process of this host
    assert fs.exists(f"{BUCKET}/runs/killed.zarr/{STORE_LEASE}")  # left behind by the killed coordinator

    # resumed and the reference written in this process (no interpreter start-ups; one torch
    # thread, tests/conftest.py): the CLI's configuration (another one would be refused)
    config = resolve_config(dataset="digits", limit=200, model="mlp", width=16, epochs=4, batch_size=16)
    events = []
    score(config, (0, 1), url, device="cpu", progress=events.append)
    assert [(e.kind, e.seed) for e in events if e.kind in ("start", "resume")][0] == ("resume", 0)
    score(config, (0, 1), tmp_path / "ref.zarr", device="cpu")
    got = open_scores(url)
    _values_equal(open_scores(tmp_path / "ref.zarr"), got)
    assert got.completed.values.all()
    assert {r.status for r in summarize(got).runs} == {S.RUN_COMPLETE}
    fs.invalidate_cache()
    left = [p.rsplit("/", 1)[-1] for p in fs.find(f"{BUCKET}/runs/killed.zarr")
            if p.endswith((".owner", ".lease", ".creating"))]
    assert left == []  # every lease released, no creation marker
    assert fs.exists(checkpoint) and fs.exists(f"{BUCKET}/runs/killed.zarr/checkpoints/run-1.json")


def _lease_doc(host: str, pid: int, renewed: float, ttl: float = 60.0) -> bytes:
    return json.dumps({"token": "theirs", "host": host, "pid": pid, "renewed": renewed, "ttl": ttl,
                       "holder": "scorebank coordinator"}).encode()


def test_a_second_coordinator_is_refused_while_the_lease_is_fresh(s3, tiny_config):
    from scorebank.pipeline.scoring import score

    url = f"s3://{BUCKET}/runs/{uuid.uuid4().hex}.zarr"
    fs = _fs()
    lease = f"{url[len('s3://'):]}/{STORE_LEASE}"
    fs.pipe_file(lease, _lease_doc("another-host", 4242, time.time()))
    with pytest.raises(StoreLockedError, match=r"being written by another scorebank process; wait for it to "
                                               r"finish \(lease .* host 'another-host' pid 4242, renewed \d+ s ago; "
                                               r"it lapses 60 s after its last renewal\)"):
        score(tiny_config(epochs=1), (0,), url, device="cpu")
    assert not fs.exists(f"{url[len('s3://'):]}/zarr.json")  # nothing was created
    # the same lease, not renewed for more than its ttl: stale, taken over
    fs.pipe_file(lease, _lease_doc("another-host", 4242, time.time() - 61))
    outcomes = score(tiny_config(epochs=1), (0,), url, device="cpu")
    assert [o.status for o in outcomes] == [S.RUN_COMPLETE]
    assert not fs.exists(lease)


def test_the_cli_refuses_in_one_line_with_exit_status_1(s3):
    from typer.testing import CliRunner

    from scorebank.cli.main import app

    url = f"s3://{BUCKET}/runs/{uuid.uuid4().hex}.zarr"
    _fs().pipe_file(f"{url[len('s3://'):]}/{STORE_LEASE}", _lease_doc("another-host", 4242, time.time()))
    out = CliRunner().invoke(app, ["score", *ARGS, "--epochs", "1", "--store", url])
    assert out.exit_code == 1, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: store ") and "another-host" in lines[0], out.output


# ------------------------------------------------------------------------------ memory://, no server
@pytest.fixture
def place():
    return ObjectLocation(f"memory://scorebank-tests/{uuid.uuid4().hex}.zarr")


def _lease(place, **kw) -> Lease:
    return Lease(place, STORE_LEASE, holder="test", busy="busy", **kw)


def test_a_fresh_lease_refuses_others_until_released(place):
    first = _lease(place).acquire()
    with pytest.raises(StoreLockedError, match="^busy "):
        _lease(place).acquire()
    first.release()
    assert place.read(STORE_LEASE) is None
    with _lease(place) as second:
        assert place.read_json(STORE_LEASE)["token"] == second.token


def test_a_lease_of_a_dead_process_on_this_host_is_stale_at_once(place):
    from scorebank.stores.partial import writer_tag

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    host, _ = writer_tag()
    place.write(STORE_LEASE, _lease_doc(host, int(dead), time.time()))
    assert not lease_fresh(place.read_json(STORE_LEASE))
    place.write(STORE_LEASE, _lease_doc(host, os.getpid(), time.time()))
    assert lease_fresh(place.read_json(STORE_LEASE))
    place.write(STORE_LEASE, _lease_doc("elsewhere", int(dead), time.time() - 30, ttl=20))
    assert not lease_fresh(place.read_json(STORE_LEASE))
    with _lease(place):
        pass


def test_a_holder_whose_lease_was_taken_over_stops_writing(place):
    lease = _lease(place).acquire()
    try:
        lease.check()
        place.write(STORE_LEASE, _lease_doc("elsewhere", 1, time.time()))  # taken over meanwhile
        lease.renew()
        with pytest.raises(LeaseLostError, match="lost its lease"):
            lease.check()
    finally:
        lease.release()
    assert place.read_json(STORE_LEASE)["token"] == "theirs"  # release leaves someone else's lease alone


def test_a_holder_that_cannot_renew_stops_before_its_lease_lapses(place, monkeypatch):
    lease = _lease(place, ttl=2).acquire()
    try:
        lease._stop.set()  # no renewals from now on (a network outage, a paused process)
        lease._thread.join()
        lease.check()
        time.sleep(1.6)  # > 0.75 * ttl, < ttl: nobody may take it over yet, and it stops already
        with pytest.raises(LeaseLostError, match="lost its lease"):
            lease.check()
    finally:
        lease.release()


def test_a_waiting_owner_takes_the_lease_once_it_lapses(place, monkeypatch):
    import scorebank.stores.objectstore as objectstore

    monkeypatch.setattr(objectstore, "POLL_SECONDS", 0.05)
    place.write(STORE_LEASE, _lease_doc("elsewhere", 1, time.time() - 59.7))
    start = time.monotonic()
    with _lease(place, wait=True):
        waited = time.monotonic() - start
    assert 0.1 < waited < 5


def _create_args(n: int = 5) -> dict:
    return dict(n_epochs=2, labels=np.arange(n) % 2, true_labels=np.arange(n) % 2, original_index=np.arange(n),
                seeds=(0,), features=frozenset(), attrs={S.ATTR_CONFIG: "{}"})


def test_creation_is_atomic_and_a_killed_one_is_cleaned_up(place, monkeypatch):
    real_write = ObjectLocation.write

    def dies_before_the_root_metadata(self, name, data):
        if name == "zarr.json":
            raise KeyboardInterrupt
        real_write(self, name, data)

    monkeypatch.setattr(ObjectLocation, "write", dies_before_the_root_metadata)
    with pytest.raises(KeyboardInterrupt):
        create_object_store(place, **_create_args(7))
    monkeypatch.undo()
    left = place.names()
    assert CREATING in left and "label/zarr.json" in left and "zarr.json" not in left
    assert not is_object_store(place)
    with pytest.raises(StoreNotFoundError):
        open_scores(place.url)
    create_object_store(place, **_create_args(5))  # the marker says the leftovers are scorebank's
    assert is_object_store(place) and CREATING not in place.names()
    np.testing.assert_array_equal(open_scores(place.url, complete=False).label.values, np.arange(5) % 2)


def test_objects_that_are_not_a_store_are_never_replaced(place):
    place.write("data/thesis.pdf", b"%PDF")
    with pytest.raises(StoreExistsError, match="not a scorebank store"):
        create_object_store(place, **_create_args())
    assert place.read("data/thesis.pdf") == b"%PDF"


def test_archives_and_read_only_urls_are_not_write_targets():
    with pytest.raises(InvalidArgumentError, match="not into an archive or a read-only URL"):
        store_target("s3://bucket/scores.scorebank.zip")
    with pytest.raises(InvalidArgumentError, match="not into an archive or a read-only URL"):
        store_target("https://example.org/scores.zarr")
    assert type(store_target("file:///tmp/x.zarr")).__name__ == "LocalTarget"
    from scorebank.stores.zarrstore import require_store_directory

    with pytest.raises(InvalidArgumentError, match=r"retraining writes into a local store, and 's3://b/x.zarr' is "
                                                   r"on an object store \(only 'scorebank score' writes there\)"):
        require_store_directory("s3://b/x.zarr", "retraining")


def test_live_runs_show_a_running_run_without_a_fresh_lease_as_interrupted(place):
    from scorebank.stores.objectstore import object_live_runs, run_object_name

    attr = {"0": {"status": S.RUN_PENDING}, "1": {"status": S.RUN_PENDING}, "2": {"status": S.RUN_COMPLETE}}
    for seed in (0, 1):
        place.write(run_object_name(seed, None, "json"), json.dumps({"status": S.RUN_RUNNING, "epoch": 3}).encode())
    place.write(run_object_name(0, None, "owner"), _lease_doc("elsewhere", 1, time.time()))
    place.write(run_object_name(1, None, "owner"), _lease_doc("elsewhere", 1, time.time() - 61))
    runs = object_live_runs(place.url, attr)
    assert runs == {"0": {"status": S.RUN_RUNNING, "epoch": 3}, "1": {"status": S.RUN_INTERRUPTED, "epoch": 3},
                    "2": {"status": S.RUN_COMPLETE}}


@pytest.mark.parametrize("value", ["0", "abc", "1e9"])
def test_the_lease_time_from_the_environment_is_checked(monkeypatch, value):
    from scorebank.stores.objectstore import lease_seconds

    monkeypatch.setenv("SCOREBANK_LEASE_SECONDS", value)
    with pytest.raises(InvalidArgumentError, match=f"SCOREBANK_LEASE_SECONDS={value!r} is not a number of seconds"):
        lease_seconds()
    monkeypatch.setenv("SCOREBANK_LEASE_SECONDS", "5")
    assert lease_seconds() == 5.0


def test_overwrite_new_seeds_and_mismatch_on_an_object_store(place, tiny_config):
    from scorebank.pipeline.scoring import score
    from scorebank.stores.errors import ConfigMismatchError

    cfg = tiny_config(epochs=1)
    score(cfg, (0,), place.url, device="cpu")
    first = open_scores(place.url).margin.values[0].copy()
    with pytest.raises(ConfigMismatchError, match="lr: store has 0.05, asked 0.1"):
        score(tiny_config(epochs=1, lr=0.1), (0,), place.url, device="cpu")
    score(cfg, (0, 3), place.url, device="cpu")  # seed 0 skipped, seed 3 added
    ds = open_scores(place.url)
    assert ds.run.values.tolist() == [0, 3] and ds.completed.values.all()
    np.testing.assert_array_equal(ds.margin.values[0], first)
    assert place.read("checkpoints/run-3.pt") is not None
    score(tiny_config(epochs=1, lr=0.1), (2,), place.url, device="cpu", overwrite=True)
    ds = open_scores(place.url)
    assert ds.run.values.tolist() == [2] and place.read("checkpoints/run-3.pt") is None
    assert [n for n in place.names() if n.endswith((".lease", ".owner", ".creating"))] == []


# ------------------------------------------------------------------------------ review fixes
@pytest.mark.parametrize("url", ["s3://", "gs://", "memory://", "s3:///runs/x.zarr"])
def test_a_url_without_a_bucket_is_refused_not_written_as_a_local_path(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # 's3://' stripped to 's3:' was a relative local path
    with pytest.raises(InvalidArgumentError, match=r"names no bucket; give the store as \w+://BUCKET/PREFIX"):
        store_target(url)
    assert list(tmp_path.iterdir()) == []


def test_a_conditional_replace_of_an_object_seen_missing_writes_nothing(s3):
    place = ObjectLocation(f"s3://{BUCKET}/runs/{uuid.uuid4().hex}.zarr")
    assert place.version(STORE_LEASE) is None  # looked at while missing ...
    place.write(STORE_LEASE, b"theirs")  # ... then somebody took it
    assert place.replace(STORE_LEASE, b"mine", None) is False  # no unconditional PUT over theirs
    assert place.read(STORE_LEASE) == b"theirs"
    version = place.version(STORE_LEASE)
    place.write(STORE_LEASE, b"renewed")
    assert place.replace(STORE_LEASE, b"mine", version) is False  # If-Match on a changed ETag
    assert place.replace(STORE_LEASE, b"mine", place.version(STORE_LEASE)) is True
    assert place.read(STORE_LEASE) == b"mine"


def test_a_fenced_run_owner_does_not_replace_its_checkpoint(place):
    from scorebank.stores.objectstore import ObjectRunWriter, run_object_name

    create_object_store(place, **_create_args())
    with ObjectRunWriter(place, 0) as run:
        run.checkpoint.write_bytes(b"epoch 0")
        run._lease.lost = True  # its lease lapsed (or was taken over) while it was busy
        with pytest.raises(LeaseLostError, match="lost its lease"):
            run.checkpoint.write_bytes(b"epoch 1")
        with pytest.raises(LeaseLostError):
            run.set_status(S.RUN_COMPLETE)
    assert place.read(run_object_name(0, None, "pt")) == b"epoch 0"
    assert place.read(run_object_name(0, None, "json")) is None


def test_a_fenced_coordinator_writes_no_metadata(place):
    from scorebank.stores.objectstore import ObjectStoreWriter, run_object_name

    create_object_store(place, **_create_args())
    place.write(run_object_name(0, None, "json"), json.dumps({"status": S.RUN_COMPLETE}).encode())
    before = {n: place.read(n) for n in place.names() if n.endswith("zarr.json")}
    with ObjectStoreWriter(place) as writer:
        writer._lease.lost = True
        with pytest.raises(LeaseLostError):
            writer.add_runs((0, 5))  # would resize every run array and rewrite the runs attribute
        with pytest.raises(LeaseLostError):
            writer.consolidate_runs()
        with pytest.raises(LeaseLostError):
            writer.set_run_status(0, S.RUN_FAILED)
        with pytest.raises(LeaseLostError):
            writer.checkpoint_path(0).write_bytes(b"state")
    assert place.read(run_object_name(0, None, "pt")) is None
    assert {n: place.read(n) for n in place.names() if n.endswith("zarr.json")} == before


def test_a_network_error_mid_run_is_one_line_and_the_store_resumes(place, tiny_config, monkeypatch):
    from zarr.storage import FsspecStore

    from scorebank.pipeline.scoring import score
    from scorebank.stores.remote import RemoteStoreError

    cfg = tiny_config(epochs=2)
    real_set, margins = FsspecStore.set, []

    async def connection_drops(self, key, value, *args, **kwargs):
        if key.startswith(f"{S.MARGIN}/c"):
            margins.append(key)
            if len(margins) > 2:  # epochs 0 and 1 of seed 0 written, epoch 2 not
                raise ConnectionResetError(104, "Connection reset by peer")
        return await real_set(self, key, value, *args, **kwargs)

    monkeypatch.setattr(FsspecStore, "set", connection_drops)
    with pytest.raises(RemoteStoreError, match=rf"^could not write epoch 2 of run seed 0 to {place.url!r} "
                                               r"\(ConnectionResetError: .*Connection reset by peer\); the store is "
                                               r"left resumable, run the same command again$"):
        score(cfg, (0, 1), place.url, device="cpu")
    monkeypatch.undo()
    ds = open_scores(place.url, complete=False)
    assert ds.completed.values.tolist() == [[True, True, False], [False, False, False]]
    assert {r.seed: r.status for r in summarize(ds).runs} == {0: S.RUN_INTERRUPTED, 1: S.RUN_PENDING}
    assert [n for n in place.names() if n.endswith((".lease", ".owner"))] == []
    score(cfg, (0, 1), place.url, device="cpu")
    reference = ObjectLocation(f"memory://scorebank-tests/{uuid.uuid4().hex}.zarr").url
    score(cfg, (0, 1), reference, device="cpu")
    _values_equal(open_scores(reference), open_scores(place.url))


def test_a_fenced_holder_leaves_its_lease_to_lapse(place):
    lease = _lease(place, ttl=0.2).acquire()
    lease.lost = True  # e.g. not renewed for 0.75 of the ttl: someone may be taking it over now
    lease.release()
    assert place.read_json(STORE_LEASE)["token"] == lease.token  # not deleted under a possible taker
    time.sleep(0.25)
    with _lease(place, ttl=30) as healthy:  # stale by now: taken over
        pass
    assert place.read(STORE_LEASE) is None and healthy.lost is False  # a healthy holder deletes its own


def test_a_run_owner_that_fails_to_open_the_store_leaves_no_lease(place, monkeypatch):
    import zarr

    from scorebank.stores.objectstore import ObjectRunWriter

    create_object_store(place, **_create_args())

    def unreachable(*args, **kwargs):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(zarr, "open_group", unreachable)
    with pytest.raises(ConnectionError):
        ObjectRunWriter(place, 0).__enter__()
    assert [n for n in place.names() if n.endswith(".owner")] == []


def test_a_store_whose_run_is_still_being_written_is_not_removed(place):
    from scorebank.stores.objectstore import remove_object_store, run_object_name

    create_object_store(place, **_create_args())
    owner = run_object_name(0, None, "owner")
    place.write(owner, _lease_doc("worker-host", 7, time.time()))  # a task of a lost client, still running
    with pytest.raises(StoreLockedError, match=rf"refusing to delete {place.url!r}: its run lease {owner!r} is held"):
        remove_object_store(place)
    assert is_object_store(place) and CREATING not in place.names()
    place.write(owner, _lease_doc("worker-host", 7, time.time() - 61))  # lapsed: the task is gone
    remove_object_store(place)
    assert place.names() == []


def test_an_object_another_process_wrote_after_a_listing_is_read(s3):
    import boto3

    place = ObjectLocation(f"s3://{BUCKET}/runs/{uuid.uuid4().hex}.zarr")
    place.write("checkpoints/run-0.json", b"{}")
    assert place.names() == ["checkpoints/run-0.json"]  # s3fs caches the listing of checkpoints/
    key = place.url[len(f"s3://{BUCKET}/"):] + "/checkpoints/run-1.json"
    boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"]).put_object(Bucket=BUCKET, Key=key, Body=b"{}")
    assert place.read("checkpoints/run-1.json") == b"{}"  # a worker's record, not "missing"


def test_an_unreachable_endpoint_is_one_line_saying_what_to_check(monkeypatch):
    s3fs = pytest.importorskip("s3fs")
    from scorebank.stores.remote import RemoteStoreError

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{s3server._free_port()}")  # nobody listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(RemoteStoreError, match=r"^could not read 's3://scores/x.zarr': EndpointConnectionError: "
                                                   r".*; check the URL, the network, the endpoint \(AWS_ENDPOINT_URL "
                                                   r"for an S3-compatible server\) and the credentials$"):
            store_target("s3://scores/x.zarr", {"config_kwargs": {"retries": {"max_attempts": 1}}}).exists()
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_a_coordinator_that_loses_its_lease_while_uploading_makes_no_store(place, monkeypatch):
    lease = _lease(place).acquire()
    real_write_many = ObjectLocation.write_many

    def slow_upload(self, objects):
        real_write_many(self, objects)
        lease.lost = True  # the upload outlasted 0.75 of the ttl

    monkeypatch.setattr(ObjectLocation, "write_many", slow_upload)
    try:
        with pytest.raises(LeaseLostError):
            create_object_store(place, lease=lease, **_create_args())
    finally:
        lease.release()
    assert not is_object_store(place) and CREATING in place.names()  # leftovers the next creation removes


def test_the_fence_counts_from_before_the_lease_was_written(place, monkeypatch):
    import scorebank.stores.objectstore as objectstore

    monkeypatch.setattr(objectstore, "SETTLE_SECONDS", 0.3)  # memory:// has no conditional writes: read-back
    before = time.monotonic()
    lease = _lease(place, ttl=60).acquire()
    try:
        assert before <= lease._renewed <= before + 0.3 <= time.monotonic()
    finally:
        lease.release()
