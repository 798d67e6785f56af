"""The shared run lifecycle: progress events, Ctrl-C (status ``interrupted``, resume event),
write failures of checkpoints, for ``score`` and ``retrain`` alike."""

import json

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from scorebank.pipeline.lifecycle import EVENT_KINDS, ProgressEvent
from scorebank.pipeline.retrain import retrain
from scorebank.pipeline.scoring import score
from scorebank.stores import schema as S
from scorebank.stores.errors import ScorebankError
from scorebank.stores.zarrstore import StoreWriteError


def runs_attr(path, group=None):
    meta = path / (group or "") / "zarr.json"
    return json.loads(meta.read_text())["attributes"]["runs"]


def interrupt_at(seed, epoch, exc=KeyboardInterrupt, group=None):
    """A progress callback that raises ``exc`` once epoch ``epoch`` of ``seed`` was written."""
    seen = []

    def progress(event):
        seen.append(event)
        if event.kind == "epoch" and event.seed == seed and event.epoch == epoch and (group is None or event.group == group):
            raise exc
    progress.seen = seen
    return progress


def test_events_of_a_fresh_run_then_a_rerun(tmp_path, tiny_config):
    cfg = tiny_config(epochs=2)
    events = []
    score(cfg, (0, 1), tmp_path / "s.zarr", device="cpu", progress=events.append)
    assert [(e.kind, e.seed, e.epoch, e.done) for e in events] == [
        ("start", 0, 0, 0), ("epoch", 0, 0, 1), ("epoch", 0, 1, 2), ("epoch", 0, 2, 3),
        ("start", 1, 0, 0), ("epoch", 1, 0, 1), ("epoch", 1, 1, 2), ("epoch", 1, 2, 3)]
    assert {(e.total, e.total_epochs, e.group) for e in events} == {(3, 2, None)}
    assert set(events[1].metrics) >= {S.TEST_ACCURACY, S.TRAIN_ACCURACY}
    rerun = []
    score(cfg, (0, 1), tmp_path / "s.zarr", device="cpu", progress=rerun.append)
    assert [(e.kind, e.done, e.total) for e in rerun] == [("skip", 3, 3), ("skip", 3, 3)]
    assert rerun[0].describe() == "seed 0 already complete, skipped"
    assert all(e.kind in EVENT_KINDS for e in events + rerun)


def test_ctrl_c_marks_the_run_interrupted_and_the_rerun_resumes(tmp_path, tiny_config):
    cfg = tiny_config(epochs=3)
    score(cfg, (0, 1), tmp_path / "ref.zarr", device="cpu")
    path = tmp_path / "s.zarr"
    progress = interrupt_at(1, 1)
    with pytest.raises(KeyboardInterrupt):
        score(cfg, (0, 1), path, device="cpu", progress=progress)
    runs = runs_attr(path)
    assert runs["0"]["status"] == S.RUN_COMPLETE
    assert runs["1"] == {"status": S.RUN_INTERRUPTED, "epoch": 1}
    last = progress.seen[-1]
    assert (last.kind, last.seed, last.epoch, last.done) == ("interrupted", 1, 1, 2)

    events = []
    outcomes = score(cfg, (0, 1), path, device="cpu", progress=events.append)
    assert [(o.seed, o.skipped) for o in outcomes] == [(0, True), (1, False)]
    resume = [e for e in events if e.kind == "resume"]
    assert [(e.seed, e.epoch, e.done) for e in resume] == [(1, 1, 2)]
    assert resume[0].describe() == "resuming seed 1 from epoch 1"
    assert [e.epoch for e in events if e.kind == "epoch"] == [2, 3]  # nothing recomputed before the checkpoint
    ref, got = xr.open_zarr(tmp_path / "ref.zarr"), xr.open_zarr(path)
    for name in ref.data_vars:
        np.testing.assert_array_equal(got[name].values, ref[name].values, err_msg=name)
    assert runs_attr(path)["1"]["status"] == S.RUN_COMPLETE


def test_ctrl_c_before_the_first_epoch_is_written(tmp_path, tiny_config):
    def progress(event):
        if event.kind == "start":
            raise KeyboardInterrupt
    path = tmp_path / "s.zarr"
    with pytest.raises(KeyboardInterrupt):
        score(tiny_config(epochs=1), (0,), path, device="cpu", progress=progress)
    assert runs_attr(path)["0"] == {"status": S.RUN_INTERRUPTED, "epoch": None}
    events = []
    score(tiny_config(epochs=1), (0,), path, device="cpu", progress=events.append)
    assert events[0].kind == "start"  # no checkpoint: starts afresh


