import pytest

from scorebank.analysis.chunk_bench import chunk_costs
from scorebank.stores.errors import InvalidArgumentError


def test_chunk_costs_measure_each_candidate_and_leave_nothing(tmp_path):
    costs = chunk_costs((8, 64, 10_000), runs=2, epochs=2, examples=300, repeats=2, directory=str(tmp_path))
    assert [c.chunk for c in costs] == [8, 64, 300]  # a chunk larger than N holds N
    for c in costs:
        assert min(c.write_epoch, c.read_trajectory, c.read_epoch, c.read_all) > 0
        assert c.bytes_on_disk > 2 * 3 * 300  # compressed random float32 is not much smaller
    # many small chunks cost more files (zarr.json plus one object per chunk)
    assert costs[0].bytes_on_disk > costs[2].bytes_on_disk
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidArgumentError, match="must be positive"):
        chunk_costs((0,), examples=10)
