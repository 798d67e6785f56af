"""Staged experiments: validation messages naming file, stage and key; a tiny experiment run
end to end whose numbers match independent computations; re-running skips everything;
deleting one retrain group re-runs only its stage; changed stages are refused unless
rerun; the shipped presets parse."""

import json
import shutil

import numpy as np
import pytest
import xarray as xr
from scipy.stats import spearmanr

from scorebank.core.errors import InvalidArgumentError
from scorebank.pipeline import experiment as X
from scorebank.pipeline.experiment import ExperimentError, StageChangedError, parse_experiment

TINY = """
[experiment]
name = "tiny"
title = "tiny <b>experiment</b>"
reproduces = "nothing, a test"
[experiment.published]
"a number" = 0.5

[stores.d]
path = "d.zarr"

[stages.score]
kind = "score"
dataset = "digits"
limit = 200
model = "mlp"
width = 16
epochs = 3
batch-size = 32
seeds = "0-1"

[stages.corr]
kind = "correlation"
specs = ["el2n@1", "loss@3", "forgetting"]

[stages.pick]
kind = "select"
score = "el2n@1"
strategy = "keep-highest"
keep = 0.5

[stages.again]
kind = "retrain"
manifest = "pick"
seeds = "0"

[stages.prune]
kind = "prune-curve"
score = "el2n@1"
strategies = "keep-highest,random"
prune = [0.5]
seeds = "0"

[stages.report]
kind = "report"
per-class = 2
"""


def bad(text, tmp_path=None):
    with pytest.raises(ExperimentError) as err:
        parse_experiment(text, "exp.toml")
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------- validation
def test_unknown_kind_names_file_stage_and_choices():
    msg = bad('[stores.s]\n[stages.a]\nkind = "scroe"\n')
    assert msg.startswith("exp.toml: stage 'a': unknown kind 'scroe'; kind takes ")
    assert "score" in msg and "prune-curve" in msg


def test_unknown_key_and_underscore_spelling():
    msg = bad('[stores.s]\n[stages.a]\nkind = "score"\nepoch = 3\n')
    assert msg.startswith("exp.toml: stage 'a': unknown key 'epoch' for kind 'score'")
    assert "epochs" in msg
    msg = bad('[stores.s]\n[stages.a]\nkind = "score"\nbatch_size = 3\n')
    assert "unknown key 'batch_size'" in msg and "did you mean 'batch-size'?" in msg


@pytest.mark.parametrize("key, value, expected", [
    ("epochs", '"3"', "key 'epochs' must be an integer, got str '3'"),
    ("lr", "true", "key 'lr' must be a number, got bool True"),
    ("augment", "1", "key 'augment' must be true or false, got int 1"),
    ("seeds", "1.5", "key 'seeds' must be a seed list"),
])
def test_wrong_types(key, value, expected):
    msg = bad(f'[stores.s]\n[stages.a]\nkind = "score"\n{key} = {value}\n')
    assert msg.startswith("exp.toml: stage 'a': " + expected)


def test_bad_values_are_validated_up_front():
    assert "exp.toml: stage 'a': " in bad('[stores.s]\n[stages.a]\nkind = "score"\nmodel = "vgg"\n')
    assert "unknown model 'vgg'" in bad('[stores.s]\n[stages.a]\nkind = "score"\nmodel = "vgg"\n')
    msg = bad('[stores.s]\n[stages.p]\nkind = "prune-curve"\nscore = "el2n@1"\nprune = [1.5]\n')
    assert msg.startswith("exp.toml: stage 'p': ") and "1.5" in msg
    msg = bad('[stores.s]\n[stages.c]\nkind = "correlation"\n')
    assert msg.startswith("exp.toml: stage 'c': key 'specs' is required")


def test_references_and_order():
    msg = bad('[stores.s]\n[stores.t]\n[stages.a]\nkind = "separation"\n')
    assert msg.startswith("exp.toml: stage 'a': no 'store'")
    msg = bad('[stores.s]\n[stages.a]\nkind = "separation"\nstore = "x"\n')
    assert "key 'store' names no [stores] table: 'x'" in msg
    msg = bad('[stores.s]\n[stages.r]\nkind = "retrain"\nmanifest = "pick"\n')
    assert msg == "exp.toml: stage 'r': key 'manifest' names no earlier select stage: 'pick'"
    msg = bad('[stores.s]\n[stages.a]\nkind = "separation"\n[stages.b]\nkind = "score"\n')
    assert msg == "exp.toml: stage 'a': uses store 's' before stage 'b' scores it"
    msg = bad('[stores.s]\n[stages.a]\nkind = "score"\n[stages.b]\nkind = "score"\n')
    assert "already scored by stage 'a'" in msg


