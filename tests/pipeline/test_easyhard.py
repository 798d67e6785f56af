import json

import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

from scorebank.cli.main import app
from scorebank.pipeline.easyhard import easy_hard, split_easy_hard
from scorebank.pipeline.scoring import score
from scorebank.stores.errors import InvalidArgumentError


def test_split_sizes_and_disjointness():
    hard = np.zeros(100, dtype=bool)
    hard[::4] = True  # 25 hard, 75 easy
    s = split_easy_hard(hard, 0.2, seed=3)
    assert (len(s.easy_train), len(s.easy_test), len(s.hard_train), len(s.hard_test)) == (60, 15, 20, 5)
    together = np.concatenate([s.easy_train, s.easy_test, s.hard_train, s.hard_test])
    assert sorted(together.tolist()) == list(range(100))  # a partition
    assert not hard[s.easy_train].any() and not hard[s.easy_test].any()
    assert hard[s.hard_train].all() and hard[s.hard_test].all()
    again = split_easy_hard(hard, 0.2, seed=3)
    np.testing.assert_array_equal(again.easy_test, s.easy_test)
    assert not np.array_equal(split_easy_hard(hard, 0.2, seed=4).easy_test, s.easy_test)
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(InvalidArgumentError, match="--test-fraction"):
            split_easy_hard(hard, bad, seed=0)
    with pytest.raises(InvalidArgumentError, match="empty"):
        split_easy_hard(np.r_[True, np.zeros(50, bool)], 0.2, seed=0)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    from scorebank.pipeline.config import resolve_config

    path = tmp_path_factory.mktemp("eh") / "s.zarr"
    cfg = resolve_config(dataset="digits", limit=300, model="mlp", width=32, epochs=6, batch_size=32)
    score(cfg, (0, 1), path, device="cpu")
    return path, cfg


def test_two_by_two_table_wiring(scored, tmp_path):
    import shutil

    from scorebank.analysis.difficulty import difficulty
    from scorebank.pipeline.datasets import load_dataset
    from scorebank.pipeline.training import Trainer, clean_pass, to_device_data

    path = tmp_path / "s.zarr"
    shutil.copytree(scored[0], path)
    events = []
    res = easy_hard(path, seeds=(5,), threshold=0.5, run=1, test_fraction=0.2, split_seed=2, device="cpu",
                    overrides={"epochs": 2}, progress=events.append)
    name = "threshold0.5-run1-split2"
    assert [(e.group, e.kind, e.epoch, e.done, e.total) for e in events] == [
        (f"{name}/{part}-train", kind, epoch, done, 3) for part in ("easy", "hard")
        for kind, epoch, done in (("start", 0, 0), ("epoch", 0, 1), ("epoch", 1, 2), ("epoch", 2, 3))]
    hard = difficulty(path, threshold=0.5, runs=[1])["hard"].values[0]
    split = split_easy_hard(hard, 0.2, 2)
    np.testing.assert_array_equal(res["easy_test_indices"].values, split.easy_test)
    assert res.part_size.values.tolist() == [len(split.easy_train), len(split.easy_test), len(split.hard_train),
                                             len(split.hard_test)]
    # independently: a network trained on hard-train, evaluated on each part
    data = load_dataset("digits", limit=300)
    dd = to_device_data(data, data.train_labels, torch.device("cpu"))
    cfg = scored[1].__class__(**{**scored[1].__dict__, "epochs": 2})
    # seed 5's fresh network: initialisation seed RETRAIN_SEED_OFFSET + 5 (never the scoring run's)
    trainer = Trainer(cfg, dd, 1_000_005, torch.device("cpu"), indices=torch.as_tensor(split.hard_train))
    for _ in range(2):
        trainer.train_epoch(record=False)
    correct = clean_pass(trainer.model, dd.train_x, dd.train_y, 1024)["correct"].numpy()
    expected = [correct[i].mean() for i in (split.easy_train, split.easy_test, split.hard_train, split.hard_test)]
    np.testing.assert_allclose(res.accuracy.sel(seed=5, trained_on="hard").values, expected)
    assert res.generalization_gap.sel(seed=5, trained_on="hard").item() == pytest.approx(expected[2] - expected[3])
    stored = xr.open_zarr(path, group="easy_hard/threshold0.5-run1-split2")
    np.testing.assert_array_equal(stored.accuracy.values, res.accuracy.values)
    assert stored.attrs["trained_on"] == ["easy", "hard"]
    assert stored.attrs["evaluated_on"] == ["easy-train", "easy-test", "hard-train", "hard-test"]
    xr.open_zarr(path)  # the store's root still opens


def test_difficulty_accuracy(scored, tmp_path):
    from scorebank.analysis.difficulty_levels import accuracy_by_difficulty

    path = scored[0]
    res = accuracy_by_difficulty(path, run=1, epoch=6, threshold=0.5)
    ds = xr.open_zarr(path)
    hard = []
    for r in range(2):  # independent: first recorded epoch with train accuracy >= 0.5
        e = int(np.flatnonzero(ds.train_accuracy.values[r] >= 0.5)[0])
        hard.append(~ds.correct.values[r, e])
    d = np.sum(hard, axis=0)
    correct = ds.correct.values[1, 6]
    for level in range(3):
        assert res["count"].sel(difficulty=level).item() == (d == level).sum()
        if (d == level).any():
            assert res["accuracy"].sel(difficulty=level).item() == pytest.approx(correct[d == level].mean())
    r = CliRunner().invoke(app, ["difficulty-accuracy", str(path), "--run", "1", "--epoch", "6", "--json",
                                 "--plot", str(tmp_path / "levels.png")])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [(lv["difficulty"], lv["count"]) for lv in doc["levels"]] == [(k, int((d == k).sum())) for k in range(3)]
    assert (tmp_path / "levels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = CliRunner().invoke(app, ["difficulty-accuracy", str(path), "--run", "1", "--epoch", "99"])
    assert r.exit_code == 2 and "99" in r.output


def test_easy_hard_cli_refuses_bad_fraction(scored):
    r = CliRunner().invoke(app, ["easy-hard", str(scored[0]), "--test-fraction", "1.5", "--device", "cpu"])
    assert r.exit_code == 2 and "--test-fraction must be in (0, 1), got 1.5" in r.output


def _listing(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.name != ".scorebank.lock")


def test_bad_group_name_and_divergence_write_nothing(scored, tmp_path):
    import shutil

    from scorebank.stores.errors import RunFailedError

    path = tmp_path / "s.zarr"
    shutil.copytree(scored[0], path)
    before = _listing(path)
    with pytest.raises(InvalidArgumentError, match=r"'\.\./out'"):
        easy_hard(path, seeds=(0,), run=1, device="cpu", name="../out", overrides={"epochs": 1})
    with pytest.raises(RunFailedError, match="seed 0 trained on easy-train diverged .* in epoch 1"):
        easy_hard(path, seeds=(0,), run=1, device="cpu", overrides={"epochs": 2, "lr": 1e30})
    assert _listing(path) == before
