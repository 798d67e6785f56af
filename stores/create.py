"""Creating a score store (a Zarr v3 group laid out as :mod:`schema` says), atomically.

The store is created complete (every array at full shape, filled with its fill value, so
float variables read NaN) in a temporary sibling directory and renamed into place, so a
path either holds a whole store or nothing.  Metadata is consolidated after every
structural change so plain ``xarray.open_zarr(path)`` opens it quickly and without warnings.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import uuid
import warnings
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import zarr

from scorebank.stores import schema as S
from scorebank.stores.arrays import create_array
from scorebank.stores.errors import StoreExistsError
from scorebank.stores.partial import clean_stale, partial_path


def scorebank_version() -> str:
    try:
        return version("scorebank")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def consolidate(path) -> None:
    """Re-write the store's consolidated metadata (after adding arrays/groups or attrs);
    ``path`` is a store directory or a zarr store object (an ``FsspecStore`` on an object store)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part",
                                category=UserWarning)
        # checkpoints/ and the lock file live inside the store but outside the Zarr hierarchy
        warnings.filterwarnings("ignore", message="Object at .* is not recognized as a component",
                                category=UserWarning)
        zarr.consolidate_metadata(os.fspath(path) if isinstance(path, (str, os.PathLike)) else path)


def create_store(path: str | os.PathLike, *, n_epochs: int, labels: np.ndarray, true_labels: np.ndarray,
                 original_index: np.ndarray, seeds: tuple[int, ...], features: frozenset[str],
                 attrs: Mapping, per_example: Mapping[str, np.ndarray] | None = None) -> None:
    """Create an empty store for epochs ``0..n_epochs`` and the given runs, atomically.

    ``attrs`` are added to the root attributes (configuration JSON, data set, ...);
    ``per_example`` gives the values of other ``(example,)`` variables of the schema known at
    creation (e.g. ``input_norm``); those not given read their fill value (NaN)."""
    path = Path(path)
    if path.exists():
        raise StoreExistsError(f"{str(path)!r} already exists")
    n = len(labels)
    clean_stale(path)
    tmp = partial_path(path)
    try:
        root = zarr.open_group(tmp, mode="w", zarr_format=3)
        shapes = {S.RUN: len(seeds), S.EPOCH: n_epochs + 1, S.EXAMPLE: n}
        coords = {S.RUN: np.asarray(seeds, dtype=np.int64),
                  S.EPOCH: np.arange(n_epochs + 1, dtype=np.int64),
                  S.EXAMPLE: np.arange(n, dtype=np.int64)}
        for dim, values in coords.items():
            create_array(root, dim, dims=(dim,), data=values,
                         chunks=(max(1, min(len(values), S.PER_EXAMPLE_CHUNK)),), fill_value=0)
        create_array(root, S.ORIGINAL_INDEX, dims=(S.EXAMPLE,), data=np.asarray(original_index, dtype=np.int64),
                     chunks=(max(1, min(n, S.PER_EXAMPLE_CHUNK)),), fill_value=0,
                     attributes={"description": "index of the example in the source data set"})
        for var in S.variables(features):
            attributes = dict(var.attrs)
            if S.EXAMPLE in var.dims:
                attributes["coordinates"] = S.ORIGINAL_INDEX
            arr = create_array(root, var.name, dims=var.dims, shape=tuple(shapes[d] for d in var.dims),
                               dtype=var.dtype, chunks=S.chunks_for(var, n_epochs + 1, n),
                               fill_value=var.fill_value, attributes=attributes)
            if var.name == S.LABEL:
                arr[:] = np.asarray(labels, dtype=np.int64)
            elif var.name == S.TRUE_LABEL:
                arr[:] = np.asarray(true_labels, dtype=np.int64)
            elif var.name == S.CORRUPTED:
                arr[:] = np.asarray(labels) != np.asarray(true_labels)
            elif var.dims == (S.EXAMPLE,) and var.name in (per_example or {}):
                arr[:] = np.asarray(per_example[var.name], dtype=var.dtype)
        root.attrs.update({
            **S.format_attrs(),
            S.ATTR_VERSION: scorebank_version(),
            S.ATTR_CREATED: now_iso(),
            S.ATTR_STORE_ID: uuid.uuid4().hex,
            S.ATTR_RUNS: {str(s): {"status": S.RUN_PENDING} for s in seeds},
            S.ATTR_FEATURES: sorted(features),
            **attrs,
        })
        consolidate(tmp)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
