"""Opening a score store for reading, wherever it is.

:func:`open_scores` is the one entry point every reading command and analysis uses.  A
*location* may be

* a store directory (what ``scorebank score`` writes);
* a score archive, ``*.zip`` made by ``scorebank export``, read in place (never unpacked);
* a ``file://`` URL of either;
* an fsspec URL (``http(s)://``, ``s3://``, ``gs://``, ...) of a store directory, or of an
  archive when the URL's path ends in ``.zip``.  URLs are read-only.

Stores and archives from elsewhere are untrusted input.  Before xarray decodes anything,
the root ``zarr.json`` is checked (:func:`check_store_metadata`): it must be a Zarr v3
group carrying the ``scorebank_format`` attribute and flat consolidated metadata whose
keys are plain relative node names; every array in it may only use plain
numeric/boolean/string data types and the codec chains scorebank writes
(:data:`ALLOWED_CODECS`: no pickle or other object codecs, so reading never runs code),
with chunks of at most :data:`MAX_CHUNK_BYTES`; arrays the schema names must have its
dimensions and data types, every dimension one length within :data:`DIMENSION_BOUNDS`,
and the attributes scorebank reads (``config``, ``runs``, ``features``, ...) their
documented types; by default every array the schema lists for the store's features must
be there (:func:`schema_arrays`), so a crafted store missing one is refused when opened
rather than failing later in an analysis.  Every chunk is then checked as it is read (:class:`ChunkGuard`: its
zstd frame must state a decompressed size equal to the array's declared chunk size), so
no chunk can decompress to more than its metadata declares.  Archives are checked further
by :class:`scorebank.stores.archive.ArchiveStore` (member names, sizes, checksums).

Opening an archive without scorebank, with plain xarray::

    import xarray as xr, zarr
    ds = xr.open_zarr(zarr.storage.ZipStore("scores.scorebank.zip", mode="r"))
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

from scorebank.core.config import ScoreConfig
from scorebank.stores import schema as S
from scorebank.stores.errors import ScorebankError, StoreNotFoundError
from scorebank.stores.jsonfile import loads
from scorebank.stores.remote import (filesystem, is_remote, local_path, remote_path_name, remote_store,
                                     translate_remote_errors)

#: Zarr v3 data types a scorebank store may use.
ALLOWED_DATA_TYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                                "uint64", "float16", "float32", "float64", "string"})
#: Zarr v3 codecs scorebank will decode: exactly the ones it writes (zarr's defaults, see
#: :func:`scorebank.stores.zarrstore.create_store` and the archive export): ``bytes`` (or
#: ``vlen-utf8`` for strings), optionally followed by ``zstd``.  None deserialises objects;
#: gzip, blosc, sharding and the rest are refused (their decoded size cannot be bounded
#: before decoding, see :class:`ChunkGuard`).
ALLOWED_CODECS = frozenset({"bytes", "zstd", "vlen-utf8"})
#: Largest uncompressed chunk a store may declare; bigger ones are refused so a crafted
#: store cannot make a reader allocate unbounded memory.
MAX_CHUNK_BYTES = 1 << 30
#: Largest root ``zarr.json`` read (it holds the consolidated metadata of every array).
MAX_METADATA_BYTES = 64 << 20
#: Longest value (UTF-8 bytes) of a string array (source names, configuration hashes).
MAX_STRING_BYTES = 1 << 12
#: Upper bounds on the lengths of the store's dimensions, and on runs x epochs (the
#: per-(run, epoch) arrays that ``scorebank info`` reads whole).
DIMENSION_BOUNDS = {S.RUN: 100_000, S.EPOCH: 100_001, S.EXAMPLE: 1 << 31}
MAX_RUN_EPOCHS = 1 << 24
#: Readers load the dimension coordinates (run, epoch, example) whole: xarray indexes them
#: when it opens a store.  So that metadata alone cannot make a reader allocate (a crafted
#: archive declaring 2^31 examples and storing none), all their chunks but one must be
#: stored (their values are distinct, so only one chunk can be all zeros, which zarr does not
#: store) and they may declare at most
#: :data:`MAX_COORDINATE_RATIO` times the bytes their stored chunks hold (real ones compress
#: 5-8x; chunks of zeros ~30000x), beyond :data:`COORDINATE_BYTES_FREE`.
MAX_COORDINATE_RATIO = 64
COORDINATE_BYTES_FREE = 64 << 10
#: The minimum a scorebank store has: what :func:`open_scores` and :func:`open_group`
#: require with ``complete=False``.  By default they require the schema's full list for the
#: store's features (:func:`schema_arrays`), so no reader meets a missing array later.
REQUIRED_ARRAYS = (S.RUN, S.EPOCH, S.EXAMPLE, S.COMPLETED, S.RECORDED, S.LABEL)

_ITEMSIZE = {"bool": 1, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "float16": 2, "int32": 4,
             "uint32": 4, "float32": 4, "int64": 8, "uint64": 8, "float64": 8}
_ZSTD_MAGIC = 0xFD2FB528
_CHUNK_INDEX = re.compile(r"[0-9]{1,19}")


class UnsafeStoreError(ScorebankError, ValueError):
    """The store's metadata or a chunk asks for something scorebank refuses to decode or allocate."""


