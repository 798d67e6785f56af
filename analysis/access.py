"""Reading a score store for analysis: opening lazily, choosing runs and epochs, chunking
for streaming, and computing with a caller-chosen Dask scheduler.

Every analysis function takes ``store`` as a path (opened with
:func:`scorebank.stores.location.open_scores`) or an already opened ``xarray.Dataset``,
and ``scheduler=None``: anything ``dask.compute(scheduler=...)`` accepts ("threads",
"synchronous", a ``distributed.Client``, ...).  None uses Dask's default, which is the
active ``distributed`` client when one exists.  Nothing here creates a client.

Large arrays are never loaded whole: per-example variables are cut into blocks of one run,
a few epochs and one store chunk of examples, or, when all the selected epochs fit, several
whole store chunks of examples (at most :data:`BLOCK_BYTES` each, :data:`JOIN_BYTES` when
joining chunks), so peak memory is a few
blocks per worker thread whatever the store's size, and an ImageNet-sized store (1.28M
examples) is a few large tasks per run, not hundreds of small ones.  Results that have one
value per example (N values, or R x N for per-run results) are held in memory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence

import dask
import numpy as np
import xarray as xr

from scorebank.analysis.chunkfiles import ChunkView, chunk_files
from scorebank.core.config import ScoreConfig
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError, ScorebankError

StoreLike = str | os.PathLike | xr.Dataset

#: Upper bound on the bytes of one Dask block of a per-example variable.
BLOCK_BYTES = 32 * 2**20
#: Bytes up to which whole store chunks of examples are joined into one block once every
#: selected epoch fits in one: enough to make a handful of tasks per run at ImageNet size
#: instead of one per chunk, small enough that a block's rows stay cache-friendly and two
#: worker threads have several blocks to share.
JOIN_BYTES = 8 * 2**20

#: Epoch value meaning "never" in integer epoch results (data separation, stays-learned epoch).
NEVER = -1


def open_store(store: StoreLike) -> xr.Dataset:
    """The store as a lazily indexed Dataset.

    A path is opened without Dask (``chunks=None``): nothing is read until an analysis
    selects what it needs and chunks that selection with :func:`stream`.  A Dataset is
    returned unchanged (it may already be Dask-backed; :func:`stream` re-chunks it)."""
    if isinstance(store, xr.Dataset):
        if S.ATTR_FORMAT not in store.attrs:
            raise InvalidArgumentError(
                "the Dataset is not a scorebank store (attribute "
                f"{S.ATTR_FORMAT!r} missing); open one with scorebank.stores.location.open_scores")
        return store
    from scorebank.stores.location import open_scores

    return open_scores(store, chunks=None)


def compute(*objects, scheduler=None):
    """``dask.compute(*objects, scheduler=scheduler)``: one pass over the inputs they share."""
    return dask.compute(*objects, scheduler=scheduler)


# ------------------------------------------------------------------------------ runs
def completed_runs(ds: xr.Dataset) -> list[int]:
    """Seeds whose ``runs`` attribute says ``status == "complete"``, in store order."""
    runs = ds.attrs.get(S.ATTR_RUNS, {})
    return [int(s) for s in ds[S.RUN].values.tolist()
            if runs.get(str(int(s)), {}).get("status") == S.RUN_COMPLETE]


def parse_runs(text: str) -> list[int]:
    """``"0,3,5-7"`` -> ``[0, 3, 5, 6, 7]`` (the ``--runs`` option)."""
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if m is None or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise InvalidArgumentError(
                f"bad run list {text!r}; give seeds like 0,1,2 or ranges like 0-9 or 0-3,7")
        lo = int(m.group(1))
        out.extend(range(lo, (int(m.group(2)) if m.group(2) else lo) + 1))
    return out


def resolve_runs(ds: xr.Dataset, runs: Iterable[int] | None = None) -> list[int]:
    """The seeds an analysis uses: ``runs`` (validated) or, by default, every completed run.

    Raises :class:`InvalidArgumentError` for a seed the store does not hold or a repeated
    seed, and :class:`ScorebankError` when ``runs`` is None and no run is complete."""
    seeds = [int(s) for s in ds[S.RUN].values.tolist()]
    if runs is None:
        chosen = completed_runs(ds)
        if not chosen:
            status = {k: v.get("status") for k, v in ds.attrs.get(S.ATTR_RUNS, {}).items()}
            raise ScorebankError(
                f"no completed runs in the store (run status: {status!r}); finish a run with "
                "'scorebank score' or name runs explicitly with --runs")
        return chosen
    chosen = [int(r) for r in runs]
    if not chosen:
        raise InvalidArgumentError("empty run list; name at least one seed or leave --runs out")
    unknown = [r for r in chosen if r not in seeds]
    if unknown:
        raise InvalidArgumentError(
            f"run(s) {unknown!r} not in the store; its runs (seeds) are {seeds!r}")
    if len(set(chosen)) != len(chosen):
        raise InvalidArgumentError(f"run list {chosen!r} repeats a seed; name each run once")
    return chosen


def run_positions(ds: xr.Dataset, seeds: Sequence[int]) -> np.ndarray:
    """Positions along ``run`` of the given seeds."""
    all_seeds = [int(s) for s in ds[S.RUN].values.tolist()]
    return np.asarray([all_seeds.index(int(s)) for s in seeds], dtype=np.int64)


# ------------------------------------------------------------------------------ epochs
def epochs(ds: xr.Dataset) -> np.ndarray:
    """The epoch coordinate (0 = initialisation)."""
    return np.asarray(ds[S.EPOCH].values, dtype=np.int64)


def stored_values(ds: xr.Dataset, name: str) -> np.ndarray:
    """The whole of variable ``name`` as a numpy array: from its chunk files when the store
    is a directory on this machine (:mod:`scorebank.analysis.chunkfiles`; no round trip
    through zarr's event loop, which costs a thread switch per read, tens of milliseconds
    on a busy machine), else ``ds[name].values``.  Meant for the small arrays (per run and
    epoch, per example) an analysis reads whole."""
    files = chunk_files(ds, name)
    if files is None:
        return np.asarray(ds[name].values)
    return files.read((0,) * len(files.shape), files.shape)


def per_epoch(ds: xr.Dataset, name: str, seeds: Sequence[int]) -> np.ndarray:
    """A per-(run, epoch) variable for the given runs as a small numpy array (run, epoch)."""
    return stored_values(ds, name)[run_positions(ds, seeds)]


def completed_mask(ds: xr.Dataset, seeds: Sequence[int]) -> np.ndarray:
    """(run, epoch) bool: the epoch finished and its values are written."""
    return per_epoch(ds, S.COMPLETED, seeds).astype(bool)


def recorded_mask(ds: xr.Dataset, seeds: Sequence[int]) -> np.ndarray:
    """(run, epoch) bool: the clean pass ran (and the epoch is complete)."""
    return per_epoch(ds, S.RECORDED, seeds).astype(bool) & completed_mask(ds, seeds)


def config(ds: xr.Dataset) -> ScoreConfig | None:
    """The store's configuration (the ``config`` attribute) read typed, or None when the
    store has none (or an unreadable one)."""
    text = ds.attrs.get(S.ATTR_CONFIG)
    if not text:
        return None
    try:
        return ScoreConfig.from_json(text if isinstance(text, str) else json.dumps(dict(text)))
    except (TypeError, ValueError):
        return None


def format_epochs(values: Iterable[int]) -> str:
    """``[0, 1, 2, 3, 5, 10]`` -> ``"0-3, 5, 10"`` (for error messages)."""
    vals = sorted(set(int(v) for v in values))
    if not vals:
        return "none"
    parts, start, prev = [], vals[0], vals[0]
    for v in vals[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(parts)


def epoch_position(ds: xr.Dataset, epoch: int) -> int:
    """Position of ``epoch`` along the epoch dimension; InvalidArgumentError if absent."""
    ep = epochs(ds)
    hit = np.flatnonzero(ep == int(epoch))
    if hit.size == 0:
        raise InvalidArgumentError(
            f"epoch {epoch!r} is not in the store; its epochs are {format_epochs(ep)}")
    return int(hit[0])


def margin_epochs(ds: xr.Dataset, seeds: Sequence[int], epochs: Sequence[int] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs at which normalised margins exist: ``(positions, valid, rho)`` with
    ``valid`` (run, position) True where the clean pass was recorded and rho =
    ``norm_product`` is finite and positive, and ``rho`` (run, position) float64.

    ``epochs`` defaults to every epoch valid in at least one run (ScorebankError if none)."""
    rho = per_epoch(ds, S.NORM_PRODUCT, seeds).astype(np.float64)
    valid = recorded_mask(ds, seeds) & np.isfinite(rho) & (rho > 0)
    if epochs is None:
        pos = np.flatnonzero(valid.any(axis=0))
        if pos.size == 0:
            raise ScorebankError("no recorded clean-pass epoch (with a positive norm_product) in the "
                                 f"chosen runs {list(seeds)!r}; nothing to analyse")
    else:
        pos = np.asarray([epoch_position(ds, e) for e in epochs], dtype=np.int64)
    return pos, valid[:, pos], rho[:, pos]


