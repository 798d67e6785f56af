"""Outside models and data through the CLI (score, then retrain/compress rebuilding them from
the store's configuration), and the refusal of stores written through the recorder API."""

from __future__ import annotations

import json
import textwrap
import uuid

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from scorebank.cli.main import app

runner = CliRunner()
TINY = ["--width", "8", "--batch-size", "16", "--quiet", "--device", "cpu"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A user module with a model factory, an npz of float features, and a store scored on them."""
    root = tmp_path_factory.mktemp("outside")
    module = f"cli_user_models_{uuid.uuid4().hex[:8]}"
    (root / f"{module}.py").write_text(textwrap.dedent("""
        from torch import nn

        def make(input_shape, num_classes, width):
            c, h, w = input_shape
            return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), nn.ReLU(), nn.Linear(width, num_classes))
    """))
    rng = np.random.default_rng(0)
    y = np.arange(48) % 3
    x = rng.normal(scale=0.1, size=(48, 5)) + 3 * np.eye(5)[y]  # separable: compress starts from 100% accuracy
    np.savez(root / "feat.npz", x_train=x, y_train=y, x_test=x[:12], y_test=y[:12])
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(root))
    store = root / "s.zarr"
    r = invoke("score", *TINY, "--model", f"{module}:make", "--dataset", f"npz:{root / 'feat.npz'}", "--epochs", "4",
               "--lr", "0.2", "--seeds", "0", "--store", store)
    assert r.exit_code == 0, r.output
    yield root, module, store
    mp.undo()


def test_score_records_the_import_path_and_data(outside):
    root, module, store = outside
    from scorebank.stores.location import open_scores

    ds = open_scores(store)
    cfg = json.loads(ds.attrs["config"])
    assert cfg["model"] == f"{module}:make" and cfg["dataset"] == f"npz:{root / 'feat.npz'}"
    from scorebank.pipeline.datasets import load_dataset

    assert ds.attrs["dataset_fingerprint"] == load_dataset(f"npz:{root / 'feat.npz'}").fingerprint
    assert bool(ds["completed"].values.all())


def test_retrain_and_compress_rebuild_outside_models_and_data(outside, tmp_path, monkeypatch):
    root, module, store = outside
    monkeypatch.chdir(tmp_path)  # compress draws compress-NAME.png here
    from scorebank.analysis.selection import select, to_manifest
    from scorebank.stores.manifest import write_manifest

    sel = select(store, "keep-highest", score="el2n@2", fraction=0.5)
    write_manifest(tmp_path / "keep.json", to_manifest(sel, store, name="half"))
    r = invoke("retrain", store, "--manifest", tmp_path / "keep.json", "--seeds", "0", "--epochs", "1", "--quiet",
               "--device", "cpu")
    assert r.exit_code == 0, r.output
    r = invoke("compress", store, "--run", "0", "--keep", "40", "--epochs", "1", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "compress-run0-immediate-keep40.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--model", "torchvision:resnt18"], "unknown torchvision model 'resnt18'; did you mean resnet18"),
    (["--model", "no_such_pkg_q.models:make"], "cannot import 'no_such_pkg_q.models'"),
    (["--model", "json:dumps"], "cannot be called as (input_shape, num_classes, width)"),
    (["--dataset", "no_such_pkg_q.data:load"], "cannot import 'no_such_pkg_q.data'"),
    (["--model", "mlp", "--cifar-stem"], "has none to swap"),
])
def test_score_refuses_bad_outside_names_in_one_line(tmp_path, args, message):
    r = invoke("score", *TINY, "--limit", "40", "--epochs", "1", *args, "--store", tmp_path / "x.zarr")
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split()) and "Traceback" not in r.output
    assert not (tmp_path / "x.zarr").exists()


def recorder_store(path, user_config: dict, seed: int = 0):
    """A two-epoch store written through the recorder API by a plain loop."""
    from scorebank.pipeline.record import Recorder

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 4, generator=g), torch.arange(30) % 2
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder.create(path, labels=y.numpy(), epochs=2, dataset="mine", config=user_config, inputs=x.numpy())
    with rec.run(seed=seed) as run:
        run.record_epoch(0, model, x)
        for epoch in (1, 2):
            for idx in torch.arange(30).split(10):
                logits = model(x[idx])
                run.observe(epoch, idx, logits, y[idx])
                opt.zero_grad()
                F.cross_entropy(logits, y[idx]).backward()
                opt.step()
            run.record_epoch(epoch, model, x)
    return path


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("recorded")
    store = recorder_store(root / "rec.zarr", {"model": "wrn-28-10", "lr": 0.1})
    from scorebank.analysis.selection import select, to_manifest
    from scorebank.stores.manifest import write_manifest

    write_manifest(root / "keep.json", to_manifest(select(store, "keep-highest", score="el2n@2", fraction=0.5),
                                                   store, name="half"))
    return root, store


@pytest.mark.parametrize("command", [
    ["retrain", "{store}", "--manifest", "{root}/keep.json", "--seeds", "0"],
    ["prune-curve", "{store}", "--score", "el2n@2", "--prune", "0.5", "--seeds", "0"],
    ["compress", "{store}", "--run", "0", "--keep", "10"],
    ["easy-hard", "{store}"],
])
def test_commands_that_rebuild_networks_refuse_recorder_stores(recorded, command):
    root, store = recorded
    before = sorted(p.relative_to(store).as_posix() for p in store.rglob("*"))
    r = invoke(*[a.format(store=store, root=root) for a in command], "--device", "cpu")
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "was written through the recorder API" in text and "no model factory and no data set" in text
    assert len(r.output.strip().splitlines()) <= 3 and "Traceback" not in r.output  # one line, wrapped at most
    assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*")) == before


def test_recorder_refusal_source_matches_the_recorder():
    from scorebank.pipeline.outside import RECORDER_SOURCE
    from scorebank.pipeline.record import CONFIG_SOURCE

    assert RECORDER_SOURCE == CONFIG_SOURCE


def test_merge_tells_recorder_stores_apart_by_their_user_config(tmp_path):
    from scorebank.stores.merge import DuplicateRunsError, merge_stores

    a = recorder_store(tmp_path / "a.zarr", {"model": "wrn-28-10", "lr": 0.1})
    b = recorder_store(tmp_path / "b.zarr", {"model": "wrn-28-10", "lr": 0.05})
    c = recorder_store(tmp_path / "c.zarr", {"model": "wrn-28-10", "lr": 0.1})
    merged = merge_stores([a, b], tmp_path / "ab.zarr")
    assert len(merged.runs) == 2 and merged.runs[0]["config_hash"] != merged.runs[1]["config_hash"]
    with pytest.raises(DuplicateRunsError, match="seed 0 with configuration"):
        merge_stores([a, c], tmp_path / "ac.zarr")


def test_config_hash_of_recorder_configs_hashes_the_text():
    import hashlib

    from scorebank.stores.archive import config_hash

    text = json.dumps({"source": "recorder", "dataset": "mine", "epochs": 2, "features": [], "user": {"lr": 0.1}},
                      sort_keys=True)
    assert config_hash(text) == hashlib.sha256(text.encode()).hexdigest()[:16]
    from scorebank.core.config import ScoreConfig

    plain = ScoreConfig(epochs=3).to_json()
    assert config_hash(plain) == ScoreConfig(epochs=3).identity_hash()
