"""The analyses give the same values whatever the store's example chunking and the Dask
blocks cut from it (one store chunk of a few epochs, several whole chunks, or everything
at once), and the fast average ranks equal SciPy's."""

import numpy as np
import pytest
import xarray as xr
from scipy.stats import rankdata, spearmanr

from scorebank.analysis import access, forgetting, pairwise_overlap, spearman_matrix
from scorebank.analysis.correlation import average_ranks
from scorebank.stores import schema as S

N, EPOCHS, CHUNK = 300, 6, 64  # 5 example chunks, the last one partial


def _stores(make_store):
    """The same values written twice: in one example chunk, and in chunks of CHUNK; one
    epoch missing from the middle of a run (forgetting pairs break there)."""
    completed = np.ones((3, EPOCHS + 1), bool)
    completed[1, 3] = False
    kwargs = dict(n=N, epochs=EPOCHS, seed=7, completed=completed)
    return make_store(chunk=N, **kwargs), make_store(chunk=CHUNK, **kwargs)


SPECS = ["el2n@2", "loss@4", "margin@6", "nmargin@6", "grand@0", "forgetting@6", "forgetting"]


def _analyses(path):
    f = forgetting(path, scheduler="synchronous")
    f_inf = forgetting(path, never_learned="inf", scheduler="threads")
    mat = spearman_matrix(path, [s for s in SPECS if s != "forgetting@6"], runs=[0, 2], scheduler="threads")
    ov = pairwise_overlap(path, k=(1, 7, 40), scheduler="synchronous")
    return f, f_inf, mat, ov


@pytest.mark.parametrize("block_bytes", [None, 7 * CHUNK * 4 * 2, 2 * CHUNK],
                         ids=["everything-in-one-block", "several-chunks-per-block", "one-chunk-two-epochs"])
def test_results_do_not_depend_on_chunks_or_blocks(make_store, monkeypatch, block_bytes):
    single, split = _stores(make_store)
    assert xr.open_zarr(split.path)[S.MARGIN].encoding["chunks"] == (1, 1, CHUNK)
    want = _analyses(single.path)  # one chunk, one block per run: nothing to combine
    if block_bytes is not None:
        monkeypatch.setattr(access, "BLOCK_BYTES", block_bytes)
    got = _analyses(split.path)
    for w, g in zip(want, got):
        xr.testing.assert_identical(g, w)
    # and the single-chunk values are the straightforward ones
    tc = single[S.TRAIN_CORRECT]
    events = [((tc[r, :-1] & ~tc[r, 1:]) & (single[S.COMPLETED][r, :-1] & single[S.COMPLETED][r, 1:])[:, None])
              [1:].sum(axis=0) for r in range(3)]
    np.testing.assert_array_equal(want[0]["events"].values, np.asarray(events))
    el2n, loss = single[S.EL2N][[0, 2], 2].astype(float).mean(0), single[S.LOSS][[0, 2], 4].astype(float).mean(0)
    np.testing.assert_allclose(want[2].sel(score_a="el2n@2", score_b="loss@4").values,
                               spearmanr(el2n, loss).statistic, atol=1e-12)


@pytest.mark.parametrize("block_bytes,expected", [
    (None, {S.TRAIN_CORRECT: ((6,), (N,)), S.MARGIN: ((3, 3), (N,)), S.EL2N: (None, (N,))}),
    # 6 epochs x 64 bools = 384 bytes a chunk: 9 chunks fit; 6 x 64 float32: 2 chunks; one epoch: 14
    (7 * CHUNK * 4 * 2, {S.TRAIN_CORRECT: ((6,), (N,)), S.MARGIN: ((3, 3), (128, 128, 44)),
                         S.EL2N: (None, (N,))}),
    # 2 epochs of one bool chunk; floats: one epoch of one chunk (the smallest block)
    (2 * CHUNK, {S.TRAIN_CORRECT: ((2, 2, 2), (64, 64, 64, 64, 44)),
                 S.MARGIN: ((1,) * 6, (64, 64, 64, 64, 44)), S.EL2N: (None, (64, 64, 64, 64, 44))}),
], ids=["default", "several-chunks-per-block", "one-chunk-per-block"])
def test_blocks_are_whole_chunks_within_the_byte_budget(make_store, monkeypatch, block_bytes, expected):
    _, split = _stores(make_store)
    ds = access.open_store(split.path)
    if block_bytes is not None:
        monkeypatch.setattr(access, "BLOCK_BYTES", block_bytes)
    for name, epochs in [(S.TRAIN_CORRECT, np.arange(1, 7)), (S.MARGIN, np.r_[0:3, 4:7]), (S.EL2N, 2)]:
        x = access.select(ds, name, runs=[0, 2], epochs=epochs)
        want_epochs, want_examples = expected[name]
        assert x.chunks[0] == (1, 1) and x.chunks[-1] == want_examples, name
        if want_epochs is not None:
            assert x.chunks[1] == want_epochs, name


