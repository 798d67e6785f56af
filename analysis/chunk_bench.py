"""What the example chunk size (:data:`scorebank.stores.schema.PER_EXAMPLE_CHUNK`) costs:
the numbers it is chosen by.

A per-example variable is stored in (1 run, 1 epoch, C examples) chunks.  For each
candidate C, :func:`chunk_costs` writes one float32 variable of R runs x E epochs x N
examples the way a scoring run does (one (run, epoch) slab of N values at a time) and
measures, in CPU seconds of this process (all its threads: zarr decodes chunks in a thread
pool; CPU time, unlike wall time, stays meaningful on a machine loaded by other work),

* the write of one epoch (N values of one run: N / C chunks),
* reading one example's trajectory (all runs and epochs of one example: R x E chunks of
  C values each, so it grows with C),
* reading one epoch (all examples of every run: R x N / C chunks),
* reading the whole variable through zarr, and through the analyses' own reader of chunk
  files (:mod:`scorebank.analysis.chunkfiles`, what the analyses stream a local store
  with: its cost per chunk is a file read and a guard check, not zarr's machinery).

Random normal values (which compress as little as real margins do) are written in a
temporary directory that is removed afterwards."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError


@dataclass(frozen=True)
class ChunkCost:
    """CPU seconds (median of ``repeats``) of each access at one chunk size ``chunk``."""

    chunk: int
    write_epoch: float  # one run's epoch, N values
    read_trajectory: float  # one example, all runs and epochs
    read_epoch: float  # one epoch, all runs and examples
    read_all: float  # the whole R x E x N variable, through zarr
    bytes_on_disk: int
    read_all_files: float = 0.0  # the whole variable, through the analyses' chunk-file reader

    def to_dict(self) -> dict:
        return asdict(self)


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return float(np.median(times))


def chunk_costs(chunks: tuple[int, ...] = (1 << 14, 1 << 16, 1 << 18), *, runs: int = 4, epochs: int = 21,
                examples: int = 1_281_167, repeats: int = 5, directory: str | None = None,
                seed: int = 0) -> list[ChunkCost]:
    """:class:`ChunkCost` of each candidate in ``chunks`` for a float32 variable of
    ``runs`` x ``epochs + 1`` x ``examples`` (the store holds epochs 0..epochs).  Trajectories
    and epochs read are drawn at random (``seed``), the same ones for every candidate."""
    import zarr

    from scorebank.stores.arrays import create_array

    if any(int(c) < 1 for c in chunks) or runs < 1 or epochs < 0 or examples < 1 or repeats < 1:
        raise InvalidArgumentError(f"chunk sizes {chunks!r}, runs {runs!r}, epochs {epochs!r}, examples "
                                   f"{examples!r} and repeats {repeats!r} must be positive")
    rng = np.random.default_rng(seed)
    e_total = epochs + 1
    slab = rng.standard_normal(examples, dtype=np.float32)
    picks = rng.integers(0, examples, repeats)
    epoch_picks = rng.integers(0, e_total, repeats)
    out = []
    tmp = Path(tempfile.mkdtemp(prefix="scorebank-chunks-", dir=directory))
    try:
        for c in chunks:
            c = int(min(int(c), examples))
            group = zarr.open_group(tmp / f"c{c}.zarr", mode="w", zarr_format=3)
            arr = create_array(group, S.MARGIN, dims=(S.RUN, S.EPOCH, S.EXAMPLE), shape=(runs, e_total, examples),
                               dtype="float32", chunks=(1, 1, c))
            writes = []
            for r in range(runs):
                for e in range(e_total):
                    t0 = time.process_time()
                    arr[r, e, :] = slab + np.float32(r + e)  # one scoring epoch of one run
                    writes.append(time.process_time() - t0)
            it = iter(picks)
            trajectory = _median_seconds(lambda: arr[:, :, int(next(it))], repeats)
            it_e = iter(epoch_picks)
            epoch = _median_seconds(lambda: arr[:, int(next(it_e)), :], repeats)
            whole = _median_seconds(lambda: arr[:], min(repeats, 3))
            files = _chunk_files(tmp, arr)
            whole_files = _median_seconds(lambda: files.read((0, 0, 0), arr.shape), min(repeats, 3))
            size = sum(f.stat().st_size for f in (tmp / f"c{c}.zarr").rglob("*") if f.is_file())
            out.append(ChunkCost(c, float(np.median(writes)), trajectory, epoch, whole, size, whole_files))
            shutil.rmtree(tmp / f"c{c}.zarr", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _chunk_files(tmp: Path, arr):
    """The analyses' chunk-file reader of the float32 candidate array ``arr`` (written in
    ``tmp/c<C>.zarr``), its chunks checked by a guard as a store's are."""
    from scorebank.analysis.chunkfiles import ChunkFiles
    from scorebank.stores.location import ChunkGuard, ChunkRule

    c = int(arr.chunks[-1])
    root = tmp / f"c{c}.zarr"
    guard = ChunkGuard({arr.path: ChunkRule(arr.path, arr.ndim, c, 4 * c, False, True)}, str(root))
    return ChunkFiles(str(root), arr.path, tuple(arr.shape), tuple(arr.chunks), np.float32, np.nan, True,
                      arr.metadata.chunk_key_encoding, guard, str(root))
