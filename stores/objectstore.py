"""Writing a score store on an object store (``s3://``, ``gs://``, ``memory://``, any fsspec
URL that is not ``file://``) through zarr's ``FsspecStore``.

An object store has no ``flock`` and no rename, so the local rules
(:mod:`scorebank.stores.zarrstore`) are carried over with *leases*, small JSON objects::

    {"token": <random hex>, "host": ..., "pid": ..., "renewed": <unix time>, "ttl": <seconds>, "holder": ...}

* **Coordinator.** The command's process takes the store lease ``.scorebank.lease`` (under
  the store's prefix, beside ``zarr.json``) before it creates, replaces or extends the store,
  and holds it for the whole command: it creates the store, allocates the runs and
  consolidates the per-run records into the ``runs`` attribute at the end.  A second
  coordinator is refused in one line while that lease is fresh.
* **Runs.** The coordinator assigns each run to exactly one task; the task owns the run by
  taking its lease ``checkpoints/[GROUP/]run-SEED.owner`` (a task retried after its worker was
  killed waits for the dead owner's lease to lapse), then writes only the run's own chunks,
  its record ``checkpoints/run-SEED.json`` and its checkpoint ``checkpoints/run-SEED.pt``
  (each one PUT, so each is replaced whole).
* **Fresh and stale.** The holder renews its lease every ``ttl / 4`` seconds (a thread).  A
  lease is stale when it was last renewed more than ``ttl`` seconds ago by the reader's clock
  (clocks of the machines involved must agree to within a few seconds), or at once when it
  names this host and a process id that no longer runs (``kill -9`` on this machine).
  ``ttl`` is :data:`LEASE_SECONDS` (environment ``SCOREBANK_LEASE_SECONDS``).
* **Taking a lease** is a conditional write: create-if-absent (``If-None-Match: *``) for a
  missing lease and replace-if-unchanged (``If-Match: ETAG``) for a stale one, on S3 (and
  S3-compatible servers that implement them).  On other object stores the write is followed
  by a read-back after :data:`SETTLE_SECONDS`: the writer whose token is then there owns it
  (a best effort: two takers within that window can both believe they won).  A holder whose
  renewal finds another token, or that could not renew for ``0.75 * ttl``
  (:data:`FENCE_FRACTION`), stops writing before its next write (:class:`LeaseLostError`).
* **Creation is atomic from readers' view**: the store is built in a local temporary
  directory (:func:`scorebank.stores.create.create_store`), uploaded with the root
  ``zarr.json`` last; until then the prefix holds no store.  A marker ``.scorebank.creating``
  is written first and removed last, so leftovers of a killed creation (or removal) are told
  apart from somebody else's objects and removed by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import zarr
from zarr.core.sync import sync

from scorebank.stores import schema as S
from scorebank.stores.create import consolidate, create_store
from scorebank.stores.errors import InvalidArgumentError, ScorebankError, StoreExistsError, StoreLockedError, \
    StoreNotFoundError
from scorebank.stores.partial import writer_gone, writer_tag
from scorebank.stores.remote import (REMOTE_HINT, RemoteStoreError, filesystem, remote_store, translate_remote_errors,
                                     url_scheme)
from scorebank.stores.zarrstore import RunWriter, StoreWriter, merge_live_runs, predates

#: Seconds after its last renewal that a lease lapses (environment ``SCOREBANK_LEASE_SECONDS``).
LEASE_SECONDS = 60.0
#: Without conditional writes: seconds between writing a lease and reading it back.
SETTLE_SECONDS = 0.5
#: How often a waiting run owner looks at the lease again (seconds).
POLL_SECONDS = 1.0
#: A holder that could not renew its lease for this fraction of the ttl stops writing.
FENCE_FRACTION = 0.75
STORE_LEASE = ".scorebank.lease"
CREATING = ".scorebank.creating"
ROOT_METADATA = "zarr.json"


class LeaseLostError(StoreLockedError):
    """Another process took over a lease this one held (it was not renewed in time)."""


def lease_seconds() -> float:
    """The lease lifetime: ``SCOREBANK_LEASE_SECONDS`` from the environment, else
    :data:`LEASE_SECONDS`."""
    text = os.environ.get("SCOREBANK_LEASE_SECONDS")
    if text is None:
        return LEASE_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 1.0 <= value <= 86400.0:
        raise InvalidArgumentError(f"SCOREBANK_LEASE_SECONDS={text!r} is not a number of seconds in 1..86400")
    return value


class ObjectLocation:
    """A store's prefix on an object store: bytes in and out by name relative to the prefix.
    Failures become :class:`~scorebank.stores.remote.RemoteStoreError` (or
    :class:`StoreNotFoundError` for a missing bucket), one line naming the URL."""

    def __init__(self, url: str, storage_options: dict | None = None):
        if not urllib.parse.urlparse(url).netloc:  # 's3://' would strip to 's3:', a local path
            raise InvalidArgumentError(f"{url!r} names no bucket; give the store as "
                                       f"{url_scheme(url)}://BUCKET/PREFIX (e.g. s3://my-bucket/runs/c10.zarr)")
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, root = filesystem(self.url, self.storage_options)
        self.root = root.rstrip("/")
        self.protocol = url_scheme(url)

    def __getstate__(self) -> dict:
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["url"], state["storage_options"])

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except ScorebankError:
            raise
        except Exception as exc:  # noqa: BLE001 - network layers raise many types
            if isinstance(exc, FileNotFoundError):
                raise StoreNotFoundError(f"cannot write {self.url!r} ({exc}); check that the bucket exists "
                                         "and the URL is right") from None
            raise RemoteStoreError(f"could not write {self.url!r}: {type(exc).__name__}: "
                                   f"{' '.join(str(exc).split())}; {REMOTE_HINT}") from None

    def read(self, name: str) -> bytes | None:
        """The object's bytes, None when there is none.  Asked of the server each time: the
        file system's cached listings (filled by :meth:`names`) do not see objects that other
        processes wrote since, and s3fs answers "missing" from them."""
        self.fs.invalidate_cache(self._path(name))
        try:
            return bytes(self.fs.cat_file(self._path(name)))
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001
            raise translate_remote_errors(self.url, exc) from None

    def write(self, name: str, data: bytes) -> None:
        """Put the object (one PUT: readers see the old or the new bytes, never a mix)."""
        with self._errors():
            self.fs.pipe_file(self._path(name), data)

    def write_many(self, objects: Mapping[str, bytes]) -> None:
        """Put several objects (concurrently where the file system can)."""
        if objects:
            with self._errors():
                self.fs.pipe({self._path(k): v for k, v in objects.items()})

    def create(self, name: str, data: bytes) -> bool:
        """Put the object only if there is none (``If-None-Match: *`` on S3, atomic there;
        elsewhere a look then a put); False if there was one."""
        if not self.conditional:
            if self.read(name) is not None:
                return False
            self.write(name, data)
            return True
        try:
            with self._errors():
                self.fs.pipe_file(self._path(name), data, mode="create")
        except FileExistsError:
            return False
        except RemoteStoreError as exc:
            if _lost_race(exc) or self.read(name) is not None:
                return False
            raise
        return True

    def version(self, name: str) -> str | None:
        """The object's ETag (None when the file system has none, or no object)."""
        self.fs.invalidate_cache(self._path(name))
        try:
            with self._errors():
                info = self.fs.info(self._path(name))
        except StoreNotFoundError:
            return None
        return info.get("ETag")

    def replace(self, name: str, data: bytes, version: str | None) -> bool:
        """Put the object only if it still has ``version`` (``If-Match`` on S3, where the
        server refuses otherwise: False; a ``version`` of None there means the object was
        missing when looked at, so it changed since: False, nothing written).  Elsewhere it is
        written unconditionally."""
        if self.conditional:
            if version is None:
                return False
            try:
                with self._errors():
                    self.fs.pipe_file(self._path(name), data, IfMatch=version)
            except RemoteStoreError as exc:
                if _lost_race(exc):
                    return False
                raise
            return True
        self.write(name, data)
        return True

    @property
    def conditional(self) -> bool:
        """Whether :meth:`create` and :meth:`replace` are atomic on the server (S3)."""
        return self.protocol in ("s3", "s3a")

    def delete(self, name: str) -> None:
        try:
            with self._errors():
                self.fs.rm_file(self._path(name))
        except StoreNotFoundError:
            pass

    def delete_many(self, names: list[str]) -> None:
        """Delete several objects (in batches where the file system can)."""
        if names:
            with self._errors():
                self.fs.rm([self._path(n) for n in names])

    def names(self, under: str = "") -> list[str]:
        """Every object under ``under`` (relative to the prefix), listed now."""
        self.fs.invalidate_cache(self.root)
        try:
            with self._errors():
                found = self.fs.find(self._path(under))
        except StoreNotFoundError:
            return []
        strip = len(self.root) + 1
        return sorted(p[strip:] for p in found if p.startswith(self.root + "/"))

    def zarr_store(self):
        """A writable ``FsspecStore`` on the prefix."""
        return remote_store(self.url, self.storage_options, read_only=False)

    def read_json(self, name: str) -> dict | None:
        """The object parsed as a JSON object, None when missing or not one."""
        raw = self.read(name)
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None


