"""Selection manifests: which examples of a data set a subset keeps, and why.

A manifest is a small JSON document written by ``scorebank select`` and read by the
retraining stage.  Fields (``format_version`` 1):

``format``              always ``"scorebank-manifest"``
``format_version``      1
``name``                the manifest's name (also its group name inside the store)
``store``               path of the score store it was selected from
``dataset``             data set name; ``dataset_fingerprint`` its fingerprint
``n_examples``          size of the data set the indices refer to
``score``               score spec (e.g. ``"el2n@20"``), null for the random baseline
``runs``                seeds whose scores were averaged
``strategy``            selection strategy; ``parameters`` all its parameters
``indices``             kept example positions (along the store's ``example`` dimension,
                        the data set's documented order), sorted, unique
``n_kept``              ``len(indices)``
``counts_per_class``    {str(label): kept examples with that training label}
``class_names``         the data set's class names
``created``             ISO 8601 UTC time; ``scorebank_version`` the writing version

:func:`read_manifest` validates all of it (indices unique and in range, counts consistent,
fingerprint and size matching the data set it is applied to).  :func:`record_manifest`
stores a manifest inside a score store as the group ``manifests/<name>`` (the document
without ``indices`` in the attribute ``manifest``, the indices as the int64 array
``indices``), written under a temporary name and renamed into place only when complete.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scorebank.stores import schema as S
from scorebank.stores.arrays import create_array
from scorebank.stores.errors import (ConfigMismatchError, InvalidArgumentError, StoreExistsError,
                                     StoreNotFoundError)
from scorebank.stores.jsonfile import loads
from scorebank.stores.partial import clean_stale, partial_path

MANIFEST_FORMAT = "scorebank-manifest"
MANIFEST_VERSION = 1
INDICES_ARRAY = "indices"
MANIFEST_ATTR = "manifest"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@=+-]{0,199}")


@dataclass(frozen=True)
class Manifest:
    """A validated selection manifest (see the module docstring for the fields)."""

    name: str
    store: str
    dataset: str
    dataset_fingerprint: str
    n_examples: int
    score: str | None
    runs: tuple[int, ...]
    strategy: str
    parameters: dict
    indices: np.ndarray
    counts_per_class: dict[str, int]
    class_names: tuple[str, ...] = ()
    created: str = ""
    scorebank_version: str = ""
    format_version: int = MANIFEST_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def n_kept(self) -> int:
        return int(self.indices.size)

    def to_dict(self, *, with_indices: bool = True) -> dict:
        doc = {"format": MANIFEST_FORMAT, "format_version": self.format_version, "name": self.name,
               "store": self.store, "dataset": self.dataset,
               "dataset_fingerprint": self.dataset_fingerprint, "n_examples": int(self.n_examples),
               "score": self.score, "runs": [int(r) for r in self.runs], "strategy": self.strategy,
               "parameters": dict(self.parameters), "n_kept": self.n_kept,
               "counts_per_class": {str(k): int(v) for k, v in self.counts_per_class.items()},
               "class_names": list(self.class_names), "created": self.created,
               "scorebank_version": self.scorebank_version, **self.extra}
        if with_indices:
            doc["indices"] = [int(i) for i in self.indices]
        return doc

    def validate(self, *, expected_fingerprint: str | None = None, n_examples: int | None = None,
                 source: str = "manifest") -> "Manifest":
        """Check the indices (unique, sorted, in range), the counts, and, when given, that
        the manifest belongs to the data set with ``expected_fingerprint`` and
        ``n_examples`` examples.  Returns self."""
        idx = self.indices
        if idx.ndim != 1:
            raise InvalidArgumentError(f"{source}: 'indices' must be a flat list of integers")
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_examples):
            bad = int(idx[(idx < 0) | (idx >= self.n_examples)][0])
            raise InvalidArgumentError(
                f"{source}: index {bad!r} is out of range for a data set of {self.n_examples} "
                f"examples (valid: 0..{self.n_examples - 1})")
        if idx.size > 1:
            d = np.diff(idx)
            if (d == 0).any():
                raise InvalidArgumentError(
                    f"{source}: index {int(idx[1:][d == 0][0])!r} appears more than once; indices must be unique")
            if (d < 0).any():
                raise InvalidArgumentError(f"{source}: 'indices' must be sorted ascending")
        if sum(self.counts_per_class.values()) != idx.size:
            raise InvalidArgumentError(
                f"{source}: counts_per_class sums to {sum(self.counts_per_class.values())} but "
                f"there are {idx.size} indices")
        if expected_fingerprint is not None and self.dataset_fingerprint != expected_fingerprint:
            raise ConfigMismatchError(
                f"{source} was selected from data set fingerprint {self.dataset_fingerprint!r} "
                f"({self.dataset!r}) but is applied to one with fingerprint {expected_fingerprint!r}; "
                "use a manifest selected from this data set")
        if n_examples is not None and int(n_examples) != self.n_examples:
            raise ConfigMismatchError(
                f"{source} describes a data set of {self.n_examples} examples but is applied to "
                f"one of {int(n_examples)}; use a manifest selected from this data set")
        return self

    @classmethod
    def from_dict(cls, doc, *, source: str = "manifest", indices=None) -> "Manifest":
        """Parse a manifest document (``indices`` may be given separately), checking its
        format and field types; raises :class:`InvalidArgumentError` on any problem."""
        if not isinstance(doc, dict):
            raise InvalidArgumentError(f"{source} is not a JSON object")
        if doc.get("format") != MANIFEST_FORMAT:
            raise InvalidArgumentError(
                f"{source} is not a scorebank manifest (format {doc.get('format')!r}, expected "
                f"{MANIFEST_FORMAT!r})")
        version = doc.get("format_version")
        if version != MANIFEST_VERSION:
            raise InvalidArgumentError(
                f"{source} has format_version {version!r}; this scorebank reads version {MANIFEST_VERSION}")
        types = {"name": str, "store": str, "dataset": str, "dataset_fingerprint": str,
                 "n_examples": int, "runs": list, "strategy": str, "parameters": dict,
                 "counts_per_class": dict}
        for key, typ in types.items():
            if key not in doc:
                raise InvalidArgumentError(f"{source} lacks the field {key!r}")
            if not isinstance(doc[key], typ) or (typ is int and isinstance(doc[key], bool)):
                raise InvalidArgumentError(
                    f"{source}: field {key!r} is {doc[key]!r}, expected a {typ.__name__}")
        if doc["n_examples"] < 1:
            raise InvalidArgumentError(f"{source}: n_examples {doc['n_examples']!r} must be positive")
        if doc.get("score") is not None and not isinstance(doc["score"], str):
            raise InvalidArgumentError(f"{source}: field 'score' is {doc['score']!r}, expected a string or null")
        raw = doc.get("indices") if indices is None else indices
        if raw is None:
            raise InvalidArgumentError(f"{source} lacks the field 'indices'")
        arr = np.asarray(raw)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise InvalidArgumentError(f"{source}: 'indices' must be a flat list of integers")
        for key in ("runs",):
            if not all(isinstance(r, int) and not isinstance(r, bool) for r in doc[key]):
                raise InvalidArgumentError(f"{source}: field {key!r} must list integer seeds")
        counts = doc["counts_per_class"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values()):
            raise InvalidArgumentError(f"{source}: counts_per_class must map labels to counts >= 0")
        if "n_kept" in doc and doc["n_kept"] != arr.size:
            raise InvalidArgumentError(
                f"{source}: n_kept is {doc['n_kept']!r} but there are {arr.size} indices")
        known = {"format", "format_version", "name", "store", "dataset", "dataset_fingerprint",
                 "n_examples", "score", "runs", "strategy", "parameters", "n_kept", "indices",
                 "counts_per_class", "class_names", "created", "scorebank_version"}
        return cls(name=doc["name"], store=doc["store"], dataset=doc["dataset"],
                   dataset_fingerprint=doc["dataset_fingerprint"], n_examples=int(doc["n_examples"]),
                   score=doc.get("score"), runs=tuple(int(r) for r in doc["runs"]),
                   strategy=doc["strategy"], parameters=dict(doc["parameters"]),
                   indices=arr.astype(np.int64), counts_per_class={str(k): int(v) for k, v in counts.items()},
                   class_names=tuple(str(c) for c in doc.get("class_names", ())),
                   created=str(doc.get("created", "")), scorebank_version=str(doc.get("scorebank_version", "")),
                   format_version=int(version), extra={k: v for k, v in doc.items() if k not in known})


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def check_name(name: str) -> str:
    """A manifest name: letters, digits and ``._@=+-``, starting with a letter or digit."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise InvalidArgumentError(
            f"manifest name {name!r} is not accepted; use up to 200 letters, digits and ._@=+- "
            "starting with a letter or digit")
    return name


