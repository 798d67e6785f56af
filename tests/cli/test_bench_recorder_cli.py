"""``scorebank bench --recorder`` and registry-generated help (import-dynamics FORMAT)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from scorebank.cli.main import app

runner = CliRunner()
TINY = ["--recorder", "--model", "mlp", "--width", "4", "--n", "24", "--shape", "1x4x4", "--classes", "3",
        "--batch-size", "8", "--repeats", "1", "--device", "cpu"]


def test_bench_recorder_prints_the_recorder_quantities_with_the_goal():
    from scorebank.pipeline.bench_record import TARGETS

    r = runner.invoke(app, ["bench", *TINY])
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line.split()[1:] for line in r.output.splitlines() if line.strip()}
    for key in ("user_epoch_s", "recorder_overhead", "recorder_clean_pass_ratio"):
        assert key in rows, r.output
        float(rows[key][0])
    assert rows["recorder_overhead"][1:] == ["<=", f"{TARGETS['recorder_overhead']:g}"]
    assert len(rows["user_epoch_s"]) == 1  # no goal


def test_bench_recorder_json():
    r = runner.invoke(app, ["bench", *TINY, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["n"] == 24 and out["shape"] == [1, 4, 4] and out["model"] == "mlp"
    assert out["recorder_overhead"] == out["recorded_epoch_s"] / out["user_epoch_s"] - 1
    assert out["recorder_clean_pass_ratio"] == out["recorder_clean_pass_s"] / out["bare_forward_s"]


def test_bench_recorder_refuses_optimizers_in_one_line():
    r = runner.invoke(app, ["bench", *TINY, "--optimizers", "m3"])
    assert r.exit_code == 2
    assert "--optimizers 'm3' times the built-in trainer's optimisers" in " ".join(r.output.split())


def test_import_dynamics_format_help_lists_the_format_registry():
    from scorebank.pipeline.import_dynamics import FORMATS

    r = runner.invoke(app, ["import-dynamics", "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.replace("│", " ").split())
    assert all(f"{name}: " in text for name in FORMATS), text
