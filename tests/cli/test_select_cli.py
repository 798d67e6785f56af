"""``scorebank select`` writing --out and recording in the store: all or nothing."""

import json

import pytest
from typer.testing import CliRunner

from scorebank.cli.main import app


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from scorebank.pipeline.config import resolve_config
    from scorebank.pipeline.scoring import score

    path = tmp_path_factory.mktemp("select") / "s.zarr"
    score(resolve_config(dataset="digits", limit=60, model="mlp", width=8, epochs=1, batch_size=20), (0,), path,
          device="cpu")
    return path


def select(store, out, *extra):
    return CliRunner().invoke(app, ["select", str(store), "--score", "el2n@1", "--strategy", "keep-highest",
                                    "--keep", "0.5", "--out", str(out), *extra])


def test_refused_recording_leaves_the_existing_manifest_file_untouched(store, tmp_path):
    out = tmp_path / "keep.json"
    r = select(store, out, "--name", "first")
    assert r.exit_code == 0, r.output
    before = out.read_bytes()
    r = select(store, out, "--name", "first", "--overwrite")  # the store already holds 'first'
    assert r.exit_code == 1, r.output
    assert "'first'" in r.output and len(r.output.strip().splitlines()) == 1
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"]  # no staged file left behind
    r = select(store, out, "--name", "second", "--overwrite")
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["name"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"]


def test_an_operating_system_error_is_a_one_line_failure(store, tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    r = select(store, tmp_path / "a-file" / "keep.json", "--no-record")
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "a-file" in lines[0], r.output
    assert "Traceback" not in r.output
