"""Training one run and recording its per-example scores.

The data path follows airbench's pattern: the whole data set lives as a normalised float
tensor on the training device, augmentation runs batched on that device, minibatches are
index permutations, and per-example statistics go into preallocated device buffers that
are copied to the host once per epoch.  No DataLoader workers, no per-example Python.

Determinism: a run is a pure function of (configuration, data, seed).  The model is
initialised under ``torch.manual_seed(seed)`` on the CPU; epoch e draws its permutation
and augmentation from generators seeded by (seed, e), so resuming from a checkpoint at
epoch e reproduces the uninterrupted run bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scorebank.core.registry import Registry
from scorebank.pipeline.config import ScoreConfig
from scorebank.pipeline.datasets import ImageData
from scorebank.pipeline.models import build_model, norm_product
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is refused."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidArgumentError(f"--device {device!r} asked for, but no CUDA GPU is available; use cpu or auto")
        return torch.device(device)
    raise InvalidArgumentError(f"unknown --device {device!r}; choose auto, cpu or cuda")


@dataclass(frozen=True, eq=False)
class DeviceData:
    """Training and test sets as normalised float32 tensors on the training device.

    Normalisation: per-channel mean/std of the (possibly ``--limit``-ed) training images
    scaled to [0, 1]."""

    train_x: torch.Tensor  # (N, C, H, W) float32
    train_y: torch.Tensor  # (N,) int64, the labels used for training (after label noise)
    test_x: torch.Tensor  # (M, C, H, W)
    test_y: torch.Tensor  # (M,)
    corrupted: torch.Tensor  # (N,) bool
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def to_device_data(data: ImageData, labels: np.ndarray, device: torch.device) -> DeviceData:
    x = data.train_images.astype(np.float32) / 255.0
    mean = x.mean(axis=(0, 2, 3))  # (C,)
    std = x.std(axis=(0, 2, 3))
    std = np.where(std > 0, std, 1.0)

    def norm(images: np.ndarray) -> torch.Tensor:
        # .div, not .div_: on the CPU a float32 array is not copied by .to(), and the caller's
        # data must stay as it was
        t = torch.from_numpy(images).to(device=device, dtype=torch.float32).div(255.0)
        m = torch.tensor(mean, device=device, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, device=device, dtype=torch.float32).view(1, -1, 1, 1)
        return (t - m) / s

    return DeviceData(norm(data.train_images), torch.from_numpy(np.asarray(labels, np.int64)).to(device),
                      norm(data.test_images), torch.from_numpy(data.test_labels).to(device),
                      torch.from_numpy(np.asarray(labels) != data.train_labels).to(device),
                      data.num_classes, tuple(float(v) for v in mean), tuple(float(v) for v in std))


def input_norms(data: DeviceData) -> np.ndarray:
    """(N,) float32: the L2 norm of each normalised, un-augmented training input as the network
    sees it (Kirsch 2023: what GraNd at initialisation largely tracks)."""
    return torch.linalg.vector_norm(data.train_x.flatten(1).double(), dim=1).float().cpu().numpy()  # (N, CHW) -> (N,)


def epoch_generators(seed: int, epoch: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """(CPU generator for the permutation, device generator for augmentation) of one epoch."""
    base = (seed * 1_000_003 + epoch * 7919 + 0x5C0BE) % (2**63 - 1)
    g_perm = torch.Generator(device="cpu").manual_seed(base)
    g_aug = torch.Generator(device=device).manual_seed(base ^ 0x2545F491)
    return g_perm, g_aug


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero-padding by ``pad`` pixels, and a random horizontal flip with
    probability 1/2, for every image of the batch independently, batched on x's device."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # (b, c, h+2p, w+2p)
    shifts = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator, device=x.device)
    flip = torch.rand(b, generator=generator, device=x.device) < 0.5
    rows = shifts[:, 0:1] + torch.arange(h, device=x.device)  # (b, h)
    cols = shifts[:, 1:2] + torch.arange(w, device=x.device)  # (b, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (b, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()  # (b, c, h, w)


class LogitParts:
    """The pieces of a batch's logits ``(batch, classes)`` that per-example variables are made
    of, each computed once (float32): the label's logit f_y, the logits with f_y masked to
    -inf, and the margin f_y - max_{j != y} f_j."""

    def __init__(self, logits: torch.Tensor, labels: torch.Tensor):
        self.logits, self.labels = logits.float(), labels
        self.true = self.logits.gather(1, labels[:, None]).squeeze(1)  # (batch,)
        self.others = self.logits.scatter(1, labels[:, None], float("-inf"))  # (batch, classes), f_y masked
        self.margin = self.true - self.others.amax(1)  # (batch,)


def margin_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """f_y - max_{j != y} f_j per example ``(batch,)`` in float32: the margin of the margins
    paper on a clean pass, AUM's margin M_t(x, y) (Pleiss et al. 2020) on a training step's
    logits."""
    return LogitParts(logits.detach(), labels).margin


def correct_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """f_y > max_{j != y} f_j (a tie counts as wrong), so ``correct == (margin > 0)``."""
    return LogitParts(logits, labels).margin > 0


#: Per-example variables of the clean pass (eval mode, un-augmented), one entry each: the
#: entry's name is the schema variable it fills, its value a function of :class:`LogitParts`.
#: A new clean-pass variable is a schema ``Variable`` (with ``since`` = the format that adds it)
#: and one entry here.
CLEAN_PASS: Registry[Callable[[LogitParts], torch.Tensor]] = Registry("clean-pass variable", "the schema")
#: Per-example variables recorded in flight: from the training step's own logits (train mode,
#: augmented input, before that step's update); NaN/False where the example was not presented.
IN_FLIGHT: Registry[Callable[[LogitParts], torch.Tensor]] = Registry("in-flight variable", "the schema")


@CLEAN_PASS.register(S.MARGIN, help="f_y - max_{j != y} f_j on raw logits (margins paper)")
@IN_FLIGHT.register(S.TRAIN_MARGIN, help="the margin on the training step's logits (AUM's M_t)")
def _margin(p: LogitParts) -> torch.Tensor:
    return p.margin


@CLEAN_PASS.register(S.EL2N, help="||softmax(f) - onehot(y)||_2 (Data Diet Def. 2.2)")
def _el2n(p: LogitParts) -> torch.Tensor:
    onehot = F.one_hot(p.labels, p.logits.shape[1]).to(p.logits.dtype)  # (batch, classes)
    return torch.linalg.vector_norm(p.logits.softmax(1) - onehot, dim=1)


@CLEAN_PASS.register(S.LOSS, help="cross-entropy in nats")
def _loss(p: LogitParts) -> torch.Tensor:
    # cross-entropy = log(1 + sum_{j != y} exp(f_j - f_y)) = softplus(logsumexp_{j != y} f_j - f_y):
    # exact to float32's relative precision at every size, where logsumexp(f) - f_y rounds
    # losses below ~1e-7 to 0 (they would tie among the easiest examples).
    return F.softplus(torch.logsumexp(p.others, 1) - p.true)


@CLEAN_PASS.register(S.CORRECT, help="margin > 0 (a tie counts as wrong)")
@IN_FLIGHT.register(S.TRAIN_CORRECT, help="margin > 0 on the training step's logits (forgetting events)")
def _correct(p: LogitParts) -> torch.Tensor:
    return p.margin > 0


def example_scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every :data:`CLEAN_PASS` variable from raw logits ``(batch, classes)``: margin = f_y -
    max_{j != y} f_j (margins paper), EL2N = ||softmax(f) - onehot(y)||_2 (Data Diet Def. 2.2),
    loss = cross-entropy (in nats, to float32 relative precision even for losses far below
    float32's epsilon), correct = margin > 0."""
    parts = LogitParts(logits, labels)
    return {name: fn(parts) for name, fn in CLEAN_PASS.as_dict().items()}