def test_not_toml_and_unknown_tables():
    assert bad("[stages.a\n").startswith("exp.toml: not valid TOML: ")
    assert bad('[stage.a]\nkind = "score"\n').startswith("exp.toml: table 'stage': unknown table")
    assert "no stages" in bad('[stores.s]\n')


def test_report_stage_is_added_last():
    exp = parse_experiment('[stores.s]\n[stages.a]\nkind = "score"\n', "exp.toml")
    assert [s.kind for s in exp.stages] == ["score", "report"]
    assert exp.stages[0].options["seeds"] == (0, 1, 2)


def test_presets_parse_and_name_their_paper():
    names = X.preset_names()
    assert {"digits-quick", "cifar10-cpu", "data-diet-cifar10", "margins-cifar10", "cgh-label-noise",
            "easy-hard"} <= set(names)
    for exp in X.presets():
        assert exp.reproduces and exp.published, exp.name
        assert exp.stages[-1].kind == "report"
    with pytest.raises(InvalidArgumentError, match="unknown preset 'nope'; --preset takes "):
        X.load_preset("nope")


# ----------------------------------------------------------------------------- running
@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp")
    exp = parse_experiment(TINY, "tiny.toml")
    events = []
    doc = X.run_experiment(exp, out, device="cpu", progress=events.append)
    return exp, out, doc, events


def kinds(events):
    return {ev.stage.name: ev.kind for ev in events if ev.kind in ("start", "skip")}


def test_first_run_runs_every_stage(ran):
    exp, out, doc, events = ran
    assert kinds(events) == {s.name: "start" for s in exp.stages}
    # training events of the stages that train, relayed from the library (epochs 0..3 of each run)
    runs = {(ev.stage.name, ev.run_event.group, ev.run_event.seed): ev.run_event.done
            for ev in events if ev.kind == "run" and ev.run_event.kind == "epoch"}
    assert {k: v for k, v in runs.items() if k[0] == "score"} == {("score", None, 0): 4, ("score", None, 1): 4}
    assert {k[0] for k in runs} == {"score", "again", "prune"}
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == doc
    assert doc["published"] == {"a number": 0.5}
    assert set(doc["stages"]) == {"score", "corr", "pick", "again", "prune"}
    assert (out / "report" / "index.html").is_file()
    assert "tiny &lt;b&gt;experiment&lt;/b&gt;" in (out / "report" / "index.html").read_text()


def test_numbers_match_independent_computations(ran):
    _, out, doc, _ = ran
    ds = xr.open_zarr(out / "d.zarr")
    # score: final test accuracy per run read from the store
    res = doc["stages"]["score"]["results"]
    for i, seed in enumerate(ds.run.values):
        assert res["final_test_accuracy"][str(seed)] == pytest.approx(float(ds.test_accuracy.values[i, -1]))
    # correlation: Spearman of the run-averaged el2n@1 and loss@3 by scipy
    el2n = ds.el2n.sel(epoch=1).mean("run").values
    loss = ds.loss.sel(epoch=3).mean("run").values
    corr = doc["stages"]["corr"]["results"]
    assert corr["scores"] == ["el2n@1", "loss@3", "forgetting"]
    assert corr["spearman"][0][1] == pytest.approx(spearmanr(el2n, loss).statistic, abs=1e-12)
    # select: the 100 highest run-averaged el2n@1 (no ties at the cut)
    pick = doc["stages"]["pick"]["results"]
    manifest = json.loads((out / "pick.json").read_text())
    assert pick["n_kept"] == 100 == len(manifest["indices"])
    cut = np.sort(el2n)[::-1][99]
    assert set(manifest["indices"]) == set(np.flatnonzero(el2n >= cut).tolist())
    # retrain: the group's final test accuracy as stored
    group = xr.open_zarr(out / "d.zarr", group="retrain/again")
    (row,) = doc["stages"]["again"]["results"]["groups"]
    assert row["final_accuracies"] == [pytest.approx(float(group.final_test_accuracy.values[0]))]
    assert row["subset_size"] == 100
    # prune-curve: each cell's mean is its one seed's accuracy in its group
    for r in doc["stages"]["prune"]["results"]["rows"]:
        g = xr.open_zarr(out / "d.zarr", group=f"retrain/{r['group']}")
        assert r["mean"] == pytest.approx(float(g.final_test_accuracy.values[0]))
        assert r["subset_size"] == 100


def test_rerun_skips_everything_and_dry_run_says_done(ran):
    exp, out, doc, _ = ran
    before = (out / "d.zarr" / "zarr.json").stat().st_mtime_ns
    events = []
    again = X.run_experiment(exp, out, device="cpu", progress=events.append)
    assert kinds(events) == {s.name: "skip" for s in exp.stages}
    assert again == doc
    assert (out / "d.zarr" / "zarr.json").stat().st_mtime_ns == before
    assert {r.stage.name: r.status for r in X.plan(exp, out)} == {s.name: "done" for s in exp.stages}


