import numpy as np
import pytest
import xarray as xr

from scorebank.analysis import data_separation, forgetting, pairwise_overlap
from scorebank.analysis.bench import build_synthetic_store, run_benchmark
from scorebank.stores import schema as S


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.zarr"
    return build_synthetic_store(path, runs=3, epochs=40, examples=500, classes=4, label_noise=0.1)


def test_synthetic_store_follows_the_schema(synthetic):
    ds = xr.open_zarr(synthetic)  # plain xarray opens it
    assert dict(ds.sizes) == {S.RUN: 3, S.EPOCH: 41, S.EXAMPLE: 500}
    assert ds[S.MARGIN].encoding["chunks"] == (1, 1, 500)
    assert ds.attrs[S.ATTR_RUNS]["2"]["status"] == S.RUN_COMPLETE
    assert ds[S.COMPLETED].values.all() and ds[S.CORRUPTED].values.sum() == 50
    assert not ds[S.TRAIN_CORRECT].isel(epoch=0).values.any()
    assert np.isnan(ds[S.GRAND].isel(epoch=1).values).all() and not np.isnan(ds[S.GRAND].isel(epoch=0).values).any()
    acc = ds[S.CORRECT].values.mean(axis=2)
    np.testing.assert_allclose(ds[S.TRAIN_ACCURACY].values, acc, rtol=1e-6)
    assert (data_separation(synthetic).values > 0).all()  # every run separates part-way


def test_synthetic_store_configuration_is_a_score_config(synthetic):
    from scorebank.core.config import ScoreConfig

    cfg = ScoreConfig.from_json(xr.open_zarr(synthetic).attrs[S.ATTR_CONFIG])
    assert cfg == ScoreConfig(dataset="synthetic", epochs=40, record_epochs=tuple(range(41)), grand_epochs=(0,),
                              label_noise=0.1)
    assert cfg.features == {S.FEATURE_GRAND, S.FEATURE_LABEL_NOISE}


def test_binary_el2n_never_overflows():
    import math
    import warnings

    from scorebank.analysis.bench import binary_el2n

    margins = np.array([-1000.0, -20.0, -1.5, 0.0, 0.25, 3.0, 87.0, 89.0, 100.0, 1000.0], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # np.exp(margin) overflowed past 88 in float32
        got = binary_el2n(margins)
    assert got.dtype == np.float32
    # sqrt(2) * (1 - sigmoid(m)), by the standard library in float64 (exp(-m) form where exp(m) overflows)
    want = [math.sqrt(2) / (1 + math.exp(m)) if m < 700 else math.sqrt(2) * math.exp(-m) for m in margins.tolist()]
    np.testing.assert_allclose(got, np.asarray(want, dtype=np.float32), rtol=1e-6, atol=0)


def test_benchmark_with_a_distributed_client(synthetic):
    distributed = pytest.importorskip("distributed")
    tc = xr.open_zarr(synthetic)[S.TRAIN_CORRECT].values[:, 1:]
    expected = (tc[:, :-1] & ~tc[:, 1:]).sum(axis=1)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        got = forgetting(synthetic, scheduler=client)
        res = run_benchmark(synthetic, scheduler=client, overlap_k=(10, 50))
    np.testing.assert_array_equal(got["events"].values, expected)
    assert [t.name.split(" ")[0] for t in res.timings] == ["forgetting", "spearman", "overlap"]
    assert res.timings[0].bytes_read == 3 * 40 * 500 and res.timings[2].bytes_read == 3 * 41 * 500 * 4
    # el2n@4, loss@4, margin@40 (nmargin@40 reads the same slab), grand@0: one float32 epoch
    # each; forgetting@40: 40 boolean epochs
    assert res.timings[1].bytes_read == 3 * 500 * (4 * 4 + 40)
    assert all(t.seconds > 0 and t.peak_memory_bytes > 0 for t in res.timings)
    assert res.to_dict()["mb_per_s"] == pytest.approx(res.total_bytes / 1e6 / res.total_seconds)
    # the timed overlap is the same computation as a direct call
    direct = pairwise_overlap(synthetic, k=(10, 50), scheduler="synchronous")
    m = xr.open_zarr(synthetic)[S.MARGIN].isel(epoch=40).values
    sets = [set(np.lexsort((np.arange(500), m[r]))[:10].tolist()) for r in range(3)]
    assert float(direct["overlap"].sel(k=10, epoch=40).values[0, 1]) == len(sets[0] & sets[1]) / 10


# ------------------------------------------------------------------------------ lifecycle
def _tree(path):
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else None) for p in path.rglob("*"))


def test_bench_store_never_removes_a_store_it_did_not_build(tmp_path_factory):
    from scorebank.analysis.bench import bench_store
    from scorebank.stores.errors import InvalidArgumentError, StoreExistsError, StoreNotFoundError

    size = dict(runs=2, epochs=2, examples=20, classes=2)
    tmp_path, other = tmp_path_factory.mktemp("kept"), tmp_path_factory.mktemp("other") / "sub"
    # built in --dir and kept
    with bench_store(tmp_path, keep=True, **size) as b:
        assert b.built and b.path == tmp_path / "bench.zarr" and b.build_seconds >= 0
    assert (tmp_path / "bench.zarr" / "zarr.json").is_file()
    before = _tree(tmp_path)
    # an existing store is refused, and survives the refusal
    with pytest.raises(StoreExistsError, match=r"bench.zarr' exists; remove it or pass --reuse"):
        with bench_store(tmp_path, **size):
            pass
    assert _tree(tmp_path) == before
    # reused: timed as is, never removed, even when the body fails
    with pytest.raises(RuntimeError):
        with bench_store(tmp_path, reuse=True, **size) as b:
            assert not b.built and b.build_seconds is None
            raise RuntimeError("boom")
    assert _tree(tmp_path) == before
    # built without --keep: removed afterwards, also when the body fails; the directory stays
    with pytest.raises(RuntimeError):
        with bench_store(other, **size):
            raise RuntimeError("boom")
    assert other.is_dir() and list(other.iterdir()) == []
    # a temporary directory is removed with the store
    with bench_store(None, **size) as b:
        tmp = b.path.parent
        assert tmp.is_dir()
    assert not tmp.exists()
    with pytest.raises(StoreNotFoundError, match="no benchmark store"):
        with bench_store(other, reuse=True, **size):
            pass
    with pytest.raises(InvalidArgumentError, match="--reuse needs --dir"):
        with bench_store(None, reuse=True, **size):
            pass
    with pytest.raises(InvalidArgumentError, match="--classes 1 is too small"):
        with bench_store(None, **dict(size, classes=1)):
            pass
    assert _tree(tmp_path) == before
