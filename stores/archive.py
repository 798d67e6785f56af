"""Score archives: one self-contained ``.zip`` file per store, for sharing between labs.

Layout of ``NAME.scorebank.zip`` (every member *stored*, i.e. not zip-compressed: Zarr
chunks are already zstd-compressed, and stored members can be read in place by offset)::

    zarr.json                      root group: the store's attributes + consolidated metadata
    <array>/zarr.json              one per array (the store is complete without consolidation)
    <array>/c/<i>/<j>/<k>          chunks, Zarr v3 default chunk-key encoding
    checkpoints/run-<seed>.pt      only with ``include_checkpoints=True``
    scorebank-archive.json         the manifest (below); not part of the Zarr hierarchy

The zip's root *is* the Zarr store, so plain xarray opens it without scorebank and without
unpacking::

    import xarray as xr, zarr
    ds = xr.open_zarr(zarr.storage.ZipStore("scores.scorebank.zip", mode="r"))

Read-optimised chunking
    A writable store chunks per-example arrays ``(run, epoch, example)`` as
    ``(1, 1, 65536)`` so each epoch writes only its own chunks; reading one example's
    trajectory then touches ``runs x epochs`` objects.  The archive re-chunks them to
    ``(1, e, x)`` with ``e * x`` about :data:`CHUNK_VALUES` values (1 MiB of float32)
    and ``epochs / e == examples / x`` (balanced): one example's trajectory touches
    ``runs x ceil(epochs / e)`` chunks and one epoch of all examples
    ``runs x ceil(examples / x)``; for CIFAR-10 with 201 epochs that is ``(1, 32, 8192)``,
    7 chunks per run for either access instead of 201 (trajectory) or 1 (epoch).  All
    other arrays (per-(run, epoch) summaries, labels, coordinates) up to
    :data:`SMALL_ARRAY_BYTES` are one chunk each, so ``scorebank inspect``/``info`` read one
    object per array.  Sharding is not used: Python 3.11's ``zipfile`` seeks inside a
    member by reading up to the offset, which makes byte-range reads inside a shard
    (``zarr.storage.ZipStore``) cost the whole shard.

Manifest ``scorebank-archive.json`` (JSON object)
    ``format`` = ``"scorebank-archive"``, ``format_version`` (:data:`ARCHIVE_VERSION`),
    ``store_format`` (the store's ``scorebank_format``), ``scorebank_version``,
    ``created`` (ISO 8601, UTC), ``creator`` and ``license`` (free text or null),
    ``dataset``, ``dataset_fingerprint``, ``n_examples``, ``epochs`` (list),
    ``runs`` (list of ``{"run", "seed", "status", "last_completed_epoch", "config_hash",
    "source"}``), ``recorded`` (``{"variables", "features", "record_epochs",
    "grand_epochs"}``), ``layout`` (``{array: chunk shape}``), ``checkpoints`` (member
    names) and ``members``: ``{name: {"size": bytes, "sha256": hex}}`` for every member
    except the manifest itself.  The checksums detect corruption and tampering of single
    members; they are not a signature (whoever can edit the zip can edit the manifest):
    compare the sha256 of the whole file that ``scorebank export`` prints.

Archives are untrusted input (:class:`ArchiveStore`): nothing in them is ever executed
(the metadata is JSON, the codecs are checked against an allow-list, checkpoints are only
ever loaded with ``torch.load(..., weights_only=True)``), no chunk member may decompress
to more than its array declares (:class:`scorebank.stores.location.ChunkGuard`), member
names are never used as paths except ``checkpoints/run-<int>.pt``, and an archive is
refused, naming the bad member, when a name is absolute, contains ``..``/``.``/empty parts
or backslashes, a member is a symlink or special file, names repeat, members overlap, a
size exceeds :class:`ArchiveLimits`, a compressed member's declared size is implausible or
differs from what it expands to (zip bomb), a CRC or sha256 fails, or the manifest does
not list exactly the members present.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import json
import math
import os
import re
import shutil
import stat
import struct
import threading
import warnings
import zipfile
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype

from scorebank.core.config import ScoreConfig
from scorebank.stores import schema as S
from scorebank.stores.arrays import create_array
from scorebank.stores.errors import InvalidArgumentError, ScorebankError, StoreExistsError
from scorebank.stores.jsonfile import InvalidJSONError, loads
from scorebank.stores.location import ChunkGuard, reading, slice_bytes, store_config
from scorebank.stores.partial import clean_stale, partial_path
from scorebank.stores.remote import FsspecReader, LocalReader, RemoteStoreError, require_local_output

MANIFEST = "scorebank-archive.json"
ARCHIVE_FORMAT = "scorebank-archive"
ARCHIVE_VERSION = 1
#: Values per chunk of a per-example array in an archive (1 MiB of float32).
CHUNK_VALUES = 1 << 18
#: Arrays up to this many bytes are stored as a single chunk in an archive.
SMALL_ARRAY_BYTES = 16 << 20
#: Upper bound on the bytes held in memory per array block while copying.
BLOCK_BYTES = 64 << 20
CHECKPOINT_MEMBER = re.compile(r"checkpoints/run-([0-9]{1,19})\.pt")

#: ``progress(stage, done, total)``: called after each unit of work of a long operation.
Progress = Callable[[str, int, int], None]


# ------------------------------------------------------------------------------ errors
class ArchiveError(ScorebankError, ValueError):
    """The archive is unreadable, corrupt or unsafe; ``member`` names the bad member
    (None when the problem is not one member's)."""

    def __init__(self, message: str, member: str | None = None):
        super().__init__(message)
        self.member = member


class UnsafeArchiveError(ArchiveError):
    """A member would escape the target, is a link/special file, or is too large (zip bomb)."""


class ArchiveJSONError(InvalidJSONError, ArchiveError):
    """A JSON member of the archive (its manifest, ``zarr.json``) is not UTF-8, not JSON or
    nested absurdly deep: a bad archive given as an argument (CLI exit status 2)."""


def _member_json(raw: bytes, shown: str, member: str):
    try:
        return loads(raw, f"archive {shown!r}: member {member!r}")
    except InvalidJSONError as exc:
        raise ArchiveJSONError(str(exc), member) from None


class ArchiveChecksumError(ArchiveError):
    """A member's bytes do not match its CRC-32, its size or the manifest's sha256."""


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds applied to every archive opened or imported (bytes are uncompressed sizes)."""

    max_member_bytes: int = 8 << 30  # checkpoints of large models included
    max_metadata_bytes: int = 64 << 20  # zarr.json files and the manifest
    max_total_bytes: int = 1 << 42
    max_members: int = 1_000_000
    max_compression_ratio: int = 200  # declared size / compressed size of a deflated member


DEFAULT_LIMITS = ArchiveLimits()


# ------------------------------------------------------------------------------ member table
@dataclass(frozen=True)
class _Member:
    name: str
    raw_name: bytes
    header_offset: int
    compress_size: int
    file_size: int
    compress_type: int
    crc: int
    limit: int  # the member's bytes must end at or before this offset (next header / central dir)


def _check_member_name(name: str, shown: str) -> None:
    bad = None
    if not name:
        bad = "an empty name"
    elif "\x00" in name:
        bad = "a NUL character"
    elif "\\" in name:
        bad = "a backslash"
    elif name.startswith("/"):
        bad = "an absolute path"
    elif re.match(r"^[A-Za-z]:", name):
        bad = "a drive letter"
    elif name.endswith("/"):
        bad = "a directory entry"
    elif len(name) > 1024:
        bad = "a name longer than 1024 characters"
    else:
        parts = name.split("/")
        if ".." in parts:
            bad = "a '..' component (it would escape the target directory)"
        elif "." in parts or "" in parts:
            bad = "an empty or '.' component"
    if bad:
        raise UnsafeArchiveError(
            f"archive {shown!r}: member {name!r} has {bad}; archive members must be relative "
            "paths like 'margin/c/0/0/0' (re-create the archive with 'scorebank export')", name)


def _scan(reader, limits: ArchiveLimits) -> dict[str, _Member]:
    """Read and check the central directory: names, types, sizes, overlaps."""
    shown = reader.shown
    try:
        with reader.open() as f, zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
            start_dir = int(zf.start_dir)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, struct.error, ValueError,
            OverflowError, NotImplementedError, OSError) as exc:
        if isinstance(exc, ScorebankError):
            raise
        if isinstance(reader, FsspecReader) and "range request" in str(exc):
            raise RemoteStoreError(f"cannot read archive {shown!r} in place: the server does not support "
                                   "HTTP range requests; download it and open the local file") from None
        raise ArchiveError(f"{shown!r} is not a readable zip archive ({exc}); "
                           "expected a .zip made by 'scorebank export'") from None
    if len(infos) > limits.max_members:
        raise UnsafeArchiveError(f"archive {shown!r} has {len(infos)} members; at most "
                                 f"{limits.max_members} are accepted")
    members: dict[str, _Member] = {}
    total = 0
    for info in infos:
        name = info.filename
        _check_member_name(name, shown)
        if name in members:
            raise UnsafeArchiveError(f"archive {shown!r}: member {name!r} appears twice; "
                                     "names must be unique", name)
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            what = "a symbolic link" if stat.S_ISLNK(mode) else f"a special file (mode {oct(mode)})"
            raise UnsafeArchiveError(f"archive {shown!r}: member {name!r} is {what}; "
                                     "only regular files are accepted", name)
        if info.flag_bits & 0x1:
            raise UnsafeArchiveError(f"archive {shown!r}: member {name!r} is encrypted; "
                                     "encrypted archives are not accepted", name)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ArchiveError(f"archive {shown!r}: member {name!r} uses compression method "
                               f"{info.compress_type!r}; only stored (0) and deflated (8) are read", name)
        is_meta = name == MANIFEST or name.endswith("zarr.json")
        bound = limits.max_metadata_bytes if is_meta else limits.max_member_bytes
        if info.file_size > bound:
            raise UnsafeArchiveError(f"archive {shown!r}: member {name!r} declares {info.file_size} "
                                     f"bytes; at most {bound} are accepted for such a member", name)
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise UnsafeArchiveError(
                f"archive {shown!r}: stored member {name!r} declares {info.file_size} bytes but "
                f"occupies {info.compress_size}; the sizes of a stored member must agree", name)
        if (info.compress_type == zipfile.ZIP_DEFLATED
                and info.file_size > max(1024, info.compress_size * limits.max_compression_ratio)):
            raise UnsafeArchiveError(
                f"archive {shown!r}: member {name!r} declares {info.file_size} bytes from "
                f"{info.compress_size} compressed (ratio over {limits.max_compression_ratio}); "
                "refusing a likely zip bomb", name)
        total += info.file_size
        if total > limits.max_total_bytes:
            raise UnsafeArchiveError(f"archive {shown!r} declares more than {limits.max_total_bytes} "
                                     f"bytes in total (at member {name!r})", name)
        raw = name.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
        members[name] = _Member(name, raw, int(info.header_offset), int(info.compress_size),
                                int(info.file_size), int(info.compress_type), int(info.CRC), 0)
    ordered = sorted(members.values(), key=lambda m: m.header_offset)
    out: dict[str, _Member] = {}
    for i, m in enumerate(ordered):
        limit = ordered[i + 1].header_offset if i + 1 < len(ordered) else start_dir
        if m.header_offset < 0 or m.header_offset + zipfile.sizeFileHeader + len(m.raw_name) + m.compress_size > limit:
            raise UnsafeArchiveError(
                f"archive {shown!r}: member {m.name!r} overlaps the next member or the central "
                "directory; overlapping members are refused (zip bomb)", m.name)
        out[m.name] = _Member(m.name, m.raw_name, m.header_offset, m.compress_size, m.file_size,
                              m.compress_type, m.crc, limit)
    return out


# ------------------------------------------------------------------------------ the store
class ArchiveStore(Store):
    """A read-only Zarr store serving the members of a score archive in place.

    ``ArchiveStore(path)`` for a local file, :meth:`from_url` for an fsspec URL (each
    member read is one ranged request).  Construction checks the member table and the
    manifest (see the module docstring); every member read is checked against its size,
    CRC-32 and the manifest's sha256 before zarr sees it, so a corrupted or tampered
    chunk raises :class:`ArchiveChecksumError` naming it instead of yielding wrong scores.
    Chunk members are also checked against their array's metadata (:meth:`chunk_guard`;
    the size before the member is read), so none decompresses beyond its declared size."""

    supports_writes = False
    supports_deletes = False
    supports_listing = True
    supports_partial_writes = False

    def __init__(self, path: str | os.PathLike | None = None, *, limits: ArchiveLimits = DEFAULT_LIMITS,
                 reader=None):
        super().__init__(read_only=True)
        if reader is None:
            if path is None:
                raise InvalidArgumentError("ArchiveStore needs a path or a reader")
            reader = LocalReader(path)
        self._reader = reader
        self.limits = limits
        self.shown = reader.shown
        self.name = reader.name
        self._members = _scan(reader, limits)
        self._offsets: dict[str, int] = {}
        self._guard: ChunkGuard | None = None
        self.manifest = self._load_manifest()

    @classmethod
    def from_url(cls, url: str, *, storage_options: dict | None = None,
                 limits: ArchiveLimits = DEFAULT_LIMITS) -> "ArchiveStore":
        return cls(limits=limits, reader=FsspecReader(url, storage_options))

    # -------------------------------------------------------------- members
    @property
    def member_names(self) -> list[str]:
        return sorted(self._members)

    @property
    def file_bytes(self) -> int:
        """Size of the archive file in bytes: what ``export`` reports and ``inspect`` shows."""
        return int(self._reader.size)

    def describe(self) -> dict:
        """What ``inspect`` reports about the archive itself: its manifest without the
        member table, ``n_members`` (every member, the manifest included, as ``export``
        counts them), ``member_bytes`` (their stored sizes, manifest excluded) and
        ``file_bytes`` (the archive file, as ``export`` reports it)."""
        out = {k: v for k, v in self.manifest.items() if k != "members"}
        listed = self.manifest["members"]
        return {**out, "n_members": len(listed) + 1, "member_bytes": sum(m["size"] for m in listed.values()),
                "file_bytes": self.file_bytes}

    def member_size(self, name: str) -> int | None:
        """Size of member ``name`` (what zarr reads for that key), None if there is none."""
        m = self._members.get(name)
        return None if m is None or self._hidden(name) else m.file_size

    def _locate(self, m: _Member, prefetch: int = 0) -> tuple[int, bytes]:
        """``(offset of the member's data, up to prefetch bytes of it)``; the first call
        reads and checks the local header, fetching the data in the same read (one request
        per small member on remote archives)."""
        off = self._offsets.get(m.name)
        if off is not None:
            return off, b""
        fixed = zipfile.sizeFileHeader + len(m.raw_name)
        head = self._reader.read(m.header_offset, min(fixed + 64 + prefetch, m.limit - m.header_offset))
        if len(head) < fixed:
            raise ArchiveError(f"archive {self.shown!r}: member {m.name!r} is truncated", m.name)
        fields = struct.unpack(zipfile.structFileHeader, head[:zipfile.sizeFileHeader])
        signature, method, n_name, n_extra = fields[0], fields[4], fields[10], fields[11]
        if (signature != zipfile.stringFileHeader or method != m.compress_type
                or head[zipfile.sizeFileHeader:fixed] != m.raw_name or n_name != len(m.raw_name)):
            raise UnsafeArchiveError(
                f"archive {self.shown!r}: the local header of member {m.name!r} does not match the "
                "central directory (name, method or signature differ)", m.name)
        off = m.header_offset + fixed + n_extra
        if off + m.compress_size > m.limit:
            raise UnsafeArchiveError(f"archive {self.shown!r}: member {m.name!r} overlaps the next "
                                     "member; overlapping members are refused (zip bomb)", m.name)
        self._offsets[m.name] = off
        return off, head[fixed + n_extra:fixed + n_extra + prefetch]

    def _raw_pieces(self, m: _Member, piece: int) -> Iterator[bytes]:
        start, first = self._locate(m, min(m.compress_size, piece))
        if first:
            yield first
        pos = len(first)
        while pos < m.compress_size:
            n = min(piece, m.compress_size - pos)
            raw = self._reader.read(start + pos, n)
            if len(raw) != n:
                raise ArchiveError(f"archive {self.shown!r}: member {m.name!r} is truncated "
                                   f"(the file ends inside it)", m.name)
            pos += n
            yield raw

    def iter_member(self, name: str, *, max_bytes: int | None = None, piece: int = 8 << 20,
                    check_manifest: bool = True) -> Iterator[bytes]:
        """Yield the bytes of member ``name`` in pieces; when the generator finishes, the
        size, CRC-32 and (unless ``check_manifest`` is False) the manifest's sha256 have
        been checked, raising :class:`ArchiveError` subclasses otherwise.  Treat what was
        yielded as unverified until then."""
        m = self._members.get(name)
        if m is None:
            raise ArchiveError(f"archive {self.shown!r} has no member {name!r}", name)
        bound = self.limits.max_member_bytes if max_bytes is None else max_bytes
        if m.file_size > bound:
            raise UnsafeArchiveError(f"archive {self.shown!r}: member {name!r} is {m.file_size} bytes; "
                                     f"at most {bound} are accepted here", name)
        expected = None
        if check_manifest:
            entry = self.manifest["members"].get(name)
            expected = entry["sha256"]
        sha = hashlib.sha256()
        crc = 0
        produced = 0
        inflater = zlib.decompressobj(-15) if m.compress_type == zipfile.ZIP_DEFLATED else None
        for raw in self._raw_pieces(m, piece):
            if inflater is None:
                out = raw
            else:
                try:
                    out = inflater.decompress(raw, m.file_size - produced + 1)
                    while inflater.unconsumed_tail and produced + len(out) <= m.file_size:
                        out += inflater.decompress(inflater.unconsumed_tail, m.file_size - produced - len(out) + 1)
                except zlib.error as exc:
                    raise ArchiveChecksumError(f"archive {self.shown!r}: member {name!r} is not valid "
                                               f"deflate data ({exc})", name) from None
            produced += len(out)
            if produced > m.file_size:
                raise UnsafeArchiveError(
                    f"archive {self.shown!r}: member {name!r} expands beyond its declared size of "
                    f"{m.file_size} bytes; refusing a zip bomb", name)
            sha.update(out)
            crc = zlib.crc32(out, crc)
            if out:
                yield out
        if inflater is not None and (not inflater.eof or inflater.unconsumed_tail):
            raise ArchiveChecksumError(f"archive {self.shown!r}: member {name!r} does not end where "
                                       "its compressed size says", name)
        if produced != m.file_size:
            raise ArchiveChecksumError(f"archive {self.shown!r}: member {name!r} holds {produced} bytes "
                                       f"but declares {m.file_size}", name)
        if crc != m.crc:
            raise ArchiveChecksumError(f"archive {self.shown!r}: member {name!r} fails its CRC-32 check "
                                       f"({crc:08x}, declared {m.crc:08x}); the archive is corrupt", name)
        if expected is not None and sha.hexdigest() != expected:
            raise ArchiveChecksumError(
                f"archive {self.shown!r}: member {name!r} has sha256 {sha.hexdigest()!r} but the "
                f"manifest says {expected!r}; the archive was modified or is corrupt", name)

    def read_member(self, name: str, *, max_bytes: int | None = None, check_manifest: bool = True) -> bytes:
        """The verified bytes of member ``name`` (see :meth:`iter_member`)."""
        return b"".join(self.iter_member(name, max_bytes=max_bytes, check_manifest=check_manifest))

    def _load_manifest(self) -> dict:
        if MANIFEST not in self._members:
            raise ArchiveError(f"{self.shown!r} is a zip file but not a scorebank archive (no {MANIFEST!r}); "
                               "make one with 'scorebank export STORE OUT.scorebank.zip'", MANIFEST)
        raw = self.read_member(MANIFEST, max_bytes=self.limits.max_metadata_bytes, check_manifest=False)
        doc = _member_json(raw, self.shown, MANIFEST)
        if not isinstance(doc, dict) or doc.get("format") != ARCHIVE_FORMAT:
            raise ArchiveError(f"archive {self.shown!r}: {MANIFEST!r} is not a scorebank manifest "
                               f"(format {doc.get('format') if isinstance(doc, dict) else None!r}, "
                               f"expected {ARCHIVE_FORMAT!r})", MANIFEST)
        version = doc.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= ARCHIVE_VERSION:
            raise ArchiveError(f"archive {self.shown!r} has format_version {version!r}; this scorebank "
                               f"reads versions 1..{ARCHIVE_VERSION} (upgrade scorebank)", MANIFEST)
        listed = doc.get("members")
        if not isinstance(listed, dict):
            raise ArchiveError(f"archive {self.shown!r}: the manifest has no 'members' table", MANIFEST)
        for name, entry in listed.items():
            if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                    or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
                    or not isinstance(entry.get("size"), int)):
                raise ArchiveError(f"archive {self.shown!r}: manifest entry for {name!r} is {entry!r}; "
                                   "expected {'size': int, 'sha256': 64 hex digits}", name)
            if name not in self._members:
                raise ArchiveError(f"archive {self.shown!r}: the manifest lists {name!r} but the archive "
                                   "has no such member", name)
            if entry["size"] != self._members[name].file_size:
                raise ArchiveChecksumError(
                    f"archive {self.shown!r}: member {name!r} is {self._members[name].file_size} bytes "
                    f"but the manifest says {entry['size']}", name)
        for name in self._members:
            if name != MANIFEST and name not in listed:
                raise ArchiveError(f"archive {self.shown!r}: member {name!r} is not listed in the "
                                   "manifest; refusing unlisted content", name)
        return doc

    def verify(self, progress: Progress | None = None) -> tuple[int, int]:
        """Read every member and check its size, CRC-32 and sha256; returns
        ``(members, bytes)``.  Raises on the first bad member, naming it."""
        names = [n for n in sorted(self._members) if n != MANIFEST]
        total = 0
        for i, name in enumerate(names):
            for piece in self.iter_member(name):
                total += len(piece)
            if progress:
                progress("verifying", i + 1, len(names))
        return len(names), total

    # -------------------------------------------------------------- zarr Store API
    def _hidden(self, key: str) -> bool:
        return key == MANIFEST or key.startswith(S.CHECKPOINT_DIR + "/")

    def set_chunk_guard(self, guard: ChunkGuard) -> None:
        """Check chunks with ``guard`` (what :func:`~scorebank.stores.location.check_store_metadata`
        returned for this archive's root ``zarr.json``)."""
        self._guard = guard

    def chunk_guard(self) -> ChunkGuard:
        """The :class:`~scorebank.stores.location.ChunkGuard` every chunk read passes; made
        from the archive's root ``zarr.json`` (checked) unless one was set."""
        if self._guard is None:
            from scorebank.stores.location import check_store_metadata, check_stored_coordinates

            raw = self.read_member("zarr.json", max_bytes=self.limits.max_metadata_bytes)
            doc = _member_json(raw, self.shown, "zarr.json")
            if not isinstance(doc, dict):
                raise ArchiveError(f"archive {self.shown!r}: 'zarr.json' is not a JSON object", "zarr.json")
            guard = check_store_metadata(doc, self.shown)
            check_stored_coordinates(doc, self.shown, self.member_size)
            self._guard = guard
        return self._guard

    async def get(self, key: str, prototype: BufferPrototype,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        if key not in self._members or self._hidden(key):
            return None
        if ChunkGuard.is_metadata(key):
            data = await asyncio.to_thread(self.read_member, key, max_bytes=self.limits.max_metadata_bytes)
        else:
            guard = self._guard or await asyncio.to_thread(self.chunk_guard)
            guard.check_size(key, self._members[key].file_size)  # before reading anything
            data = await asyncio.to_thread(self.read_member, key)
            guard.check(key, data)
        return prototype.buffer.from_bytes(slice_bytes(data, byte_range))

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        return key in self._members and not self._hidden(key)

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()

    async def delete(self, key: str) -> None:
        self._check_writable()

    async def list(self) -> AsyncIterator[str]:
        for key in sorted(self._members):
            if not self._hidden(key):
                yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        async for key in self.list():
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/")
        seen = set()
        async for key in self.list():
            if prefix and not key.startswith(prefix + "/"):
                continue
            rest = key[len(prefix) + 1:] if prefix else key
            child = rest.split("/", 1)[0]
            if child not in seen:
                seen.add(child)
                yield child

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArchiveStore) and self.shown == other.shown

    def __hash__(self) -> int:
        return hash(("ArchiveStore", self.shown))

    def __str__(self) -> str:
        return f"zip://{self.shown}"

    def __repr__(self) -> str:
        return f"ArchiveStore({self.shown!r})"

    def close(self) -> None:
        super().close()
        self._reader.close()


# ------------------------------------------------------------------------------ layouts
def archive_chunks(dims: tuple[str, ...], shape: tuple[int, ...], itemsize: int,
                   source_chunks: tuple[int, ...]) -> tuple[int, ...]:
    """Chunk shape of an array in an archive (module docstring, "Read-optimised chunking")."""
    shape = tuple(int(s) for s in shape)
    if tuple(dims) == (S.RUN, S.EPOCH, S.EXAMPLE):
        _, n_epochs, n = shape
        n_epochs, n = max(1, n_epochs), max(1, n)
        e = max(1, min(n_epochs, round(math.sqrt(CHUNK_VALUES * n_epochs / n))))
        x = max(1, min(n, CHUNK_VALUES // e))
        if x == n:
            e = max(1, min(n_epochs, max(e, CHUNK_VALUES // n)))
        return (1, e, x)
    if itemsize * math.prod(shape) <= SMALL_ARRAY_BYTES:
        return tuple(max(1, s) for s in shape)
    return tuple(source_chunks)


def writable_chunks(name: str, dims: tuple[str, ...], shape: tuple[int, ...],
                    source_chunks: tuple[int, ...], n_epochs: int) -> tuple[int, ...]:
    """Chunk shape of an array in a writable store, as :func:`zarrstore.create_store` and
    :func:`schema.chunks_for` lay them out (so ``scorebank score`` can extend it);
    ``n_epochs`` is the length of the ``epoch`` dimension (epochs 0..E: E + 1)."""
    sizes = dict(zip(dims, shape))
    n = sizes.get(S.EXAMPLE, 1)
    var = S.BY_NAME.get(name)
    if var is not None and tuple(var.dims) == tuple(dims):
        return S.chunks_for(var, n_epochs, n)
    if len(dims) == 1:
        return (max(1, min(int(shape[0]), S.PER_EXAMPLE_CHUNK)),)
    if tuple(dims) == (S.RUN, S.EPOCH, S.EXAMPLE):
        return (1, 1, max(1, min(n, S.PER_EXAMPLE_CHUNK)))
    if tuple(dims) == (S.RUN, S.EPOCH):
        return (1, max(1, n_epochs))
    return tuple(source_chunks)


def blocks(shape: tuple[int, ...], chunks: tuple[int, ...], itemsize: int,
           budget: int = BLOCK_BYTES) -> list[tuple[slice, ...]]:
    """Cover ``shape`` with blocks made of whole ``chunks`` (the destination's), as large
    as ``budget`` bytes allows, growing the last dimension first.  Writing block by block
    writes every destination chunk exactly once."""
    if not shape:
        return [()]
    block = [max(1, c) for c in chunks]
    for d in reversed(range(len(shape))):
        others = itemsize * math.prod(block[:d] + block[d + 1:])
        k = max(1, budget // max(1, others * block[d]))
        block[d] = min(max(shape[d], 1), block[d] * k) if shape[d] else block[d]
        if block[d] < shape[d]:
            break
    ranges = [range(0, max(s, 1), b) for s, b in zip(shape, block)]
    out = []
    for starts in np.ndindex(*[len(r) for r in ranges]):
        out.append(tuple(slice(r[i], min(r[i] + b, s)) for r, i, b, s in zip(ranges, starts, block, shape)))
    return [b for b in out if all(sl.stop > sl.start for sl in b)]


def _dims(arr) -> tuple[str, ...]:
    names = arr.metadata.dimension_names
    return tuple(names) if names else tuple(f"dim_{i}" for i in range(arr.ndim))


def _walk(group, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(path, node)`` for every array and group below ``group`` (sorted, depth first,
    parents before children)."""
    for name, node in sorted(group.members(), key=lambda kv: kv[0]):
        path = f"{prefix}{name}"
        yield path, node
        if isinstance(node, zarr.Group):
            yield from _walk(node, path + "/")


def copy_hierarchy(src_group, dst_group, chunk_rule: Callable[[str, Any], tuple[int, ...]],
                   progress: Progress | None, stage: str, shown: str = "the source") -> dict[str, tuple[int, ...]]:
    """Copy every group (with attributes) and array (dtype, fill value, dimension names,
    attributes, values) below ``src_group`` into ``dst_group``, chunking each array as
    ``chunk_rule(path, array)`` says.  Returns ``{path: chunks}``.  A source chunk that
    cannot be decoded raises :class:`~scorebank.stores.location.CorruptStoreError` naming
    its array in ``shown``."""
    groups = {"": dst_group}
    plans = []
    layout = {}
    for path, node in _walk(src_group):
        parent, _, name = path.rpartition("/")
        if isinstance(node, zarr.Group):
            groups[path] = groups[parent].create_group(name, attributes=dict(node.attrs))
            continue
        chunks = tuple(int(c) for c in chunk_rule(path, node))
        layout[path] = chunks
        dst = create_array(groups[parent], name, dims=_dims(node), shape=node.shape, dtype=node.dtype,
                           chunks=chunks, fill_value=node.fill_value, attributes=dict(node.attrs))
        itemsize = max(1, getattr(node.dtype, "itemsize", 8) or 8)
        plans.append((node, dst, blocks(node.shape, chunks, itemsize)))
    total = sum(len(parts) for *_, parts in plans)
    done = 0
    for src, dst, parts in plans:
        for sel in parts:
            with reading(shown, src.path):
                values = src[sel]
            dst[sel] = values
            done += 1
            if progress:
                progress(stage, done, total)
    return layout


def consolidate_store(store) -> None:
    """``zarr.consolidate_metadata`` without its "not part of the v3 specification" warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part",
                                category=UserWarning)
        warnings.filterwarnings("ignore", message="Object at .* is not recognized as a component",
                                category=UserWarning)
        zarr.consolidate_metadata(store)


# ------------------------------------------------------------------------------ writing zips
class _ZipWriterStore(Store):
    """Write-only store streaming chunk objects into a zip (stored, one member each, each
    written exactly once) while keeping ``zarr.json`` documents in memory until
    :meth:`finish` writes them after consolidation.  Reading a chunk back is a bug (a
    partial-chunk write) and raises."""

    supports_writes = True
    supports_deletes = True
    supports_listing = True
    supports_partial_writes = False

    def __init__(self, zf: zipfile.ZipFile):
        super().__init__(read_only=False)
        self._zf = zf
        self._lock = threading.Lock()
        self.meta: dict[str, bytes] = {}
        self.digests: dict[str, dict] = {}
        self.date_time = _dt.datetime.now().timetuple()[:6]

    def _zipinfo(self, name: str) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(name, date_time=self.date_time)
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        info.create_system = 3
        return info

    def write_member(self, name: str, data: bytes) -> None:
        with self._lock:
            if name in self.digests:
                raise RuntimeError(f"internal error: archive member {name!r} written twice")
            self._zf.writestr(self._zipinfo(name), data)
            self.digests[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def write_file(self, name: str, path: Path) -> None:
        sha = hashlib.sha256()
        size = 0
        with self._lock, open(path, "rb") as src, self._zf.open(self._zipinfo(name), "w", force_zip64=True) as dst:
            while piece := src.read(8 << 20):
                sha.update(piece)
                size += len(piece)
                dst.write(piece)
            self.digests[name] = {"size": size, "sha256": sha.hexdigest()}

    def finish(self) -> None:
        """Write the metadata documents (root ``zarr.json`` first)."""
        for key in sorted(self.meta, key=lambda k: (k != "zarr.json", k)):
            self.write_member(key, self.meta[key])

    async def get(self, key: str, prototype: BufferPrototype,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        if key in self.meta:
            data = self.meta[key]
            if byte_range is not None:
                raise RuntimeError(f"internal error: ranged read of {key!r} while exporting")
            return prototype.buffer.from_bytes(data)
        if key in self.digests:
            raise RuntimeError(f"internal error: export read back chunk {key!r} (a partial-chunk write)")
        return None

    async def get_partial_values(self, prototype, key_ranges):
        return [await self.get(k, prototype, r) for k, r in key_ranges]

    async def exists(self, key: str) -> bool:
        return key in self.meta or key in self.digests

    async def set(self, key: str, value: Buffer) -> None:
        data = value.to_bytes()
        if key == "zarr.json" or key.endswith("/zarr.json"):
            self.meta[key] = data
        else:
            self.write_member(key, data)

    async def delete(self, key: str) -> None:
        if key in self.digests:
            raise RuntimeError(f"internal error: export deleted written chunk {key!r}")
        self.meta.pop(key, None)

    async def list(self) -> AsyncIterator[str]:
        for key in sorted(self.meta):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in sorted(self.meta):
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/")
        seen = set()
        for key in sorted(self.meta):
            if prefix and not key.startswith(prefix + "/"):
                continue
            child = (key[len(prefix) + 1:] if prefix else key).split("/", 1)[0]
            if child not in seen:
                seen.add(child)
                yield child

    def __eq__(self, other: object) -> bool:
        return other is self

    def __hash__(self) -> int:
        return id(self)


# ------------------------------------------------------------------------------ export
@dataclass(frozen=True)
class ExportResult:
    """What ``export`` wrote: the archive's path, the sha256 of the file, its manifest and
    its description (:meth:`ArchiveStore.describe`, the numbers ``inspect`` reports)."""

    path: Path
    sha256: str
    manifest: dict = field(repr=False)
    described: dict = field(repr=False)

    @property
    def members(self) -> int:
        """Members of the archive, its manifest included."""
        return self.described["n_members"]

    @property
    def bytes(self) -> int:
        """Size of the archive file."""
        return self.described["file_bytes"]


def config_hash(config_json: str | None) -> str:
    """16-hex-digit hash of a configuration's identity fields
    (:meth:`ScoreConfig.identity_hash`); for text that is no ScoreConfig, and for the
    configuration of a store written through the recorder API (``"source": "recorder"``,
    whose user configuration no ScoreConfig field holds), a hash of the text."""
    text = config_json or "{}"
    try:
        raw = json.loads(text)
        if isinstance(raw, dict) and raw.get("source") == "recorder":
            return hashlib.sha256(text.encode()).hexdigest()[:16]
        return ScoreConfig.from_json(text).identity_hash()
    except (ValueError, TypeError, AttributeError):
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _manifest(group, shown: str, *, creator: str | None, license: str | None, layout: dict,
              checkpoints: list[str]) -> dict:
    from scorebank.stores.zarrstore import scorebank_version

    def values(name: str) -> list:
        with reading(shown, name):
            return np.asarray(group[name][:]).tolist()

    attrs = dict(group.attrs)
    runs_attr = attrs.get(S.ATTR_RUNS) or {}
    run_ids = values(S.RUN)
    epochs = values(S.EPOCH)
    seeds = values(S.SEED) if S.SEED in group else run_ids
    hashes = (values(S.CONFIG_HASH) if S.CONFIG_HASH in group
              else [config_hash(attrs.get(S.ATTR_CONFIG))] * len(run_ids))
    sources = values(S.SOURCE) if S.SOURCE in group else [None] * len(run_ids)
    completed = np.asarray(values(S.COMPLETED), dtype=bool)
    runs = []
    for i, run in enumerate(run_ids):
        done = np.flatnonzero(completed[i])
        runs.append({"run": int(run), "seed": int(seeds[i]),
                     "status": (runs_attr.get(str(run)) or {}).get("status", S.RUN_PENDING),
                     "last_completed_epoch": int(epochs[done[-1]]) if done.size else None,
                     "config_hash": str(hashes[i]),
                     "source": None if sources[i] is None else str(sources[i])})
    config = store_config(attrs, shown) or ScoreConfig()
    present = {name for name, _ in group.members()}
    return {
        "format": ARCHIVE_FORMAT,
        "format_version": ARCHIVE_VERSION,
        "store_format": S.store_format(attrs),  # the format written (which variables it has)
        "reader_format": attrs.get(S.ATTR_FORMAT),  # the oldest reader format that reads it
        "scorebank_version": scorebank_version(),
        "created": _now_iso(),
        "creator": creator,
        "license": license,
        "dataset": attrs.get(S.ATTR_DATASET),
        "dataset_fingerprint": attrs.get(S.ATTR_FINGERPRINT),
        "n_examples": int(group[S.EXAMPLE].shape[0]),
        "epochs": [int(e) for e in epochs],
        "runs": runs,
        "recorded": {"variables": [v.name for v in S.VARIABLES if v.name in present],
                     "features": list(attrs.get(S.ATTR_FEATURES) or []),
                     "record_epochs": list(config.record_epochs),
                     "grand_epochs": list(config.grand_epochs)},
        "layout": {k: list(v) for k, v in layout.items()},
        "checkpoints": checkpoints,
    }


def _is_archive_file(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return MANIFEST in zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _checkpoint_files(where) -> list[tuple[int, Path]]:
    folder = Path(where.local) / S.CHECKPOINT_DIR
    out = []
    if folder.is_dir():
        for f in sorted(folder.iterdir()):
            m = CHECKPOINT_MEMBER.fullmatch(f"{S.CHECKPOINT_DIR}/{f.name}")
            if m and f.is_file() and not f.is_symlink():
                out.append((int(m.group(1)), f))
    return out


def export_archive(source: str | os.PathLike, out: str | os.PathLike, *, creator: str | None = None,
                   license: str | None = None, include_checkpoints: bool = False, overwrite: bool = False,
                   progress: Progress | None = None, storage_options: dict | None = None) -> ExportResult:
    """Write the store at ``source`` (any location :func:`open_scores` accepts) as one
    archive file ``out`` (must end in ``.zip``; ``.scorebank.zip`` is the convention).

    The archive is written to a temporary sibling and renamed onto ``out`` at the end, so
    ``out`` never holds a half-written file.  ``include_checkpoints`` adds the store's
    ``checkpoints/run-<seed>.pt`` (local store directories only).  Refuses an existing
    ``out`` unless ``overwrite`` (and then only if it is a scorebank archive)."""
    from scorebank.stores.location import open_group

    out_path = Path(require_local_output(out, "archive"))
    if not out_path.name.lower().endswith(".zip"):
        raise InvalidArgumentError(f"archive name {str(out)!r} must end with .zip, e.g. "
                                   f"{out_path.stem + '.scorebank.zip'!r}")
    for text, what in ((creator, "--creator"), (license, "--license")):
        if text is not None and (len(text) > 1000 or any(ord(c) < 32 for c in text)):
            raise InvalidArgumentError(f"{what} {text!r} must be one line of at most 1000 characters")
    if out_path.exists() or out_path.is_symlink():
        if not overwrite:
            raise StoreExistsError(f"{str(out)!r} already exists; choose another name or pass --overwrite")
        if not out_path.is_file() or out_path.is_symlink() or not _is_archive_file(out_path):
            raise StoreExistsError(f"refusing to overwrite {str(out)!r}: it is not a scorebank archive")
    if not out_path.parent.is_dir():
        raise InvalidArgumentError(f"folder {str(out_path.parent)!r} of the archive does not exist")
    group, where = open_group(source, storage_options=storage_options)
    if include_checkpoints and (where.kind != "directory" or where.local is None):
        raise InvalidArgumentError(
            f"--include-checkpoints needs a local store directory; {where.shown!r} is a "
            f"{'remote ' if where.local is None else ''}{where.kind}")
    checkpoints = _checkpoint_files(where) if include_checkpoints else []
    clean_stale(out_path)
    tmp = partial_path(out_path)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            writer = _ZipWriterStore(zf)
            dst = zarr.open_group(writer, mode="w", zarr_format=3, attributes=dict(group.attrs))

            def rule(path, arr):
                itemsize = max(1, getattr(arr.dtype, "itemsize", 8) or 8)
                return archive_chunks(_dims(arr), arr.shape, itemsize, arr.chunks)

            layout = copy_hierarchy(group, dst, rule, progress, "exporting", where.shown)
            consolidate_store(writer)
            names = []
            for seed, path in checkpoints:
                name = f"{S.CHECKPOINT_DIR}/run-{seed}.pt"
                writer.write_file(name, path)
                names.append(name)
            writer.finish()
            manifest = _manifest(group, where.shown, creator=creator, license=license, layout=layout,
                                 checkpoints=names)
            manifest["members"] = dict(sorted(writer.digests.items()))
            zf.writestr(writer._zipinfo(MANIFEST), json.dumps(manifest, indent=1).encode())
        sha = hashlib.sha256()
        with open(tmp, "rb") as f:
            while piece := f.read(8 << 20):
                sha.update(piece)
            os.fsync(f.fileno())
        written = ArchiveStore(tmp)  # read back as inspect will: the same description
        try:
            described = written.describe()
        finally:
            written.close()
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return ExportResult(out_path, sha.hexdigest(), manifest, described)


# ------------------------------------------------------------------------------ import
def open_archive(archive: str | os.PathLike, *, storage_options: dict | None = None,
                 limits: ArchiveLimits = DEFAULT_LIMITS) -> ArchiveStore:
    """An :class:`ArchiveStore` for a local path, ``file://`` URL or remote URL."""
    from scorebank.stores.remote import is_remote, local_path

    if is_remote(archive):
        return ArchiveStore.from_url(os.fspath(archive), storage_options=storage_options, limits=limits)
    path = local_path(archive)
    if not os.path.isfile(path):
        raise ArchiveError(f"no archive at {os.fspath(archive)!r}: expected a .zip file made by 'scorebank export' "
                           "(for a store directory use 'scorebank info')")
    return ArchiveStore(path, limits=limits)


def import_archive(archive: str | os.PathLike, dest: str | os.PathLike, *, progress: Progress | None = None,
                   storage_options: dict | None = None, limits: ArchiveLimits = DEFAULT_LIMITS) -> Path:
    """Unpack ``archive`` into a new writable store directory ``dest``.

    Every member's size, CRC-32 and sha256 are verified before anything is written; the
    store is then written in the writable layout (:func:`writable_chunks`, what ``scorebank
    score`` writes, so it can be extended with more seeds) into a temporary sibling and
    renamed onto ``dest``.  ``dest`` must not exist or be an empty directory.  Checkpoints
    in the archive become ``dest/checkpoints/run-<seed>.pt``."""
    from scorebank.stores.location import Resolved, check_store_metadata, read_root_metadata
    from scorebank.stores.zarrstore import consolidate

    dest_path = Path(require_local_output(dest, "import target"))
    if dest_path.is_symlink() or (dest_path.exists() and (not dest_path.is_dir() or any(dest_path.iterdir()))):
        raise StoreExistsError(f"{str(dest)!r} exists and is not an empty directory; "
                               "import into a new path")
    if not dest_path.parent.is_dir():
        raise InvalidArgumentError(f"folder {str(dest_path.parent)!r} of the import target does not exist")
    store = open_archive(archive, storage_options=storage_options, limits=limits)
    where = Resolved("archive", store, store.shown, store.name, None)
    store.set_chunk_guard(check_store_metadata(read_root_metadata(where), store.shown))
    store.verify(progress)
    try:
        group = zarr.open_group(store, mode="r", zarr_format=3, use_consolidated=True)
    except ScorebankError:
        raise
    except (ValueError, KeyError, TypeError, LookupError) as exc:
        raise ArchiveError(f"archive {store.shown!r} could not be opened as a Zarr store "
                           f"({type(exc).__name__}: {exc})") from None
    n_epochs = int(group[S.EPOCH].shape[0])
    clean_stale(dest_path)
    tmp = partial_path(dest_path)
    try:
        dst = zarr.open_group(tmp, mode="w-", zarr_format=3, attributes=dict(group.attrs))

        def rule(path, arr):
            return writable_chunks(path, _dims(arr), arr.shape, arr.chunks, n_epochs)

        copy_hierarchy(group, dst, rule, progress, "importing", store.shown)
        for name in store.member_names:
            if CHECKPOINT_MEMBER.fullmatch(name):
                target = tmp / S.CHECKPOINT_DIR / name.split("/", 1)[1]
                target.parent.mkdir(exist_ok=True)
                with open(target, "xb") as f:
                    for piece in store.iter_member(name):
                        f.write(piece)
        consolidate(tmp)
        if dest_path.exists():
            dest_path.rmdir()
        os.replace(tmp, dest_path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest_path
