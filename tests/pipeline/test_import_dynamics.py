"""import-dynamics: data maps JSONL, numpy logits and Data Diet score arrays into stores."""

import json

import numpy as np
import pytest
import typer
import xarray as xr
from typer.testing import CliRunner

from scorebank.cli.import_dynamics import register
from scorebank.pipeline.import_dynamics import FORMATS, ImportFormatError, import_dynamics

N, K = 12, 3


def cli():
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # two commands: typer keeps the command name
    return app


def invoke(*args):
    return CliRunner().invoke(cli(), ["import-dynamics", *map(str, args)])


def reference(logits, labels):
    """margin, EL2N, loss and correctness from their definitions, in float64."""
    f = logits.astype(np.float64)
    rows = np.arange(len(labels))
    true = f[rows, labels]
    other = f.copy()
    other[rows, labels] = -np.inf
    margin = true - other.max(1)
    p = np.exp(f - f.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(f.shape[1])[labels]
    el2n = np.linalg.norm(p - onehot, axis=1)
    loss = -np.log(p[rows, labels])
    return margin, el2n, loss, margin > 0


def write_datamaps(directory, logits, guids, gold, first=0, shuffle_seed=0):
    """Files as cartography's log_training_dynamics writes them (pandas to_json lines)."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(shuffle_seed)
    for e in range(logits.shape[0]):
        order = rng.permutation(len(guids))  # the training order of that epoch
        with open(directory / f"dynamics_epoch_{e + first}.jsonl", "w") as f:
            for i in order:
                f.write(json.dumps({"guid": int(guids[i]), f"logits_epoch_{e + first}": logits[e, i].tolist(),
                                    "gold": int(gold[i])}) + "\n")


def test_datamaps(tmp_path):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, N, K)).astype(np.float32)
    guids = 1000 + 7 * rng.permutation(N)
    gold = rng.integers(0, K, N)
    write_datamaps(tmp_path / "model" / "training_dynamics", logits, guids, gold)
    result = invoke("datamaps", tmp_path / "model", "--out", tmp_path / "dm.zarr", "--seed", 4)
    assert result.exit_code == 0, result.output
    ds = xr.open_zarr(tmp_path / "dm.zarr")
    order = np.argsort(guids)
    assert ds.original_index.values.tolist() == sorted(guids.tolist())
    np.testing.assert_array_equal(ds.label.values, gold[order])
    assert ds.run.values.tolist() == [4] and ds.sizes["epoch"] == 4  # file e = epoch e + 1
    assert ds.completed.values.tolist() == [[False, True, True, True]]
    for e in range(3):
        margin, el2n, loss, correct = reference(logits[e, order], gold[order])
        np.testing.assert_allclose(ds.margin.sel(run=4, epoch=e + 1).values, margin, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ds.el2n.sel(run=4, epoch=e + 1).values, el2n, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ds.loss.sel(run=4, epoch=e + 1).values, loss, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ds.train_correct.sel(run=4, epoch=e + 1).values, correct)
    assert json.loads(ds.attrs["config"])["imported_from"] == "datamaps"
    # files numbered from 1 (some forks) keep their numbers
    write_datamaps(tmp_path / "from1", logits, guids, gold, first=1)
    import_dynamics("datamaps", tmp_path / "from1", tmp_path / "dm1.zarr", seed=4)
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "dm1.zarr").margin.values, ds.margin.values)


@pytest.mark.parametrize("damage, message", [
    ("bad json", "line 2 is not JSON"),
    ("no gold", "expected {'guid': int"),
    ("other guid", "every epoch file must list the same guids"),
    ("nan", "non-finite logits"),
    ("gap", "not consecutive"),
])
def test_datamaps_bad_input_one_line_nothing_written(tmp_path, damage, message):
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, N, K))
    write_datamaps(tmp_path / "td", logits, np.arange(N), rng.integers(0, K, N))
    f1 = tmp_path / "td" / "dynamics_epoch_1.jsonl"
    lines = f1.read_text().splitlines()
    record = json.loads(lines[1])
    if damage == "bad json":
        lines[1] = lines[1][:-3]
    elif damage == "no gold":
        del record["gold"]
        lines[1] = json.dumps(record)
    elif damage == "other guid":
        record["guid"] = 999
        lines[1] = json.dumps(record)
    elif damage == "nan":
        lines[1] = lines[1].replace(str(record["logits_epoch_1"][0]), "NaN")
    else:
        f1.rename(tmp_path / "td" / "dynamics_epoch_5.jsonl")
        f1 = tmp_path / "td" / "dynamics_epoch_5.jsonl"
    if damage != "gap":
        f1.write_text("\n".join(lines) + "\n")
    result = invoke("datamaps", tmp_path / "td", "--out", tmp_path / "out.zarr")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 3  # one message (rich may wrap it)
    assert not (tmp_path / "out.zarr").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_logits_npz_and_npy(tmp_path):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 3, N, K)).astype(np.float32)
    labels = rng.integers(0, K, N)
    inflight = rng.random((2, 3, N)) < 0.5
    np.savez(tmp_path / "d.npz", logits=logits, labels=labels, seeds=np.array([5, 7]), epochs=np.array([0, 2, 4]),
             train_correct=inflight)
    import_dynamics("logits", tmp_path / "d.npz", tmp_path / "a.zarr")
    ds = xr.open_zarr(tmp_path / "a.zarr")
    assert ds.run.values.tolist() == [5, 7] and ds.sizes["epoch"] == 5
    assert ds.recorded.values.tolist() == [[True, False, True, False, True]] * 2
    for i, seed in enumerate((5, 7)):
        for j, epoch in enumerate((0, 2, 4)):
            margin, el2n, loss, correct = reference(logits[i, j], labels)
            np.testing.assert_allclose(ds.margin.sel(run=seed, epoch=epoch).values, margin, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(ds.el2n.sel(run=seed, epoch=epoch).values, el2n, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(ds.correct.sel(run=seed, epoch=epoch).values, correct)
            np.testing.assert_array_equal(ds.train_correct.sel(run=seed, epoch=epoch).values,
                                          inflight[i, j] if epoch else np.zeros(N, bool))
    np.save(tmp_path / "l.npy", logits)
    np.save(tmp_path / "labels.npy", labels)
    result = invoke("logits", tmp_path / "l.npy", "--out", tmp_path / "b.zarr")
    assert result.exit_code == 2 and "--labels" in result.output
    result = invoke("logits", tmp_path / "l.npy", "--out", tmp_path / "b.zarr", "--labels", tmp_path / "labels.npy")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "b.zarr").margin.sel(run=1, epoch=1).values,
                                  ds.margin.sel(run=7, epoch=2).values)


def test_pickle_is_never_loaded(tmp_path):
    np.save(tmp_path / "evil.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(tmp_path / "labels.npy", np.zeros(2, np.int64))
    with pytest.raises(ImportFormatError, match="without pickle"):
        import_dynamics("logits", tmp_path / "evil.npy", tmp_path / "x.zarr", labels=str(tmp_path / "labels.npy"))
    np.savez(tmp_path / "evil.npz", logits=np.array([1, None], dtype=object), labels=np.zeros(2, np.int64))
    with pytest.raises(ImportFormatError, match="without pickle"):
        import_dynamics("logits", tmp_path / "evil.npz", tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()


def write_datadiet(root, scores):
    """``exps/EXP/run_<r>/<kind>/ckpt_<step>.npy`` as get_run_score.py saves them."""
    for (run, kind, step), values in scores.items():
        d = root / f"run_{run}" / kind
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / f"ckpt_{step}.npy", values)


def test_datadiet(tmp_path):
    rng = np.random.default_rng(4)
    labels = rng.integers(0, K, N)
    np.save(tmp_path / "labels.npy", labels)
    scores = {(r, kind, step): rng.random(N).astype(np.float32)
              for r in (0, 1) for kind, step in (("error_l2_norm_scores", 0), ("error_l2_norm_scores", 780),
                                                 ("grad_norm_scores", 0))}
    write_datadiet(tmp_path / "exp", scores)
    result = invoke("datadiet", tmp_path / "exp", "--out", tmp_path / "dd.zarr", "--labels", tmp_path / "labels.npy")
    assert result.exit_code == 2 and "--steps-per-epoch" in result.output
    result = invoke("datadiet", tmp_path / "exp", "--out", tmp_path / "dd.zarr", "--labels", tmp_path / "labels.npy",
                    "--steps-per-epoch", 400)
    assert result.exit_code == 2 and "does not divide checkpoint step 780" in result.output
    result = invoke("datadiet", tmp_path / "exp", "--out", tmp_path / "dd.zarr", "--labels", tmp_path / "labels.npy",
                    "--steps-per-epoch", 390)
    assert result.exit_code == 0, result.output
    ds = xr.open_zarr(tmp_path / "dd.zarr")
    assert ds.run.values.tolist() == [0, 1] and ds.sizes["epoch"] == 3
    for (r, kind, step), values in scores.items():
        var = "el2n" if kind == "error_l2_norm_scores" else "grand"
        np.testing.assert_array_equal(ds[var].sel(run=r, epoch=step // 390).values, values)
    assert np.isnan(ds.grand.sel(epoch=2).values).all() and np.isnan(ds.margin.values).all()
    np.testing.assert_array_equal(ds.label.values, labels)


def test_imported_stores_work_with_analyses(tmp_path):
    from scorebank.cli.main import app

    rng = np.random.default_rng(5)
    write_datamaps(tmp_path / "td", rng.normal(size=(4, N, K)), np.arange(N), rng.integers(0, K, N))
    import_dynamics("datamaps", tmp_path / "td", tmp_path / "dm.zarr")
    runner = CliRunner()
    for args in (["analyze", str(tmp_path / "dm.zarr"), "forgetting"],
                 ["select", str(tmp_path / "dm.zarr"), "--score", "el2n@4", "--strategy", "keep-highest",
                  "--keep", "0.5", "--out", str(tmp_path / "keep.json")],
                 ["info", str(tmp_path / "dm.zarr")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    assert len(json.loads((tmp_path / "keep.json").read_text())["indices"]) == N // 2


def test_registry_lists_formats():
    assert FORMATS.names() == ("datamaps", "logits", "datadiet")
    result = invoke("nope", "x", "--out", "y")
    assert result.exit_code == 2 and "datamaps, logits or datadiet" in result.output
