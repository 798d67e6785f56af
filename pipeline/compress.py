"""Dynamic compression of the training set after data separation (margins paper).

Banburski et al., "Distribution of classification margins: are all data equal?", Sec. 5
and appendix C.5: once a network separates its training data (100% training accuracy),
training continues on only the examples with the smallest margins, and the test error
barely moves until very few examples are left.

Starting point.  The store keeps one checkpoint per scoring run, the latest one (the
final epoch of a complete run).  :func:`compress` uses that checkpoint and requires the
run to have separated the data at or before it: the separation epoch is the first
recorded epoch with clean-pass training accuracy 1.0
(:func:`scorebank.stores.summary.separation_epochs`).  A run that never separated is
refused with the epoch it reached and its best training accuracy.  The training accuracy
of the checkpoint itself is recorded (a network can lose separation again after it).

Ranking.  Examples are ranked by the normalised margin ``(f_y(x) - max_{j != y} f_j(x)) /
rho`` (rho = :func:`scorebank.pipeline.models.norm_product`), from a clean pass
(BatchNorm in eval mode, no augmentation) of the current network over the examples still
in the training set; ties are broken by example index.  Within one network rho is one
positive number, so the order equals the raw-margin order; the normalised values are
what is recorded.

Schedules (``schedule``):

``immediate`` (appendix C.5, "immediate downsizing")
    keep the ``keep`` smallest-margin examples once and train on for ``epochs`` epochs.
``continuous`` (appendix C.5, "continuous downsizing")
    from the paper's 50,000 CIFAR-10 examples: remove the 5,000 largest-margin examples at
    a time until 10,000 remain, then 1,000 at a time until 1,000, then 100 at a time until
    100, then 10 at a time until 10, then 1 at a time; after each removal re-rank and
    train until the remaining set is separated again.  Scaling rule for a data set of
    ``N`` examples: with ``s = N / 50,000`` every chunk size and every "until" threshold is
    multiplied by ``s`` and rounded half up, with a minimum of 1 (so ``N = 50,000`` gives
    the paper's schedule exactly); each stage removes ``min(chunk, remaining - threshold)``
    so it ends exactly at its threshold; compression stops at ``keep`` (thresholds below
    ``keep`` are raised to ``keep``, and the last stage always ends at ``keep``).  See
    :func:`continuous_sizes`.  Removal never breaks separation of the remaining set, so
    each stage trains at least ``min_epochs_per_stage`` epochs (default 1) and then until
    the remaining set is separated, at most ``max_epochs_per_stage`` epochs (the paper
    has no cap; the cap makes the procedure terminate).

Training after a removal continues the same network (weights from the checkpoint; a
fresh SGD optimizer, so no stale momentum from the full data).  ``batch_size=None``
(default) is full-batch gradient descent, as the paper used after removal (its gradient
is accumulated over chunks of ``eval_batch_size`` examples; BatchNorm, if any, normalises
per chunk); otherwise minibatch SGD, with a permutation per epoch drawn from a generator
seeded by (run seed, stage, epoch).  The loss is the mean cross-entropy, with the learning
rate, momentum, Nesterov and weight decay given (default: the store's, with the learning
rate its schedule had in the run's last epoch).  No augmentation (the paper used none).

Stored under ``compress/<name>`` (:func:`write_compression`):

dimension ``step`` (one row per measurement; stage 0 epoch 0 is the checkpoint)
    ``stage_of_step``, ``epoch_in_stage`` (0 = right after the removal, before training),
    ``examples_left``, ``test_error``, ``test_loss``, ``train_error`` (on the examples
    still in the training set), ``full_train_error`` (on all ``N`` examples).
dimension ``stage`` (stage 0 = the full training set at the checkpoint)
    ``stage_size``, ``stage_epochs`` (epochs trained), ``stage_separated`` (the remaining
    set was separated at the end of the stage), ``kept`` (stage, example) bool -- the
    examples in the training set during the stage -- and ``ranking_margin`` (stage,
    example) float32, the normalised margins the removal into the stage was decided on
    (NaN for examples already removed, and for stage 0).

with the :class:`CompressConfig` and the starting point as JSON attributes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scorebank.pipeline.config import MAX_BATCH_SIZE, MAX_EPOCHS, MAX_SEED, ScoreConfig, check_sgd_settings
from scorebank.pipeline.datasets import ImageData
from scorebank.pipeline.models import norm_product
from scorebank.pipeline.retrain import StoreData, check_group_name, load_store_data
from scorebank.pipeline.outside import refuse_recorder_store
from scorebank.pipeline.scoring import read_store_config
from scorebank.pipeline.lifecycle import ProgressEvent
from scorebank.pipeline.robust import make_estimator
from scorebank.pipeline.training import FullBatchGradient, clean_pass, evaluate, load_checkpoint, new_model, train_step
from scorebank.stores import schema as S
from scorebank.stores.arrays import create_array
from scorebank.stores.errors import ConfigMismatchError, InvalidArgumentError, ScorebankError, StoreExistsError
from scorebank.stores.summary import separation_epochs
from scorebank.stores.zarrstore import (IDENTITY_ATTRS, StoreWriter, consolidate, now_iso, require_store_directory,
                                        root_attrs, scorebank_version)

SCHEDULES = ("immediate", "continuous")
PAPER_N = 50_000
#: Appendix C.5's continuous schedule for 50,000 examples: (examples removed per step,
#: remove until this many remain).
PAPER_STAGES = ((5_000, 10_000), (1_000, 1_000), (100, 100), (10, 10), (1, 1))

COMPRESS_FORMAT = 1
ATTR_COMPRESS = "compress"
ATTR_START = "start"
ATTR_VALID = "scorebank_compress_format"
STEP = "step"
STAGE = "stage"


class NotSeparatedError(ScorebankError):
    """The scoring run never separated its training data (exit status 1)."""


# ----------------------------------------------------------------------------- schedule
def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def continuous_stages(n: int, keep: int) -> tuple[tuple[int, int], ...]:
    """The continuous schedule's (chunk, threshold) pairs for ``n`` examples compressed to
    ``keep`` (see the module docstring for the scaling rule)."""
    s = n / PAPER_N
    out = []
    for i, (chunk, until) in enumerate(PAPER_STAGES):
        c = max(1, _round_half_up(chunk * s))
        t = keep if i == len(PAPER_STAGES) - 1 else max(keep, 1, _round_half_up(until * s))
        out.append((c, t))
    return tuple(out)


def continuous_sizes(n: int, keep: int) -> tuple[int, ...]:
    """Numbers of examples left after each removal of the continuous schedule, from ``n``
    down to ``keep`` (strictly decreasing, ends with ``keep``; empty when ``keep == n``).

    For ``n = 50,000`` and ``keep = 1``: 45,000, 40,000, ..., 10,000, 9,000, ..., 1,000,
    900, ..., 100, 90, ..., 10, 9, ..., 1 (appendix C.5)."""
    _check_keep(keep, n)
    sizes = []
    cur = n
    for chunk, until in continuous_stages(n, keep):
        while cur > until:
            cur = max(cur - chunk, until)
            sizes.append(cur)
    return tuple(sizes)


def _check_keep(keep, n: int) -> None:
    if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or not 1 <= keep <= n:
        raise InvalidArgumentError(f"--keep must be an integer in 1..{n} (the training set has {n} examples), got {keep!r}")


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class CompressConfig:
    """Everything that determines a compression (saved as JSON attribute ``compress``)."""

    run: int
    schedule: str = "immediate"
    keep: int = 200
    epochs: int = 20  # immediate: epochs trained after the removal
    max_epochs_per_stage: int = 50  # continuous
    min_epochs_per_stage: int = 1  # continuous
    batch_size: int | None = None  # None: full-batch gradient descent
    lr: float | None = None  # None: the rate the run's schedule used in its checkpoint's epoch
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    eval_batch_size: int = 1024

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def resolve_compress_config(store_config: ScoreConfig, *, run: int, schedule: str = "immediate", keep: int = 200,
                            epochs: int = 20, max_epochs_per_stage: int = 50, min_epochs_per_stage: int = 1,
                            batch_size: int | None = None, lr: float | None = None,
                            momentum: float | None = None, nesterov: bool | None = None,
                            weight_decay: float | None = None, eval_batch_size: int | None = None) -> CompressConfig:
    """Validate the options; unset optimiser options take the store's values (the
    learning rate stays None here: :func:`compress` takes the one the run's schedule used
    in the epoch of the checkpoint it continues from)."""
    sc = store_config
    cfg = CompressConfig(run=run, schedule=schedule, keep=keep, epochs=epochs,
                         max_epochs_per_stage=max_epochs_per_stage, min_epochs_per_stage=min_epochs_per_stage,
                         batch_size=batch_size, lr=lr,
                         momentum=sc.momentum if momentum is None else momentum,
                         nesterov=sc.nesterov if nesterov is None else nesterov,
                         weight_decay=sc.weight_decay if weight_decay is None else weight_decay,
                         eval_batch_size=sc.eval_batch_size if eval_batch_size is None else eval_batch_size)
    _check(schedule in SCHEDULES, f"unknown --schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    _check(_int(run) and 0 <= run <= MAX_SEED, f"--run must be a non-negative seed, got {run!r}")
    _check(_int(keep) and keep >= 1, f"--keep must be an integer >= 1, got {keep!r}")
    _check(_int(epochs) and 1 <= epochs <= MAX_EPOCHS,
           f"--epochs must be an integer >= 1, got {epochs!r}; the maximum is {MAX_EPOCHS}")
    _check(_int(max_epochs_per_stage) and 1 <= max_epochs_per_stage <= MAX_EPOCHS,
           f"--max-epochs-per-stage must be an integer >= 1, got {max_epochs_per_stage!r}; the maximum is {MAX_EPOCHS}")
    _check(_int(min_epochs_per_stage) and 1 <= min_epochs_per_stage <= max_epochs_per_stage,
           f"--min-epochs-per-stage must be an integer in 1..--max-epochs-per-stage "
           f"({max_epochs_per_stage!r}), got {min_epochs_per_stage!r}")
    _check(batch_size is None or (_int(batch_size) and 1 <= batch_size <= MAX_BATCH_SIZE),
           f"--batch-size must be an integer >= 1 (or omitted for full-batch gradient descent), got {batch_size!r}; "
           f"the maximum is {MAX_BATCH_SIZE}")
    check_sgd_settings(sc.lr if cfg.lr is None else cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay)
    _check(_int(cfg.eval_batch_size) and 1 <= cfg.eval_batch_size <= MAX_BATCH_SIZE,
           f"--eval-batch-size must be an integer >= 1, got {cfg.eval_batch_size!r}; the maximum is {MAX_BATCH_SIZE}")
    return cfg


def _int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidArgumentError(message)


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class CompressEvent(ProgressEvent):
    """A :class:`~scorebank.pipeline.lifecycle.ProgressEvent` of a compression (``seed`` = the
    run, ``group`` = the compression's name, ``epoch`` = ``epoch_in_stage``): kind ``"epoch"``
    after every measurement (with ``epoch_in_stage == 0`` once per stage, right after the
    removal), ``"stage"`` when a stage ends, ``"failed"`` when training diverges.  ``done`` is
    the number of stages after stage 0 finished and ``total == n_stages``, so the last
    ``"stage"`` event has ``done == total``."""

    stage: int = 0
    n_stages: int = 0  # stages after stage 0
    examples_left: int = 0
    epoch_in_stage: int = 0
    test_error: float = math.nan
    train_error: float = math.nan


@dataclass
class Trajectory:
    """The compression's measurements (see the module docstring for the meaning)."""

    stage_of_step: list[int] = field(default_factory=list)
    epoch_in_stage: list[int] = field(default_factory=list)
    examples_left: list[int] = field(default_factory=list)
    test_error: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    train_error: list[float] = field(default_factory=list)
    full_train_error: list[float] = field(default_factory=list)
    stage_size: list[int] = field(default_factory=list)
    stage_epochs: list[int] = field(default_factory=list)
    stage_separated: list[bool] = field(default_factory=list)
    kept: list[np.ndarray] = field(default_factory=list)  # per stage, (N,) bool
    ranking_margin: list[np.ndarray] = field(default_factory=list)  # per stage, (N,) float32

    def stage_end_rows(self) -> list[int]:
        """Index of the last step of every stage."""
        last: dict[int, int] = {}
        for i, s in enumerate(self.stage_of_step):
            last[s] = i
        return [last[s] for s in sorted(last)]


@dataclass(frozen=True)
class CompressResult:
    name: str
    config: CompressConfig
    start: dict  # checkpoint epoch, separation epoch, training accuracy at the checkpoint, ...
    trajectory: Trajectory


# ----------------------------------------------------------------------------- the procedure
def starting_point(store: str | os.PathLike, run: int) -> dict:
    """Check that ``run`` separated its training data and return where compression starts:
    ``{"run", "checkpoint", "checkpoint_epoch", "separation_epoch", "last_epoch",
    "best_train_accuracy"}``.  Raises :class:`NotSeparatedError` for a run that never did."""
    import zarr

    path = Path(store)
    root = zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=False)
    seeds = [int(s) for s in root[S.RUN][:]]
    if run not in seeds:
        raise InvalidArgumentError(f"--run {run!r} is not a run of {str(path)!r}; its runs are {', '.join(map(str, seeds))}")
    i = seeds.index(run)
    epochs = np.asarray(root[S.EPOCH][:])
    completed = np.asarray(root[S.COMPLETED][i, :], dtype=bool)
    recorded = np.asarray(root[S.RECORDED][i, :], dtype=bool) & completed
    train_acc = np.asarray(root[S.TRAIN_ACCURACY][i, :], dtype=np.float64)
    sep = separation_epochs(train_acc[None], recorded[None], epochs)[0]
    done = np.flatnonzero(completed)
    last_epoch = int(epochs[done[-1]]) if done.size else None
    rec = np.flatnonzero(recorded)
    best = float(np.nanmax(train_acc[rec])) if rec.size else math.nan
    if sep is None:
        where = "no epoch completed" if last_epoch is None else f"it reached epoch {last_epoch}"
        raise NotSeparatedError(
            f"run {run} never separated its training data (no recorded epoch with 100% training accuracy): "
            f"{where} with best recorded training accuracy {best!r}; train it longer "
            "(more --epochs in 'scorebank score') or choose another --run")
    ckpt = path / S.CHECKPOINT_DIR / f"run-{run}.pt"
    if not ckpt.is_file():
        raise ScorebankError(f"run {run} has no checkpoint at {str(ckpt)!r}; it is needed to continue training it")
    return {"run": run, "checkpoint": str(ckpt.relative_to(path)), "separation_epoch": sep,
            "last_epoch": last_epoch, "best_train_accuracy": best}


