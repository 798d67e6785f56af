"""Easy and hard examples as a test of Coherent Gradients (Zielinski, Krishnan, Chatterjee,
"Weak and strong gradient directions", Sec. 4.2, Fig. 4 and the 2x2 table of Sec. 4.4).

In one scoring run, take the first recorded epoch whose clean-pass training accuracy
reaches ``threshold`` (50% in the paper): the examples classified correctly there are
*easy*, the rest *hard* (:func:`scorebank.analysis.difficulty.difficulty`).  Each group is
split at random (``split_seed``) into a training part and a held-out part of
``test_fraction`` (e-train/e-test, h-train/h-test).  Fresh networks (new seeds, from
initialisation: seed ``s`` trains with ``RETRAIN_SEED_OFFSET + s`` like ``retrain``, so no
network shares the initialisation of the scoring run that defined easy/hard; the store's
training configuration unless overridden) are trained on
e-train and, separately, on h-train, for the store's number of epochs over their subset,
and evaluated on all four parts with a clean pass (BatchNorm in eval mode, no
augmentation), against the labels the store trained on.

The paper's prediction: easy generalises to easy better than hard to hard (a smaller
generalisation gap = train accuracy on the own training part minus accuracy on the own
held-out part).  Results are stored under the store's ``easy_hard/<name>`` group.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from scorebank.core.config import check_seeds
from scorebank.pipeline.dispatch import Task, run_tasks
from scorebank.pipeline.lifecycle import MemorySlot, ProgressEvent, drive_run
from scorebank.pipeline.retrain import RETRAIN_SEED_OFFSET, check_group_name, load_store_data, retrain_config
from scorebank.pipeline.training import Trainer, clean_pass
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError, RunFailedError
from scorebank.stores.zarrstore import (IDENTITY_ATTRS, StoreWriter, consolidate, now_iso, require_store_directory,
                                        root_attrs)

GROUP = "easy_hard"
TRAINED_ON = ("easy", "hard")
PARTS = ("easy-train", "easy-test", "hard-train", "hard-test")


@dataclass(frozen=True)
class Split:
    """Example indices of the four parts (each sorted)."""

    easy_train: np.ndarray
    easy_test: np.ndarray
    hard_train: np.ndarray
    hard_test: np.ndarray

    def parts(self) -> dict[str, np.ndarray]:
        return dict(zip(PARTS, (self.easy_train, self.easy_test, self.hard_train, self.hard_test)))


def split_easy_hard(hard: np.ndarray, test_fraction: float, seed: int) -> Split:
    """Split easy (``~hard``) and hard examples each into a training and a held-out part.

    Each group of size n gives ``round(test_fraction * n)`` held-out examples drawn without
    replacement by ``numpy.random.default_rng(seed)``; every part must be non-empty."""
    if isinstance(test_fraction, bool) or not 0 < test_fraction < 1:
        raise InvalidArgumentError(f"--test-fraction must be in (0, 1), got {test_fraction!r}; e.g. 0.17")
    rng = np.random.default_rng(seed)
    out = []
    for name, members in (("easy", np.flatnonzero(~hard)), ("hard", np.flatnonzero(hard))):
        k = int(round(test_fraction * len(members)))
        if k < 1 or k >= len(members):
            raise InvalidArgumentError(
                f"{len(members)} {name} examples with --test-fraction {test_fraction!r} leave an empty "
                f"{'held-out' if k < 1 else 'training'} part; change --test-fraction or --threshold")
        test = np.sort(rng.choice(members, size=k, replace=False))
        out += [np.setdiff1d(members, test), test]
    return Split(*out)


def easy_hard(store: str | os.PathLike, *, seeds: Sequence[int] = (0,), threshold: float = 0.5,
              run: int | None = None, test_fraction: float = 0.17, split_seed: int = 0,
              overrides: Mapping | None = None, device: str = "auto", name: str | None = None,
              progress: Callable[[ProgressEvent], None] | None = None, client=None,
              gpus_per_run: int = 0) -> xr.Dataset:
    """Run the easy/hard experiment and store it; returns the result Dataset with
    ``accuracy`` (seed, trained_on, evaluated_on), its mean over seeds ``mean_accuracy``
    (trained_on, evaluated_on), ``generalization_gap`` (seed, trained_on) and the part
    sizes.  ``run`` picks the scoring run that defines easy/hard (default: the first
    completed run).  Each network goes through the shared run lifecycle
    (:func:`scorebank.pipeline.lifecycle.drive_run`, in memory: nothing is checkpointed) and
    reports :class:`~scorebank.pipeline.lifecycle.ProgressEvent` s with ``group`` =
    ``"<name>/easy-train"`` or ``"<name>/hard-train"``.  ``client``: a ``distributed.Client``;
    every network is then one Dask task (:mod:`scorebank.pipeline.dispatch`; a killed
    worker's network trains again from the start elsewhere) and this process writes the
    result."""
    from scorebank.analysis import access
    from scorebank.analysis.difficulty import difficulty

    seeds = check_seeds(seeds)
    identity = root_attrs(require_store_directory(store, "easy-hard"), IDENTITY_ATTRS)  # checked again when writing
    ds = access.open_store(store)
    completed = access.completed_runs(ds)
    if run is None:
        if not completed:
            raise InvalidArgumentError(f"store {os.fspath(store)!r} has no completed runs")
        run = completed[0]
    diff = difficulty(ds, threshold=threshold, runs=[run])
    hard = diff["hard"].values[0]
    split = split_easy_hard(hard, test_fraction, split_seed)
    name = check_group_name(name or f"threshold{threshold:g}-run{run}-split{split_seed}")
    sd = load_store_data(store, device=device)
    config = retrain_config(sd.config, overrides)
    parts = split.parts()
    acc = np.full((len(seeds), 2, 4), np.nan)
    networks = [(seed, group, train_idx) for seed in seeds
                for group, train_idx in (("easy", split.easy_train), ("hard", split.hard_train))]
    if client is None:
        rows = [_network(sd, config, seed, group, train_idx, parts, name, progress)
                for seed, group, train_idx in networks]
    else:
        rows = run_tasks([Task(network_task, (os.fspath(store), config, seed, group, train_idx, parts, name),
                               {"device": str(sd.device)}) for seed, group, train_idx in networks],
                         client=client, progress=progress, gpus_per_run=gpus_per_run)
    for k, row in enumerate(rows):
        acc[k // 2, k % 2] = row
    seeds_arr = np.asarray(seeds, dtype=np.int64)
    gap = np.stack([acc[:, 0, 0] - acc[:, 0, 1], acc[:, 1, 2] - acc[:, 1, 3]], axis=1)  # (seed, trained_on)
    result = xr.Dataset(
        {"accuracy": (("seed", "trained_on", "evaluated_on"), acc),
         "mean_accuracy": (("trained_on", "evaluated_on"), acc.mean(axis=0)),
         "generalization_gap": (("seed", "trained_on"), gap),
         "part_size": (("evaluated_on",), np.array([len(v) for v in parts.values()], dtype=np.int64))},
        coords={"seed": seeds_arr, "trained_on": list(TRAINED_ON), "evaluated_on": list(PARTS)},
        attrs={"threshold": float(threshold), "run": int(run), "test_fraction": float(test_fraction),
               "split_seed": int(split_seed), "threshold_epoch": int(diff["threshold_epoch"].values[0]),
               "config": config.to_json(), "created": now_iso(),
               "definition": "accuracy of networks trained on easy-train / hard-train, evaluated with a "
                             "clean pass on each part (Coherent Gradients Sec. 4.2)"})
    for key, idx in parts.items():
        result[key.replace("-", "_") + "_indices"] = ((key.replace("-", "_"),), idx.astype(np.int64))
    _write(store, name, result, identity)
    return result


def _network(sd, config, seed: int, group: str, train_idx: np.ndarray, parts: dict[str, np.ndarray], name: str,
             progress) -> list[float]:
    """Train one network of seed ``seed`` on ``train_idx`` (``group``: easy or hard) and
    return its clean-pass accuracy on each part, in the order of ``parts``."""
    pool = torch.as_tensor(train_idx, device=sd.device)
    trainers: list[Trainer] = []

    def make_trainer() -> Trainer:
        trainers.append(Trainer(config, sd.device_data, RETRAIN_SEED_OFFSET + seed, sd.device, indices=pool))
        return trainers[-1]

    outcome = drive_run(MemorySlot(seed), make_trainer, total_epochs=config.epochs, device=sd.device,
                        progress=progress, group=f"{name}/{group}-train")
    if outcome.status == S.RUN_FAILED:
        raise RunFailedError(
            f"the network of seed {seed} trained on {group}-train diverged (non-finite loss) in "
            f"epoch {outcome.failed_epoch}; lower --lr; nothing was written")
    correct = clean_pass(trainers[0].model, sd.device_data.train_x, sd.device_data.train_y,
                         config.eval_batch_size)[S.CORRECT].cpu().numpy()
    return [correct[idx].mean() for idx in parts.values()]


def network_task(store: str, config, seed: int, group: str, train_idx: np.ndarray, parts: dict[str, np.ndarray],
                 name: str, *, device: str = "auto", progress=None) -> list[float]:
    """One easy/hard network as a Dask task: the store's data loaded on the worker
    (fingerprint checked), then :func:`_network`."""
    return _network(load_store_data(store, device=device), config, seed, group, train_idx, parts, name, progress)


def _write(store: str | os.PathLike, name: str, result: xr.Dataset, identity: dict) -> None:
    """Store the result as group ``easy_hard/<name>`` (replacing an earlier one), under the
    store's lock; metadata is re-consolidated afterwards.  The string coordinates
    ``trained_on``/``evaluated_on`` become attrs of the same names (Zarr v3 has no stable
    string data type), so the stored dims are plain positions in that order."""
    path = Path(store)
    stored = result.drop_vars(["trained_on", "evaluated_on"])
    stored.attrs.update(trained_on=list(TRAINED_ON), evaluated_on=list(PARTS))
    with StoreWriter(path) as writer:
        writer.check_unchanged(identity, "easy-hard")
        stored.to_zarr(path, group=f"{GROUP}/{name}", mode="w", zarr_format=3, consolidated=False)
        consolidate(path)