def _lost_race(exc: Exception) -> bool:
    """Whether S3 refused a conditional write because the object changed (412
    PreconditionFailed) or another conditional write to it was in flight (409
    ConditionalRequestConflict): the caller looks again."""
    text = str(exc)
    return any(s in text for s in ("pre-condition", "Precondition", "conflicting conditional"))


# ------------------------------------------------------------------------------ leases
def lease_fresh(doc: Mapping | None, now: float | None = None) -> bool:
    """Whether a lease's document (:class:`Lease`) still holds: renewed within its ``ttl``
    and not naming a process of this host that is gone.  A missing or unreadable lease is not
    fresh."""
    if not isinstance(doc, Mapping):
        return False
    renewed, ttl = doc.get("renewed"), doc.get("ttl")
    if not isinstance(renewed, (int, float)) or not isinstance(ttl, (int, float)):
        return False
    if writer_gone(doc.get("host"), doc.get("pid")):
        return False
    return (time.time() if now is None else now) - renewed <= ttl


class Lease:
    """Ownership of ``name`` under an :class:`ObjectLocation` (module docstring).  Use as a
    context manager; ``wait=True`` waits for a fresh lease of someone else to be released or
    to lapse, else :class:`StoreLockedError` with ``busy`` (plus who holds it)."""

    def __init__(self, location: ObjectLocation, name: str, *, holder: str, busy: str, wait: bool = False,
                 ttl: float | None = None):
        self.location, self.name, self.holder, self.busy, self.wait = location, name, holder, busy, wait
        self.ttl = lease_seconds() if ttl is None else float(ttl)
        self.token = secrets.token_hex(16)
        self.lost = False
        self._renewed = 0.0  # time.monotonic() of the last successful write of the lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        host, pid = writer_tag()
        return json.dumps({"token": self.token, "host": host, "pid": pid, "renewed": time.time(),
                           "ttl": self.ttl, "holder": self.holder}).encode()

    def _settled(self) -> bool:
        """After an unconditional write: whether our token is the one that stayed."""
        if self.location.conditional:
            return True
        time.sleep(SETTLE_SECONDS)
        doc = self.location.read_json(self.name)
        return bool(doc) and doc.get("token") == self.token

    def acquire(self) -> "Lease":
        while True:
            started = time.monotonic()  # no later than the renewal time the lease will say
            version = self.location.version(self.name)  # before the read: a change in between fails If-Match
            if self.location.read(self.name) is None:
                if self.location.create(self.name, self._body()) and self._settled():
                    break
                continue
            doc = self.location.read_json(self.name)
            if not lease_fresh(doc):
                if self.location.replace(self.name, self._body(), version) and self._settled():
                    break
                continue
            if not self.wait:
                renewed = doc.get("renewed")
                raise StoreLockedError(
                    f"{self.busy} (lease {self.location.url + '/' + self.name!r} held by "
                    f"{str(doc.get('holder'))!r} on host {str(doc.get('host'))!r} pid {doc.get('pid')!r}, renewed "
                    f"{time.time() - renewed:.0f} s ago; it lapses {float(doc['ttl']):.0f} s after its last renewal)")
            time.sleep(POLL_SECONDS)
        self._renewed = started  # the fence counts from before the write, not after the read-back
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease {self.name}", daemon=True)
        self._thread.start()
        return self

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self.renew()
            except Exception:  # noqa: BLE001 - a failed renewal is retried; a lapse shows as lost
                pass
            if self.lost:
                return

    def renew(self) -> None:
        """Write a new renewal time, unless someone else's token is there (then :attr:`lost`)."""
        version = self.location.version(self.name)
        doc = self.location.read_json(self.name)
        if not doc or doc.get("token") != self.token:
            self.lost = True
            return
        started = time.monotonic()
        if not self.location.replace(self.name, self._body(), version):
            self.lost = True
        else:
            self._renewed = started

    def check(self) -> None:
        """Raise :class:`LeaseLostError` once another process took the lease over, or once
        this holder failed to renew it for :data:`FENCE_FRACTION` of its ttl (so it stops
        before anyone may take it over: self-fencing)."""
        if not self.lost and time.monotonic() - self._renewed > FENCE_FRACTION * self.ttl:
            self.lost = True
        if self.lost:
            raise LeaseLostError(
                f"{self.holder} lost its lease {self.location.url + '/' + self.name!r} to another process "
                f"(not renewed within {self.ttl:.0f} s); stopped writing, run the same command again to resume")

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still this holder's.  A fenced holder
        (:meth:`check`) leaves it to lapse: its lease may be stale by now, so another process
        may be taking it over between this one's look and its delete."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        try:
            self.check()
        except LeaseLostError:
            return
        try:
            doc = self.location.read_json(self.name)
            if doc and doc.get("token") == self.token:
                self.location.delete(self.name)
        except Exception:  # noqa: BLE001 - an unreleased lease lapses after its ttl
            pass

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def store_lease(location: ObjectLocation) -> Lease:
    """The coordinator's lease on the whole store (refused while someone else's is fresh)."""
    return Lease(location, STORE_LEASE, holder="scorebank coordinator",
                 busy=f"store {location.url!r} is being written by another scorebank process; wait for it "
                      "to finish")