class CorruptStoreError(ScorebankError, ValueError):
    """A chunk of the store passed the checks but could not be decoded (corrupt data)."""


class NewerFormatError(UnsafeStoreError):
    """The store was written in a format newer than this version reads (upgrade scorebank)."""


class MissingVariableError(ScorebankError, LookupError):
    """An analysis needs a variable the store does not have: its format predates the
    variable, or it was made without the feature that records it."""


def schema_arrays(features: frozenset[str] | set[str] = frozenset(),
                  format_version: int | None = None) -> tuple[str, ...]:
    """Names of the root arrays a complete store of ``format_version`` (default: the
    current one) with the given features holds: the coordinates and every schema variable
    (:func:`scorebank.stores.schema.variables`)."""
    return tuple(S.coordinates()) + tuple(v.name for v in S.variables(features, format_version))


def readable_format(attrs: dict) -> int:
    """The store's format (:func:`scorebank.stores.schema.store_format`) as far as this
    version knows it: a store written in a newer format that this version may read (its
    ``scorebank_format`` allows it) has at least the variables of the current format."""
    return min(S.store_format(attrs), S.FORMAT_VERSION)


def require_variables(ds: xr.Dataset, names: Iterable[str], what: str) -> None:
    """Raise :class:`MissingVariableError` in one line when ``ds`` lacks one of ``names``
    (``what`` names the analysis that needs them), saying why: the store's format predates
    the variable, or the store was made without the feature that records it."""
    for name in names:
        if name in ds.variables:
            continue
        var = S.BY_NAME.get(name)
        fmt = S.store_format(ds.attrs)
        if var is not None and _is_int(fmt) and fmt < var.since:
            why = (f"store format {fmt} has no {name!r} (added in format {var.since}): "
                   "re-score with a newer scorebank")
        elif var is not None and var.feature is not None:
            why = (f"the store has no {name!r}: it is recorded only in stores made with the "
                   f"{var.feature!r} feature; re-score with it enabled")
        else:
            why = f"the store has no variable {name!r}"
        raise MissingVariableError(f"{what} needs {name!r}, but {why}")


def _expected_arrays() -> dict[str, tuple[tuple[str, ...], str]]:
    """``{name: (dims, Zarr data type)}`` of every root array the schema names."""
    out = dict(S.coordinates())
    out.update({v.name: (tuple(v.dims), v.dtype) for v in S.VARIABLES})
    out.update({name: ((S.RUN,), dtype) for name, dtype in S.RUN_COORD_DTYPES.items()})
    return out


@dataclass
class Resolved:
    """Where a location points: ``kind`` is ``"directory"`` or ``"archive"``; ``store`` is
    the read-only Zarr store (or, for a local directory, its path); ``name`` is the last
    path component (used as a source name when merging)."""

    kind: str
    store: Any
    shown: str
    name: str
    local: str | None  # local path (directory or archive file), None for URLs
    url: str | None = None
    storage_options: dict | None = None

    @property
    def archive(self):
        """The :class:`~scorebank.stores.archive.ArchiveStore` of an archive, else None."""
        return self.store if self.kind == "archive" else None


def resolve(location: str | os.PathLike, *, storage_options: dict | None = None) -> Resolved:
    """Find out what ``location`` holds and make a read-only store for it (nothing about the
    scores is read yet; archives have their member table and manifest checked)."""
    from scorebank.stores.archive import ArchiveStore

    if is_remote(location):
        url = os.fspath(location)
        name = remote_path_name(url)
        if url.split("?", 1)[0].split("#", 1)[0].lower().endswith(".zip"):
            return Resolved("archive", ArchiveStore.from_url(url, storage_options=storage_options), url,
                            name, None, url, storage_options)
        return Resolved("directory", remote_store(url, storage_options), url, name, None, url, storage_options)
    path = local_path(location)
    shown = os.fspath(location)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "zarr.json")):
            raise StoreNotFoundError(
                f"no scorebank store at {shown!r}: expected a Zarr v3 store made by 'scorebank score'")
        return Resolved("directory", path, shown, os.path.basename(os.path.normpath(path)), path)
    if os.path.isfile(path):
        return Resolved("archive", ArchiveStore(path), shown, os.path.basename(path), path)
    raise StoreNotFoundError(
        f"no scorebank store at {shown!r}: expected a Zarr v3 store made by 'scorebank score' "
        "or a .zip archive made by 'scorebank export'")


