"""``scorebank holdout``: K-fold out-of-fold predicted probabilities for every training example.

Confident learning (Northcutt et al., JAIR 2021; the ``cleanlab`` package) needs
*out-of-sample* predicted probabilities: example i's probabilities must come from a model
that did not train on i.  For each seed s the training examples are split into K folds
(:func:`fold_assignment`: class-stratified, seeded by s); K models are trained, model k on
the K-1 other folds with the store's configuration, and each fold's examples get the
softmax probabilities of the model that held them out (eval mode, no augmentation).

Store layout: the Zarr group ``holdout`` (``xarray.open_zarr(store, group="holdout")``) with

``seed`` (seed,) int64                    the holdout seeds (coordinate).
``example`` (example,) int64              positions along the store's ``example`` dimension.
``class`` (class,) int64                  class indices.
``fold`` (fold,) int64                    0..K-1.
``assigned_fold`` (seed, example) int64   the fold in which each example is held out.
``probability`` (seed, example, class) float32
                                          out-of-fold softmax probabilities; NaN until the
                                          example's fold is done.
``fold_done`` (seed, fold) bool           the fold's probabilities are written.

and attributes ``holdout`` (the :class:`HoldoutSpec` as JSON: K, the training configuration,
the data set fingerprint) and ``folds`` (``{"<seed>/<fold>": status}`` of each fold's model:
each fold keeps its status in its own record ``checkpoints/holdout/SEED/run-FOLD.json`` while
it trains, and the command copies the records into ``folds`` when it ends;
:mod:`scorebank.pipeline.subset_group`).  Model k of seed s initialises and shuffles like trainer seed
``HOLDOUT_SEED_OFFSET + s * MAX_FOLDS + k``, so it never reuses a scoring or retrain run's
initialisation.

Resume: folds are the unit of work, each fold's model one run of the shared run lifecycle
(:mod:`scorebank.pipeline.subset_training`, :func:`scorebank.pipeline.lifecycle.drive_run`:
status ``running`` / ``complete`` / ``failed`` / ``interrupted``, progress events whose
``group`` is ``"holdout fold K"`` and ``seed`` the holdout seed).  A fold's probabilities are
written (each chunk atomically), then its ``fold_done`` flag; a re-run skips done (and
diverged) folds and retrains the others from scratch, and new seeds extend the ``seed``
dimension.  The group is built under a temporary name and
renamed into place, so it is either absent or complete (:mod:`scorebank.pipeline.subset_group`).

Dask: with ``client=`` every (seed, fold) model is one task (:mod:`scorebank.pipeline.dispatch`),
owning its fold under the fold's lock; folds of one seed share the seed's probability chunks,
which a fold writes under the group's chunk lock.  A worker killed mid-fold: the scheduler
runs the task again elsewhere and the fold is trained again from scratch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import zarr

from scorebank.pipeline.datasets import ImageData
from scorebank.pipeline.dispatch import Task, run_tasks
from scorebank.pipeline.lifecycle import ProgressEvent, RunOutcome
from scorebank.pipeline.subset_group import (NO_VALUE, GroupSpec, Tally, UnitWriter, check_spec, open_group,
                                             read_group_spec, shared_chunks, training_group)
from scorebank.pipeline.subset_training import (StoreTraining, SubsetSlot, check_count, load_store_training,
                                                predict_probabilities, train_subset_model)
from scorebank.stores import heldout as H
from scorebank.stores import schema as S
from scorebank.stores.arrays import create_array
from scorebank.stores.errors import InvalidArgumentError, RunFailedError

GROUP = H.HOLDOUT_GROUP
SEED, EXAMPLE, CLASS, FOLD = H.SEED, S.EXAMPLE, H.CLASS, H.FOLD
ASSIGNED_FOLD, PROBABILITY, FOLD_DONE, ATTR_SPEC = H.ASSIGNED_FOLD, H.PROBABILITY, H.FOLD_DONE, H.ATTR_HOLDOUT
ATTR_FOLDS = H.ATTR_FOLDS
HOLDOUT_FORMAT = 1
HOLDOUT_SEED_OFFSET = 2_000_000
MAX_FOLDS = 1000
_FOLD_SALT = 0x401D0


@dataclass(frozen=True)
class HoldoutSpec(GroupSpec):
    """What determines a holdout group's values, except the seeds (attribute ``holdout``)."""

    folds: int
    num_classes: int
    seed_offset: int = HOLDOUT_SEED_OFFSET
    format: int = HOLDOUT_FORMAT


