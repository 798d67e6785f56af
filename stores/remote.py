"""Locations that are URLs, and random-access readers for archive files.

A *location* is what every reading command takes as ``STORE``:

* a local path: a store directory, or a ``.zip`` score archive made by ``scorebank export``;
* a ``file://`` URL, treated exactly like the local path it names;
* any other fsspec URL (``http://``, ``https://``, ``s3://``, ``gs://``, ...): a store
  directory, or an archive when the URL's path ends in ``.zip``.  ``scorebank score``
  writes store directories on object stores (:mod:`scorebank.stores.objectstore`); every
  other command only reads URLs.  ``s3://`` and ``gs://`` need the ``s3fs`` / ``gcsfs`` packages.
  Credentials and endpoints come from the usual places (AWS/GCP environment variables and
  files: ``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...) or fsspec's configuration (``~/.config/fsspec/*.json``, or environment variables such as
  ``FSSPEC_S3='{"anon": true}'`` for public buckets); library callers may pass
  ``storage_options`` (given to fsspec as is).  An archive URL needs a server that
  answers HTTP range requests (S3, GCS and common web servers do): each member is one
  ranged read, nothing is downloaded whole.

:class:`LocalReader` and :class:`FsspecReader` give stateless ``read(offset, length)``
access to one file (``os.pread`` / one HTTP range request each), which is what
:class:`scorebank.stores.archive.ArchiveStore` needs to serve members of a zip without
unpacking it.  Both pickle (for Dask workers) by re-opening on the other side.
"""

from __future__ import annotations

import os
import re
import threading
import urllib.parse
from typing import IO, Any

from scorebank.stores.errors import InvalidArgumentError, ScorebankError, StoreNotFoundError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


class RemoteStoreError(ScorebankError, OSError):
    """A URL could not be read (network error, missing fsspec backend, HTTP error)."""


def url_scheme(location: str | os.PathLike) -> str | None:
    """The URL scheme of ``location`` in lower case (``"http"``, ``"s3"``, ``"file"``), or
    None for a plain path."""
    m = _SCHEME.match(os.fspath(location)) if isinstance(location, str) else None
    return m.group(1).lower() if m else None


def is_remote(location: str | os.PathLike) -> bool:
    """True for a URL other than ``file://`` (read through fsspec, never written)."""
    scheme = url_scheme(location)
    return scheme is not None and scheme != "file"


def local_path(location: str | os.PathLike) -> str:
    """The local path a plain path or ``file://`` URL names (``file://`` prefix removed and
    percent-escapes decoded).  InvalidArgumentError for any other URL."""
    scheme = url_scheme(location)
    if scheme is None:
        return os.fspath(location)
    if scheme != "file":
        raise InvalidArgumentError(
            f"{os.fspath(location)!r} is a {scheme}:// URL; this needs a local path or a file:// URL")
    parsed = urllib.parse.urlparse(os.fspath(location))
    if parsed.netloc not in ("", "localhost"):
        raise InvalidArgumentError(
            f"file URL {location!r} names host {parsed.netloc!r}; use file:///absolute/path")
    return urllib.parse.unquote(parsed.path)


def require_local_output(location: str | os.PathLike, what: str) -> str:
    """``location`` as a local path for writing; URLs are refused (remote locations are read-only)."""
    if is_remote(location):
        raise InvalidArgumentError(
            f"{what} {os.fspath(location)!r} is a URL; remote locations are read-only, give a local path")
    return local_path(location)


def remote_path_name(url: str) -> str:
    """The last path component of a URL, without query or fragment ('' if none)."""
    path = urllib.parse.urlparse(url).path.rstrip("/")
    return urllib.parse.unquote(path.rsplit("/", 1)[-1])


