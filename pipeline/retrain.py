"""Retraining fresh networks on a subset of the training set (Data Diet's protocol).

Data Diet (Paul et al. 2021, Sec. 3 and appendix B): "after calculating scores and
selecting a training subset, final test accuracies are obtained by retraining networks
from random initializations on only the selected subset", and "when using a pruned
dataset, to allow for a fair comparison with the full dataset, we keep the number of
iterations and schedule fixed for different pruning levels".  Results are reported as
the mean over independent runs with the 16th-84th percentile band.

Budgets (:func:`step_budget`), with ``N`` training examples in the store, ``n`` in the
subset, batch size ``B`` and ``E`` epochs:

``steps`` (default, Data Diet)
    every epoch takes ``ceil(N / B)`` optimiser steps -- as many as an epoch over the
    full data -- drawn from as many fresh permutations of the subset as it needs, and the
    epoch-based learning-rate schedule is unchanged; ``E * ceil(N / B)`` steps in all.
``epochs``
    an epoch is one pass over the subset: ``ceil(n / B)`` steps, ``E * ceil(n / B)`` in all.

A budget of zero steps is refused.

Seeds: retrain seed ``s`` initialises and shuffles like trainer seed
``RETRAIN_SEED_OFFSET + s``, so a retrain never reuses the initialisation or minibatch
order of the scoring run with the same seed (Data Diet retrains from fresh random
initialisations).  The manifest retrain and its random baseline use the same seeds, so
they are paired (same initialisation, different subset).

Store layout: one Zarr group ``retrain/<name>`` per retrained subset with

``run`` (run,) int64
    the retrain seeds (coordinate).
``epoch`` (epoch,) int64
    0 = at initialisation, ``e`` = after ``e`` epochs of the budget (coordinate).
``test_accuracy``, ``test_loss`` (run, epoch) float32
    on the full test set, eval mode; NaN where not (yet) recorded.
``completed`` (run, epoch) bool
    the epoch's values are written.
``final_test_accuracy`` (run,) float32
    test accuracy after the last epoch; NaN until the run is complete.
``indices`` (kept,) int64
    the sorted example indices (positions along the store's ``example`` dimension) the
    networks were trained on.

and attributes ``retrain`` (the :class:`RetrainSpec` as JSON, with the full training
configuration), ``manifest`` (the manifest document, or null), ``runs`` (per-seed
status as in the root group) and ``created``.  ``xarray.open_zarr(store,
group="retrain/<name>")`` opens it.  Checkpoints live at
``<store>/checkpoints/retrain/<name>/run-<seed>.pt``.

Every run goes through the shared lifecycle (:func:`scorebank.pipeline.lifecycle.drive_run`:
crash-safe order of values, ``completed`` and checkpoint; skip, resume, ``failed`` and
``interrupted`` status; :class:`~scorebank.pipeline.lifecycle.ProgressEvent` s with ``group``
= the group's name).  Re-running skips finished seeds and resumes unfinished ones from
their checkpoint, and the result equals an uninterrupted run bit for bit on CPU.  The
group is created complete (every array at full shape) before any run starts and marked
valid last; a group left half-created by a crash is recreated.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from scorebank.core.config import check_seeds, recording_fields, short_value
from scorebank.pipeline.config import ScoreConfig, resolve_config
from scorebank.pipeline.datasets import ImageData, load_dataset
from scorebank.pipeline.dispatch import Task, run_tasks
from scorebank.pipeline.lifecycle import ProgressEvent, RunOutcome, drive_run
from scorebank.pipeline.outside import refuse_recorder_store
from scorebank.pipeline.scoring import read_store_config
from scorebank.pipeline.threshold_samples import with_fake_class
from scorebank.pipeline.training import DeviceData, EpochResult, Trainer, resolve_device, to_device_data
from scorebank.stores import schema as S
from scorebank.stores.arrays import create_array
from scorebank.stores.errors import ConfigMismatchError, InvalidArgumentError, RunFailedError
from scorebank.stores.zarrstore import (IDENTITY_ATTRS, RunWriter, StoreWriter, consolidate, now_iso, require_store_directory,
                                        root_attrs, scorebank_version)

BUDGETS = ("steps", "epochs")
BASELINES = ("random",)
RETRAIN_SEED_OFFSET = 1_000_000
#: Configuration fields fixed by the store: a retrain trains on the store's examples and labels.
DATA_FIELDS = ("dataset", "limit", "label_noise", "label_noise_seed")
if TYPE_CHECKING:
    from scorebank.stores.manifest import Manifest

#: Fields that make no sense for a retrain (it records no clean pass and no GraNd): what a
#: scoring run records (:func:`scorebank.core.config.recording_fields`).
_NOT_OVERRIDABLE = recording_fields()

RETRAIN_FORMAT = 1
ATTR_RETRAIN = "retrain"
ATTR_MANIFEST = "manifest"
ATTR_VALID = "scorebank_retrain_format"  # written last when the group is created
KEPT = "kept"  # dimension of ``indices``
INDICES = "indices"
FINAL_TEST_ACCURACY = "final_test_accuracy"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+=-]{0,199}")  # manifest names are accepted as they are
BASELINE_SUFFIX = ".random"  # the random baseline of retrain group NAME is NAME.random


# ----------------------------------------------------------------------------- budget
@dataclass(frozen=True)
class Budget:
    """The optimiser-step budget of a retrain (see the module docstring)."""

    kind: str  # "steps" | "epochs"
    n_full: int  # training examples in the store
    n_subset: int
    batch_size: int
    epochs: int
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def trainer_steps_per_epoch(self) -> int | None:
        """What :class:`Trainer` takes as ``steps_per_epoch`` (None: one pass over the subset)."""
        return self.steps_per_epoch if self.kind == "steps" else None


def step_budget(kind: str, *, n_full: int, n_subset: int, batch_size: int, epochs: int) -> Budget:
    """Steps per epoch for ``--budget kind``: ``ceil(n_full / batch_size)`` (``steps``, Data
    Diet's fixed iterations) or ``ceil(n_subset / batch_size)`` (``epochs``).  Refuses a
    budget of zero optimiser steps."""
    if kind not in BUDGETS:
        raise InvalidArgumentError(f"unknown --budget {kind!r}; choose one of {', '.join(BUDGETS)}")
    if n_subset < 1:
        raise InvalidArgumentError(f"the subset is empty ({n_subset!r} examples); nothing to train on")
    per_epoch = math.ceil((n_full if kind == "steps" else n_subset) / batch_size)
    budget = Budget(kind, n_full, n_subset, batch_size, epochs, per_epoch)
    if budget.total_steps < 1:
        raise InvalidArgumentError(
            f"--budget {kind} with --epochs {epochs!r} yields {budget.total_steps} optimiser steps; "
            "give --epochs >= 1")
    return budget


# ----------------------------------------------------------------------------- configuration
def retrain_config(base: ScoreConfig, overrides: Mapping | None = None) -> ScoreConfig:
    """The training configuration of a retrain: the store's (``base``) with ``overrides``
    applied, validated like ``scorebank score`` validates, with no clean pass and no
    GraNd epochs.  The data fields (:data:`DATA_FIELDS`) cannot change."""
    overrides = dict(overrides or {})
    known = {f.name for f in dataclasses.fields(ScoreConfig)} - _NOT_OVERRIDABLE
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InvalidArgumentError(
            f"cannot override {', '.join(map(repr, unknown))} for a retrain; overridable: {', '.join(sorted(known))}")
    for name in DATA_FIELDS:
        if name in overrides and overrides[name] != getattr(base, name):
            raise InvalidArgumentError(
                f"--{name.replace('_', '-')} {overrides[name]!r} differs from the store's {getattr(base, name)!r}; "
                "a retrain trains on the store's examples and labels, so it cannot change")
    fields = dataclasses.asdict(base)
    fields.update(overrides)
    for name in _NOT_OVERRIDABLE:
        fields.pop(name)
    return resolve_config(**{name: () for name in _NOT_OVERRIDABLE}, **fields)


@dataclass(frozen=True)
class RetrainSpec:
    """Everything that determines a retrain group's values, except the seeds; saved as the
    JSON attribute ``retrain`` of the group."""

    training: ScoreConfig
    budget: str
    steps_per_epoch: int
    total_steps: int
    n_full: int
    subset_size: int
    seed_offset: int
    dataset_fingerprint: str
    source: str  # "manifest", "random-baseline" or "indices"
    baseline_of: str | None = None  # for a random baseline: the group it is the baseline of
    baseline_seed: int | None = None
    class_balanced: bool | None = None  # for a random baseline: drawn with the manifest's class counts

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RetrainSpec":
        raw = json.loads(text)
        raw["training"] = ScoreConfig.from_json(json.dumps(raw["training"]))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def identity(self) -> dict:
        out = dataclasses.asdict(self)
        out["training"] = self.training.identity()
        return out

    def differences(self, other: "RetrainSpec") -> dict[str, tuple]:
        a, b = _flatten(self.identity()), _flatten(other.identity())
        return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


# ----------------------------------------------------------------------------- inputs
def check_group_name(name: str) -> str:
    """A retrain/compress group name: 1-200 characters from ``A-Z a-z 0-9 . _ @ + = -``,
    starting with a letter or digit (every manifest name qualifies)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidArgumentError(
            f"bad group name {name!r}; use 1-200 characters from letters, digits and . _ @ + = -, "
            "starting with a letter or digit")
    return name


def check_indices(indices, n_examples: int) -> np.ndarray:
    """Validate a subset: a non-empty 1-D array of unique integer indices in
    ``0..n_examples-1``.  Returns them sorted as int64."""
    arr = np.asarray(indices)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise InvalidArgumentError(
            f"subset indices must be a 1-D array of integers, got shape {arr.shape!r} dtype {str(arr.dtype)!r}")
    if arr.size == 0:
        raise InvalidArgumentError("the subset is empty; give at least one example index")
    arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= n_examples)]
    if bad.size:
        raise InvalidArgumentError(
            f"subset index {int(bad[0])!r} is out of range; the store has examples 0..{n_examples - 1}")
    arr = np.sort(arr)
    dup = arr[1:][arr[1:] == arr[:-1]]
    if dup.size:
        raise InvalidArgumentError(f"subset index {int(dup[0])!r} appears more than once; indices must be unique")
    return arr


