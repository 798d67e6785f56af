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
the data set fingerprint) and ``folds`` (``{"<seed>/<fold>": status}`` of each fold's
model).  Model k of seed s initialises and shuffles like trainer seed
``HOLDOUT_SEED_OFFSET + s * MAX_FOLDS + k``, so it never reuses a scoring or retrain run's
initialisation.

Resume: folds are the unit of work, each fold's model one run of the shared run lifecycle
(:mod:`scorebank.pipeline.subset_training`, :func:`scorebank.pipeline.lifecycle.drive_run`:
status ``running`` / ``complete`` / ``failed`` / ``interrupted``, progress events whose
``group`` is ``"holdout fold K"`` and ``seed`` the holdout seed).  A fold's probabilities are
written (each chunk atomically), then its ``fold_done`` flag; a re-run skips done (and
diverged) folds and retrains the others from scratch, and new seeds extend the ``seed``
dimension.  The group is built under a temporary name and
renamed into place, so it is either absent or complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from scorebank.pipeline.config import ScoreConfig
from scorebank.pipeline.datasets import ImageData
from scorebank.pipeline.lifecycle import ProgressEvent
from scorebank.pipeline.subset_training import (StoreTraining, SubsetSlot, check_count, load_store_training,
                                                predict_probabilities, train_subset_model)
from scorebank.stores import heldout as H
from scorebank.stores import schema as S
from scorebank.stores.arrays import create_array
from scorebank.stores.errors import ConfigMismatchError, InvalidArgumentError, RunFailedError
from scorebank.stores.zarrstore import StoreWriter, consolidate, now_iso, scorebank_version

GROUP = H.HOLDOUT_GROUP
SEED, EXAMPLE, CLASS, FOLD = H.SEED, S.EXAMPLE, H.CLASS, H.FOLD
ASSIGNED_FOLD, PROBABILITY, FOLD_DONE, ATTR_SPEC = H.ASSIGNED_FOLD, H.PROBABILITY, H.FOLD_DONE, H.ATTR_HOLDOUT
ATTR_FOLDS = "folds"  # {"<seed>/<fold>": status record of that fold's model}
HOLDOUT_FORMAT = 1
HOLDOUT_SEED_OFFSET = 2_000_000
MAX_FOLDS = 1000
_FOLD_SALT = 0x401D0

#: fill value of the coordinate arrays: never a valid value, so every chunk of them is stored
_NO_VALUE = -1


