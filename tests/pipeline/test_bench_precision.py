"""``scorebank bench --modes``: the training epoch per precision mode, on a tiny MLP on the CPU
(bf16 autocast and torch.compile both run there); a mode whose compile fails is reported
unavailable with a one-line reason; bad --modes are one-line exit-2 errors."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from scorebank.cli.main import app
from scorebank.core.errors import InvalidArgumentError
from scorebank.pipeline.bench import BenchSpec
from scorebank.pipeline.bench_precision import MODES, bench_precision, parse_modes

TINY = dict(model="mlp", n=64, shape=(1, 8, 8), batch_size=16, width=8, repeats=2, device="cpu")


def test_every_mode_reports_a_positive_epoch_time_and_its_ratio_to_fp32():
    steps = []
    r = bench_precision(BenchSpec(**TINY), MODES.names(), progress=steps.append)
    assert r["device"] == "cpu" and r["model"] == "mlp" and r["n"] == 64 and r["repeats"] == 2
    assert r["channels_last"] is False  # channels_last is the CUDA path (and an MLP has no convolution)
    assert not [k for k in r if k.startswith("unavailable_")]
    for mode in ("fp32", "bf16", "fp32+compile", "bf16+compile"):
        assert math.isfinite(r[f"epoch_s_{mode}"]) and r[f"epoch_s_{mode}"] > 0, mode
        assert r[f"ratio_{mode}"] == r[f"epoch_s_{mode}"] / r["epoch_s_fp32"], mode
    assert r["ratio_fp32"] == 1.0
    # one warm-up per mode (compile modes say so), then `repeats` rounds over every mode
    assert steps[:4] == ["fp32: warm-up epoch", "bf16: warm-up epoch", "fp32+compile: warm-up epoch (compiling)",
                         "bf16+compile: warm-up epoch (compiling)"]
    assert steps[4:] == ["training epochs, round 1 of 2", "training epochs, round 2 of 2"]


def test_a_mode_whose_compile_fails_is_reported_unavailable(monkeypatch):
    class Broken:
        """What torch.compile returns where the backend cannot build: the module's attributes,
        but the first call fails."""

        def __init__(self, model):
            self.model = model

        def __getattr__(self, name):
            return getattr(self.model, name)

        def __call__(self, *args, **kwargs):
            raise RuntimeError("no C++ compiler found\nlong inductor traceback text")

    monkeypatch.setattr(torch, "compile", lambda model, *a, **k: Broken(model))
    r = bench_precision(BenchSpec(**TINY), ("bf16", "fp32+compile"))
    assert r["unavailable_fp32+compile"] == "RuntimeError: no C++ compiler found"
    assert "epoch_s_fp32+compile" not in r and "ratio_fp32+compile" not in r
    for mode in ("fp32", "bf16"):  # the baseline is always timed
        assert r[f"epoch_s_{mode}"] > 0 and r[f"ratio_{mode}"] == r[f"epoch_s_{mode}"] / r["epoch_s_fp32"]


def test_parse_modes():
    assert parse_modes("bf16") == ("fp32", "bf16")  # the baseline first when missing
    assert parse_modes("bf16+compile, fp32") == ("fp32", "bf16+compile")
    assert parse_modes("all") == ("fp32", "bf16", "fp32+compile", "bf16+compile")
    with pytest.raises(InvalidArgumentError, match=r"unknown precision mode 'fp16'; --modes takes fp32, bf16, "
                                                   r"fp32\+compile or bf16\+compile"):
        parse_modes("bf16,fp16")
    with pytest.raises(InvalidArgumentError, match="--modes ',' names no mode"):
        parse_modes(",")


def test_cli_modes_json_and_one_line_errors():
    runner = CliRunner()
    base = ["bench", "--model", "mlp", "--n", "32", "--shape", "1x8x8", "--batch-size", "16", "--width", "8",
            "--repeats", "1", "--device", "cpu"]
    res = runner.invoke(app, [*base, "--modes", "bf16", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output[res.output.index("{"):])
    assert doc["epoch_s_fp32"] > 0 and doc["epoch_s_bf16"] > 0
    assert doc["ratio_bf16"] == doc["epoch_s_bf16"] / doc["epoch_s_fp32"]
    for extra, expected in ((["--modes", "fp16"], "error: unknown precision mode 'fp16'; --modes takes "),
                            (["--modes", "bf16", "--recorder"], "error: --modes 'bf16' times plain SGD epochs"),
                            (["--modes", "bf16", "--optimizers", "rm3"], "drop --optimizers 'rm3' or --modes"),
                            (["--modes", "bf16", "--dispatch"], "error: --modes 'bf16' times training epochs")):
        bad = runner.invoke(app, [*base, *extra])
        assert bad.exit_code == 2, (extra, bad.output)
        assert bad.output.startswith(expected) or expected in bad.output, bad.output
        assert len(bad.output.strip().splitlines()) == 1 and "Traceback" not in bad.output
