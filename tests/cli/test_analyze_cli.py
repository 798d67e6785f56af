import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from scorebank.cli.main import app
from scorebank.stores import schema as S

# the analysis tests' store builder, loaded by path (every test folder has a conftest.py)
_spec = importlib.util.spec_from_file_location(
    "analysis_store_builder", Path(__file__).resolve().parents[1] / "analysis" / "conftest.py")
_builder = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(_builder)
build_store = _builder.build_store

runner = CliRunner()


@pytest.fixture
def st(tmp_path):
    acc = np.full((3, 7), 0.6, np.float32)
    acc[:, 5:] = 1.0
    return build_store(tmp_path / "s.zarr", chunk=16, overrides={S.TRAIN_ACCURACY: acc})


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_forgetting_json_matches_library(st):
    from scorebank.analysis import forgetting

    res = run("analyze", st.path, "forgetting", "--json", "--top", "3", "--runs", "0-1")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    lib = forgetting(st.path, runs=[0, 1])
    assert doc["runs"] == [0, 1] and doc["spec"] == "forgetting"
    assert [r["never_learned"] for r in doc["per_run"]] == lib["never_learned"].sum("example").values.tolist()
    score = lib["score"].mean("run").values
    best = sorted(range(40), key=lambda i: (-score[i], i))[:3]
    assert [r["example"] for r in doc["most_forgotten"]] == best


def test_tables_print(st, tmp_path):
    for args in (["forgetting"], ["scores", "el2n@2", "forgetting@3"], ["correlation", "el2n@2", "margin@6"],
                 ["sensitivity", "loss@1", "--draws", "2"], ["separation"], ["overlap", "--k", "3,5"],
                 ["margins", "--by-class"], ["difficulty"], ["curves"]):
        res = run("analyze", st.path, *args)
        assert res.exit_code == 0, (args, res.output)
        assert "┃" in res.output  # a rich table
    res = run("analyze", st.path, "separation", "--json")
    assert [r["separation_epoch"] for r in json.loads(res.output)["runs"]] == [5, 5, 5]


def _plain(x):
    """What the CLI's JSON holds for library values: lists, NaN -> None, inf -> "inf"."""
    if isinstance(x, np.ndarray):
        x = x.tolist()
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, float) and np.isnan(x):
        return None
    if isinstance(x, float) and np.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def _lower_quantiles(x):
    x = np.asarray(x, dtype=float)
    out = {"mean": x.mean(), "std": x.std()}
    ordered = np.sort(x)
    for name, q in (("min", 0), ("q25", 25), ("median", 50), ("q75", 75), ("max", 100)):
        out[name] = ordered[int(np.floor(q / 100 * (x.size - 1)))]  # the 'lower' percentile
    return _plain(out)


def _expect_scores(path):
    from scorebank.analysis import average_scores

    avg = average_scores(path, ["el2n@2", "forgetting@3", "nmargin@6"], runs=[0, 2], reduce="sum")
    return {"runs": [0, 2], "reduce": "sum", "csv": None,
            "scores": {n: _lower_quantiles(avg[n].values) for n in avg.data_vars}}


def _expect_correlation(path):
    from scorebank.analysis import spearman_matrix

    mat = spearman_matrix(path, ["el2n@2", "margin@6", "forgetting"], never_learned="inf")
    return {"scores": ["el2n@2", "margin@6", "forgetting"], "runs": [0, 1, 2], "spearman": _plain(mat.values)}


def _expect_sensitivity(path):
    from scorebank.analysis import sensitivity_curve

    c = sensitivity_curve(path, "loss@1", draws=2, seed=4)
    return {"spec": "loss@1", "runs": [0, 1, 2],
            "curve": [_plain({"k": int(k), **{n: float(c[n].sel(k=k)) for n in ("mean", "std", "min", "max")},
                              "subsets": int(c["subsets"].sel(k=k))}) for k in c["k"].values]}