def compress(store: str | os.PathLike, config: CompressConfig, *, name: str | None = None,
             device: str = "auto", overwrite: bool = False,
             progress: Callable[[CompressEvent], None] | None = None,
             data: ImageData | StoreData | None = None) -> CompressResult:
    """Compress the training set of scoring run ``config.run`` after data separation and
    record the trajectory under ``compress/<name>`` (default name
    ``run<R>-<schedule>-keep<K>``).  Everything is checked before training starts; an
    existing group of that name is refused unless ``overwrite``."""
    path = require_store_directory(store, "compress")
    refuse_recorder_store(path, "compress")
    name = check_group_name(name or f"run{config.run}-{config.schedule}-keep{config.keep}")
    # what the compression starts from, checked again under the lock before writing
    identity = root_attrs(path, IDENTITY_ATTRS)
    store_config = read_store_config(path)
    import zarr

    n = int(zarr.open_array(path / S.LABEL, mode="r").shape[0])
    _check_keep(config.keep, n)
    start = starting_point(path, config.run)
    if compression_exists(path, name) and not overwrite:
        raise StoreExistsError(f"compression {f'{S.COMPRESS_GROUP}/{name}'!r} already exists in {str(path)!r}; "
                               "choose another --name or pass --overwrite")
    sd = data if isinstance(data, StoreData) else load_store_data(path, device=device, data=data)
    state = load_checkpoint(path / start["checkpoint"])
    if int(state.get("seed", config.run)) != config.run:
        raise ConfigMismatchError(f"checkpoint {start['checkpoint']!r} belongs to seed {state.get('seed')!r}, not run {config.run}")
    start["checkpoint_epoch"] = int(state["epoch"])
    if start["checkpoint_epoch"] < start["separation_epoch"]:
        raise NotSeparatedError(
            f"run {config.run}'s checkpoint is at epoch {start['checkpoint_epoch']}, before its separation epoch "
            f"{start['separation_epoch']}; finish the run with 'scorebank score' first")
    if config.lr is None:
        config = dataclasses.replace(
            config, lr=store_config.parsed_schedule.lr_at(store_config.lr, max(1, start["checkpoint_epoch"])))
    model = new_model(store_config, sd.device_data, config.run, sd.device)
    model.load_state_dict(state["model"])
    sizes = continuous_sizes(n, config.keep) if config.schedule == "continuous" else (config.keep,)
    _check_batchnorm(model, config, sizes, n)
    traj = _run(model, config, sd, sizes, progress, name)
    start["checkpoint_train_accuracy"] = 1.0 - traj.full_train_error[0]
    start["checkpoint_test_accuracy"] = 1.0 - traj.test_error[0]
    with StoreWriter(path) as writer:
        writer.check_unchanged(identity, "compress")
        write_compression(writer, name, config, store_config, start, traj, overwrite=overwrite)
    return CompressResult(name, config, start, traj)