# ------------------------------------------------------------------------------ the store
def is_object_store(location: ObjectLocation) -> bool:
    """Whether the prefix holds a scorebank store (its root ``zarr.json`` names a format)."""
    doc = location.read_json(ROOT_METADATA)
    return bool(doc) and S.ATTR_FORMAT in (doc.get("attributes") or {})


def object_root_attrs(location: ObjectLocation) -> dict:
    doc = location.read_json(ROOT_METADATA) or {}
    return dict(doc.get("attributes") or {})


def _foreign_objects(location: ObjectLocation) -> list[str]:
    """Objects under the prefix that no scorebank writer left there (none when a creation
    marker says the leftovers are a killed creation's)."""
    names = [n for n in location.names() if n != STORE_LEASE]
    if CREATING in names:
        return []
    return names


def create_object_store(location: ObjectLocation, *, lease: Lease | None = None, **kwargs) -> None:
    """Create a store at ``location`` (arguments as :func:`~scorebank.stores.create.create_store`),
    atomically from readers' view (module docstring).  Call under the store lease (``lease``:
    checked again before the upload and before the root ``zarr.json``, so a coordinator that
    lost it during a long upload never makes a store of its objects)."""
    if location.read(ROOT_METADATA) is not None:
        raise StoreExistsError(f"{location.url!r} already exists")
    foreign = _foreign_objects(location)
    if foreign:
        raise StoreExistsError(f"{location.url!r} holds objects that are not a scorebank store (e.g. "
                               f"{foreign[0]!r}); choose another --store prefix")
    location.write(CREATING, b"")
    location.delete_many([n for n in location.names() if n not in (STORE_LEASE, CREATING)])  # a killed one's
    with tempfile.TemporaryDirectory(prefix="scorebank-create-") as tmp:
        local = Path(tmp) / "store.zarr"
        create_store(local, **kwargs)
        files = {p.relative_to(local).as_posix(): p.read_bytes() for p in sorted(local.rglob("*")) if p.is_file()}
    root_meta = files.pop(ROOT_METADATA)
    check = (lease or _NoLease).check
    check()
    location.write_many(files)
    check()
    location.write(ROOT_METADATA, root_meta)  # from now on the prefix holds a store
    location.delete(CREATING)


