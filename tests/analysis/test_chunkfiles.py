"""Per-example variables read straight from a local store's chunk files
(scorebank.analysis.chunkfiles) hold exactly what was written, in the same blocks as
through zarr; every chunk still passes the store's guard; other locations read through
zarr."""

import warnings
from collections import Counter

import numpy as np
import pytest

from scorebank.analysis import access, forgetting, margin_distribution, pairwise_overlap
from scorebank.analysis.chunkfiles import ChunkView, chunk_files
from scorebank.stores import schema as S
from scorebank.stores.errors import ScorebankError
from scorebank.stores.location import CorruptStoreError, UnsafeStoreError, open_scores

N, CHUNK = 40, 16  # three example chunks, the last one partial
PER_EXAMPLE = (S.MARGIN, S.EL2N, S.LOSS, S.CORRECT, S.TRAIN_CORRECT, S.GRAND)


@pytest.fixture
def gappy(make_store):
    """Run 1 misses epoch 3: its chunks there hold only the fill value and are not written."""
    completed = np.ones((3, 7), bool)
    completed[1, 3] = False
    return make_store(n=N, chunk=CHUNK, completed=completed, seed=3)


def _select_both(ds, monkeypatch, name, runs, epochs):
    fast = access.select(ds, name, runs=runs, epochs=epochs)
    with monkeypatch.context() as m:
        m.setattr(access, "chunk_files", lambda ds, name: None)
        slow = access.select(ds, name, runs=runs, epochs=epochs)
    return fast, slow


@pytest.mark.parametrize("name", PER_EXAMPLE)
def test_chunk_files_hold_what_was_written(gappy, monkeypatch, name):
    assert not (gappy.path / S.MARGIN / "c" / "1" / "3" / "0").exists()  # a chunk never written
    ds = access.open_store(gappy.path)
    files = chunk_files(ds, name)
    assert files is not None and files.chunks[-1] == CHUNK
    written = gappy[name]
    for runs in ([0, 1, 2], [2, 0], [1]):
        for epochs in (None, 3, 0, np.array([0, 1, 2, 5, 6]), np.array([6, 2])):
            fast, slow = _select_both(ds, monkeypatch, name, runs, epochs)
            assert fast.chunks == slow.chunks and fast.dtype == slow.dtype == written.dtype
            want = written[runs] if epochs is None else written[runs][:, epochs]
            got = fast.compute(scheduler="synchronous")
            np.testing.assert_array_equal(got, want)
            assert got.dtype == want.dtype


def test_views_index_like_numpy(gappy):
    ds = access.open_store(gappy.path)
    files = chunk_files(ds, S.MARGIN)
    stored = gappy[S.MARGIN]
    view = ChunkView(files, ((0, 3), (1, 6), (3, 37)))
    part = stored[0:3, 1:6, 3:37]
    assert view.shape == part.shape and view.ndim == 3 and view.dtype == np.float32
    for key in [(slice(None),) * 3, (1, slice(2, 5)), (slice(None), -1, slice(0, 30, 3)), np.array([0, 2]),
                (Ellipsis, 5), (slice(1, 3), slice(None), slice(17, 33)), (2, 4, 33), (slice(2, 1),)]:
        np.testing.assert_array_equal(view[key], part[key])
    dropped = ChunkView(files, (2, 4, (0, N)))  # an integer drops the dimension, as isel does
    np.testing.assert_array_equal(dropped[5:40], stored[2, 4, 5:40])


def test_every_chunk_still_passes_the_guard(gappy, tmp_path):
    from numcodecs.zstd import Zstd

    chunk = gappy.path / S.MARGIN / "c" / "2" / "4" / "1"
    good = chunk.read_bytes()
    chunk.write_bytes(good[:6] + b"\xff" * (len(good) - 6))  # the header states the size; the body is garbage
    ds = access.open_store(gappy.path)
    assert chunk_files(ds, S.MARGIN) is not None
    with pytest.raises(CorruptStoreError, match=r"array 'margin' could not be read"):
        pairwise_overlap(ds, k=3, scheduler="synchronous")
    chunk.write_bytes(Zstd().encode(bytes(8)))  # decompresses to 8 bytes, not a chunk's 64
    with pytest.raises(UnsafeStoreError, match=r"chunk 'margin/c/2/4/1' of array 'margin' decompresses to 8 bytes"):
        access.select(ds, S.MARGIN, runs=[2], epochs=4).compute(scheduler="synchronous")


def test_other_locations_read_through_zarr(gappy, tmp_path):
    from scorebank.stores.archive import export_archive

    assert chunk_files(access.open_store(gappy.path), S.MARGIN) is not None
    assert chunk_files(open_scores(gappy.path), S.MARGIN) is None  # Dask-backed: its own chunks
    assert chunk_files(access.open_store(gappy.path).isel({S.EXAMPLE: slice(0, 20)}), S.MARGIN) is None
    loaded = access.open_store(gappy.path)
    loaded[S.MARGIN].load()
    assert chunk_files(loaded, S.MARGIN) is None
    archive = export_archive(gappy.path, tmp_path / "x.scorebank.zip")
    ds = access.open_store(archive.path)
    assert chunk_files(ds, S.MARGIN) is None
    got = access.select(ds, S.MARGIN, runs=[0, 2], epochs=np.array([1, 2])).compute(scheduler="synchronous")
    np.testing.assert_array_equal(got, gappy[S.MARGIN][[0, 2]][:, [1, 2]])


