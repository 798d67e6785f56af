"""Dynamic compression after data separation (margins paper Sec. 5, appendix C.5)."""

import os

import numpy as np
import pytest
import torch
import xarray as xr

from scorebank.pipeline.compress import (NotSeparatedError, compress, continuous_sizes, continuous_stages,
                                         plot_compression, read_compression, resolve_compress_config)
from scorebank.pipeline.config import resolve_config
from scorebank.pipeline.models import norm_product
from scorebank.pipeline.scoring import read_store_config, score
from scorebank.pipeline.training import clean_pass, new_model, to_device_data
from scorebank.stores.errors import InvalidArgumentError, StoreExistsError
from scorebank.stores.location import open_scores
from scorebank.stores.summary import summarize

N = 200  # the examples of ``data`` (tests/conftest.py)


# ----------------------------------------------------------------------------- schedule arithmetic
def test_continuous_schedule_at_the_papers_size_is_appendix_c5():
    expected = (list(range(45_000, 9_999, -5_000)) + list(range(9_000, 999, -1_000)) + list(range(900, 99, -100))
                + list(range(90, 9, -10)) + list(range(9, 0, -1)))
    assert list(continuous_sizes(50_000, 1)) == expected
    assert continuous_stages(50_000, 1) == ((5000, 10000), (1000, 1000), (100, 100), (10, 10), (1, 1))
    # compressing to 200: the 100-chunk stage stops at 200 and nothing smaller follows
    assert continuous_sizes(50_000, 200)[-3:] == (400, 300, 200)


def test_continuous_schedule_scales_with_the_data_set_size():
    # s = 1437 / 50000: chunks 143.7 -> 144, 28.74 -> 29, 2.874 -> 3, then 1; thresholds 287, 29, 3 (raised to keep)
    assert continuous_stages(1437, 20) == ((144, 287), (29, 29), (3, 20), (1, 20), (1, 20))
    assert continuous_sizes(1437, 20) == (1293, 1149, 1005, 861, 717, 573, 429, 287,
                                          258, 229, 200, 171, 142, 113, 84, 55, 29, 26, 23, 20)
    # twice the paper's size: chunks and thresholds double, the last stage still ends at keep
    sizes = continuous_sizes(100_000, 1)
    assert sizes[:3] == (90_000, 80_000, 70_000) and 20_000 in sizes and 19_000 not in sizes
    assert sizes[-4:] == (6, 4, 2, 1)
    # tiny data: every chunk is at least one example
    assert continuous_sizes(200, 150) == (180, 160, 150)
    assert continuous_sizes(200, 200) == ()
    for n, keep in ((200, 1), (1437, 7), (60_000, 33)):
        s = continuous_sizes(n, keep)
        assert s[-1] == keep and all(a > b for a, b in zip((n,) + s, s))
    with pytest.raises(InvalidArgumentError, match="--keep must be an integer in 1..200"):
        continuous_sizes(200, 201)
    with pytest.raises(InvalidArgumentError, match="got 0"):
        continuous_sizes(200, 0)


# ----------------------------------------------------------------------------- stores
STORE_CONFIG = dict(width=64, epochs=8, batch_size=20)
STORE_BUILD = dict(copy_to="sep.zarr")


@pytest.fixture
def store(store):
    """A fresh copy (tests/conftest.py) of one run that separates its 200 training examples
    at epoch 7 of 8."""
    (run,) = summarize(open_scores(store)).runs
    assert run.separation_epoch is not None and run.separation_epoch <= 8
    return store


def listing(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, files in os.walk(path) for f in files)


def checkpoint_margins(store, data):
    """Normalised margins of the run's checkpointed network, computed independently."""
    cfg = read_store_config(store)
    dd = to_device_data(data, data.train_labels, torch.device("cpu"))
    model = new_model(cfg, dd, 0, torch.device("cpu"))
    model.load_state_dict(torch.load(store / "checkpoints" / "run-0.pt", weights_only=True)["model"])
    return (clean_pass(model, dd.train_x, dd.train_y, 1024)["margin"].double() / norm_product(model)).numpy()


