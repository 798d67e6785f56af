"""Bringing training dynamics recorded by other tools into a scorebank store.

Formats (:data:`FORMATS`, a registry; ``scorebank import-dynamics FORMAT PATH --out STORE``):

``datamaps``
    Dataset Cartography (Swayamdipta et al., allenai/cartography): a directory (or its
    parent holding ``training_dynamics/``) of ``dynamics_epoch_<e>.jsonl`` files, one JSON
    object per line ``{"guid": <int>, "logits_epoch_<e>": [f_1, ..., f_K], "gold": <int>}``.
    These are the logits of the training forward pass of epoch e (cartography numbers
    the files from 0, so file e is scorebank epoch e+1; files numbered from 1 are taken
    as they are).  Each becomes ``train_correct`` (in-flight correctness, for forgetting)
    and margin / EL2N / loss / correct of that epoch (computed from those in-flight
    logits: the store's ``config`` says so).  Examples are ordered by guid, which
    becomes ``original_index``.
``logits``
    per-epoch logits as numpy arrays: an ``.npz`` with ``logits`` ``(run, epoch, example,
    class)`` (or ``(epoch, example, class)`` for one run) and ``labels`` ``(example,)``,
    optionally ``seeds`` ``(run,)``, ``epochs`` ``(epoch,)`` (the scorebank epoch of each
    slice, default 0, 1, ...), ``original_index`` ``(example,)`` and ``train_correct``
    ``(run, epoch, example)``; or an ``.npy`` of logits with ``--labels``.  The logits are
    taken as clean-pass logits (model in eval mode).
``datadiet``
    the Data Diet code (Paul et al., mansheej/data_diet): an experiment directory with
    ``run_<r>/error_l2_norm_scores/ckpt_<step>.npy`` (EL2N) and
    ``run_<r>/grad_norm_scores/ckpt_<step>.npy`` (GraNd) score arrays over the training
    set, written by its ``get_run_score.py``; ``--labels`` gives the training labels and
    ``--steps-per-epoch`` turns checkpoint steps into epochs.  Margin, loss, correctness
    and forgetting are not in these files (NaN / False).

Nothing is ever unpickled (``allow_pickle=False``); the store is written in a temporary
sibling directory and renamed into place, so ``--out`` either holds the whole import or
nothing.  Scores are computed by the functions ``score`` uses
(:func:`scorebank.pipeline.training.example_scores`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from scorebank.core.errors import InvalidArgumentError, StoreExistsError
from scorebank.core.registry import Registry
from scorebank.pipeline.record import CONFIG_SOURCE, dataset_fingerprint
from scorebank.pipeline.training import correct_from_logits, example_scores
from scorebank.stores import schema as S
from scorebank.stores.create import consolidate, create_store
from scorebank.stores.zarrstore import StoreWriter

__all__ = ["FORMATS", "ImportFormatError", "Imported", "import_dynamics"]


class ImportFormatError(InvalidArgumentError):
    """The file does not hold what the format describes (CLI exit status 2)."""


@dataclass
class Imported:
    """What a format reader found: the examples, and per (seed, epoch) the values to write."""

    labels: np.ndarray  # (N,) int64
    original_index: np.ndarray  # (N,) int64
    seeds: tuple[int, ...]
    epochs: int  # the store holds epochs 0..epochs
    num_classes: int
    values: Iterator[tuple[int, int, dict, dict]]  # (seed, epoch, per_example, per_epoch)
    features: frozenset[str] = frozenset()
    config: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Options:
    """The CLI's options, for the readers that need them."""

    labels: str | None = None
    seed: int = 0
    steps_per_epoch: int | None = None


FORMATS: Registry = Registry("dynamics format", "FORMAT")