def remove_object_store(location: ObjectLocation) -> None:
    """Delete the store at ``location`` (refusing a prefix that holds none); the root
    ``zarr.json`` goes first, so readers never see half a store.  Call under the store lease."""
    if not is_object_store(location):
        raise StoreExistsError(f"refusing to delete {location.url!r}: it is not a scorebank store; remove it "
                               "yourself or choose another --store")
    busy = [n for n in location.names(S.CHECKPOINT_DIR) if n.endswith(".owner") and lease_fresh(location.read_json(n))]
    if busy:  # tasks of a coordinator that died (a lost client) may still be writing their runs
        raise StoreLockedError(f"refusing to delete {location.url!r}: its run lease {busy[0]!r} is held by a "
                               "running scorebank task; wait for it to finish (or to lapse) and run the command "
                               "again")
    location.write(CREATING, b"")
    location.delete(ROOT_METADATA)
    location.delete_many([n for n in location.names() if n not in (STORE_LEASE, CREATING)])
    location.delete(CREATING)


def run_object_name(seed: int, group: str | None, suffix: str) -> str:
    """``checkpoints/[GROUP/]run-SEED.SUFFIX``: a run's record (json), checkpoint (pt) or lease (owner)."""
    folder = f"{S.CHECKPOINT_DIR}/{group}" if group else S.CHECKPOINT_DIR
    return f"{folder}/run-{int(seed)}.{suffix}"


