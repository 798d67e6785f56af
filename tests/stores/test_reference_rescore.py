"""Bit-identical reference: re-running the command that wrote tests/data/format1.scorebank.zip
(see tests/data/README.md) reproduces every array the archive holds, bit for bit, on CPU.
This guards every refactor of training, scoring and storing.

The archive was written with 2 torch CPU threads (the machine's default); CPU kernels sum in
an order that depends on the thread count, so the test pins 2 threads (tests/conftest.py
pins 1 for speed elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from scorebank.stores import schema as S

FORMAT1 = Path(__file__).resolve().parents[1] / "data" / "format1.scorebank.zip"
THREADS = 2  # torch CPU threads the archive was written with
#: the score command of tests/data/README.md
COMMAND = ["score", "--limit", "150", "--epochs", "3", "--seeds", "0-1", "--label-noise", "0.2",
           "--grand-epochs", "0,3", "--record-epochs", "0,1,3", "--batch-size", "32", "--quiet",
           "--device", "cpu"]


def _arrays(group: zarr.Group) -> dict[str, np.ndarray]:
    """Every root array of a store (the archive's manifests group is not the score command's)."""
    return {name: node[...] for name, node in group.arrays()}


@pytest.fixture
def reference_threads():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def test_rescoring_reproduces_the_reference_archive_bit_for_bit(tmp_path, reference_threads):
    from scorebank.cli.main import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, COMMAND + ["--store", str(tmp_path / "ref.zarr")])
    assert result.exit_code == 0, result.output
    ref = zarr.open_group(zarr.storage.ZipStore(FORMAT1, mode="r"), mode="r")
    new = zarr.open_group(tmp_path / "ref.zarr", mode="r")
    assert json.loads(new.attrs[S.ATTR_CONFIG]) == json.loads(ref.attrs[S.ATTR_CONFIG])
    for key in (S.ATTR_DATASET, S.ATTR_FINGERPRINT, S.ATTR_CLASS_NAMES, S.ATTR_FEATURES):
        assert new.attrs[key] == ref.attrs[key], key
    assert {k: v["status"] for k, v in new.attrs[S.ATTR_RUNS].items()} == {"0": "complete", "1": "complete"}
    want, got = _arrays(ref), _arrays(new)
    assert set(want) <= set(got), sorted(set(want) - set(got))
    for name, values in want.items():
        assert got[name].dtype == values.dtype and got[name].shape == values.shape, name
        assert got[name].tobytes() == values.tobytes(), (  # bit for bit (NaN == NaN)
            f"{name}: {np.count_nonzero(got[name] != values)} values differ")
    assert S.MARGIN in want and S.GRAND in want and len(want) >= 20


def test_a_format1_store_is_extended_and_keeps_its_format(tmp_path, reference_threads):
    """A store written by the first release (the reference archive, imported) takes a new seed
    from this release: the new run is written without the variables format 1 predates, the old
    runs are untouched and the store stays format 1 (the previous release still reads it)."""
    from scorebank.cli.main import app
    from typer.testing import CliRunner

    store = tmp_path / "old.zarr"
    runner = CliRunner()
    assert runner.invoke(app, ["import", str(FORMAT1), str(store)]).exit_code == 0
    before = _arrays(zarr.open_group(store, mode="r"))
    command = [arg if arg != "0-1" else "0-2" for arg in COMMAND]
    result = runner.invoke(app, command + ["--store", str(store)])
    assert result.exit_code == 0, result.output
    after = zarr.open_group(store, mode="r")
    assert S.store_format(after.attrs) == 1 and S.ATTR_WRITER_FORMAT not in after.attrs
    got = _arrays(after)
    assert set(got) == set(before)  # no format-2 variable appeared
    assert {k: v["status"] for k, v in after.attrs[S.ATTR_RUNS].items()} == {
        "0": "complete", "1": "complete", "2": "complete"}
    for name in (S.MARGIN, S.LOSS, S.GRAND, S.TRAIN_CORRECT, S.TEST_ACCURACY):
        assert got[name][:2].tobytes() == before[name].tobytes(), name  # old runs unchanged
    assert np.isfinite(got[S.MARGIN][2][[0, 1, 3]]).all() and got[S.COMPLETED][2].all()  # recorded epochs
