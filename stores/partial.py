"""Temporary siblings (``.NAME.<host>-<pid>-<id>.partial``) that writers build a file or
store in before renaming it onto ``NAME``, and the cleaning of stale ones.

An interrupted ``create``, ``merge``, ``export``, ``import`` or manifest write leaves its
partial behind.  The next writer of the same ``NAME`` removes every partial of ``NAME``
whose writer is provably gone: written on this host by a process id that no longer runs.
Partials of a live process (a concurrent writer) and of other hosts are never touched.
Partials named by releases before the pid was encoded (``.NAME.<8 hex>.partial``) are
removed once untouched for :data:`LEGACY_STALE_SECONDS`."""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

#: Age after which an old-style partial (no writer pid in its name) is taken as abandoned.
LEGACY_STALE_SECONDS = 24 * 3600


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def partial_path(final: str | os.PathLike) -> Path:
    """A new temporary sibling of ``final`` that names this host and process."""
    final = Path(final)
    return final.with_name(f".{final.name}.{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")


def writer_tag() -> tuple[str, int]:
    """``(host, pid)`` of this process as partial names and leases record them."""
    return _host(), os.getpid()


def writer_gone(host: object, pid: object) -> bool:
    """True when ``(host, pid)`` (from :func:`writer_tag`) is provably gone: this host, and no
    process with that id runs.  Another host's writer is never provably gone."""
    return host == _host() and isinstance(pid, int) and not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OverflowError:
        return False
    return True


def is_stale(path: str | os.PathLike, now: float | None = None) -> bool:
    """True when the partial at ``path`` belongs to no live writer (module docstring)."""
    path = Path(path)
    m = re.fullmatch(r"\..+\.(?:([A-Za-z0-9]+)-([0-9]{1,10})-)?[0-9a-f]{8}\.partial", path.name)
    if m is None:
        return False
    host, pid = m.group(1), m.group(2)
    if host is None:
        try:
            age = (time.time() if now is None else now) - path.lstat().st_mtime
        except FileNotFoundError:
            return False
        return age > LEGACY_STALE_SECONDS
    return host == _host() and not _pid_alive(int(pid))


def clean_stale(final: str | os.PathLike) -> list[Path]:
    """Remove the stale partials of ``final`` (files or folders); returns what was removed."""
    final = Path(final)
    removed = []
    try:
        siblings = list(final.parent.glob(f".{glob_escape(final.name)}.*.partial"))
    except OSError:
        return removed
    for path in siblings:
        if not is_stale(path):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            continue
        removed.append(path)
    return removed


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally."""
    return re.sub(r"([*?\[])", r"[\1]", name)
