"""``scorebank score``: train several seeds and record every example at every epoch.

:func:`score` is resumable and idempotent: re-running it on an existing store continues
every unfinished run from its last checkpoint and skips finished ones, and the result
equals an uninterrupted run bit for bit on CPU.  Each run goes through the shared
lifecycle (:func:`scorebank.pipeline.lifecycle.drive_run`, which documents the crash-safe
order of writes); the store's root arrays hold its values (:class:`_RootSlot`).

With ``client=`` (a ``distributed.Client``) every run is one Dask task
(:mod:`scorebank.pipeline.dispatch`): this process (the coordinator) checks the store,
allocates the runs and holds the store's lock; each task writes its own run under the run's
lock (:class:`~scorebank.stores.zarrstore.RunWriter`) and keeps its status in the run's
record; the coordinator consolidates the records into the ``runs`` attribute at the end,
also after a failure or Ctrl-C.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from scorebank.pipeline.config import ScoreConfig, check_seeds
from scorebank.pipeline.datasets import ImageData, load_dataset, noisy_labels
from scorebank.pipeline.dispatch import Task, run_tasks
from scorebank.pipeline.lifecycle import ProgressEvent, RunOutcome, drive_run
from scorebank.pipeline.models import check_model_size
from scorebank.pipeline.threshold_samples import assign_fake_class, fake_class_name, threshold_mask, with_fake_class
from scorebank.pipeline.training import (DeviceData, EpochResult, Trainer, input_norms, new_model, resolve_device,
                                         to_device_data)
from scorebank.stores import schema as S
from scorebank.stores.errors import (ConfigMismatchError, InvalidArgumentError, RunFailedError, ScorebankError,
                                     StoreExistsError)
from scorebank.stores.merge import ATTR_SOURCES
from scorebank.stores.target import LocalTarget, ObjectTarget, store_target
from scorebank.stores.zarrstore import RunWriter, StoreWriter

__all__ = ["ProgressEvent", "RunOutcome", "MergedStoreError", "ModelBuildError", "read_store_config",
           "prepare_labels", "score", "score_run"]


class MergedStoreError(InvalidArgumentError):
    """``scorebank score`` was pointed at a merged store, which cannot take new runs."""


class ModelBuildError(ScorebankError):
    """The model could not be built on this machine (out of memory): exit status 1."""


def _store_attrs(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text()).get("attributes", {})


def read_store_config(path: str | os.PathLike) -> ScoreConfig:
    """The configuration recorded in a store's attrs."""
    return ScoreConfig.from_json(_store_attrs(Path(path))[S.ATTR_CONFIG])


def prepare_labels(config: ScoreConfig, data: ImageData) -> np.ndarray:
    """The labels after ``config``'s label noise (classes ``0..C-1``; without the threshold
    samples' fake class, which :func:`training_labels` adds)."""
    return noisy_labels(data.train_labels, config, data.num_classes)


def training_labels(config: ScoreConfig, data: ImageData) -> tuple[np.ndarray, np.ndarray | None]:
    """``(labels, threshold samples)``: the labels the runs train on, after label noise and with
    AUM's threshold samples (``config.threshold_samples``) moved to the fake class C
    (:mod:`scorebank.pipeline.threshold_samples`), and the ``(N,)`` bool mask of those samples
    (None without them)."""
    mask = threshold_mask(config, len(data.train_labels), data.num_classes)
    return assign_fake_class(prepare_labels(config, data), mask, data.num_classes), mask


def training_device_data(config: ScoreConfig, data: ImageData, dev: torch.device) -> tuple[DeviceData, np.ndarray,
                                                                                             np.ndarray | None]:
    """``(device data, labels, threshold samples)`` of a scoring run: the data on ``dev`` with the
    training labels (:func:`training_labels`), with C + 1 classes when there are threshold samples."""
    labels, mask = training_labels(config, data)
    return with_fake_class(to_device_data(data, labels, dev), mask), labels, mask


