"""``scorebank score``: train several seeds and record every example at every epoch.

:func:`score` is resumable and idempotent: re-running it on an existing store continues
every unfinished run from its last checkpoint and skips finished ones, and the result
equals an uninterrupted run bit for bit on CPU.

Crash safety, per epoch e of a run: (1) the epoch's values are written (each chunk
atomically), (2) ``completed[run, e]`` is set, (3) the checkpoint (model, optimizer,
gradient-estimator and RNG state) is replaced atomically.  A ``kill -9`` between any two
steps leaves a readable store; resuming restarts from the checkpoint and re-writes the
(identical) values of any epoch after it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from scorebank.pipeline.config import ScoreConfig
from scorebank.pipeline.datasets import ImageData, apply_label_noise, load_dataset
from scorebank.pipeline.training import Trainer, load_checkpoint, resolve_device, to_device_data
from scorebank.stores import schema as S
from scorebank.stores.errors import (ConfigMismatchError, InvalidArgumentError, RunFailedError,
                                     StoreExistsError)
from scorebank.stores.merge import ATTR_SOURCES
from scorebank.stores.zarrstore import (StoreWriter, atomic_file, create_store, is_scorebank_store,
                                        remove_store)


@dataclass(frozen=True)
class ProgressEvent:
    """Sent to the ``progress`` callback: ``kind`` is ``"run"`` (a run starts; ``epoch`` is
    the first epoch it will train) or ``"epoch"`` (an epoch was written; ``metrics`` holds
    its per-epoch values)."""

    kind: str
    seed: int
    epoch: int
    total_epochs: int
    metrics: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunOutcome:
    seed: int
    status: str  # schema.RUN_COMPLETE / RUN_FAILED
    skipped: bool
    failed_epoch: int | None = None


class MergedStoreError(InvalidArgumentError):
    """``scorebank score`` was pointed at a merged store, which cannot take new runs."""


def _store_attrs(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text()).get("attributes", {})


def read_store_config(path: str | os.PathLike) -> ScoreConfig:
    """The configuration recorded in a store's attrs."""
    return ScoreConfig.from_json(_store_attrs(Path(path))[S.ATTR_CONFIG])


def prepare_labels(config: ScoreConfig, data: ImageData) -> np.ndarray:
    if config.label_noise > 0:
        return apply_label_noise(data.train_labels, config.label_noise, config.label_noise_seed)[0]
    return data.train_labels.copy()