def inflight_scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every :data:`IN_FLIGHT` variable from a training step's logits ``(batch, classes)``."""
    parts = LogitParts(logits, labels)
    return {name: fn(parts) for name, fn in IN_FLIGHT.as_dict().items()}


def _buffer(n: int, like: torch.Tensor) -> torch.Tensor:
    """``(n,)`` of ``like``'s dtype and device, filled as the store fills it (NaN / False)."""
    return torch.full((n,), float("nan") if like.is_floating_point() else 0, dtype=like.dtype, device=like.device)


@torch.inference_mode()
def clean_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    """The clean recording pass: every training example once, BatchNorm in eval mode, no
    augmentation.  Returns device tensors ``(N,)``, one per :data:`CLEAN_PASS` variable."""
    was_training = model.training
    model.eval()
    n = x.shape[0]
    out: dict[str, torch.Tensor] = {}
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        for name, values in example_scores(model(x[sl]), y[sl]).items():
            if name not in out:
                out[name] = torch.empty(n, dtype=values.dtype, device=x.device)
            out[name][sl] = values
    model.train(was_training)
    return out


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(accuracy, mean cross-entropy) on (x, y) in eval mode, as 0-d device tensors."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=x.device)
    loss = torch.zeros((), device=x.device, dtype=torch.float64)
    for start in range(0, x.shape[0], batch_size):
        logits = model(x[start:start + batch_size])
        yb = y[start:start + batch_size]
        correct += correct_from_logits(logits, yb).sum()
        loss += F.cross_entropy(logits.float(), yb, reduction="sum").double()
    model.train(was_training)
    n = max(1, x.shape[0])
    return correct / n, loss / n


