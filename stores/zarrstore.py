"""Writing a score store created by :mod:`scorebank.stores.create` (re-exported here).

Each epoch writes only its own
chunks, and zarr writes every chunk atomically (temporary file + rename), so a ``kill -9``
at any moment leaves a readable store.  Metadata is consolidated after every structural
change so plain ``xarray.open_zarr(path)`` opens it quickly and without warnings.

Ownership when several processes write one store (``score --workers N``):

* the **coordinator** (the process the command runs in) holds the store-level lock
  (:class:`StoreWriter`, ``.scorebank.lock``) for the whole command: it allocates the runs
  (resizes the ``run`` dimension) once, and at the end consolidates every run's record into
  the ``runs`` attribute (:meth:`StoreWriter.consolidate_runs`).  A second coordinator on the
  same store is refused in one line (:class:`StoreLockedError`), and nobody can
  ``--overwrite`` the store under running tasks;
* each **run** is written only by the task that owns it, under a per-run lock
  (:class:`RunWriter`: ``flock`` on ``checkpoints/run-<seed>.lock``), into the run's own
  chunks (every array is chunked by one run along ``run``).  Its status lives in its own
  record ``checkpoints/run-<seed>.json``, replaced atomically, never in an attribute
  shared with other runs;
* readers combine both (:func:`live_runs`): a run recorded ``running`` whose per-run lock
  nobody holds lost its owner (``kill -9``, a lost worker) and shows as ``interrupted``.

Stores on object stores (``s3://``...) follow the same rules with leases instead of locks:
:mod:`scorebank.stores.objectstore` (:class:`ObjectStoreWriter`, :class:`ObjectRunWriter`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import zarr

from scorebank.stores import schema as S
from scorebank.stores.create import consolidate, create_store, now_iso, scorebank_version  # noqa: F401
from scorebank.stores.errors import (ConfigMismatchError, InvalidArgumentError, ScorebankError, StoreExistsError,
                                     StoreLockedError, StoreNotFoundError)


class StoreWriteError(ScorebankError, OSError):
    """Writing a file of the store failed (disk full, read-only, ...): exit status 1.  What
    was written before stays valid, so the same command resumes once the cause is fixed."""


def require_store_directory(location: str | os.PathLike, what: str) -> Path:
    """``location`` as the path of a local store directory that ``what`` (e.g. ``"retrain"``)
    can write into.  Archives and URLs are read-only: the error says to unpack them with
    ``scorebank import`` first; anything else that is not a store is
    :class:`StoreNotFoundError`."""
    shown = os.fspath(location)
    from scorebank.stores.objectstore import writable_url

    if writable_url(shown):
        raise InvalidArgumentError(
            f"{what} writes into a local store, and {shown!r} is on an object store (only 'scorebank score' "
            f"writes there); copy it with 'scorebank export {shown} FILE.zip' and "
            "'scorebank import FILE.zip DIR', and pass DIR")
    if "://" in shown:
        raise InvalidArgumentError(
            f"{what} writes into the store, and {shown!r} is a URL (read-only); "
            f"copy it locally with 'scorebank import {shown} DIR' and pass DIR")
    path = Path(location)
    if path.is_file():
        raise InvalidArgumentError(
            f"{what} writes into the store, and {shown!r} is a file (an archive is read-only); "
            f"unpack it with 'scorebank import {shown} DIR' and pass DIR")
    if not is_scorebank_store(path):
        raise StoreNotFoundError(f"no scorebank store at {shown!r}: expected a store directory made by 'scorebank score'")
    return path


def is_scorebank_store(path: str | os.PathLike) -> bool:
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return False
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return S.ATTR_FORMAT in doc.get("attributes", {})


def root_attrs(path: str | os.PathLike, keys: tuple[str, ...] | None = None) -> dict:
    """The store's root attributes (only ``keys``, missing ones as None, when given), read
    from its metadata without zarr."""
    attrs = json.loads((Path(path) / "zarr.json").read_text()).get("attributes", {})
    return dict(attrs) if keys is None else {k: attrs.get(k) for k in keys}


#: The root attributes that say which examples a store describes and how it was trained:
#: what a group written into it (retrain, easy-hard) was computed from.
IDENTITY_ATTRS = (S.ATTR_CONFIG, S.ATTR_FINGERPRINT, S.ATTR_STORE_ID)  # the store id tells a replaced store apart


def remove_store(path: str | os.PathLike) -> None:
    """Delete a scorebank store; refuses any path that is not one (someone else's files) and
    a store another process is writing (:class:`StoreLockedError`).  Under the store's lock
    the directory is first renamed to a hidden ``.NAME.<id>.deleting`` sibling, so an
    interrupted deletion never leaves a half-deleted store at ``path``."""
    path = Path(path)
    if not is_scorebank_store(path):
        raise StoreExistsError(
            f"refusing to delete {os.fspath(path)!r}: it is not a scorebank store; remove it yourself "
            "or choose another --store path")
    trash = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.deleting")
    with StoreWriter(path):
        os.replace(path, trash)
    shutil.rmtree(trash)


def writer_active(path: str | os.PathLike) -> bool:
    """Whether a scorebank process holds the store's write lock now.  A run whose status
    says ``running`` while no writer is active was killed (``kill -9``, power loss): readers
    can show it as interrupted; re-running the command resumes it."""
    # no lock file (never written by `score` here, or a read-only copy): not active
    return _lock_held(Path(path) / S.LOCK_FILE)


def run_folder(path: str | os.PathLike, group: str | None = None) -> Path:
    """Where the runs of ``group`` (a Zarr path such as ``retrain/NAME``; None: the store's
    root runs) keep their checkpoints, records and locks: ``checkpoints/[GROUP/]``."""
    folder = Path(path) / S.CHECKPOINT_DIR
    return folder / group if group else folder


def run_record_path(path: str | os.PathLike, seed: int, group: str | None = None) -> Path:
    """The per-run status record of run ``seed`` (JSON, beside its checkpoint)."""
    return run_folder(path, group) / f"run-{seed}.json"


def run_lock_path(path: str | os.PathLike, seed: int, group: str | None = None) -> Path:
    """The file whose ``flock`` the owner of run ``seed`` holds while it writes the run."""
    return run_folder(path, group) / f"run-{seed}.lock"


def _lock_held(lock: Path) -> bool:
    """Whether a process holds ``lock``'s exclusive ``flock`` now (no such file: no)."""
    try:
        f = open(lock)
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def run_owner_active(path: str | os.PathLike, seed: int, group: str | None = None) -> bool:
    """Whether a process holds run ``seed``'s per-run lock now (:class:`RunWriter`)."""
    return _lock_held(run_lock_path(path, seed, group))


def read_run_records(path: str | os.PathLike, group: str | None = None) -> dict[str, dict]:
    """``{str(seed): record}`` of every per-run record in the store (none for stores written
    before per-run records, or by writers that keep status in the ``runs`` attribute only).
    A record that is not a JSON object (torn by hand, foreign file) is ignored."""
    folder = run_folder(path, group)
    out: dict[str, dict] = {}
    if not folder.is_dir():
        return out
    for f in folder.glob("run-*.json"):
        seed = f.name[len("run-"):-len(".json")]
        if not seed.lstrip("-").isdigit():
            continue
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("status"), str):
            out[str(int(seed))] = doc
    return out


