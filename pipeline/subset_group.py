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
from scorebank.stores.errors import ConfigMismatchError
from scorebank.stores.zarrstore import StoreWriter, consolidate, now_iso, scorebank_version

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


def unit_status(group: zarr.Group, attr: str, unit: str) -> dict:
    """The status record of ``unit`` in the table ``attr`` of the group's attributes ({} if none)."""
    return dict(group.attrs.get(attr, {})).get(unit, {})


def set_unit_status(group: zarr.Group, attr: str, unit: str, record: dict) -> None:
    units = dict(group.attrs.get(attr, {}))
    units[unit] = record
    group.attrs[attr] = units


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


@contextmanager
def training_group(path: Path, name: str, spec: GroupSpec, *, spec_attr: str, status_attr: str, option: str,
                   overwrite: bool, create_arrays: Callable[[zarr.Group], None],
                   grow: Callable[[zarr.Group], None]) -> Iterator[zarr.Group]:
    """The store's group ``name`` ready for a run made with ``spec`` (see the module docstring).

    Refused (:class:`ConfigMismatchError`, naming ``option``) before anything is written when an
    existing group's spec differs, unless ``overwrite``; checked again under the writer lock.
    ``create_arrays(group)`` makes a new group's (empty) arrays, ``grow(group)`` extends them to
    the run's units.  Yields the group, opened with the grown shapes, while the store's writer
    lock is held; consolidates the store on exit."""
    old = read_group_spec(path, name, spec_attr, type(spec))
    if old is not None and not overwrite:
        refuse_mismatch(path, name, old, spec, option)
    with StoreWriter(path) as writer:
        if old is not None and overwrite:
            shutil.rmtree(path / name)
            old = None
        if old is None:
            _create_group(writer, name, spec_attr, spec, status_attr, create_arrays)
        else:
            refuse_mismatch(path, name, read_group_spec(path, name, spec_attr, type(spec)), spec, option)
        grow(open_group(path, name))
        consolidate(path)
        try:
            yield open_group(path, name)  # handles with the new shapes
        finally:  # the status records, also after Ctrl-C
            consolidate(path)
