"""Untrusted stores and archives: decompression bombs in chunks, malformed metadata and
attributes, undecodable chunks.  Each test builds the malicious input and asserts the
specific refusal (a scorebank error naming the bad array/member/key) and, for import,
merge and export, that nothing was written."""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from scorebank.stores import schema as S
from scorebank.stores.archive import ArchiveError, export_archive, import_archive
from scorebank.stores.errors import ScorebankError, StoreNotFoundError
from scorebank.stores.location import (ALLOWED_CODECS, CorruptStoreError, NewerFormatError, UnsafeStoreError,
                                       open_group, open_scores, zstd_content_size)
from scorebank.stores.merge import merge_stores
from scorebank.stores.summary import summarize

N = 120  # examples: label chunks are 960 bytes (int64)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A small, complete store made by the writer itself (no training)."""
    from scorebank.stores.zarrstore import StoreWriter, create_store

    path = tmp_path_factory.mktemp("untrusted") / "good.zarr"
    labels = np.arange(N) % 3
    create_store(path, n_epochs=2, labels=labels, true_labels=labels, original_index=np.arange(N),
                 seeds=(0, 1), features=frozenset(),
                 attrs={S.ATTR_CONFIG: json.dumps({"record_epochs": [0, 1, 2]}), S.ATTR_DATASET: "toy",
                        S.ATTR_FINGERPRINT: "toy-fp", S.ATTR_CLASS_NAMES: ["a", "b", "c"]})
    rng = np.random.default_rng(0)
    with StoreWriter(path) as w:
        for seed in (0, 1):
            for epoch in range(3):
                w.write_epoch(seed, epoch, {S.MARGIN: rng.normal(size=N).astype(np.float32)},
                              {S.TRAIN_ACCURACY: 0.5, S.TEST_ACCURACY: 0.25, S.RECORDED: True})
            w.set_run_status(seed, S.RUN_COMPLETE)
    return path


