"""Reading a per-example variable of a store directory on this machine straight from its
chunk files, for the analyses' streaming blocks.

Zarr's reader costs about five times the zstd decoding it does: every chunk is an asyncio
task handed between threads, copied once more by the store's chunk guard, decoded into a
buffer of its own and then copied into the result.  At ImageNet size (1.28M examples,
20 chunks per (run, epoch)) that overhead, not the decoding, set the analyses' speed
(reading ``train_correct`` for forgetting: ~0.6 CPU seconds through zarr, ~0.07 here).

:func:`chunk_files` recognises an array in the layout scorebank writes and reads it
through a :class:`ChunkFiles`:

* the store is a directory (zarr's ``LocalStore`` inside the
  :class:`~scorebank.stores.location.GuardedStore` that ``open_scores`` reads through),
* the Dataset variable is the stored array itself (xarray's lazy wrappers with no
  selection and no decoding in between; the same dtype),
* a regular chunk grid, no sharding, codecs ``bytes`` (little-endian, on a little-endian
  machine) and at most one ``zstd``.

Every chunk object still passes the store's :class:`~scorebank.stores.location.ChunkGuard`
(size and declared decompressed size, so no decompression bomb) before it is decoded,
straight into the block that needs it (through a temporary only where the block's edge
cuts the chunk); a chunk that was never written reads as the array's fill value, as zarr
reads it; a chunk that does not decode raises
:class:`~scorebank.stores.location.CorruptStoreError` naming the array.  The values are
those zarr returns, byte for byte.  Anything else (archives, URLs, stores opened with Dask
chunks or already loaded, other codecs) gets None, and the caller reads through zarr.
"""

from __future__ import annotations

import itertools
import os
import sys

import numpy as np
import xarray as xr