def _expect_overlap(path):
    from scorebank.analysis import margin_overlaps

    r = margin_overlaps(path, k=[3, 5])
    seeds = r["run"].values.tolist()
    doc = {"k": [3, 5], "runs": seeds, "epochs": r["epoch"].values.tolist(),
           "separation_epoch": dict(zip(map(str, seeds), r["separation_epoch"].values.tolist())),
           "final_epoch": dict(zip(map(str, seeds), r["final_epoch"].values.tolist()))}
    doc["retention"] = {str(k): {str(s): _plain(r["retention"].sel(k=k, run=s).values) for s in seeds} for k in (3, 5)}
    doc["retention_at_separation"] = {str(k): {str(s): _plain(float(r["at_separation"].sel(k=k, run=s)))
                                               for s in seeds} for k in (3, 5)}
    for name in ("pairwise_mean", "pairwise_min", "pairwise_max"):
        doc[name] = {str(k): _plain(r[name].sel(k=k).values) for k in (3, 5)}
    return doc


def _expect_margins(path):
    from scorebank.analysis import margin_distribution

    r = margin_distribution(path, gammas=[0.05, 0.5], epochs=[0, 3, 6])
    seeds = r["run"].values.tolist()
    return {"runs": seeds, "epochs": [0, 3, 6], "gamma": [0.05, 0.5],
            "auc": {str(s): _plain(r["auc"].sel(run=s).values) for s in seeds},
            "smallest": {str(s): _plain(r["smallest"].sel(run=s).values) for s in seeds},
            "n_within": {str(g): {str(s): _plain(r["n_within"].sel(gamma=g, run=s).values) for s in seeds}
                         for g in (0.05, 0.5)},
            "classes": ["c0", "c1", "c2"],
            "class_auc": {str(s): _plain(r["class_auc"].sel(run=s).transpose("epoch", ...).values) for s in seeds},
            "class_n_within": {str(g): {str(s): _plain(r["class_n_within"].sel(gamma=g, run=s)
                                                       .transpose("epoch", ...).values) for s in seeds}
                               for g in (0.05, 0.5)}}


def _expect_difficulty(path):
    from scorebank.analysis import difficulty

    r = difficulty(path, threshold=0.55, runs=[1, 2])
    hist = np.bincount(r["difficulty"].values, minlength=3)
    return {"threshold": 0.55,
            "runs": [{"run": int(s), "threshold_epoch": int(r["threshold_epoch"].sel(run=s)),
                      "train_accuracy": float(r["train_accuracy"].sel(run=s)),
                      "hard": int(r["hard"].sel(run=s).sum())} for s in (1, 2)],
            "histogram": {str(d): int(c) for d, c in enumerate(hist)}}


def _expect_noise(path):
    from scorebank.analysis import noise_detection

    r = noise_detection(path, ["el2n@1", "forgetting"], never_learned="inf")
    return {"noise_rate": float(r["noise_rate"]), "n_corrupted": int(r["n_corrupted"]), "runs": [0, 1, 2],
            "scores": [{"score": s, **{k: float(r[k].sel(score=s)) for k in (
                "roc_auc", "average_precision", "precision_at_noise_rate", "recall_at_noise_rate")}}
                       for s in ("el2n@1", "forgetting")]}


