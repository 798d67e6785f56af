"""``bench_recorder``: what the recorder API costs inside a user's own training loop.

The user loop is the plainest PyTorch loop: a fresh model from
:func:`scorebank.pipeline.models.build_model`, ``torch.optim.SGD``, minibatches drawn as
index permutations of synthetic data resident on the device (:func:`scorebank.pipeline.bench.synthetic_data`),
``F.cross_entropy``, ``backward``, ``step``.  Two epochs are compared, timed alternately
(A B, B A, ...) so drift hits both alike, and the medians of ``repeats`` are kept:

* ``recorder_overhead``: (an epoch that also calls :meth:`Run.observe` on every minibatch's
  logits and ends with :meth:`Run.record_epoch` without a clean pass, i.e. writes
  ``train_correct``, the norm product and ``completed``) / the plain epoch - 1.  Goal ≤ 0.03.
* ``recorder_clean_pass_ratio``: ``record_epoch`` with the clean pass over the training
  tensor / a bare ``torch.inference_mode`` forward over the same examples and batch size.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable

import torch
import torch.nn.functional as F

from scorebank.core.errors import InvalidArgumentError
from scorebank.pipeline.bench import BenchSpec, synthetic_data, timer
from scorebank.pipeline.models import build_model
from scorebank.pipeline.record import Recorder
from scorebank.pipeline.training import resolve_device

TARGETS = {"recorder_overhead": 0.03}


def bench_recorder(spec: BenchSpec, progress: Callable[[str], None] | None = None) -> dict:
    """Measure the quantities of the module docstring for ``spec`` (model, n, shape,
    classes, batch size, width, device, repeats, seed); returns a flat dict."""
    if spec.n < 1 or spec.batch_size < 1 or spec.repeats < 1 or spec.classes < 2:
        raise InvalidArgumentError(
            f"bench needs n >= 1, batch_size >= 1, repeats >= 1 and classes >= 2; got n={spec.n!r}, "
            f"batch_size={spec.batch_size!r}, repeats={spec.repeats!r}, classes={spec.classes!r}")
    device = resolve_device(spec.device)
    say = progress or (lambda _msg: None)
    data = synthetic_data(spec, device)
    x, y = data.train_x, data.train_y
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, spec.shape, spec.classes, width=spec.width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(spec.seed)

    timed = timer(device)

    def epoch(observe: Callable | None) -> None:
        perm = torch.randperm(spec.n, generator=g)  # (n,) on the CPU, like a DataLoader's indices
        model.train()
        for start in range(0, spec.n, spec.batch_size):
            idx = perm[start:start + spec.batch_size]
            dev_idx = idx.to(device, non_blocking=True)
            logits = model(x[dev_idx])
            loss = F.cross_entropy(logits, y[dev_idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if observe is not None:
                observe(idx, logits, y[dev_idx])

    def bare_forward() -> None:
        model.eval()
        with torch.inference_mode():
            for start in range(0, spec.n, spec.batch_size):
                model(x[start:start + spec.batch_size])
        model.train()

    n_epochs = 3 * spec.repeats + 4
    with tempfile.TemporaryDirectory() as tmp:
        rec = Recorder.create(f"{tmp}/bench.zarr", labels=y.cpu().numpy(), epochs=n_epochs, dataset="synthetic")
        with rec.run(seed=spec.seed) as run:
            run.record_epoch(0, model, None)
            counter = iter(range(1, n_epochs + 1))

            def recorded_epoch() -> None:
                e = next(counter)
                epoch(lambda idx, logits, yb: run.observe(e, idx, logits, yb))
                run.record_epoch(e, model, None)

            def clean_pass_epoch() -> None:
                run.record_epoch(next(counter), model, x, batch_size=spec.batch_size)

            say("training epochs, plain and recorded through the recorder")
            epoch(None), recorded_epoch()  # warm-up
            plain_t, recorded_t = [], []
            for i in range(spec.repeats):  # A B, B A, ...: neither always runs first
                pair = [(plain_t, lambda: epoch(None)), (recorded_t, recorded_epoch)]
                for times, fn in pair if i % 2 == 0 else pair[::-1]:
                    times.append(timed(fn))
            say("recorder clean pass and bare forward")
            bare_forward(), clean_pass_epoch()  # warm-up
            bare = statistics.median(timed(bare_forward) for _ in range(spec.repeats))
            clean = statistics.median(timed(clean_pass_epoch) for _ in range(spec.repeats))
    plain, recorded = statistics.median(plain_t), statistics.median(recorded_t)
    return {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch": torch.__version__, "model": spec.model, "width": spec.width, "batch_size": spec.batch_size,
        "n": spec.n, "shape": list(spec.shape), "repeats": spec.repeats,
        "user_epoch_s": plain, "recorded_epoch_s": recorded,
        "recorder_overhead": recorded / plain - 1,
        "recorder_clean_pass_ratio": clean / bare,
        "recorder_clean_pass_s": clean, "bare_forward_s": bare,
    }