class ChunkFiles:
    """One stored array read chunk file by chunk file (see the module docstring).

    ``root``: the store directory; ``path``: the array's path in it; ``shape``,
    ``chunks`` (the chunk shape), ``dtype``, ``fill`` (the fill value); ``zstd``: chunks
    are zstd frames (else raw little-endian bytes); ``key_encoding``: zarr's chunk key
    encoding; ``guard``: the store's chunk guard; ``shown``: the store as the user named
    it (for messages).  A plain class, not a dataclass: Dask walks the fields of
    dataclasses found in a task's arguments, and the guard holds the rules of every array."""

    __slots__ = ("root", "path", "shape", "chunks", "dtype", "fill", "zstd", "key_encoding", "guard", "shown")

    def __init__(self, root: str, path: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype,
                 fill: object, zstd: bool, key_encoding: object, guard: object, shown: str):
        self.root, self.path, self.shape, self.chunks, self.dtype = root, path, shape, chunks, np.dtype(dtype)
        self.fill, self.zstd, self.key_encoding, self.guard, self.shown = fill, zstd, key_encoding, guard, shown

    def __getstate__(self):
        return tuple(getattr(self, k) for k in self.__slots__)

    def __setstate__(self, state):
        for k, v in zip(self.__slots__, state):
            setattr(self, k, v)

    def __dask_tokenize__(self):
        return ("scorebank-chunkfiles", self.root, self.path, self.shape, self.chunks, str(self.dtype))

    def _chunk_bytes(self, coords: tuple[int, ...]) -> tuple[str, bytes | None]:
        key = f"{self.path}/{self.key_encoding.encode_chunk_key(coords)}"
        try:
            with open(os.path.join(self.root, *key.split("/")), "rb") as f:
                return key, f.read()
        except FileNotFoundError:
            return key, None

    def read(self, lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
        """The values at ``[lo[d]:hi[d] for every dimension d]`` as a new C-ordered array."""
        from numcodecs.zstd import decompress

        from scorebank.stores.location import reading

        out = np.empty(tuple(h - l for l, h in zip(lo, hi)), dtype=self.dtype)
        if out.size == 0:
            return out
        ranges = [range(l // c, (h - 1) // c + 1) for l, h, c in zip(lo, hi, self.chunks)]
        nominal = int(np.prod(self.chunks)) * self.dtype.itemsize
        for coords in itertools.product(*ranges):
            start = [i * c for i, c in zip(coords, self.chunks)]
            a = [max(l, s) for l, s in zip(lo, start)]
            b = [min(h, s + c) for h, s, c in zip(hi, start, self.chunks)]
            dst = out[tuple(slice(x - l, y - l) for x, y, l in zip(a, b, lo))]
            key, data = self._chunk_bytes(coords)
            if data is None:  # never written (zarr skips chunks that hold only the fill value)
                dst[...] = self.fill
                continue
            self.guard.check(key, data)
            whole = all(x == s and y == s + c for x, y, s, c in zip(a, b, start, self.chunks))
            with reading(self.shown, self.path):
                if whole and dst.flags.c_contiguous and self.zstd:
                    decompress(data, dst.reshape(-1).view(np.uint8))  # straight into the block
                    continue
                if self.zstd:
                    tmp = np.empty(nominal, dtype=np.uint8)
                    decompress(data, tmp)
                else:
                    tmp = np.frombuffer(data, dtype=np.uint8)
                chunk = tmp.view(self.dtype).reshape(self.chunks)
                dst[...] = chunk[tuple(slice(x - s, y - s) for x, y, s in zip(a, b, start))]
        return out


class ChunkView:
    """An array-like selection of a :class:`ChunkFiles` for ``dask.array.from_array``:
    ``selection`` holds, per stored dimension, ``(start, stop)`` (kept) or an int (dropped),
    as ``isel`` with slices and integers would select."""

    __slots__ = ("files", "selection")

    def __init__(self, files: ChunkFiles, selection: tuple):
        self.files, self.selection = files, tuple(selection)

    def __getstate__(self):
        return (self.files, self.selection)

    def __setstate__(self, state):
        self.files, self.selection = state

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(s[1] - s[0] for s in self.selection if isinstance(s, tuple))

    @property
    def dtype(self) -> np.dtype:
        return self.files.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __dask_tokenize__(self):
        return ("scorebank-chunkview", self.files.__dask_tokenize__(), self.selection)

    def __getitem__(self, key) -> np.ndarray:
        """``self[key]``: slices with step 1 and integers are read directly; anything else
        (steps, index arrays) from the bounding slab, indexed by numpy."""
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis or k is None for k in key) or len(key) > self.ndim:
            return self[(slice(None),) * self.ndim][key]
        key = key + (slice(None),) * (self.ndim - len(key))
        lo, hi, rest, it = [], [], [], iter(zip(key, self.shape))
        for s in self.selection:
            if not isinstance(s, tuple):
                lo.append(s)
                hi.append(s + 1)
                continue
            k, size = next(it)
            if isinstance(k, slice) and k.indices(size)[2] == 1:
                start, stop, _ = k.indices(size)
                stop = max(start, stop)
                rest.append(slice(None))
            elif isinstance(k, (int, np.integer)) and -size <= int(k) < size:
                start = int(k) % size
                stop = start + 1
                rest.append(0)
            else:
                start, stop = 0, size
                rest.append(k)
            lo.append(s[0] + start)
            hi.append(s[0] + stop)
        block = self.files.read(tuple(lo), tuple(hi))
        block = block.reshape(tuple(h - l for h, l, s in zip(hi, lo, self.selection) if isinstance(s, tuple)))
        plain = all(isinstance(r, slice) and r == slice(None) for r in rest)
        return block if plain else block[tuple(rest)]


def _stored_array(var: xr.Variable):
    """The zarr array behind a Dataset variable that is exactly that array (lazy wrappers
    with no selection or decoding in between), else None."""
    from xarray.backends.zarr import ZarrArrayWrapper
    from xarray.core import indexing

    data = var._data
    if isinstance(data, indexing.MemoryCachedArray):
        data = data.array
    if isinstance(data, indexing.CopyOnWriteArray):
        data = data.array
    if not isinstance(data, indexing.LazilyIndexedArray):
        return None
    if any(k != slice(None) for k in data.key.tuple):
        return None
    data = data.array
    if not isinstance(data, ZarrArrayWrapper):
        return None
    return getattr(data, "_array", None)


def chunk_files(ds: xr.Dataset, name: str) -> ChunkFiles | None:
    """A :class:`ChunkFiles` for variable ``name`` of ``ds`` when it can be read that way
    (module docstring), else None."""
    from zarr.codecs import BytesCodec, ZstdCodec
    from zarr.core.chunk_grids import RegularChunkGrid
    from zarr.storage import LocalStore

    from scorebank.stores.location import GuardedStore

    if sys.byteorder != "little" or name not in ds.variables:
        return None
    var = ds[name].variable
    try:
        arr = _stored_array(var)
    except AttributeError:  # xarray's internals changed: read through zarr
        arr = None
    if arr is None or arr.metadata.zarr_format != 3:
        return None
    meta = arr.metadata
    store = arr.store
    if not isinstance(store, GuardedStore) or not isinstance(getattr(store, "_store", None), LocalStore):
        return None
    codecs = tuple(meta.codecs)
    if not codecs or type(codecs[0]) is not BytesCodec or len(codecs) > 2:
        return None
    if codecs[0].endian is not None and codecs[0].endian.value != "little":
        return None
    if len(codecs) == 2 and type(codecs[1]) is not ZstdCodec:
        return None
    if not isinstance(meta.chunk_grid, RegularChunkGrid):
        return None
    dtype = np.dtype(arr.dtype)
    if dtype.byteorder == ">" or dtype.hasobject or dtype != var.dtype or tuple(var.shape) != tuple(arr.shape):
        return None
    shown = str(ds.encoding.get("source", store._store.root))
    return ChunkFiles(str(store._store.root), arr.path, tuple(int(s) for s in arr.shape),
                      tuple(int(c) for c in meta.chunk_grid.chunk_shape), dtype, meta.fill_value,
                      len(codecs) == 2, meta.chunk_key_encoding, store.guard, shown)