def read_object_run_records(location: ObjectLocation, group: str | None = None) -> dict[str, dict]:
    """``{str(seed): record}`` of every per-run record (as :func:`zarrstore.read_run_records`)."""
    folder = f"{S.CHECKPOINT_DIR}/{group}" if group else S.CHECKPOINT_DIR
    out: dict[str, dict] = {}
    for name in location.names(folder):
        stem = name[len(folder) + 1:]
        if "/" in stem or not (stem.startswith("run-") and stem.endswith(".json")):
            continue
        seed = stem[len("run-"):-len(".json")]
        if not seed.lstrip("-").isdigit():
            continue
        doc = location.read_json(name)
        if doc is not None and isinstance(doc.get("status"), str):
            out[str(int(seed))] = doc
    return out


def object_run_owned(location: ObjectLocation, seed: int, group: str | None = None) -> bool:
    """Whether run ``seed``'s lease is fresh (someone owns the run now)."""
    return lease_fresh(location.read_json(run_object_name(seed, group, "owner")))


#: URL schemes of object stores whose store directories scorebank writes and lists (others,
#: such as http://, are read-only: written to, they fail with a one-line error).
LISTABLE_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "memory"})


def writable_url(location: str) -> bool:
    """Whether ``location`` is a store directory (not a ``.zip`` archive) on an object store
    of :data:`LISTABLE_SCHEMES`."""
    return url_scheme(location) in LISTABLE_SCHEMES and \
        not location.split("?", 1)[0].split("#", 1)[0].rstrip("/").lower().endswith(".zip")


