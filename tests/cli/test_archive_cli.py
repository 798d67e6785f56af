"""``scorebank export | import | inspect | merge`` through typer's CliRunner."""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from scorebank.cli.main import app
from scorebank.stores import schema as S
from scorebank.stores.archive import MANIFEST
from scorebank.stores.location import open_scores


def _config(**overrides):
    from scorebank.pipeline.config import resolve_config

    fields = dict(dataset="digits", limit=120, model="mlp", width=8, epochs=2, batch_size=32)
    fields.update(overrides)
    return resolve_config(**fields)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    from scorebank.pipeline.scoring import score

    root = tmp_path_factory.mktemp("cli-archive")
    made = {}
    for name, config, seeds in (("a", _config(), (0, 1)), ("b", _config(), (2,)),
                                ("subset", _config(limit=100), (0,))):
        made[name] = root / f"{name}.zarr"
        score(config, seeds, made[name], device="cpu")
    return made


@pytest.fixture(scope="module")
def archive(stores, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli-exported") / "lab-a.scorebank.zip"
    result = run("export", str(stores["a"]), str(out), "--creator", "Lab A", "--license", "CC-BY-4.0", "-q")
    assert result.exit_code == 0, result.output
    return out


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_export_prints_the_archive_checksum_and_how_to_open_it(stores, tmp_path):
    out = tmp_path / "scores.scorebank.zip"
    result = run("export", str(stores["a"]), str(out), "--quiet")
    assert result.exit_code == 0, result.output
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert f"sha256 {digest}" in result.stdout.splitlines()
    assert f"xr.open_zarr(zarr.storage.ZipStore({str(out)!r}, mode=\"r\"))" in result.stdout
    assert "2 runs, 120 examples" in result.stdout


def test_export_shows_a_progress_bar_unless_quiet(stores, tmp_path):
    result = run("export", str(stores["a"]), str(tmp_path / "bar.scorebank.zip"))
    assert result.exit_code == 0, result.output
    assert "exporting" in result.stderr and re.search(r"\b(\d+)/\1\b", result.stderr), result.stderr  # done/total


def test_export_argument_errors_exit_2_and_failures_exit_1(stores, tmp_path):
    message = one_line_error(run("export", str(stores["a"]), str(tmp_path / "scores.tar")), 2)
    assert "'scores.scorebank.zip'" in message
    assert listing(tmp_path) == []
    taken = tmp_path / "taken.zip"
    taken.write_bytes(b"not mine")
    assert "already exists" in one_line_error(run("export", str(stores["a"]), str(taken)), 1)
    assert "no scorebank store" in one_line_error(run("export", str(tmp_path / "nope.zarr"), str(tmp_path / "x.zip")), 2)
    assert listing(tmp_path) == ["taken.zip"] and taken.read_bytes() == b"not mine"


def test_inspect_prints_metadata_and_runs(archive, stores):
    result = run("inspect", str(archive))
    assert result.exit_code == 0, result.output
    fingerprint = open_scores(stores["a"]).attrs[S.ATTR_FINGERPRINT]
    for fragment in ("creator  Lab A", "license  CC-BY-4.0", f"fingerprint  {fingerprint}",
                     "dataset  digits (120 examples)", "checked per member on read"):
        assert fragment in result.stdout, fragment
    rows = [re.match(r"\W*(\d+)\s+\W*complete\s", line) for line in result.stdout.splitlines()]
    assert [int(m.group(1)) for m in rows if m] == [0, 1]


def test_inspect_json_and_verify(archive, stores):
    result = run("inspect", str(archive), "--json", "--verify")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["verified"] is True
    assert doc["archive"]["creator"] == "Lab A"
    with zipfile.ZipFile(archive) as zf:
        assert doc["archive"]["n_members"] == len(zf.infolist())
    assert [r["seed"] for r in doc["summary"]["runs"]] == [0, 1]
    assert doc["summary"]["runs"][0]["test_accuracy"] == pytest.approx(
        float(open_scores(stores["a"])[S.TEST_ACCURACY].sel(run=0, epoch=2)), abs=0)


def test_export_and_inspect_report_the_same_size(stores, tmp_path):
    out = tmp_path / "sized.scorebank.zip"
    exported = run("export", str(stores["a"]), str(out), "--quiet")
    assert exported.exit_code == 0, exported.output
    size = out.stat().st_size
    said = re.search(r"members, ([0-9.]+ \w+)", exported.stdout).group(1)  # e.g. "80.1 KiB"
    shown = run("inspect", str(out))
    assert shown.exit_code == 0, shown.output
    row = next(line for line in shown.stdout.splitlines() if line.strip().startswith("size "))
    assert f"{said} ({size} bytes" in row
    doc = json.loads(run("inspect", str(out), "--json").stdout)
    assert doc["archive"]["file_bytes"] == size


def test_info_reads_an_archive_in_place(archive):
    result = run("info", str(archive), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dataset"] == "digits"


def _tampered(archive: Path, path: Path) -> Path:
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "loss/c/1/0/0":
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.writestr(info, data)
    return path


def test_import_verifies_and_refuses_tampering(archive, stores, tmp_path):
    result = run("import", str(archive), str(tmp_path / "ok.zarr"), "-q")
    assert result.exit_code == 0, result.output
    assert "all checksums verified" in result.stdout
    np.testing.assert_array_equal(open_scores(tmp_path / "ok.zarr")[S.MARGIN].values,
                                  open_scores(stores["a"])[S.MARGIN].values)
    bad = _tampered(archive, tmp_path / "bad.zip")
    before = listing(tmp_path)
    message = one_line_error(run("import", str(bad), str(tmp_path / "bad.zarr"), "-q"), 1)
    assert "'loss/c/1/0/0'" in message and "sha256" in message
    assert listing(tmp_path) == before
    message = one_line_error(run("inspect", str(bad), "--verify"), 1)
    assert "'loss/c/1/0/0'" in message


def test_import_refuses_zip_slip_and_existing_directories(archive, tmp_path):
    slip = tmp_path / "slip.zip"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(slip, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("../escaped.txt", b"pwned")
    before = listing(tmp_path)
    message = one_line_error(run("import", str(slip), str(tmp_path / "slip.zarr")), 1)
    assert "'../escaped.txt'" in message
    assert listing(tmp_path) == before and not (tmp_path.parent / "escaped.txt").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "data.txt").write_text("x")
    assert "not an empty directory" in one_line_error(run("import", str(archive), str(tmp_path / "full")), 1)


def test_merge_writes_a_store_info_can_read(archive, stores, tmp_path):
    out = tmp_path / "merged.zarr"
    result = run("merge", str(archive), str(stores["b"]), "--out", str(out), "-q")
    assert result.exit_code == 0, result.output
    assert "merged 3 runs from 2 sources" in result.stdout
    info = run("info", str(out), "--json")
    assert info.exit_code == 0, info.output
    doc = json.loads(info.stdout)
    assert [r["seed"] for r in doc["runs"]] == [0, 1, 2]
    assert [r["status"] for r in doc["runs"]] == ["complete"] * 3
    merged = open_scores(out)
    assert merged["source"].values.tolist() == ["lab-a.scorebank.zip"] * 2 + ["b.zarr"]
    assert merged["source_creator"].values.tolist() == ["Lab A", "Lab A", ""]
    assert [r["source"] for r in doc["runs"]] == ["lab-a.scorebank.zip"] * 2 + ["b.zarr"]
    table = run("info", str(out))
    assert table.exit_code == 0, table.output
    assert ["run", "seed", "source"] in [line.split()[:3] for line in table.stdout.splitlines()], table.stdout


def test_merge_refusals_are_one_line_and_write_nothing(archive, stores, tmp_path):
    before = listing(tmp_path)
    message = one_line_error(run("merge", str(stores["a"]), str(stores["subset"]), "--out", str(tmp_path / "m.zarr")), 1)
    assert "'dataset_fingerprint' attributes differ" in message
    message = one_line_error(run("merge", str(archive), str(stores["a"]), "--out", str(tmp_path / "m.zarr")), 1)
    assert "--allow-duplicates" in message
    assert "at least two stores" in one_line_error(run("merge", str(stores["a"]), "--out", str(tmp_path / "m.zarr")), 2)
    assert listing(tmp_path) == before
    result = run("merge", str(archive), str(stores["a"]), "--out", str(tmp_path / "m.zarr"), "--allow-duplicates", "-q")
    assert result.exit_code == 0, result.output
    assert "renumbered (run <- seed): 2 <- 0 (a.zarr), 3 <- 1 (a.zarr)" in result.stdout


def test_the_manifest_is_not_part_of_the_zarr_hierarchy(archive):
    import xarray as xr
    import zarr

    ds = xr.open_zarr(zarr.storage.ZipStore(archive, mode="r"))
    assert MANIFEST not in ds.variables and "scorebank-archive" not in ds.variables
    assert set(ds.data_vars) == {v.name for v in S.variables(frozenset())}
