"""bench_recorder runs the user loop with and without the recorder and reports ratios."""

import math

import pytest

from scorebank.core.errors import InvalidArgumentError
from scorebank.pipeline.bench import BenchSpec
from scorebank.pipeline.bench_record import bench_recorder


def test_bench_recorder_reports_ratios_of_its_timings():
    r = bench_recorder(BenchSpec(model="mlp", n=96, shape=(1, 8, 8), classes=10, batch_size=32, repeats=1,
                                 device="cpu"))
    assert r["recorder_overhead"] == pytest.approx(r["recorded_epoch_s"] / r["user_epoch_s"] - 1)
    assert r["recorder_clean_pass_ratio"] == pytest.approx(r["recorder_clean_pass_s"] / r["bare_forward_s"])
    assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("user_epoch_s", "recorded_epoch_s", "bare_forward_s"))
    assert r["model"] == "mlp" and r["n"] == 96


def test_bench_recorder_refuses_bad_sizes():
    with pytest.raises(InvalidArgumentError, match="repeats=0"):
        bench_recorder(BenchSpec(repeats=0, device="cpu"))