def object_live_runs(url: str, runs_attr: Mapping | None = None, storage_options: dict | None = None) -> dict:
    """The runs' status now (as :func:`zarrstore.live_runs`): the ``runs`` attribute updated by
    the per-run records, a ``running`` run without a fresh lease shown ``interrupted``.  A
    store whose records cannot be listed (read-only credentials) shows ``runs_attr``."""
    try:
        return _object_live_runs(ObjectLocation(url, storage_options), runs_attr)
    except ScorebankError:
        if runs_attr is None:
            raise
        return {str(k): dict(v) for k, v in runs_attr.items() if isinstance(v, Mapping)}


def _object_live_runs(location: ObjectLocation, runs_attr: Mapping | None) -> dict:
    if runs_attr is None:
        runs_attr = object_root_attrs(location).get(S.ATTR_RUNS) or {}
    return merge_live_runs(runs_attr, read_object_run_records(location),
                           lambda seed: object_run_owned(location, seed),
                           lambda: lease_fresh(location.read_json(STORE_LEASE)))


class ObjectFile:
    """One object (a run's checkpoint) with the three things the run lifecycle asks of a
    checkpoint path: :meth:`is_file`, :meth:`read_bytes` and :meth:`write_bytes` (one PUT,
    after ``guard()``: the writer's lease check, so a fenced owner never replaces the
    checkpoint of the process that took its run over)."""

    def __init__(self, location: ObjectLocation, name: str, guard=None):
        self.location, self.name, self.guard = location, name, guard

    def is_file(self) -> bool:
        return self.location.read(self.name) is not None

    def read_bytes(self) -> bytes:
        data = self.location.read(self.name)
        if data is None:
            raise StoreNotFoundError(f"{self.location.url + '/' + self.name!r} disappeared")
        return data

    def write_bytes(self, data: bytes) -> None:
        if self.guard is not None:
            self.guard()
        self.location.write(self.name, data)

    def __str__(self) -> str:
        return f"{self.location.url}/{self.name}"


class ObjectStoreWriter(StoreWriter):
    """:class:`~scorebank.stores.zarrstore.StoreWriter` for a store on an object store: the
    coordinator's view (allocate runs, consolidate records).  As a context manager it holds
    the store lease (:func:`store_lease`), unless given one already held (``lease``)."""

    def __init__(self, location: ObjectLocation, lease: Lease | None = None):
        self.location, self.path = location, location.url
        if not is_object_store(location):
            raise StoreNotFoundError(f"no scorebank store at {location.url!r}")
        self._given, self._lease = lease, None
        self._open()

    def _open(self) -> None:
        self.root = zarr.open_group(self.location.zarr_store(), mode="r+", zarr_format=3, use_consolidated=False)
        self.features = frozenset(self.root.attrs.get(S.ATTR_FEATURES, []))
        self.format = S.store_format(self.root.attrs)

    def __enter__(self) -> "ObjectStoreWriter":
        if self._given is None:
            self._lease = store_lease(self.location).acquire()
        try:
            if not is_object_store(self.location):
                raise StoreLockedError(f"store {self.location.url!r} was removed by another scorebank process "
                                       "while this one waited for it; run the command again")
            self._open()
        except BaseException:
            self.__exit__()  # a failed start (network error too) leaves no lease behind
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def _may_write(self) -> None:
        (self._given or self._lease or _NoLease).check()

    def _consolidate(self) -> None:
        self._may_write()
        consolidate(self.location.zarr_store())

    def _run_records(self, group: str | None) -> dict[str, dict]:
        return read_object_run_records(self.location, group)

    def _owner_active(self, seed: int, group: str | None) -> bool:
        return object_run_owned(self.location, seed, group)

    def checkpoint_path(self, seed: int) -> ObjectFile:
        return ObjectFile(self.location, run_object_name(seed, None, "pt"), guard=self._may_write)


class _NoLease:
    @staticmethod
    def check() -> None:
        pass