def read_root_metadata(where: Resolved) -> dict:
    """The parsed root ``zarr.json`` of a resolved location (size-bounded)."""
    if where.kind == "archive":
        raw = where.store.read_member("zarr.json", max_bytes=MAX_METADATA_BYTES)
    elif where.local is not None:
        meta = os.path.join(where.local, "zarr.json")
        if os.path.getsize(meta) > MAX_METADATA_BYTES:
            raise UnsafeStoreError(
                f"{where.shown!r}: zarr.json is {os.path.getsize(meta)} bytes; at most "
                f"{MAX_METADATA_BYTES} are accepted")
        with open(meta, "rb") as f:
            raw = f.read()
    else:
        fs, path = filesystem(where.url, where.storage_options)
        meta = path.rstrip("/") + "/zarr.json"
        try:
            size = fs.size(meta)
            if size is not None and size > MAX_METADATA_BYTES:
                raise UnsafeStoreError(
                    f"{where.shown!r}: zarr.json is {size} bytes; at most {MAX_METADATA_BYTES} are accepted")
            raw = fs.cat_file(meta)
        except FileNotFoundError:
            raise StoreNotFoundError(
                f"no scorebank store at {where.shown!r}: {meta!r} does not exist") from None
        except ScorebankError:
            raise
        except Exception as exc:  # noqa: BLE001 - network layers raise many types
            raise translate_remote_errors(where.shown, exc) from None
    doc = loads(raw, f"{where.shown!r}: zarr.json")
    if not isinstance(doc, dict):
        raise StoreNotFoundError(f"{where.shown!r}: zarr.json is not a JSON object")
    return doc


# ------------------------------------------------------------------------------ metadata checks
def check_store_metadata(doc: dict, shown: str, *, complete: bool = False) -> "ChunkGuard":
    """Refuse a root ``zarr.json`` that is not a scorebank store or that names data types,
    codecs, chunk sizes, shapes, node names or attributes scorebank will not read (see the
    module docstring).  ``complete`` requires every array of the schema
    (:func:`schema_arrays` for the store's features), otherwise :data:`REQUIRED_ARRAYS`.

    Returns the :class:`ChunkGuard` that checks the store's chunks as they are read."""
    if doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
        raise StoreNotFoundError(f"{shown!r} is not a Zarr v3 group (zarr_format "
                                 f"{doc.get('zarr_format')!r}, node_type {doc.get('node_type')!r})")
    attrs = doc.get("attributes")
    if not isinstance(attrs, dict) or S.ATTR_FORMAT not in attrs:
        raise StoreNotFoundError(
            f"{shown!r} is a Zarr store but not a scorebank store (attribute {S.ATTR_FORMAT!r} missing)")
    features = check_attributes(attrs, shown)
    consolidated = doc.get("consolidated_metadata")
    entries = consolidated.get("metadata") if isinstance(consolidated, dict) else None
    if not isinstance(entries, dict) or consolidated.get("kind", "inline") != "inline":
        raise StoreNotFoundError(
            f"{shown!r} has no consolidated metadata; scorebank stores always have it "
            "(re-create the archive with 'scorebank export')")
    for name, meta in entries.items():
        _check_node_name(name, entries, shown)
        if not isinstance(meta, dict):
            raise UnsafeStoreError(f"{shown!r}: metadata of {name!r} is not a JSON object")
        if meta.get("zarr_format") != 3:
            raise UnsafeStoreError(f"{shown!r}: {name!r} has zarr_format {meta.get('zarr_format')!r}; expected 3")
        if meta.get("node_type") not in ("array", "group"):
            raise UnsafeStoreError(f"{shown!r}: {name!r} has node_type {meta.get('node_type')!r}; "
                                   "expected 'array' or 'group'")
        if meta["node_type"] == "group":
            nested = meta.get("consolidated_metadata")
            if nested is not None and (not isinstance(nested, dict) or nested.get("metadata")):
                raise UnsafeStoreError(
                    f"{shown!r}: group {name!r} carries its own consolidated metadata; only the root's "
                    "(flat) consolidated metadata is accepted")
    rules = {name: _check_array_metadata(name, meta, shown)
             for name, meta in entries.items() if meta["node_type"] == "array"}
    _check_root_arrays(entries, shown)
    required = schema_arrays(features, readable_format(attrs)) if complete else REQUIRED_ARRAYS
    missing = [name for name in required
               if not isinstance(entries.get(name), dict) or entries[name].get("node_type") != "array"]
    if missing:
        which = f" with the feature(s) {sorted(features)!r}" if complete and features else ""
        raise StoreNotFoundError(f"{shown!r} lacks the array(s) {missing!r} every scorebank store{which} has")
    return ChunkGuard(rules, shown)