def default_name(strategy: str, score: str | None) -> str:
    """``<strategy>-<score>-<UTC time>-<4 hex>``, e.g. ``keep-highest-el2n@20-20260101T120000-1a2b``."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return check_name(f"{strategy}-{score or 'none'}-{stamp}-{uuid.uuid4().hex[:4]}")


def write_manifest(path: str | os.PathLike, manifest: Manifest) -> Path:
    """Write ``manifest`` as JSON to ``path`` atomically (temporary file, then rename)."""
    manifest.validate()
    path = Path(path)
    text = json.dumps(manifest.to_dict(), indent=1) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = partial_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_manifest(path: str | os.PathLike, *, expected_fingerprint: str | None = None,
                  n_examples: int | None = None) -> Manifest:
    """Read and validate a manifest file; with ``expected_fingerprint`` / ``n_examples``
    also check it belongs to that data set (:class:`ConfigMismatchError` otherwise)."""
    source = f"manifest {os.fspath(path)!r}"
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise InvalidArgumentError(f"no manifest file at {os.fspath(path)!r}") from None
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read {source}: {exc.strerror}") from None
    doc = loads(raw, source)
    return Manifest.from_dict(doc, source=source).validate(
        expected_fingerprint=expected_fingerprint, n_examples=n_examples, source=source)


# ------------------------------------------------------------------------------ in the store
def record_manifest(store: str | os.PathLike, manifest: Manifest) -> str:
    """Record ``manifest`` in the score store at ``store`` as ``manifests/<name>`` and
    re-consolidate the store's metadata; returns the group path.

    Holds the store's writer lock while writing (:class:`StoreLockedError` if a
    ``scorebank score`` is writing).  The group is built under a temporary name and
    renamed into place when complete, so readers never see half a manifest.  Refuses
    (:class:`StoreExistsError`) a name already recorded."""
    import zarr

    from scorebank.stores.zarrstore import StoreWriter, consolidate, is_scorebank_store

    manifest.validate()
    name = check_name(manifest.name)
    path = Path(store)
    if not path.is_dir():
        raise InvalidArgumentError(
            f"cannot record the manifest in {os.fspath(store)!r}: only a store directory is "
            "writable (not an archive or URL); pass --no-record to skip recording")
    if not is_scorebank_store(path):
        raise StoreNotFoundError(f"no scorebank store at {os.fspath(store)!r} to record the manifest in")
    with StoreWriter(path):
        root = zarr.open_group(path, mode="r+", zarr_format=3, use_consolidated=False)
        group = root.require_group(S.MANIFESTS_GROUP)
        final = path / S.MANIFESTS_GROUP / name
        if final.exists():
            raise StoreExistsError(
                f"the store already has a manifest named {name!r}; choose another --name")
        # under the store's writer lock no one else is building a manifest: any partial
        # group is left over from an interrupted one
        for stale in (path / S.MANIFESTS_GROUP).glob(".partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp_name = f".partial-{uuid.uuid4().hex[:12]}"
        try:
            tmp = group.create_group(tmp_name)
            tmp.attrs[MANIFEST_ATTR] = manifest.to_dict(with_indices=False)
            create_array(tmp, INDICES_ARRAY, dims=("kept",), data=np.asarray(manifest.indices, dtype=np.int64),
                         chunks=(max(1, manifest.n_kept),), fill_value=0)
            os.rename(path / S.MANIFESTS_GROUP / tmp_name, final)
        except BaseException:
            shutil.rmtree(path / S.MANIFESTS_GROUP / tmp_name, ignore_errors=True)
            raise
        consolidate(path)
    return f"{S.MANIFESTS_GROUP}/{name}"


def _manifests_group(store: str | os.PathLike, *, storage_options: dict | None = None):
    """``(group or None, shown)``: the store's ``manifests`` group, read through
    :func:`scorebank.stores.location.open_group` (a directory, a ``.zip`` archive or a URL;
    :class:`StoreNotFoundError` if there is no scorebank store), None when it has none."""
    import zarr

    from scorebank.stores.location import open_group

    root, where = open_group(store, storage_options=storage_options)
    try:
        group = root[S.MANIFESTS_GROUP]
    except KeyError:
        return None, where.shown
    return (group if isinstance(group, zarr.Group) else None), where.shown


def _names(group) -> list[str]:
    import zarr

    if group is None:
        return []
    return sorted(name for name, node in group.members()
                  if isinstance(node, zarr.Group) and not name.startswith(".") and INDICES_ARRAY in node)


def store_manifest_names(store: str | os.PathLike, *, storage_options: dict | None = None) -> list[str]:
    """Names of the manifests recorded in the store (a directory, a ``.zip`` archive made by
    ``scorebank export``, or a URL), sorted (temporary ones excluded).  Raises
    :class:`StoreNotFoundError` when ``store`` holds no scorebank store."""
    group, _ = _manifests_group(store, storage_options=storage_options)
    return _names(group)


def _read_group(group, name: str, shown: str, expected_fingerprint: str | None,
                n_examples: int | None) -> Manifest:
    node = group[name]
    source = f"manifest {name!r} in {shown!r}"
    doc = dict(node.attrs.get(MANIFEST_ATTR, {}))
    return Manifest.from_dict(doc, source=source, indices=np.asarray(node[INDICES_ARRAY][:])).validate(
        expected_fingerprint=expected_fingerprint, n_examples=n_examples, source=source)


def read_store_manifest(store: str | os.PathLike, name: str, *, expected_fingerprint: str | None = None,
                        n_examples: int | None = None, storage_options: dict | None = None) -> Manifest:
    """Read and validate the manifest ``name`` recorded in a score store (any location
    :func:`store_manifest_names` accepts)."""
    group, shown = _manifests_group(store, storage_options=storage_options)
    names = _names(group)
    if name not in names:
        raise InvalidArgumentError(f"the store at {shown!r} has no manifest {name!r}; it has {names!r}")
    return _read_group(group, name, shown, expected_fingerprint, n_examples)


def read_store_manifests(store: str | os.PathLike, *, storage_options: dict | None = None) -> list[Manifest]:
    """Every manifest recorded in a score store, sorted by name, read with one opening of
    the store (a directory, a ``.zip`` archive or a URL; :class:`StoreNotFoundError` if
    there is no scorebank store there)."""
    group, shown = _manifests_group(store, storage_options=storage_options)
    return [_read_group(group, name, shown, None, None) for name in _names(group)]
