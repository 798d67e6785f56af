"""``scorebank memorization``: train many models on random subsets and record, per model,
which examples it trained on and which it classifies correctly.

Feldman & Zhang (NeurIPS 2020, "What neural networks memorize and why") estimate the
memorisation of training example i as
``mem(i) = P[h(x_i) = y_i | i in S] - P[h(x_i) = y_i | i not in S]`` over models h trained
on random subsets S holding a fraction r of the training set (r = 0.7 in the paper), and the
influence of training example i on test example j the same way with correctness on j.  This
module trains the models and records the raw material; the estimates and their standard
errors are computed from it by :mod:`scorebank.analysis.memorization`.

Model m trains on the subset drawn by ``numpy.random.default_rng([0x3E30, m])``:
``round(keep * N)`` examples uniformly without replacement (``keep`` in (0, 1)), with the
store's configuration (one pass over the subset per epoch), initialised and shuffled like
trainer seed ``MEMORIZATION_SEED_OFFSET + m``.  After the last epoch a clean pass (eval mode,
no augmentation) records its correctness on every training example (w.r.t. the store's
training label ``label``) and on every test example.

Store layout: the Zarr group ``memorization`` (``xarray.open_zarr(store,
group="memorization")``) with

``model`` (model,) int64                       model numbers 0..M-1 (coordinate).
``example`` (example,) int64, ``test_example`` (test_example,) int64
``in_subset`` (model, example) bool            the subset masks (recorded before training).
``correct`` (model, example) bool              clean-pass correctness after training.
``test_correct`` (model, test_example) bool    the same on the test set.
``completed`` (model,) bool                    the model's correctness is written.

and the attributes ``memorization`` (the :class:`MemorizationSpec` as JSON) and ``models``
(``{"<m>": status}``: each model keeps its status in its own record
``checkpoints/memorization/run-M.json`` while it trains, and the command copies the records
into ``models`` when it ends).  Resume: a model is the unit of work, one run of the shared run
lifecycle (:mod:`scorebank.pipeline.subset_training`; the group's bookkeeping is
:mod:`scorebank.pipeline.subset_group`; progress events with ``group``
``"memorization"`` and ``seed`` = m); its values are written (each chunk atomically) and then
``completed``.  Re-running skips completed (and diverged) models and trains the others from
scratch; a larger ``--subsets`` adds models.  The estimate arrays
that :mod:`scorebank.analysis.memorization` adds to the group are dropped whenever models
are added (they describe the models they were computed from).

Dask: with ``client=`` every model is one task (:mod:`scorebank.pipeline.dispatch`), owning the
model under its lock and writing its own ``correct`` / ``test_correct`` chunks; the shared
``completed`` chunk is written under the group's chunk lock.  A worker killed mid-model: the
scheduler runs the task again elsewhere and the model is trained again from scratch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from scorebank.pipeline.datasets import ImageData
from scorebank.pipeline.dispatch import Task, run_tasks
from scorebank.pipeline.lifecycle import ProgressEvent, RunOutcome
from scorebank.pipeline.subset_group import (NO_VALUE, GroupSpec, Tally, UnitWriter, check_spec, open_group,
                                             read_group_spec, shared_chunks, training_group)
from scorebank.pipeline.subset_training import (StoreTraining, SubsetSlot, check_count, load_store_training,
                                                predict_correct, train_subset_model)
from scorebank.stores import heldout as H
from scorebank.stores import schema as S
from scorebank.stores.arrays import create_array
from scorebank.stores.errors import InvalidArgumentError, RunFailedError
from scorebank.stores.heldout import drop_estimates

GROUP = H.MEMORIZATION_GROUP
MODEL, EXAMPLE, TEST_EXAMPLE = H.MODEL, S.EXAMPLE, H.TEST_EXAMPLE
IN_SUBSET, CORRECT, TEST_CORRECT, COMPLETED = H.IN_SUBSET, H.CORRECT, H.TEST_CORRECT, H.COMPLETED
ATTR_SPEC = H.ATTR_MEMORIZATION
ATTR_MODELS = H.ATTR_MODELS
MEMORIZATION_FORMAT = 1
MEMORIZATION_SEED_OFFSET = 3_000_000
MAX_MODELS = 100_000
_SUBSET_SALT = 0x3E30


@dataclass(frozen=True)
class MemorizationSpec(GroupSpec):
    """What determines the group's values, except the number of models."""

    keep: float
    subset_size: int
    n_test: int
    seed_offset: int = MEMORIZATION_SEED_OFFSET
    format: int = MEMORIZATION_FORMAT