@pytest.mark.parametrize("args,expect", [
    (["scores", "el2n@2", "forgetting@3", "nmargin@6", "--runs", "0,2", "--reduce", "sum"], _expect_scores),
    (["correlation", "el2n@2", "margin@6", "forgetting", "--never-learned", "inf"], _expect_correlation),
    (["sensitivity", "loss@1", "--draws", "2", "--seed", "4"], _expect_sensitivity),
    (["overlap", "--k", "3,5"], _expect_overlap),
    (["margins", "--gamma", "0.05,0.5", "--epochs", "0,3,6", "--by-class"], _expect_margins),
    (["difficulty", "--threshold", "0.55", "--runs", "1-2"], _expect_difficulty),
    (["noise", "el2n@1", "forgetting", "--never-learned", "inf"], _expect_noise),
], ids=lambda v: v[0] if isinstance(v, list) else "")
def test_json_matches_library(st, tmp_path, args, expect):
    path = st.path
    if args[0] == "noise":
        path = build_store(tmp_path / "noisy.zarr", chunk=16, label_noise=0.25).path
    res = run("analyze", path, *args, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == expect(path)


def test_scores_csv_and_plots(st, tmp_path):
    out = tmp_path / "scores.csv"
    res = run("analyze", st.path, "scores", "el2n@2", "nmargin@6", "--out", out)
    assert res.exit_code == 0, res.output
    lines = out.read_text().splitlines()
    assert lines[0] == "example,original_index,label,el2n@2,nmargin@6" and len(lines) == 41
    first = lines[1].split(",")
    assert float(first[3]) == pytest.approx(st[S.EL2N][:, 2, 0].astype(float).mean())
    for args, name in ((["overlap", "--k", "4"], "o.png"), (["sensitivity", "el2n@1"], "s.png"),
                       (["margins"], "m.png"), (["correlation", "el2n@1", "loss@1"], "c.png")):
        res = run("analyze", st.path, *args, "--plot", tmp_path / name)
        assert res.exit_code == 0, res.output
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_error_exit_codes(st, tmp_path):
    res = run("analyze", st.path, "scores", "el2n@99")
    assert res.exit_code == 2 and "epoch 99 is not in the store" in res.output
    res = run("analyze", st.path, "overlap", "--k", "100")
    assert res.exit_code == 2 and "larger than the data set" in res.output
    pending = build_store(tmp_path / "p.zarr", statuses={0: S.RUN_PENDING, 1: S.RUN_RUNNING, 2: S.RUN_FAILED})
    res = run("analyze", pending.path, "forgetting")
    assert res.exit_code == 1 and "no completed runs" in res.output
    res = run("analyze", st.path, "noise", "el2n@1")
    assert res.exit_code == 1 and "0 corrupted" in res.output
    res = run("analyze", st.path.parent / "nothing.zarr", "separation")
    assert res.exit_code == 2  # the store is the user's argument (issue 11): a bad argument


def test_a_store_missing_an_array_is_refused_in_one_line(st, tmp_path):
    import shutil

    from scorebank.stores.errors import StoreNotFoundError
    from scorebank.stores.location import open_scores

    path = Path(shutil.copytree(st.path, tmp_path / "no-margin.zarr"))
    shutil.rmtree(path / S.MARGIN)  # a crafted store: no margin array, nor its metadata
    doc = json.loads((path / "zarr.json").read_text())
    del doc["consolidated_metadata"]["metadata"][S.MARGIN]
    (path / "zarr.json").write_text(json.dumps(doc))
    res = run("analyze", path, "forgetting")
    assert res.exit_code == 2, res.output  # StoreNotFoundError: the store argument is bad (issue 11)
    assert "lacks the array(s) ['margin']" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    with pytest.raises(StoreNotFoundError, match=r"no-margin\.zarr' lacks the array\(s\) \['margin'\]"):
        open_scores(path)
    assert run("analyze", st.path, "forgetting").exit_code == 0  # the store it was copied from is fine


def test_select_writes_and_records_manifest(st, tmp_path):
    from scorebank.stores.manifest import read_manifest, read_store_manifest, store_manifest_names

    out = tmp_path / "m.json"
    res = run("select", st.path, "--score", "el2n@2", "--strategy", "keep-highest", "--keep", "0.25",
              "--class-balanced", "--out", out, "--name", "top", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    man = read_manifest(out, expected_fingerprint="toy-0-40", n_examples=40)
    assert man.name == "top" and man.strategy == "keep-highest" and man.score == "el2n@2"
    assert man.parameters == {"fraction": 0.25, "class_balanced": True, "reduce": "mean"}
    assert doc["store_group"] == f"{S.MANIFESTS_GROUP}/top" and store_manifest_names(st.path) == ["top"]
    assert read_store_manifest(st.path, "top").indices.tolist() == man.indices.tolist()
    avg = st[S.EL2N][:, 2].astype(float).mean(0)
    expected = []
    for c in range(3):
        members = sorted((i for i in range(40) if st[S.LABEL][i] == c), key=lambda i: (avg[i], i))
        keep = int(np.floor(0.25 * len(members) + 0.5))
        expected += members[len(members) - keep:]
    assert man.indices.tolist() == sorted(expected)
    # random baseline, no store record
    out2 = tmp_path / "r.json"
    res = run("select", st.path, "--strategy", "random", "--keep", "0.5", "--seed", "3", "--out", out2,
              "--no-record")
    assert res.exit_code == 0, res.output
    assert read_manifest(out2).n_kept == 20 and store_manifest_names(st.path) == ["top"]
    listing = json.loads(run("analyze", st.path, "manifests", "--json").output)["manifests"]
    assert [(m["name"], m["n_kept"], m["strategy"]) for m in listing] == [("top", man.n_kept, "keep-highest")]


@pytest.mark.parametrize("args,code,match", [
    (["--score", "el2n@2", "--strategy", "keep-highest", "--keep", "1.5"], 2, "--keep 1.5 is outside (0, 1]"),
    (["--score", "el2n@2", "--strategy", "window", "--offset", "0.7", "--keep", "0.5"], 2, "past the end"),
    (["--score", "nmargin@6", "--strategy", "smallest-margin", "--count", "50"], 2, "larger than the data set"),
    (["--score", "el2n@9", "--strategy", "keep-lowest", "--keep", "0.5"], 2, "epoch 9 is not in the store"),
    (["--score", "bogus@1", "--strategy", "keep-lowest", "--keep", "0.5"], 2, "unknown score 'bogus@1'"),
])
def test_select_bad_input_writes_nothing(st, tmp_path, args, code, match):
    from scorebank.stores.manifest import store_manifest_names

    out = tmp_path / "m.json"
    res = run("select", st.path, *args, "--out", out)
    assert res.exit_code == code, res.output
    assert match in " ".join(res.output.split())
    assert not out.exists() and store_manifest_names(st.path) == []


def test_analyze_bench_tiny(tmp_path):
    res = run("analyze-bench", "--runs", "2", "--epochs", "3", "--examples", "300", "--classes", "3",
              "--scheduler", "synchronous", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert [t["name"].split(" ")[0] for t in doc["timings"]] == ["forgetting", "spearman", "overlap"]
    assert doc["timings"][0]["bytes_read"] == 2 * 3 * 300
    assert doc["peak_memory_bytes"] > 0 and doc["total_seconds"] > 0


def test_analyze_bench_refuses_an_existing_store_and_leaves_it(tmp_path):
    existing = tmp_path / "bench.zarr"
    existing.mkdir()
    (existing / "zarr.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    before = sorted((str(p), p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*"))
    res = run("analyze-bench", "--runs", "2", "--epochs", "1", "--examples", "10", "--classes", "2",
              "--dir", tmp_path, "--scheduler", "synchronous")
    assert res.exit_code == 1, res.output  # StoreExistsError: a failure, not a bad argument
    assert "exists; remove it or pass --reuse" in res.output
    assert sorted((str(p), p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*")) == before
    res = run("analyze-bench", "--runs", "1", "--dir", tmp_path, "--scheduler", "synchronous")
    assert res.exit_code == 2 and "--runs 1 is too small" in res.output
    # built with --dir --keep, then reused: the kept store survives both runs
    d = tmp_path / "d"
    args = ["analyze-bench", "--runs", "2", "--epochs", "2", "--examples", "200", "--classes", "2",
            "--dir", d, "--scheduler", "synchronous", "--json"]
    assert run(*args, "--keep").exit_code == 0
    assert (d / "bench.zarr" / "zarr.json").is_file()
    res = run(*args, "--reuse")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["build_seconds"] is None and (d / "bench.zarr" / "zarr.json").is_file()


def test_manifests_of_an_archive_and_of_a_missing_store(st, tmp_path):
    from scorebank.stores.archive import export_archive

    res = run("select", st.path, "--score", "el2n@2", "--strategy", "keep-lowest", "--keep", "0.5",
              "--out", tmp_path / "m.json", "--name", "low")
    assert res.exit_code == 0, res.output
    archive = tmp_path / "s.scorebank.zip"
    export_archive(st.path, archive)
    for location in (st.path, archive, archive.as_uri()):
        res = run("analyze", location, "manifests", "--json")
        assert res.exit_code == 0, res.output
        listing = json.loads(res.output)["manifests"]
        assert [(m["name"], m["n_kept"], m["score"], m["strategy"]) for m in listing] == [
            ("low", 20, "el2n@2", "keep-lowest")]
    res = run("analyze", archive, "manifests")
    assert res.exit_code == 0 and "keep-lowest" in res.output and "20/40" in res.output
    for missing in (tmp_path / "nothing.zarr", tmp_path / "nothing.zip"):
        res = run("analyze", missing, "manifests")
        assert res.exit_code == 2 and "no scorebank store at" in res.output, res.output  # a bad argument


def test_curves_json_table_and_plot(tmp_path):
    from scorebank.analysis import training_curves

    recorded = np.ones((2, 21), bool)
    recorded[:, 3] = False
    noisy = build_store(tmp_path / "n.zarr", seeds=(0, 1), epochs=20, n=30, label_noise=0.3, recorded=recorded)
    res = run("analyze", noisy.path, "curves", "--json", "--runs", "1,0")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    lib = training_curves(noisy.path, runs=[1, 0])
    assert doc["runs"] == [1, 0] and doc["epochs"] == list(range(21)) and doc["label_noise"] is True
    for name in (S.TRAIN_ACCURACY, S.TRAIN_LOSS, S.PRISTINE_ACCURACY, S.PRISTINE_LOSS, S.CORRUPT_ACCURACY,
                 S.CORRUPT_LOSS, S.TEST_ACCURACY, S.TEST_LOSS, S.COMPLETED, S.RECORDED):
        for i, seed in enumerate((1, 0)):
            want = [None if isinstance(v, float) and np.isnan(v) else v for v in lib[name].values[i].tolist()]
            assert doc[name][str(seed)] == want, name
    assert doc[S.CORRUPT_ACCURACY]["0"][3] is None and doc[S.TEST_ACCURACY]["0"][3] is not None

    def rows(output):
        return [line for line in output.splitlines() if line.startswith("│")]

    res = run("analyze", noisy.path, "curves", "--plot", tmp_path / "c.png")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(rows(res.output)) == 2 * 15 and "memorised" in res.output  # accuracy and loss tables
    res = run("analyze", noisy.path, "curves", "--all-epochs")
    table = rows(res.output)
    assert len(table) == 2 * 21
    cells = table[0].strip("│").split("│")  # epoch 0: mean over both runs
    acc = noisy[S.CORRUPT_ACCURACY][:, 0].astype(np.float64).mean()
    assert cells[0].strip() == "0" and cells[1].strip() == "2" and cells[4].strip() == f"{acc:.4g}"
    assert table[3].strip("│").split("│")[4].strip() == "-"  # not recorded at epoch 3


def _no_global_client(distributed):
    assert not distributed.client._global_clients
    with pytest.raises(ValueError):
        distributed.default_client()


def test_scheduler_address_of_a_real_cluster(st):
    distributed = pytest.importorskip("distributed")
    from scorebank.analysis import average_scores, forgetting, margin_overlaps

    lib = forgetting(st.path)
    average_scores(st.path, ["el2n@2", "forgetting"])
    margin_overlaps(st.path, k=3, scheduler="synchronous")
    _no_global_client(distributed)  # library calls never create one
    ref = _builder.forgetting_reference
    with distributed.LocalCluster(n_workers=1, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        res = run("analyze", st.path, "forgetting", "--json", "--top", "40", "--scheduler", cluster.scheduler_address)
        assert res.exit_code == 0, res.output
        doc = json.loads(res.output)
        _no_global_client(distributed)  # the CLI closed its client
        ran = set(cluster.scheduler.task_prefixes)
    assert {"block_state", "fold_states"} <= ran, ran  # forgetting ran on the cluster
    assert doc == json.loads(run("analyze", st.path, "forgetting", "--json", "--top", "40").output)
    assert [r["never_learned"] for r in doc["per_run"]] == lib["never_learned"].sum("example").values.tolist()
    assert [r["max_events"] for r in doc["per_run"]] == lib["events"].max("example").values.tolist()
    scores = np.array([ref(st[S.TRAIN_CORRECT][i], st[S.COMPLETED][i])[3] for i in range(3)]).mean(0)
    assert {r["example"]: r["score"] for r in doc["most_forgotten"]} == dict(enumerate(scores.tolist()))


# ------------------------------------------------------------------------------ 80 columns, arguments
@pytest.fixture
def long_store(tmp_path):
    """21 epochs (more than a table shows by default), classes named like their ids."""
    st = build_store(tmp_path / "long.zarr", epochs=20, n=60, chunk=16, label_noise=0.2)
    import zarr

    zarr.open_group(st.path, mode="r+").attrs[S.ATTR_CLASS_NAMES] = ["0", "1", "[red]two[/red]\x1b[2J"]
    zarr.consolidate_metadata(st.path)
    return st


ANALYSES = [["forgetting"], ["scores", "el2n@2", "forgetting@3", "nmargin@6"], ["correlation", "el2n@2", "margin@6"],
            ["sensitivity", "loss@1", "--draws", "2"], ["separation"], ["overlap", "--k", "3,5,8"],
            ["margins", "--by-class"], ["difficulty"], ["noise", "el2n@2", "forgetting"], ["curves"], ["manifests"]]


@pytest.mark.parametrize("args", ANALYSES, ids=lambda a: a[0])
def test_tables_fit_80_columns_without_cutting_headers(long_store, monkeypatch, args):
    monkeypatch.setenv("COLUMNS", "80")
    res = run("analyze", long_store.path, *args)
    assert res.exit_code == 0, res.output
    assert "…" not in res.output, res.output  # no header (nor cell) cut short
    assert max(len(line) for line in res.output.splitlines()) <= 80, res.output
    assert "\x1b" not in res.output and "presentations" in run("analyze", long_store.path, "forgetting").output


def test_elided_epochs_are_said(long_store, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    for args in (["overlap", "--k", "3"], ["margins"], ["curves"]):
        res = run("analyze", long_store.path, *args)
        assert res.exit_code == 0, res.output
        text = " ".join(res.output.split())
        assert "15 of 21" in text and "--all-epochs shows every one" in text, (args, res.output)
        res = run("analyze", long_store.path, *args, "--all-epochs")
        assert "15 of 21" not in " ".join(res.output.split()), args


def test_a_subcommand_where_the_store_goes_says_the_store_comes_first(st, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # the message names the store's long temporary path
    for args, fix in ((["forgetting", st.path], f"scorebank analyze {st.path} forgetting"),
                      (["forgetting"], "scorebank analyze STORE forgetting"),
                      (["scores", "--runs", "0", st.path, "el2n@1"], f"scorebank analyze {st.path} scores")):
        res = run("analyze", *args)
        assert res.exit_code == 2, res.output
        text = " ".join(res.output.replace("│", " ").split())
        assert "the store comes first" in text and fix in text and "No such command" not in text, res.output
    assert run("analyze", st.path, "forgetting").exit_code == 0
    assert run("analyze", "forgetting", "--help").exit_code == 0


def test_select_keep_and_the_old_fraction_spelling(long_store, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    out = tmp_path / "m.json"
    res = run("select", long_store.path, "--score", "el2n@2", "--strategy", "keep-highest", "--fraction", "0.5",
              "--out", out)
    assert res.exit_code == 2 and not out.exists(), res.output
    assert "--keep 0.5" in res.output and len(res.output.strip().splitlines()) == 1, res.output
    res = run("select", long_store.path, "--score", "el2n@2", "--strategy", "keep-highest", "--out", out)
    assert res.exit_code == 2 and "needs --keep F" in " ".join(res.output.split()), res.output
    res = run("select", long_store.path, "--score", "el2n@2", "--strategy", "keep-highest", "--keep", "0.5",
              "--out", out, "--no-record")
    assert res.exit_code == 0, res.output
    rows = [[c.strip() for c in line.strip("│").split("│")] for line in res.output.splitlines()
            if line.startswith("│")]
    sizes = np.bincount(long_store[S.LABEL], minlength=3)
    kept = json.loads(out.read_text())["counts_per_class"]
    # classes named by their id are shown once; other names after the id, as plain text
    assert rows == [["0", str(kept["0"]), str(sizes[0])], ["1", str(kept["1"]), str(sizes[1])],
                    ["2 [red]two[/red]\\x1b[2J", str(kept["2"]), str(sizes[2])]], res.output
    assert "…" not in res.output


def test_select_on_forgetting_with_never_learned_inf_reports_the_infinite_end(tmp_path):
    tc = np.random.default_rng(5).random((3, 7, 30)) < 0.5
    tc[:, 1, 3:] = True
    tc[:, :, :3] = False  # never learned
    st = build_store(tmp_path / "f.zarr", n=30, overrides={S.TRAIN_CORRECT: tc})
    res = run("select", st.path, "--score", "forgetting", "--never-learned", "inf", "--strategy", "stratified",
              "--keep", "0.5", "--bins", "3", "--out", tmp_path / "m.json", "--no-record", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    from scorebank.analysis import select

    sel = select(st.path, "stratified", score="forgetting", never_learned="inf", fraction=0.5, bins=3)
    kept = sel.scores[sel.indices]
    assert doc["kept_score_range"] == [_plain(float(kept.min())), _plain(float(kept.max()))]
    assert None not in doc["kept_score_range"]
    res = run("select", st.path, "--score", "forgetting", "--never-learned", "inf", "--strategy", "stratified",
              "--keep", "0.5", "--bins", "3", "--out", tmp_path / "n.json", "--no-record")
    assert "kept scores" in res.output and "nan" not in res.output


def test_non_finite_scores_are_one_line_failures(tmp_path):
    margin = np.random.default_rng(1).normal(size=(3, 7, 40))
    margin[1, 4, [3, 9]] = np.inf
    bad = build_store(tmp_path / "bad.zarr", chunk=16, overrides={S.MARGIN: margin})
    for args, what in ((["margins"], "'nmargin@4' is not finite (NaN or inf) for 2 example(s) in run 1"),
                       (["overlap", "--k", "3"], "'nmargin@4' is not finite (NaN or inf) for 2 example(s) in run 1"),
                       (["correlation", "margin@4", "el2n@4"], "'margin@4' is infinite for 2 example(s)"),
                       (["scores", "nmargin@4"], "'nmargin@4' is infinite for 2 example(s)")):
        res = run("analyze", bad.path, *args)
        assert res.exit_code == 1, (args, res.output)
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and what in lines[0] and "Warning" not in res.output, (args, res.output)
    res = run("select", bad.path, "--score", "margin@4", "--strategy", "stratified", "--keep", "0.5",
              "--out", tmp_path / "m.json")
    assert res.exit_code == 1 and "'margin@4' is infinite" in res.output and not (tmp_path / "m.json").exists()
    assert run("analyze", bad.path, "margins", "--epochs", "0,3,6").exit_code == 0


def test_score_help_is_generated_from_the_registry_when_shown():
    import subprocess

    from scorebank.analysis.registry import SCORES

    for args in (["analyze", "s.zarr", "scores", "--help"], ["select", "--help"]):
        res = run(*args)
        text = " ".join(res.output.replace("│", " ").split())
        assert res.exit_code == 0 and "<<scores>>" not in text, res.output
        for entry in SCORES.entries():
            assert f"{entry.value.syntax}: {entry.help}"[:30] in text, (args, entry.name)
    from scorebank.analysis.selection import STRATEGIES

    text = " ".join(run("select", "--help").output.replace("│", " ").split())
    assert "<<strategies>>" not in text
    assert all(f"{e.name}: {e.help}"[:25] in text for e in STRATEGIES.entries()), text
    # building the command line (and its top-level help) imports no analysis module
    code = ("import sys; from typer.testing import CliRunner; from scorebank.cli.main import app; "
            "assert CliRunner().invoke(app, ['--help']).exit_code == 0; "
            "print(sorted(m for m in sys.modules if m.startswith('scorebank.analysis')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