# ----------------------------------------------------------------------------- folds
def fold_assignment(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """``(N,)`` int64: the fold (0..K-1) in which each example is held out.

    Class-stratified and seeded: the examples of each class (in label order) are shuffled
    with ``numpy.random.default_rng([0x401D0, seed])`` and laid end to end; position p of
    that sequence goes to fold ``p mod K``.  So every class is spread over the folds as
    evenly as possible (per-class counts differ by at most one between folds) and so are the
    fold sizes."""
    labels = np.asarray(labels)
    check_count(folds, "--folds", 2, MAX_FOLDS)
    if folds > labels.size:
        raise InvalidArgumentError(f"--folds {folds!r} exceeds the {labels.size} training examples")
    rng = np.random.default_rng([_FOLD_SALT, int(seed)])
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)])  # (N,)
    out = np.empty(labels.size, dtype=np.int64)
    out[order] = np.arange(labels.size) % folds
    return out


def trainer_seed(seed: int, fold: int) -> int:
    return HOLDOUT_SEED_OFFSET + int(seed) * MAX_FOLDS + int(fold)


def _check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(s) for s in seeds)
    if not out:
        raise InvalidArgumentError("no seeds given; pass e.g. --seeds 0-2")
    if min(out) < 0:
        raise InvalidArgumentError(f"seeds must be non-negative, got {min(out)!r}")
    if len(set(out)) != len(out):
        raise InvalidArgumentError(f"seed list {list(out)!r} repeats a seed; name each seed once")
    return out


# ----------------------------------------------------------------------------- the group
def read_spec(store: str | os.PathLike) -> HoldoutSpec | None:
    """The spec of the store's holdout group, or None when it has none."""
    return read_group_spec(store, GROUP, ATTR_SPEC, HoldoutSpec)


def _create_arrays(group: zarr.Group, spec: HoldoutSpec) -> None:
    """The arrays of an empty (zero seeds) holdout group."""
    n, c, k = spec.n_examples, spec.num_classes, spec.folds
    create_array(group, SEED, dims=(SEED,), shape=(0,), dtype="int64", chunks=(1,), fill_value=NO_VALUE)
    create_array(group, EXAMPLE, dims=(EXAMPLE,), data=np.arange(n, dtype=np.int64), fill_value=NO_VALUE,
                 chunks=(max(1, min(n, S.PER_EXAMPLE_CHUNK)),))
    create_array(group, CLASS, dims=(CLASS,), data=np.arange(c, dtype=np.int64), fill_value=NO_VALUE)
    create_array(group, FOLD, dims=(FOLD,), data=np.arange(k, dtype=np.int64), fill_value=NO_VALUE)
    create_array(group, ASSIGNED_FOLD, dims=(SEED, EXAMPLE), shape=(0, n), dtype="int64",
                 chunks=(1, max(1, min(n, S.PER_EXAMPLE_CHUNK))), fill_value=-1,
                 attributes={"description": "fold in which the example is held out (class-stratified, "
                                            "seeded by the holdout seed)"})
    create_array(group, PROBABILITY, dims=(SEED, EXAMPLE, CLASS), shape=(0, n, c), dtype="float32",
                 chunks=(1, max(1, min(n, S.PER_EXAMPLE_CHUNK)), c),
                 attributes={"description": "out-of-fold softmax probabilities: from the model of this seed "
                                            "that did not train on the example (eval mode); NaN until its "
                                            "fold is done"})
    create_array(group, FOLD_DONE, dims=(SEED, FOLD), shape=(0, k), dtype="bool", chunks=(1, k),
                 attributes={"description": "the fold's out-of-fold probabilities are written"})


def _add_seeds(group: zarr.Group, seeds: Sequence[int], labels: np.ndarray, folds: int) -> None:
    """Extend the ``seed`` dimension with new seeds; their fold assignment is written before
    the ``seed`` coordinate, which is resized last (a crash in between is repaired by the next
    call, which sizes every array from the coordinate again)."""
    old = [int(s) for s in group[SEED][:]]
    new = [s for s in seeds if s not in old]
    if not new:
        return
    total = len(old) + len(new)
    for name in (ASSIGNED_FOLD, PROBABILITY, FOLD_DONE):
        arr = group[name]
        arr.resize((len(old),) + arr.shape[1:])  # drop rows a crash left behind
        arr.resize((total,) + arr.shape[1:])
    for i, s in enumerate(new):
        group[ASSIGNED_FOLD][len(old) + i, :] = fold_assignment(labels, folds, s)
    seed = group[SEED]
    seed.resize((total,))
    seed[len(old):] = np.asarray(new, dtype=np.int64)


# ----------------------------------------------------------------------------- the engine
@dataclass(frozen=True)
class HoldoutOutcome:
    seed: int
    folds_trained: int
    folds_skipped: int