def check_keep(keep) -> float:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not math.isfinite(keep) or not 0 < keep < 1:
        raise InvalidArgumentError(f"--keep must be a fraction strictly between 0 and 1 (the paper uses 0.7), "
                                   f"got {keep!r}")
    return float(keep)


def subset_size(n_examples: int, keep: float) -> int:
    """``round(keep * N)`` (half up), refused when it leaves no example in or none out."""
    size = int(math.floor(keep * n_examples + 0.5))
    if not 1 <= size < n_examples:
        raise InvalidArgumentError(
            f"--keep {keep!r} of {n_examples} examples gives subsets of {size}; every subset must hold "
            "at least one example and leave at least one out")
    return size


def subset_mask(n_examples: int, size: int, model: int) -> np.ndarray:
    """``(N,)`` bool: the subset of model ``model`` (see the module docstring)."""
    rng = np.random.default_rng([_SUBSET_SALT, int(model)])
    mask = np.zeros(n_examples, dtype=bool)
    mask[rng.choice(n_examples, size=size, replace=False)] = True
    return mask


def read_spec(store: str | os.PathLike) -> MemorizationSpec | None:
    """The spec of the store's memorization group, or None when it has none."""
    return read_group_spec(store, GROUP, ATTR_SPEC, MemorizationSpec)


def _chunk(n: int) -> int:
    return max(1, min(n, S.PER_EXAMPLE_CHUNK))


def _create_arrays(group: zarr.Group, spec: MemorizationSpec) -> None:
    """The arrays of an empty (zero models) memorization group."""
    n, t = spec.n_examples, spec.n_test
    create_array(group, MODEL, dims=(MODEL,), shape=(0,), dtype="int64", chunks=(1024,), fill_value=NO_VALUE)
    create_array(group, EXAMPLE, dims=(EXAMPLE,), data=np.arange(n, dtype=np.int64), fill_value=NO_VALUE,
                 chunks=(_chunk(n),))
    create_array(group, TEST_EXAMPLE, dims=(TEST_EXAMPLE,), data=np.arange(t, dtype=np.int64), fill_value=NO_VALUE,
                 chunks=(_chunk(t),))
    create_array(group, IN_SUBSET, dims=(MODEL, EXAMPLE), shape=(0, n), dtype="bool", chunks=(1, _chunk(n)),
                 attributes={"description": "the example is in the model's random training subset"})
    create_array(group, CORRECT, dims=(MODEL, EXAMPLE), shape=(0, n), dtype="bool", chunks=(1, _chunk(n)),
                 attributes={"description": "clean-pass correctness (w.r.t. `label`) after training; "
                                            "False where `completed` is False"})
    create_array(group, TEST_CORRECT, dims=(MODEL, TEST_EXAMPLE), shape=(0, t), dtype="bool",
                 chunks=(1, _chunk(t)), attributes={"description": "correctness on the test example after "
                                                                   "training"})
    create_array(group, COMPLETED, dims=(MODEL,), shape=(0,), dtype="bool", chunks=(1024,),
                 attributes={"description": "the model's correctness is written"})


def _add_models(path: Path, group: zarr.Group, models: int, spec: MemorizationSpec) -> None:
    """Grow the ``model`` dimension to ``models``; the new subset masks are written before the
    ``model`` coordinate, which is resized last."""
    old = int(group[MODEL].shape[0])
    if models <= old:
        return
    drop_estimates(path / GROUP, group)
    for name in (IN_SUBSET, CORRECT, TEST_CORRECT, COMPLETED):
        arr = group[name]
        arr.resize((old,) + arr.shape[1:])  # drop rows a crash left behind
        arr.resize((models,) + arr.shape[1:])
    for m in range(old, models):
        group[IN_SUBSET][m, :] = subset_mask(spec.n_examples, spec.subset_size, m)
    model = group[MODEL]
    model.resize((models,))
    model[old:] = np.arange(old, models, dtype=np.int64)


@dataclass(frozen=True)
class MemorizationOutcome:
    trained: int
    skipped: int
    failed: tuple[int, ...]


