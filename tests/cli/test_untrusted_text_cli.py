"""Text from stores, archives and user arguments reaches the terminal as plain text: no Rich
markup is interpreted and no control character (colours, clear-screen, OSC-8 hyperlinks,
bell) is written raw (issue 11, terminal injection)."""

import json
import re

import pytest
from typer.testing import CliRunner

from scorebank.cli.main import app
from scorebank.cli.text import plain, visible

runner = CliRunner()
TINY = ["--limit", "120", "--width", "8", "--epochs", "1", "--batch-size", "32", "--quiet", "--device", "cpu"]
MARKUP = "[red]x[/red] [link=http://evil]y[/link]"
ESCAPES = "\x1b[2J\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\\x07\x9b"
EVIL = MARKUP + ESCAPES
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def shown(output: str) -> str:
    """The output as one line (rich wraps long lines at 80 columns)."""
    return "".join(output.split("\n"))


def assert_plain(output: str, text: str) -> None:
    assert not CONTROL.search(output.replace("\n", "")), repr(output)
    assert visible(text) in shown(output), (visible(text), output)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A store whose data set name, class names and run info hold markup and escapes."""
    root = tmp_path_factory.mktemp("hostile")
    store = root / "s.zarr"
    assert invoke("score", *TINY, "--seeds", "0-1", "--store", store).exit_code == 0
    doc = json.loads((store / "zarr.json").read_text())
    attrs = doc["attributes"]
    attrs["dataset"] = EVIL
    attrs["class_names"] = [f"{EVIL}{i}" for i in range(len(attrs["class_names"]))]
    attrs["runs"]["1"]["device"] = EVIL
    (store / "zarr.json").write_text(json.dumps(doc))
    return root


def test_plain_and_visible():
    assert visible("a\x1b[2Jb\x07\tc\n") == "a\\x1b[2Jb\\x07\tc\n"
    assert plain("[red]x[/red]\x9b") == "\\[red]x\\[/red]\\x9b"


def test_info_prints_store_text_literally(hostile):
    r = invoke("info", hostile / "s.zarr")
    assert r.exit_code == 0, r.output
    assert_plain(r.output, EVIL)


def test_archive_commands_print_file_text_literally(hostile, tmp_path):
    archive = tmp_path / "lab[red]A.scorebank.zip"  # a file name cannot hold "/"
    r = invoke("export", hostile / "s.zarr", archive, "--creator", MARKUP, "--license", "[bold]CC[/bold]", "-q")
    assert r.exit_code == 0, r.output
    assert_plain(r.output, str(archive))
    r = invoke("inspect", archive)
    assert r.exit_code == 0, r.output
    for text in (EVIL, MARKUP, "[bold]CC[/bold]", archive.name):
        assert_plain(r.output, text)
    r = invoke("import", archive, tmp_path / "in[blink]port.zarr", "-q")
    assert r.exit_code == 0, r.output
    assert_plain(r.output, "in[blink]port.zarr")
    r = invoke("merge", archive, hostile / "s.zarr", "--out", tmp_path / "m.zarr", "--allow-duplicates", "-q")
    assert r.exit_code == 0, r.output
    for text in (EVIL, archive.name):
        assert_plain(r.output, text)


def test_error_messages_quote_values_literally(tmp_path):
    path = f"{tmp_path}/{EVIL}.zarr"  # a str: pathlib would fold the "//" of the URL
    r = invoke("info", path)
    assert r.exit_code == 2
    assert r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1
    assert_plain(r.output, repr(path))  # the message quotes the path with !r
    assert MARKUP in r.output