def check_attributes(attrs: dict, shown: str) -> frozenset[str]:
    """Refuse root attributes of the wrong type (the ones scorebank reads); returns the
    store's features."""
    def refuse(name: str, value: Any, expected: str) -> None:
        text = repr(value)
        if len(text) > 200:
            text = text[:200] + "..."
        raise UnsafeStoreError(f"{shown!r}: attribute {name!r} is {text}; expected {expected}")

    version = attrs.get(S.ATTR_FORMAT)
    if not _is_int(version) or version < S.MIN_FORMAT:
        refuse(S.ATTR_FORMAT, version, f"an integer {S.MIN_FORMAT}..{S.FORMAT_VERSION}")
    written = attrs.get(S.ATTR_WRITER_FORMAT, version)
    if version > S.FORMAT_VERSION:
        shown_format = written if _is_int(written) and written > version else version
        raise NewerFormatError(f"{shown!r} was written by scorebank format {shown_format}; this version "
                               f"reads formats {S.MIN_FORMAT}..{S.FORMAT_VERSION}; upgrade scorebank")
    if not _is_int(written) or written < version:
        refuse(S.ATTR_WRITER_FORMAT, written, f"an integer >= its {S.ATTR_FORMAT!r} ({version!r})")
    for name in (S.ATTR_VERSION, S.ATTR_DATASET, S.ATTR_FINGERPRINT, S.ATTR_CREATED):
        if attrs.get(name) is not None and not isinstance(attrs[name], str):
            refuse(name, attrs[name], "a string")
    names = attrs.get(S.ATTR_CLASS_NAMES)
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        refuse(S.ATTR_CLASS_NAMES, names, "a list of strings")
    features = attrs.get(S.ATTR_FEATURES, [])
    if not isinstance(features, list) or not all(isinstance(f, str) and f in S.FEATURES for f in features):
        refuse(S.ATTR_FEATURES, features, f"a list of {sorted(S.FEATURES)!r}")
    if S.ATTR_CONFIG in attrs:
        text = attrs[S.ATTR_CONFIG]
        try:
            config = loads(text, "configuration") if isinstance(text, str) else None
        except ScorebankError:
            config = None
        if not isinstance(config, dict):
            refuse(S.ATTR_CONFIG, text, "the configuration as a JSON object in a string")
        for key in ("record_epochs", "grand_epochs"):  # the typed reader makes tuples of them
            value = config.get(key)
            if key in config and not (isinstance(value, list) and all(_is_int(e) and e >= 0 for e in value)):
                refuse(f"{S.ATTR_CONFIG}.{key}", value, "a list of non-negative integers")
    runs = attrs.get(S.ATTR_RUNS, {})
    if not isinstance(runs, dict):
        refuse(S.ATTR_RUNS, runs, "a JSON object {seed: {'status': ...}}")
    for key, info in runs.items():
        if (not isinstance(info, dict) or not isinstance(info.get("status", ""), str)
                or not (info.get("failed_epoch") is None or _is_int(info["failed_epoch"]))):
            refuse(f"{S.ATTR_RUNS}[{key!r}]", info, "{'status': str, 'failed_epoch': int or null, ...}")
    sources = attrs.get(S.ATTR_SOURCES)
    if sources is not None and not (isinstance(sources, list) and all(isinstance(e, dict) for e in sources)):
        refuse(S.ATTR_SOURCES, sources, "a list of JSON objects")
    return frozenset(features)


def store_config(attrs: dict, shown: str) -> ScoreConfig | None:
    """The store's configuration, typed (:meth:`ScoreConfig.from_json`), after
    :func:`check_attributes` accepted the attributes; None when the store records none.
    Fields the store predates read as their defaults; fields this version does not know are
    ignored."""
    check_attributes(attrs, shown)
    text = attrs.get(S.ATTR_CONFIG)
    return None if text is None else ScoreConfig.from_json(text)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_list(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v)


def _check_node_name(name: Any, entries: dict, shown: str) -> None:
    """A consolidated-metadata key must be a relative path of plain names whose parents
    are groups (zarr resolves ``..`` and absolute keys to other nodes, or fails)."""
    bad = None
    if not isinstance(name, str) or not name:
        bad = "is empty"
    elif name.startswith("/"):
        bad = "is absolute"
    elif "\\" in name or "\x00" in name:
        bad = "contains a backslash or NUL"
    elif len(name) > 1024:
        bad = "is longer than 1024 characters"
    else:
        parts = name.split("/")
        if any(p in ("", ".", "..", "zarr.json") for p in parts):
            bad = "has an empty, '.', '..' or 'zarr.json' component"
        else:
            for i in range(1, len(parts)):
                parent = entries.get("/".join(parts[:i]))
                if not isinstance(parent, dict) or parent.get("node_type") != "group":
                    bad = f"has parent {'/'.join(parts[:i])!r}, which is not a group of the store"
                    break
    if bad:
        raise UnsafeStoreError(f"{shown!r}: consolidated metadata key {name!r} {bad}; node names must be "
                               "relative paths like 'margin' or 'manifests/NAME/indices'")


def _check_array_metadata(name: str, meta: dict, shown: str) -> "ChunkRule":
    dtype = meta.get("data_type")
    if dtype not in ALLOWED_DATA_TYPES:
        raise UnsafeStoreError(
            f"{shown!r}: array {name!r} has data type {dtype!r}; scorebank reads only "
            f"{', '.join(sorted(ALLOWED_DATA_TYPES))}")
    if meta.get("storage_transformers"):
        raise UnsafeStoreError(f"{shown!r}: array {name!r} uses storage transformers "
                               f"{meta['storage_transformers']!r}; none are accepted")
    grid = meta.get("chunk_grid")
    if not isinstance(grid, dict) or grid.get("name") != "regular":
        raise UnsafeStoreError(f"{shown!r}: array {name!r} has chunk grid {grid!r}; expected a regular grid")
    encoding = meta.get("chunk_key_encoding")
    if (not isinstance(encoding, dict) or encoding.get("name") != "default"
            or (encoding.get("configuration") or {}).get("separator", "/") != "/"):
        raise UnsafeStoreError(f"{shown!r}: array {name!r} has chunk key encoding {encoding!r}; "
                               "expected {'name': 'default', 'configuration': {'separator': '/'}}")
    shape = meta.get("shape")
    chunk = (grid.get("configuration") or {}).get("chunk_shape")
    if not _int_list(shape) or not _int_list(chunk) or len(shape) != len(chunk) or 0 in chunk:
        raise UnsafeStoreError(f"{shown!r}: array {name!r} has shape {shape!r} and chunk shape "
                               f"{chunk!r}; expected equal-length lists of non-negative integers")
    return _check_codecs(name, meta.get("codecs"), chunk, dtype, shown)


