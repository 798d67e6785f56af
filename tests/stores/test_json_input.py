"""Issue 11 #4: JSON read from files (selection manifests, archive members, store metadata)
that is deeply nested or not UTF-8 is bad input: InvalidJSONError (exit 2, one line)."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from scorebank.core.errors import InvalidArgumentError
from scorebank.stores import schema as S
from scorebank.stores.archive import MANIFEST, ArchiveError, ArchiveJSONError, export_archive
from scorebank.stores.jsonfile import MAX_DEPTH, InvalidJSONError, loads
from scorebank.stores.location import open_scores
from scorebank.stores.manifest import read_manifest

DEEP = b"[" * 100_000 + b"]" * 100_000  # beyond Python's recursion limit
NESTED = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)  # parses, but deeper than scorebank accepts
LATIN1 = '{"name": "s\u00e9lection"}'.encode("latin-1")
BAD = {"recursion": (DEEP, "nests arrays/objects more than 64 levels deep"),
       "too deep": (NESTED, "nests arrays/objects more than 64 levels deep"),
       "not UTF-8": (LATIN1, "is not UTF-8 text (byte 11 is b'\\xe9'); save it as UTF-8 JSON"),
       "not JSON": (b'{"a": ', "is not valid JSON")}


def test_loads_accepts_nesting_up_to_the_limit():
    doc = loads(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, "x")
    for _ in range(MAX_DEPTH - 1):
        doc = doc[0]
    assert doc == []
    assert loads('{"a": [1, {"b": "\u00e9"}]}'.encode(), "x") == {"a": [1, {"b": "\u00e9"}]}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_manifest_files_are_invalid_arguments(tmp_path, case):
    data, fragment = BAD[case]
    path = tmp_path / "keep.json"
    path.write_bytes(data)
    with pytest.raises(InvalidJSONError) as exc:
        read_manifest(path)
    assert isinstance(exc.value, InvalidArgumentError)
    assert str(exc.value).startswith(f"manifest {str(path)!r} ")
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from scorebank.stores.create import create_store

    path = tmp_path_factory.mktemp("json") / "s.zarr"
    create_store(path, n_epochs=1, labels=np.arange(6) % 2, true_labels=np.arange(6) % 2,
                 original_index=np.arange(6), seeds=(1,), features=frozenset(),
                 attrs={S.ATTR_CONFIG: json.dumps({"record_epochs": [0, 1]})})
    return path


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_store_metadata_is_an_invalid_argument(store, tmp_path, case):
    data, fragment = BAD[case]
    path = Path(shutil.copytree(store, tmp_path / "evil.zarr"))
    (path / "zarr.json").write_bytes(data)
    with pytest.raises(InvalidJSONError, match=fragment.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("\\x", r"\\x")):
        open_scores(path)


@pytest.mark.parametrize("member", [MANIFEST, "zarr.json"])
@pytest.mark.parametrize("case", ["recursion", "not UTF-8"])
def test_bad_archive_json_is_one_line_exit_2(rezip, store, tmp_path, member, case):
    from scorebank.cli.main import app
    from typer.testing import CliRunner

    archive = export_archive(store, tmp_path / "good.scorebank.zip").path
    evil = tmp_path / "evil.scorebank.zip"
    if member == MANIFEST:
        with zipfile.ZipFile(archive) as src, zipfile.ZipFile(evil, "w") as dst:
            for info in src.infolist():
                dst.writestr(info.filename, BAD[case][0] if info.filename == member else src.read(info.filename))
    else:  # re-listed in the manifest, as an attacker rewriting the archive would
        rezip(archive, evil, {member: BAD[case][0]})
    if member == MANIFEST:
        with pytest.raises(ArchiveJSONError) as exc:
            open_scores(evil)
        assert isinstance(exc.value, ArchiveError) and exc.value.member == MANIFEST
    for command in ("inspect", "info"):
        result = CliRunner().invoke(app, [command, str(evil)])
        assert result.exit_code == 2, result.output
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
        assert BAD[case][1] in result.output