def check_store_accepts(path: str | os.PathLike, attrs: dict, config: ScoreConfig, fingerprint: str | None = None) -> None:
    """Refuse to write ``config``'s runs into the store whose root attributes are ``attrs``:
    a merged store (:class:`MergedStoreError`), another configuration or (when given)
    another data set fingerprint (:class:`ConfigMismatchError`).  Called before loading
    the data and again under the store's lock."""
    if ATTR_SOURCES in attrs:
        raise MergedStoreError(
            f"store {str(path)!r} was made by `scorebank merge` and is for analysis only; score into "
            "a separate --store and merge again, or pass --overwrite to replace it")
    old = ScoreConfig.from_json(attrs[S.ATTR_CONFIG])
    if old.differences(config):
        raise ConfigMismatchError(
            f"store {str(path)!r} was made with a different configuration ({old.describe_differences(config)}); "
            "use the same settings, another --store, or --overwrite")
    recorded = attrs.get(S.ATTR_FINGERPRINT)
    if fingerprint is not None and recorded != fingerprint:
        raise ConfigMismatchError(
            f"store {str(path)!r} describes data set fingerprint {recorded!r} but {config.dataset!r} "
            f"now gives {fingerprint!r}; the data changed, use another --store")


def probe_model(config: ScoreConfig, data: DeviceData, seed: int, device: torch.device) -> None:
    """Check the model's size (:func:`~scorebank.pipeline.models.check_model_size`) and build
    the first run's model once, before anything is written, so a model that does not fit
    (``--width 16384`` with ``resnet18``) is refused without leaving a store behind."""
    check_model_size(config.model, tuple(data.train_x.shape[1:]), data.num_classes, batchnorm=config.batchnorm,
                     init_std=config.init_std, width=config.width, cifar_stem=config.cifar_stem)
    try:
        new_model(config, data, seed, device)
    except (MemoryError, RuntimeError) as exc:  # torch: "DefaultCPUAllocator: can't allocate memory", CUDA OOM
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelBuildError(
            f"could not build --model {config.model!r} with --width {config.width!r} on {str(device)!r}: {reason}; "
            "use a smaller --width") from None


def score(config: ScoreConfig, seeds: tuple[int, ...], store: str | os.PathLike, *,
          device: str = "auto", overwrite: bool = False,
          progress: Callable[[ProgressEvent], None] | None = None,
          data: ImageData | None = None, client=None, gpus_per_run: int = 0,
          threads: int | None = None, storage_options: dict | None = None) -> list[RunOutcome]:
    """Train ``seeds`` under ``config`` and record their scores into ``store``.

    Refuses (:class:`ConfigMismatchError`) an existing store made with a different
    configuration unless ``overwrite``; new seeds with the same configuration extend the
    ``run`` dimension.  Every refusal happens before the first progress event: the checks
    run before the data is loaded and again under the store's lock (a concurrent
    ``--overwrite`` may have replaced the store in between).  The store is created only
    after the data is loaded and the first run's model built.  Runs follow
    :func:`scorebank.pipeline.lifecycle.drive_run`; raises :class:`RunFailedError` after
    all runs finished if any run diverged (it is marked ``failed`` with its epoch in the
    store's ``runs`` attribute).  ``data`` may be passed to skip loading (tests); it must be
    what ``config`` names.

    ``client``: a ``distributed.Client``; each run is then one task on its workers
    (:mod:`scorebank.pipeline.dispatch`: ``gpus_per_run`` worker resources ``GPU``,
    ``threads`` torch threads per task), each worker loading the data itself unless
    ``data`` was given.  The result equals the sequential one bit for bit on CPU at the same
    torch thread count.

    ``store`` may be an object-store URL (``s3://bucket/prefix.zarr``, ``gs://``...; endpoint
    and credentials from the environment, or ``storage_options`` for fsspec): the store is
    written through zarr's ``FsspecStore`` with leases instead of locks
    (:mod:`scorebank.stores.objectstore`)."""
    seeds = check_seeds(seeds)
    dev = resolve_device(device)
    target = store_target(store, storage_options)
    exists = target.exists()
    if exists and not target.is_store():
        raise StoreExistsError(f"{target.shown!r} exists and is not a scorebank store; choose another --store path")
    if exists and not overwrite:
        check_store_accepts(target.shown, target.attrs(), config)
    data_given = data is not None
    if data is None:
        data = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download, limit=config.limit)
    device_data, labels, mask = training_device_data(config, data, dev)
    probe_model(config, device_data, seeds[0], dev)
    with target.claim():  # an object store's lease for the whole command; locally nothing (the writer locks)
        if exists and overwrite:
            target.remove()
        if not target.exists():
            target.create(n_epochs=config.epochs, labels=labels, true_labels=data.train_labels,
                          original_index=data.original_index, seeds=seeds, features=config.features,
                          per_example={S.INPUT_NORM: input_norms(device_data),
                                       **({} if mask is None else {S.THRESHOLD_SAMPLE: mask})},
                          attrs={S.ATTR_CONFIG: config.to_json(), S.ATTR_DATASET: data.name,
                                 S.ATTR_FINGERPRINT: data.fingerprint,
                                 S.ATTR_CLASS_NAMES: list(data.class_names)
                                 + ([] if mask is None else [fake_class_name(data.class_names)])})
        with target.writer() as writer:
            check_store_accepts(target.shown, dict(writer.root.attrs), config, data.fingerprint)  # under the lock
            writer.add_runs(seeds)
            try:
                if client is None:
                    outcomes = [_drive(target, config, seed, device_data, dev, progress) for seed in seeds]
                else:
                    given = data if data_given else None
                    outcomes = run_tasks([Task(score_run, (target.task_location, config, seed),
                                               {"device": device, "data": given, "fingerprint": data.fingerprint,
                                                "storage_options": storage_options})
                                          for seed in seeds],
                                         client=client, progress=progress, gpus_per_run=gpus_per_run,
                                         threads=threads)
            except BaseException:
                _consolidate(writer, best_effort=True)
                raise
            _consolidate(writer)
    failed = [o for o in outcomes if o.status == S.RUN_FAILED]
    if failed:
        what = ", ".join(f"seed {o.seed} at epoch {o.failed_epoch}" for o in failed)
        raise RunFailedError(f"{len(failed)} run(s) diverged (non-finite loss): {what}; "
                             "lower --lr or check the data; the other runs are in the store")
    return outcomes