def _check_codecs(name: str, codecs: Any, chunk: list[int], dtype: str, shown: str) -> "ChunkRule":
    """The codec chain must be one scorebank writes; returns the chunk's size rule."""
    items = math.prod(chunk)
    string = dtype == "string"
    nbytes = 4 + items * (4 + MAX_STRING_BYTES) if string else items * _ITEMSIZE[dtype]
    if nbytes > MAX_CHUNK_BYTES:
        raise UnsafeStoreError(f"{shown!r}: array {name!r} declares chunks of {chunk!r} "
                               f"({nbytes} bytes); at most {MAX_CHUNK_BYTES} bytes are accepted")
    if not isinstance(codecs, list) or not codecs:
        raise UnsafeStoreError(f"{shown!r}: array {name!r} has codecs {codecs!r}; expected a list")
    names = []
    for codec in codecs:
        cname = codec if isinstance(codec, str) else codec.get("name") if isinstance(codec, dict) else None
        if cname not in ALLOWED_CODECS:
            raise UnsafeStoreError(
                f"{shown!r}: array {name!r} uses codec {cname!r}; scorebank decodes only "
                f"{', '.join(sorted(ALLOWED_CODECS))} (never pickle or other object codecs)")
        config = codec.get("configuration") if isinstance(codec, dict) else None
        if cname == "bytes" and config not in (None, {}, {"endian": "little"}):
            raise UnsafeStoreError(f"{shown!r}: array {name!r} has bytes codec configuration {config!r}; "
                                   "scorebank writes little-endian data")
        names.append(cname)
    serializer = "vlen-utf8" if string else "bytes"
    if names not in ([serializer], [serializer, "zstd"]):
        raise UnsafeStoreError(f"{shown!r}: array {name!r} has the codec chain {names!r}; for data type "
                               f"{dtype!r} scorebank reads {[serializer, 'zstd']!r} or {[serializer]!r}")
    return ChunkRule(name, len(chunk), items, nbytes, string, names[-1] == "zstd")


def _check_root_arrays(entries: dict, shown: str) -> None:
    """Dimension names, data types and lengths of the root arrays (the Dataset's variables):
    schema arrays as the schema says, every dimension one length, within
    :data:`DIMENSION_BOUNDS`, so nothing is allocated from a crafted shape."""
    expected = _expected_arrays()
    sizes: dict[str, tuple[int, str]] = {}
    for name, meta in entries.items():
        if "/" in name or meta["node_type"] != "array":
            continue
        shape, dims = meta["shape"], meta.get("dimension_names")
        if (not isinstance(dims, list) or len(dims) != len(shape) or len(set(dims)) != len(dims)
                or not all(isinstance(d, str) and d for d in dims)):
            raise UnsafeStoreError(f"{shown!r}: array {name!r} has dimension names {dims!r}; expected "
                                   f"{len(shape)} distinct names")
        want = expected.get(name)
        if want is not None and (tuple(dims), meta["data_type"]) != want:
            raise UnsafeStoreError(
                f"{shown!r}: array {name!r} has dimensions {tuple(dims)!r} and data type "
                f"{meta['data_type']!r}; the schema says {want[0]!r} and {want[1]!r}")
        for dim, n in zip(dims, shape):
            bound = DIMENSION_BOUNDS.get(dim)
            if bound is not None and n > bound:
                raise UnsafeStoreError(f"{shown!r}: array {name!r} has shape {shape!r}: {n} along "
                                       f"{dim!r}; at most {bound} are accepted")
            first = sizes.setdefault(dim, (n, name))
            if first[0] != n:
                raise UnsafeStoreError(
                    f"{shown!r}: array {name!r} has shape {shape!r}: {n} along {dim!r}, but array "
                    f"{first[1]!r} has {first[0]}; every array must agree on the dimension lengths")
    cells = sizes.get(S.RUN, (1, ""))[0] * sizes.get(S.EPOCH, (1, ""))[0]
    if cells > MAX_RUN_EPOCHS:
        raise UnsafeStoreError(f"{shown!r} declares {sizes[S.RUN][0]} runs x {sizes[S.EPOCH][0]} epochs; "
                               f"at most {MAX_RUN_EPOCHS} (run, epoch) pairs are accepted")


def check_dataset(ds: xr.Dataset, shown: str, required: tuple[str, ...] = ()) -> None:
    """After xarray decoded the store: every schema variable it holds has the schema's
    dimensions and data type (attributes such as ``scale_factor`` or ``units: days since``
    would otherwise change them), and the ``required`` ones are present."""
    missing = [name for name in required if name not in ds.variables]
    if missing:
        raise StoreNotFoundError(f"{shown!r} lacks the array(s) {missing!r} every scorebank store has")
    for name, (dims, dtype) in _expected_arrays().items():
        if name not in ds.variables:
            continue
        got = ds.variables[name]
        ok = got.dtype.kind in "OUT" if dtype == "string" else got.dtype == np.dtype(dtype)
        if tuple(got.dims) != dims or not ok:
            raise UnsafeStoreError(f"{shown!r}: variable {name!r} decodes to dimensions {tuple(got.dims)!r} "
                                   f"and data type {str(got.dtype)!r}; the schema says {dims!r} and "
                                   f"{dtype!r} (check its attributes)")