def _check_batchnorm(model: nn.Module, config: CompressConfig, sizes: tuple[int, ...], n: int) -> None:
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    smallest = min(sizes) if sizes else n
    batch = smallest if config.batch_size is None else min(config.batch_size, smallest)
    if has_bn and batch < 2:
        raise InvalidArgumentError(
            f"the model has BatchNorm, which cannot train on a batch of {batch} example; "
            "use --keep >= 2 (and --batch-size >= 2)")


def _epoch_generator(seed: int, stage: int, epoch: int) -> torch.Generator:
    base = (seed * 1_000_003 + stage * 7919 + epoch * 104_729 + 0xC0A1) % (2**63 - 1)
    return torch.Generator(device="cpu").manual_seed(base)


def _run(model: nn.Module, cfg: CompressConfig, sd: StoreData, sizes: tuple[int, ...], progress,
         name: str | None = None) -> Trajectory:
    data = sd.device_data
    x, y = data.train_x, data.train_y
    n = x.shape[0]
    ebs = cfg.eval_batch_size
    traj = Trajectory()
    pool = torch.arange(n, device=sd.device)  # (n_left,) indices still in the training set
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                weight_decay=cfg.weight_decay)

    def measure(stage: int, epoch: int) -> float:
        test_acc, test_loss = evaluate(model, data.test_x, data.test_y, ebs)
        sub_acc, _ = evaluate(model, x[pool], y[pool], ebs)
        full_acc, _ = evaluate(model, x, y, ebs)
        train_err = 1.0 - float(sub_acc)
        traj.stage_of_step.append(stage)
        traj.epoch_in_stage.append(epoch)
        traj.examples_left.append(int(pool.shape[0]))
        traj.test_error.append(1.0 - float(test_acc))
        traj.test_loss.append(float(test_loss))
        traj.train_error.append(train_err)
        traj.full_train_error.append(1.0 - float(full_acc))
        emit("epoch", stage, epoch, train_err)
        return train_err

    stage_budget = cfg.epochs if cfg.schedule == "immediate" else cfg.max_epochs_per_stage

    def emit(kind: str, stage: int, epoch: int, train_err: float) -> None:
        if progress:
            done = stage if kind == "stage" else max(0, stage - 1)
            budget = stage_budget if stage else 0
            progress(CompressEvent(kind, cfg.run, epoch, budget, {}, name, done, len(sizes), stage=stage,
                                   n_stages=len(sizes), examples_left=int(pool.shape[0]), epoch_in_stage=epoch,
                                   test_error=traj.test_error[-1], train_error=train_err))

    def end_stage(epochs: int, train_err: float, ranking: np.ndarray) -> None:
        mask = np.zeros(n, dtype=bool)
        mask[pool.cpu().numpy()] = True
        traj.stage_size.append(int(pool.shape[0]))
        traj.stage_epochs.append(epochs)
        traj.stage_separated.append(train_err == 0.0)
        traj.kept.append(mask)
        traj.ranking_margin.append(ranking)

    err = measure(0, 0)
    end_stage(0, err, np.full(n, np.nan, dtype=np.float32))
    for stage, size in enumerate(sizes, start=1):
        # rank the remaining examples by normalised margin and keep the `size` smallest
        scores = clean_pass(model, x[pool], y[pool], ebs)
        nm = (scores[S.MARGIN].double() / norm_product(model)).cpu().numpy()  # (n_left,)
        order = np.lexsort((pool.cpu().numpy(), nm))  # by margin, ties by example index
        ranking = np.full(n, np.nan, dtype=np.float32)
        ranking[pool.cpu().numpy()] = nm
        pool = torch.sort(pool[torch.from_numpy(order[:size]).to(pool.device)]).values
        err = measure(stage, 0)
        epochs = 0
        if cfg.schedule == "immediate":
            budget, stop_when_separated = cfg.epochs, False
        else:
            budget, stop_when_separated = cfg.max_epochs_per_stage, True
        while epochs < budget:
            if not _train_epoch(model, optimizer, x, y, pool, cfg, _epoch_generator(cfg.run, stage, epochs + 1)):
                emit("failed", stage, epochs + 1, math.nan)
                raise ScorebankError(
                    f"training diverged (non-finite loss) at stage {stage} ({int(pool.shape[0])} examples left), "
                    f"epoch {epochs + 1}; lower --lr (now {cfg.lr!r})")
            epochs += 1
            err = measure(stage, epochs)
            if stop_when_separated and epochs >= cfg.min_epochs_per_stage and err == 0.0:
                break
        end_stage(epochs, err, ranking)
        emit("stage", stage, epochs, err)
    return traj