def score_run(store: str, config: ScoreConfig, seed: int, *, device: str = "auto", data: ImageData | None = None,
              fingerprint: str | None = None, progress: Callable[[ProgressEvent], None] | None = None,
              storage_options: dict | None = None) -> RunOutcome:
    """One scoring run as a task (:mod:`scorebank.pipeline.dispatch`): in a store whose
    coordinator allocated run ``seed``, load the data (unless given), check it is the data
    set the store describes (``fingerprint``), and take the run through its lifecycle under
    the run's lock: resumed from its checkpoint when an earlier attempt was killed."""
    dev = resolve_device(device)
    if data is None:
        data = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download, limit=config.limit)
    if fingerprint is not None and data.fingerprint != fingerprint:
        raise ConfigMismatchError(
            f"store {store!r} describes data set fingerprint {fingerprint!r} but {config.dataset!r} gives "
            f"{data.fingerprint!r} on this worker; give every worker the same --data-dir contents")
    device_data = training_device_data(config, data, dev)[0]
    return _drive(store_target(store, storage_options), config, seed, device_data, dev, progress)


def _drive(target: LocalTarget | ObjectTarget, config: ScoreConfig, seed: int, device_data: DeviceData,
           dev: torch.device, progress: Callable[[ProgressEvent], None] | None) -> RunOutcome:
    with target.run_writer(seed, wait=True) as run:
        return drive_run(_RootSlot(run), lambda: Trainer(config, device_data, seed, dev, grand_fn=_grand_fn(config)),
                         total_epochs=config.epochs, device=dev, progress=progress)


def _consolidate(writer: StoreWriter, best_effort: bool = False) -> None:
    """The runs' records into the ``runs`` attribute; after a failure, best effort (the
    failure is what the user must see; the next run of the command consolidates)."""
    if not best_effort:
        writer.consolidate_runs()
        return
    try:
        writer.consolidate_runs()
    except Exception:  # noqa: BLE001
        pass


def _grand_fn(config: ScoreConfig):
    if not config.grand_epochs:
        return None
    from scorebank.pipeline.grand import grand_scores

    return grand_scores


class _RootSlot:
    """A scoring run: its values in the store's root arrays, its status in its per-run
    record (consolidated into the ``runs`` attribute by the coordinator), its checkpoint at
    ``checkpoints/run-<seed>.pt``."""

    def __init__(self, run: RunWriter):
        self.run, self.seed = run, run.seed
        self.checkpoint = run.checkpoint

    def status(self) -> dict:
        return self.run.status()

    def set_status(self, status: str, **info) -> None:
        self.run.set_status(status, **info)

    def write(self, result: EpochResult) -> None:
        self.run.write_epoch(result.epoch, result.per_example, result.per_epoch)

    def finish(self) -> None:
        pass

    def final_test_accuracy(self) -> float:
        return float("nan")
