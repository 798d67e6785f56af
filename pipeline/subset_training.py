"""Training fresh networks on subsets of a store's examples: the engine behind the held-out
scores (K-fold out-of-fold probabilities for confident learning, :mod:`.holdout`; subset
training for memorisation estimates, :mod:`.memorization`).

A subset model is trained like a scoring run of the store (the store's recorded
configuration, :class:`~scorebank.pipeline.training.Trainer` with ``indices`` = the subset,
one pass over the subset per epoch, ``config.epochs`` epochs) but without the per-epoch
clean pass or GraNd (only the test set is evaluated after each epoch, which also detects
divergence), and is then evaluated once, in eval mode without augmentation, on whichever
examples the caller asks about (:meth:`SubsetSlot.finish`).

Each model goes through the run lifecycle every training command shares
(:func:`scorebank.pipeline.lifecycle.drive_run`: skip, status ``running`` / ``complete`` /
``failed`` / ``interrupted``, :class:`~scorebank.pipeline.lifecycle.ProgressEvent` per epoch)
as a :class:`SubsetSlot`: not checkpointed (an interrupted model restarts from scratch), its
result written once at the end, ``done`` flag last.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr
from torch import nn

from scorebank.pipeline.config import ScoreConfig
from scorebank.pipeline.lifecycle import ProgressEvent, RunOutcome, drive_run
from scorebank.pipeline.datasets import ImageData, load_dataset
from scorebank.pipeline.scoring import prepare_labels, read_store_config
from scorebank.pipeline.training import (DeviceData, EpochResult, Trainer, correct_from_logits, resolve_device,
                                         to_device_data)
from scorebank.stores import schema as S
from scorebank.stores.errors import ConfigMismatchError, InvalidArgumentError
from scorebank.stores.zarrstore import require_store_directory


@dataclass(frozen=True, eq=False)
class StoreTraining:
    """A store's configuration and data, loaded once and shared by every subset model."""

    path: Path
    config: ScoreConfig
    fingerprint: str
    labels: np.ndarray  # (N,) int64, the store's training labels (after label noise)
    device: torch.device
    data: DeviceData

    @property
    def n_examples(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.data.test_y.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.data.num_classes)


def load_store_training(store: str | os.PathLike, what: str, *, device: str = "auto",
                        data: ImageData | None = None) -> StoreTraining:
    """Load the data set the store at ``store`` describes onto ``device`` with the store's
    training labels.  ``what`` names the command in messages.  Refuses
    (:class:`ConfigMismatchError`) data whose fingerprint or labels differ from the store's.
    ``data`` may be passed to skip loading (tests); it must be what the configuration names."""
    path = require_store_directory(store, what)
    config = read_store_config(path)
    if config.threshold_samples:
        raise InvalidArgumentError(
            f"store {str(path)!r} was scored with --threshold-samples (AUM's fake class C on N/(C+1) examples); "
            f"{what} trains on the data set's own classes: run it on a store scored without --threshold-samples")
    dev = resolve_device(device)
    attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
    recorded = attrs.get(S.ATTR_FINGERPRINT)
    if data is None:
        data = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download, limit=config.limit)
    if data.fingerprint != recorded:
        raise ConfigMismatchError(
            f"store {str(path)!r} describes data set fingerprint {recorded!r} but {config.dataset!r} now gives "
            f"{data.fingerprint!r}; the data changed, so the store's examples cannot be retrained on")
    labels = prepare_labels(config, data)
    stored = np.asarray(zarr.open_array(path / S.LABEL, mode="r")[:], dtype=np.int64)
    if not np.array_equal(stored, labels):
        raise ConfigMismatchError(
            f"the training labels of store {str(path)!r} differ from those its configuration gives "
            f"({int((stored != labels).sum())} of {labels.size}); it cannot be retrained on")
    return StoreTraining(path, config, str(recorded), labels, dev, to_device_data(data, labels, dev))


def check_count(value, option: str, low: int, high: int | None = None) -> int:
    """An integer option in ``low..high`` (InvalidArgumentError naming ``option`` otherwise)."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InvalidArgumentError(f"{option} must be an integer {bound}, got {value!r}")
    return int(value)


class SubsetSlot:
    """A :class:`~scorebank.pipeline.lifecycle.RunSlot` for one subset model.

    ``is_done()`` reads the model's done flag (the source of truth for "complete");
    ``read_status()`` / ``write_status(record)`` keep its status record (running, failed,
    interrupted: the unit's own record, :class:`~scorebank.pipeline.subset_group.UnitWriter`); ``on_finish(trainer)`` evaluates the trained
    network and writes its result, done flag last.  A record that says ``complete`` without
    the done flag (a crash in between) counts as no record: the model is trained again."""

    checkpoint = None

    def __init__(self, seed: int, *, is_done: Callable[[], bool], read_status: Callable[[], dict],
                 write_status: Callable[[dict], None], on_finish: Callable[[Trainer], None]):
        self.seed = seed
        self.trainer: Trainer | None = None
        self._is_done, self._read, self._write, self._on_finish = is_done, read_status, write_status, on_finish
        self._test_accuracy = float("nan")

    def status(self) -> dict:
        if self._is_done():
            return {"status": S.RUN_COMPLETE}
        record = dict(self._read() or {})
        return {} if record.get("status") == S.RUN_COMPLETE else record

    def set_status(self, status: str, **info) -> None:
        self._write({"status": status, **info})

    def write(self, result: EpochResult) -> None:
        self._test_accuracy = result.per_epoch.get(S.TEST_ACCURACY, self._test_accuracy)

    def finish(self) -> None:
        self._on_finish(self.trainer)

    def final_test_accuracy(self) -> float:
        return self._test_accuracy


def subset_config(config: ScoreConfig) -> ScoreConfig:
    """The store's configuration without per-epoch clean passes or GraNd (a subset model
    records nothing per epoch but its test accuracy)."""
    return dataclasses.replace(config, record_epochs=(), grand_epochs=())


def train_subset_model(st: StoreTraining, slot: SubsetSlot, indices: np.ndarray, trainer_seed: int, *,
                       group: str, progress: Callable[[ProgressEvent], None] | None = None) -> RunOutcome:
    """Train a fresh network (initialised and shuffled by ``trainer_seed``) on the examples
    ``indices`` (positions along the store's ``example`` dimension) through the run
    lifecycle; ``slot.finish`` writes its result.  Events carry ``group`` and ``slot.seed``."""
    config = subset_config(st.config)

    def make() -> Trainer:
        pool = torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(st.device)
        slot.trainer = Trainer(config, st.data, trainer_seed, st.device, indices=pool)
        return slot.trainer

    return drive_run(slot, make, total_epochs=config.epochs, device=st.device, progress=progress, group=group)


@torch.inference_mode()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    model.eval()
    out = [model(x[start:start + batch_size]).float() for start in range(0, x.shape[0], batch_size)]
    return torch.cat(out) if out else torch.empty((0, 0), device=x.device)  # (n, classes)


def predict_probabilities(model: nn.Module, x: torch.Tensor, batch_size: int) -> np.ndarray:
    """softmax(f(x)) in eval mode, no augmentation: ``(n, classes)`` float32 on the host."""
    return _logits(model, x, batch_size).softmax(1).cpu().numpy().astype(np.float32)


def predict_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> np.ndarray:
    """``(n,)`` bool on the host: f_y(x) > max_{j != y} f_j(x) in eval mode (the clean pass's
    ``correct``; a tie counts as wrong)."""
    logits = _logits(model, x, batch_size)
    return correct_from_logits(logits, y).cpu().numpy()