def _train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 pool: torch.Tensor, cfg: CompressConfig, generator: torch.Generator) -> bool:
    """One epoch over ``pool`` through :func:`~scorebank.pipeline.training.train_step`:
    full-batch gradient descent (one step, :class:`~scorebank.pipeline.training.FullBatchGradient`)
    or minibatch SGD (plain mean cross-entropy gradient).  False if the loss was not finite."""
    model.train()
    n = pool.shape[0]
    if cfg.batch_size is None or cfg.batch_size >= n:
        total = train_step(model, optimizer, FullBatchGradient(cfg.eval_batch_size), x[pool], y[pool])
        return bool(torch.isfinite(total))
    perm = pool[torch.randperm(n, generator=generator).to(pool.device)]  # (n,)
    total = torch.zeros((), device=x.device)
    sgd = make_estimator("sgd", batch_size=cfg.batch_size)
    for start in range(0, n, cfg.batch_size):
        idx = perm[start:start + cfg.batch_size]  # (batch,)
        logits = train_step(model, optimizer, sgd, x[idx], y[idx])
        total += F.cross_entropy(logits.detach(), y[idx])  # checked once per epoch: no device-host sync per step
    return bool(torch.isfinite(total))


# ----------------------------------------------------------------------------- storage
def write_compression(writer: StoreWriter, name: str, config: CompressConfig, store_config: ScoreConfig,
                      start: dict, traj: Trajectory, *, overwrite: bool = False) -> None:
    """Write a trajectory as the group ``compress/<name>`` (the caller holds the lock).
    The group is marked valid last; a half-written group is replaced on the next write."""
    parent = writer.root.require_group(S.COMPRESS_GROUP)
    gdir = writer.path / S.COMPRESS_GROUP / name
    if (gdir / "zarr.json").is_file():
        if compression_exists(writer.path, name) and not overwrite:
            raise StoreExistsError(f"compression {f'{S.COMPRESS_GROUP}/{name}'!r} already exists; pass --overwrite")
        del parent[name]
    if gdir.exists():  # leftovers without metadata
        shutil.rmtree(gdir)
    g = parent.create_group(name)
    n = len(traj.kept[0])
    n_steps, n_stages = len(traj.stage_of_step), len(traj.stage_size)

    def arr(var: str, dims: tuple[str, ...], values, dtype: str, description: str, chunks=None):
        values = np.asarray(values, dtype=dtype)
        fill = np.nan if np.dtype(dtype).kind == "f" else (False if dtype == "bool" else 0)
        create_array(g, var, dims=dims, data=values, chunks=chunks, fill_value=fill,
                     attributes={"description": description})

    arr(STEP, (STEP,), np.arange(n_steps), "int64", "measurement number")
    arr(STAGE, (STAGE,), np.arange(n_stages), "int64", "stage 0 = checkpoint on all examples; stage k = after the k-th removal")
    arr("stage_of_step", (STEP,), traj.stage_of_step, "int64", "stage of the measurement")
    arr("epoch_in_stage", (STEP,), traj.epoch_in_stage, "int64", "epochs trained in the stage (0 = right after the removal)")
    arr("examples_left", (STEP,), traj.examples_left, "int64", "examples in the training set")
    arr("test_error", (STEP,), traj.test_error, "float32", "test error (eval mode)")
    arr("test_loss", (STEP,), traj.test_loss, "float32", "mean test cross-entropy (eval mode)")
    arr("train_error", (STEP,), traj.train_error, "float32", "clean-pass error on the examples still in the training set")
    arr("full_train_error", (STEP,), traj.full_train_error, "float32", "clean-pass error on all training examples")
    arr("stage_size", (STAGE,), traj.stage_size, "int64", "examples in the training set during the stage")
    arr("stage_epochs", (STAGE,), traj.stage_epochs, "int64", "epochs trained in the stage")
    arr("stage_separated", (STAGE,), traj.stage_separated, "bool", "the remaining set was separated (100% training accuracy) at the end of the stage")
    chunk = (1, max(1, min(n, S.PER_EXAMPLE_CHUNK)))
    arr("kept", (STAGE, S.EXAMPLE), np.stack(traj.kept), "bool", "example is in the training set during the stage", chunk)
    arr("ranking_margin", (STAGE, S.EXAMPLE), np.stack(traj.ranking_margin), "float32",
        "normalised margin (margin / norm_product) the removal into the stage was decided on; NaN if not ranked", chunk)
    g.attrs.update({ATTR_COMPRESS: config.to_json(), ATTR_START: start, S.ATTR_CONFIG: store_config.to_json(),
                    S.ATTR_CREATED: now_iso(), S.ATTR_VERSION: scorebank_version()})
    g.attrs[ATTR_VALID] = COMPRESS_FORMAT
    consolidate(writer.path)