# ------------------------------------------------------------------------------ streaming
def example_chunk(ds: xr.Dataset) -> int:
    """Examples per store chunk (the Dask block size along ``example``)."""
    n = int(ds.sizes[S.EXAMPLE])
    for name in (S.MARGIN, S.TRAIN_CORRECT, S.EL2N):
        if name in ds:
            chunks = ds[name].encoding.get("chunks") or ds[name].encoding.get("preferred_chunks", {})
            if isinstance(chunks, dict):
                size = chunks.get(S.EXAMPLE)
            else:
                size = chunks[-1] if chunks else None
            if size:
                return max(1, min(n, int(size)))
    return max(1, min(n, S.PER_EXAMPLE_CHUNK))


def block_shape(ds: xr.Dataset, n_epochs: int, itemsize: int) -> tuple[int, int]:
    """``(epochs, examples)`` per streaming block of one run of a per-example variable with
    ``n_epochs`` selected epochs (0: no epoch dimension) at ``itemsize`` bytes per value.

    As many epochs as fit in :data:`BLOCK_BYTES` with one store chunk of examples; when all
    of them fit, as many whole store chunks of examples as fit in :data:`JOIN_BYTES` (at
    most :data:`BLOCK_BYTES`).  Blocks are whole store chunks, so each chunk is read by one
    task; fewer, larger blocks keep the task graph and the per-task overhead small at
    ImageNet size (1.28M examples: 20 chunks of 2^16)."""
    nb = example_chunk(ds)
    n = int(ds.sizes[S.EXAMPLE])
    size = max(1, int(itemsize))
    depth = max(1, int(n_epochs))
    per_block = max(1, min(depth, BLOCK_BYTES // max(1, nb * size)))
    if per_block < depth:
        return per_block, nb
    chunks = max(1, min(JOIN_BYTES, BLOCK_BYTES) // max(1, depth * nb * size))
    return per_block, max(1, min(n, chunks * nb))


def stream(arr: xr.DataArray, ds: xr.Dataset, *, itemsize: int | None = None,
           n_epochs: int | None = None) -> xr.DataArray:
    """Chunk a selection of a per-example variable for streaming: one run and the
    :func:`block_shape` of epochs and examples per block (counted at ``itemsize`` bytes per
    value, default the array's own, and ``n_epochs`` epochs, default the selection's: a
    caller cutting one selection into pieces passes the whole selection's count, so that
    every piece has the same blocks along ``example``)."""
    size = itemsize or arr.dtype.itemsize
    depth = (int(arr.sizes[S.EPOCH]) if S.EPOCH in arr.dims else 0) if n_epochs is None else int(n_epochs)
    per_block, examples = block_shape(ds, depth, size)
    chunks = {d: 1 for d in arr.dims if d == S.RUN}
    if S.EXAMPLE in arr.dims:
        chunks[S.EXAMPLE] = examples
    if S.EPOCH in arr.dims:
        chunks[S.EPOCH] = max(1, min(int(arr.sizes[S.EPOCH]), per_block))
    return arr.chunk(chunks)


def _runs_of(positions: np.ndarray) -> list[slice]:
    """Consecutive stretches of sorted-or-not positions as slices, in the given order."""
    pos = np.asarray(positions, dtype=np.int64)
    if pos.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(pos) != 1) + 1
    return [slice(int(p[0]), int(p[-1]) + 1) for p in np.split(pos, breaks)]


def _streamed(var: xr.DataArray, files, sel: dict, ds: xr.Dataset, itemsize: int | None, depth: int):
    """``stream(var.isel(sel), ...).data``; read from the chunk files when ``files`` (a
    :class:`~scorebank.analysis.chunkfiles.ChunkFiles` of ``var``) is given: the same
    blocks and values, without zarr's per-chunk overhead."""
    import dask.array as da
    from dask.base import tokenize

    piece = var.isel(sel)
    if files is None:
        return stream(piece, ds, itemsize=itemsize, n_epochs=depth).data
    selection = []
    for dim, size in zip(var.dims, var.shape):
        s = sel.get(dim, slice(None))
        if isinstance(s, slice):
            start, stop, _ = s.indices(size)
            selection.append((start, max(start, stop)))
        else:
            selection.append(int(s))
    view = ChunkView(files, tuple(selection))
    per_block, examples = block_shape(ds, depth, itemsize or piece.dtype.itemsize)
    sizes = {d: 1 if d == S.RUN else examples if d == S.EXAMPLE else max(1, min(n, per_block)) if d == S.EPOCH
             else n for d, n in zip(piece.dims, piece.shape)}
    return da.from_array(view, chunks=tuple(sizes[d] for d in piece.dims), lock=False, asarray=False,
                         inline_array=True, meta=np.empty((0,) * view.ndim, dtype=view.dtype),
                         name=f"read-{tokenize(view)}")  # equal selections share keys: read once


def select(ds: xr.Dataset, name: str, *, runs: Sequence[int] | np.ndarray,
           epochs: Sequence[int] | np.ndarray | int | None = None, itemsize: int | None = None):
    """A per-example variable at the given run and epoch *positions* as a streaming Dask
    array (run, [epoch,] example).

    Lazy zarr indexing with integer arrays reads chunk by chunk very slowly, so the
    positions are cut into consecutive stretches, each selected with a slice and chunked
    by :func:`stream`, and the pieces are concatenated.  An integer ``epochs`` drops the
    epoch dimension.  A variable of a store directory on this machine is read straight from
    its chunk files (:mod:`scorebank.analysis.chunkfiles`): same blocks, same values."""
    import dask.array as da

    var = ds[name]
    run_slices = _runs_of(np.asarray(runs))
    scalar_epoch = isinstance(epochs, (int, np.integer))
    if scalar_epoch:
        epoch_slices = [int(epochs)]
    elif epochs is None:
        epoch_slices = [slice(None)]
    else:
        epoch_slices = _runs_of(np.asarray(epochs))
    depth = 0 if scalar_epoch else (int(var.sizes[S.EPOCH]) if epochs is None else int(np.asarray(epochs).size))
    files = chunk_files(ds, name)
    rows = []
    for rs in run_slices:
        pieces = [_streamed(var, files, {S.RUN: rs, S.EPOCH: es}, ds, itemsize, depth) for es in epoch_slices]
        rows.append(pieces[0] if scalar_epoch or len(pieces) == 1 else da.concatenate(pieces, axis=1))
    return rows[0] if len(rows) == 1 else da.concatenate(rows, axis=0)


def labels(ds: xr.Dataset) -> np.ndarray:
    """The training labels (``label``, after any label noise) as int64 (N,)."""
    return np.asarray(stored_values(ds, S.LABEL), dtype=np.int64)


def n_classes(ds: xr.Dataset, lab: np.ndarray | None = None) -> int:
    """Number of classes: ``len(class_names)``, or max label + 1 when larger."""
    lab = labels(ds) if lab is None else lab
    names = ds.attrs.get(S.ATTR_CLASS_NAMES) or []
    return max(len(names), int(lab.max()) + 1 if lab.size else 0)


def class_names(ds: xr.Dataset) -> list[str]:
    """Class names from the store's attrs, padded with the label number where missing."""
    names = list(ds.attrs.get(S.ATTR_CLASS_NAMES) or [])
    k = n_classes(ds)
    return [str(names[i]) if i < len(names) else str(i) for i in range(k)]