def random_subset(labels: np.ndarray, size: int, seed: int, *, class_counts: Sequence[int] | None = None
                  ) -> np.ndarray:
    """A random subset of ``size`` examples, sorted, drawn with ``numpy.random.default_rng(seed)``.

    With ``class_counts`` (length = number of classes, summing to ``size``) exactly
    ``class_counts[c]`` examples of class ``c`` are drawn (uniformly within the class);
    otherwise ``size`` examples uniformly from all."""
    labels = np.asarray(labels)
    n = len(labels)
    if not 1 <= size <= n:
        raise InvalidArgumentError(f"random subset size {size!r} must be in 1..{n}")
    rng = np.random.default_rng(seed)
    if class_counts is None:
        return np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)
    counts = [int(c) for c in class_counts]
    if sum(counts) != size:
        raise InvalidArgumentError(f"class counts {counts!r} sum to {sum(counts)}, not the subset size {size!r}")
    parts = []
    for c, k in enumerate(counts):
        members = np.flatnonzero(labels == c)
        if k > len(members):
            raise InvalidArgumentError(
                f"class {c} has {len(members)} examples; cannot draw {k} of them for the baseline")
        parts.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(parts)).astype(np.int64)


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class RetrainResult:
    group: str
    spec: RetrainSpec
    indices: np.ndarray
    outcomes: tuple[RunOutcome, ...]  # lifecycle outcomes, with the final test accuracy


