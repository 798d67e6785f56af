"""Tables fit an 80-column terminal: no header is truncated ("comple…", "separa…"), and
group names stay on one line (issue 11)."""

import pytest
from typer.testing import CliRunner

from scorebank.cli.main import app

runner = CliRunner()
NARROW = {"COLUMNS": "80"}
FIT = ["--width", "64", "--batch-size", "20", "--lr", "0.05", "--quiet", "--device", "cpu"]
GROUP = "keep-el2n-half-cb"


def invoke(*args):
    r = runner.invoke(app, [str(a) for a in args], env=NARROW)
    assert r.exit_code == 0, (args, r.output)
    return r.stdout


def assert_fits(output: str, *words: str) -> None:
    """Every line of the table (from its header on) fits 80 columns, nothing is cut with an
    ellipsis (the fingerprint line's is deliberate), and each of ``words`` (headers, names)
    stands whole on one line."""
    lines = output.splitlines()
    start = max(0, next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"}) - 2)
    lines = lines[start:]
    assert all(len(line) <= 80 for line in lines), output
    assert not [line for line in lines if "…" in line and "fingerprint" not in line], output
    for word in words:
        assert any(word in line for line in lines), (word, output)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    invoke("score", *FIT, "--limit", "200", "--epochs", "8", "--seeds", "0-1", "--store", root / "s.zarr")
    invoke("score", *FIT, "--limit", "120", "--epochs", "1", "--seeds", "0", "--label-noise", "0.5",
           "--store", root / "noisy.zarr")
    invoke("export", root / "noisy.zarr", root / "lab-with-a-long-name.scorebank.zip", "--creator", "Lab A", "-q")
    invoke("merge", root / "lab-with-a-long-name.scorebank.zip", root / "noisy.zarr", "--out", root / "m.zarr",
           "--allow-duplicates", "-q")
    invoke("select", root / "s.zarr", "--score", "el2n@2", "--strategy", "keep-highest", "--keep", "0.5",
           "--class-balanced", "--name", GROUP, "--out", root / "keep.json")
    return root


def test_info_and_inspect_tables(stores):
    assert_fits(invoke("info", stores / "s.zarr"), "status", "separ-", "ation", "epoch")
    assert_fits(invoke("info", stores / "m.zarr"), "pristine", "corrupt", "separ-", "source", "status")
    assert_fits(invoke("inspect", stores / "lab-with-a-long-name.scorebank.zip"), "pristine", "corrupt",
                "separ-")


def test_retrain_and_prune_curve_tables(stores):
    out = invoke("retrain", stores / "s.zarr", "--manifest", stores / "keep.json", "--seeds", "0", "--epochs", "1",
                 "--baseline", "random", "--quiet")
    assert_fits(out, f"{GROUP} ", f"{GROUP}.random", "16-84 %", "subset")
    out = invoke("prune-curve", stores / "s.zarr", "--score", "el2n@2", "--prune", "0.5", "--seeds", "0",
                 "--epochs", "1", "--out", stores / "curve", "--quiet")
    assert_fits(out, "keep-highest", "pruned", "16-84 %")


def test_compress_and_easy_hard_tables(stores):
    out = invoke("compress", stores / "s.zarr", "--run", "0", "--keep", "150", "--epochs", "1",
                 "--figure", stores / "c.png", "--quiet")
    assert_fits(out, "separated", "examples", "left", "err %")
    out = invoke("easy-hard", stores / "s.zarr", "--threshold", "0.5", "--epochs", "1", "--device", "cpu")
    assert_fits(out, "trained on", "generalisation", "easy-train", "hard-train")
