import pytest

from scorebank.analysis.chunk_bench import chunk_costs
from scorebank.stores.errors import InvalidArgumentError


def test_chunk_costs_measure_each_candidate_and_leave_nothing(tmp_path):
    costs = chunk_costs((8, 64, 10_000), runs=2, epochs=2, examples=300, repeats=2, directory=str(tmp_path))
    assert [c.chunk for c in costs] == [8, 64, 300]  # a chunk larger than N holds N
    for c in costs:
        assert min(c.write_epoch, c.read_trajectory, c.read_epoch, c.read_all, c.read_all_files) > 0
        assert c.bytes_on_disk > 2 * 3 * 300  # compressed random float32 is not much smaller
    # many small chunks cost more files (zarr.json plus one object per chunk)
    assert costs[0].bytes_on_disk > costs[2].bytes_on_disk
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidArgumentError, match="must be positive"):
        chunk_costs((0,), examples=10)


def test_chunk_file_reader_of_a_candidate_reads_what_zarr_reads(tmp_path):
    import numpy as np
    import zarr

    from scorebank.analysis.chunk_bench import _chunk_files
    from scorebank.stores import schema as S
    from scorebank.stores.arrays import create_array

    group = zarr.open_group(tmp_path / "c64.zarr", mode="w", zarr_format=3)
    arr = create_array(group, S.MARGIN, dims=(S.RUN, S.EPOCH, S.EXAMPLE), shape=(2, 3, 300), dtype="float32",
                       chunks=(1, 1, 64))
    values = np.random.default_rng(0).standard_normal((2, 3, 300)).astype(np.float32)
    arr[:, :2] = values[:, :2]  # epoch 2 never written: NaN
    values[:, 2] = np.nan
    np.testing.assert_array_equal(_chunk_files(tmp_path, arr).read((0, 0, 0), (2, 3, 300)), values)
