"""Where a training command writes its store: a local directory (``PATH`` or ``file://``)
or a prefix on an object store (``s3://``, ``gs://``, any other fsspec URL).

:func:`store_target` gives the same small interface for both, so ``score`` runs one code
path: check (:meth:`exists`, :meth:`is_store`, :meth:`attrs`), then, inside :meth:`claim`,
remove, create and write (:meth:`writer` for the coordinator, :meth:`run_writer` for each
run's owner).  Locally the store's ``flock`` comes with the writer and creation is a rename
(:mod:`scorebank.stores.zarrstore`); on an object store :meth:`claim` holds the store's
lease for the whole command (:mod:`scorebank.stores.objectstore`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from scorebank.stores.create import create_store
from scorebank.stores.errors import InvalidArgumentError
from scorebank.stores.remote import is_remote, local_path
from scorebank.stores.zarrstore import RunWriter, StoreWriter, is_scorebank_store, remove_store, root_attrs


class LocalTarget:
    """A store directory on this machine's file system (``flock``-based ownership)."""

    def __init__(self, location: str | os.PathLike):
        self.path = Path(local_path(location))
        self.shown = str(self.path)
        self.task_location = str(self.path)  # what a task on a worker is given

    def exists(self) -> bool:
        return self.path.exists()

    def is_store(self) -> bool:
        return is_scorebank_store(self.path)

    def attrs(self) -> dict:
        return root_attrs(self.path)

    @contextlib.contextmanager
    def claim(self) -> Iterator[None]:
        """Nothing: creation is atomic (rename) and the writer takes the store's lock."""
        yield

    def remove(self) -> None:
        remove_store(self.path)

    def create(self, **kwargs) -> None:
        create_store(self.path, **kwargs)

    def writer(self) -> StoreWriter:
        return StoreWriter(self.path)

    def run_writer(self, seed: int, *, group: str | None = None, wait: bool = False) -> RunWriter:
        return RunWriter(self.path, seed, group=group, wait=wait)


class ObjectTarget:
    """A store prefix on an object store (lease-based ownership)."""

    def __init__(self, url: str, storage_options: dict | None = None):
        from scorebank.stores.objectstore import ObjectLocation

        self.location = ObjectLocation(url, storage_options)
        self.shown = self.task_location = self.location.url
        self._lease = None

    def exists(self) -> bool:
        from scorebank.stores.objectstore import ROOT_METADATA

        return self.location.read(ROOT_METADATA) is not None

    def is_store(self) -> bool:
        from scorebank.stores.objectstore import is_object_store

        return is_object_store(self.location)

    def attrs(self) -> dict:
        from scorebank.stores.objectstore import object_root_attrs

        return object_root_attrs(self.location)

    @contextlib.contextmanager
    def claim(self) -> Iterator[None]:
        """Hold the store's lease (a second coordinator is refused while it is fresh)."""
        from scorebank.stores.objectstore import store_lease

        with store_lease(self.location) as lease:
            self._lease = lease
            try:
                yield
            finally:
                self._lease = None

    def remove(self) -> None:
        from scorebank.stores.objectstore import remove_object_store

        self._claimed().check()
        remove_object_store(self.location)

    def create(self, **kwargs) -> None:
        from scorebank.stores.objectstore import create_object_store

        lease = self._claimed()
        lease.check()
        create_object_store(self.location, lease=lease, **kwargs)

    def writer(self):
        from scorebank.stores.objectstore import ObjectStoreWriter

        return ObjectStoreWriter(self.location, lease=self._claimed())

    def run_writer(self, seed: int, *, group: str | None = None, wait: bool = False):
        from scorebank.stores.objectstore import ObjectRunWriter

        return ObjectRunWriter(self.location, seed, group=group, wait=wait)

    def _claimed(self):
        if self._lease is None:
            raise RuntimeError("ObjectTarget: remove, create and writer are called inside claim()")
        return self._lease


def store_target(location: str | os.PathLike, storage_options: dict | None = None) -> LocalTarget | ObjectTarget:
    """The target for ``location``: a URL other than ``file://`` is an :class:`ObjectTarget`
    (``storage_options`` go to fsspec), anything else a :class:`LocalTarget`."""
    if is_remote(location):
        from scorebank.stores.objectstore import LISTABLE_SCHEMES, writable_url

        url = os.fspath(location)
        if not writable_url(url):
            raise InvalidArgumentError(
                f"cannot write a store at {url!r}: stores are written into a directory or a prefix on an "
                f"object store ({', '.join(sorted(s + '://' for s in LISTABLE_SCHEMES))}), not into an archive "
                "or a read-only URL")
        return ObjectTarget(url, storage_options)
    return LocalTarget(location)
