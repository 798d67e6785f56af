"""``scorebank bench --modes``: the training epoch in each precision mode of the GPU fast path.

A mode is a training precision (``--precision``: fp32, or bf16 autocast for the training
forward and backward passes) with or without ``--compile`` (``torch.compile`` of the training
forward); :data:`MODES` lists them.  Every requested mode gets its own
:class:`~scorebank.pipeline.training.Trainer` on the same synthetic data
(:func:`scorebank.pipeline.bench.synthetic_data`, resident on the device), the same seed and
so the same initial weights, and is timed on plain training epochs (SGD steps, no recording:
``bench``'s ``train_epoch_s``).  Convolutional models train in channels_last on CUDA, as
``score`` does (the trainer decides; reported as ``channels_last``); on the CPU nothing
changes the layout and bf16 autocast runs there too (fast only where the CPU has bf16
instructions).

Each mode runs one warm-up epoch first (where ``torch.compile`` compiles); a mode whose
warm-up raises is reported unavailable with the one-line reason instead of a time.  Then
``repeats`` rounds time one epoch of every available mode, the order rotated by one each round
(A B C D, B C D A, ...; with two modes A B, B A as the other ratios of ``bench``), so drift
hits every mode alike, and the medians are kept:

* ``epoch_s_MODE``: seconds of one plain training epoch in MODE (median);
* ``ratio_MODE``: ``epoch_s_MODE / epoch_s_fp32`` (fp32 is always timed: it is the baseline);
* ``unavailable_MODE``: why MODE could not run (its warm-up's error, one line).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from scorebank.core.errors import InvalidArgumentError
from scorebank.core.registry import Registry
from scorebank.pipeline.bench import BenchSpec, synthetic_data, timer
from scorebank.pipeline.config import resolve_config
from scorebank.pipeline.training import Trainer, resolve_device

#: the mode every ratio is relative to
BASELINE = "fp32"
#: ``--modes all``
ALL = "all"
#: longest reason kept for an unavailable mode (characters)
REASON_CHARS = 200


@dataclass(frozen=True)
class Mode:
    """The training options of one mode (ScoreConfig fields)."""

    precision: str
    compile: bool


MODES: Registry[Mode] = Registry("precision mode", "--modes")
MODES.add("fp32", Mode("fp32", False), help="float32 training (the baseline)")
MODES.add("bf16", Mode("bf16", False), help="bf16 autocast for the training forward and backward")
MODES.add("fp32+compile", Mode("fp32", True), help="float32, torch.compile'd training forward")
MODES.add("bf16+compile", Mode("bf16", True), help="bf16 autocast and torch.compile")


def parse_modes(text: str) -> tuple[str, ...]:
    """``"bf16,fp32+compile"`` or ``"all"`` -> mode names in the order given, the baseline
    (fp32) first when missing; unknown names raise :class:`InvalidArgumentError`."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise InvalidArgumentError(f"--modes {text!r} names no mode; give {ALL} or some of {MODES.choices()}")
    if ALL in names:
        return MODES.names()
    for name in names:
        MODES.get(name)
    return tuple(dict.fromkeys([BASELINE, *names]))


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, at most :data:`REASON_CHARS` characters."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 3] + "..."


def bench_precision(spec: BenchSpec, modes: Sequence[str] = (BASELINE,),
                    progress: Callable[[str], None] | None = None) -> dict:
    """Time a plain training epoch in each of ``modes`` (module docstring); a flat dict."""
    if spec.n < 1 or spec.batch_size < 1 or spec.repeats < 1 or spec.classes < 2:
        raise InvalidArgumentError(
            f"bench needs n >= 1, batch_size >= 1, repeats >= 1 and classes >= 2; got n={spec.n!r}, "
            f"batch_size={spec.batch_size!r}, repeats={spec.repeats!r}, classes={spec.classes!r}")
    modes = tuple(dict.fromkeys([BASELINE, *modes]))
    configs = {name: resolve_config(model=spec.model, width=spec.width, batch_size=spec.batch_size,
                                    eval_batch_size=spec.batch_size, epochs=1, lr=0.01,
                                    precision=MODES.get(name).precision, compile=MODES.get(name).compile)
               for name in modes}  # every mode validated before anything is timed
    device = resolve_device(spec.device)
    timed = timer(device)
    say = progress or (lambda _msg: None)
    data = synthetic_data(spec, device)

    trainers: dict[str, Trainer] = {}
    unavailable: dict[str, str] = {}
    for name in modes:
        say(f"{name}: warm-up epoch" + (" (compiling)" if configs[name].compile else ""))
        trainer = Trainer(configs[name], data, spec.seed, device)
        try:
            timed(lambda: trainer.train_epoch(record=False))
        except Exception as exc:  # noqa: BLE001 - a mode that cannot run here is reported, not fatal
            if name == BASELINE:
                raise
            unavailable[name] = one_line(exc)
            continue
        trainers[name] = trainer

    order = list(trainers)
    times: dict[str, list[float]] = {name: [] for name in order}
    for i in range(spec.repeats):
        say(f"training epochs, round {i + 1} of {spec.repeats}")
        for name in order[i % len(order):] + order[:i % len(order)]:  # rotated: none always runs first
            times[name].append(timed(lambda t=trainers[name]: t.train_epoch(record=False)))

    base = statistics.median(times[BASELINE])
    result: dict = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch": torch.__version__, "model": spec.model, "width": spec.width, "batch_size": spec.batch_size,
        "n": spec.n, "shape": list(spec.shape), "repeats": spec.repeats,
        "channels_last": trainers[BASELINE].channels_last,
    }
    for name in modes:
        if name in trainers:
            seconds = statistics.median(times[name])
            result[f"epoch_s_{name}"] = seconds
            result[f"ratio_{name}"] = seconds / base
        else:
            result[f"unavailable_{name}"] = unavailable[name]
    return result