def test_deleting_one_retrain_group_reruns_only_that_stage(ran, tmp_path):
    exp, out, doc, _ = ran
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    cell = doc["stages"]["prune"]["results"]["rows"][0]["group"]
    shutil.rmtree(copy / "d.zarr" / "retrain" / cell)
    assert {r.stage.name: r.status for r in X.plan(exp, copy)}["prune"] == "to run"
    events = []
    again = X.run_experiment(exp, copy, device="cpu", progress=events.append)
    assert [ev.stage.name for ev in events if ev.kind == "start"] == ["prune"]
    assert again["stages"]["prune"]["results"]["rows"][0]["mean"] == doc["stages"]["prune"]["results"]["rows"][0]["mean"]


def test_changed_stage_is_refused_unless_rerun(ran, tmp_path):
    exp, out, doc, _ = ran
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    changed = parse_experiment(TINY.replace('[stages.corr]\nkind = "correlation"\nspecs = ["el2n@1", "loss@3", '
                                            '"forgetting"]', '[stages.corr]\nkind = "correlation"\nspecs = '
                                            '["el2n@1", "loss@3"]'), "tiny.toml")
    with pytest.raises(StageChangedError) as err:
        X.run_experiment(changed, copy, device="cpu")
    assert str(err.value).startswith("tiny.toml: stage 'corr' changed since it ran (specs was ")
    assert "pass --rerun corr" in str(err.value)
    assert {r.stage.name: r.status for r in X.plan(changed, copy)}["corr"] == "changed"
    events = []
    again = X.run_experiment(changed, copy, device="cpu", rerun=["corr"], progress=events.append)
    assert [ev.stage.name for ev in events if ev.kind == "start"] == ["corr", "report"]
    assert again["stages"]["corr"]["results"]["scores"] == ["el2n@1", "loss@3"]
    with pytest.raises(InvalidArgumentError, match="--rerun 'nope' names no stage of tiny.toml"):
        X.run_experiment(changed, copy, rerun=["nope"])


def test_changed_score_configuration_is_refused(ran, tmp_path):
    exp, out, _, _ = ran
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / X.LEDGER).unlink()  # no ledger: the store's configuration alone tells
    changed = parse_experiment(TINY.replace("epochs = 3", "epochs = 4"), "tiny.toml")
    rows = {r.stage.name: r for r in X.plan(changed, copy)}
    assert rows["score"].status == "changed" and "epochs: " in rows["score"].detail
    with pytest.raises(StageChangedError, match="stage 'score' changed since it ran"):
        X.run_experiment(changed, copy, device="cpu")


def test_a_changed_selection_makes_its_retrain_stale(ran, tmp_path):
    exp, out, doc, _ = ran
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    changed = parse_experiment(TINY.replace("keep = 0.5", "keep = 0.4"), "tiny.toml")
    with pytest.raises(StageChangedError, match="stage 'again' would change what it wrote before .*pass --rerun again"):
        X.run_experiment(changed, copy, device="cpu", rerun=["pick"])
    assert {r.stage.name: r.status for r in X.plan(changed, copy)}["again"] == "changed"
    again = X.run_experiment(changed, copy, device="cpu", rerun=["again"])
    (row,) = again["stages"]["again"]["results"]["groups"]
    assert row["subset_size"] == again["stages"]["pick"]["results"]["n_kept"] == 80


def test_easy_hard_stage_records_and_skips(ran, tmp_path):
    exp, out, doc, _ = ran
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    text = TINY.replace('[stages.report]', '[stages.eh]\nkind = "easy-hard"\nthreshold = 0.3\nseeds = "0"\n'
                                          'epochs = 2\n\n[stages.report]')
    withe = parse_experiment(text, "tiny.toml")
    events = []
    res = X.run_experiment(withe, copy, device="cpu", progress=events.append)
    assert [ev.stage.name for ev in events if ev.kind == "start"] == ["eh", "report"]
    got = res["stages"]["eh"]["results"]
    stored = xr.open_zarr(copy / "d.zarr", group="easy_hard/eh")
    mean = stored["mean_accuracy"].values  # (trained_on, evaluated_on) in the attrs' order
    for i, t in enumerate(stored.attrs["trained_on"]):
        for j, e in enumerate(stored.attrs["evaluated_on"]):
            assert got["accuracy"][t][e] == pytest.approx(float(mean[i, j]))
    assert sum(got["part_size"].values()) == 200
    events = []
    X.run_experiment(withe, copy, device="cpu", progress=events.append)
    assert [ev.stage.name for ev in events if ev.kind == "start"] == []