def memorization(store: str | os.PathLike, subsets: int, keep: float = 0.7, *, device: str = "auto",
                 overwrite: bool = False, progress: Callable[[ProgressEvent], None] | None = None,
                 data: ImageData | None = None, client=None, gpus_per_run: int = 0,
                 threads: int | None = None) -> MemorizationOutcome:
    """Train models 0..``subsets``-1 on random subsets of a fraction ``keep`` of the store's
    training examples and record subsets and correctness into the ``memorization`` group (see
    the module docstring).

    Re-running skips completed models and adds new ones (a smaller ``subsets`` trains
    nothing new; the group keeps its models).  A group made with another ``keep``,
    configuration or data set is refused (:class:`ConfigMismatchError`) unless ``overwrite``.
    Raises :class:`RunFailedError` after all models ran if some diverged.

    ``client``: a ``distributed.Client``; every model is then one task on its workers
    (:mod:`scorebank.pipeline.dispatch`: ``gpus_per_run`` worker resources ``GPU``, ``threads``
    torch threads per task), each loading the data itself unless ``data`` was given.  This
    process is the coordinator (:mod:`scorebank.pipeline.subset_group`); the records equal the
    sequential ones bit for bit on CPU at the same torch thread count."""
    subsets = check_count(subsets, "--subsets", 1, MAX_MODELS)
    keep = check_keep(keep)
    st = load_store_training(store, "memorization", device=device, data=data)
    spec = MemorizationSpec(training=st.config, dataset_fingerprint=st.fingerprint, n_examples=st.n_examples,
                            keep=keep, subset_size=subset_size(st.n_examples, keep), n_test=st.n_test)
    with training_group(st.path, GROUP, spec, spec_attr=ATTR_SPEC, status_attr=ATTR_MODELS, option="--keep",
                        overwrite=overwrite, create_arrays=lambda group: _create_arrays(group, spec),
                        grow=lambda group: _add_models(st.path, group, subsets, spec)) as group:
        if client is None:
            results = [_train_model(group, st, spec, m, progress) for m in range(subsets)]
        else:
            results = run_tasks([Task(memorization_model, (str(st.path), spec, m), {"device": device, "data": data})
                                 for m in range(subsets)],
                                client=client, progress=progress, gpus_per_run=gpus_per_run, threads=threads)
    tally = Tally()
    for m, outcome in enumerate(results):
        tally.add(m, outcome)
    if tally.failed:
        raise RunFailedError(f"{len(tally.failed)} subset model(s) diverged (non-finite loss): models "
                             f"{tally.failed!r}; lower the store's learning rate; the other models are in the store")
    return MemorizationOutcome(tally.trained, tally.skipped, tuple(tally.failed))


def memorization_model(store: str, spec: MemorizationSpec, m: int, *, device: str = "auto",
                       data: ImageData | None = None, progress: Callable[[ProgressEvent], None] | None = None
                       ) -> RunOutcome:
    """Model ``m`` as a task (:mod:`scorebank.pipeline.dispatch`): in a store whose
    coordinator grew the memorization group to it, load the store's data (unless given;
    fingerprint and labels checked) and train the model under its own lock."""
    st = load_store_training(store, "memorization", device=device, data=data)
    return _train_model(open_group(st.path, GROUP), st, spec, m, progress)


def _train_model(group: zarr.Group, st: StoreTraining, spec: MemorizationSpec, m: int, progress) -> RunOutcome:
    """Train (or skip) model ``m`` through the run lifecycle, owning the unit
    (:class:`~scorebank.pipeline.subset_group.UnitWriter`)."""
    bs, d = st.config.eval_batch_size, st.data

    def finish(trainer) -> None:
        group[CORRECT][m, :] = predict_correct(trainer.model, d.train_x, d.train_y, bs)  # the model's own chunks
        group[TEST_CORRECT][m, :] = predict_correct(trainer.model, d.test_x, d.test_y, bs)
        with shared_chunks(st.path, GROUP):  # one chunk holds many models' flags
            group[COMPLETED][m] = True  # last: the model is complete

    with UnitWriter(st.path, GROUP, ATTR_MODELS, (m,)) as unit:
        check_spec(st.path, GROUP, read_spec(st.path), spec)  # not replaced since the coordinator opened it
        slot = SubsetSlot(m, is_done=lambda: bool(group[COMPLETED][m]), read_status=lambda: unit.status(group),
                          write_status=unit.set_status, on_finish=finish)
        subset = np.flatnonzero(np.asarray(group[IN_SUBSET][m, :]))  # (subset_size,)
        return train_subset_model(st, slot, subset, spec.seed_offset + m, group=GROUP, progress=progress)