@dataclass
class StoreData:
    """The store's data, loaded once and shared by several retrains (a pruning curve)."""

    config: ScoreConfig
    data: ImageData
    labels: np.ndarray  # (N,) the store's training labels (after label noise)
    fingerprint: str
    device: torch.device
    device_data: DeviceData


def load_store_data(store: str | os.PathLike, *, device: str = "auto", data: ImageData | None = None,
                    data_dir: str | None = None, download: bool | None = None) -> StoreData:
    """Load the data set a store describes, check its fingerprint, and put it on ``device``
    with the store's training labels.  ``data`` may be passed to skip loading (tests)."""
    path = require_store_directory(store, "retraining")
    refuse_recorder_store(path, "retraining")
    config = read_store_config(path)
    dev = resolve_device(device)
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]
    recorded = attrs.get(S.ATTR_FINGERPRINT)
    if data is None:
        data = load_dataset(config.dataset, data_dir=data_dir if data_dir is not None else config.data_dir,
                            download=config.download if download is None else download, limit=config.limit)
    if data.fingerprint != recorded:
        raise ConfigMismatchError(
            f"store {str(path)!r} describes data set fingerprint {recorded!r} but {config.dataset!r} now gives "
            f"{data.fingerprint!r}; the data changed, so the store's indices no longer name the same examples")
    import zarr

    labels = np.asarray(zarr.open_array(path / S.LABEL, mode="r")[:], dtype=np.int64)
    # AUM's threshold samples keep their fake class C, and the network its C + 1 outputs, as scored
    mask = labels >= data.num_classes if config.threshold_samples else None
    return StoreData(config, data, labels, recorded, dev, with_fake_class(to_device_data(data, labels, dev), mask))


# ----------------------------------------------------------------------------- the engine
@dataclass(frozen=True)
class RetrainJob:
    """One validated retrain: the group it writes and what it trains on."""

    name: str
    indices: np.ndarray  # sorted, unique, in range
    spec: RetrainSpec
    plan: Budget
    manifest: dict | None
    store_attrs: dict = dataclasses.field(default_factory=dict)  # the store's identity when planned


def store_identity(store: str | os.PathLike) -> tuple[str, int]:
    """(data set fingerprint, number of training examples) recorded in a store."""
    path = require_store_directory(store, "retraining")
    import zarr

    attrs = json.loads((path / "zarr.json").read_text())["attributes"]
    return str(attrs.get(S.ATTR_FINGERPRINT)), int(zarr.open_array(path / S.LABEL, mode="r").shape[0])