def holdout(store: str | os.PathLike, folds: int, seeds: Sequence[int], *, device: str = "auto",
            overwrite: bool = False, progress: Callable[[ProgressEvent], None] | None = None,
            data: ImageData | None = None, client=None, gpus_per_run: int = 0,
            threads: int | None = None) -> list[HoldoutOutcome]:
    """Record K-fold out-of-fold predicted probabilities of every training example of
    ``store`` for each of ``seeds`` into its ``holdout`` group (see the module docstring).

    Re-running skips done folds and adds new seeds.  An existing group made with another K,
    configuration or data set is refused (:class:`ConfigMismatchError`) unless ``overwrite``
    (which replaces it).  Everything is validated before anything is written.  Raises
    :class:`RunFailedError` after every fold ran if a model diverged (its fold stays not done).

    ``client``: a ``distributed.Client``; every (seed, fold) model is then one task on its
    workers (:mod:`scorebank.pipeline.dispatch`: ``gpus_per_run`` worker resources ``GPU``,
    ``threads`` torch threads per task), each loading the data itself unless ``data`` was
    given.  This process is the coordinator (:mod:`scorebank.pipeline.subset_group`); the
    values equal the sequential ones bit for bit on CPU at the same torch thread count."""
    folds = check_count(folds, "--folds", 2, MAX_FOLDS)
    seeds = _check_seeds(seeds)
    st = load_store_training(store, "holdout", device=device, data=data)
    if folds > st.n_examples:
        raise InvalidArgumentError(f"--folds {folds!r} exceeds the store's {st.n_examples} training examples")
    spec = HoldoutSpec(training=st.config, dataset_fingerprint=st.fingerprint, n_examples=st.n_examples,
                       folds=folds, num_classes=st.num_classes)
    units = [(seed, k) for seed in seeds for k in range(folds)]
    with training_group(st.path, GROUP, spec, spec_attr=ATTR_SPEC, status_attr=ATTR_FOLDS, option="--folds",
                        overwrite=overwrite, create_arrays=lambda group: _create_arrays(group, spec),
                        grow=lambda group: _add_seeds(group, seeds, st.labels, folds)) as group:
        if client is None:
            results = [_train_fold(group, st, spec, seed, k, progress) for seed, k in units]
        else:
            results = run_tasks([Task(holdout_fold, (str(st.path), spec, seed, k), {"device": device, "data": data})
                                 for seed, k in units],
                                client=client, progress=progress, gpus_per_run=gpus_per_run, threads=threads)
    tallies = {seed: Tally() for seed in seeds}
    for (seed, k), outcome in zip(units, results):
        tallies[seed].add((seed, k), outcome)
    failed = [unit for t in tallies.values() for unit in t.failed]
    if failed:
        what = ", ".join(f"seed {s} fold {k}" for s, k in failed)
        raise RunFailedError(f"{len(failed)} holdout model(s) diverged (non-finite loss): {what}; lower the "
                             "store's learning rate; the other folds are in the store")
    return [HoldoutOutcome(seed, t.trained, t.skipped) for seed, t in tallies.items()]


def holdout_fold(store: str, spec: HoldoutSpec, seed: int, fold: int, *, device: str = "auto",
                 data: ImageData | None = None, progress: Callable[[ProgressEvent], None] | None = None
                 ) -> RunOutcome:
    """One fold's model as a task (:mod:`scorebank.pipeline.dispatch`): in a store whose
    coordinator grew the holdout group for ``seed``, load the store's data (unless given;
    fingerprint and labels checked) and train the fold under its own lock."""
    st = load_store_training(store, "holdout", device=device, data=data)
    return _train_fold(open_group(st.path, GROUP), st, spec, seed, fold, progress)


def _train_fold(group: zarr.Group, st: StoreTraining, spec: HoldoutSpec, seed: int, k: int, progress
                ) -> RunOutcome:
    """Train (or skip) model ``k`` of ``seed`` through the run lifecycle, owning the unit
    (:class:`~scorebank.pipeline.subset_group.UnitWriter`)."""
    with UnitWriter(st.path, GROUP, ATTR_FOLDS, (seed, k)) as unit:
        check_spec(st.path, GROUP, read_spec(st.path), spec)  # not replaced since the coordinator opened it
        r = [int(s) for s in group[SEED][:]].index(seed)
        assigned = np.asarray(group[ASSIGNED_FOLD][r, :])  # (N,)
        held = np.flatnonzero(assigned == k)  # (n_k,)

        def finish(trainer) -> None:
            probs = predict_probabilities(trainer.model, st.data.train_x[held], st.config.eval_batch_size)  # (n_k, C)
            with shared_chunks(st.path, GROUP):  # the seed's chunks hold every fold's examples
                row = np.asarray(group[PROBABILITY][r, :, :])  # (N, C)
                row[held] = probs
                group[PROBABILITY][r, :, :] = row
                group[FOLD_DONE][r, k] = True  # last: the fold is complete

        slot = SubsetSlot(seed, is_done=lambda: bool(group[FOLD_DONE][r, k]), read_status=lambda: unit.status(group),
                          write_status=unit.set_status, on_finish=finish)
        return train_subset_model(st, slot, np.flatnonzero(assigned != k), trainer_seed(seed, k),
                                  group=f"{GROUP} fold {k}", progress=progress)
