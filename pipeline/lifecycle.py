"""The run lifecycle every training command shares (``score``, ``retrain``, ``prune-curve``,
``easy-hard``; ``compress`` reports through the same :class:`ProgressEvent`).

One run = one network trained epoch by epoch from a seed.  :func:`drive_run` takes a run
through its whole life, whatever the command:

* **skip** a run whose status is ``complete`` or ``failed``;
* **resume** from the run's checkpoint (model, optimiser, gradient-estimator and RNG
  state), so the result equals an uninterrupted run bit for bit on CPU;
* **status** ``running`` while it trains, then ``complete``; ``failed`` with the epoch
  where the training or test loss stopped being finite (divergence); ``interrupted`` with
  the last epoch written on Ctrl-C or a write failure (then the exception propagates);
* **progress**: a :class:`ProgressEvent` when the run starts, resumes or is skipped, after
  every written epoch, and when it fails or is interrupted.

Per epoch e the order is crash-safe: (1) the epoch's values are written (each chunk
atomically), (2) ``completed[run, e]`` is set, (3) the checkpoint is replaced atomically
(:func:`~scorebank.stores.zarrstore.atomic_file`, or one PUT on an object store; a full disk raises
:class:`~scorebank.stores.zarrstore.StoreWriteError` and leaves the previous checkpoint),
(4) the ``epoch`` event is sent.  A ``kill -9`` between any two steps leaves a readable
store; resuming restarts from the checkpoint and re-writes the (identical) values of any
epoch after it.

Where a run's values and status live differs per command (the store's root arrays, a
``retrain/<name>`` group): that is a :class:`RunSlot`.  Score and retrain slots write under
the run's own lock (:class:`~scorebank.stores.zarrstore.RunWriter`) and keep the status in
the run's own record, so runs of one store can be driven by different processes at once
(Dask tasks: :mod:`scorebank.pipeline.dispatch`).  Training and measuring are
:class:`~scorebank.pipeline.training.Trainer`'s (one training step for every command).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from scorebank.pipeline.training import EpochResult, Trainer, load_checkpoint
from scorebank.stores import schema as S
from scorebank.stores.errors import ScorebankError
from scorebank.stores.zarrstore import atomic_file

#: What a :class:`ProgressEvent` reports, by ``kind``.
EVENT_KINDS = {
    "start": "a run starts from initialisation (epoch 0)",
    "resume": "a run resumes from its checkpoint at `epoch` (the last epoch written)",
    "skip": "a run is already complete or failed and is skipped",
    "epoch": "epoch `epoch` was written; `metrics` holds its per-epoch values",
    "failed": "the run diverged (non-finite loss) at `epoch` and is marked failed",
    "interrupted": "the run stopped (Ctrl-C, write failure) after writing `epoch`; re-running resumes it",
    "stage": "compress: a stage finished (`metrics` has stage, examples_left, test_error, ...)",
}


@dataclass(frozen=True)
class ProgressEvent:
    """Sent to a command's ``progress`` callback (see :data:`EVENT_KINDS`).

    ``done`` and ``total`` count the run's units of work (epochs 0..``total_epochs`` for a
    run, so ``total = total_epochs + 1``; stages for ``compress``): a progress bar over all
    runs is ``sum(done) / sum(total)`` with the latest event of each ``(group, seed)``.
    ``group`` names the retrain / compress group (None for ``score``)."""

    kind: str
    seed: int
    epoch: int
    total_epochs: int
    metrics: dict = field(default_factory=dict)
    group: str | None = None
    done: int = 0
    total: int = 0

    def describe(self) -> str:
        """One line for the terminal, e.g. ``"resuming seed 3 from epoch 5"``."""
        who = f"{self.group} seed {self.seed}" if self.group else f"seed {self.seed}"
        if self.kind == "resume":
            return f"resuming {who} from epoch {self.epoch}"
        if self.kind == "skip":
            return f"{who} already {self.metrics.get('status', 'finished')}, skipped"
        if self.kind == "failed":
            return f"{who} diverged (non-finite loss) at epoch {self.epoch}"
        if self.kind == "interrupted":
            if self.done == 0:
                return f"interrupted {who} before its first epoch was written"
            return f"interrupted {who} after epoch {self.epoch}; run the same command again to resume"
        if self.kind == "start":
            return f"starting {who}"
        if self.kind == "stage":
            return (f"{who}: stage {self.metrics.get('stage')} done, "
                    f"{self.metrics.get('examples_left')} examples left")
        return f"{who} epoch {self.epoch}/{self.total_epochs}"

    __str__ = describe
    __rich__ = describe  # terminals (rich) show an event as its one line


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: ``status`` is ``complete`` or ``failed`` (``failed_epoch`` set);
    ``skipped`` if it had ended before this call.  ``final_test_accuracy`` is filled by
    commands that record it (retrain), else NaN."""

    seed: int
    status: str
    skipped: bool
    failed_epoch: int | None = None
    final_test_accuracy: float = math.nan