def plan_retrain(store: str | os.PathLike, indices, name: str, *, overrides: Mapping | None = None,
                 budget: str = "steps", manifest: dict | None = None, source: str = "indices",
                 baseline_of: str | None = None, baseline_seed: int | None = None,
                 class_balanced: bool | None = None, overwrite: bool = False) -> RetrainJob:
    """Validate a retrain without training or writing anything: group name, subset, training
    options, step budget, gradient estimator, and (unless ``overwrite``) that an existing
    group of that name holds the same subset and options (:class:`ConfigMismatchError`)."""
    check_group_name(name)
    # the store's identity, checked again under the lock before anything is written
    store_attrs = root_attrs(require_store_directory(store, "retraining"), IDENTITY_ATTRS)
    refuse_recorder_store(store, "retraining")
    fingerprint, n_full = store_identity(store)
    config = retrain_config(read_store_config(store), overrides)
    kept = check_indices(indices, n_full)
    plan = step_budget(budget, n_full=n_full, n_subset=len(kept), batch_size=config.batch_size,
                       epochs=config.epochs)
    from scorebank.pipeline.robust import make_estimator

    make_estimator(config.optimizer, batch_size=config.batch_size, clip_count=config.clip_count)
    spec = RetrainSpec(training=config, budget=budget, steps_per_epoch=plan.steps_per_epoch,
                       total_steps=plan.total_steps, n_full=n_full, subset_size=len(kept),
                       seed_offset=RETRAIN_SEED_OFFSET, dataset_fingerprint=fingerprint, source=source,
                       baseline_of=baseline_of, baseline_seed=baseline_seed, class_balanced=class_balanced)
    job = RetrainJob(name, kept, spec, plan, manifest, store_attrs)
    if not overwrite and name in retrain_groups(store):
        old_spec, old_idx, _ = read_retrain(store, name)
        _refuse_mismatch(name, old_spec, old_idx, job)
    return job


def _refuse_mismatch(name: str, old_spec: RetrainSpec, old_idx: np.ndarray, job: RetrainJob) -> None:
    diff = old_spec.differences(job.spec)
    if not np.array_equal(old_idx, job.indices):
        diff["indices"] = (f"{len(old_idx)} examples", f"{len(job.indices)} examples (different)")
    if diff:
        listing = "; ".join(f"{k}: group has {short_value(a)}, asked {short_value(b)}" for k, (a, b) in diff.items())
        raise ConfigMismatchError(
            f"retrain group {group_path(name)!r} was made with a different subset or options ({listing}); "
            "use the same settings, another --name, or --overwrite")


def _check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    return check_seeds(seeds, "0-3")


def _store_data(store, job: RetrainJob, device: str, data) -> StoreData:
    if isinstance(data, StoreData):
        return data
    cfg = job.spec.training
    return load_store_data(store, device=device, data=data, data_dir=cfg.data_dir, download=cfg.download)


def retrain(store: str | os.PathLike, indices, name: str, seeds: Sequence[int], *,
            overrides: Mapping | None = None, budget: str = "steps", device: str = "auto",
            overwrite: bool = False, manifest: dict | None = None, source: str = "indices",
            baseline_of: str | None = None, baseline_seed: int | None = None,
            class_balanced: bool | None = None,
            progress: Callable[[ProgressEvent], None] | None = None,
            data: ImageData | StoreData | None = None, client=None, gpus_per_run: int = 0) -> RetrainResult:
    """Train fresh networks (one per seed) on only the examples ``indices`` of ``store``
    and record their test accuracy and loss per epoch into the group ``retrain/<name>``.

    Training options default to those recorded in the store; ``overrides`` (ScoreConfig
    field -> value) changes any of them except the data fields, and the group records what
    was used.  Re-running with the same subset and options skips finished seeds, resumes
    unfinished ones and adds new ones; a different subset or options for an existing
    ``name`` raises :class:`ConfigMismatchError` unless ``overwrite`` (which replaces the
    group and its checkpoints).  Everything is validated before anything is written.
    Raises :class:`RunFailedError` after all seeds ran if any diverged.  ``client``: a
    ``distributed.Client``; each seed is then one Dask task (:func:`run_jobs`)."""
    seeds = _check_seeds(seeds)
    job = plan_retrain(store, indices, name, overrides=overrides, budget=budget, manifest=manifest, source=source,
                       baseline_of=baseline_of, baseline_seed=baseline_seed, class_balanced=class_balanced,
                       overwrite=overwrite)
    given = None if isinstance(data, StoreData) else data
    return run_job(store, job, seeds, _store_data(store, job, device, data), overwrite=overwrite, progress=progress,
                   client=client, gpus_per_run=gpus_per_run, data=given)


