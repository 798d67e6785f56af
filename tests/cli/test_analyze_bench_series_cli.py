import json

from typer.testing import CliRunner

from scorebank.cli.main import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_analyze_bench_at_several_sizes_side_by_side():
    args = ["analyze-bench", "--runs", "2", "--epochs", "2", "--examples", "300,150", "--classes", "3",
            "--scheduler", "synchronous"]
    res = run(*args, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["examples"] == [150, 300]
    assert [r["examples"] for r in doc["results"]] == [150, 300]
    assert [t["bytes_read"] for t in doc["results"][1]["timings"]][::2] == [2 * 2 * 300, 2 * 3 * 300 * 4]
    assert [t["scaling"] for t in doc["results"][0]["timings"]] == [1.0, 1.0, 1.0]
    res = run(*args)
    assert res.exit_code == 0, res.output
    assert "by examples" in res.output and "1.00 = linear in N" in res.output
    assert "150 examples:" in res.output and "300 examples:" in res.output


def test_analyze_bench_refuses_a_bad_size_list():
    res = run("analyze-bench", "--examples", "300,lots")
    assert res.exit_code == 2
    assert "--examples '300,lots' is not a list of example counts" in res.output
    assert "Traceback" not in res.output