def filesystem(url: str, storage_options: dict | None = None, *, asynchronous: bool = False):
    """``(fsspec filesystem, path)`` for ``url``; errors become scorebank errors."""
    import fsspec

    opts = dict(storage_options or {})
    if asynchronous:
        opts.setdefault("asynchronous", True)
    try:
        return fsspec.core.url_to_fs(url, **opts)
    except ImportError as exc:
        raise RemoteStoreError(
            f"cannot read {url!r}: the fsspec backend for {url_scheme(url)!r} is not installed ({exc}); "
            "install it (s3fs for s3://, gcsfs for gs://) or copy the store locally") from None
    except ValueError as exc:
        raise InvalidArgumentError(
            f"cannot read {url!r}: {exc}; give a local path or a URL fsspec knows "
            "(http://, https://, s3://, gs://, file://)") from None


def remote_store(url: str, storage_options: dict | None = None, *, read_only: bool = True):
    """A ``zarr.storage.FsspecStore`` for a store directory at ``url``: read-only unless
    ``read_only=False`` (what :mod:`scorebank.stores.objectstore` writes through)."""
    from zarr.storage import FsspecStore

    fs, path = filesystem(url, storage_options, asynchronous=True)
    if not fs.async_impl:
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

        fs = AsyncFileSystemWrapper(fs, asynchronous=True)
    return FsspecStore(fs=fs, path=path.rstrip("/"), read_only=read_only)


def translate_remote_errors(url: str, exc: BaseException) -> ScorebankError:
    """A one-line scorebank error for a failure while reading ``url``."""
    if isinstance(exc, FileNotFoundError):
        return StoreNotFoundError(f"nothing found at {url!r} ({exc}); check the URL")
    return RemoteStoreError(f"could not read {url!r}: {type(exc).__name__}: {' '.join(str(exc).split())}; "
                            f"{REMOTE_HINT}")


#: How to fix a failed request to a URL (the end of its one-line error).
REMOTE_HINT = ("check the URL, the network, the endpoint (AWS_ENDPOINT_URL for an S3-compatible server) and the "
               "credentials")


class LocalReader:
    """Random access to a local file with ``os.pread`` (thread-safe, no shared offset)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._fd: int | None = None
        self._lock = threading.Lock()
        self.size = os.stat(self.path).st_size
        self.name = os.path.basename(self.path)
        self.shown = self.path

    def _descriptor(self) -> int:
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            return self._fd

    def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset`` (shorter only at the end of the file)."""
        fd = self._descriptor()
        parts, done = [], 0
        while done < length:
            chunk = os.pread(fd, length - done, offset + done)
            if not chunk:
                break
            parts.append(chunk)
            done += len(chunk)
        return b"".join(parts)

    def open(self) -> IO[bytes]:
        return open(self.path, "rb")

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "name": self.name, "shown": self.shown}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fd = None
        self._lock = threading.Lock()

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


class FsspecReader:
    """Random access to one remote file: each ``read`` is one ranged request
    (``fs.cat_file(path, start, end)``).  The file's size is fetched once."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.fs, self.path = filesystem(url, self.storage_options)
        try:
            self.size = int(self.fs.size(self.path))
        except Exception as exc:  # noqa: BLE001 - network layers raise many types
            raise translate_remote_errors(url, exc) from None
        self.name = remote_path_name(url)
        self.shown = url

    def read(self, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        end = min(self.size, offset + length)
        try:
            data = bytes(self.fs.cat_file(self.path, start=offset, end=end))
        except Exception as exc:  # noqa: BLE001
            if "range request" in str(exc):
                raise RemoteStoreError(f"cannot read {self.url!r} in place: the server does not support HTTP "
                                       "range requests; download it and open the local file") from None
            raise translate_remote_errors(self.url, exc) from None
        if len(data) != end - offset:
            raise RemoteStoreError(f"{self.url!r} answered a request for bytes {offset}..{end - 1} with "
                                   f"{len(data)} bytes; the server must support HTTP range requests")
        return data

    def open(self) -> IO[bytes]:
        # Small blocks: the zip central directory is read with a few short seeks.
        return self.fs.open(self.path, "rb", block_size=1 << 16, cache_type="bytes")

    def close(self) -> None:
        pass

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options, "size": self.size,
                "name": self.name, "shown": self.shown}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.fs, self.path = filesystem(self.url, self.storage_options)
