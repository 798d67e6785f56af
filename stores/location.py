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
group carrying the ``scorebank_format`` attribute and consolidated metadata, and every
array in it may only use plain numeric/boolean/string data types and the codecs in
:data:`ALLOWED_CODECS` (no pickle or other object codecs, so reading never runs code),
with chunks of at most :data:`MAX_CHUNK_BYTES`.  Archives are checked further by
:class:`scorebank.stores.archive.ArchiveStore` (member names, sizes, checksums).

Opening an archive without scorebank, with plain xarray::

    import xarray as xr, zarr
    ds = xr.open_zarr(zarr.storage.ZipStore("scores.scorebank.zip", mode="r"))
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import xarray as xr

from scorebank.stores import schema as S
from scorebank.stores.errors import ScorebankError, StoreNotFoundError
from scorebank.stores.remote import (filesystem, is_remote, local_path, remote_path_name, remote_store,
                                     translate_remote_errors)

#: Zarr v3 data types a scorebank store may use.
ALLOWED_DATA_TYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                                "uint64", "float16", "float32", "float64", "string"})
#: Zarr v3 codecs scorebank will decode (all pure data transforms; none deserialises objects).
ALLOWED_CODECS = frozenset({"bytes", "zstd", "gzip", "blosc", "crc32c", "transpose", "vlen-utf8",
                            "sharding_indexed"})
#: Largest uncompressed chunk (or shard) a store may declare; bigger ones are refused so a
#: crafted store cannot make a reader allocate unbounded memory.
MAX_CHUNK_BYTES = 1 << 30
#: Largest root ``zarr.json`` read (it holds the consolidated metadata of every array).
MAX_METADATA_BYTES = 64 << 20
#: Arrays every scorebank store has.
REQUIRED_ARRAYS = (S.RUN, S.EPOCH, S.EXAMPLE, S.COMPLETED, S.RECORDED, S.LABEL)

_ITEMSIZE = {"bool": 1, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "float16": 2, "int32": 4,
             "uint32": 4, "float32": 4, "int64": 8, "uint64": 8, "float64": 8, "string": 16}


class UnsafeStoreError(ScorebankError, ValueError):
    """The store's metadata asks for something scorebank refuses to decode or allocate."""


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
    try:
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
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, ScorebankError):
            raise
        raise StoreNotFoundError(f"{where.shown!r}: zarr.json is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise StoreNotFoundError(f"{where.shown!r}: zarr.json is not a JSON object")
    return doc


def check_store_metadata(doc: dict, shown: str) -> None:
    """Refuse a root ``zarr.json`` that is not a scorebank store or that names data types,
    codecs or chunk sizes scorebank will not read (see the module docstring)."""
    if doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
        raise StoreNotFoundError(f"{shown!r} is not a Zarr v3 group (zarr_format "
                                 f"{doc.get('zarr_format')!r}, node_type {doc.get('node_type')!r})")
    attrs = doc.get("attributes")
    if not isinstance(attrs, dict) or S.ATTR_FORMAT not in attrs:
        raise StoreNotFoundError(
            f"{shown!r} is a Zarr store but not a scorebank store (attribute {S.ATTR_FORMAT!r} missing)")
    consolidated = doc.get("consolidated_metadata")
    entries = consolidated.get("metadata") if isinstance(consolidated, dict) else None
    if not isinstance(entries, dict):
        raise StoreNotFoundError(
            f"{shown!r} has no consolidated metadata; scorebank stores always have it "
            "(re-create the archive with 'scorebank export')")
    missing = [name for name in REQUIRED_ARRAYS if not isinstance(entries.get(name), dict)]
    if missing:
        raise StoreNotFoundError(f"{shown!r} lacks the array(s) {missing!r} every scorebank store has")
    for name, meta in entries.items():
        if not isinstance(meta, dict):
            raise UnsafeStoreError(f"{shown!r}: metadata of {name!r} is not a JSON object")
        if meta.get("node_type") == "group":
            continue
        if meta.get("node_type") != "array":
            raise UnsafeStoreError(f"{shown!r}: {name!r} has node_type {meta.get('node_type')!r}; "
                                   "expected 'array' or 'group'")
        _check_array_metadata(name, meta, shown)


def _check_array_metadata(name: str, meta: dict, shown: str) -> None:
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
    shape = meta.get("shape")
    chunk = (grid.get("configuration") or {}).get("chunk_shape")
    if not _int_list(shape) or not _int_list(chunk) or len(shape) != len(chunk) or 0 in chunk:
        raise UnsafeStoreError(f"{shown!r}: array {name!r} has shape {shape!r} and chunk shape "
                               f"{chunk!r}; expected equal-length lists of non-negative integers")
    _check_codecs(name, meta.get("codecs"), chunk, _ITEMSIZE[dtype], shown)


def _check_codecs(name: str, codecs: Any, chunk: list[int], itemsize: int, shown: str) -> None:
    nbytes = itemsize
    for c in chunk:
        nbytes *= c
    if nbytes > MAX_CHUNK_BYTES:
        raise UnsafeStoreError(f"{shown!r}: array {name!r} declares chunks of {chunk!r} "
                               f"({nbytes} bytes); at most {MAX_CHUNK_BYTES} bytes are accepted")
    if not isinstance(codecs, list) or not codecs:
        raise UnsafeStoreError(f"{shown!r}: array {name!r} has codecs {codecs!r}; expected a list")
    for codec in codecs:
        cname = codec if isinstance(codec, str) else codec.get("name") if isinstance(codec, dict) else None
        if cname not in ALLOWED_CODECS:
            raise UnsafeStoreError(
                f"{shown!r}: array {name!r} uses codec {cname!r}; scorebank decodes only "
                f"{', '.join(sorted(ALLOWED_CODECS))} (never pickle or other object codecs)")
        if cname == "sharding_indexed":
            config = codec.get("configuration") or {}
            inner = config.get("chunk_shape")
            if not _int_list(inner) or len(inner) != len(chunk) or 0 in inner:
                raise UnsafeStoreError(f"{shown!r}: array {name!r} has inner chunk shape {inner!r}")
            _check_codecs(name, config.get("codecs"), inner, itemsize, shown)
            _check_codecs(name, config.get("index_codecs"), [1], 16, shown)


def _int_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)


