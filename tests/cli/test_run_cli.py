"""``scorebank run``, ``scorebank presets`` and ``scorebank report`` through the CLI (a local
typer app with the modules' ``register(app)``): exit codes, one-line errors, the plan, one
line per stage, skipping on re-run, refusing a changed stage."""

import json

import pytest
import typer
from typer.testing import CliRunner

from scorebank.cli import report as report_cli
from scorebank.cli import run as run_cli
from scorebank.pipeline.experiment import preset_names

app = typer.Typer(pretty_exceptions_enable=False)
run_cli.register(app)
report_cli.register(app)
runner = CliRunner()

EXP = """
[experiment]
name = "cli"
reproduces = "a test"
[stores.s]
path = "s.zarr"
[stages.score]
kind = "score"
limit = 100
width = 8
epochs = 2
batch-size = 25
seeds = "0-1"
[stages.sep]
kind = "separation"
"""


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(r, code):
    assert r.exit_code == code, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output
    return lines[0]


def test_presets_lists_every_preset_with_its_paper():
    r = runner.invoke(app, ["presets"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    for name in preset_names():
        assert name in r.output
    assert "Data Diet" in r.output and "Coherent Gradients" in r.output


def test_bad_arguments_exit_2_in_one_line(tmp_path):
    assert "give an experiment file or --preset NAME" in one_line_error(invoke("run"), 2)
    (tmp_path / "e.toml").write_text(EXP)
    assert "one of them" in one_line_error(invoke("run", tmp_path / "e.toml", "--preset", "digits-quick"), 2)
    assert "unknown preset 'nope'" in one_line_error(invoke("run", "--preset", "nope"), 2)
    assert "does not exist" in one_line_error(invoke("run", tmp_path / "missing.toml"), 2)
    (tmp_path / "bad.toml").write_text(EXP.replace("epochs = 2", "epochs = 'two'"))
    line = one_line_error(invoke("run", tmp_path / "bad.toml"), 2)
    assert f"{tmp_path / 'bad.toml'}: stage 'score': key 'epochs' must be an integer, got str 'two'" in line
    assert "--workers 0 is out of range" in one_line_error(
        invoke("run", tmp_path / "e.toml", "--out", tmp_path / "o", "--workers", "0"), 2)
    assert not (tmp_path / "cli").exists() and not (tmp_path / "o").exists()


def test_dry_run_writes_nothing(tmp_path):
    (tmp_path / "e.toml").write_text(EXP)
    r = runner.invoke(app, ["run", str(tmp_path / "e.toml"), "--out", str(tmp_path / "out"), "--dry-run"],
                      env={"COLUMNS": "100"})
    assert r.exit_code == 0, r.output
    rows = [line.split() for line in r.output.splitlines()[2:5]]
    assert [(row[0], row[1], row[-2:]) for row in rows] == [("score", "score", ["to", "run"]),
                                                            ("sep", "separation", ["to", "run"]),
                                                            ("report", "report", ["to", "run"])]
    assert "0 of 3 stages done, 3 to run" in r.output
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    (root / "e.toml").write_text(EXP)
    r = invoke("run", root / "e.toml", "--out", root / "out", "--device", "cpu")
    return root, r


def test_run_prints_one_line_per_stage_and_skips_on_rerun(ran):
    root, r = ran
    assert r.exit_code == 0, r.output
    for i, (name, kind) in enumerate((("score", "score"), ("sep", "separation"), ("report", "report")), 1):
        assert f"[{i}/3] {name} ({kind}): running" in r.output
    results = json.loads((root / "out" / "results.json").read_text())
    assert set(results["stages"]) == {"score", "sep"}
    again = invoke("run", root / "e.toml", "--out", root / "out")
    assert again.exit_code == 0, again.output
    assert again.output.count("done, skipped") == 3 and "running" not in again.output


def test_changed_stage_exit_1_then_rerun(ran, tmp_path):
    root, _ = ran
    import shutil

    shutil.copytree(root / "out", tmp_path / "out")
    (tmp_path / "e.toml").write_text(EXP.replace('kind = "separation"', 'kind = "separation"\nruns = "0"'))
    line = one_line_error(invoke("run", tmp_path / "e.toml", "--out", tmp_path / "out"), 1)
    assert "stage 'sep' changed since it ran (runs was None, now '0'); pass --rerun sep" in line
    r = invoke("run", tmp_path / "e.toml", "--out", tmp_path / "out", "--rerun", "sep")
    assert r.exit_code == 0, r.output
    assert "[2/3] sep (separation): running" in r.output and "[1/3] score (score): done, skipped" in r.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [row["run"] for row in results["stages"]["sep"]["results"]["runs"]] == [0]


def test_report_of_a_store_and_of_an_experiment(ran, tmp_path):
    root, _ = ran
    r = invoke("report", root / "out" / "s.zarr", "--out", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    assert f"wrote {tmp_path / 'rep' / 'index.html'}" in r.output.replace("\n", "")
    assert "Training curves" in (tmp_path / "rep" / "index.html").read_text()
    r = invoke("report", root / "out", "--out", tmp_path / "exp")
    assert r.exit_code == 0, r.output
    assert "Measured" in (tmp_path / "exp" / "index.html").read_text()
    assert "no scorebank store" in one_line_error(invoke("report", tmp_path / "nothing"), 2)
    assert "--per-class must be" in one_line_error(invoke("report", root / "out", "--per-class", "0"), 2)