def compression_exists(store: str | os.PathLike, name: str) -> bool:
    """A complete group ``compress/<name>`` exists."""
    import zarr

    gdir = Path(store) / S.COMPRESS_GROUP / name
    if not (gdir / "zarr.json").is_file():
        return False
    return zarr.open_group(gdir, mode="r", zarr_format=3, use_consolidated=False).attrs.get(ATTR_VALID) == COMPRESS_FORMAT


def read_compression(store: str | os.PathLike, name: str):
    """The group ``compress/<name>`` as an xarray Dataset (loaded)."""
    import xarray as xr

    if not compression_exists(store, name):
        raise InvalidArgumentError(f"no compression {name!r} in {os.fspath(store)!r}")
    return xr.open_zarr(os.fspath(store), group=f"{S.COMPRESS_GROUP}/{name}").load()


def plot_compression(traj: Trajectory, path: str | os.PathLike, *, title: str = "") -> Path:
    """PNG with test error vs examples left (end of each stage; log x axis, compression
    proceeding left to right, as the margins paper's Fig. 4) and test/train error over
    the epochs after the checkpoint."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    rows = traj.stage_end_rows()
    left = [traj.examples_left[i] for i in rows]
    err = [traj.test_error[i] for i in rows]
    ax1.plot(left, err, "o-", color="C0", label="test error at the end of each stage")
    ax1.axhline(traj.test_error[0], color="k", ls="--", lw=1, label="at the checkpoint (all examples)")
    ax1.set_xscale("log")
    ax1.invert_xaxis()
    ax1.set_xlabel("examples left in the training set")
    ax1.set_ylabel("test error")
    ax1.legend(fontsize=8)
    steps = np.arange(len(traj.test_error))
    ax2.plot(steps, traj.test_error, color="C0", label="test error")
    ax2.plot(steps, traj.train_error, color="C1", label="train error (remaining set)")
    for i, (s, e) in enumerate(zip(traj.stage_of_step, traj.epoch_in_stage)):
        if e == 0 and s > 0:
            ax2.axvline(i, color="0.85", lw=0.8, zorder=0)
    ax2.set_xlabel("measurement (grey lines: removals)")
    ax2.set_ylabel("error")
    ax2.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out
