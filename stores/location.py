"""Opening a score store for reading, wherever it is.

:func:`open_scores` is the one entry point every reading command and analysis uses."""

from __future__ import annotations

import os

import xarray as xr

from scorebank.stores import schema as S
from scorebank.stores.errors import StoreNotFoundError


def open_scores(location: str | os.PathLike, *, chunks: dict | str | None = "auto_store") -> xr.Dataset:
    """Open a scorebank store lazily (Dask-backed) as an xarray Dataset.

    ``chunks="auto_store"`` (default) keeps the store's own chunking, so reading costs
    O(chunks touched); pass anything ``xarray.open_zarr`` accepts to override.
    Raises :class:`StoreNotFoundError` when ``location`` holds no scorebank store."""
    path = os.fspath(location)
    if not os.path.exists(os.path.join(path, "zarr.json")):
        raise StoreNotFoundError(
            f"no scorebank store at {path!r}: expected a Zarr v3 store made by 'scorebank score'")
    kwargs = {} if chunks == "auto_store" else {"chunks": chunks}
    ds = xr.open_zarr(path, consolidated=True, **kwargs)
    if S.ATTR_FORMAT not in ds.attrs:
        raise StoreNotFoundError(
            f"{path!r} is a Zarr store but not a scorebank store (attribute {S.ATTR_FORMAT!r} missing)")
    return ds