def check_stored_coordinates(doc: dict, shown: str, stored_size: Callable[[str], int | None]) -> None:
    """Refuse dimension coordinates declared out of proportion to what is stored (see
    :data:`MAX_COORDINATE_RATIO`): two chunks not stored, or more than that ratio of declared
    to stored bytes.  ``stored_size(key)`` is the size of the stored object ``key`` (None when
    absent).  Stops at the second missing chunk, so a crafted shape costs two lookups."""
    entries = doc["consolidated_metadata"]["metadata"]
    for dim in (S.RUN, S.EPOCH, S.EXAMPLE):
        meta = entries.get(dim)
        if not isinstance(meta, dict) or meta.get("node_type") != "array" or meta["data_type"] == "string":
            continue
        (n,), (width,) = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
        declared = n * _ITEMSIZE[meta["data_type"]]
        stored, absent = 0, None
        for i in range(-(-n // width)):
            key = f"{dim}/c/{i}"
            size = stored_size(key)
            if size is None and absent is not None:
                raise UnsafeStoreError(
                    f"{shown!r}: coordinate {dim!r} declares {n} values but neither chunk {absent!r} nor "
                    f"{key!r} is stored; its values are distinct, so at most one chunk (all zeros, the fill "
                    "value) may be absent (the store is damaged or crafted)")
            if size is None:
                absent = key
                continue
            stored += size
            if stored * MAX_COORDINATE_RATIO >= declared:
                break
        if declared > COORDINATE_BYTES_FREE and stored * MAX_COORDINATE_RATIO < declared:
            raise UnsafeStoreError(
                f"{shown!r}: coordinate {dim!r} declares {n} values ({declared} bytes) but its chunks hold "
                f"{stored} bytes; scorebank reads at most {MAX_COORDINATE_RATIO}x what is stored")


def _stored_size(where: Resolved) -> Callable[[str], int | None]:
    """``stored_size(key)`` for :func:`check_stored_coordinates` on a resolved location."""
    if where.kind == "archive":
        return where.store.member_size
    if where.local is not None:
        def local_size(key: str) -> int | None:
            try:
                return os.stat(os.path.join(where.local, *key.split("/"))).st_size
            except (FileNotFoundError, NotADirectoryError):
                return None
        return local_size
    fs, root = filesystem(where.url, where.storage_options)

    def remote_size(key: str) -> int | None:
        try:
            return fs.size(root.rstrip("/") + "/" + key)
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - network layers raise many types
            raise translate_remote_errors(where.shown, exc) from None
    return remote_size


def reading(shown: str, name: str) -> contextlib.AbstractContextManager:
    """Turn a failure to decode array ``name`` of store ``shown`` into a scorebank error."""
    return _failing_as(shown, (ValueError, TypeError, RuntimeError, OverflowError),
                       lambda exc: CorruptStoreError(f"{shown!r}: array {name!r} could not be read "
                                                     f"({type(exc).__name__}: {exc})"))


@contextlib.contextmanager
def _failing_as(shown: str, caught: tuple[type[Exception], ...],
                error: Callable[[Exception], ScorebankError]) -> Iterator[None]:
    """Raise ``error(exc)`` for an exception of a ``caught`` type (scorebank's own pass
    through), and OSErrors as :func:`translate_remote_errors` says."""
    try:
        yield
    except ScorebankError:
        raise
    except caught as exc:
        raise error(exc) from None
    except OSError as exc:
        raise translate_remote_errors(shown, exc) from None


# ------------------------------------------------------------------------------ chunk checks
@dataclass(frozen=True)
class ChunkRule:
    """What a chunk object of array ``array`` may hold: ``decoded`` bytes exactly (fixed-size
    types) or at most (strings), ``items`` values, zstd-compressed or not."""

    array: str
    ndim: int
    items: int
    decoded: int
    string: bool
    zstd: bool

    @property
    def max_stored(self) -> int:
        """Largest chunk object that can hold it (zstd's worst-case expansion included)."""
        return self.decoded + self.decoded // 256 + 128 if self.zstd else self.decoded


def zstd_content_size(data: bytes) -> int | None:
    """Frame_Content_Size from the header of the zstd frame at the start of ``data``
    (RFC 8878, 3.1.1.1); None when the header does not state it.  ValueError when
    ``data`` does not start with a zstd frame header scorebank accepts."""
    if len(data) < 6 or int.from_bytes(data[:4], "little") != _ZSTD_MAGIC:
        raise ValueError(f"not a zstd frame (starts with {bytes(data[:4]).hex()!r})")
    descriptor = data[4]
    fcs_flag, single_segment = descriptor >> 6, (descriptor >> 5) & 1
    if descriptor & 0x08:
        raise ValueError("the zstd frame header sets the reserved bit")
    if descriptor & 0x03:
        raise ValueError("the zstd frame needs a dictionary")
    pos = 5 + (0 if single_segment else 1)
    size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if size == 0:
        return None
    if len(data) < pos + size:
        raise ValueError("the zstd frame header is truncated")
    value = int.from_bytes(data[pos:pos + size], "little")
    return value + 256 if size == 2 else value


class ChunkGuard:
    """Checks every chunk object of a store before zarr decodes it, against the metadata
    :func:`check_store_metadata` accepted, so no chunk decodes to more than its array
    declares (decompression bombs):

    * the object must be a chunk of an array in the consolidated metadata (key
      ``ARRAY/c/i/j/...``), at most :attr:`ChunkRule.max_stored` bytes;
    * zstd-compressed: one frame whose header states its content size (zarr trusts it,
      and decompresses frames without it unbounded), exactly the declared chunk bytes
      (fixed-size types) or at most :data:`MAX_STRING_BYTES` per value (strings);
    * uncompressed: exactly the declared chunk bytes;
    * strings (vlen-utf8): the item count in the chunk's header is the chunk's size
      (the decoder allocates that many objects before looking at the data).

    Metadata keys (``zarr.json``) pass unchecked (they are size-bounded and JSON)."""

    def __init__(self, rules: dict[str, ChunkRule], shown: str):
        self.rules = rules
        self.shown = shown

    @staticmethod
    def is_metadata(key: str) -> bool:
        return key == "zarr.json" or key.endswith("/zarr.json")

    def rule(self, key: str) -> ChunkRule:
        pos = key.find("/c")
        while pos != -1:
            rule = self.rules.get(key[:pos])
            rest = key[pos + 2:]
            if rule is not None and (rest == "" or rest.startswith("/")):
                parts = rest[1:].split("/") if rest else []
                if len(parts) == rule.ndim and all(_CHUNK_INDEX.fullmatch(p) for p in parts):
                    return rule
            pos = key.find("/c", pos + 1)
        raise UnsafeStoreError(f"{self.shown!r}: object {key!r} is not a chunk of any array in the "
                               "consolidated metadata; refusing to decode it")

    def check_size(self, key: str, size: int) -> ChunkRule:
        """Refuse a chunk object of ``size`` bytes that cannot be one of its array's."""
        rule = self.rule(key)
        if size > rule.max_stored:
            raise UnsafeStoreError(
                f"{self.shown!r}: chunk {key!r} of array {rule.array!r} is {size} bytes; its array's "
                f"chunks hold {rule.decoded} bytes{' before compression' if rule.zstd else ''}")
        return rule

    def check(self, key: str, data: bytes) -> None:
        """Refuse chunk ``data`` (the object stored at ``key``) as the class docstring says."""
        rule = self.check_size(key, len(data))
        decoded = data
        if rule.zstd:
            try:
                size = zstd_content_size(data)
            except ValueError as exc:
                raise UnsafeStoreError(f"{self.shown!r}: chunk {key!r} of array {rule.array!r}: {exc}; "
                                       "expected a zstd frame as zarr writes it") from None
            if size is None:
                raise UnsafeStoreError(
                    f"{self.shown!r}: chunk {key!r} of array {rule.array!r} does not state its "
                    "decompressed size in its zstd frame header; refusing to decompress it "
                    "(possible decompression bomb)")
            if size > rule.decoded or size == 0 or (not rule.string and size != rule.decoded):
                raise UnsafeStoreError(
                    f"{self.shown!r}: chunk {key!r} of array {rule.array!r} decompresses to {size} "
                    f"bytes; its array declares chunks of {rule.decoded} bytes"
                    f"{' at most' if rule.string else ''} (possible decompression bomb)")
            if rule.string:
                from numcodecs.zstd import Zstd

                try:
                    decoded = Zstd().decode(data)
                except (RuntimeError, ValueError) as exc:
                    raise CorruptStoreError(f"{self.shown!r}: chunk {key!r} of array {rule.array!r} "
                                            f"is not valid zstd data ({exc})") from None
        elif not rule.string and len(data) != rule.decoded:
            raise UnsafeStoreError(f"{self.shown!r}: chunk {key!r} of array {rule.array!r} is {len(data)} "
                                   f"bytes; its array declares chunks of {rule.decoded} bytes")
        if rule.string:
            count = int.from_bytes(bytes(decoded[:4]), "little") if len(decoded) >= 4 else None
            if count != rule.items:
                raise UnsafeStoreError(
                    f"{self.shown!r}: chunk {key!r} of array {rule.array!r} says it holds {count!r} "
                    f"strings; its array's chunks hold {rule.items}")


def slice_bytes(data: bytes, byte_range: ByteRequest | None) -> bytes:
    """The part of ``data`` a zarr byte request asks for."""
    if byte_range is None:
        return data
    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start:byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset:]
    if isinstance(byte_range, SuffixByteRequest):
        return data[max(0, len(data) - byte_range.suffix):]
    raise TypeError(f"unexpected byte range {byte_range!r}")


class GuardedStore(WrapperStore):
    """Read-only view of a store directory or URL whose chunks pass a :class:`ChunkGuard`
    before zarr decodes them (metadata keys pass unchanged)."""

    def __init__(self, store: Store, guard: ChunkGuard):
        super().__init__(store)
        self.guard = guard

    def _with_store(self, store: Store) -> "GuardedStore":
        return type(self)(store, self.guard)

    async def get(self, key: str, prototype: BufferPrototype,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        if self.guard.is_metadata(key):
            return await self._store.get(key, prototype, byte_range)
        buf = await self._store.get(key, prototype, None)
        if buf is None:
            return None
        data = buf.to_bytes()
        self.guard.check(key, data)
        return buf if byte_range is None else prototype.buffer.from_bytes(slice_bytes(data, byte_range))

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    async def _get_many(self, requests):
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)

    async def set(self, key: str, value: Buffer) -> None:
        raise UnsafeStoreError(f"{self.guard.shown!r} is opened read-only; refusing to write {key!r}")

    async def delete(self, key: str) -> None:
        raise UnsafeStoreError(f"{self.guard.shown!r} is opened read-only; refusing to delete {key!r}")

    def __repr__(self) -> str:
        return f"GuardedStore({self._store!r})"


def _zarr_store(where: Resolved, guard: ChunkGuard):
    """The store zarr reads ``where`` through, with ``guard`` checking its chunks."""
    if where.kind == "archive":
        where.store.set_chunk_guard(guard)
        return where.store
    if where.local is not None:
        from zarr.storage import LocalStore

        return GuardedStore(LocalStore(where.local, read_only=True), guard)
    return GuardedStore(where.store, guard)


def open_group(location: str | os.PathLike, *, storage_options: dict | None = None, complete: bool = True):
    """``(zarr.Group, Resolved)``: the store's root group, read-only, from consolidated
    metadata, after :func:`check_store_metadata`; every chunk read through it is checked
    (:class:`ChunkGuard`).  ``complete=True`` (default) requires every schema array for the
    store's features (:func:`schema_arrays`), ``False`` only :data:`REQUIRED_ARRAYS`
    (:class:`StoreNotFoundError` naming the missing ones)."""
    import zarr

    where, store = _checked_store(location, storage_options, complete)
    with _opening(where.shown, "a Zarr store"):
        group = zarr.open_group(store, mode="r", zarr_format=3, use_consolidated=True)
    return group, where


def _checked_store(location, storage_options: dict | None, complete: bool) -> tuple[Resolved, Any]:
    """``(Resolved, store)``: ``location`` resolved, its metadata checked
    (:func:`check_store_metadata`), and the store zarr reads it through (chunks guarded)."""
    where = resolve(location, storage_options=storage_options)
    doc = read_root_metadata(where)
    guard = check_store_metadata(doc, where.shown, complete=complete)
    check_stored_coordinates(doc, where.shown, _stored_size(where))
    return where, _zarr_store(where, guard)


def _opening(shown: str, what: str) -> contextlib.AbstractContextManager:
    """Turn zarr's/xarray's failure to open store ``shown`` as ``what`` into a scorebank error."""
    return _failing_as(shown, (ValueError, KeyError, TypeError),
                       lambda exc: StoreNotFoundError(f"{shown!r} could not be opened as {what}: {exc}"))


def open_scores(location: str | os.PathLike, *, chunks: dict | str | None = "auto_store",
                storage_options: dict | None = None, complete: bool = True) -> xr.Dataset:
    """Open a scorebank store lazily (Dask-backed) as an xarray Dataset.

    ``location`` is a store directory, a ``.zip`` archive or a URL (module docstring).
    ``chunks="auto_store"`` (default) keeps the store's own chunking, so reading costs
    O(chunks touched); pass anything ``xarray.open_zarr`` accepts to override.
    ``storage_options`` go to fsspec for URLs (e.g. ``{"anon": True}`` for public S3).
    ``complete=True`` (default) requires every array of the schema for the store's
    features (:func:`schema_arrays`: GraNd and the label-noise arrays only in stores made
    with them), so analyses never meet a missing variable; ``complete=False`` accepts any
    store holding :data:`REQUIRED_ARRAYS` (enough for the run table and manifests).
    Raises :class:`StoreNotFoundError` when ``location`` holds no scorebank store or lacks
    a required array, :class:`UnsafeStoreError` for metadata it refuses, and
    :class:`~scorebank.stores.archive.ArchiveError` for a bad archive (reading a member
    whose checksum fails raises it too, naming the member).  Reading a chunk that its
    array's metadata cannot account for raises :class:`UnsafeStoreError`, naming it."""
    where, store = _checked_store(location, storage_options, complete)
    kwargs = {} if chunks == "auto_store" else {"chunks": chunks}
    with _opening(where.shown, "a score store"):
        ds = xr.open_zarr(store, consolidated=True, zarr_format=3, **kwargs)
    if S.ATTR_FORMAT not in ds.attrs:
        raise StoreNotFoundError(
            f"{where.shown!r} is a Zarr store but not a scorebank store (attribute {S.ATTR_FORMAT!r} missing)")
    features = frozenset(ds.attrs.get(S.ATTR_FEATURES) or [])
    required = schema_arrays(features, readable_format(ds.attrs)) if complete else REQUIRED_ARRAYS
    check_dataset(ds, where.shown, required)
    ds.encoding.setdefault("source", where.shown)  # names the store in later errors (summarize)
    return ds
