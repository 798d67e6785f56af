"""The subset-training group's opening (pipeline/subset_group.py): what the coordinator decides
under the store's lock (another coordinator's group, units still owned by an earlier command's tasks)."""

import pytest
import zarr

from scorebank.pipeline import subset_group
from scorebank.pipeline.holdout import holdout
from scorebank.pipeline.subset_group import UnitWriter
from scorebank.stores.errors import ConfigMismatchError, StoreLockedError

STORE_CONFIG = dict(epochs=1)  # ``config``; ``store``: a copy of its store (tests/conftest.py)


def test_a_group_made_by_another_coordinator_before_the_lock_is_refused_not_clobbered(store, data, monkeypatch):
    holdout(store, 2, [0], device="cpu", data=data)  # the other coordinator's group, finished
    files = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.suffix != ".lock")
    real, looks = subset_group.read_group_spec, []

    def first_look_before_it_existed(*args, **kwargs):  # this command looked before the other made it
        looks.append(args)
        return None if len(looks) == 1 else real(*args, **kwargs)

    monkeypatch.setattr(subset_group, "read_group_spec", first_look_before_it_existed)
    with pytest.raises(ConfigMismatchError, match="folds: group has 2, asked 3"):
        holdout(store, 3, [0], device="cpu", data=data)
    # the other group and its folds' records are untouched
    assert sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.suffix != ".lock") == files
    assert zarr.open_group(store / "holdout", mode="r")["fold_done"][...].tolist() == [[True, True]]


def test_overwrite_is_refused_while_a_fold_of_an_earlier_command_is_still_training(store, data):
    holdout(store, 2, [0], device="cpu", data=data)
    files = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.suffix != ".lock")
    with UnitWriter(store, "holdout", "folds", (0, 1)) as unit:  # an orphaned task of a lost client
        record = unit.status(zarr.open_group(store / "holdout"))
        unit.set_status({**record, "status": "running"})
        with pytest.raises(StoreLockedError, match=r"holdout unit\(s\) 0/1 are still being trained"):
            holdout(store, 3, [0], device="cpu", data=data, overwrite=True)
        unit.set_status(record)
    assert sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.suffix != ".lock") == files
    holdout(store, 3, [0], device="cpu", data=data, overwrite=True)  # its owner gone: replaced
    assert zarr.open_group(store / "holdout", mode="r")["fold_done"][...].tolist() == [[True] * 3]