def test_full_disk_while_checkpointing_is_one_error_and_resumable(tmp_path, tiny_config, monkeypatch):
    cfg = tiny_config(epochs=3)
    score(cfg, (0,), tmp_path / "ref.zarr", device="cpu")
    path = tmp_path / "s.zarr"
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        if obj.get("epoch") == 2:
            real_save(obj, f, *a, **k)  # a partial file is left behind, as on a real full disk
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0\n"
                               "PytorchStreamWriter failed writing file data/0: No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(StoreWriteError) as info:
        score(cfg, (0,), path, device="cpu")
    err = info.value
    assert isinstance(err, ScorebankError) and isinstance(err, OSError)
    message = str(err)
    assert "\n" not in message and "No space left on device" in message
    assert repr(str(path / "checkpoints" / "run-0.pt")) in message
    assert runs_attr(path)["0"] == {"status": S.RUN_INTERRUPTED, "epoch": 1}
    assert torch.load(path / "checkpoints" / "run-0.pt", weights_only=True)["epoch"] == 1  # the old one stays
    assert not [p for p in (path / "checkpoints").iterdir() if p.name.endswith(".partial")]

    monkeypatch.setattr(torch, "save", real_save)
    score(cfg, (0,), path, device="cpu")
    ref, got = xr.open_zarr(tmp_path / "ref.zarr"), xr.open_zarr(path)
    for name in ref.data_vars:
        np.testing.assert_array_equal(got[name].values, ref[name].values, err_msg=name)


def test_retrain_shares_the_lifecycle(tmp_path, tiny_config):
    store = tmp_path / "s.zarr"
    score(tiny_config(epochs=2), (0,), store, device="cpu")
    idx = np.arange(0, 200, 2)
    progress = interrupt_at(1, 1)
    with pytest.raises(KeyboardInterrupt):
        retrain(store, idx, "half", (0, 1), device="cpu", progress=progress)
    assert {e.group for e in progress.seen} == {"half"}
    runs = runs_attr(store, "retrain/half")
    assert runs["0"]["status"] == S.RUN_COMPLETE and runs["1"] == {"status": S.RUN_INTERRUPTED, "epoch": 1}
    events = []
    result = retrain(store, idx, "half", (0, 1), device="cpu", progress=events.append)
    assert [(e.kind, e.seed, e.epoch) for e in events if e.kind != "epoch"] == [("skip", 0, 2), ("resume", 1, 1)]
    assert events[1].describe() == "resuming half seed 1 from epoch 1"
    group = zarr.open_group(store / "retrain" / "half", mode="r")
    finals = np.asarray(group["final_test_accuracy"][:])
    assert [o.final_test_accuracy for o in result.outcomes] == [float(v) for v in finals]
    assert np.asarray(group["completed"][:]).all()


def test_event_lines():
    assert str(ProgressEvent("resume", 3, 5, 10)) == "resuming seed 3 from epoch 5"
    assert ProgressEvent("interrupted", 3, 5, 10, done=6).describe() == (
        "interrupted seed 3 after epoch 5; run the same command again to resume")
    assert ProgressEvent("failed", 1, 4, 10, group="g").describe() == "g seed 1 diverged (non-finite loss) at epoch 4"


# ----------------------------------------------------------------------------- a store replaced meanwhile
def replace_store(path, config):
    """What a concurrent `scorebank score --overwrite` with another configuration does."""
    score(config, (9,), path, device="cpu", overwrite=True)


def test_retrain_into_a_store_replaced_after_planning_is_refused(tmp_path, tiny_config, monkeypatch):
    from scorebank.pipeline import retrain as R
    from scorebank.stores.errors import ConfigMismatchError

    store = tmp_path / "s.zarr"
    score(tiny_config(epochs=1), (0,), store, device="cpu")
    real = R.load_store_data

    def load_then_replaced(*args, **kwargs):
        out = real(*args, **kwargs)
        replace_store(store, tiny_config(epochs=1, lr=0.01))
        return out

    monkeypatch.setattr(R, "load_store_data", load_then_replaced)
    with pytest.raises(ConfigMismatchError, match="was replaced by another scorebank process since retrain 'half' "
                                                  "read it .its config, store_id changed.; nothing was written"):
        retrain(store, np.arange(0, 200, 2), "half", (0,), device="cpu")
    assert not (store / "retrain").exists()


def test_compress_into_a_store_replaced_while_it_trained_is_refused(tmp_path, tiny_config):
    from scorebank.pipeline.compress import compress, resolve_compress_config
    from scorebank.stores.errors import ConfigMismatchError

    store = tmp_path / "s.zarr"
    cfg = tiny_config(width=64, epochs=8, batch_size=20)  # separates its 200 examples by epoch 8
    score(cfg, (0,), store, device="cpu")
    replaced = []

    def progress(event):
        if not replaced:
            replaced.append(True)
            replace_store(store, cfg)  # even with the same configuration: the checkpoint is another one

    with pytest.raises(ConfigMismatchError, match="since compress read it .its store_id changed."):
        compress(store, resolve_compress_config(cfg, run=0, keep=50, epochs=1), device="cpu", progress=progress)
    assert not (store / "compress").exists()


def test_easy_hard_into_a_store_replaced_while_it_trained_is_refused(tmp_path, tiny_config):
    from scorebank.pipeline.easyhard import easy_hard
    from scorebank.stores.errors import ConfigMismatchError

    store = tmp_path / "s.zarr"
    score(tiny_config(epochs=4), (0,), store, device="cpu")
    replaced = []

    def progress(event):
        if not replaced:
            replaced.append(True)
            replace_store(store, tiny_config(epochs=4, lr=0.01))

    with pytest.raises(ConfigMismatchError, match="since easy-hard read it .its config, store_id changed."):
        easy_hard(store, seeds=(0,), run=0, device="cpu", overrides={"epochs": 1}, progress=progress)
    assert not (store / "easy_hard").exists()
