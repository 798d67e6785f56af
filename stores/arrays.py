"""Creating Zarr arrays: the one helper through which every scorebank array is made.

Every module that writes a store (creation, merge, archive import, manifests, retraining,
compression) calls :func:`create_array`, so the codec chain, fill value and dimension names
of every array come from :mod:`scorebank.stores.schema` (:data:`~scorebank.stores.schema.CODECS`)
and stores stay byte-identical to what the first release wrote, whatever zarr's defaults
become (the pattern of xarray's zarr backend: one place that turns a variable into an array).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from scorebank.stores import schema as S


def create_array(group: zarr.Group, name: str, *, dims: Sequence[str], shape: Sequence[int] | None = None,
                 dtype: Any = None, data: Any = None, chunks: Sequence[int] | None = None,
                 fill_value: Any = None, attributes: Mapping | None = None) -> zarr.Array:
    """Create array ``name`` in ``group`` with the schema's codecs and return it.

    Either ``shape`` and ``dtype`` (the array reads ``fill_value`` everywhere) or ``data``
    (shape and, unless given, dtype taken from it; the values are written).  ``dims`` are the
    Zarr v3 dimension names (what xarray reads as the dimensions).  ``chunks`` default to one
    chunk holding the whole array; ``fill_value`` defaults to
    :func:`scorebank.stores.schema.fill_value_for` the dtype (NaN for floats)."""
    if data is not None:
        values = np.asarray(data) if dtype is None else np.asarray(data, dtype=dtype)
        dtype = values.dtype if dtype is None else dtype
        if shape is not None and tuple(shape) != values.shape:
            raise ValueError(f"array {name!r}: shape {tuple(shape)!r} does not match the data's {values.shape!r}")
        shape = values.shape
    if shape is None or dtype is None:
        raise TypeError(f"array {name!r}: give shape and dtype, or data")
    shape = tuple(int(s) for s in shape)
    dims = tuple(dims)
    if len(dims) != len(shape):
        raise ValueError(f"array {name!r}: dimension names {dims!r} do not match shape {shape!r}")
    if chunks is None:
        chunks = tuple(max(1, s) for s in shape)
    if fill_value is None:
        fill_value = S.fill_value_for(dtype)
    serializer, *compressors = S.codecs_for(dtype)
    if S.is_string_dtype(dtype):
        dtype = str  # zarr's variable-length UTF-8 ("string"), never fixed-width
    arr = group.create_array(name, shape=shape, dtype=dtype, chunks=tuple(int(c) for c in chunks),
                             dimension_names=dims, fill_value=fill_value,
                             attributes=dict(attributes or {}),
                             serializer=serializer, compressors=compressors)
    if data is not None and values.size:
        arr[...] = values
    return arr