@dataclass(frozen=True)
class HoldoutSpec:
    """What determines a holdout group's values, except the seeds (attribute ``holdout``)."""

    folds: int
    training: ScoreConfig
    dataset_fingerprint: str
    n_examples: int
    num_classes: int
    seed_offset: int = HOLDOUT_SEED_OFFSET
    format: int = HOLDOUT_FORMAT

    def to_json(self) -> str:
        out = dataclasses.asdict(self)
        out["training"] = json.loads(self.training.to_json())
        return json.dumps(out, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "HoldoutSpec":
        raw = json.loads(text)
        raw["training"] = ScoreConfig.from_json(json.dumps(raw["training"]))
        return cls(**{k: v for k, v in raw.items() if k in {f.name for f in dataclasses.fields(cls)}})

    def differences(self, other: "HoldoutSpec") -> dict[str, tuple]:
        diff = {f"training.{k}": v for k, v in self.training.differences(other.training).items()}
        for f in dataclasses.fields(self):
            if f.name != "training" and getattr(self, f.name) != getattr(other, f.name):
                diff[f.name] = (getattr(self, f.name), getattr(other, f.name))
        return diff


@dataclass(frozen=True)
class HoldoutOutcome:
    seed: int
    folds_trained: int
    folds_skipped: int


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
def _group_dir(path: Path) -> Path:
    return path / GROUP


def read_spec(store: str | os.PathLike) -> HoldoutSpec | None:
    """The spec of the store's holdout group, or None when it has none."""
    meta = _group_dir(Path(store)) / "zarr.json"
    if not meta.is_file():
        return None
    attrs = json.loads(meta.read_text()).get("attributes", {})
    return HoldoutSpec.from_json(attrs[ATTR_SPEC]) if ATTR_SPEC in attrs else None


def _create_group(writer: StoreWriter, spec: HoldoutSpec) -> None:
    """Create an empty (zero seeds) holdout group under a temporary name, then rename it."""
    parent = writer.path
    tmp_name = f".{GROUP}.{uuid.uuid4().hex[:8]}.partial"
    n, c, k = spec.n_examples, spec.num_classes, spec.folds
    try:
        group = writer.root.create_group(tmp_name)
        create_array(group, SEED, dims=(SEED,), shape=(0,), dtype="int64", chunks=(1,), fill_value=_NO_VALUE)
        create_array(group, EXAMPLE, dims=(EXAMPLE,), data=np.arange(n, dtype=np.int64), fill_value=_NO_VALUE,
                     chunks=(max(1, min(n, S.PER_EXAMPLE_CHUNK)),))
        create_array(group, CLASS, dims=(CLASS,), data=np.arange(c, dtype=np.int64), fill_value=_NO_VALUE)
        create_array(group, FOLD, dims=(FOLD,), data=np.arange(k, dtype=np.int64), fill_value=_NO_VALUE)
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
        group.attrs.update({ATTR_SPEC: spec.to_json(), ATTR_FOLDS: {}, S.ATTR_CREATED: now_iso(),
                            S.ATTR_VERSION: scorebank_version()})
        os.rename(parent / tmp_name, _group_dir(parent))
    except BaseException:
        shutil.rmtree(parent / tmp_name, ignore_errors=True)
        raise


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


def _open(path: Path) -> zarr.Group:
    return zarr.open_group(_group_dir(path), mode="r+", zarr_format=3, use_consolidated=False)


# ----------------------------------------------------------------------------- the engine
def holdout(store: str | os.PathLike, folds: int, seeds: Sequence[int], *, device: str = "auto",
            overwrite: bool = False, progress: Callable[[ProgressEvent], None] | None = None,
            data: ImageData | None = None) -> list[HoldoutOutcome]:
    """Record K-fold out-of-fold predicted probabilities of every training example of
    ``store`` for each of ``seeds`` into its ``holdout`` group (see the module docstring).

    Re-running skips done folds and adds new seeds.  An existing group made with another K,
    configuration or data set is refused (:class:`ConfigMismatchError`) unless ``overwrite``
    (which replaces it).  Everything is validated before anything is written.  Raises
    :class:`RunFailedError` after every fold ran if a model diverged (its fold stays not done)."""
    folds = check_count(folds, "--folds", 2, MAX_FOLDS)
    seeds = _check_seeds(seeds)
    st = load_store_training(store, "holdout", device=device, data=data)
    if folds > st.n_examples:
        raise InvalidArgumentError(f"--folds {folds!r} exceeds the store's {st.n_examples} training examples")
    spec = HoldoutSpec(folds, st.config, st.fingerprint, st.n_examples, st.num_classes)
    old = read_spec(st.path)
    if old is not None and not overwrite:
        _refuse_mismatch(st.path, old, spec)
    outcomes = []
    with StoreWriter(st.path) as writer:
        if old is not None and overwrite:
            shutil.rmtree(_group_dir(st.path))
            old = None
        if old is None:
            _create_group(writer, spec)
        else:
            _refuse_mismatch(st.path, read_spec(st.path), spec)  # again, under the lock
        group = _open(st.path)
        _add_seeds(group, seeds, st.labels, folds)
        consolidate(st.path)
        group = _open(st.path)  # handles with the new shapes
        failed = []
        try:
            for seed in seeds:
                outcome, bad = _holdout_seed(group, st, spec, seed, progress)
                outcomes.append(outcome)
                failed.extend(bad)
        finally:  # the status records, also after Ctrl-C
            consolidate(st.path)
    if failed:
        what = ", ".join(f"seed {s} fold {k}" for s, k in failed)
        raise RunFailedError(f"{len(failed)} holdout model(s) diverged (non-finite loss): {what}; lower the "
                             "store's learning rate; the other folds are in the store")
    return outcomes


def _refuse_mismatch(path: Path, old: HoldoutSpec, new: HoldoutSpec) -> None:
    diff = old.differences(new)
    if diff:
        listing = "; ".join(f"{k}: group has {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise ConfigMismatchError(
            f"the holdout group of {str(path)!r} was made with other settings ({listing}); "
            "use the same --folds, or --overwrite to replace it")


def _unit(seed: int, fold: int) -> str:
    return f"{seed}/{fold}"


def _holdout_seed(group: zarr.Group, st: StoreTraining, spec: HoldoutSpec, seed: int, progress
                  ) -> tuple[HoldoutOutcome, list[tuple[int, int]]]:
    """Train (or skip) the K fold models of one seed through the run lifecycle."""
    r = [int(s) for s in group[SEED][:]].index(seed)
    assigned = np.asarray(group[ASSIGNED_FOLD][r, :])  # (N,)
    trained = skipped = 0
    failed = []
    for k in range(spec.folds):
        held = np.flatnonzero(assigned == k)  # (n_k,)

        def finish(trainer, held=held, k=k) -> None:
            probs = predict_probabilities(trainer.model, st.data.train_x[held], st.config.eval_batch_size)  # (n_k, C)
            row = np.asarray(group[PROBABILITY][r, :, :])  # (N, C)
            row[held] = probs
            group[PROBABILITY][r, :, :] = row
            group[FOLD_DONE][r, k] = True  # last: the fold is complete

        slot = SubsetSlot(seed, is_done=lambda k=k: bool(group[FOLD_DONE][r, k]),
                          read_status=lambda k=k: dict(group.attrs.get(ATTR_FOLDS, {})).get(_unit(seed, k), {}),
                          write_status=lambda record, k=k: _set_fold_status(group, seed, k, record),
                          on_finish=finish)
        outcome = train_subset_model(st, slot, np.flatnonzero(assigned != k), trainer_seed(seed, k),
                                     group=f"{GROUP} fold {k}", progress=progress)
        if outcome.status == S.RUN_FAILED:
            failed.append((seed, k))
        elif outcome.skipped:
            skipped += 1
        else:
            trained += 1
    return HoldoutOutcome(seed, trained, skipped), failed


def _set_fold_status(group: zarr.Group, seed: int, fold: int, record: dict) -> None:
    folds = dict(group.attrs.get(ATTR_FOLDS, {}))
    folds[_unit(seed, fold)] = record
    group.attrs[ATTR_FOLDS] = folds