def score(config: ScoreConfig, seeds: tuple[int, ...], store: str | os.PathLike, *,
          device: str = "auto", overwrite: bool = False,
          progress: Callable[[ProgressEvent], None] | None = None,
          data: ImageData | None = None) -> list[RunOutcome]:
    """Train ``seeds`` under ``config`` and record their scores into ``store``.

    Refuses (:class:`ConfigMismatchError`) an existing store made with a different
    configuration unless ``overwrite``; new seeds with the same configuration extend the
    ``run`` dimension.  Raises :class:`RunFailedError` after all runs finished if any run
    diverged (it is marked ``failed`` with its epoch in the store's ``runs`` attribute).
    ``data`` may be passed to skip loading (tests); it must be what ``config`` names."""
    if not seeds:
        raise InvalidArgumentError("no seeds given; pass e.g. --seeds 0-2")
    dev = resolve_device(device)
    path = Path(store)
    exists = path.exists()
    if exists and not is_scorebank_store(path):
        raise StoreExistsError(f"{str(path)!r} exists and is not a scorebank store; choose another --store path")
    if exists and not overwrite:
        if ATTR_SOURCES in _store_attrs(path):
            raise MergedStoreError(
                f"store {str(path)!r} was made by `scorebank merge` and is for analysis only; score into "
                "a separate --store and merge again, or pass --overwrite to replace it")
        old = read_store_config(path)
        diff = old.differences(config)
        if diff:
            listing = "; ".join(f"{k}: store has {a!r}, asked {b!r}" for k, (a, b) in diff.items())
            raise ConfigMismatchError(
                f"store {str(path)!r} was made with a different configuration ({listing}); "
                "use the same settings, another --store, or --overwrite")
    if data is None:
        data = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download, limit=config.limit)
    labels = prepare_labels(config, data)
    if exists and overwrite:
        remove_store(path)
        exists = False
    if exists:
        recorded = _store_attrs(path).get(S.ATTR_FINGERPRINT)
        if recorded != data.fingerprint:
            raise ConfigMismatchError(
                f"store {str(path)!r} describes data set fingerprint {recorded!r} but {config.dataset!r} "
                f"now gives {data.fingerprint!r}; the data changed, use another --store")
    else:
        create_store(path, n_epochs=config.epochs, labels=labels, true_labels=data.train_labels,
                     original_index=data.original_index, seeds=seeds, features=config.features,
                     attrs={S.ATTR_CONFIG: config.to_json(), S.ATTR_DATASET: data.name,
                            S.ATTR_FINGERPRINT: data.fingerprint,
                            S.ATTR_CLASS_NAMES: list(data.class_names)})
    device_data = to_device_data(data, labels, dev)
    outcomes = []
    with StoreWriter(path) as writer:
        writer.add_runs(seeds)
        for seed in seeds:
            outcomes.append(_score_run(config, device_data, seed, dev, writer, progress))
    failed = [o for o in outcomes if o.status == S.RUN_FAILED]
    if failed:
        what = ", ".join(f"seed {o.seed} at epoch {o.failed_epoch}" for o in failed)
        raise RunFailedError(f"{len(failed)} run(s) diverged (non-finite loss): {what}; "
                             "lower --lr or check the data; the other runs are in the store")
    return outcomes


def _score_run(config: ScoreConfig, data, seed: int, device: torch.device, writer: StoreWriter,
               progress) -> RunOutcome:
    status = writer.runs.get(str(seed), {})
    if status.get("status") == S.RUN_COMPLETE:
        return RunOutcome(seed, S.RUN_COMPLETE, skipped=True)
    if status.get("status") == S.RUN_FAILED:
        return RunOutcome(seed, S.RUN_FAILED, skipped=True, failed_epoch=status.get("failed_epoch"))
    grand_fn = None
    if config.grand_epochs:
        from scorebank.pipeline.grand import grand_scores as grand_fn
    trainer = Trainer(config, data, seed, device, grand_fn=grand_fn)
    ckpt = writer.checkpoint_path(seed)
    if ckpt.is_file():
        trainer.load_state_dict(load_checkpoint(ckpt))
    writer.set_run_status(seed, S.RUN_RUNNING, device=str(device), torch=torch.__version__)
    if progress:
        progress(ProgressEvent("run", seed, trainer.epoch, config.epochs))

    def save(result) -> None:
        writer.write_epoch(seed, result.epoch, result.per_example, result.per_epoch)
        with atomic_file(ckpt) as tmp:
            torch.save(trainer.state_dict(), tmp)
        if progress:
            progress(ProgressEvent("epoch", seed, result.epoch, config.epochs, result.per_epoch))

    if not ckpt.is_file():
        result = trainer.measure_epoch()
        if result.diverged:
            writer.set_run_status(seed, S.RUN_FAILED, failed_epoch=0)
            return RunOutcome(seed, S.RUN_FAILED, skipped=False, failed_epoch=0)
        save(result)
    while trainer.epoch < config.epochs:
        result = trainer.run_epoch()
        if result.diverged:
            writer.set_run_status(seed, S.RUN_FAILED, failed_epoch=result.epoch)
            return RunOutcome(seed, S.RUN_FAILED, skipped=False, failed_epoch=result.epoch)
        save(result)
    writer.set_run_status(seed, S.RUN_COMPLETE, device=str(device), torch=torch.__version__)
    return RunOutcome(seed, S.RUN_COMPLETE, skipped=False)
