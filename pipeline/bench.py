"""``scorebank bench``: what recording costs, as ratios measured in one process on one device.

All timings use synthetic data of a chosen shape (default CIFAR-10: 3x32x32, 10 classes,
10,000 examples) resident on the device, a freshly initialised model, and the same batch
size.  Each quantity is timed ``repeats`` times after one warm-up and the median is kept;
ratios compare medians from the same run, so they transfer across machines better than
seconds do.  Quantities that are compared as a ratio of two training epochs (plain vs
in-flight recording, SGD vs another optimiser) are timed alternately, A B B A A B ..., so that
drift during the run (the weights changing, other load on the machine) hits both alike.

* ``train_epoch_s``: a plain training epoch (SGD step per minibatch, no recording).
* ``inflight_overhead``: (epoch with in-flight ``train_correct``, ``train_margin`` and loss
  recording) / plain - 1.
* ``margin_overhead``: what recording the in-flight margin adds to the in-flight epoch: the
  per-minibatch bookkeeping of one epoch (on a training step's logits) with ``train_margin``
  and ``train_correct = margin > 0``, minus the bookkeeping of ``train_correct`` alone (the
  previous release's), over the in-flight epoch.  Both read the logits of the step's own
  forward pass: the margin needs no extra forward or backward.
* ``clean_pass_ratio``: the clean recording pass (margin, EL2N, loss, correct; eval mode)
  / a bare ``torch.inference_mode`` forward over the same examples at the same batch size.
* ``grand_ratio``: the GraNd pass (exact per-example gradient norms) / plain epoch.
* ``store_write_ratio``: writing one epoch of every per-example variable of the schema
  (margin, el2n, loss, correct, train_correct, grand) for one run into a Zarr store / plain epoch.
* ``optimizer_ratio``: for each requested optimiser, its training epoch / the SGD epoch.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from scorebank.pipeline.config import resolve_config
from scorebank.pipeline.training import (DeviceData, Trainer, clean_pass, correct_from_logits, margin_from_logits,
                                         resolve_device)
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError


@dataclass(frozen=True)
class BenchSpec:
    model: str = "cnn5"
    n: int = 10_000
    shape: tuple[int, int, int] = (3, 32, 32)
    classes: int = 10
    batch_size: int = 128
    width: int | None = None
    device: str = "auto"
    repeats: int = 3
    optimizers: tuple[str, ...] = ()
    seed: int = 0


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """A function timing one call of ``fn`` on ``device`` in wall-clock seconds (CUDA:
    synchronised before and after, so queued kernels count where they run)."""
    def run(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0
    return run


def synthetic_data(spec: BenchSpec, device: torch.device) -> DeviceData:
    g = torch.Generator().manual_seed(spec.seed)
    x = torch.randn((spec.n, *spec.shape), generator=g).to(device)
    y = torch.randint(0, spec.classes, (spec.n,), generator=g).to(device)
    return DeviceData(x, y, x[:1], y[:1], torch.zeros(spec.n, dtype=torch.bool, device=device), spec.classes,
                      (0.0,) * spec.shape[0], (1.0,) * spec.shape[0])


def run_bench(spec: BenchSpec, progress: Callable[[str], None] | None = None) -> dict:
    """Measure the quantities listed in the module docstring; returns a flat dict."""
    if spec.n < 1 or spec.batch_size < 1 or spec.repeats < 1 or spec.classes < 2:
        raise InvalidArgumentError(
            f"bench needs n >= 1, batch_size >= 1, repeats >= 1 and classes >= 2; got n={spec.n!r}, "
            f"batch_size={spec.batch_size!r}, repeats={spec.repeats!r}, classes={spec.classes!r}")
    from scorebank.pipeline.grand import grand_scores

    # every optimiser's configuration is validated before the first timing (m3 needs a batch
    # size divisible by 3, ...), so a bad --optimizers fails at once, not after minutes
    optimizer_configs = {name: resolve_config(model=spec.model, width=spec.width, batch_size=spec.batch_size,
                                              epochs=1, lr=0.01, optimizer=name) for name in spec.optimizers}
    device = resolve_device(spec.device)
    timed = timer(device)
    data = synthetic_data(spec, device)
    config = resolve_config(model=spec.model, width=spec.width, batch_size=spec.batch_size,
                            eval_batch_size=spec.batch_size, epochs=1, lr=0.01)
    trainer = Trainer(config, data, spec.seed, device)
    model = trainer.model
    say = progress or (lambda _msg: None)

    def median(fn: Callable[[], object], label: str) -> float:
        say(label)
        fn()  # warm-up
        return statistics.median(timed(fn) for _ in range(spec.repeats))

    def bare_forward():
        model.eval()
        with torch.inference_mode():
            for start in range(0, spec.n, spec.batch_size):
                model(data.train_x[start:start + spec.batch_size])
        model.train()

    def alternating(fa: Callable[[], object], fb: Callable[[], object], label: str) -> tuple[float, float]:
        say(label)
        fa(), fb()  # warm-up
        ta, tb = [], []
        for i in range(spec.repeats):  # A B, B A, A B, ...: neither always runs first
            if i % 2 == 0:
                ta.append(timed(fa))
                tb.append(timed(fb))
            else:
                tb.append(timed(fb))
                ta.append(timed(fa))
        return statistics.median(ta), statistics.median(tb)

    plain, inflight = alternating(lambda: trainer.train_epoch(record=False), lambda: trainer.train_epoch(record=True),
                                  "training epochs, plain and with in-flight recording")
    with torch.no_grad():
        logits = model(data.train_x[:spec.batch_size])  # (B, classes): one training step's logits
    starts = range(0, spec.n, spec.batch_size)
    correct_buf = torch.zeros(spec.n, dtype=torch.bool, device=device)
    margin_buf = torch.full((spec.n,), float("nan"), device=device)

    def correctness_only():  # the previous release's in-flight bookkeeping of one epoch
        for start in starts:
            idx = torch.arange(start, min(start + spec.batch_size, spec.n), device=device)  # (b,)
            correct_buf[idx] = correct_from_logits(logits[:idx.numel()], data.train_y[idx])

    def with_margin():  # this release's: the margin, and correctness from it
        for start in starts:
            idx = torch.arange(start, min(start + spec.batch_size, spec.n), device=device)  # (b,)
            margin = margin_from_logits(logits[:idx.numel()], data.train_y[idx])
            margin_buf[idx] = margin
            correct_buf[idx] = margin > 0
    old_books, new_books = alternating(correctness_only, with_margin, "in-flight bookkeeping, without and with margin")
    bare = median(bare_forward, "bare inference forward")
    clean = median(lambda: clean_pass(model, data.train_x, data.train_y, spec.batch_size), "clean pass")
    grand = median(lambda: grand_scores(model, data.train_x, data.train_y, batch_size=spec.batch_size), "GraNd pass")

    # one epoch of every per-example variable of the schema (the clean pass's own values; any
    # other boolean variable as `correct`, any other float one as ones)
    measured = {k: v.cpu().numpy() for k, v in clean_pass(model, data.train_x, data.train_y, spec.batch_size).items()}
    scores = {v.name: measured[v.name] if v.name in measured
              else measured[S.CORRECT].copy() if v.dtype == "bool" else np.ones(spec.n, dtype=v.dtype)
              for v in S.variables(frozenset({S.FEATURE_GRAND})) if v.dims == (S.RUN, S.EPOCH, S.EXAMPLE)}
    with tempfile.TemporaryDirectory() as tmp:
        from scorebank.stores.zarrstore import StoreWriter, create_store

        labels = data.train_y.cpu().numpy()
        create_store(f"{tmp}/bench.zarr", n_epochs=spec.repeats + 1, labels=labels, true_labels=labels,
                     original_index=np.arange(spec.n), seeds=(0,), features=frozenset({S.FEATURE_GRAND}),
                     attrs={S.ATTR_CONFIG: config.to_json()})
        with StoreWriter(f"{tmp}/bench.zarr") as writer:
            epochs = iter(range(spec.repeats + 2))
            write = median(lambda: writer.write_epoch(0, next(epochs), scores, {}), "store write")

    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch": torch.__version__, "model": spec.model, "width": spec.width, "batch_size": spec.batch_size,
        "n": spec.n, "shape": list(spec.shape), "repeats": spec.repeats,
        "train_epoch_s": plain,
        "inflight_overhead": inflight / plain - 1,
        "margin_overhead": (new_books - old_books) / inflight,
        "clean_pass_ratio": clean / bare,
        "grand_ratio": grand / plain,
        "store_write_ratio": write / plain,
        "inflight_epoch_s": inflight, "clean_pass_s": clean, "bare_forward_s": bare, "grand_s": grand, "store_write_s": write,
        "inflight_bookkeeping_s": old_books, "inflight_bookkeeping_with_margin_s": new_books,
    }
    for name, cfg in optimizer_configs.items():
        other = Trainer(cfg, data, spec.seed, device)
        sgd, t = alternating(lambda: trainer.train_epoch(record=True), lambda: other.train_epoch(record=True),
                             f"training epochs, sgd and --optimizer {name}")
        result[f"optimizer_ratio_{name}"] = t / sgd
    return result


TARGETS = {"inflight_overhead": 0.03, "margin_overhead": 0.01, "clean_pass_ratio": 1.10, "grand_ratio": 2.0, "store_write_ratio": 0.02}
