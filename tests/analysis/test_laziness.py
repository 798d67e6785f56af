"""The analyses stream: every chunk of a per-example variable is read inside a Dask task
that reads a few chunks of one run and one example chunk, never the whole variable."""

from collections import Counter

import pytest
import xarray as xr
import zarr
from dask.callbacks import Callback

from scorebank.analysis import forgetting, margin_distribution, pairwise_overlap
from scorebank.stores import schema as S

PER_EXAMPLE = {S.MARGIN, S.EL2N, S.LOSS, S.CORRECT, S.TRAIN_CORRECT, S.GRAND}


class ReadsPerTask(Callback):
    """With the synchronous scheduler: the store keys read while each task ran."""

    def __init__(self, store):
        super().__init__()
        self.store = store
        self.tasks: list[list[str]] = []
        self._start = 0

    def _pretask(self, key, dsk, state):
        self._start = len(self.store.keys)

    def _posttask(self, key, result, dsk, state, id):
        self.tasks.append(self.store.keys[self._start:])


@pytest.mark.parametrize("analysis,var,passes", [
    (lambda ds: forgetting(ds, scheduler="synchronous"), S.TRAIN_CORRECT, 1),
    (lambda ds: pairwise_overlap(ds, k=(3, 10), scheduler="synchronous"), S.MARGIN, 1),
    (lambda ds: margin_distribution(ds, gammas=(0.1,), scheduler="synchronous"), S.MARGIN, 2),
], ids=["forgetting", "pairwise_overlap", "margin_distribution"])
def test_reads_a_few_chunks_per_task(make_store, monkeypatch, counting_store, analysis, var, passes):
    from scorebank.analysis import access

    st = make_store(epochs=12, n=120, chunk=20)  # 3 runs x 13 epochs x 6 chunks = 234 chunks
    monkeypatch.setattr(access, "BLOCK_BYTES", 80)  # 4 epochs of a bool chunk, 1 of a float32 one
    counting = counting_store(zarr.storage.LocalStore(st.path, read_only=True))
    ds = xr.open_zarr(counting, chunks=None, zarr_format=3, consolidated=True)  # like access.open_store
    counting.keys.clear()
    reads = ReadsPerTask(counting)
    with reads:
        analysis(ds)

    def chunk_reads(keys):
        return [k for k in keys if k.split("/")[0] in PER_EXAMPLE and "/c/" in k]

    everything = chunk_reads(counting.keys)
    in_tasks = [k for keys in reads.tasks for k in chunk_reads(keys)]
    # only the analysed variable, every chunk of the chosen epochs exactly once per pass,
    # and all of it inside Dask tasks (nothing loaded eagerly while building the graph)
    assert {k.split("/")[0] for k in everything} == {var}
    assert sorted(in_tasks) == sorted(everything)
    first = 1 if var == S.TRAIN_CORRECT else 0  # forgetting never reads epoch 0
    expected = {f"{var}/c/{r}/{e}/{x}" for r in range(3) for e in range(first, 13) for x in range(6)}
    assert set(everything) == expected
    assert set(Counter(everything).values()) == {passes}
    # each task reads at most 4 chunks (BLOCK_BYTES), all of one run and one example chunk
    per_task = [chunk_reads(keys) for keys in reads.tasks if chunk_reads(keys)]
    assert max(len(keys) for keys in per_task) <= 4
    for keys in per_task:
        assert len({(k.split("/")[2], k.split("/")[4]) for k in keys}) == 1, keys