def new_model(config: ScoreConfig, data: DeviceData, seed: int, device: torch.device) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(config.model, tuple(data.train_x.shape[1:]), data.num_classes,
                        batchnorm=config.batchnorm, init_std=config.init_std, width=config.width,
                        cifar_stem=config.cifar_stem)
    return model.to(device)


def new_optimizer(config: ScoreConfig, model: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov, weight_decay=config.weight_decay)


def autocast(precision: str, device: torch.device):
    """The context of the training forward and backward passes: bf16 autocast on ``device``
    (CPU included, so the numerics are testable without a GPU), or nothing for fp32.  Loss
    functions run in float32 under autocast (torch's autocast op lists)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def is_convolutional(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, estimator, inputs: torch.Tensor,
               labels: torch.Tensor) -> torch.Tensor:
    """One optimiser step, the only one in scorebank (score, retrain, easy-hard, compress):
    ``estimator.compute`` sets ``p.grad`` of every trainable parameter to its gradient
    estimate of the mean cross-entropy on the minibatch ``inputs`` ``(B, C, H, W)`` /
    ``labels`` ``(B,)`` (:mod:`scorebank.pipeline.robust`; compress's full-batch gradient
    descent passes :class:`FullBatchGradient`), then ``optimizer`` steps.  Returns the
    logits ``(B, classes)`` of the forward pass, before the update."""
    logits = estimator.compute(model, inputs, labels)
    optimizer.step()
    return logits


class FullBatchGradient:
    """The exact gradient of the mean cross-entropy over a whole (sub)set, accumulated over
    chunks of ``chunk`` examples (so the set need not fit one forward pass): each chunk adds
    the gradient of ``sum(loss over the chunk) / n``.  With BatchNorm in train mode the
    statistics are per chunk.  :meth:`compute` returns the summed loss (a 0-d tensor), not
    logits; it is what ``train_step`` needs for compress's full-batch gradient descent."""

    def __init__(self, chunk: int):
        self.chunk = chunk

    def compute(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n = inputs.shape[0]
        for p in model.parameters():
            p.grad = None
        total = torch.zeros((), device=inputs.device)
        with torch.enable_grad():
            for start in range(0, n, self.chunk):
                xb, yb = inputs[start:start + self.chunk], labels[start:start + self.chunk]  # (chunk, ...)
                loss = F.cross_entropy(model(xb), yb, reduction="sum") / n  # the chunk's share of the mean
                loss.backward()
                total += loss.detach()
        return total


@dataclass
class EpochResult:
    """What one epoch produced, on the host, ready to be written."""

    epoch: int
    per_example: dict[str, np.ndarray]
    per_epoch: dict[str, float]
    diverged: bool = False


def load_checkpoint(path) -> dict:
    """Read a checkpoint written from :meth:`Trainer.state_dict` with ``weights_only=True``
    (no code runs) onto the CPU; ``load_state_dict`` methods copy model and optimiser tensors
    onto the parameters' device, and the CPU RNG state must stay a CPU tensor."""
    return torch.load(path, map_location="cpu", weights_only=True)


class Trainer:
    """Trains one run epoch by epoch and measures what the store records.

    ``indices`` (a 1-D int64 device tensor) restricts training to a subset of the training
    set (retraining on a manifest); the clean pass always covers all of ``data.train_x``.
    ``steps_per_epoch`` fixes the number of optimiser steps of each epoch (Data Diet's
    fixed-iteration budget): the epoch then walks through as many fresh permutations of
    the subset as it needs; by default an epoch is one pass over the subset."""

    def __init__(self, config: ScoreConfig, data: DeviceData, seed: int, device: torch.device,
                 indices: torch.Tensor | None = None, grand_fn: Callable | None = None,
                 steps_per_epoch: int | None = None):
        from scorebank.pipeline.robust import make_estimator

        self.config, self.data, self.seed, self.device = config, data, seed, device
        self.indices = indices
        self.steps_per_epoch = steps_per_epoch
        self.model = new_model(config, data, seed, device)
        # GPU fast path: NHWC convolutions (cuDNN's fast layout; the same values up to kernel choice)
        self.channels_last = device.type == "cuda" and is_convolutional(self.model)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = new_optimizer(config, self.model)
        self.estimator = make_estimator(config.optimizer, batch_size=config.batch_size,
                                        clip_count=config.clip_count)
        # the module the training steps call: compiled when asked (plain SGD only: the robust
        # estimators take per-example gradients with torch.func, which compile does not wrap)
        self.train_model = (torch.compile(self.model) if config.compile and config.optimizer == "sgd"
                            else self.model)
        self.schedule = config.parsed_schedule
        self.grand_fn = grand_fn
        self.epoch = 0
        n = data.train_x.shape[0]
        self._n = n
        self._inflight: dict[str, torch.Tensor] = {}  # one (N,) buffer per IN_FLIGHT variable

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Model, optimiser, gradient-estimator and CPU RNG state plus the epoch; tensors and
        ints only (read back with :func:`load_checkpoint`)."""
        return {"epoch": self.epoch, "seed": self.seed, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "estimator": self.estimator.state_dict(),
                "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.estimator.load_state_dict(state["estimator"])
        torch.set_rng_state(state["torch_rng"].cpu())  # the CPU generator's state: a CPU byte tensor
        self.epoch = int(state["epoch"])

    # ------------------------------------------------------------- epochs
    def train_epoch(self, record: bool = True) -> tuple[dict[str, np.ndarray] | None, bool]:
        """Run epoch ``self.epoch + 1``; returns (in-flight ``{train_correct, train_margin}``
        (N,) each, diverged).  Both come from the logits of the training step's own forward
        pass (train mode, augmented input, before the update); an example presented twice in
        the epoch keeps its last presentation, one never presented reads False / NaN.

        ``record=False`` skips the in-flight statistics (correctness, margin and the loss sum
        that detects divergence) and returns ``(None, False)``: the plain epoch of the benchmark."""
        cfg, data = self.config, self.data
        e = self.epoch + 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr_at(cfg.lr, e)
        g_perm, g_aug = epoch_generators(self.seed, e, self.device)
        pool = self.indices
        n_pool = data.train_x.shape[0] if pool is None else pool.shape[0]
        n = n_pool if self.steps_per_epoch is None else self.steps_per_epoch * cfg.batch_size
        perm = torch.cat([torch.randperm(n_pool, generator=g_perm)
                          for _ in range(-(-n // n_pool))])[:n].to(self.device)  # (n,)
        if pool is not None:
            perm = pool[perm]
        if record:
            for buf in self._inflight.values():  # NaN / False: not presented (yet)
                buf.fill_(float("nan") if buf.is_floating_point() else 0)
        loss_sum = torch.zeros((), device=self.device)
        self.model.train()
        for start in range(0, n, cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]  # (batch,)
            xb, yb = data.train_x[idx], data.train_y[idx]
            if cfg.augment:
                xb = augment_batch(xb, g_aug)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)  # (batch, C, H, W), NHWC strides
            with autocast(cfg.precision, self.device):
                logits = train_step(self.train_model, self.optimizer, self.estimator, xb, yb)
            logits = logits.float()  # bf16 logits widened: the in-flight scores are float32 arithmetic
            if record:
                for name, values in inflight_scores(logits.detach(), yb).items():
                    if name not in self._inflight:
                        self._inflight[name] = _buffer(self._n, values)
                    self._inflight[name][idx] = values
                loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum")
        self.epoch = e
        if not record:
            return None, False
        diverged = not bool(torch.isfinite(loss_sum))
        return {name: buf.cpu().numpy() for name, buf in self._inflight.items()}, diverged

    def measure(self, record: bool, grand: bool) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """The end-of-epoch measurements: clean pass (if ``record``), GraNd (if ``grand``),
        test accuracy/loss and the norm product."""
        cfg, data = self.config, self.data
        per_example: dict[str, np.ndarray] = {}
        per_epoch: dict[str, float] = {}
        if record:
            scores = clean_pass(self.model, data.train_x, data.train_y, cfg.eval_batch_size)
            correct = scores[S.CORRECT].float()
            loss = scores[S.LOSS]
            summary = {S.TRAIN_ACCURACY: correct.mean(), S.TRAIN_LOSS: loss.double().mean()}
            if S.FEATURE_LABEL_NOISE in cfg.features:
                c = data.corrupted
                for mask, acc_name, loss_name in ((~c, S.PRISTINE_ACCURACY, S.PRISTINE_LOSS),
                                                  (c, S.CORRUPT_ACCURACY, S.CORRUPT_LOSS)):
                    k = mask.sum()
                    summary[acc_name] = (correct * mask).sum() / k
                    summary[loss_name] = (loss.double() * mask).sum() / k
            per_example.update({k: v.cpu().numpy() for k, v in scores.items()})
            per_epoch.update({k: float(v) for k, v in summary.items()})
            per_epoch[S.RECORDED] = True
        if grand:
            per_example[S.GRAND] = self.grand_fn(self.model, data.train_x, data.train_y,
                                                 batch_size=cfg.eval_batch_size).cpu().numpy()
        acc, loss = evaluate(self.model, data.test_x, data.test_y, cfg.eval_batch_size)
        per_epoch[S.TEST_ACCURACY] = float(acc)
        per_epoch[S.TEST_LOSS] = float(loss)
        per_epoch[S.NORM_PRODUCT] = norm_product(self.model)
        return per_example, per_epoch

    def measure_epoch(self) -> EpochResult:
        """Measurements for the current epoch without training (epoch 0: at initialisation)."""
        cfg, e = self.config, self.epoch
        per_example, per_epoch = self.measure(e in cfg.record_epochs, e in cfg.grand_epochs)
        return EpochResult(e, per_example, per_epoch, diverged=_nonfinite(per_epoch))

    def run_epoch(self) -> EpochResult:
        """Train one epoch, then measure.  A diverged epoch (non-finite training loss) is
        reported with nothing to write."""
        inflight, diverged = self.train_epoch()
        if diverged:
            return EpochResult(self.epoch, {}, {}, diverged=True)
        result = self.measure_epoch()
        result.per_example.update(inflight)
        return result


def _nonfinite(per_epoch: dict[str, float]) -> bool:
    return any(not math.isfinite(per_epoch[k]) for k in (S.TRAIN_LOSS, S.TEST_LOSS) if k in per_epoch)