def live_runs(path: str | os.PathLike, runs_attr: Mapping | None = None) -> dict[str, dict]:
    """The status of every run as a reader should show it now: the consolidated ``runs``
    attribute (``runs_attr``, read from the store when None), updated by the per-run
    records; a run that says ``running`` while nobody owns it (no per-run lock held and, for
    status kept in the attribute, no store writer) is shown ``interrupted`` (its owner was
    killed; re-running the command resumes it)."""
    if runs_attr is None:
        runs_attr = root_attrs(path, (S.ATTR_RUNS,))[S.ATTR_RUNS] or {}
    return merge_live_runs(runs_attr, read_run_records(path), lambda seed: run_owner_active(path, seed),
                           lambda: writer_active(path))


def merge_live_runs(runs_attr: Mapping, records: Mapping[str, dict], run_owned: Callable[[int], bool],
                    writer_owned: Callable[[], bool]) -> dict[str, dict]:
    """The ``runs`` attribute updated by the per-run ``records``; a ``running`` run is shown
    ``interrupted`` unless its owner is there: ``run_owned(seed)`` for a run with a record,
    ``writer_owned()`` (the store's writer, asked once) for status kept in the attribute.
    Shared by local stores (locks) and object stores (leases)."""
    runs = {str(k): dict(v) for k, v in runs_attr.items() if isinstance(v, Mapping)}
    runs.update(records)
    store_writer = None
    for seed, info in runs.items():
        if info.get("status") != S.RUN_RUNNING:
            continue
        if seed in records:
            owned = run_owned(int(seed))
        else:
            store_writer = writer_owned() if store_writer is None else store_writer
            owned = store_writer
        if not owned:
            runs[seed] = {**info, "status": S.RUN_INTERRUPTED}
    return runs


