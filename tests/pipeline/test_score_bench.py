import json
import math

import pytest
from typer.testing import CliRunner

from scorebank.cli.main import app
from scorebank.pipeline.bench import TARGETS, BenchSpec, run_bench

FIELDS = {"device", "torch", "model", "batch_size", "n", "train_epoch_s", "inflight_overhead", "clean_pass_ratio",
          "grand_ratio", "store_write_ratio"}


def test_bench_smoke_produces_every_field():
    r = run_bench(BenchSpec(model="mlp", n=64, shape=(1, 8, 8), batch_size=16, width=8, repeats=1, device="cpu",
                            optimizers=("rm3",)))
    assert FIELDS <= set(r) and set(TARGETS) <= set(r)
    assert r["device"] == "cpu" and r["n"] == 64 and r["model"] == "mlp"
    for key in ("train_epoch_s", "clean_pass_ratio", "grand_ratio", "store_write_ratio", "optimizer_ratio_rm3"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["inflight_overhead"] == r["inflight_epoch_s"] / r["train_epoch_s"] - 1
    assert r["margin_overhead"] == (r["inflight_bookkeeping_with_margin_s"] - r["inflight_bookkeeping_s"]) \
        / r["inflight_epoch_s"]
    # the ratios are the quotients of the reported seconds
    assert r["grand_ratio"] == r["grand_s"] / r["train_epoch_s"]
    assert r["clean_pass_ratio"] == r["clean_pass_s"] / r["bare_forward_s"]


def test_bad_optimizer_is_refused_before_anything_is_timed():
    from scorebank.stores.errors import InvalidArgumentError

    steps = []
    with pytest.raises(InvalidArgumentError, match="--batch-size must be divisible by 3, got 16"):
        run_bench(BenchSpec(model="mlp", n=64, shape=(1, 8, 8), batch_size=16, width=8, repeats=1, device="cpu",
                            optimizers=("rm3", "m3")), progress=steps.append)
    assert steps == []  # nothing was timed


def test_bench_cli_json_and_bad_shape():
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "--model", "mlp", "--n", "32", "--shape", "1x8x8", "--batch-size", "16",
                              "--width", "8", "--repeats", "1", "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output[res.output.index("{"):])
    assert FIELDS <= set(doc)
    bad = runner.invoke(app, ["bench", "--shape", "32x32"])
    assert bad.exit_code == 2 and "bad --shape '32x32'" in bad.output