def test_average_ranks_equal_scipy():
    rng = np.random.default_rng(3)
    cases = [rng.normal(size=1000), np.round(rng.normal(size=1000), 1), rng.integers(0, 5, 997),
             np.r_[np.inf, 1.0, -np.inf, 1.0, np.inf, 0.0], np.array([2.5]), np.array([]),
             rng.normal(size=500).astype(np.float32), np.zeros(7)]
    for x in cases:
        got = average_ranks(x)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, rankdata(x, method="average"))
    assert np.isnan(average_ranks(np.array([1.0, np.nan, 0.0]))).all()


# ------------------------------------------------------------------------------ several sizes
def test_parse_sizes():
    from scorebank.analysis.bench import parse_sizes
    from scorebank.stores.errors import InvalidArgumentError

    assert parse_sizes("1281167, 50000,320_000,50000") == (50_000, 320_000, 1_281_167)
    assert parse_sizes("300") == (300,)
    for bad in ("", "0", "12,x", "-5", "1.5e6"):
        with pytest.raises(InvalidArgumentError, match="not a list of example counts"):
            parse_sizes(bad)


def test_series_times_each_size_in_its_own_directory(tmp_path):
    from scorebank.analysis.bench import run_series
    from scorebank.stores.errors import StoreExistsError, StoreNotFoundError

    seen = []
    series = run_series(tmp_path, runs=2, epochs=3, examples=(400, 200), classes=3, keep=True,
                        scheduler="synchronous", progress=seen.append)
    assert [r.examples for r in series.results] == [200, 400]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["200", "400"]
    for res in series.results:
        assert res.timings[0].bytes_read == 2 * 3 * res.examples  # train_correct, epochs 1..3
        assert xr.open_zarr(tmp_path / str(res.examples) / "bench.zarr").sizes[S.EXAMPLE] == res.examples
    assert any("400 examples" in m for m in seen)
    doc = series.to_dict()
    assert doc["examples"] == [200, 400]
    t0, t1 = series.results[0].timings[1].seconds, series.results[1].timings[1].seconds
    assert doc["results"][1]["timings"][1]["scaling"] == pytest.approx((t1 / t0) / 2)
    assert doc["results"][0]["timings"][2]["scaling"] == 1.0
    # kept stores are refused for building, reused as they are, and a missing size is named
    # before anything is timed
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(StoreExistsError, match="remove them or pass --reuse"):
        run_series(tmp_path, runs=2, epochs=3, examples=(100, 200), classes=3, scheduler="synchronous")
    with pytest.raises(StoreNotFoundError, match="100"):
        run_series(tmp_path, runs=2, epochs=3, examples=(100, 200), classes=3, reuse=True,
                   scheduler="synchronous")
    again = run_series(tmp_path, runs=2, epochs=3, examples=(200, 400), classes=3, reuse=True,
                       scheduler="synchronous")
    assert [r.build_seconds for r in again.results] == [None, None]
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    # without --keep nothing stays
    run_series(tmp_path / "gone", runs=2, epochs=1, examples=(50, 60), classes=2, scheduler="synchronous")
    assert sorted(p.name for p in (tmp_path / "gone").iterdir()) == ["50", "60"]
    assert not any((tmp_path / "gone").rglob("bench.zarr"))
