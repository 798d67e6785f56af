"""Issue 11 #3: metadata alone cannot make a reading command allocate.  A small archive
declaring 2^29 or 2^31 examples (and storing none, or only chunks of zeros) is refused in
one line by `info` and `inspect` with memory staying small; `inspect` reads no score array."""

from __future__ import annotations

import json
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from numcodecs import Zstd

from scorebank.stores import schema as S
from scorebank.stores.archive import ArchiveStore, export_archive
from scorebank.stores.location import MAX_COORDINATE_RATIO, UnsafeStoreError, open_scores

N = 120
SMALL = 64 << 20  # bytes a refused command may allocate at most (Python-traced, numpy included)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """A genuine small archive (one run written) of a store with both optional features."""
    from scorebank.stores.create import create_store
    from scorebank.stores.zarrstore import StoreWriter

    root = tmp_path_factory.mktemp("declared")
    labels = np.arange(N) % 3
    create_store(root / "s.zarr", n_epochs=2, labels=labels, true_labels=labels, original_index=np.arange(N),
                 seeds=(0, 1), features=frozenset(S.FEATURES),
                 attrs={S.ATTR_CONFIG: json.dumps({"record_epochs": [0, 1, 2], "grand_epochs": [0]}),
                        S.ATTR_DATASET: "toy", S.ATTR_FINGERPRINT: "toy-fp", S.ATTR_CLASS_NAMES: ["a", "b", "c"]})
    with StoreWriter(root / "s.zarr") as w:
        for epoch in range(3):
            w.write_epoch(0, epoch, {S.MARGIN: np.linspace(-1, 1, N, dtype=np.float32)},
                          {S.TRAIN_ACCURACY: 0.5, S.TEST_ACCURACY: 0.25, S.RECORDED: True})
        w.set_run_status(0, S.RUN_COMPLETE)
    return Path(export_archive(root / "s.zarr", root / "s.scorebank.zip").path)


def craft(rezip, archive: Path, out: Path, n: int, *, example_chunk: int | None = None,
          example_chunks: dict[str, bytes] | None = None) -> Path:
    """``archive`` rewritten as an attacker would: every array along ``example`` declared
    ``n`` long, none of their chunks kept (``example_chunks`` are stored instead, for the
    ``example`` coordinate chunked by ``example_chunk``)."""
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        doc = json.loads(zf.read("zarr.json"))
    replace: dict[str, bytes | None] = {}
    for name, meta in doc["consolidated_metadata"]["metadata"].items():
        if meta["node_type"] == "array" and S.EXAMPLE in (meta.get("dimension_names") or []):
            meta["shape"] = [n if d == S.EXAMPLE else s for d, s in zip(meta["dimension_names"], meta["shape"])]
            replace.update({key: None for key in names if key.startswith(name + "/c/")})
    if example_chunk:
        doc["consolidated_metadata"]["metadata"][S.EXAMPLE]["chunk_grid"]["configuration"]["chunk_shape"] = \
            [example_chunk]
    replace.update(example_chunks or {})
    replace["zarr.json"] = json.dumps(doc).encode()
    return rezip(archive, out, replace)


def _run_traced(args: list[str]):
    from scorebank.cli.main import app
    from typer.testing import CliRunner

    tracemalloc.start()
    try:
        result = CliRunner().invoke(app, args, terminal_width=200)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.mark.parametrize("power", [29, 31])
@pytest.mark.parametrize("command", ["info", "inspect"])
def test_declared_examples_without_chunks_are_refused_in_small_memory(rezip, archive, tmp_path, power,
                                                                      command):
    evil = craft(rezip, archive, tmp_path / "evil.scorebank.zip", 1 << power)
    assert evil.stat().st_size < 64 << 10
    result, peak = _run_traced([command, str(evil)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert (f"coordinate 'example' declares {1 << power} values but neither chunk 'example/c/0' nor "
            "'example/c/1' is stored" in lines[0])
    assert peak < SMALL, peak


def test_declared_examples_out_of_proportion_to_stored_zeros_are_refused(rezip, archive, tmp_path):
    width = 1 << 20  # 8 MiB chunks of int64 zeros: each stored in a few hundred bytes
    zeros = Zstd(level=0).encode(np.zeros(width, dtype="<i8").tobytes())
    n = 64 * width
    evil = craft(rezip, archive, tmp_path / "zeros.scorebank.zip", n, example_chunk=width,
                 example_chunks={f"{S.EXAMPLE}/c/{i}": zeros for i in range(64)})
    with pytest.raises(UnsafeStoreError) as exc:
        open_scores(evil)
    assert str(exc.value).endswith(f"coordinate 'example' declares {n} values ({8 * n} bytes) but its chunks "
                                   f"hold {64 * len(zeros)} bytes; scorebank reads at most "
                                   f"{MAX_COORDINATE_RATIO}x what is stored")


def test_genuine_coordinates_are_well_within_the_ratio(archive):
    with zipfile.ZipFile(archive) as zf:
        stored = zf.getinfo(f"{S.EXAMPLE}/c/0").file_size
    assert stored * MAX_COORDINATE_RATIO > 8 * N * 4  # a margin of 4x on top of zstd's 5-8x


def test_inspect_reads_no_score_array(archive, monkeypatch):
    from scorebank.cli.main import app
    from typer.testing import CliRunner

    read: list[str] = []
    get = ArchiveStore.get

    async def recording_get(self, key, prototype, byte_range=None):
        read.append(key)
        return await get(self, key, prototype, byte_range)

    monkeypatch.setattr(ArchiveStore, "get", recording_get)
    result = CliRunner().invoke(app, ["inspect", str(archive), "--json"])
    assert result.exit_code == 0, result.output
    scores = {v.name for v in S.VARIABLES if S.EXAMPLE in v.dims}
    touched = {key.split("/")[0] for key in read if "/c/" in key}
    assert touched and not touched & scores, sorted(touched)


def test_a_coordinate_chunk_of_zeros_is_not_stored_and_still_accepted(tmp_path):
    """zarr does not store a chunk equal to the fill value: seed 0 alone, example 0 alone."""
    from scorebank.stores.create import create_store

    path = tmp_path / "one.zarr"
    create_store(path, n_epochs=0, labels=np.zeros(1, dtype=np.int64), true_labels=np.zeros(1, dtype=np.int64),
                 original_index=np.zeros(1), seeds=(0,), features=frozenset(), attrs={})
    assert not (path / S.RUN / "c").exists() and not (path / S.EXAMPLE / "c").exists()
    ds = open_scores(path)
    assert ds[S.RUN].values.tolist() == [0] and ds.sizes[S.EXAMPLE] == 1


def test_a_store_directory_declaring_examples_it_does_not_store_is_refused(tmp_path):
    from scorebank.stores.create import create_store

    path = tmp_path / "dir.zarr"
    create_store(path, n_epochs=1, labels=np.arange(N) % 3, true_labels=np.arange(N) % 3,
                 original_index=np.arange(N), seeds=(0,), features=frozenset(), attrs={})
    doc = json.loads((path / "zarr.json").read_text())
    for meta in doc["consolidated_metadata"]["metadata"].values():
        if meta["node_type"] == "array" and S.EXAMPLE in meta["dimension_names"]:
            meta["shape"] = [1 << 31 if d == S.EXAMPLE else n for d, n in zip(meta["dimension_names"], meta["shape"])]
    (path / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(UnsafeStoreError, match="coordinate 'example' declares 2147483648 values but neither chunk "
                                               "'example/c/1' nor 'example/c/2' is stored"):
        open_scores(path)
