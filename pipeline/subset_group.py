"""The Zarr group in which a subset-training command (``holdout``, ``memorization``) keeps its
models' results inside a store, and the bookkeeping both commands share.

Such a group carries two attributes: its *spec* (a frozen dataclass deriving from
:class:`GroupSpec`: the training configuration, the data set fingerprint and whatever else
determines the group's values, stored as JSON) and a table of status records, one per unit of
work (a fold of a seed, a model).  :func:`training_group` opens it for a run: it is created
empty when absent (under a temporary name, then renamed into place, so it is either absent or
complete), refused when it was made with other settings (unless ``overwrite``, which replaces
it) and grown to the units the run asks for; the run writes while holding the store's writer
lock, and the group is consolidated again on exit, also after Ctrl-C.

Ownership, as for score runs (:mod:`scorebank.stores.zarrstore`): the process that opened the
group is the coordinator and holds the store's lock for the whole command; each unit is trained
by whoever owns it (this process, or a Dask task: :mod:`scorebank.pipeline.dispatch`) under the
unit's own lock (:class:`UnitWriter`: ``flock`` on ``checkpoints/NAME/[SEED/]run-N.lock``),
with its status in its own record (``run-N.json`` beside the lock), never in the group's
attributes.  Values a unit writes into a chunk it shares with other units (the
probabilities of one holdout seed, the models' ``completed`` flags) are written under the
group's chunk lock (:func:`shared_chunks`).  On exit the coordinator copies every record into
the status table (:func:`collect_unit_status`); a unit recorded ``running`` whose owner is gone
becomes ``interrupted`` (:func:`~scorebank.stores.heldout.live_unit_status` shows the same to
readers meanwhile).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import zarr

from scorebank.pipeline.config import ScoreConfig
from scorebank.pipeline.lifecycle import RunOutcome
from scorebank.stores import schema as S
from scorebank.stores.errors import ConfigMismatchError, StoreLockedError
from scorebank.stores.heldout import live_unit_status
from scorebank.stores.zarrstore import (StoreWriter, _lock_exclusive, _unlock, atomic_file, consolidate,
                                        now_iso, read_run_record, run_folder, run_lock_path, run_record_path,
                                        scorebank_version)

SpecT = TypeVar("SpecT", bound="GroupSpec")


#: fill value of a group's coordinate arrays: never a valid value, so every chunk of them is stored
NO_VALUE = -1


@dataclass(frozen=True)
class GroupSpec:
    """What determines a subset-training group's values (stored as JSON in the group's spec
    attribute): the store's training configuration and data set, plus the fields a command's
    frozen-dataclass subclass adds."""

    training: ScoreConfig
    dataset_fingerprint: str
    n_examples: int

    def to_json(self) -> str:
        out = dataclasses.asdict(self)
        out["training"] = json.loads(self.training.to_json())
        return json.dumps(out, sort_keys=True)

    @classmethod
    def from_json(cls: type[SpecT], text: str) -> SpecT:
        raw = json.loads(text)
        raw["training"] = ScoreConfig.from_json(json.dumps(raw["training"]))
        return cls(**{k: v for k, v in raw.items() if k in {f.name for f in dataclasses.fields(cls)}})

    def differences(self, other: "GroupSpec") -> dict[str, tuple]:
        """``{field: (self's value, other's value)}`` of every field that differs
        (``training.<name>`` for the training configuration's)."""
        diff = {f"training.{k}": v for k, v in self.training.differences(other.training).items()}
        for f in dataclasses.fields(self):
            if f.name != "training" and getattr(self, f.name) != getattr(other, f.name):
                diff[f.name] = (getattr(self, f.name), getattr(other, f.name))
        return diff


def read_group_spec(store: str | os.PathLike, name: str, attr: str, cls: type[SpecT]) -> SpecT | None:
    """The spec stored in attribute ``attr`` of the store's group ``name``, or None when the
    store has no such group (or it has no spec)."""
    meta = Path(store) / name / "zarr.json"
    if not meta.is_file():
        return None
    attrs = json.loads(meta.read_text()).get("attributes", {})
    return cls.from_json(attrs[attr]) if attr in attrs else None


def open_group(store: str | os.PathLike, name: str) -> zarr.Group:
    return zarr.open_group(Path(store) / name, mode="r+", zarr_format=3, use_consolidated=False)


def refuse_mismatch(path: Path, name: str, old: GroupSpec, new: GroupSpec, option: str) -> None:
    """ConfigMismatchError listing every setting in which ``old`` (the group's) and ``new``
    (the run's) differ; ``option`` is the command's option that must stay the same."""
    diff = old.differences(new)
    if diff:
        listing = "; ".join(f"{k}: group has {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise ConfigMismatchError(
            f"the {name} group of {str(path)!r} was made with other settings ({listing}); "
            f"use the same {option}, or --overwrite to replace it")


def check_spec(path: Path, name: str, found: GroupSpec | None, spec: GroupSpec) -> None:
    """A unit's owner, under the unit's lock: refuse (:class:`ConfigMismatchError`) to write into
    the group ``name`` when its spec (``found``, None: no group) is no longer ``spec``, the one
    the coordinator opened it with (the group was replaced or removed since: a task orphaned by
    a lost client)."""
    if found is None or found.differences(spec):
        raise ConfigMismatchError(
            f"the {name} group of {str(path)!r} was replaced or removed since this command opened it; "
            "nothing was written, run the command again")


# ----------------------------------------------------------------------------- units of work
Unit = tuple  # a unit of work: (seed, fold) of holdout, (model,) of memorization


def unit_key(unit: Unit) -> str:
    """The unit's key in the group's status table: ``"SEED/FOLD"``, ``"MODEL"``."""
    return "/".join(str(int(p)) for p in unit)


def _unit_folder(name: str, unit: Unit) -> str:
    """The folder (under ``checkpoints/``) of the unit's lock and record: the group's, one
    level down per leading part (``holdout/SEED``); the record is ``run-<last part>``."""
    return "/".join([name, *(str(int(p)) for p in unit[:-1])])


class UnitWriter:
    """Owns one unit of work of the store's group ``name`` while it is trained.  Use as a
    context manager: it holds the unit's lock (waiting for a previous owner still running, an
    orphaned task of a lost client); :meth:`status` / :meth:`set_status` keep the unit's
    status in its own record (replaced atomically), falling back to the group's status table
    ``status_attr`` (what the coordinator consolidated) when the unit has no record."""

    def __init__(self, path: str | os.PathLike, name: str, status_attr: str, unit: Unit):
        self.path, self.name, self.status_attr = Path(path), name, status_attr
        self.unit, self._folder, self._n = tuple(int(p) for p in unit), _unit_folder(name, unit), int(unit[-1])
        self._lock_file = None

    def __enter__(self) -> "UnitWriter":
        lock = run_lock_path(self.path, self._n, self._folder)
        lock.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock_exclusive(lock, True, "")
        return self

    def __exit__(self, *exc) -> None:
        self._lock_file = _unlock(self._lock_file)

    def status(self, group: zarr.Group) -> dict:
        record = read_run_record(self.path, self._n, self._folder)
        if record is not None:
            return record
        return dict(dict(group.attrs.get(self.status_attr, {})).get(unit_key(self.unit), {}))

    def set_status(self, record: dict) -> None:
        with atomic_file(run_record_path(self.path, self._n, self._folder)) as tmp:
            tmp.write_text(json.dumps(record))


@contextmanager
def shared_chunks(path: str | os.PathLike, name: str) -> Iterator[None]:
    """Hold the group's chunk lock (``checkpoints/NAME/chunks.lock``) while a unit writes a
    chunk other units write too (read, modify, write: without the lock, two owners writing
    at once would lose one's values)."""
    lock = run_folder(path, name) / "chunks.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    f = _lock_exclusive(lock, True, "")
    try:
        yield
    finally:
        _unlock(f)


def collect_unit_status(path: Path, name: str, status_attr: str) -> None:
    """Coordinator, under the store's lock: every unit's record into the group's status table
    ``status_attr`` (:func:`~scorebank.stores.heldout.live_unit_status`)."""
    group = open_group(path, name)
    old = dict(group.attrs.get(status_attr, {}))
    units = live_unit_status(path, name, old)
    if units != old:
        group.attrs[status_attr] = units


@dataclass
class Tally:
    """What a run of a subset-training command did with its units of work: how many were
    trained now, how many were already done, and which diverged (non-finite loss)."""

    trained: int = 0
    skipped: int = 0
    failed: list = field(default_factory=list)

    def add(self, unit, outcome: RunOutcome) -> None:
        if outcome.status == S.RUN_FAILED:
            self.failed.append(unit)
        elif outcome.skipped:
            self.skipped += 1
        else:
            self.trained += 1


def _create_group(writer: StoreWriter, name: str, spec_attr: str, spec: GroupSpec, status_attr: str,
                  create_arrays: Callable[[zarr.Group], None]) -> None:
    """An empty group: ``create_arrays(group)`` makes its arrays under a temporary name, then the
    attributes are written and the group is renamed into place."""
    tmp_name = f".{name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        group = writer.root.create_group(tmp_name)
        create_arrays(group)
        group.attrs.update({spec_attr: spec.to_json(), status_attr: {}, S.ATTR_CREATED: now_iso(),
                            S.ATTR_VERSION: scorebank_version()})
        os.rename(writer.path / tmp_name, writer.path / name)
    except BaseException:
        shutil.rmtree(writer.path / tmp_name, ignore_errors=True)
        raise


def _refuse_units_in_training(path: Path, name: str) -> None:
    """Refuse (:class:`StoreLockedError`) to replace the group ``name`` while a unit's owner
    still holds its lock (a task of an earlier command whose client was lost): it would go on
    writing into the new group, and deleting its lock would let a second owner train it."""
    busy = [k for k, r in live_unit_status(path, name).items() if r.get("status") == S.RUN_RUNNING]  # records
    if busy:
        raise StoreLockedError(
            f"{str(path)!r}: {name} unit(s) {', '.join(busy)} are still being trained (tasks of an earlier "
            "command); wait for them to finish or stop their workers, then run again with --overwrite")


@contextmanager
def training_group(path: Path, name: str, spec: GroupSpec, *, spec_attr: str, status_attr: str, option: str,
                   overwrite: bool, create_arrays: Callable[[zarr.Group], None],
                   grow: Callable[[zarr.Group], None]) -> Iterator[zarr.Group]:
    """The store's group ``name`` ready for a run made with ``spec`` (see the module docstring).

    Refused (:class:`ConfigMismatchError`, naming ``option``) before anything is written when an
    existing group's spec differs, unless ``overwrite``; checked again under the writer lock.
    ``create_arrays(group)`` makes a new group's (empty) arrays, ``grow(group)`` extends them to
    the run's units.  Yields the group, opened with the grown shapes, while the store's writer
    lock is held; on exit (also after a failure or Ctrl-C) copies the units' records into the
    status table ``status_attr`` (:func:`collect_unit_status`) and consolidates the store.
    A new group starts without records (those of a group it replaces are removed)."""
    old = read_group_spec(path, name, spec_attr, type(spec))
    if old is not None and not overwrite:
        refuse_mismatch(path, name, old, spec, option)
    with StoreWriter(path) as writer:
        # looked at again under the lock: another coordinator may have made (or replaced) it since
        old = read_group_spec(path, name, spec_attr, type(spec))
        if old is not None and overwrite:
            _refuse_units_in_training(path, name)
            shutil.rmtree(path / name)
            old = None
        if old is None:
            shutil.rmtree(run_folder(path, name), ignore_errors=True)  # records of a replaced group
            _create_group(writer, name, spec_attr, spec, status_attr, create_arrays)
        else:
            refuse_mismatch(path, name, old, spec, option)
        grow(open_group(path, name))
        consolidate(path)
        try:
            yield open_group(path, name)  # handles with the new shapes
        finally:  # the units' records into the status table, also after a failure or Ctrl-C
            try:
                collect_unit_status(path, name, status_attr)
            finally:
                consolidate(path)
