"""Score archives: round trip, layout, import verification, and refusal of malicious archives."""

from __future__ import annotations

import hashlib
import json
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from scorebank.stores import schema as S
from scorebank.stores.archive import (MANIFEST, ArchiveChecksumError, ArchiveError, ArchiveLimits,
                                      UnsafeArchiveError, archive_chunks, export_archive, import_archive,
                                      open_archive)
from scorebank.stores.errors import InvalidArgumentError, StoreExistsError
from scorebank.stores.location import UnsafeStoreError, open_scores

SEEDS = (0, 1)


def _config(**overrides):
    from scorebank.pipeline.config import resolve_config

    fields = dict(dataset="digits", limit=120, model="mlp", width=8, epochs=2, batch_size=32)
    fields.update(overrides)
    return resolve_config(**fields)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from scorebank.pipeline.scoring import score

    path = tmp_path_factory.mktemp("archive") / "scores.zarr"
    score(_config(), SEEDS, path, device="cpu")
    return path


@pytest.fixture(scope="module")
def archive(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "lab-a.scorebank.zip"
    export_archive(store, out, creator="Lab A", license="CC-BY-4.0")
    return out


def assert_same_values(a: xr.Dataset, b: xr.Dataset) -> None:
    assert sorted(a.variables) == sorted(b.variables)
    for name in a.variables:
        x, y = a[name].values, b[name].values
        assert x.dtype == y.dtype, name
        assert x.shape == y.shape, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------------------ round trip
def test_round_trip_plain_xarray_zipstore_and_open_scores(store, archive):
    original = xr.open_zarr(store)
    with_zipstore = xr.open_zarr(zarr.storage.ZipStore(archive, mode="r"))
    assert_same_values(original, with_zipstore)
    assert_same_values(original, open_scores(archive))
    assert open_scores(archive).attrs == original.attrs


def test_archive_is_one_zip_of_stored_members_with_a_manifest(store, archive):
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        manifest = json.loads(zf.read(MANIFEST))
        assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
        for name, entry in manifest["members"].items():
            data = zf.read(name)
            assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert sorted(manifest["members"]) == sorted(n for n in names if n != MANIFEST)
    assert not any(n.startswith(S.CHECKPOINT_DIR) or n == S.LOCK_FILE for n in names)
    assert manifest["format"] == "scorebank-archive" and manifest["format_version"] == 1
    assert (manifest["creator"], manifest["license"]) == ("Lab A", "CC-BY-4.0")
    attrs = json.loads((store / "zarr.json").read_text())["attributes"]
    assert manifest["dataset"] == "digits"
    assert manifest["dataset_fingerprint"] == attrs[S.ATTR_FINGERPRINT]
    assert manifest["n_examples"] == 120 and manifest["epochs"] == [0, 1, 2]
    assert [(r["run"], r["seed"], r["status"], r["last_completed_epoch"]) for r in manifest["runs"]] == [
        (0, 0, "complete", 2), (1, 1, "complete", 2)]
    assert manifest["runs"][0]["config_hash"] == _config().identity_hash()
    assert manifest["recorded"]["record_epochs"] == [0, 1, 2]
    assert manifest["recorded"]["variables"] == [v.name for v in S.variables(frozenset())]
    assert manifest["checkpoints"] == []
    assert manifest["layout"]["margin"] == [1, 3, 120]


def test_read_optimised_chunking():
    # CIFAR-10, 20 runs, 201 epochs: balanced chunks, 7 per run for either access pattern
    assert archive_chunks((S.RUN, S.EPOCH, S.EXAMPLE), (20, 201, 50_000), 4, (1, 1, 50_000)) == (1, 32, 8192)
    assert archive_chunks((S.RUN, S.EPOCH), (20, 201), 4, (1, 201)) == (20, 201)
    assert archive_chunks((S.EXAMPLE,), (50_000,), 8, (50_000,)) == (50_000,)


def test_one_example_trajectory_touches_one_object_per_run_in_the_archive(store, archive, counting_store):
    counted = {}
    for label, inner in (("store", zarr.storage.LocalStore(store, read_only=True)),
                         ("archive", zarr.storage.ZipStore(archive, mode="r"))):
        wrapper = counting_store(inner)
        ds = xr.open_zarr(wrapper)
        wrapper.keys.clear()
        ds[S.MARGIN].isel(example=17).values
        counted[label] = sorted(k for k in wrapper.keys if k.startswith("margin/c/"))
    assert counted["store"] == [f"margin/c/{r}/{e}/0" for r in range(2) for e in range(3)]
    assert counted["archive"] == ["margin/c/0/0/0", "margin/c/1/0/0"]


# ------------------------------------------------------------------------------ export safety
def test_export_refuses_bad_names_and_existing_output(store, tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"must end with \.zip"):
        export_archive(store, tmp_path / "scores.tar")
    existing = tmp_path / "other.zip"
    existing.write_bytes(b"someone else's file")
    with pytest.raises(StoreExistsError, match="already exists"):
        export_archive(store, existing)
    with pytest.raises(StoreExistsError, match="not a scorebank archive"):
        export_archive(store, existing, overwrite=True)
    assert existing.read_bytes() == b"someone else's file"


def test_export_never_leaves_a_half_written_file(store, tmp_path):
    calls = []

    def interrupt(stage, done, total):
        calls.append((stage, done, total))
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_archive(store, tmp_path / "out.scorebank.zip", progress=interrupt)
    assert listing(tmp_path) == []
    assert calls[-1][:2] == ("exporting", 5) and calls[-1][2] > 5


def test_checkpoints_only_on_request_and_restored_by_import(store, tmp_path):
    import torch

    out = tmp_path / "with-ckpt.scorebank.zip"
    export_archive(store, out, include_checkpoints=True)
    manifest = open_archive(out).manifest
    assert manifest["checkpoints"] == ["checkpoints/run-0.pt", "checkpoints/run-1.pt"]
    dest = import_archive(out, tmp_path / "restored.zarr")
    for seed in SEEDS:
        restored = dest / S.CHECKPOINT_DIR / f"run-{seed}.pt"
        assert restored.read_bytes() == (store / S.CHECKPOINT_DIR / f"run-{seed}.pt").read_bytes()
        state = torch.load(restored, map_location="cpu", weights_only=True)
        assert isinstance(state, dict) and state


# ------------------------------------------------------------------------------ import
def test_import_gives_an_equal_writable_store_that_can_be_extended(store, archive, tmp_path):
    from scorebank.pipeline.scoring import score

    dest = tmp_path / "imported.zarr"
    import_archive(archive, dest)
    assert_same_values(xr.open_zarr(store), xr.open_zarr(dest))
    meta = json.loads((dest / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    assert meta[S.MARGIN]["chunk_grid"]["configuration"]["chunk_shape"] == [1, 1, 120]
    assert meta[S.COMPLETED]["chunk_grid"]["configuration"]["chunk_shape"] == [1, 3]
    score(_config(), (2,), dest, device="cpu")
    extended = open_scores(dest)
    assert extended[S.RUN].values.tolist() == [0, 1, 2]
    assert bool(extended[S.COMPLETED].sel(run=2).all())
    assert_same_values(xr.open_zarr(store), extended.sel(run=[0, 1]))


def test_import_into_an_empty_directory_but_never_over_content(archive, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    import_archive(archive, empty)
    assert (empty / "zarr.json").is_file()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(StoreExistsError, match="not an empty directory"):
        import_archive(archive, busy)
    assert listing(busy) == ["notes.txt"] and (busy / "notes.txt").read_text() == "keep me"


# ------------------------------------------------------------------------------ malicious archives
def _members(archive: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(archive) as zf:
        return {i.filename: zf.read(i.filename) for i in zf.infolist()}


def _write_zip(path: Path, entries: list[tuple], *, manifest_from: dict[str, bytes] | None = None) -> Path:
    """Write ``entries`` = (name, data[, compress_type[, unix_mode]]) in order; the manifest
    (when ``manifest_from`` is given) lists the digests of ``manifest_from``, as an
    attacker who also rewrote the manifest would."""
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as zf:
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name" is what one case wants
        for entry in entries:
            name, data = entry[0], entry[1]
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = entry[2] if len(entry) > 2 else zipfile.ZIP_STORED
            info.external_attr = (entry[3] if len(entry) > 3 else stat.S_IFREG | 0o644) << 16
            info.create_system = 3
            if name == MANIFEST and manifest_from is not None:
                doc = json.loads(data)
                doc["members"] = {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                                  for n, d in manifest_from.items() if n != MANIFEST}
                data = json.dumps(doc).encode()
            zf.writestr(info, data)
    return path


def _rebuilt(archive: Path, path: Path, *, add=(), replace=None, relist=True) -> Path:
    members = _members(archive)
    if replace:
        members.update(replace)
    entries = [(n, d) for n, d in members.items() if n != MANIFEST] + list(add) + [(MANIFEST, members[MANIFEST])]
    listed = dict(members)
    for entry in add:
        listed[entry[0]] = entry[1]
    return _write_zip(path, entries, manifest_from=listed if relist else None)


def _patch_central(path: Path, name: str, *, file_size: int | None = None, offset_of: str | None = None) -> None:
    """Overwrite fields of ``name``'s central-directory record in place."""
    raw = bytearray(path.read_bytes())
    records = {}
    pos = raw.find(b"PK\x01\x02")
    while pos != -1:
        n_name = struct.unpack_from("<H", raw, pos + 28)[0]
        records[bytes(raw[pos + 46:pos + 46 + n_name]).decode()] = pos
        pos = raw.find(b"PK\x01\x02", pos + 46)
    at = records[name]
    if file_size is not None:
        struct.pack_into("<I", raw, at + 24, file_size)
    if offset_of is not None:
        other = struct.unpack_from("<I", raw, records[offset_of] + 42)[0]
        struct.pack_into("<I", raw, at + 42, other)
    path.write_bytes(bytes(raw))


def _repetitive(n: int) -> bytes:
    rng = np.random.default_rng(0)
    return bytes(rng.choice(np.frombuffer(b"ACGT", dtype=np.uint8), size=n))


def _evil_archives(archive: Path, folder: Path) -> dict[str, tuple[Path, type, str | None, str, dict]]:
    """name -> (archive, error class, bad member, message fragment, limits overrides)."""
    cases = {}
    cases["zip slip"] = (_rebuilt(archive, folder / "slip.zip", add=[("../outside.txt", b"pwned")]),
                         UnsafeArchiveError, "../outside.txt", "'..' component", {})
    cases["nested zip slip"] = (_rebuilt(archive, folder / "slip2.zip",
                                         add=[("checkpoints/../../outside.txt", b"pwned")]),
                                UnsafeArchiveError, "checkpoints/../../outside.txt", "'..' component", {})
    cases["absolute path"] = (_rebuilt(archive, folder / "abs.zip", add=[("/tmp/outside.txt", b"pwned")]),
                              UnsafeArchiveError, "/tmp/outside.txt", "absolute path", {})
    cases["backslash"] = (_rebuilt(archive, folder / "win.zip", add=[("..\\outside.txt", b"pwned")]),
                          UnsafeArchiveError, "..\\outside.txt", "backslash", {})
    cases["symlink"] = (_rebuilt(archive, folder / "link.zip",
                                 add=[("checkpoints/run-0.pt", b"/etc/passwd", zipfile.ZIP_STORED,
                                       stat.S_IFLNK | 0o777)]),
                        UnsafeArchiveError, "checkpoints/run-0.pt", "symbolic link", {})
    cases["duplicate name"] = (_rebuilt(archive, folder / "dup.zip", add=[("margin/c/0/0/0", b"evil")]),
                               UnsafeArchiveError, "margin/c/0/0/0", "appears twice", {})
    cases["oversized member"] = (_rebuilt(archive, folder / "big.zip",
                                          add=[("checkpoints/run-9.pt", b"\x00" * 5000)]),
                                 UnsafeArchiveError, "checkpoints/run-9.pt", "at most 4096",
                                 {"max_member_bytes": 4096})
    cases["zip bomb ratio"] = (_rebuilt(archive, folder / "bomb.zip",
                                        add=[("checkpoints/run-7.pt", b"\x00" * (4 << 20), zipfile.ZIP_DEFLATED)]),
                               UnsafeArchiveError, "checkpoints/run-7.pt", "zip bomb", {})
    payload = _repetitive(40_000)  # compresses about 4:1, a plausible ratio
    members = _members(archive)
    doc = json.loads(members[MANIFEST])
    doc["members"]["checkpoints/run-8.pt"] = {"size": 1000, "sha256": hashlib.sha256(payload).hexdigest()}
    lying = _write_zip(folder / "lying.zip", [(n, d) for n, d in members.items() if n != MANIFEST]
                       + [("checkpoints/run-8.pt", payload, zipfile.ZIP_DEFLATED), (MANIFEST, json.dumps(doc).encode())])
    _patch_central(lying, "checkpoints/run-8.pt", file_size=1000)
    cases["declared size lie"] = (lying, UnsafeArchiveError, "checkpoints/run-8.pt",
                                  "expands beyond its declared size", {})
    stored_lie = _rebuilt(archive, folder / "stored-lie.zip")
    _patch_central(stored_lie, "margin/c/0/0/0", file_size=10)
    cases["stored size lie"] = (stored_lie, UnsafeArchiveError, "margin/c/0/0/0", "sizes of a stored member", {})
    overlap = _rebuilt(archive, folder / "overlap.zip")
    _patch_central(overlap, "margin/c/1/0/0", offset_of="margin/c/0/0/0")
    cases["overlapping members"] = (overlap, UnsafeArchiveError, None, "overlap", {})
    tampered = bytearray(members["margin/c/0/0/0"])
    tampered[-1] ^= 0xFF
    cases["tampered chunk"] = (_rebuilt(archive, folder / "tampered.zip", replace={"margin/c/0/0/0": bytes(tampered)},
                                        relist=False),
                               ArchiveChecksumError, "margin/c/0/0/0", "manifest says", {})
    crc = _rebuilt(archive, folder / "crc.zip")
    with zipfile.ZipFile(crc) as zf:
        info = zf.getinfo("label/c/0")
    raw = bytearray(crc.read_bytes())
    raw[info.header_offset + 30 + len("label/c/0") + 3] ^= 0xFF
    crc.write_bytes(bytes(raw))
    cases["corrupt bytes (CRC)"] = (crc, ArchiveChecksumError, "label/c/0", "CRC-32", {})
    cases["unlisted member"] = (_rebuilt(archive, folder / "unlisted.zip", add=[("extra.bin", b"x")], relist=False),
                                ArchiveError, "extra.bin", "not listed in the manifest", {})
    cases["no manifest"] = (_write_zip(folder / "plain.zip", [(n, d) for n, d in members.items() if n != MANIFEST]),
                            ArchiveError, MANIFEST, "not a scorebank archive", {})
    root = json.loads(members["zarr.json"])
    root["consolidated_metadata"]["metadata"][S.MARGIN]["codecs"].insert(0, {"name": "numcodecs.pickle"})
    cases["pickle codec"] = (_rebuilt(archive, folder / "pickle.zip",
                                      replace={"zarr.json": json.dumps(root).encode()}),
                             UnsafeStoreError, None, "'numcodecs.pickle'", {})
    junk = folder / "junk.zip"
    junk.write_bytes(b"PK\x03\x04 this is not really a zip archive")
    cases["not a zip"] = (junk, ArchiveError, None, "not a readable zip archive", {})
    return cases


@pytest.fixture(scope="module")
def evil(archive, tmp_path_factory):
    return _evil_archives(archive, tmp_path_factory.mktemp("evil"))


CASES = ["zip slip", "nested zip slip", "absolute path", "backslash", "symlink", "duplicate name",
         "oversized member", "zip bomb ratio", "declared size lie", "stored size lie", "overlapping members",
         "tampered chunk", "corrupt bytes (CRC)", "unlisted member", "no manifest", "pickle codec", "not a zip"]


@pytest.mark.parametrize("case", CASES)
def test_import_refuses_malicious_archive_and_writes_nothing(case, evil, tmp_path):
    path, error, member, fragment, limits = evil[case]
    before = listing(tmp_path)
    with pytest.raises(error) as exc:
        import_archive(path, tmp_path / "store.zarr", limits=ArchiveLimits(**limits))
    assert fragment in str(exc.value)
    if member is not None:
        assert exc.value.member == member
        assert repr(member) in str(exc.value)
    assert listing(tmp_path) == before
    assert not (tmp_path.parent / "outside.txt").exists() and not Path("/tmp/outside.txt").exists()


OPEN_REFUSED = ["zip slip", "absolute path", "symlink", "duplicate name", "zip bomb ratio", "stored size lie",
                "overlapping members", "unlisted member", "no manifest", "pickle codec", "not a zip"]


@pytest.mark.parametrize("case", OPEN_REFUSED)
def test_open_scores_refuses_malicious_archive(case, evil):
    path, error, member, fragment, _ = evil[case]
    with pytest.raises(error) as exc:
        open_scores(path)
    assert fragment in str(exc.value)


def test_open_scores_on_a_tampered_archive_fails_when_the_bad_chunk_is_read(evil, store):
    path = evil["tampered chunk"][0]
    ds = open_scores(path)  # the member table and metadata are fine
    np.testing.assert_array_equal(ds[S.LABEL].values, xr.open_zarr(store)[S.LABEL].values)
    np.testing.assert_array_equal(ds[S.MARGIN].sel(run=1).values, xr.open_zarr(store)[S.MARGIN].sel(run=1).values)
    with pytest.raises(ArchiveChecksumError) as exc:
        ds[S.MARGIN].sel(run=0).values
    assert exc.value.member == "margin/c/0/0/0"


def test_verify_names_the_first_bad_member(evil, archive):
    assert open_archive(archive).verify()[0] == len(_members(archive)) - 1
    with pytest.raises(ArchiveChecksumError) as exc:
        open_archive(evil["tampered chunk"][0]).verify()
    assert exc.value.member == "margin/c/0/0/0"


def test_archive_members_are_never_used_as_paths(archive, tmp_path):
    """A well-formed archive with an extra, listed, harmless member imports without
    writing that member anywhere: only Zarr data and checkpoints/run-<int>.pt are read."""
    extra = _rebuilt(archive, tmp_path / "extra.zip", add=[("notes/readme.txt", b"hello")])
    dest = import_archive(extra, tmp_path / "store.zarr")
    assert listing(tmp_path) == sorted(["extra.zip", "store.zarr"] + [f"store.zarr/{p}" for p in listing(dest)])
    assert not any("readme" in p or "notes" in p for p in listing(tmp_path))
    assert (dest / "zarr.json").is_file()


def test_export_and_inspect_report_the_same_size_the_bytes_of_the_file(tmp_path):
    """Issue 11: export and inspect reported different sizes (file vs sum of members)."""
    from scorebank.stores.archive import ArchiveStore
    from scorebank.stores.create import create_store

    store = tmp_path / "s.zarr"
    create_store(store, n_epochs=1, labels=np.arange(10) % 2, true_labels=np.arange(10) % 2,
                 original_index=np.arange(10), seeds=(3, 4), features=frozenset(), attrs={})
    result = export_archive(store, tmp_path / "s.scorebank.zip")
    described = ArchiveStore(result.path).describe()
    assert result.bytes == described["file_bytes"] == (tmp_path / "s.scorebank.zip").stat().st_size
    assert result.members == described["n_members"] == len(zipfile.ZipFile(result.path).namelist())
    assert described["member_bytes"] < described["file_bytes"]  # zip headers and the manifest come on top
    assert "members" not in described and described["format"] == "scorebank-archive"