class RunSlot(Protocol):
    """Where one run's values, status and checkpoint live (``checkpoint`` None: the run is
    not checkpointed, so it cannot resume; easy-hard's networks).  The checkpoint is a local
    path or, for a store on an object store, an
    :class:`~scorebank.stores.objectstore.ObjectFile` (``is_file``, ``read_bytes``,
    ``write_bytes``)."""

    seed: int
    checkpoint: Path | Any | None

    def status(self) -> dict:
        """The run's status record (``{"status": ..., ...}``; ``{}`` if none)."""

    def set_status(self, status: str, **info) -> None:
        ...

    def write(self, result: EpochResult) -> None:
        """Write one epoch's values, ``completed`` last."""

    def finish(self) -> None:
        """After the last epoch, before ``complete`` is set: write what summarises the run."""

    def final_test_accuracy(self) -> float:
        """The run's recorded final test accuracy (NaN where the command records none)."""


def drive_run(slot: RunSlot, make_trainer: Callable[[], Trainer], *, total_epochs: int, device: torch.device,
              progress: Callable[[ProgressEvent], None] | None = None, group: str | None = None) -> RunOutcome:
    """Take one run through its lifecycle (module docstring): skip, resume or start, train
    and write epochs up to ``total_epochs``, and set its status.  ``make_trainer`` builds the
    run's fresh :class:`Trainer` (called only if the run has work left)."""
    seed, total = slot.seed, total_epochs + 1

    def emit(kind: str, epoch: int, done: int, metrics: dict | None = None) -> None:
        if progress:
            progress(ProgressEvent(kind, seed, epoch, total_epochs, dict(metrics or {}), group, done, total))

    status = slot.status()
    if status.get("status") in (S.RUN_COMPLETE, S.RUN_FAILED):
        failed_epoch = status.get("failed_epoch")
        emit("skip", total_epochs if failed_epoch is None else failed_epoch, total, {"status": status["status"]})
        return RunOutcome(seed, status["status"], skipped=True, failed_epoch=failed_epoch,
                          final_test_accuracy=slot.final_test_accuracy())
    trainer = make_trainer()
    resumed = slot.checkpoint is not None and slot.checkpoint.is_file()
    if resumed:
        trainer.load_state_dict(_load(slot.checkpoint))
    last = trainer.epoch if resumed else None  # the last epoch written
    running = {"device": str(device), "torch": torch.__version__}
    slot.set_status(S.RUN_RUNNING, **running)

    def fail(epoch: int) -> RunOutcome:
        slot.set_status(S.RUN_FAILED, failed_epoch=epoch)
        emit("failed", epoch, total)
        return RunOutcome(seed, S.RUN_FAILED, skipped=False, failed_epoch=epoch)

    try:
        if resumed:
            emit("resume", trainer.epoch, trainer.epoch + 1)
        else:
            emit("start", 0, 0)
        result = None if resumed else trainer.measure_epoch()
        while True:
            if result is not None:
                if result.diverged:
                    return fail(result.epoch)
                slot.write(result)
                if slot.checkpoint is not None:
                    _save(slot.checkpoint, trainer.state_dict())
                last = result.epoch
                emit("epoch", result.epoch, result.epoch + 1, result.per_epoch)
            if trainer.epoch >= total_epochs:
                break
            result = trainer.run_epoch()
        slot.finish()
        slot.set_status(S.RUN_COMPLETE, **running)
    except (KeyboardInterrupt, ScorebankError, OSError):
        _mark_interrupted(slot, last)
        try:
            emit("interrupted", -1 if last is None else last, 0 if last is None else last + 1)
        except Exception:  # noqa: BLE001 - the interruption is what propagates
            pass
        raise
    return RunOutcome(seed, S.RUN_COMPLETE, skipped=False, final_test_accuracy=slot.final_test_accuracy())


def _save(checkpoint, state: dict) -> None:
    """Replace the checkpoint whole: a local file through a renamed temporary
    (:func:`~scorebank.stores.zarrstore.atomic_file`), an object
    (:class:`~scorebank.stores.objectstore.ObjectFile`) with one PUT."""
    if isinstance(checkpoint, Path):
        with atomic_file(checkpoint) as tmp:
            torch.save(state, tmp)
        return
    buffer = io.BytesIO()
    torch.save(state, buffer)
    checkpoint.write_bytes(buffer.getvalue())


def _load(checkpoint) -> dict:
    """A checkpoint written by :func:`_save` (a local path or an object)."""
    if isinstance(checkpoint, Path):
        return load_checkpoint(checkpoint)
    return load_checkpoint(io.BytesIO(checkpoint.read_bytes()))


class MemorySlot:
    """A run kept in memory only: status and per-epoch values (``epochs``: epoch -> per-epoch
    values), no checkpoint.  For networks whose result is written once at the end."""

    checkpoint = None

    def __init__(self, seed: int):
        self.seed = seed
        self.record: dict = {}
        self.epochs: dict[int, dict] = {}

    def status(self) -> dict:
        return self.record

    def set_status(self, status: str, **info) -> None:
        self.record = {"status": status, **info}

    def write(self, result: EpochResult) -> None:
        self.epochs[result.epoch] = dict(result.per_epoch)

    def finish(self) -> None:
        pass

    def final_test_accuracy(self) -> float:
        return self.epochs[max(self.epochs)].get(S.TEST_ACCURACY, math.nan) if self.epochs else math.nan


def _mark_interrupted(slot: RunSlot, last: int | None) -> None:
    """Best effort (the disk may be full): status ``interrupted`` with the last epoch written."""
    try:
        slot.set_status(S.RUN_INTERRUPTED, epoch=last)
    except Exception:  # noqa: BLE001 - the original exception is what the user must see
        pass
