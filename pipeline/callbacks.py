"""Framework callbacks that record a training run into a scorebank store through
:class:`scorebank.pipeline.record.Recorder`.

``LightningRecorder``
    a PyTorch Lightning ``Callback`` (``pip install "scorebank[lightning]"``).  The
    training data set is wrapped in :class:`~scorebank.pipeline.record.IndexedDataset`
    (batches ``(index, x, y)``) and ``training_step`` returns ``{"loss": loss,
    "logits": logits}``.
``HFRecorder``
    a Hugging Face ``transformers`` ``TrainerCallback`` (``pip install "scorebank[hf]"``).
    The training set carries an ``index`` column and ``TrainingArguments`` has
    ``remove_unused_columns=False``; the callback takes ``index`` out of each batch before
    the model sees it and reads the logits of the training forward pass.

Both record epoch 0 (at initialisation) when training starts, in-flight correctness of
every training batch (``train_correct``, for forgetting events) and, at the end of every
epoch, the clean pass over ``train`` (model in eval mode), test accuracy and loss on
``test`` and GraNd at ``grand_epochs``; the run is marked complete when the last epoch is
written.  The classes are built on first access, so importing this module needs neither
framework.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from scorebank.pipeline.record import DEFAULT_BATCH_SIZE, Recorder, Run, ShapeError

__all__ = ["LightningRecorder", "HFRecorder"]


class _Recording:
    """Framework-independent part of the callbacks: one open run and its epochs."""

    def __init__(self, recorder: Recorder, seed: int, train, test=None, grand_epochs=(),
                 batch_size: int = DEFAULT_BATCH_SIZE, forward=None):
        if not isinstance(recorder, Recorder):
            raise TypeError(f"recorder must be a scorebank Recorder, got {type(recorder).__name__!r}")
        self.recorder, self.seed = recorder, seed
        self.train, self.test = train, test
        self.grand_epochs = frozenset(int(e) for e in grand_epochs)
        self.batch_size, self.forward = batch_size, forward
        self.run: Run | None = None

    def begin(self, model: torch.nn.Module) -> None:
        """Open the run and record epoch 0 unless it is already in the store (resume)."""
        if self.run is None:
            self.run = self.recorder.run(self.seed).__enter__()
        if 0 not in self.run.completed_epochs:
            self.end_epoch(0, model)

    def observe(self, epoch: int, idx, logits, y) -> None:
        self.run.observe(epoch, idx, logits, y)

    def end_epoch(self, epoch: int, model: torch.nn.Module) -> None:
        self.run.record_epoch(epoch, model, self.train, self.test, grand=epoch in self.grand_epochs,
                              batch_size=self.batch_size, forward=self.forward)

    def end(self, exc: BaseException | None = None) -> None:
        run, self.run = self.run, None
        if run is not None:
            run.__exit__(type(exc) if exc else None, exc, None)


def _missing(package: str, extra: str) -> ImportError:
    return ImportError(f"{package!r} is not installed; pip install \"scorebank[{extra}]\"")


@functools.cache
def _lightning_class() -> type:
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback
        except ImportError:
            raise _missing("lightning", "lightning") from None

    class LightningRecorder(Callback):
        """Records a Lightning fit into ``recorder`` as run ``seed``.

        ``train``: the clean-pass inputs, every training example once in the store's order
        (a tensor, or an unshuffled DataLoader of ``(index, x, y)``/``(x, y)``); ``test``:
        ``(inputs, labels)`` or a DataLoader; ``grand_epochs``: epochs with GraNd (the
        store created with ``grand=True``).  Store epoch e is the state after Lightning's
        ``current_epoch`` e-1 finished."""

        def __init__(self, recorder: Recorder, *, seed: int, train, test=None, grand_epochs=(),
                     batch_size: int = DEFAULT_BATCH_SIZE, forward=None):
            super().__init__()
            self._rec = _Recording(recorder, seed, train, test, grand_epochs, batch_size, forward)

        def on_train_start(self, trainer, pl_module) -> None:
            self._rec.begin(pl_module)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            logits = outputs.get("logits") if isinstance(outputs, dict) else None
            if logits is None:
                raise ShapeError("LightningRecorder: training_step must return {'loss': loss, 'logits': logits}")
            if isinstance(batch, dict):
                idx, y = batch.get("index"), batch.get("labels", batch.get("label"))
            elif isinstance(batch, (tuple, list)) and len(batch) == 3:
                idx, _, y = batch
            else:
                idx = y = None
            if idx is None:
                raise ShapeError("LightningRecorder: training batches must carry example indices; wrap the "
                                 "training set in scorebank.pipeline.record.IndexedDataset")
            self._rec.observe(trainer.current_epoch + 1, idx, logits, y)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self._rec.end_epoch(trainer.current_epoch + 1, pl_module)

        def on_train_end(self, trainer, pl_module) -> None:
            self._rec.end()

        def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
            self._rec.end(exception)

    return LightningRecorder


@functools.cache
def _hf_class() -> type:
    try:
        from transformers import TrainerCallback
    except ImportError:
        raise _missing("transformers", "hf") from None

    class HFRecorder(TrainerCallback):
        """Records a ``transformers.Trainer`` run into ``recorder`` as run ``seed``.

        ``train``/``test``/``grand_epochs`` as for ``LightningRecorder`` (DataLoaders may
        yield dicts: ``index``/``labels`` keys are taken out, the rest goes to
        ``model(**batch)``).  Store epoch e is the state after the Trainer's epoch e."""

        def __init__(self, recorder: Recorder, *, seed: int, train, test=None, grand_epochs=(),
                     batch_size: int = DEFAULT_BATCH_SIZE, forward=None, index_key: str = "index"):
            self._rec = _Recording(recorder, seed, train, test, grand_epochs, batch_size, forward)
            self.index_key = index_key
            self._epoch = 0
            self._batch: dict[str, Any] | None = None
            self._handles: list = []

        # -- hooks on the model: indices out of the inputs, training logits in
        def _pre(self, module, args, kwargs):
            idx = kwargs.pop(self.index_key, None)
            self._batch = {"index": idx, "labels": kwargs.get("labels")} if module.training else None
            return args, kwargs

        def _post(self, module, args, kwargs, output):
            batch, self._batch = self._batch, None
            if batch is not None and module.training:
                self._guarded(self._observe, batch, output)

        def _observe(self, batch: dict, output) -> None:
            if batch["index"] is None:
                raise ShapeError(f"HFRecorder: training batches carry no {self.index_key!r} column; add one "
                                 "(dataset.map(lambda e, i: {'index': i}, with_indices=True)) and set "
                                 "TrainingArguments(remove_unused_columns=False)")
            logits = output.get("logits") if isinstance(output, dict) else getattr(output, "logits", output)
            self._rec.observe(self._epoch, batch["index"], logits.detach(), batch["labels"])

        def _guarded(self, fn, *args) -> None:
            """The Trainer has no exception hook: on an error, close the run (status
            ``interrupted`` or ``failed``) and release the store before raising."""
            try:
                fn(*args)
            except BaseException as exc:
                self._close(exc)
                raise

        def _close(self, exc: BaseException | None = None) -> None:
            for h in self._handles:
                h.remove()
            self._handles = []
            self._rec.end(exc)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self._handles = [model.register_forward_pre_hook(self._pre, with_kwargs=True),
                             model.register_forward_hook(self._post, with_kwargs=True)]
            self._guarded(self._rec.begin, model)

        def on_epoch_begin(self, args, state, control, **kwargs):
            self._epoch = int(round(state.epoch or 0)) + 1

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            self._guarded(self._rec.end_epoch, self._epoch, model)

        def on_train_end(self, args, state, control, **kwargs):
            self._close()

    return HFRecorder


def __getattr__(name: str):
    if name == "LightningRecorder":
        return _lightning_class()
    if name == "HFRecorder":
        return _hf_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