def run_job(store: str | os.PathLike, job: RetrainJob, seeds: tuple[int, ...], sd: StoreData, *,
            overwrite: bool = False, progress: Callable[[ProgressEvent], None] | None = None, client=None,
            gpus_per_run: int = 0, data: ImageData | None = None) -> RetrainResult:
    """Train a planned retrain (:func:`plan_retrain`) for ``seeds`` (:func:`run_jobs`)."""
    return run_jobs(store, [job], seeds, sd, overwrite=overwrite, progress=progress, client=client,
                    gpus_per_run=gpus_per_run, data=data)[0]


def run_jobs(store: str | os.PathLike, jobs: Sequence[RetrainJob], seeds: tuple[int, ...], sd: StoreData, *,
             overwrite: bool = False, progress: Callable[[ProgressEvent], None] | None = None, client=None,
             gpus_per_run: int = 0, data: ImageData | None = None) -> list[RetrainResult]:
    """Train planned retrains (:func:`plan_retrain`) for ``seeds``, one result per job.

    This process is the coordinator: under the store's lock it checks the store is the one
    planned against, creates or extends every job's group (allocating its runs), runs every
    ``(job, seed)`` (one Dask task each with ``client``: :mod:`scorebank.pipeline.dispatch`;
    workers load the data themselves unless ``data`` is given) and at the end consolidates
    each group's per-run records into its ``runs`` attribute and writes the final test
    accuracy of every complete run (a chunk shared by the group's runs: written by the
    coordinator only)."""
    for job in jobs:
        if sd.fingerprint != job.spec.dataset_fingerprint:
            raise ConfigMismatchError(f"the loaded data (fingerprint {sd.fingerprint!r}) is not the store's "
                                      f"({job.spec.dataset_fingerprint!r})")
    path = Path(store)
    with StoreWriter(path) as writer:
        for job in jobs:
            writer.check_unchanged(job.store_attrs, f"retrain {job.name!r}")
            _open_or_create_group(writer, job, seeds, overwrite)
        try:
            if client is None:
                flat = [_retrain_run(path, job, sd, seed, progress) for job in jobs for seed in seeds]
            else:
                flat = run_tasks([Task(retrain_run, (str(path), job, seed), {"device": str(sd.device), "data": data})
                                  for job in jobs for seed in seeds],
                                 client=client, progress=progress, gpus_per_run=gpus_per_run)
        except BaseException:
            for job in jobs:
                try:
                    _finalise_group(writer, job)
                except Exception:  # noqa: BLE001 - the failure is what the user must see
                    pass
            raise
        for job in jobs:
            _finalise_group(writer, job)
    results = []
    for j, job in enumerate(jobs):
        outcomes = flat[j * len(seeds):(j + 1) * len(seeds)]
        failed = [o for o in outcomes if o.status == S.RUN_FAILED]
        if failed:
            what = ", ".join(f"seed {o.seed} at epoch {o.failed_epoch}" for o in failed)
            raise RunFailedError(f"{len(failed)} retrain run(s) of {job.name!r} diverged (non-finite loss): {what}; "
                                 "lower --lr; the other runs are in the store")
        results.append(RetrainResult(job.name, job.spec, job.indices, tuple(outcomes)))
    return results


def retrain_run(store: str, job: RetrainJob, seed: int, *, device: str = "auto", data: ImageData | None = None,
                progress: Callable[[ProgressEvent], None] | None = None) -> RunOutcome:
    """One retrain run as a task (:mod:`scorebank.pipeline.dispatch`): the store's data
    loaded here (fingerprint checked), then the run's lifecycle under its lock."""
    cfg = job.spec.training
    sd = load_store_data(store, device=device, data=data, data_dir=cfg.data_dir, download=cfg.download)
    return _retrain_run(Path(store), job, sd, seed, progress)


def _finalise_group(writer: StoreWriter, job: RetrainJob) -> None:
    """Coordinator, under the lock: the group's per-run records into its ``runs`` attribute,
    and the final test accuracy of each complete run (test accuracy at the last epoch)."""
    import zarr

    runs = writer.consolidate_runs(group_path(job.name))
    group = zarr.open_group(writer.path / group_path(job.name), mode="r+", zarr_format=3, use_consolidated=False)
    seeds = [int(s) for s in group[S.RUN][:]]
    final = group[FINAL_TEST_ACCURACY][:]
    last = group[S.TEST_ACCURACY].shape[1] - 1
    for r, seed in enumerate(seeds):
        if runs.get(str(seed), {}).get("status") == S.RUN_COMPLETE and math.isnan(final[r]):
            final[r] = group[S.TEST_ACCURACY][r, last]
    if not np.array_equal(final, group[FINAL_TEST_ACCURACY][:], equal_nan=True):
        group[FINAL_TEST_ACCURACY][:] = final