def _clean_values(logits: np.ndarray, labels: torch.Tensor, where: str, inflight: bool) -> tuple[dict, dict]:
    """Per-example scores and the per-epoch summary of one (run, epoch) of logits ``(N, K)``."""
    f = torch.from_numpy(np.ascontiguousarray(logits))
    if not bool(torch.isfinite(f).all()):
        bad = int(torch.nonzero(~torch.isfinite(f).all(1))[0, 0])
        raise ImportFormatError(f"{where}: example {bad!r} has non-finite logits; such a run diverged and "
                                "cannot be imported")
    scores = example_scores(f, labels)
    per_example = {k: v.numpy() for k, v in scores.items()}
    per_epoch = {S.TRAIN_ACCURACY: float(scores[S.CORRECT].float().mean()),
                 S.TRAIN_LOSS: float(scores[S.LOSS].double().mean()), S.RECORDED: True}
    if inflight:
        per_example[S.TRAIN_CORRECT] = correct_from_logits(f, labels).numpy()
    return per_example, per_epoch


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ImportFormatError(f"{what} {os.fspath(path)!r} is not a readable .npy array without pickle "
                                f"({' '.join(str(exc).split())})") from None


def _labels(options: Options, n: int | None, fmt: str) -> np.ndarray:
    if options.labels is None:
        raise InvalidArgumentError(f"{fmt} files hold no labels; pass --labels LABELS.npy (int array, one per example)")
    labels = _load_npy(Path(options.labels), "--labels")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (n is not None and len(labels) != n):
        raise ImportFormatError(f"--labels {options.labels!r} has shape {labels.shape!r} dtype {str(labels.dtype)!r}; "
                                f"expected ({n if n is not None else 'N'},) integers")
    if labels.size and labels.min() < 0:
        raise ImportFormatError(f"--labels {options.labels!r} holds a negative label {int(labels.min())!r}")
    return labels.astype(np.int64)


# ------------------------------------------------------------------ data maps
_DATAMAPS_FILE = re.compile(r"dynamics_epoch_([0-9]+)\.jsonl?")


@FORMATS.register("datamaps", help="Dataset Cartography training_dynamics/dynamics_epoch_<e>.jsonl "
                                    "(guid, logits_epoch_<e>, gold per line)")
def read_datamaps(path: Path, options: Options) -> Imported:
    directory = path / "training_dynamics" if (path / "training_dynamics").is_dir() else path
    if not directory.is_dir():
        raise ImportFormatError(f"{os.fspath(path)!r} is not a directory of dynamics_epoch_<e>.jsonl files")
    files = {int(m.group(1)): p for p in directory.iterdir() if (m := _DATAMAPS_FILE.fullmatch(p.name))}
    if not files:
        raise ImportFormatError(f"{os.fspath(directory)!r} holds no dynamics_epoch_<e>.jsonl files")
    numbers = sorted(files)
    if numbers[0] not in (0, 1) or numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise ImportFormatError(f"{os.fspath(directory)!r}: epoch files {numbers!r} are not consecutive from 0 or 1")
    shift = 1 - numbers[0]  # cartography's file 0 holds the logits of the first training epoch
    guids, gold, first = _datamaps_file(files[numbers[0]], numbers[0])
    order = np.argsort(guids, kind="stable")
    guids, gold = guids[order], gold[order]
    labels = torch.from_numpy(gold)
    num_classes = first.shape[1]
    if gold.min() < 0 or gold.max() >= num_classes:
        raise ImportFormatError(f"{os.fspath(files[numbers[0]])!r}: gold label {int(gold.max())!r} does not index "
                                f"the {num_classes} logits")

    def values():
        for e in numbers:
            g, y, logits = (guids, gold, first[order]) if e == numbers[0] else _datamaps_file(files[e], e)
            if e != numbers[0]:
                o = np.argsort(g, kind="stable")
                g, y, logits = g[o], y[o], logits[o]
                if not np.array_equal(g, guids) or not np.array_equal(y, gold) or logits.shape[1] != num_classes:
                    raise ImportFormatError(f"{os.fspath(files[e])!r} holds other examples, labels or classes than "
                                            f"{files[numbers[0]].name!r}; every epoch file must list the same guids")
            per_example, per_epoch = _clean_values(logits, labels, os.fspath(files[e]), inflight=True)
            yield options.seed, e + shift, per_example, per_epoch

    config = {"logits": "in-flight (training forward pass, train mode); the clean-pass variables are "
                        "computed from them", "files": f"dynamics_epoch_{numbers[0]}..{numbers[-1]}.jsonl"}
    return Imported(gold, guids, (options.seed,), numbers[-1] + shift, num_classes, values(), config=config)