class ObjectRunWriter(RunWriter):
    """:class:`~scorebank.stores.zarrstore.RunWriter` for a store on an object store: one
    run, owned through its lease ``checkpoints/[GROUP/]run-SEED.owner`` (module docstring),
    its record and checkpoint objects beside it."""

    def __init__(self, location: ObjectLocation, seed: int, *, group: str | None = None, wait: bool = False):
        self.location, self.path, self.seed, self.group, self.wait = location, location.url, int(seed), group, wait
        if not is_object_store(location):
            raise StoreNotFoundError(f"no scorebank store at {location.url!r}")
        self._lease: Lease | None = None
        self.root = None
        self._arrays: dict[str, zarr.Array | None] = {}
        self.checkpoint = ObjectFile(location, run_object_name(self.seed, group, "pt"), guard=self._check)

    def __enter__(self) -> "ObjectRunWriter":
        self._lease = Lease(
            self.location, run_object_name(self.seed, self.group, "owner"), holder=f"run seed {self.seed}",
            wait=self.wait,
            busy=f"run seed {self.seed} of store {self.location.url!r} is being written by another scorebank "
                 "process; wait for it to finish").acquire()
        try:
            root = zarr.open_group(self.location.zarr_store(), mode="r+", zarr_format=3, use_consolidated=False)
        except BaseException:
            self.__exit__()  # a failed start (network error too) leaves no lease behind
            raise
        return self._bind(root[self.group] if self.group else root)

    def __exit__(self, *exc) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def _read_record(self) -> dict | None:
        doc = self.location.read_json(run_object_name(self.seed, self.group, "json"))
        return doc if doc is not None and isinstance(doc.get("status"), str) else None

    def _check(self) -> None:
        """Fencing: :class:`LeaseLostError` once the run's lease is lost (or never taken)."""
        if self._lease is None:
            raise LeaseLostError(f"run seed {self.seed} of {self.location.url!r} is written only by the holder "
                                 "of its lease (inside 'with ObjectRunWriter(...)')")
        self._lease.check()

    def _write_record(self, doc: dict) -> None:
        self._check()
        self.location.write(run_object_name(self.seed, self.group, "json"), json.dumps(doc).encode())

    def write_epoch(self, epoch: int, per_example: Mapping[str, np.ndarray], per_epoch: Mapping[str, float]) -> None:
        """As :meth:`RunWriter.write_epoch` (same values, ``completed`` set last), with the
        arrays' metadata read once per run and the epoch's chunks written concurrently: two
        round trips' latency per epoch instead of two per array."""
        self._check()
        writes = [(self._array(name), (self.index, epoch, slice(None)), np.asarray(values))
                  for name, values in per_example.items() if self._array(name) is not None]
        writes += [(self._array(name), (self.index, epoch), value) for name, value in per_epoch.items()]

        async def write_all() -> None:
            await asyncio.gather(*(array.async_array.setitem(where, value) for array, where, value in writes))

        with self._epoch_errors(epoch):
            sync(write_all())
            self._check()
            self._array(S.COMPLETED)[self.index, epoch] = True

    @contextlib.contextmanager
    def _epoch_errors(self, epoch: int) -> Iterator[None]:
        """A failed write (network, permissions) as one line: the store stays as it was
        before this epoch (``completed`` unset), so the same command resumes it."""
        try:
            yield
        except ScorebankError:
            raise
        except Exception as exc:  # noqa: BLE001 - network layers raise many types
            raise RemoteStoreError(
                f"could not write epoch {epoch} of run seed {self.seed} to {self.location.url!r} "
                f"({type(exc).__name__}: {' '.join(str(exc).split())}); the store is left resumable, run the "
                "same command again") from None

    def _array(self, name: str) -> zarr.Array | None:
        """The run's array ``name`` (None: a variable the store's format predates), cached:
        the coordinator allocated the runs before any owner writes, so shapes stay put."""
        if name not in self._arrays:
            self._arrays[name] = None if predates(self.root, name) else self.root[name]
        return self._arrays[name]
