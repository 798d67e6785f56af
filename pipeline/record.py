"""Recording your own training loop into a scorebank store.

A :class:`Recorder` owns a normal score store (the layout of :mod:`scorebank.stores.schema`),
so ``info``, ``analyze``, ``select``, ``export`` and ``merge`` work on it unchanged::

    rec = Recorder.create("runs/mine.zarr", labels=train_labels, epochs=E, dataset="my-set",
                          class_names=names, inputs=train_images, config={"lr": 0.1})
    with rec.run(seed=0) as run:                      # resumes: run.completed_epochs
        run.record_epoch(0, model, train_x)           # clean pass at initialisation
        for epoch in range(1, E + 1):
            for idx, x, y in loader:                  # IndexedDataset yields indices
                logits = model(x)
                run.observe(epoch, idx, logits, y)    # in-flight correctness (forgetting)
                ...
            run.record_epoch(epoch, model, train_x, test=(test_x, test_y))

What is recorded per epoch is what ``scorebank score`` records, computed by the same
functions: the clean pass (model in eval mode, every training example once) gives the
margin ``f_y - max_{j != y} f_j``, EL2N ``||softmax(f) - onehot(y)||_2``, cross-entropy
and correctness through :func:`scorebank.pipeline.training.example_scores`; GraNd (the
per-example loss-gradient norm, Data Diet Def. 2.1) through
:func:`scorebank.pipeline.grand.grand_scores`; ``train_correct`` is the correctness of
each example when it was presented in a minibatch (the logits passed to
:meth:`Run.observe`), on which Toneva et al.'s forgetting events are counted, and
``train_margin`` its margin on those logits (AUM's M_t, Pleiss et al. 2020): every
in-flight variable of :data:`scorebank.pipeline.training.IN_FLIGHT`, through
:func:`scorebank.pipeline.training.inflight_scores`, as ``score`` records them.

Every check runs before anything is written; an epoch's values are written chunk by
chunk, ``completed`` last, so a failed or interrupted call leaves the store as it was.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from torch import nn

from scorebank.core.errors import (ConfigMismatchError, InvalidArgumentError, RunFailedError,
                                   StoreExistsError, StoreNotFoundError)
from scorebank.pipeline.models import norm_product
from scorebank.pipeline.training import correct_from_logits, example_scores, inflight_scores, load_checkpoint
from scorebank.stores import schema as S
from scorebank.stores.create import consolidate, create_store
from scorebank.stores.zarrstore import StoreWriter, atomic_file, is_scorebank_store, remove_store

__all__ = ["Recorder", "Run", "IndexedDataset", "RecordingError", "ShapeError", "LabelMismatchError",
           "ExampleIndexError", "EpochOrderError", "dataset_fingerprint", "model_identity"]

#: Root attribute of recorder stores: the user's configuration and the model's identity.
ATTR_RECORDER = "recorder"
#: Marker in the ``config`` attribute of stores written through the recorder.
CONFIG_SOURCE = "recorder"
DEFAULT_BATCH_SIZE = 1024  # clean pass / test / GraNd batch size, as ``score``'s eval_batch_size


class RecordingError(InvalidArgumentError):
    """A value passed to the recorder does not fit the store (CLI exit status 2)."""


class ShapeError(RecordingError):
    """Logits, indices, labels or inputs of the wrong shape or type."""


class LabelMismatchError(RecordingError):
    """Labels passed with a batch differ from the labels the store was created with."""


class ExampleIndexError(RecordingError):
    """Example indices out of range, observed twice in an epoch, or missing from a pass."""


class EpochOrderError(RecordingError):
    """An epoch outside ``0..epochs``, recorded twice, or observed after it was recorded."""


# ------------------------------------------------------------------ provenance
def dataset_fingerprint(labels, inputs=None, original_index=None) -> str:
    """sha256 over example order, labels and inputs, the scheme of
    :attr:`scorebank.pipeline.datasets.ImageData.fingerprint`.

    For uint8 ``inputs`` (an array or tensor ``(N, ...)``) it equals ``ImageData``'s
    fingerprint of the same examples, so a recorder store and a ``score`` store of the same
    data merge.  Other dtypes hash their little-endian bytes with the dtype named.  A
    map-style data set yielding ``(x, y)`` is hashed item by item.  Without ``inputs`` only
    order and labels are hashed (``scorebank-labels-v1``)."""
    labels = np.asarray(labels)
    n = len(labels)
    index = np.arange(n, dtype=np.int64) if original_index is None else np.asarray(original_index)
    if inputs is None:
        h = hashlib.sha256(b"scorebank-labels-v1")
        h.update(np.ascontiguousarray(index, dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
        return "sha256:" + h.hexdigest()
    h = hashlib.sha256(b"scorebank-dataset-v1")
    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        arrays: Iterable[np.ndarray] = [_numpy(inputs)]
        shape = tuple(inputs.shape)
    else:
        first = _numpy(_item_x(inputs[0])) if len(inputs) else np.zeros(0)
        shape = (len(inputs),) + first.shape
        arrays = (_numpy(_item_x(inputs[i]))[None] for i in range(len(inputs)))
    if shape[0] != n:
        raise ShapeError(f"inputs hold {shape[0]!r} examples but labels {n!r}; pass one input per label")
    h.update(np.asarray(shape, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(index, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    tagged = False
    for a in arrays:
        if a.dtype != np.uint8 and not tagged:
            h.update(f"dtype:{a.dtype.newbyteorder('<').str}".encode())
            tagged = True
        h.update(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes())
    return "sha256:" + h.hexdigest()


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _item_x(item):
    return item[0] if isinstance(item, (tuple, list)) else item


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's module behind ``torch.compile`` and DistributedDataParallel wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or (
            model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else None)
        if inner is None:
            return model
        model = inner


def model_identity(model: nn.Module) -> dict:
    """The code's identity: the model class's import path and a sha256 of the names and
    shapes of its parameters (not their values)."""
    model = _unwrap(model)
    cls = type(model)
    shapes = [[name, list(p.shape)] for name, p in model.named_parameters()]
    digest = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]
    return {"model": f"{cls.__module__}.{cls.__qualname__}", "parameter_shapes": f"sha256:{digest}",
            "parameters": int(sum(p.numel() for p in model.parameters()))}


# ------------------------------------------------------------------ data helpers
class IndexedDataset(torch.utils.data.Dataset):
    """Wraps a map-style data set yielding ``(x, y)`` so that it yields ``(index, x, y)``:
    a DataLoader over it hands :meth:`Run.observe` the example indices of every batch,
    in whatever order it shuffles them."""

    def __init__(self, dataset):
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise InvalidArgumentError(
                f"IndexedDataset needs a map-style data set (with __getitem__ and __len__), "
                f"got {type(dataset).__name__!r}")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        if isinstance(item, Mapping):
            return {**item, "index": index}
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ShapeError(f"IndexedDataset: item {index!r} is {type(item).__name__!r}; expected (x, y)")
        return index, item[0], item[1]


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _to(x, device: torch.device):
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, Mapping):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x


def _as_tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if isinstance(x, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in x):
        return torch.as_tensor(x, dtype=torch.int64)
    raise ShapeError(f"{what} must be a tensor or numpy array, got {type(x).__name__!r}")


def default_forward(model: nn.Module, x) -> torch.Tensor:
    """``model(x)`` (``model(**x)`` for a dict of tensors); a returned object with
    ``.logits`` or a ``"logits"`` key (Hugging Face outputs) gives those."""
    out = model(**x) if isinstance(x, Mapping) else model(x)
    out = out.get("logits", out) if isinstance(out, Mapping) else getattr(out, "logits", out)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ShapeError(f"the model returned {type(out).__name__!r}, not a logits tensor; "
                         "pass forward=lambda model, x: ... returning (batch, classes) logits")
    return out


_INDEX_KEYS = ("index", "idx")
_LABEL_KEYS = ("labels", "label", "y")


def _batches(source, n: int | None, labels: torch.Tensor | None, batch_size: int, what: str
             ) -> Iterator[tuple[torch.Tensor | None, Any, torch.Tensor | None]]:
    """``(indices or None, x, y or None)`` per batch of ``source``.

    ``source``: a tensor/array ``(N, ...)`` of inputs in example order (labels from the
    store), a pair ``(inputs, labels)`` of tensors/arrays, or an iterable (DataLoader) of
    batches ``(index, x, y)``, ``(x, y)`` or dicts (``index``/``idx`` and
    ``labels``/``label`` keys taken out, the rest is the model input)."""
    if isinstance(source, (torch.Tensor, np.ndarray)):
        source = (source, None)
    if (isinstance(source, tuple) and len(source) == 2
            and isinstance(source[0], (torch.Tensor, np.ndarray))):
        x = _as_tensor(source[0], f"{what} inputs")
        y = None if source[1] is None else _as_tensor(source[1], f"{what} labels")
        if n is not None and x.shape[0] != n:
            raise ShapeError(f"{what} inputs hold {x.shape[0]!r} examples, the store {n!r}; "
                             "pass every training example in the store's order")
        if y is not None and tuple(y.shape) != (x.shape[0],):
            raise ShapeError(f"{what} labels have shape {tuple(y.shape)!r}, expected ({x.shape[0]},)")
        for start in range(0, x.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            yield None, x[sl], (labels[sl] if y is None and labels is not None else
                                None if y is None else y[sl])
        return
    if isinstance(source, (str, bytes)) or not isinstance(source, Iterable):
        raise ShapeError(f"{what} must be a tensor, an (inputs, labels) pair or a DataLoader, "
                         f"got {type(source).__name__!r}")
    for batch in source:
        if isinstance(batch, Mapping):
            batch = dict(batch)
            idx = next((batch.pop(k) for k in _INDEX_KEYS if k in batch), None)
            y = next((batch.pop(k) for k in _LABEL_KEYS if k in batch), None)
            yield (None if idx is None else _as_tensor(idx, f"{what} indices")), batch, \
                (None if y is None else _as_tensor(y, f"{what} labels"))
        elif isinstance(batch, (tuple, list)) and len(batch) == 3:
            yield _as_tensor(batch[0], f"{what} indices"), batch[1], _as_tensor(batch[2], f"{what} labels")
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            yield None, batch[0], _as_tensor(batch[1], f"{what} labels")
        else:
            raise ShapeError(f"{what}: a batch is {type(batch).__name__!r}; expected (index, x, y), "
                             "(x, y) or a dict with 'labels'")


def _check_indices(idx: torch.Tensor, n: int, what: str) -> torch.Tensor:
    """``idx`` as a 1-D int64 tensor, every value in ``[0, n)`` (checked on the host when
    ``idx`` lives there, else with one device sync)."""
    if idx.dim() != 1 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise ShapeError(f"{what}: indices must be a 1-D integer tensor, got shape {tuple(idx.shape)!r} "
                         f"dtype {str(idx.dtype)!r}")
    if idx.numel():
        lo, hi = (int(v) for v in torch.aminmax(idx))
        if lo < 0 or hi >= n:
            bad = lo if lo < 0 else hi
            raise ExampleIndexError(f"{what}: example index {bad!r} is out of range 0..{n - 1}; "
                              "indices are positions in the store's labels")
    return idx.long()


def _defer_checks(device: torch.device) -> bool:
    """Whether :meth:`Run.observe` gathers its checks on ``device`` for the epoch's
    :meth:`Run.record_epoch` instead of reading them per batch (a device sync)."""
    return device.type != "cpu"


def _check_logits(logits: torch.Tensor, batch: int, classes: int, what: str) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != batch:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ShapeError(f"{what}: logits must have shape ({batch}, classes), got {shape!r}")
    if logits.shape[1] != classes:
        raise ShapeError(f"{what}: logits have {logits.shape[1]!r} classes, the store {classes!r}; "
                         "pass class_names= with one name per output to Recorder.create")


def _label_mismatch(what: str, idx: torch.Tensor, given: torch.Tensor, stored: torch.Tensor) -> LabelMismatchError:
    k = int(torch.nonzero(given != stored)[0, 0])
    return LabelMismatchError(
        f"{what}: example {int(idx[k])!r} has label {int(given[k])!r} but the store holds "
        f"{int(stored[k])!r}; the store's labels are fixed at creation (check the example order)")


# ------------------------------------------------------------------ the store
class Recorder:
    """A scorebank store written from a user's training loop (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not is_scorebank_store(self.path):
            raise StoreNotFoundError(f"no scorebank store at {os.fspath(path)!r}; make one with Recorder.create")
        root = zarr.open_group(self.path, mode="r", zarr_format=3, use_consolidated=False)
        self.labels = np.asarray(root[S.LABEL][:], dtype=np.int64)
        self.true_labels = np.asarray(root[S.TRUE_LABEL][:], dtype=np.int64)
        self.epochs = int(root[S.EPOCH].shape[0]) - 1
        self.attrs = dict(root.attrs)
        self.features = frozenset(self.attrs.get(S.ATTR_FEATURES, []))
        self.class_names = tuple(self.attrs.get(S.ATTR_CLASS_NAMES) or ())
        self.num_classes = len(self.class_names) or int(self.labels.max(initial=-1)) + 1

    # ---------------------------------------------------------------- creation
    @classmethod
    def create(cls, path: str | os.PathLike, *, labels, epochs: int, dataset: str = "custom",
               class_names: Sequence[str] | None = None, config: Mapping | None = None, inputs=None,
               original_index=None, true_labels=None, grand: bool = False,
               fingerprint: str | None = None, overwrite: bool = False) -> "Recorder":
        """Create the store at ``path`` for ``len(labels)`` examples and epochs ``0..epochs``,
        or open it when it exists and was made with the same settings (so a restarted
        script resumes); different settings raise :class:`ConfigMismatchError` listing
        them unless ``overwrite``.

        ``labels`` (N,) int training labels; ``true_labels`` the data set's labels when
        they were corrupted (enables the label-noise variables); ``class_names`` one name
        per logit (default ``0..max(labels)``); ``config`` any JSON-serialisable dict of your
        settings (kept in the store's provenance); ``inputs`` the training inputs (or a
        map-style data set of ``(x, y)``) for the data set fingerprint; ``grand=True``
        makes room for GraNd scores."""
        labels = _labels(labels, "labels")
        n = len(labels)
        if n == 0:
            raise ShapeError("labels is empty; a store needs at least one example")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or not 0 <= epochs <= 100_000:
            raise InvalidArgumentError(f"epochs must be an integer in 0..100000, got {epochs!r}")
        true = labels if true_labels is None else _labels(true_labels, "true_labels")
        if true.shape != labels.shape:
            raise ShapeError(f"true_labels has shape {true.shape!r}, labels {labels.shape!r}")
        names = [str(c) for c in class_names] if class_names is not None else \
            [str(c) for c in range(int(max(labels.max(), true.max())) + 1)]
        if labels.min() < 0 or max(labels.max(), true.max()) >= len(names):
            bad = int(labels.min()) if labels.min() < 0 else int(max(labels.max(), true.max()))
            raise LabelMismatchError(f"label {bad!r} is outside 0..{len(names) - 1} (class_names has "
                                     f"{len(names)} entries)")
        index = np.arange(n, dtype=np.int64) if original_index is None else np.asarray(original_index, np.int64)
        if index.shape != (n,):
            raise ShapeError(f"original_index has shape {index.shape!r}, expected ({n},)")
        user = _json_config(config)
        fp = fingerprint or dataset_fingerprint(labels, inputs, index)
        features = set()
        if grand:
            features.add(S.FEATURE_GRAND)
        if (true != labels).any():
            features.add(S.FEATURE_LABEL_NOISE)
        store_config = {"source": CONFIG_SOURCE, "dataset": str(dataset), "epochs": int(epochs),
                        "features": sorted(features), "user": user}
        path = Path(path)
        if path.exists():
            if not is_scorebank_store(path):
                raise StoreExistsError(f"{os.fspath(path)!r} exists and is not a scorebank store; choose another path")
            if overwrite:
                remove_store(path)
            else:
                existing = cls(path)
                _check_same(existing, store_config, labels, true, fp, names)
                return existing
        create_store(path, n_epochs=int(epochs), labels=labels, true_labels=true, original_index=index,
                     seeds=(), features=frozenset(features),
                     attrs={S.ATTR_CONFIG: json.dumps(store_config, sort_keys=True), S.ATTR_DATASET: str(dataset),
                            S.ATTR_FINGERPRINT: fp, S.ATTR_CLASS_NAMES: names,
                            ATTR_RECORDER: {"user_config": user}})
        return cls(path)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Recorder":
        """An existing store (made by :meth:`create` or by ``scorebank score``)."""
        return cls(path)

    @property
    def n_examples(self) -> int:
        return len(self.labels)

    def run(self, seed: int) -> "Run":
        """The run of ``seed`` as a context manager (it holds the store's write lock).  An
        existing unfinished run resumes: :attr:`Run.completed_epochs` says what is there."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InvalidArgumentError(f"seed must be a non-negative integer, got {seed!r}")
        return Run(self, int(seed))


def _labels(values, what: str) -> np.ndarray:
    a = _numpy(values)
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise ShapeError(f"{what} must be a 1-D integer array, got shape {a.shape!r} dtype {str(a.dtype)!r}")
    return a.astype(np.int64)


def _json_config(config: Mapping | None) -> dict:
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise InvalidArgumentError(f"config must be a dict, got {type(config).__name__!r}")
    try:
        return json.loads(json.dumps(dict(config), sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"config must be JSON-serialisable (str/number/bool/list/dict values): {exc}") from None


def _check_same(existing: Recorder, config: dict, labels: np.ndarray, true: np.ndarray, fp: str,
                names: list[str]) -> None:
    old = json.loads(existing.attrs.get(S.ATTR_CONFIG) or "{}")
    diff = {k: (old.get(k), config[k]) for k in config if old.get(k) != config[k]}
    for what, a, b in ((S.ATTR_FINGERPRINT, existing.attrs.get(S.ATTR_FINGERPRINT), fp),
                       (S.ATTR_CLASS_NAMES, list(existing.class_names), names)):
        if a != b:
            diff[what] = (a, b)
    if not np.array_equal(existing.labels, labels) or not np.array_equal(existing.true_labels, true):
        diff["labels"] = ("...", "...")
    if diff:
        listing = "; ".join(f"{k}: store has {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise ConfigMismatchError(f"store {os.fspath(existing.path)!r} was made with other settings ({listing}); "
                                  "use the same settings, another path, or overwrite=True")


# ------------------------------------------------------------------ one run
class Run:
    """One training run (seed) being recorded; use as ``with recorder.run(seed) as run:``."""

    def __init__(self, recorder: Recorder, seed: int):
        self.recorder, self.seed = recorder, seed
        self._writer: StoreWriter | None = None
        self._completed: list[int] = []
        self._epoch: int | None = None  # epoch whose in-flight results are being gathered
        self._state: dict[str, torch.Tensor] = {}
        self._identity: dict | None = None

    # ---------------------------------------------------------------- context
    def __enter__(self) -> "Run":
        w = StoreWriter(self.recorder.path).__enter__()
        try:
            if self.seed not in w.seeds:
                w.add_runs((self.seed,))
            info = w.runs.get(str(self.seed), {})
            if info.get("status") == S.RUN_FAILED:
                raise RunFailedError(
                    f"run seed {self.seed} of {os.fspath(self.recorder.path)!r} failed at epoch "
                    f"{info.get('failed_epoch')!r}; record it under another seed")
            self._completed = [int(e) for e in np.flatnonzero(w.completed_epochs(self.seed))]
            self._info = {k: v for k, v in info.items() if k not in ("status", "failed_epoch")}
            self._info["torch"] = torch.__version__
            if info.get("status") != S.RUN_COMPLETE:
                w.set_run_status(self.seed, S.RUN_RUNNING, **self._info)
        except BaseException:
            w.__exit__(None, None, None)
            raise
        self._writer = w
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        w, self._writer = self._writer, None
        if w is None:
            return
        try:
            status = w.runs.get(str(self.seed), {}).get("status")
            if status not in (S.RUN_FAILED, S.RUN_COMPLETE):
                done = len(self._completed) == self.recorder.epochs + 1
                w.set_run_status(self.seed, S.RUN_COMPLETE if done else S.RUN_INTERRUPTED, **self._info)
        finally:
            w.__exit__(exc_type, exc, tb)

    def _require_open(self) -> StoreWriter:
        if self._writer is None:
            raise InvalidArgumentError("the run is not open; use it inside 'with recorder.run(seed) as run:'")
        return self._writer

    # ---------------------------------------------------------------- resuming
    @property
    def completed_epochs(self) -> tuple[int, ...]:
        """Epochs already written for this run (increasing)."""
        return tuple(self._completed)

    @property
    def next_epoch(self) -> int:
        """The first epoch after the last written one (0 for a new run)."""
        return self._completed[-1] + 1 if self._completed else 0

    @property
    def checkpoint_path(self) -> Path:
        """Where :meth:`save_checkpoint` keeps this run's training state (inside the store)."""
        return self._require_open().checkpoint_path(self.seed)

    def save_checkpoint(self, state: Mapping) -> None:
        """Replace this run's checkpoint atomically with ``state`` (tensors, numbers,
        strings, dicts and lists: what ``torch.load(weights_only=True)`` reads back)."""
        with atomic_file(self.checkpoint_path) as tmp:
            torch.save(dict(state), tmp)

    def load_checkpoint(self) -> dict | None:
        """The state saved by :meth:`save_checkpoint`, or None; loaded with
        ``weights_only=True`` (no code runs) onto the CPU."""
        path = self.checkpoint_path
        return load_checkpoint(path) if path.is_file() else None

    # ---------------------------------------------------------------- in flight
    def _check_epoch(self, epoch: int, what: str) -> int:
        total = self.recorder.epochs
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or not 0 <= epoch <= total:
            raise EpochOrderError(f"{what}: epoch {epoch!r} is outside 0..{total} (the store's epochs)")
        epoch = int(epoch)
        if epoch in self._completed:
            raise EpochOrderError(f"{what}: epoch {epoch} of run seed {self.seed} is already recorded; "
                                  f"the next epoch to record is {self.next_epoch}")
        if self._completed and epoch < self._completed[-1]:
            raise EpochOrderError(f"{what}: epoch {epoch} comes before epoch {self._completed[-1]}, "
                                  "which is already recorded; record epochs in increasing order")
        return epoch

    def observe(self, epoch: int, idx, logits: torch.Tensor, y=None) -> None:
        """Record the in-flight variables of a training minibatch, correctness (``train_correct``)
        and margin (``train_margin``, AUM's M_t = f_y - max_{j != y} f_j), from the same logits:
        ``logits`` (batch, classes) the model's output on the batch in train mode, before
        the step's update; ``idx`` (batch,) the examples' positions in the store; ``y``
        (batch,) their labels (checked against the store's; None = the store's).

        Examples not observed in an epoch read ``train_correct = False`` and ``train_margin``
        NaN.  Out-of-range
        indices raise here; a label mismatch, an example observed twice and non-finite
        logits raise here on the CPU and at the epoch's :meth:`record_epoch` on an
        accelerator (no device sync per batch)."""
        if self._writer is None or epoch != self._epoch or isinstance(epoch, bool):
            self._start_epoch(epoch)  # the epoch's checks, once per epoch
        what = f"observe(epoch={epoch!r})"
        if not isinstance(logits, torch.Tensor):
            raise ShapeError(f"{what}: logits must be a tensor, got {type(logits).__name__!r}")
        idx = _check_indices(_as_tensor(idx, f"{what} indices"), self.recorder.n_examples, what)
        _check_logits(logits, idx.shape[0], self.recorder.num_classes, what)
        dev = logits.device
        st = self._inflight_state(dev)
        idx = idx.to(dev, non_blocking=True)
        stored = st["labels"][idx]
        logits = logits.detach()
        if y is None:
            y = stored
        else:
            y = _as_tensor(y, f"{what} labels")
            if tuple(y.shape) != (idx.shape[0],):
                raise ShapeError(f"{what}: labels have shape {tuple(y.shape)!r}, expected ({idx.shape[0]},)")
            y = y.to(dev, non_blocking=True).long()
        counts = st["counts"]
        counts.index_add_(0, idx, st["ones"][:idx.shape[0]])
        seen = counts[idx]  # (batch,): 1 unless an example came twice this epoch
        # (3,): labels that differ from the store's, repeated examples, non-finite logits
        flags = torch.stack(((y != stored).sum(), (seen != 1).sum(), (~torch.isfinite(logits)).sum()))
        if not _defer_checks(dev):  # checks cost no device sync here: refuse the batch before keeping it
            if bool(flags.any()):
                counts.index_add_(0, idx, -st["ones"][:idx.shape[0]])  # undo: the batch is refused
                mismatch, repeated, _ = flags.tolist()
                self._refuse_batch(what, epoch, idx, y, stored, seen, mismatch > 0, repeated > 0)
        else:  # no device sync per batch: the flags are checked by record_epoch
            st["flags"] += flags
        buffers = st["inflight"]
        for name, values in inflight_scores(logits, y).items():  # (batch,) each, float32 arithmetic
            if name not in buffers:  # NaN / False: not observed (yet)
                buffers[name] = torch.full((self.recorder.n_examples,), float("nan") if values.is_floating_point()
                                           else 0, dtype=values.dtype, device=dev)
            buffers[name][idx] = values
        self._epoch = int(epoch)

    def _start_epoch(self, epoch) -> None:
        """Checks of the first observation of an epoch."""
        self._require_open()
        what = f"observe(epoch={epoch!r})"
        if epoch == 0 and not isinstance(epoch, bool):
            raise EpochOrderError(f"{what}: epoch 0 is the state at initialisation; in-flight results "
                                  f"belong to training epochs 1..{self.recorder.epochs}")
        epoch = self._check_epoch(epoch, what)
        if self._epoch is not None and self._epoch != epoch:
            raise EpochOrderError(f"{what}: epoch {self._epoch} was observed but not recorded; "
                                  f"call run.record_epoch({self._epoch}, ...) first")

    def _refuse_batch(self, what: str, epoch: int, idx, y, stored, seen, mismatch: bool, repeated: bool) -> None:
        if mismatch:
            raise _label_mismatch(what, idx, y, stored)
        if repeated:
            raise ExampleIndexError(f"{what}: example {int(idx[seen != 1][0])!r} was observed twice in epoch {epoch}; "
                                    "an example is presented once per epoch (check the sampler), or record the "
                                    "epoch first")
        self._fail(epoch)
        raise RunFailedError(f"run seed {self.seed} diverged: non-finite logits in epoch {epoch}; "
                             "it is marked failed in the store (lower the learning rate)")

    def _inflight_state(self, device: torch.device) -> dict[str, torch.Tensor]:
        st = self._state
        if st and st["counts"].device != device:
            raise ShapeError(f"logits are on {str(device)!r} but this epoch's earlier logits were on "
                             f"{str(st['counts'].device)!r}; keep one device per epoch")
        if not st:
            n = self.recorder.n_examples
            st.update(inflight={},  # one (N,) buffer per IN_FLIGHT variable, made at the first batch
                      counts=torch.zeros(n, dtype=torch.int32, device=device),
                      flags=torch.zeros(3, dtype=torch.int64, device=device),
                      ones=torch.ones(n, dtype=torch.int32, device=device),
                      labels=torch.from_numpy(self.recorder.labels).to(device))
        return st

    def _raise_flags(self, what: str) -> None:
        """Raise what :meth:`observe` found on an accelerator since the last record."""
        st = self._state
        if not st or not _defer_checks(st["flags"].device):
            return
        mismatches, repeats, nonfinite = (int(v) for v in st["flags"].tolist())
        if mismatches:
            raise LabelMismatchError(f"{what}: {mismatches} observed label(s) differ from the store's; "
                                     "the store's labels are fixed at creation (check the example order)")
        if repeats:
            twice = torch.nonzero(st["counts"] > 1)[:, 0]
            raise ExampleIndexError(f"{what}: example {int(twice[0])!r} was observed "
                                    f"{int(st['counts'][twice[0]])} times in epoch {self._epoch}; an example is "
                                    "presented once per epoch (check the sampler)")
        if nonfinite:
            epoch = self._epoch
            self._fail(epoch)
            raise RunFailedError(f"run seed {self.seed} diverged: non-finite logits in epoch {epoch}; "
                                 "it is marked failed in the store (lower the learning rate)")

    def _fail(self, epoch: int) -> None:
        w = self._require_open()
        w.set_run_status(self.seed, S.RUN_FAILED, failed_epoch=int(epoch), **self._info)
        self._state.clear()
        self._epoch = None

    # ---------------------------------------------------------------- epochs
    def record_epoch(self, epoch: int, model: nn.Module, train=None, test=None, *, grand: bool = False,
                     batch_size: int = DEFAULT_BATCH_SIZE,
                     forward: Callable[[nn.Module, Any], torch.Tensor] | None = None) -> dict[str, float]:
        """Write epoch ``epoch`` of this run (0 = at initialisation; e = after e epochs).

        ``train``: the clean pass's inputs, every training example once (a tensor/array
        ``(N, ...)`` in the store's order, or a DataLoader of ``(index, x, y)``/``(x, y)``
        batches or dicts); None skips the clean pass (``recorded`` False).  ``test``:
        ``(inputs, labels)`` or a DataLoader, for test accuracy and loss.  ``grand``: GraNd
        scores too (tensor ``train`` only; the store must be created with ``grand=True``).
        Every pass runs with the model in eval mode under ``torch.inference_mode`` (GraNd
        with gradients), in batches of ``batch_size``; the model's mode is restored.
        ``forward(model, x)`` returns logits when ``model(x)`` does not.

        Returns the per-epoch values written.  Raises before writing anything when a
        check fails; a non-finite clean-pass or test loss, or non-finite in-flight
        logits, marks the run failed (:class:`RunFailedError`)."""
        w = self._require_open()
        what = f"record_epoch(epoch={epoch!r})"
        epoch = self._check_epoch(epoch, what)
        if self._epoch is not None and self._epoch != epoch:
            raise EpochOrderError(f"{what}: epoch {self._epoch} was observed but not recorded; "
                                  f"call run.record_epoch({self._epoch}, ...) first")
        if not isinstance(model, nn.Module):
            raise ShapeError(f"{what}: model must be a torch.nn.Module, got {type(model).__name__!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgumentError(f"{what}: batch_size must be a positive integer, got {batch_size!r}")
        if grand and S.FEATURE_GRAND not in self.recorder.features:
            raise InvalidArgumentError(f"{what}: grand=True, but the store was created without GraNd; "
                                       "pass grand=True to Recorder.create")
        if grand and not isinstance(train, (torch.Tensor, np.ndarray)):
            raise InvalidArgumentError(f"{what}: grand=True needs the training inputs as one tensor (N, ...), "
                                       f"got {type(train).__name__!r}")
        self._check_identity(model, what)
        self._raise_flags(what)
        forward = forward or default_forward
        per_example: dict[str, np.ndarray] = {}
        per_epoch: dict[str, float] = {}
        if train is not None:
            scores = self._clean_pass(model, train, batch_size, forward, what)
            per_epoch.update(self._summary(scores))
            per_example.update({k: v.cpu().numpy() for k, v in scores.items()})
            per_epoch[S.RECORDED] = True
        if grand:
            per_example[S.GRAND] = self._grand(model, train, batch_size)
        if test is not None:
            acc, loss = self._evaluate(model, test, batch_size, forward, what)
            per_epoch[S.TEST_ACCURACY], per_epoch[S.TEST_LOSS] = acc, loss
        try:
            per_epoch[S.NORM_PRODUCT] = norm_product(_unwrap(model))
        except (IndexError, RuntimeError):  # no conv/linear weights (e.g. a BatchNorm-only head)
            per_epoch[S.NORM_PRODUCT] = math.nan
        if epoch > 0 and self._state:
            per_example.update({name: buf.cpu().numpy() for name, buf in self._state["inflight"].items()})
        if any(not math.isfinite(per_epoch[k]) for k in (S.TRAIN_LOSS, S.TEST_LOSS) if k in per_epoch):
            self._fail(epoch)
            raise RunFailedError(f"run seed {self.seed} diverged: non-finite loss at epoch {epoch}; "
                                 "it is marked failed in the store (lower the learning rate)")
        w.write_epoch(self.seed, epoch, per_example, per_epoch)  # ``completed`` last
        self._completed.append(epoch)
        if train is not None:
            self._note_recorded(w, epoch)
        self._state.clear()
        self._epoch = None
        return per_epoch

    def _note_recorded(self, w: StoreWriter, epoch: int) -> None:
        """Keep the configuration's ``record_epochs`` (the epochs with a clean pass in any
        run, as ``score`` records them) current for ``info`` and archive manifests."""
        config = json.loads(w.root.attrs.get(S.ATTR_CONFIG) or "{}")
        epochs = config.get("record_epochs") or []
        if config.get("source") != CONFIG_SOURCE or epoch in epochs:
            return
        config["record_epochs"] = sorted({*epochs, epoch})
        w.root.attrs[S.ATTR_CONFIG] = json.dumps(config, sort_keys=True)
        consolidate(self.recorder.path)

    def _check_identity(self, model: nn.Module, what: str) -> None:
        identity = model_identity(model)
        if self._identity == identity:
            return
        w = self._require_open()
        attrs = dict(w.root.attrs.get(ATTR_RECORDER) or {})
        known = {k: attrs[k] for k in ("model", "parameter_shapes") if k in attrs}
        if known and known != {k: identity[k] for k in known}:
            raise ConfigMismatchError(
                f"{what}: the model is {identity['model']!r} with parameter shapes {identity['parameter_shapes']!r}, "
                f"but the store's runs recorded {known.get('model')!r} with {known.get('parameter_shapes')!r}; "
                "record a different model into another store")
        if not known:
            attrs.update(identity)
            w.root.attrs[ATTR_RECORDER] = attrs
        self._info.update(model=identity["model"], parameter_shapes=identity["parameter_shapes"])
        w.set_run_status(self.seed, S.RUN_RUNNING, **self._info)
        self._identity = identity

    @torch.inference_mode()
    def _clean_pass(self, model: nn.Module, train, batch_size: int, forward, what: str) -> dict[str, torch.Tensor]:
        """margin, el2n, loss, correct ``(N,)`` on the model's device, each example once.

        Batches without indices are the next examples in the store's order; with indices
        they go where the indices say.  Label, repetition and coverage checks are gathered
        on the device and read once at the end (one sync), before anything is written."""
        rec, n = self.recorder, self.recorder.n_examples
        dev = _model_device(model)
        labels = torch.from_numpy(rec.labels).to(dev)
        out = {S.MARGIN: torch.empty(n, device=dev), S.EL2N: torch.empty(n, device=dev),
               S.LOSS: torch.empty(n, device=dev), S.CORRECT: torch.empty(n, dtype=torch.bool, device=dev)}
        given = labels.clone()  # (N,): the labels the batches carried
        counts = None  # (N,) int32 presentations, when batches carry indices
        position = 0
        was_training = model.training
        model.eval()
        try:
            for idx, x, y in _batches(train, n, labels, batch_size, f"{what} train"):
                logits = forward(model, _to(x, dev))
                if idx is None:
                    b = logits.shape[0] if isinstance(logits, torch.Tensor) else 0
                    if counts is not None or position + b > n:
                        raise ExampleIndexError(f"{what}: the clean pass yielded more than the store's {n} examples, "
                                                "or batches with and without indices")
                    where = slice(position, position + b)
                    position += b
                else:
                    if position:
                        raise ExampleIndexError(f"{what}: the clean pass mixes batches with and without indices")
                    where = _check_indices(idx, n, f"{what} train").to(dev, non_blocking=True)
                    if counts is None:
                        counts = torch.zeros(n, dtype=torch.int32, device=dev)
                    counts.index_add_(0, where, torch.ones_like(where, dtype=torch.int32))
                _check_logits(logits, labels[where].shape[0], rec.num_classes, f"{what} train")
                stored = labels[where]
                if y is not None:
                    if tuple(y.shape) != tuple(stored.shape):
                        raise ShapeError(f"{what}: labels have shape {tuple(y.shape)!r}, expected {tuple(stored.shape)!r}")
                    given[where] = y.to(dev, non_blocking=True).long()
                for k, v in example_scores(logits, stored).items():
                    out[k][where] = v
            if counts is None:
                missing, repeated = n - position, 0
            else:
                missing, repeated = int((counts == 0).sum()), int((counts > 1).sum())
            if repeated:
                k = int(torch.nonzero(counts > 1)[0, 0])
                raise ExampleIndexError(f"{what}: the clean pass yielded example {k!r} {int(counts[k])} times; pass each "
                                        "training example once (no sampler repeats)")
            if missing:
                first = position if counts is None else int(torch.nonzero(counts == 0)[0, 0])
                raise ExampleIndexError(f"{what}: the clean pass missed {missing} of {n} examples (first: "
                                        f"{first!r}); pass every training example (drop_last=False)")
            wrong = given != labels
            if bool(wrong.any()):
                k = int(torch.nonzero(wrong)[0, 0])
                raise LabelMismatchError(f"{what} train: example {k!r} has label {int(given[k])!r} but the store "
                                         f"holds {int(labels[k])!r}; the store's labels are fixed at creation "
                                         "(check the example order)")
            return out
        finally:
            model.train(was_training)

    def _summary(self, scores: dict[str, torch.Tensor]) -> dict[str, float]:
        """Training accuracy and loss of the clean pass (and on pristine / corrupted
        examples when labels were corrupted), computed as ``score`` computes them."""
        correct = scores[S.CORRECT].float()
        loss = scores[S.LOSS]
        summary = {S.TRAIN_ACCURACY: correct.mean(), S.TRAIN_LOSS: loss.double().mean()}
        if S.FEATURE_LABEL_NOISE in self.recorder.features:
            c = torch.from_numpy(self.recorder.labels != self.recorder.true_labels).to(correct.device)
            for mask, acc_name, loss_name in ((~c, S.PRISTINE_ACCURACY, S.PRISTINE_LOSS),
                                              (c, S.CORRUPT_ACCURACY, S.CORRUPT_LOSS)):
                k = mask.sum()
                summary[acc_name] = (correct * mask).sum() / k
                summary[loss_name] = (loss.double() * mask).sum() / k
        return {k: float(v) for k, v in summary.items()}

    def _grand(self, model: nn.Module, train, batch_size: int) -> np.ndarray:
        from scorebank.pipeline.grand import grand_scores

        dev = _model_device(model)
        x = _as_tensor(train, "train")
        labels = torch.from_numpy(self.recorder.labels)
        parts = [grand_scores(model, x[s:s + batch_size].to(dev), labels[s:s + batch_size].to(dev),
                              batch_size=batch_size).cpu()
                 for s in range(0, x.shape[0], batch_size)]
        return torch.cat(parts).numpy()

    @torch.inference_mode()
    def _evaluate(self, model: nn.Module, test, batch_size: int, forward, what: str) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) on the test set in eval mode, accumulated as
        :func:`scorebank.pipeline.training.evaluate` does."""
        if isinstance(test, (torch.Tensor, np.ndarray)):
            raise ShapeError(f"{what}: test must be an (inputs, labels) pair or a DataLoader, not inputs alone")
        dev = _model_device(model)
        was_training = model.training
        model.eval()
        try:
            correct = torch.zeros((), device=dev)
            loss = torch.zeros((), device=dev, dtype=torch.float64)
            count = 0
            for _, x, y in _batches(test, None, None, batch_size, f"{what} test"):
                if y is None:
                    raise ShapeError(f"{what}: test batches need labels")
                logits = forward(model, _to(x, dev))
                y = y.to(dev).long()
                _check_logits(logits, y.shape[0], self.recorder.num_classes, f"{what} test")
                correct += correct_from_logits(logits, y).sum()
                loss += F.cross_entropy(logits.float(), y, reduction="sum").double()
                count += y.shape[0]
            n = max(1, count)
            return float(correct / n), float(loss / n)
        finally:
            model.train(was_training)
