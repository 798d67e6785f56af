"""Exception classes shared by every stage.

Two families, which the CLI maps to exit codes:

* :class:`InvalidArgumentError` and its subclasses: the user asked for something that
  cannot be valid (unknown data set, bad schedule syntax, fraction outside (0, 1], a store
  path that does not exist or holds no scorebank store, ...).
  The CLI exits with status 2 and nothing is written.
* :class:`ScorebankError` (everything else here): a well-formed request that failed
  (configuration differs from the store's, a run diverged, a checksum mismatch, ...).
  The CLI exits with status 1.

Every message quotes the offending value with ``!r`` and says what would be accepted.
"""

from __future__ import annotations

__all__ = ['ScorebankError', 'InvalidArgumentError', 'StoreNotFoundError', 'StoreExistsError', 'StoreLockedError', 'ConfigMismatchError', 'DataNotFoundError', 'RunFailedError']


class ScorebankError(Exception):
    """Base class of every error scorebank raises on purpose (CLI exit status 1)."""


class InvalidArgumentError(ScorebankError, ValueError):
    """A user-supplied value is not acceptable (CLI exit status 2)."""


class StoreNotFoundError(InvalidArgumentError, FileNotFoundError):
    """The location given does not hold a (readable) scorebank store: it does not exist, is
    not a store, or lacks arrays every store has.  The store is the user's argument, so this
    is a bad argument (CLI exit status 2); still a :class:`FileNotFoundError`."""


class StoreExistsError(ScorebankError, FileExistsError):
    """Refusing to touch an existing path that is not ours to replace."""


class StoreLockedError(ScorebankError, RuntimeError):
    """Another process is writing to the store."""


class ConfigMismatchError(ScorebankError, ValueError):
    """The requested configuration differs from the one recorded in the store."""


class DataNotFoundError(InvalidArgumentError, FileNotFoundError):
    """Data set files are missing and download was not allowed (a bad argument: exit 2)."""


class RunFailedError(ScorebankError, RuntimeError):
    """One or more training runs diverged (non-finite loss)."""