def test_a_margin_overflowing_its_normalisation_is_still_refused(make_store):
    """Normalised margins are counted on the float32 margins unless some rho is tiny enough
    for margin / rho to overflow; then they are divided, as the registry's rule says."""
    margin = np.random.default_rng(0).normal(size=(3, 7, N))
    margin[1, 2, 5] = 1e30
    rho = np.full((3, 7), 2.0)
    fine = make_store(n=N, chunk=CHUNK, overrides={S.MARGIN: margin, S.NORM_PRODUCT: rho})
    assert float(pairwise_overlap(fine.path, k=3)["mean"].sel(k=3, epoch=2)) >= 0
    rho[1, 2] = 1e-300  # 1e30 / 1e-300 is inf in float64
    tiny = make_store(n=N, chunk=CHUNK, overrides={S.MARGIN: margin, S.NORM_PRODUCT: rho})
    with pytest.raises(ScorebankError, match=r"score 'nmargin@2' is not finite \(NaN or inf\) for 1 example\(s\) "
                                             r"in run 1;"):
        pairwise_overlap(tiny.path, k=3)


@pytest.mark.parametrize("analysis,var,passes", [
    (lambda ds: forgetting(ds, scheduler="synchronous"), S.TRAIN_CORRECT, 1),
    (lambda ds: pairwise_overlap(ds, k=(3, 10), scheduler="synchronous"), S.MARGIN, 1),
    (lambda ds: margin_distribution(ds, gammas=(0.1,), scheduler="synchronous"), S.MARGIN, 2),
], ids=["forgetting", "pairwise_overlap", "margin_distribution"])
def test_chunk_files_are_read_inside_tasks_a_few_at_a_time(make_store, monkeypatch, analysis, var, passes):
    """As tests/analysis/test_laziness.py checks for zarr's reader: every chunk of the
    chosen epochs once per pass, inside Dask tasks, at most 4 chunks of one run and one
    example chunk per task; and every chunk read is checked by the store's guard."""
    from dask.callbacks import Callback

    from scorebank.analysis.chunkfiles import ChunkFiles
    from scorebank.stores.location import ChunkGuard

    st = make_store(epochs=12, n=120, chunk=20)  # 3 runs x 13 epochs x 6 chunks
    monkeypatch.setattr(access, "BLOCK_BYTES", 80)  # 4 epochs of a bool chunk, 1 of a float32 one
    read, checked, tasks = [], [], []
    chunk_bytes, check = ChunkFiles._chunk_bytes, ChunkGuard.check

    def recording_chunk_bytes(self, coords):
        key, data = chunk_bytes(self, coords)
        read.append(key)
        return key, data

    def recording_check(self, key, data):
        checked.append(key)
        return check(self, key, data)

    monkeypatch.setattr(ChunkFiles, "_chunk_bytes", recording_chunk_bytes)
    monkeypatch.setattr(ChunkGuard, "check", recording_check)

    class PerTask(Callback):
        def _pretask(self, key, dsk, state):
            self.start = len(read)

        def _posttask(self, key, result, dsk, state, id):
            tasks.append(read[self.start:])

    ds = access.open_store(st.path)
    read.clear()
    with PerTask():
        analysis(ds)
    per_example = [k for k in read if k.split("/")[0] in PER_EXAMPLE]
    assert {k.split("/")[0] for k in per_example} == {var}
    first = 1 if var == S.TRAIN_CORRECT else 0  # forgetting never reads epoch 0
    assert set(per_example) == {f"{var}/c/{r}/{e}/{x}" for r in range(3) for e in range(first, 13) for x in range(6)}
    assert set(Counter(per_example).values()) == {passes}
    assert sorted(k for keys in tasks for k in keys if k in per_example) == sorted(per_example)
    per_task = [[k for k in keys if k in per_example] for keys in tasks]
    assert max(len(keys) for keys in per_task) <= 4
    for keys in filter(None, per_task):
        assert len({(k.split("/")[2], k.split("/")[4]) for k in keys}) == 1, keys
    assert Counter(k for k in checked if k in per_example) == Counter(per_example)


def test_uncompressed_chunks_read_as_zarr_reads_them(gappy, monkeypatch):
    """Arrays stored with the ``bytes`` codec alone (no zstd; gaps and a partial last chunk)."""
    import zarr

    for name in (S.MARGIN, S.TRAIN_CORRECT):
        src = zarr.open_array(gappy.path / name, mode="r")
        values, attrs, dims = src[...], dict(src.attrs), src.metadata.dimension_names
        chunks, fill = src.chunks, src.fill_value
        (gappy.path / name / "zarr.json").unlink()
        for chunk in sorted((gappy.path / name).rglob("*"), reverse=True):
            chunk.unlink() if chunk.is_file() else chunk.rmdir()
        zarr.create_array(str(gappy.path), name=name, shape=values.shape, chunks=chunks, dtype=values.dtype,
                          compressors=None, fill_value=fill, attributes=attrs, dimension_names=dims,
                          overwrite=True)[...] = values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr: consolidated metadata is not in the v3 spec
        zarr.consolidate_metadata(str(gappy.path))
    ds = access.open_store(gappy.path)
    for name in (S.MARGIN, S.TRAIN_CORRECT):
        files = chunk_files(ds, name)
        assert files is not None and not files.zstd
        fast, slow = _select_both(ds, monkeypatch, name, [2, 0, 1], np.array([6, 3, 0]))
        want = gappy[name][[2, 0, 1]][:, [6, 3, 0]]
        np.testing.assert_array_equal(fast.compute(scheduler="synchronous"), want)
        np.testing.assert_array_equal(slow.compute(scheduler="synchronous"), want)