@pytest.fixture(scope="module")
def archive(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("untrusted-zip") / "good.scorebank.zip"
    export_archive(store, out)
    return out


@pytest.fixture(scope="module")
def merged(store, tmp_path_factory) -> Path:
    """A merged store: it has string (vlen-utf8) coordinates."""
    out = tmp_path_factory.mktemp("untrusted-merged") / "merged.zarr"
    merge_stores([store, store], out, allow_duplicates=True)
    return out


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def copy(store: Path, folder: Path, name: str = "evil.zarr") -> Path:
    return Path(shutil.copytree(store, folder / name))


def edit_root(path: Path, change) -> Path:
    """Apply ``change(doc)`` to the store's root zarr.json (what readers trust)."""
    doc = json.loads((path / "zarr.json").read_text())
    change(doc)
    (path / "zarr.json").write_text(json.dumps(doc))
    return path


def arrays(doc: dict) -> dict:
    return doc["consolidated_metadata"]["metadata"]


def zip_root(archive: Path) -> dict:
    with zipfile.ZipFile(archive) as zf:
        return json.loads(zf.read("zarr.json"))


# ------------------------------------------------------------------------------ zstd frames
def rle_frame(size: int, *, content_size: int | None = None, byte: int = 0) -> bytes:
    """A valid zstd frame of RLE blocks that decompresses to ``size`` bytes in about
    ``size / 32768`` bytes; the header states ``content_size`` (None: no size, as a
    streaming compressor writes it)."""
    out = bytearray(struct.pack("<I", 0xFD2FB528))
    if content_size is None:
        out += bytes([0x00, 0x38])  # no content size, 128 KiB window
    else:
        out += bytes([0xE0]) + struct.pack("<Q", content_size)  # single segment, 8-byte content size
    left = size
    while left:
        n = min(left, 128 << 10)
        left -= n
        out += struct.pack("<I", (1 if left == 0 else 0) | (1 << 1) | (n << 3))[:3] + bytes([byte])
    return bytes(out)


def test_rle_frames_are_what_zarr_would_decode():
    from numcodecs.zstd import Zstd

    bomb = rle_frame(4 << 20)
    assert len(bomb) < 1000 and len(Zstd().decode(bomb)) == 4 << 20  # the unbounded case refused below
    assert zstd_content_size(bomb) is None
    assert zstd_content_size(rle_frame(960, content_size=960)) == 960
    written = Zstd().encode(np.arange(N, dtype=np.int64).tobytes())
    assert zstd_content_size(written) == 960  # zarr's own frames state their size


# ------------------------------------------------------------------------------ 1. codecs and bombs
def test_only_the_codecs_scorebank_writes_are_accepted():
    assert ALLOWED_CODECS == {"bytes", "zstd", "vlen-utf8"}


@pytest.mark.parametrize("codecs, fragment", [
    ([{"name": "bytes"}, {"name": "gzip", "configuration": {"level": 5}}], "uses codec 'gzip'"),
    ([{"name": "bytes"}, {"name": "blosc", "configuration": {"cname": "zstd"}}], "uses codec 'blosc'"),
    ([{"name": "bytes"}, {"name": "crc32c"}], "uses codec 'crc32c'"),
    ([{"name": "transpose", "configuration": {"order": [0]}}, {"name": "bytes"}], "uses codec 'transpose'"),
    ([{"name": "sharding_indexed", "configuration": {"chunk_shape": [1], "codecs": [{"name": "bytes"}],
                                                     "index_codecs": [{"name": "bytes"}]}}],
     "uses codec 'sharding_indexed'"),
    ([{"name": "zstd"}, {"name": "bytes"}], "codec chain ['zstd', 'bytes']"),
    ([{"name": "bytes"}, {"name": "zstd"}, {"name": "zstd"}], "codec chain ['bytes', 'zstd', 'zstd']"),
    ([{"name": "vlen-utf8"}, {"name": "zstd"}], "codec chain ['vlen-utf8', 'zstd']"),
    ([{"name": "bytes", "configuration": {"endian": "big"}}], "bytes codec configuration {'endian': 'big'}"),
])
def test_codecs_scorebank_does_not_write_are_refused(store, tmp_path, codecs, fragment):
    path = edit_root(copy(store, tmp_path), lambda d: arrays(d)[S.LABEL].update(codecs=codecs))
    with pytest.raises(UnsafeStoreError) as exc:
        open_scores(path)
    assert fragment in str(exc.value) and "'label'" in str(exc.value)


@pytest.mark.parametrize("bad", ["no size", "size too large", "size too small", "not zstd"])
def test_zstd_chunk_of_a_directory_that_could_expand_is_refused_when_read(store, tmp_path, bad):
    frames = {"no size": rle_frame(4 << 20), "size too large": rle_frame(1 << 20, content_size=1 << 40),
              "size too small": rle_frame(8, content_size=8), "not zstd": b"\x1f\x8b" + bytes(40)}
    fragments = {"no size": "does not state its decompressed size", "size too large": "decompresses to 1099511627776",
                 "size too small": "decompresses to 8 bytes", "not zstd": "not a zstd frame"}
    path = copy(store, tmp_path)
    (path / S.LABEL / "c" / "0").write_bytes(frames[bad])
    ds = open_scores(path)  # metadata is fine; the chunk is checked when read
    with pytest.raises(UnsafeStoreError) as exc:
        ds[S.LABEL].values
    assert fragments[bad] in str(exc.value)
    assert "'label/c/0'" in str(exc.value) and "'label'" in str(exc.value)
    np.testing.assert_array_equal(ds[S.TRUE_LABEL].values, np.arange(N) % 3)  # the others still read


def test_uncompressed_chunk_must_have_the_declared_size(store, tmp_path):
    path = edit_root(copy(store, tmp_path), lambda d: arrays(d)[S.LABEL].update(codecs=[{"name": "bytes"}]))
    (path / S.LABEL / "c" / "0").write_bytes(bytes(961))
    with pytest.raises(UnsafeStoreError, match=r"chunk 'label/c/0' of array 'label' is 961 bytes"):
        open_scores(path)[S.LABEL].values
    (path / S.LABEL / "c" / "0").write_bytes(np.arange(N, dtype=np.int64).tobytes())
    assert open_scores(path)[S.LABEL].values.tolist() == list(range(N))


def test_string_chunk_claiming_billions_of_values_is_refused(merged, tmp_path):
    from numcodecs.zstd import Zstd

    path = copy(merged, tmp_path)
    # vlen-utf8 header: item count, then (length, bytes) per item; the decoder allocates
    # `count` objects before reading any
    (path / S.SOURCE / "c" / "0").write_bytes(Zstd().encode(struct.pack("<I", 0x7FFFFFFF) + bytes(8)))
    ds = open_scores(path)
    with pytest.raises(UnsafeStoreError, match=r"chunk 'source/c/0' of array 'source' says it holds 2147483647 strings"):
        ds[S.SOURCE].values
    with pytest.raises(UnsafeStoreError, match="'source/c/0'"):
        summarize(ds)


def test_merged_store_strings_still_read(merged):
    summary = summarize(open_scores(merged))
    assert [r.source for r in summary.runs] == ["good.zarr", "good.zarr", "good.zarr#2", "good.zarr#2"]


def test_archive_chunk_bomb_is_refused_by_open_and_import_writes_nothing(rezip, archive, tmp_path):
    evil = rezip(archive, tmp_path / "bomb.scorebank.zip", {"label/c/0": rle_frame(8 << 20)})
    ds = open_scores(evil)
    with pytest.raises(UnsafeStoreError, match=r"'label/c/0' of array 'label' does not state its decompressed size"):
        ds[S.LABEL].values
    before = listing(tmp_path)
    with pytest.raises(UnsafeStoreError, match=r"'label/c/0'"):
        import_archive(evil, tmp_path / "imported.zarr")
    assert listing(tmp_path) == before


def test_archive_member_too_large_for_its_chunk_is_refused_before_reading(rezip, archive, tmp_path):
    evil = rezip(archive, tmp_path / "big.scorebank.zip", {"label/c/0": rle_frame(960, content_size=960) + bytes(5000)})
    with pytest.raises(UnsafeStoreError, match=r"chunk 'label/c/0' of array 'label' is 5\d\d\d bytes"):
        open_scores(evil)[S.LABEL].values


def test_archive_store_used_directly_checks_chunks_too(rezip, archive, tmp_path):
    import zarr

    from scorebank.stores.archive import ArchiveStore

    evil = rezip(archive, tmp_path / "bomb.scorebank.zip", {"label/c/0": rle_frame(8 << 20)})
    group = zarr.open_group(ArchiveStore(evil), mode="r", zarr_format=3, use_consolidated=True)
    with pytest.raises(UnsafeStoreError, match="does not state its decompressed size"):
        group[S.LABEL][:]


def test_merge_and_export_refuse_a_bombed_source_and_write_nothing(store, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    path = copy(store, src)
    (path / S.MARGIN / "c" / "0" / "1" / "0").write_bytes(rle_frame(4 << 20))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnsafeStoreError, match=r"'margin/c/0/1/0'"):
        merge_stores([store, path], out / "merged.zarr", allow_duplicates=True)
    with pytest.raises(UnsafeStoreError, match=r"'margin/c/0/1/0'"):
        export_archive(path, out / "evil.scorebank.zip")
    assert listing(out) == []


def test_guarded_stores_pickle_for_dask_workers(store, archive):
    for location in (store, archive):
        ds = open_scores(location)
        again = pickle.loads(pickle.dumps(ds[S.MARGIN].data))
        np.testing.assert_array_equal(np.asarray(again), ds[S.MARGIN].values)


# ------------------------------------------------------------------------------ 2a. consolidated keys
@pytest.mark.parametrize("key, fragment", [("../evil", "'..'"), ("/evil", "is absolute"),
                                           ("a\\evil", "backslash"), ("label/evil", "not a group"),
                                           ("x//y", "empty")])
def test_import_refuses_bad_consolidated_metadata_keys_and_writes_nothing(rezip, archive, tmp_path, key, fragment):
    doc = zip_root(archive)
    arrays(doc)[key] = dict(arrays(doc)[S.LABEL])
    evil = rezip(archive, tmp_path / "keys.scorebank.zip", {"zarr.json": json.dumps(doc).encode()})
    before = listing(tmp_path)
    with pytest.raises(UnsafeStoreError) as exc:
        import_archive(evil, tmp_path / "imported.zarr")
    assert fragment in str(exc.value) and repr(key) in str(exc.value)
    assert listing(tmp_path) == before
    with pytest.raises(UnsafeStoreError):
        open_scores(evil)


def test_import_wraps_zarr_errors(rezip, archive, tmp_path):
    doc = zip_root(archive)
    arrays(doc)[S.LABEL]["fill_value"] = "not a number"
    evil = rezip(archive, tmp_path / "fill.scorebank.zip", {"zarr.json": json.dumps(doc).encode()})
    before = listing(tmp_path)
    with pytest.raises(ArchiveError, match=r"could not be opened as a Zarr store"):
        import_archive(evil, tmp_path / "imported.zarr")
    assert listing(tmp_path) == before


def test_nested_consolidated_metadata_is_refused(store, tmp_path):
    def change(doc):
        arrays(doc)["extra"] = {"zarr_format": 3, "node_type": "group", "attributes": {},
                                "consolidated_metadata": {"kind": "inline", "metadata": {"x": arrays(doc)[S.LABEL]}}}

    with pytest.raises(UnsafeStoreError, match=r"group 'extra' carries its own consolidated metadata"):
        open_scores(edit_root(copy(store, tmp_path), change))


# ------------------------------------------------------------------------------ 2b. schema and attributes
def _drop(name):
    return lambda d: arrays(d).pop(name)


def _set_attr(name, value):
    return lambda d: d["attributes"].__setitem__(name, value)


def _set_meta(name, **fields):
    return lambda d: arrays(d)[name].update(fields)


def _resize(doc, **sizes):
    """Every root array at the given dimension lengths (consistently)."""
    for name, meta in arrays(doc).items():
        if "/" not in name and meta["node_type"] == "array":
            meta["shape"] = [sizes.get(dim, n) for dim, n in zip(meta["dimension_names"], meta["shape"])]


REFUSED = {
    "runs is a list": (_set_attr(S.ATTR_RUNS, ["0", "1"]), UnsafeStoreError, "attribute 'runs' is ['0', '1']"),
    "run entry not an object": (_set_attr(S.ATTR_RUNS, {"0": "complete"}), UnsafeStoreError, "attribute \"runs['0']\""),
    "config not JSON": (_set_attr(S.ATTR_CONFIG, "{not json"), UnsafeStoreError, "attribute 'config' is '{not json'"),
    "config not an object": (_set_attr(S.ATTR_CONFIG, "[1, 2]"), UnsafeStoreError, "attribute 'config' is '[1, 2]'"),
    "config a dict": (_set_attr(S.ATTR_CONFIG, {"a": 1}), UnsafeStoreError, "attribute 'config' is {'a': 1}"),
    "record_epochs not a list": (_set_attr(S.ATTR_CONFIG, json.dumps({"record_epochs": 3})), UnsafeStoreError,
                                 "attribute 'config.record_epochs' is 3"),
    "unknown feature": (_set_attr(S.ATTR_FEATURES, ["pickle"]), UnsafeStoreError, "attribute 'features' is ['pickle']"),
    "fingerprint not a string": (_set_attr(S.ATTR_FINGERPRINT, 7), UnsafeStoreError,
                                 "attribute 'dataset_fingerprint' is 7"),
    "newer format": (_set_attr(S.ATTR_FORMAT, 99), NewerFormatError,
                     f"written by scorebank format 99; this version reads formats 1..{S.FORMAT_VERSION}; "
                     "upgrade scorebank"),
    "writer format older than reader format": (_set_attr(S.ATTR_WRITER_FORMAT, 0), UnsafeStoreError,
                                               "attribute 'scorebank_writer_format' is 0"),
    "format not an integer": (_set_attr(S.ATTR_FORMAT, "1"), UnsafeStoreError,
                              "attribute 'scorebank_format' is '1'"),
    "dtype": (_set_meta(S.LABEL, data_type="float64", fill_value=0.0), UnsafeStoreError,
              "array 'label' has dimensions ('example',) and data type 'float64'"),
    "dims": (_set_meta(S.COMPLETED, dimension_names=["epoch", "run"]), UnsafeStoreError,
             "array 'completed' has dimensions ('epoch', 'run')"),
    "no dims": (_set_meta(S.MARGIN, dimension_names=None), UnsafeStoreError, "array 'margin' has dimension names None"),
    "huge epochs": (_set_meta(S.TRAIN_ACCURACY, shape=[2, 10**12]), UnsafeStoreError,
                    "array 'train_accuracy' has shape [2, 1000000000000]: 1000000000000 along 'epoch'"),
    "inconsistent length": (_set_meta(S.TRUE_LABEL, shape=[121]), UnsafeStoreError, "121 along 'example'"),
    "too many cells": (lambda d: _resize(d, run=100_000, epoch=100_001), UnsafeStoreError,
                       "100000 runs x 100001 epochs"),
    "chunk key encoding": (_set_meta(S.LABEL, chunk_key_encoding={"name": "v2", "configuration": {"separator": "."}}),
                           UnsafeStoreError, "array 'label' has chunk key encoding"),
    "missing label": (_drop(S.LABEL), StoreNotFoundError, "lacks the array(s) ['label']"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_malformed_metadata_is_refused_when_opened(store, tmp_path, case):
    change, error, fragment = REFUSED[case]
    path = edit_root(copy(store, tmp_path), change)
    with pytest.raises(error) as exc:
        open_scores(path)
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)


def test_summary_refuses_a_store_without_what_it_reads(store, tmp_path):
    path = edit_root(copy(store, tmp_path), _drop(S.TRAIN_ACCURACY))
    ds = open_scores(path, complete=False)  # REQUIRED_ARRAYS are there
    with pytest.raises(StoreNotFoundError, match=r"lacks the array\(s\) \['train_accuracy'\]"):
        summarize(ds)


def test_merge_requires_every_schema_array_and_writes_nothing(store, tmp_path):
    path = edit_root(copy(store, tmp_path), _drop(S.EL2N))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StoreNotFoundError, match=r"lacks the array\(s\) \['el2n'\]"):
        merge_stores([store, path], out / "merged.zarr", allow_duplicates=True)
    assert listing(out) == []
    with pytest.raises(StoreNotFoundError, match=r"\['el2n'\]"):
        open_group(path, complete=True)
    assert open_group(path, complete=False)[0][S.LABEL].shape == (N,)  # REQUIRED_ARRAYS are there


def drop_array(path: Path, name: str) -> Path:
    """Remove array ``name`` from a store directory: its folder and its consolidated entry."""
    shutil.rmtree(path / name)
    return edit_root(path, _drop(name))


def test_a_store_missing_a_schema_array_is_refused_by_default(store, tmp_path):
    path = drop_array(copy(store, tmp_path), S.MARGIN)
    for opener in (open_scores, lambda p: open_group(p)):
        with pytest.raises(StoreNotFoundError) as exc:
            opener(path)
        assert "lacks the array(s) ['margin']" in str(exc.value) and "\n" not in str(exc.value)
    ds = open_scores(path, complete=False)  # asked for explicitly: only REQUIRED_ARRAYS
    assert S.MARGIN not in ds and ds[S.LABEL].values.tolist() == (np.arange(N) % 3).tolist()


@pytest.mark.parametrize("features", [(), (S.FEATURE_GRAND,), (S.FEATURE_LABEL_NOISE,),
                                      (S.FEATURE_GRAND, S.FEATURE_LABEL_NOISE)])
def test_complete_means_the_arrays_of_the_stores_features(tmp_path, features):
    from scorebank.stores.zarrstore import create_store

    path = tmp_path / "s.zarr"
    labels = np.arange(12) % 3
    create_store(path, n_epochs=1, labels=labels, true_labels=(labels + 1) % 3, original_index=np.arange(12),
                 seeds=(0,), features=frozenset(features), attrs={S.ATTR_DATASET: "toy"})
    ds = open_scores(path)  # stores without GraNd or label noise need not hold those arrays
    assert (S.GRAND in ds) == (S.FEATURE_GRAND in features)
    assert (S.PRISTINE_ACCURACY in ds) == (S.FEATURE_LABEL_NOISE in features)
    assert open_group(path)[0][S.LABEL].shape == (12,)
    for name in ((S.GRAND,) if S.FEATURE_GRAND in features else ()) + (
            (S.CORRUPT_ACCURACY,) if S.FEATURE_LABEL_NOISE in features else ()):
        broken = drop_array(Path(shutil.copytree(path, tmp_path / f"no-{name}.zarr")), name)
        with pytest.raises(StoreNotFoundError, match=rf"lacks the array\(s\) \[{name!r}\] every scorebank "
                                                     rf"store with the feature\(s\) "):
            open_scores(broken)
        assert open_scores(broken, complete=False)[S.LABEL].size == 12


def test_attributes_that_change_decoded_types_are_refused(store, tmp_path):
    path = edit_root(copy(store, tmp_path), lambda d: arrays(d)[S.EPOCH]["attributes"].update(
        units="days since 2000-01-01"))
    with pytest.raises(UnsafeStoreError, match=r"variable 'epoch' decodes to dimensions \('epoch',\) and data type "
                                               r"'datetime64"):
        open_scores(path)
    path = edit_root(copy(store, tmp_path, "scaled.zarr"), lambda d: arrays(d)[S.COMPLETED]["attributes"].update(
        scale_factor=2.0))
    with pytest.raises(UnsafeStoreError, match=r"variable 'completed' decodes to .* 'float"):
        open_scores(path)


def test_cli_info_reports_a_malformed_store_in_one_line(store, tmp_path):
    from typer.testing import CliRunner

    from scorebank.cli.main import app

    path = edit_root(copy(store, tmp_path), _set_attr(S.ATTR_RUNS, []))
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 1, result.output
    assert "attribute 'runs' is []" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------ 2c. undecodable chunks
def test_corrupt_chunk_is_a_scorebank_error_naming_the_array(store, tmp_path):
    path = copy(store, tmp_path)
    chunk = path / S.TRAIN_ACCURACY / "c" / "0" / "0"
    good = chunk.read_bytes()
    assert zstd_content_size(good) == 12  # three float32: the header is fine, the body is not
    chunk.write_bytes(good[:6] + b"\xff" * (len(good) - 6))
    with pytest.raises(CorruptStoreError, match=r"array 'train_accuracy' could not be read"):
        summarize(open_scores(path))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CorruptStoreError, match=r"array 'train_accuracy' could not be read"):
        export_archive(path, out / "x.scorebank.zip")
    with pytest.raises(ScorebankError, match=r"'train_accuracy'"):
        merge_stores([store, path], out / "merged.zarr", allow_duplicates=True)
    assert listing(out) == []


def test_well_formed_stores_still_open(store, archive, merged):
    for location in (store, archive, merged):
        summary = summarize(open_scores(location))
        assert summary.runs[0].status == S.RUN_COMPLETE and summary.runs[0].train_accuracy == 0.5