def _datamaps_file(path: Path, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    key = f"logits_epoch_{epoch}"
    guids, gold, rows = [], [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{os.fspath(path)!r} line {number}"
            try:
                record = json.loads(line)
            except ValueError:
                raise ImportFormatError(f"{where} is not JSON") from None
            if not isinstance(record, dict):
                raise ImportFormatError(f"{where} is not a JSON object")
            logits = record.get(key, record.get("logits"))
            guid, label = record.get("guid"), record.get("gold")
            if isinstance(guid, str) and guid.isdigit():
                guid = int(guid)
            if not _is_int(guid) or not _is_int(label) or not isinstance(logits, list) or not logits \
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in logits):
                raise ImportFormatError(
                    f"{where}: expected {{'guid': int, {key!r}: [numbers], 'gold': int}}, got keys "
                    f"{sorted(record)[:6]!r}")
            guids.append(guid)
            gold.append(label)
            rows.append(logits)
    if not rows:
        raise ImportFormatError(f"{os.fspath(path)!r} holds no records")
    if len({len(r) for r in rows}) != 1:
        raise ImportFormatError(f"{os.fspath(path)!r}: records have different numbers of logits")
    g = np.asarray(guids, dtype=np.int64)
    if np.unique(g).size != g.size:
        ordered = np.sort(g)
        dup = int(ordered[np.flatnonzero(np.diff(ordered) == 0)[0]])
        raise ImportFormatError(f"{os.fspath(path)!r}: guid {dup!r} appears twice")
    return g, np.asarray(gold, dtype=np.int64), np.asarray(rows, dtype=np.float32)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ------------------------------------------------------------------ numpy logits
@FORMATS.register("logits", help="per-epoch logits (run, epoch, example, class) in an .npz with 'labels', "
                                  "or an .npy with --labels")
def read_logits(path: Path, options: Options) -> Imported:
    if path.suffix == ".npy":
        arrays = {"logits": _load_npy(path, "logits file")}
    elif path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ImportFormatError(f"{os.fspath(path)!r} is not a readable .npz without pickle "
                                    f"({' '.join(str(exc).split())})") from None
    else:
        raise ImportFormatError(f"{os.fspath(path)!r}: the logits format reads .npz or .npy files")
    logits = arrays.get("logits")
    if logits is None:
        raise ImportFormatError(f"{os.fspath(path)!r} has no 'logits' array (has {sorted(arrays)!r})")
    if logits.ndim == 3:
        logits = logits[None]  # (epoch, example, class) -> (1, epoch, example, class)
    if logits.ndim != 4 or not np.issubdtype(logits.dtype, np.floating):
        raise ImportFormatError(f"{os.fspath(path)!r}: 'logits' has shape {logits.shape!r} dtype {str(logits.dtype)!r}; "
                                "expected floats (run, epoch, example, class)")
    r, e, n, k = logits.shape
    if "labels" in arrays:
        labels = arrays["labels"]
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ImportFormatError(f"{os.fspath(path)!r}: 'labels' has shape {labels.shape!r}, expected ({n},) integers")
        labels = labels.astype(np.int64)
    else:
        labels = _labels(options, n, "the logits .npy")
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ImportFormatError(f"label {int(labels.max() if labels.max() >= k else labels.min())!r} does not index "
                                f"the {k} logits")
    seeds = _int_vector(arrays, "seeds", np.arange(r), r, path)
    epochs = _int_vector(arrays, "epochs", np.arange(e), e, path)
    if len(set(seeds.tolist())) != r or (seeds < 0).any():
        raise ImportFormatError(f"{os.fspath(path)!r}: 'seeds' {seeds.tolist()!r} must be distinct non-negative integers")
    if (epochs < 0).any() or (np.diff(epochs) <= 0).any():
        raise ImportFormatError(f"{os.fspath(path)!r}: 'epochs' {epochs.tolist()!r} must increase from >= 0")
    index = _int_vector(arrays, "original_index", np.arange(n), n, path)
    inflight = arrays.get("train_correct")
    if inflight is not None and (inflight.shape != (r, e, n) or inflight.dtype != np.bool_):
        raise ImportFormatError(f"{os.fspath(path)!r}: 'train_correct' has shape {inflight.shape!r} "
                                f"dtype {str(inflight.dtype)!r}, expected ({r}, {e}, {n}) bool")
    y = torch.from_numpy(labels)

    def values():
        for i, seed in enumerate(seeds.tolist()):
            for j, epoch in enumerate(epochs.tolist()):
                per_example, per_epoch = _clean_values(logits[i, j], y, f"{os.fspath(path)!r} run {seed} epoch {epoch}",
                                                       inflight=False)
                if inflight is not None and epoch > 0:
                    per_example[S.TRAIN_CORRECT] = inflight[i, j]
                yield seed, epoch, per_example, per_epoch

    config = {"logits": "clean pass (as given)", "record_epochs": epochs.tolist()}
    return Imported(labels, index, tuple(seeds.tolist()), int(epochs[-1]), k, values(), config=config)


def _int_vector(arrays: dict, name: str, default: np.ndarray, size: int, path: Path) -> np.ndarray:
    v = arrays.get(name)
    if v is None:
        return default.astype(np.int64)
    if v.shape != (size,) or not np.issubdtype(v.dtype, np.integer):
        raise ImportFormatError(f"{os.fspath(path)!r}: {name!r} has shape {v.shape!r} dtype {str(v.dtype)!r}; "
                                f"expected ({size},) integers")
    return v.astype(np.int64)


# ------------------------------------------------------------------ Data Diet
_DATADIET_DIRS = {"error_l2_norm_scores": S.EL2N, "grad_norm_scores": S.GRAND}
_RUN_DIR = re.compile(r"run_([0-9]+)")
_CKPT = re.compile(r"ckpt_([0-9]+)\.npy")


@FORMATS.register("datadiet", help="Data Diet run_<r>/error_l2_norm_scores|grad_norm_scores/ckpt_<step>.npy "
                                    "(EL2N, GraNd; with --labels and --steps-per-epoch)")
def read_datadiet(path: Path, options: Options) -> Imported:
    if _RUN_DIR.fullmatch(path.name) and path.is_dir():
        runs = {int(_RUN_DIR.fullmatch(path.name).group(1)): path}
    elif path.is_dir():
        runs = {int(m.group(1)): p for p in path.iterdir() if (m := _RUN_DIR.fullmatch(p.name)) and p.is_dir()}
    else:
        runs = {}
    files: dict[tuple[int, int, str], Path] = {}  # (seed, step, variable) -> file
    for seed, run_dir in runs.items():
        for sub, var in _DATADIET_DIRS.items():
            if (run_dir / sub).is_dir():
                for p in (run_dir / sub).iterdir():
                    if m := _CKPT.fullmatch(p.name):
                        files[(seed, int(m.group(1)), var)] = p
    if not files:
        raise ImportFormatError(f"{os.fspath(path)!r} holds no run_<r>/error_l2_norm_scores/ckpt_<step>.npy or "
                                "grad_norm_scores files")
    steps = sorted({s for _, s, _ in files})
    spe = options.steps_per_epoch
    if spe is None and steps != [0]:
        raise InvalidArgumentError(f"checkpoint steps {steps[:5]!r} need --steps-per-epoch to become epochs "
                                   "(Data Diet saves by optimiser step)")
    if spe is not None and (spe < 1 or any(s % spe for s in steps)):
        bad = next((s for s in steps if spe >= 1 and s % spe), steps[0])
        raise InvalidArgumentError(f"--steps-per-epoch {spe!r} does not divide checkpoint step {bad!r}")
    epoch_of = {s: (s // spe if spe else 0) for s in steps}
    first = _load_npy(next(iter(files.values())), "score file")
    n = first.shape[0] if first.ndim == 1 else -1
    labels = _labels(options, n, "Data Diet score")
    num_classes = int(labels.max(initial=-1)) + 1
    features = frozenset({S.FEATURE_GRAND}) if any(v == S.GRAND for *_, v in files) else frozenset()
    seeds = tuple(sorted(runs))

    def values():
        for seed in seeds:
            for step in steps:
                per_example, per_epoch = {}, {}
                for var in (S.EL2N, S.GRAND):
                    p = files.get((seed, step, var))
                    if p is None:
                        continue
                    scores = _load_npy(p, "score file")
                    if scores.shape != (len(labels),) or not np.issubdtype(scores.dtype, np.floating):
                        raise ImportFormatError(f"{os.fspath(p)!r} has shape {scores.shape!r} dtype {str(scores.dtype)!r}; "
                                                f"expected ({len(labels)},) floats, one score per training example")
                    per_example[var] = scores.astype(np.float32)
                    if var == S.EL2N:
                        per_epoch[S.RECORDED] = True
                if per_example:
                    yield seed, epoch_of[step], per_example, per_epoch

    el2n_epochs = sorted({epoch_of[s] for _, s, v in files if v == S.EL2N})
    grand_epochs = sorted({epoch_of[s] for _, s, v in files if v == S.GRAND})
    config = {"record_epochs": el2n_epochs, "grand_epochs": grand_epochs, "steps_per_epoch": spe,
              "missing": "margin, loss, correct and train_correct are not in Data Diet score files"}
    return Imported(labels, np.arange(len(labels), dtype=np.int64), seeds, max(epoch_of.values()), num_classes,
                    values(), features=features, config=config)


# ------------------------------------------------------------------ writing
def import_dynamics(fmt: str, path: str | os.PathLike, out: str | os.PathLike, *, labels: str | None = None,
                    seed: int = 0, steps_per_epoch: int | None = None, dataset: str | None = None) -> Path:
    """Read ``path`` in format ``fmt`` (a :data:`FORMATS` name) and write a new store ``out``.

    Refuses an existing ``out`` (:class:`StoreExistsError`); any reading error leaves no
    trace (the store is built in a temporary sibling and renamed into place)."""
    reader = FORMATS.get(fmt)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidArgumentError(f"--seed must be a non-negative integer, got {seed!r}")
    src, dest = Path(path), Path(out)
    if not src.exists():
        raise InvalidArgumentError(f"{os.fspath(src)!r} does not exist")
    if dest.exists():
        raise StoreExistsError(f"{os.fspath(dest)!r} already exists; choose another --out")
    imported = reader(src, Options(labels=labels, seed=seed, steps_per_epoch=steps_per_epoch))
    names = [str(c) for c in range(max(imported.num_classes, int(imported.labels.max(initial=-1)) + 1))]
    config = {"source": CONFIG_SOURCE, "imported_from": fmt, "path": src.name, "dataset": dataset or src.name,
              "epochs": imported.epochs, **imported.config}
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        create_store(tmp, n_epochs=imported.epochs, labels=imported.labels, true_labels=imported.labels,
                     original_index=imported.original_index, seeds=imported.seeds, features=imported.features,
                     attrs={S.ATTR_CONFIG: json.dumps(config, sort_keys=True), S.ATTR_DATASET: dataset or src.name,
                            S.ATTR_FINGERPRINT: dataset_fingerprint(imported.labels, None, imported.original_index),
                            S.ATTR_CLASS_NAMES: names})
        with StoreWriter(tmp) as writer:
            for s, epoch, per_example, per_epoch in imported.values:
                writer.write_epoch(s, epoch, per_example, per_epoch)
            for s in imported.seeds:
                writer.set_run_status(s, S.RUN_COMPLETE, imported_from=fmt)
        consolidate(tmp)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