def retrain_manifest(store: str | os.PathLike, manifest: "str | os.PathLike | Manifest", seeds: Sequence[int], *,
                     name: str | None = None, baseline: str | None = None, baseline_seed: int = 0,
                     overrides: Mapping | None = None, budget: str = "steps", device: str = "auto",
                     overwrite: bool = False, progress: Callable[[ProgressEvent], None] | None = None,
                     data: ImageData | StoreData | None = None, client=None,
                     gpus_per_run: int = 0) -> list[RetrainResult]:
    """``scorebank retrain``: retrain on a selection manifest (a file path or a
    :class:`~scorebank.stores.manifest.Manifest`) into ``retrain/<name>`` (default: the
    manifest's name), and with ``baseline="random"`` also on a random subset of the same
    size into ``retrain/<name>.random``.

    The manifest is checked against the store (data set fingerprint and size:
    :class:`ConfigMismatchError`; empty, duplicate or out-of-range indices:
    :class:`InvalidArgumentError`), and both groups are planned, before anything is
    written.  The baseline subset is drawn with ``numpy.random.default_rng(baseline_seed)``;
    when the manifest was selected class-balanced (its ``parameters["class_balanced"]``)
    it has exactly the manifest's counts per class, otherwise it is uniform over the whole
    training set.  Both groups use the same retrain seeds, so each manifest run has a
    paired baseline run (same initialisation, different subset).  ``client``: a
    ``distributed.Client``; every (group, seed) run is then one Dask task (:func:`run_jobs`)."""
    from scorebank.stores.manifest import Manifest, read_manifest

    seeds = _check_seeds(seeds)
    fingerprint, n = store_identity(store)
    if isinstance(manifest, Manifest):
        doc = manifest.validate(expected_fingerprint=fingerprint, n_examples=n)
    else:
        doc = read_manifest(manifest, expected_fingerprint=fingerprint, n_examples=n)
    if baseline is not None and baseline not in BASELINES:
        raise InvalidArgumentError(f"unknown --baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    if isinstance(baseline_seed, bool) or not isinstance(baseline_seed, (int, np.integer)) or baseline_seed < 0:
        raise InvalidArgumentError(f"--baseline-seed must be a non-negative integer, got {baseline_seed!r}")
    name = check_group_name(doc.name if name is None else name)
    common = dict(overrides=overrides, budget=budget, overwrite=overwrite)
    jobs = [plan_retrain(store, doc.indices, name, manifest=doc.to_dict(with_indices=False), source="manifest",
                         **common)]
    if baseline == "random":
        import zarr

        labels = np.asarray(zarr.open_array(Path(store) / S.LABEL, mode="r")[:])
        balanced = bool(doc.parameters.get("class_balanced", False))
        counts = None
        if balanced:
            k = max([int(c) for c in doc.counts_per_class] + [int(labels.max())]) + 1
            counts = [doc.counts_per_class.get(str(c), 0) for c in range(k)]
        rand = random_subset(labels, jobs[0].spec.subset_size, int(baseline_seed), class_counts=counts)
        described = {"strategy": "random", "baseline_of": name, "seed": int(baseline_seed),
                     "class_balanced": balanced, "n_kept": int(len(rand)),
                     "counts_per_class": {str(c): int(v) for c, v in enumerate(np.bincount(labels[rand]))}}
        jobs.append(plan_retrain(store, rand, check_group_name(name + BASELINE_SUFFIX), manifest=described,
                                 source="random-baseline", baseline_of=name, baseline_seed=int(baseline_seed),
                                 class_balanced=balanced, **common))
    sd = _store_data(store, jobs[0], device, data)
    if client is not None:
        return run_jobs(store, jobs, seeds, sd, overwrite=overwrite, progress=progress, client=client,
                        gpus_per_run=gpus_per_run, data=None if isinstance(data, StoreData) else data)
    return [run_job(store, job, seeds, sd, overwrite=overwrite, progress=progress) for job in jobs]


def group_path(name: str) -> str:
    return f"{S.RETRAIN_GROUP}/{name}"


def checkpoint_dir(store: str | os.PathLike, name: str) -> Path:
    return Path(store) / S.CHECKPOINT_DIR / S.RETRAIN_GROUP / name


def _open_or_create_group(writer: StoreWriter, job: RetrainJob, seeds: tuple[int, ...], overwrite: bool):
    import zarr

    name = job.name
    parent = writer.root.require_group(S.RETRAIN_GROUP)
    ckpt_dir = checkpoint_dir(writer.path, name)
    group = None
    if (writer.path / S.RETRAIN_GROUP / name / "zarr.json").is_file():
        group = parent[name]
        if group.attrs.get(ATTR_VALID) != RETRAIN_FORMAT or overwrite:  # half-created by a crash, or replaced
            del parent[name]
            group = None
        else:  # checked by plan_retrain already; checked again under the lock
            _refuse_mismatch(name, RetrainSpec.from_json(group.attrs[ATTR_RETRAIN]), np.asarray(group[INDICES][:]), job)
    if group is None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        _create_group(parent, job, seeds)
    else:
        _add_runs(group, seeds)
    consolidate(writer.path)
    # re-open so the array handles see the new shapes
    return zarr.open_group(writer.path / group_path(name), mode="r+", zarr_format=3, use_consolidated=False)


def _create_group(parent, job: RetrainJob, seeds: tuple[int, ...]):
    name, spec, kept, manifest = job.name, job.spec, job.indices, job.manifest
    n_epochs = spec.training.epochs + 1
    group = parent.create_group(name)
    create_array(group, S.RUN, dims=(S.RUN,), data=np.asarray(seeds, dtype=np.int64),
                 chunks=(max(1, len(seeds)),), fill_value=0)
    create_array(group, S.EPOCH, dims=(S.EPOCH,), data=np.arange(n_epochs, dtype=np.int64), chunks=(n_epochs,),
                 fill_value=0)
    for var in (S.TEST_ACCURACY, S.TEST_LOSS, S.COMPLETED):
        v = S.BY_NAME[var]
        create_array(group, var, dims=(S.RUN, S.EPOCH), shape=(len(seeds), n_epochs), dtype=v.dtype,
                     chunks=(1, n_epochs), fill_value=v.fill_value, attributes=v.attrs)
    create_array(group, FINAL_TEST_ACCURACY, dims=(S.RUN,), shape=(len(seeds),), dtype="float32",
                 chunks=(max(1, len(seeds)),), fill_value=np.nan,
                 attributes={"description": "test accuracy after the last epoch (NaN until complete)",
                             "units": "fraction"})
    create_array(group, INDICES, dims=(KEPT,), data=np.asarray(kept, dtype=np.int64),
                 chunks=(max(1, min(len(kept), S.PER_EXAMPLE_CHUNK)),), fill_value=0,
                 attributes={"description": "sorted positions along the store's `example` "
                                            "dimension of the examples trained on"})
    group.attrs.update({
        ATTR_RETRAIN: spec.to_json(),
        ATTR_MANIFEST: manifest,
        S.ATTR_RUNS: {str(s): {"status": S.RUN_PENDING} for s in seeds},
        S.ATTR_CREATED: now_iso(),
        S.ATTR_VERSION: scorebank_version(),
        "subset_size": int(len(kept)),
        "budget": spec.budget,
    })
    group.attrs[ATTR_VALID] = RETRAIN_FORMAT  # last: the group is complete
    return group


def _add_runs(group, seeds: tuple[int, ...]) -> None:
    old = [int(s) for s in group[S.RUN][:]]
    new = [s for s in seeds if s not in old]
    if not new:
        return
    total = len(old) + len(new)
    for var in (S.TEST_ACCURACY, S.TEST_LOSS, S.COMPLETED, FINAL_TEST_ACCURACY):
        arr = group[var]
        arr.resize((total,) + arr.shape[1:])
    run = group[S.RUN]
    run.resize((total,))
    run[len(old):] = np.asarray(new, dtype=np.int64)
    runs = dict(group.attrs.get(S.ATTR_RUNS, {}))
    runs.update({str(s): {"status": S.RUN_PENDING} for s in new})
    group.attrs[S.ATTR_RUNS] = runs


class _GroupSlot:
    """A retrain run: its test accuracy and loss in the group ``retrain/<name>`` (its own
    chunks), its status in its per-run record (consolidated into the group's ``runs``
    attribute by the coordinator, which also writes ``final_test_accuracy``), its checkpoint
    under ``checkpoints/retrain/<name>/``."""

    def __init__(self, run: RunWriter):
        self.run, self.group, self.seed = run, run.root, run.seed
        self.checkpoint = run.checkpoint
        self.r = run.index

    def status(self) -> dict:
        return self.run.status()

    def set_status(self, status: str, **info) -> None:
        self.run.set_status(status, **info)

    def write(self, result: EpochResult) -> None:
        for var in (S.TEST_ACCURACY, S.TEST_LOSS):
            self.group[var][self.r, result.epoch] = result.per_epoch[var]
        self.group[S.COMPLETED][self.r, result.epoch] = True

    def finish(self) -> None:
        pass  # final_test_accuracy shares a chunk with the other runs: the coordinator writes it

    def final_test_accuracy(self) -> float:
        n_epochs = self.group[S.TEST_ACCURACY].shape[1]
        return float(self.group[S.TEST_ACCURACY][self.r, n_epochs - 1])


def _retrain_run(path: Path, job: RetrainJob, sd: StoreData, seed: int, progress) -> RunOutcome:
    cfg = job.spec.training
    pool = torch.from_numpy(job.indices).to(sd.device)
    with RunWriter(path, seed, group=group_path(job.name), wait=True) as run:
        return drive_run(_GroupSlot(run),
                         lambda: Trainer(cfg, sd.device_data, job.spec.seed_offset + seed, sd.device, indices=pool,
                                         steps_per_epoch=job.plan.trainer_steps_per_epoch),
                         total_epochs=cfg.epochs, device=sd.device, progress=progress, group=job.name)


# ----------------------------------------------------------------------------- reading / summary
@dataclass(frozen=True)
class RetrainRow:
    """One line of the retrain summary (Data Diet's reporting: mean and 16-84 band)."""

    group: str
    source: str
    baseline_of: str | None
    subset_size: int
    n_full: int
    budget: str
    seeds: tuple[int, ...]  # completed seeds
    final_accuracies: tuple[float, ...]
    mean: float
    p16: float
    p84: float
    full_data_accuracy: float  # NaN when the store has no completed scoring run
    difference: float  # mean - full_data_accuracy

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def band(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, 16th percentile, 84th percentile) of ``values`` (NaN for none); percentiles
    by linear interpolation (numpy's default), as Data Diet's shaded bands."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    p16, p84 = np.percentile(v, [16, 84])
    return float(v.mean()), float(p16), float(p84)


def full_data_accuracy(store: str | os.PathLike) -> tuple[float, tuple[float, ...]]:
    """Mean final test accuracy of the store's completed scoring runs (the full-data
    reference), and the per-run values; NaN and () when no run is complete."""
    import zarr

    root = zarr.open_group(Path(store), mode="r", zarr_format=3, use_consolidated=False)
    runs = root.attrs.get(S.ATTR_RUNS, {})
    seeds = [int(s) for s in root[S.RUN][:]]
    acc = np.asarray(root[S.TEST_ACCURACY][:], dtype=np.float64)  # (run, epoch)
    values = tuple(float(acc[i, -1]) for i, s in enumerate(seeds)
                   if runs.get(str(s), {}).get("status") == S.RUN_COMPLETE and math.isfinite(acc[i, -1]))
    return (float(np.mean(values)) if values else math.nan), values


def retrain_groups(store: str | os.PathLike) -> list[str]:
    """Names of the complete retrain groups of a store, sorted."""
    import zarr

    # listed on the file system: iterating the root group would visit checkpoints/ and the lock
    parent = Path(store) / S.RETRAIN_GROUP
    if not parent.is_dir():
        return []
    out = []
    for d in sorted(parent.iterdir()):
        if (d / "zarr.json").is_file():
            group = zarr.open_group(d, mode="r", zarr_format=3, use_consolidated=False)
            if group.attrs.get(ATTR_VALID) == RETRAIN_FORMAT:
                out.append(d.name)
    return out


def retrain_summary(store: str | os.PathLike, names: Sequence[str] | None = None) -> list[RetrainRow]:
    """Summary rows of the named retrain groups (default: all), over their completed seeds."""
    import zarr

    path = require_store_directory(store, "reading retrain results")
    available = retrain_groups(path)
    names = list(available if names is None else names)
    missing = [n for n in names if n not in available]
    if missing:
        raise InvalidArgumentError(
            f"no retrain group {missing[0]!r} in {str(path)!r}; it has: {', '.join(available) or 'none'}")
    full, _ = full_data_accuracy(path)
    rows = []
    for name in names:
        group = zarr.open_group(path / group_path(name), mode="r", zarr_format=3, use_consolidated=False)
        spec = RetrainSpec.from_json(group.attrs[ATTR_RETRAIN])
        runs = group.attrs.get(S.ATTR_RUNS, {})
        seeds = [int(s) for s in group[S.RUN][:]]
        finals = np.asarray(group[FINAL_TEST_ACCURACY][:], dtype=np.float64)
        done = [(s, float(finals[i])) for i, s in enumerate(seeds)
                if runs.get(str(s), {}).get("status") == S.RUN_COMPLETE]
        accs = tuple(a for _, a in done)
        mean, p16, p84 = band(accs)
        rows.append(RetrainRow(group=name, source=spec.source, baseline_of=spec.baseline_of,
                               subset_size=spec.subset_size, n_full=spec.n_full, budget=spec.budget,
                               seeds=tuple(s for s, _ in done), final_accuracies=accs, mean=mean, p16=p16,
                               p84=p84, full_data_accuracy=full, difference=mean - full))
    return rows


def read_retrain(store: str | os.PathLike, name: str) -> tuple[RetrainSpec, np.ndarray, dict | None]:
    """(spec, indices, manifest document) of one retrain group."""
    import zarr

    if name not in retrain_groups(store):
        raise InvalidArgumentError(f"no retrain group {name!r} in {os.fspath(store)!r}")
    group = zarr.open_group(Path(store) / group_path(name), mode="r", zarr_format=3, use_consolidated=False)
    return (RetrainSpec.from_json(group.attrs[ATTR_RETRAIN]), np.asarray(group[INDICES][:]),
            group.attrs.get(ATTR_MANIFEST))