def open_group(location: str | os.PathLike, *, storage_options: dict | None = None):
    """``(zarr.Group, Resolved)``: the store's root group, read-only, from consolidated
    metadata, after :func:`check_store_metadata`."""
    import zarr

    where = resolve(location, storage_options=storage_options)
    check_store_metadata(read_root_metadata(where), where.shown)
    try:
        group = zarr.open_group(where.store, mode="r", zarr_format=3, use_consolidated=True)
    except ScorebankError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreNotFoundError(f"{where.shown!r} could not be opened as a Zarr store: {exc}") from None
    except OSError as exc:
        raise translate_remote_errors(where.shown, exc) from None
    return group, where


def open_scores(location: str | os.PathLike, *, chunks: dict | str | None = "auto_store",
                storage_options: dict | None = None) -> xr.Dataset:
    """Open a scorebank store lazily (Dask-backed) as an xarray Dataset.

    ``location`` is a store directory, a ``.zip`` archive or a URL (module docstring).
    ``chunks="auto_store"`` (default) keeps the store's own chunking, so reading costs
    O(chunks touched); pass anything ``xarray.open_zarr`` accepts to override.
    ``storage_options`` go to fsspec for URLs (e.g. ``{"anon": True}`` for public S3).
    Raises :class:`StoreNotFoundError` when ``location`` holds no scorebank store,
    :class:`UnsafeStoreError` for metadata it refuses, and
    :class:`~scorebank.stores.archive.ArchiveError` for a bad archive (reading a member
    whose checksum fails raises it too, naming the member)."""
    where = resolve(location, storage_options=storage_options)
    check_store_metadata(read_root_metadata(where), where.shown)
    kwargs = {} if chunks == "auto_store" else {"chunks": chunks}
    try:
        ds = xr.open_zarr(where.store, consolidated=True, zarr_format=3, **kwargs)
    except ScorebankError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreNotFoundError(f"{where.shown!r} could not be opened as a score store: {exc}") from None
    except OSError as exc:
        raise translate_remote_errors(where.shown, exc) from None
    if S.ATTR_FORMAT not in ds.attrs:
        raise StoreNotFoundError(
            f"{where.shown!r} is a Zarr store but not a scorebank store (attribute {S.ATTR_FORMAT!r} missing)")
    return ds
