"""stores.arrays.create_array writes arrays byte-identical to the first release's (format 1)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from scorebank.stores import schema as S
from scorebank.stores.arrays import create_array

FORMAT1 = Path(__file__).resolve().parents[1] / "data" / "format1.scorebank.zip"
_SAME = ("data_type", "chunk_grid", "chunk_key_encoding", "fill_value", "codecs", "dimension_names",
         "attributes", "shape", "zarr_format", "node_type", "storage_transformers")


def _archive_arrays() -> dict[str, tuple[dict, dict[str, bytes]]]:
    """``{array path: (zarr.json, {chunk key: stored bytes})}`` of the format-1 archive."""
    out: dict[str, tuple[dict, dict[str, bytes]]] = {}
    with zipfile.ZipFile(FORMAT1) as zf:
        names = zf.namelist()
        for name in names:
            if not name.endswith("zarr.json") or name == "zarr.json":
                continue
            meta = json.loads(zf.read(name))
            if meta.get("node_type") != "array":
                continue
            path = name[: -len("/zarr.json")]
            chunks = {n[len(path) + 1:]: zf.read(n) for n in names
                      if n.startswith(path + "/c/") and not n.endswith("/")}
            out[path] = (meta, chunks)
    return out


def test_rewriting_every_format1_array_reproduces_its_metadata_and_chunk_bytes(tmp_path):
    arrays = _archive_arrays()
    assert S.MARGIN in arrays and len(arrays) >= 20
    src = zarr.open_group(zarr.storage.ZipStore(FORMAT1, mode="r"), mode="r")
    dst = zarr.open_group(tmp_path / "copy.zarr", mode="w", zarr_format=3)
    for path, (meta, chunks) in arrays.items():
        node = src[path]
        parent = dst.require_group(path.rpartition("/")[0]) if "/" in path else dst
        create_array(parent, path.rpartition("/")[2], dims=meta["dimension_names"], data=node[...],
                     dtype=meta["data_type"], chunks=meta["chunk_grid"]["configuration"]["chunk_shape"],
                     fill_value=node.fill_value, attributes=meta["attributes"])
        written = json.loads((tmp_path / "copy.zarr" / path / "zarr.json").read_text())
        assert {k: written.get(k) for k in _SAME} == {k: meta.get(k) for k in _SAME}, path
        ours = {str(p.relative_to(tmp_path / "copy.zarr" / path)): p.read_bytes()
                for p in (tmp_path / "copy.zarr" / path / "c").rglob("*") if p.is_file()}
        assert ours == chunks, path


def test_strings_are_variable_length_utf8_with_zstd(tmp_path):
    g = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3)
    arr = create_array(g, "source", dims=(S.RUN,), data=["lab-a", "lab-b é"])
    meta = json.loads((tmp_path / "s.zarr" / "source" / "zarr.json").read_text())
    assert meta["data_type"] == "string"
    assert meta["fill_value"] == ""
    assert meta["codecs"] == [dict(c) for c in S.CODECS["string"]]
    assert list(arr[...]) == ["lab-a", "lab-b é"]


@pytest.mark.parametrize("dtype, fill", [("float32", "NaN"), ("float64", "NaN"), ("int64", 0), ("bool", False)])
def test_default_fill_values_follow_the_schema(tmp_path, dtype, fill):
    g = zarr.open_group(tmp_path / "f.zarr", mode="w", zarr_format=3)
    create_array(g, "x", dims=(S.EXAMPLE,), shape=(3,), dtype=dtype)
    meta = json.loads((tmp_path / "f.zarr" / "x" / "zarr.json").read_text())
    assert meta["fill_value"] == fill
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [3]


def test_dimension_names_must_match_the_shape(tmp_path):
    g = zarr.open_group(tmp_path / "d.zarr", mode="w", zarr_format=3)
    with pytest.raises(ValueError, match="dimension names"):
        create_array(g, "x", dims=(S.RUN, S.EPOCH), shape=(3,), dtype="int64")


def test_every_written_codec_is_one_the_readers_accept():
    from scorebank.stores.location import ALLOWED_CODECS

    assert {c["name"] for chain in S.CODECS.values() for c in chain} <= ALLOWED_CODECS


def test_a_new_store_declares_its_arrays_as_the_first_release_did(tmp_path):
    """Everything but the chunk layout (export re-chunks) of every format-1 array create_store
    writes equals the format-1 archive's metadata: data type, fill value, codecs, dimensions,
    attributes."""
    from scorebank.stores.create import create_store

    arrays = _archive_arrays()
    create_store(tmp_path / "new.zarr", n_epochs=3, labels=np.zeros(150, dtype=np.int64),
                 true_labels=np.zeros(150, dtype=np.int64), original_index=np.arange(150), seeds=(0, 1),
                 features=frozenset(S.FEATURES), attrs={})
    keys = ("data_type", "fill_value", "codecs", "dimension_names", "attributes", "shape")
    written = {p.parent.name for p in (tmp_path / "new.zarr").glob("*/zarr.json")}
    first = {name for name in arrays if "/" not in name}
    assert written - first == {v.name for v in S.VARIABLES if v.since > 1}  # added by later formats
    for name in sorted(first):
        meta = json.loads((tmp_path / "new.zarr" / name / "zarr.json").read_text())
        assert {k: meta[k] for k in keys} == {k: arrays[name][0][k] for k in keys}, name