def _lock_exclusive(lock: Path, wait: bool, busy: str):
    """Open ``lock`` (created when missing) and take its exclusive ``flock``, waiting for
    another holder when ``wait``, else raising :class:`StoreLockedError` with message
    ``busy``.  Returns the open file: the lock lasts until :func:`_unlock`."""
    f = open(lock, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        f.close()
        raise StoreLockedError(busy) from None
    return f


def _unlock(f) -> None:
    """Release and close a lock file from :func:`_lock_exclusive` (None: nothing held)."""
    if f is not None:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


class RunWriter:
    """Writes one run of a store whose runs the coordinator has allocated
    (:meth:`StoreWriter.add_runs`): the run's epochs into its own chunks and its status into
    its own record (:func:`run_record_path`).  Use as a context manager: it holds the run's
    lock (:func:`run_lock_path`); ``wait=True`` waits for a previous owner still running
    (an orphaned task of a lost client) instead of refusing.  ``group``: the run belongs to
    that group (``retrain/NAME``) rather than to the store's root; ``root`` is that group."""

    def __init__(self, path: str | os.PathLike, seed: int, *, group: str | None = None, wait: bool = False):
        self.path, self.seed, self.group, self.wait = Path(path), int(seed), group, wait
        if not is_scorebank_store(self.path):
            raise StoreNotFoundError(f"no scorebank store at {str(self.path)!r}")
        self._lock_file = None
        self.root = None
        self.checkpoint = run_folder(self.path, group) / f"run-{self.seed}.pt"

    def __enter__(self) -> "RunWriter":
        lock = run_lock_path(self.path, self.seed, self.group)
        lock.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock_exclusive(
            lock, self.wait,
            f"run seed {self.seed} of store {str(self.path)!r} is being written by another scorebank "
            "process; wait for it to finish")
        where = self.path / self.group if self.group else self.path
        return self._bind(zarr.open_group(where, mode="r+", zarr_format=3, use_consolidated=False))

    def _bind(self, root: zarr.Group) -> "RunWriter":
        """Under the run's lock: write into ``root`` (the store or the run's group), at the
        run's index; a run the coordinator has not allocated is refused."""
        self.root = root
        seeds = [int(s) for s in self.root[S.RUN][:]]
        if self.seed not in seeds:
            self.__exit__()
            raise InvalidArgumentError(
                f"store {str(self.path)!r} has no run seed {self.seed}; the coordinator allocates runs first")
        self.index = seeds.index(self.seed)
        return self

    def __exit__(self, *exc) -> None:
        self._lock_file = _unlock(self._lock_file)

    def status(self) -> dict:
        """The run's record, else its entry in the consolidated ``runs`` attribute."""
        record = self._read_record()
        if record is not None:
            return record
        return dict(self.root.attrs.get(S.ATTR_RUNS, {}).get(str(self.seed), {}))

    def set_status(self, status: str, **info) -> None:
        """Replace the run's record atomically with ``{"status": status, **info}``."""
        self._write_record({"status": status, **info})

    def _read_record(self) -> dict | None:
        return read_run_record(self.path, self.seed, self.group)

    def _write_record(self, doc: dict) -> None:
        with atomic_file(run_record_path(self.path, self.seed, self.group)) as tmp:
            tmp.write_text(json.dumps(doc))

    def write_epoch(self, epoch: int, per_example: Mapping[str, np.ndarray], per_epoch: Mapping[str, float]) -> None:
        """Write one epoch of the run (its own chunks); ``completed`` is set last."""
        _write_run_epoch(self.root, self.index, epoch, per_example, per_epoch)


def _write_run_epoch(root: zarr.Group, r: int, epoch: int, per_example: Mapping[str, np.ndarray],
                     per_epoch: Mapping[str, float]) -> None:
    """Write epoch ``epoch`` of the run at index ``r`` of ``root``: its per-example values
    (``[r, epoch, :]``; none into variables the store's format predates) and per-epoch
    values (``[r, epoch]``); ``completed`` is set last, after everything else."""
    for name, values in per_example.items():
        if predates(root, name):
            continue
        root[name][r, epoch, :] = values
    for name, value in per_epoch.items():
        root[name][r, epoch] = value
    root[S.COMPLETED][r, epoch] = True


def predates(root: zarr.Group, name: str) -> bool:
    """True when ``name`` is a schema variable newer than the format of the store (or group)
    ``root`` was written in, and so absent from it: a store made by an older scorebank is
    resumed without it (the store keeps its format; readers treat the variable as absent)."""
    var = S.BY_NAME.get(name)
    return var is not None and var.since > S.store_format(root.attrs) and name not in root


def read_run_record(path: str | os.PathLike, seed: int, group: str | None = None) -> dict | None:
    """Run ``seed``'s record (:func:`run_record_path`), None when it has none."""
    try:
        doc = json.loads(run_record_path(path, seed, group).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("status"), str) else None


class StoreWriter:
    """Writes a run's epochs into an existing store.  Use as a context manager: it holds
    an exclusive lock (``.scorebank.lock``) so two writers never interleave."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not is_scorebank_store(self.path):
            raise StoreNotFoundError(f"no scorebank store at {str(self.path)!r}")
        self._lock_file = None
        self._open()

    def _open(self) -> None:
        # Not through the consolidated metadata: it would hand out stale shapes after a resize.
        self.root = zarr.open_group(self.path, mode="r+", zarr_format=3, use_consolidated=False)
        self.features = frozenset(self.root.attrs.get(S.ATTR_FEATURES, []))
        # a store keeps the format it was created in: one made by an older scorebank is
        # extended and resumed without the variables its format predates
        self.format = S.store_format(self.root.attrs)

    # -------------------------------------------------------------- locking
    def __enter__(self) -> "StoreWriter":
        lock_path = self.path / S.LOCK_FILE
        f = _lock_exclusive(
            lock_path, False,
            f"store {str(self.path)!r} is being written by another scorebank process; wait for it to finish")
        # The store may have been replaced (`--overwrite`) between opening and locking: then the
        # lock taken is the old store's and protects nothing here.
        try:
            same = os.path.samestat(os.fstat(f.fileno()), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if not same or not is_scorebank_store(self.path):
            f.close()
            raise StoreLockedError(
                f"store {str(self.path)!r} was replaced by another scorebank process while this one "
                "waited for it; run the command again")
        self._lock_file = f
        self._open()  # what is there now, under the lock
        return self

    def __exit__(self, *exc) -> None:
        self._lock_file = _unlock(self._lock_file)

    def check_unchanged(self, expected: Mapping, what: str) -> None:
        """Under the lock: refuse (:class:`ConfigMismatchError`) if a root attribute named in
        ``expected`` (e.g. from :func:`root_attrs` with :data:`IDENTITY_ATTRS`, read before
        the lock) has changed: the store was replaced (``score --overwrite``) since ``what``
        read it, so what it computed does not belong here."""
        changed = sorted(k for k, v in expected.items() if self.root.attrs.get(k) != v)
        if changed:
            raise ConfigMismatchError(
                f"store {str(self.path)!r} was replaced by another scorebank process since {what} read it "
                f"(its {', '.join(changed)} changed); nothing was written, run the command again")

    # -------------------------------------------------------------- runs
    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.root[S.RUN][:])

    def run_index(self, seed: int) -> int:
        return self.seeds.index(seed)

    @property
    def runs(self) -> dict[str, dict]:
        return dict(self.root.attrs.get(S.ATTR_RUNS, {}))

    def add_runs(self, seeds: tuple[int, ...]) -> None:
        """Extend the ``run`` dimension with new seeds (NaN/False-filled)."""
        new = [s for s in seeds if s not in self.seeds]
        if not new:
            return
        self._may_write()
        old = len(self.seeds)
        total = old + len(new)
        for var in S.variables(self.features, self.format):
            if var.dims[0] == S.RUN:
                arr = self.root[var.name]
                arr.resize((total,) + arr.shape[1:])
        run = self.root[S.RUN]
        run.resize((total,))
        run[old:] = np.asarray(new, dtype=np.int64)
        runs = self.runs
        runs.update({str(s): {"status": S.RUN_PENDING} for s in new})
        self.root.attrs[S.ATTR_RUNS] = runs
        self._consolidate()
        self._open()

    def consolidate_runs(self, group: str | None = None) -> dict[str, dict]:
        """Under the lock, after the owners of runs finished (or died): copy every per-run
        record (:func:`read_run_records`) of ``group`` (None: the root runs) into its
        ``runs`` attribute, the consolidated view every reader of the format knows, and
        consolidate the metadata; returns that attribute.  A record still ``running`` whose
        owner is gone is consolidated as ``interrupted``."""
        node = self.root[group] if group else self.root
        old = dict(node.attrs.get(S.ATTR_RUNS, {}))
        runs = dict(old)
        for seed, record in self._run_records(group).items():
            if record.get("status") == S.RUN_RUNNING and not self._owner_active(int(seed), group):
                record = {**record, "status": S.RUN_INTERRUPTED}
            runs[seed] = record
        if runs != old:
            self._may_write()
            node.attrs[S.ATTR_RUNS] = runs
            self._consolidate()
        return runs

    def set_run_status(self, seed: int, status: str, **info) -> None:
        self._may_write()
        runs = self.runs
        runs[str(seed)] = {"status": status, **info}
        self.root.attrs[S.ATTR_RUNS] = runs
        self._consolidate()

    # Where the store keeps what is outside the Zarr hierarchy (ObjectStoreWriter: on an object store)
    def _may_write(self) -> None:
        """Called before each write of the store's metadata: nothing here (the ``flock`` is held
        until exit); on an object store it fences a coordinator whose lease is lost."""

    def _consolidate(self) -> None:
        consolidate(self.path)

    def _run_records(self, group: str | None) -> dict[str, dict]:
        return read_run_records(self.path, group)

    def _owner_active(self, seed: int, group: str | None) -> bool:
        return run_owner_active(self.path, seed, group)

    # -------------------------------------------------------------- values
    def completed_epochs(self, seed: int) -> np.ndarray:
        return np.asarray(self.root[S.COMPLETED][self.run_index(seed), :], dtype=bool)

    def write_epoch(self, seed: int, epoch: int, per_example: Mapping[str, np.ndarray],
                    per_epoch: Mapping[str, float]) -> None:
        """Write one epoch of one run; ``completed`` is set last, after everything else."""
        _write_run_epoch(self.root, self.run_index(seed), epoch, per_example, per_epoch)

    # -------------------------------------------------------------- checkpoints
    def checkpoint_path(self, seed: int) -> Path:
        return self.path / S.CHECKPOINT_DIR / f"run-{seed}.pt"


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    A failure to write (an ``OSError``, or the ``RuntimeError`` torch.save raises on a full
    disk) leaves ``path`` as it was and becomes :class:`StoreWriteError` naming the path."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, ScorebankError):
            raise
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise StoreWriteError(f"could not write {str(path)!r}: {reason}; free space or fix permissions, "
                              "then run the same command again (it resumes)") from exc
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