def test_immediate_keeps_the_smallest_normalised_margins(store, data, tmp_path):
    cfg = resolve_compress_config(read_store_config(store), run=0, keep=20, epochs=4)
    assert cfg.momentum == 0.9 and cfg.batch_size is None  # the store's; full batch
    assert cfg.lr is None  # taken at the checkpoint's epoch by compress
    res = compress(store, cfg, device="cpu", data=data)
    assert res.config.lr == 0.05  # the store's constant schedule at checkpoint epoch 8
    traj = res.trajectory
    nm = checkpoint_margins(store, data)
    expected = np.zeros(N, dtype=bool)
    expected[np.lexsort((np.arange(N), nm))[:20]] = True
    np.testing.assert_array_equal(traj.kept[1], expected)
    assert traj.kept[0].all() and traj.stage_size == [N, 20] and traj.stage_epochs == [0, 4]
    assert traj.stage_of_step == [0, 1, 1, 1, 1, 1] and traj.epoch_in_stage == [0, 0, 1, 2, 3, 4]
    assert traj.examples_left == [N, 20, 20, 20, 20, 20]
    np.testing.assert_allclose(traj.ranking_margin[1], nm, rtol=1e-6)
    assert res.start["separation_epoch"] <= res.start["checkpoint_epoch"] == 8
    ds = read_compression(store, "run0-immediate-keep20")
    assert dict(ds.sizes) == {"step": 6, "stage": 2, "example": N}
    np.testing.assert_array_equal(ds.kept.values[1], expected)
    np.testing.assert_allclose(ds.test_error.values, traj.test_error, rtol=1e-6)
    assert ds.attrs["start"]["run"] == 0 and '"keep": 20' in ds.attrs["compress"] and '"lr": 0.05' in ds.attrs["compress"]
    assert open_scores(store).sizes["run"] == 1  # the root still opens (consolidated)
    png = plot_compression(traj, tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_continuous_removes_chunks_and_trains_until_separated(store, data):
    cfg = resolve_compress_config(read_store_config(store), run=0, schedule="continuous", keep=150,
                                  max_epochs_per_stage=3, batch_size=25)
    traj = compress(store, cfg, name="cont", device="cpu", data=data).trajectory
    assert traj.stage_size == [N, 180, 160, 150]
    for k in range(1, 4):
        prev, cur = traj.kept[k - 1], traj.kept[k]
        assert not (cur & ~prev).any()  # nested: removed examples never come back
        ranked = np.flatnonzero(prev)
        rm = traj.ranking_margin[k]
        assert np.isnan(rm[~prev]).all() and not np.isnan(rm[prev]).any()
        order = ranked[np.lexsort((ranked, rm[ranked]))]
        np.testing.assert_array_equal(np.flatnonzero(cur), np.sort(order[:cur.sum()]))  # largest margins removed
        assert traj.stage_epochs[k] in (1, 2, 3)
        end = traj.stage_end_rows()[k]
        assert traj.stage_separated[k] == (traj.train_error[end] == 0.0)
        if traj.stage_epochs[k] < 3:  # stopped early only because the remaining set was separated
            assert traj.stage_separated[k]
    assert len(traj.test_error) == 1 + sum(e + 1 for e in traj.stage_epochs[1:])
    ds = xr.open_zarr(store, group="compress/cont")
    assert ds.stage_size.values.tolist() == [N, 180, 160, 150]


def test_progress_events_reach_the_last_stage(store, data):
    """The bar's total is the number of stages after stage 0, and the last event says all of
    them are done (the bar used to stop at 16/17)."""
    from scorebank.pipeline.lifecycle import ProgressEvent

    events = []
    cfg = resolve_compress_config(read_store_config(store), run=0, schedule="continuous", keep=150,
                                  max_epochs_per_stage=2, batch_size=25)
    traj = compress(store, cfg, name="events", device="cpu", data=data, progress=events.append).trajectory
    n_stages = len(traj.stage_size) - 1
    assert all(isinstance(e, ProgressEvent) and e.total == n_stages and e.group == "events" for e in events)
    assert [e.done for e in events if e.kind == "stage"] == list(range(1, n_stages + 1))
    assert (events[-1].kind, events[-1].done) == ("stage", n_stages)
    measured = [e for e in events if e.kind == "epoch"]
    assert len(measured) == len(traj.test_error)
    assert [(e.stage, e.epoch_in_stage) for e in measured] == list(zip(traj.stage_of_step, traj.epoch_in_stage))
    assert all(e.done == max(0, e.stage - 1) for e in measured)


# ----------------------------------------------------------------------------- refused inputs
def test_run_without_separation_is_refused(tmp_path, data):
    cfg = resolve_config(dataset="digits", limit=N, model="mlp", width=8, epochs=1, batch_size=50, lr=0.01)
    path = tmp_path / "young.zarr"
    score(cfg, (3,), path, device="cpu", data=data)
    best = float(np.nanmax(open_scores(path).train_accuracy.values))
    before = listing(path)
    with pytest.raises(NotSeparatedError, match=rf"run 3 never separated .* reached epoch 1 with best recorded "
                                                rf"training accuracy {best!r}"):
        compress(path, resolve_compress_config(cfg, run=3, keep=10), device="cpu", data=data)
    assert listing(path) == before


@pytest.mark.parametrize("kwargs, message", [
    (dict(keep=N + 1), "--keep must be an integer in 1..200 (the training set has 200 examples), got 201"),
    (dict(run=7), "--run 7 is not a run of"),
    (dict(schedule="gradual"), "unknown --schedule 'gradual'"),
    (dict(batch_size=0), "--batch-size must be an integer >= 1"),
    (dict(epochs=10**12), "--epochs must be an integer >= 1, got 1000000000000; the maximum is 100000"),
    (dict(schedule="continuous", max_epochs_per_stage=10**9), "--max-epochs-per-stage must be an integer >= 1, got "
                                                              "1000000000; the maximum is 100000"),
    (dict(batch_size=10**9), "got 1000000000; the maximum is 1000000"),
    (dict(eval_batch_size=10**9), "--eval-batch-size must be an integer >= 1, got 1000000000; the maximum is 1000000"),
    (dict(min_epochs_per_stage=5, max_epochs_per_stage=2), "--min-epochs-per-stage must be an integer in 1..--max"),
    (dict(lr=-0.1), "--lr must be a positive number, got -0.1"),
    (dict(lr="fast"), "--lr must be a positive number, got 'fast'"),
])
def test_bad_compress_arguments_write_nothing(store, data, kwargs, message):
    before = listing(store)
    with pytest.raises(InvalidArgumentError) as info:
        args = dict(run=0, keep=20) | kwargs
        compress(store, resolve_compress_config(read_store_config(store), **args), device="cpu", data=data)
    assert message in str(info.value)
    assert listing(store) == before


def test_existing_compression_is_not_replaced_without_overwrite(store, data):
    cfg = resolve_compress_config(read_store_config(store), run=0, keep=50, epochs=1)
    compress(store, cfg, device="cpu", data=data)
    with pytest.raises(StoreExistsError, match="already exists"):
        compress(store, cfg, device="cpu", data=data)
    compress(store, cfg, device="cpu", data=data, overwrite=True)


# full-batch GD: epoch 1's loss precedes its one (exploding) step, so epoch 2 sees it;
# minibatch SGD: later minibatches of epoch 1 already see the exploded weights
@pytest.mark.parametrize("batch_size, epoch", [(None, 2), (16, 1)])
def test_divergence_is_reported_and_writes_nothing(store, data, batch_size, epoch):
    from scorebank.stores.errors import ScorebankError

    before = listing(store)
    cfg = resolve_compress_config(read_store_config(store), run=0, keep=50, epochs=2, lr=1e30, batch_size=batch_size)
    with pytest.raises(ScorebankError, match=r"training diverged \(non-finite loss\) at stage 1 \(50 examples left\), "
                                             rf"epoch {epoch}; lower --lr \(now 1e\+30\)"):
        compress(store, cfg, device="cpu", data=data, name="diverges")
    assert listing(store) == before
