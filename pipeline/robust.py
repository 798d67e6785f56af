"""Gradient estimators for ``--optimizer sgd|m3|rm3|ra3|winsorized``.

The training loop calls :meth:`GradientEstimator.compute` once per minibatch; it runs the
forward pass(es), writes a gradient *estimate* into ``p.grad`` of every trainable parameter
and returns the minibatch logits.  The loop then calls ``torch.optim.SGD.step()``, which
applies the learning rate, momentum, Nesterov and weight decay on top of ``p.grad``.  So a
robust estimate simply replaces the minibatch gradient and the rest of the optimiser is
unchanged -- the composition the coherent-gradients paper describes in its footnote to M3
("Weak and strong gradient directions: explaining memorization, generalization, and hardness
of examples at scale", Sec. 3.2, footnote 1).

Definitions (paper Sec. 3.1, 3.2 and App. B); ``g(S)`` is the mean cross-entropy gradient over
the examples ``S``, all medians/means/clamps are coordinate-wise:

``sgd``
    ``g(batch)``: one forward and one backward pass.
``m3`` (median of 3 micro-batches)
    Split the minibatch into 3 equal micro-batches ``S1, S2, S3`` and use
    ``median(g(S1), g(S2), g(S3))``; the micro-batches are processed serially, one forward and
    backward each, and the weights are updated once per 3 micro-batches.
``rm3`` (rolling median of 3 minibatches)
    ``median(g(B_t), g(B_{t-1}), g(B_{t-2}))`` for minibatches ``B_t`` of consecutive steps:
    one forward/backward per step, the previous two minibatch gradients are kept as state.
``ra3`` (rolling average of 3 minibatches, the paper's control for rm3)
    ``mean(g(B_t), g(B_{t-1}), g(B_{t-2}))``.
``winsorized`` with ``clip_count = s``
    per coordinate, the ``B`` per-example gradients are clamped to lie between their
    ``(s+1)``-th smallest and ``(s+1)``-th largest values and then summed and divided by
    ``B``; ``s = 0`` clips nothing and is plain SGD.

The paper writes the median of three as ``a + b + c - min(a, b, c) - max(a, b, c)``.  We
compute the same value as ``max(min(a, b), min(max(a, b), c))`` (:func:`_median3`): it is
exactly the middle input -- the sum form can lose the middle value to rounding when the
other two are large and opposite -- and it takes 4 elementwise passes instead of 8.
"""

from __future__ import annotations

import abc
import numbers
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scorebank.core.registry import Registry
from scorebank.pipeline.per_example import per_example_gradients
from scorebank.stores.errors import InvalidArgumentError, ScorebankError

__all__ = ["OPTIMIZERS", "GradientEstimator", "Optimizer", "make_estimator"]


# --------------------------------------------------------------------------------------------
# helpers


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters in ``model.parameters()`` order (the optimiser's order)."""
    return [p for p in model.parameters() if p.requires_grad]


def _check_batch(inputs: Tensor, labels: Tensor) -> int:
    """Batch size of a well-formed ``(inputs, labels)`` pair (shape checks only: no host sync)."""
    if inputs.dim() < 1 or inputs.shape[0] < 1:
        raise InvalidArgumentError(
            f"inputs must be a non-empty batch (batch, ...), got shape {tuple(inputs.shape)!r}")
    if labels.dim() != 1 or labels.shape[0] != inputs.shape[0]:
        raise InvalidArgumentError(
            f"labels must have shape ({inputs.shape[0]},) to match the inputs, "
            f"got {tuple(labels.shape)!r}")
    return int(inputs.shape[0])


def _mean_gradient(model: nn.Module, params: list[nn.Parameter], inputs: Tensor,
                   labels: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Logits and the mean cross-entropy gradient (one tensor per parameter; zeros for a
    parameter the forward pass does not use)."""
    logits = model(inputs)  # (batch, classes)
    loss = F.cross_entropy(logits, labels)
    grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
    return logits.detach(), grads


@torch.no_grad()
def _median3(a: Tensor, b: Tensor, c: Tensor, *, out: Tensor, tmp: Tensor) -> Tensor:
    """Coordinate-wise median of three tensors, written into ``out`` (``tmp`` is scratch of the
    same shape; neither may alias an input).

    ``median(a, b, c) = a + b + c - min - max`` (the paper's form) equals
    ``max(min(a, b), min(max(a, b), c))``, which is what is computed: 4 in-place passes, no
    allocation, and the result is exactly one of the inputs (no rounding)."""
    torch.minimum(a, b, out=tmp)
    torch.maximum(a, b, out=out)
    torch.minimum(out, c, out=out)
    torch.maximum(out, tmp, out=out)
    return out


@torch.no_grad()
def _mean3(a: Tensor, b: Tensor, c: Tensor, *, out: Tensor) -> Tensor:
    """Coordinate-wise ``(a + b + c) / 3`` written into ``out`` (which may not alias ``c``)."""
    torch.add(a, b, out=out)
    out.add_(c)
    return out.div_(3)


class _FlatLayout:
    """Where each trainable parameter lives in a flat 1-D buffer (model.parameters() order)."""

    def __init__(self, params: list[nn.Parameter]):
        if not params:
            raise InvalidArgumentError("the model has no trainable parameters (requires_grad)")
        devices = {p.device for p in params}
        dtypes = {p.dtype for p in params}
        if len(devices) != 1 or len(dtypes) != 1:
            raise InvalidArgumentError(
                "m3/rm3/ra3 keep gradients in one flat buffer and need every trainable "
                f"parameter on one device with one dtype, got devices {sorted(map(str, devices))!r}"
                f" and dtypes {sorted(map(str, dtypes))!r}")
        self.device = params[0].device
        self.dtype = params[0].dtype
        self.shapes = tuple(tuple(p.shape) for p in params)
        self.numels = [p.numel() for p in params]
        self.total = sum(self.numels)

    def matches(self, params: list[nn.Parameter]) -> bool:
        return (len(params) == len(self.shapes)
                and all(p.device == self.device and p.dtype == self.dtype
                        and tuple(p.shape) == s for p, s in zip(params, self.shapes)))

    def views(self, flat: Tensor) -> list[Tensor]:
        """Per-parameter views into ``flat`` (1-D, ``total`` long)."""
        return [t.view(s) for t, s in zip(flat.split(self.numels), self.shapes)]

    def empty(self, *leading: int) -> Tensor:
        return torch.zeros(*leading, self.total, device=self.device, dtype=self.dtype)


# --------------------------------------------------------------------------------------------
# estimators


class GradientEstimator(abc.ABC):
    """Computes a gradient estimate into ``p.grad`` for every trainable parameter.

    Subclasses implement :meth:`compute`; stateful ones (rm3, ra3) override
    :meth:`state_dict` / :meth:`load_state_dict`."""

    name: str = ""

    @abc.abstractmethod
    def compute(self, model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
        """Run the forward pass(es) of ``model`` (in train mode) on the minibatch ``inputs``
        ``(B, C, H, W)`` (already augmented and normalised) with ``labels`` ``(B,)``, and set
        ``p.grad`` of every parameter with ``requires_grad`` to the estimate (overwriting, not
        accumulating; a parameter the forward pass does not use gets zeros).  Returns the
        detached logits ``(B, classes)`` of the minibatch computed before the update, in the
        original example order."""

    def state_dict(self) -> dict:
        """Tensors and ints only (saved with ``torch.save``, loaded with ``weights_only=True``)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state:
            raise InvalidArgumentError(
                f"the {self.name} estimator is stateless and accepts only an empty state, "
                f"got {state!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SGDEstimator(GradientEstimator):
    """``sgd``: the plain mean cross-entropy gradient over the minibatch (one forward, one
    backward)."""

    name = "sgd"

    def compute(self, model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
        _check_batch(inputs, labels)
        params = _trainable(model)
        with torch.enable_grad():
            logits, grads = _mean_gradient(model, params, inputs, labels)
        for p, g in zip(params, grads):
            p.grad = g
        return logits


class M3Estimator(GradientEstimator):
    """``m3``, median of 3 micro-batches (paper Sec. 3.2): the minibatch is split into 3
    micro-batches ``S1, S2, S3`` of consecutive examples, each gets its own forward and backward
    pass, and the estimate is the coordinate-wise ``median(g(S1), g(S2), g(S3))`` of their mean
    gradients.  One call = one update per 3 micro-batches.

    Batch sizes: ``make_estimator`` requires the configured ``batch_size`` to be a multiple of 3.
    A short batch (the last of an epoch) of ``B`` examples not divisible by 3 is split into
    micro-batches of sizes as equal as possible (``torch.tensor_split``: the first ``B % 3``
    micro-batches get one example more, e.g. 110 -> 37, 37, 36); a batch of fewer than 3
    examples cannot form 3 micro-batches and gets the plain mean gradient (``sgd``).

    BatchNorm: each micro-batch's forward is normalised with that micro-batch's statistics and
    updates the running statistics, so BatchNorm running averages take 3 updates per step (the
    as the paper's serial implementation would).  The returned logits are the concatenation
    of the three micro-batch forwards."""

    name = "m3"

    def __init__(self) -> None:
        self._layout: _FlatLayout | None = None
        self._grads: Tensor | None = None   # (3, P): the three micro-batch gradients
        self._est: Tensor | None = None     # (P,): the median; p.grad are views of it
        self._tmp: Tensor | None = None     # (P,): scratch for the median
        self._est_views: list[Tensor] = []  # per-parameter views of _est

    def _buffers(self, params: list[nn.Parameter]) -> _FlatLayout:
        if self._layout is None or not self._layout.matches(params):
            self._layout = _FlatLayout(params)
            self._grads = self._layout.empty(3)
            self._est = self._layout.empty()
            self._tmp = self._layout.empty()
            self._est_views = self._layout.views(self._est)
        return self._layout

    def compute(self, model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
        batch = _check_batch(inputs, labels)
        if batch < 3:
            return SGDEstimator().compute(model, inputs, labels)
        params = _trainable(model)
        self._buffers(params)
        logits = []
        with torch.enable_grad():
            for k, (x, y) in enumerate(zip(inputs.tensor_split(3), labels.tensor_split(3))):
                lg, grads = _mean_gradient(model, params, x, y)
                logits.append(lg)
                torch.cat([g.reshape(-1) for g in grads], out=self._grads[k])
        _median3(self._grads[0], self._grads[1], self._grads[2], out=self._est, tmp=self._tmp)
        for p, v in zip(params, self._est_views):
            p.grad = v
        return torch.cat(logits)


class _RollingEstimator(GradientEstimator):
    """Shared machinery of ``rm3`` and ``ra3``: a ring of the last 3 minibatch gradients kept
    as one preallocated ``(3, P)`` buffer on the parameters' device.  Step ``t`` (0-based,
    ``count`` before the call) writes its gradient into row ``t % 3``; from the third step on
    the estimate combines the three rows (median and mean are symmetric, so the row order does
    not matter), before that it is the current gradient (plain SGD).  Everything runs as
    in-place device ops with Python-int bookkeeping, so there is no host synchronisation."""

    def __init__(self) -> None:
        self._layout: _FlatLayout | None = None
        self._history: Tensor | None = None  # (3, P) ring of minibatch gradients
        self._count = 0                      # minibatch gradients seen so far
        self._est: Tensor | None = None      # (P,): the estimate; p.grad are views of it
        self._tmp: Tensor | None = None      # (P,): scratch
        self._est_views: list[Tensor] = []   # per-parameter views of _est

    @abc.abstractmethod
    def _combine(self, out: Tensor) -> None:
        """Write the estimate from the ``(3, P)`` history ring into ``out`` ``(P,)``."""

    def _buffers(self, params: list[nn.Parameter]) -> _FlatLayout:
        if self._layout is not None and self._layout.matches(params):
            return self._layout
        layout = _FlatLayout(params)
        if self._history is None or self._count == 0:
            self._history = layout.empty(3)
        elif tuple(self._history.shape) != (3, layout.total) or self._history.dtype != layout.dtype:
            raise ScorebankError(
                f"{self.name} gradient history has shape {tuple(self._history.shape)!r} and dtype "
                f"{self._history.dtype}, but the model has {layout.total} trainable parameters of "
                f"dtype {layout.dtype}: the history belongs to a different model")
        else:
            self._history = self._history.to(layout.device)
        self._est = layout.empty()
        self._tmp = layout.empty()
        self._est_views = layout.views(self._est)
        self._layout = layout
        return layout

    def compute(self, model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
        _check_batch(inputs, labels)
        params = _trainable(model)
        self._buffers(params)
        with torch.enable_grad():
            logits, grads = _mean_gradient(model, params, inputs, labels)
        torch.cat([g.reshape(-1) for g in grads], out=self._history[self._count % 3])
        self._count += 1
        if self._count < 3:
            # fewer than 3 gradients so far: plain SGD.  p.grad gets the fresh autograd tensors,
            # never a view of the history, so a caller clipping p.grad in place cannot alter it.
            for p, g in zip(params, grads):
                p.grad = g
        else:
            self._combine(self._est)
            for p, v in zip(params, self._est_views):
                p.grad = v
        return logits

    def state_dict(self) -> dict:
        """``{"count": int}`` plus ``"history"``, a ``(3, P)`` copy of the gradient ring, once a
        gradient has been seen.  Loading it into a fresh estimator makes a resumed run compute
        bit-for-bit the same estimates as an uninterrupted one."""
        state: dict = {"count": self._count}
        if self._count > 0 and self._history is not None:
            state["history"] = self._history.detach().clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise InvalidArgumentError(f"{self.name} state must be a dict, got {state!r}")
        keys = set(state)
        if not keys <= {"count", "history"} or "count" not in keys:
            raise InvalidArgumentError(
                f"{self.name} state must have keys 'count' and (once count > 0) 'history', "
                f"got keys {sorted(map(str, keys))!r}")
        count = state["count"]
        if not _is_int(count) or count < 0:
            raise InvalidArgumentError(
                f"{self.name} state 'count' must be a non-negative integer, got {count!r}")
        history = state.get("history")
        if count > 0:
            if (not isinstance(history, Tensor) or history.dim() != 2 or history.shape[0] != 3
                    or not history.is_floating_point()):
                shape = tuple(history.shape) if isinstance(history, Tensor) else history
                raise InvalidArgumentError(
                    f"{self.name} state 'history' must be a floating-point (3, P) tensor when "
                    f"count > 0, got {shape!r}")
            self._history = history.detach().clone()
        else:
            self._history = None
        self._count = int(count)
        self._layout = None  # re-validated against the model (and moved to its device) on use


class RM3Estimator(_RollingEstimator):
    """``rm3``, rolling median of 3 minibatches (paper Sec. 3.2): the estimate at step ``t`` is
    the coordinate-wise ``median(g(B_t), g(B_{t-1}), g(B_{t-2}))`` of this minibatch's mean
    gradient and the previous two minibatches' mean gradients.  The first two steps of a run
    (fewer than 3 gradients) use plain SGD, ``g(B_t)``.  The history (two previous gradients
    and the step count) is state: it round-trips through :meth:`state_dict`.

    Cost over SGD: one ``(P,)`` copy and 4 elementwise passes per step, no host sync."""

    name = "rm3"

    def _combine(self, out: Tensor) -> None:
        h = self._history
        _median3(h[0], h[1], h[2], out=out, tmp=self._tmp)


class RA3Estimator(_RollingEstimator):
    """``ra3``, rolling average of 3 minibatches, the paper's control for rm3 (Sec. 3.2): the
    estimate at step ``t`` is ``(g(B_t) + g(B_{t-1}) + g(B_{t-2})) / 3``; plain SGD for the
    first two steps.  Same state as rm3."""

    name = "ra3"

    def _combine(self, out: Tensor) -> None:
        h = self._history
        _mean3(h[0], h[1], h[2], out=out)


# --------------------------------------------------------------------------------------------
# winsorized: per-example gradients

# models whose per-example decomposition has been checked against the minibatch gradient
_VERIFIED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


class WinsorizedEstimator(GradientEstimator):
    """``winsorized`` SGD with ``clip_count = s`` (Chatterjee 2020; paper Sec. 3.1, App. B):
    per coordinate, the ``B`` per-example gradients of the minibatch are clamped to lie between
    their ``(s+1)``-th smallest and ``(s+1)``-th largest value, then summed and divided by
    ``B``.  ``s = 0`` clips nothing and equals plain SGD (up to float summation order).
    ``make_estimator`` requires ``2 * (s + 1) <= batch_size``.  A short batch (the last of an
    epoch) with ``B < 2 * (s + 1)`` is winsorized with the largest clip count it allows,
    ``s' = max(0, (B - 2) // 2)`` (e.g. s = 2 and B = 5 -> s' = 1), so every example still
    takes part in its epoch and its in-flight statistics are recorded.

    Per-example gradients come from one ordinary minibatch forward/backward through the engine
    shared with GraNd (:func:`scorebank.pipeline.per_example.per_example_gradients`: per-layer
    handlers by module type, ``vmap(grad(...))`` where there is no closed form), clamped module by
    module as they are formed.

    BatchNorm (decision): models with train-mode BatchNorm are accepted.  The forward pass is
    the ordinary minibatch forward (batch statistics, running statistics updated once, exactly
    as ``sgd``), and example ``i``'s gradient is its exact share of the minibatch gradient: the
    gradient through the parameters' use on example ``i``, with the backward signal from the
    true minibatch backward (which includes the statistics' coupling).  These shares sum to the
    minibatch gradient exactly, so ``s = 0`` equals ``sgd`` for BatchNorm nets too; for nets
    without BatchNorm they are exactly the per-example loss gradients.  (Treating the batch
    statistics as constants instead would break that identity: it drops the centring and scale
    projection BatchNorm puts on the gradient of the layer below.)  A module applied several
    times and weights tied between modules get the sum of their calls' shares.  A parameter no
    layer handler covers (raw parameters, use outside its module) takes the engine's whole-model
    fallback, which evaluates each example alone: exact without train-mode BatchNorm, refused
    with InvalidArgumentError with it.  Extra memory: ``B`` times the parameters of the largest
    module.
    """

    name = "winsorized"

    def __init__(self, clip_count: int = 0):
        _check_clip_count(clip_count)
        self.clip_count = int(clip_count)

    def compute(self, model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
        batch = _check_batch(inputs, labels)
        s = min(self.clip_count, max(0, (batch - 2) // 2))  # a short last batch clips fewer

        def winsorized_mean(terms: Tensor) -> Tensor:  # (B, *shape) -> (*shape)
            if s > 0:
                # topk of s+1 along the batch is ~3x faster than kthvalue here; its values are
                # sorted, so row s is the (s+1)-th smallest / largest.
                lo = terms.topk(s + 1, dim=0, largest=False).values[s]
                hi = terms.topk(s + 1, dim=0, largest=True).values[s]
                terms.clamp_(lo, hi)
            return terms.sum(0).div_(batch)

        verify = model not in _VERIFIED
        logits, params, estimates = per_example_gradients(
            model, inputs, labels, verify=verify, reduce=winsorized_mean, who="winsorized")
        if verify:
            _VERIFIED.add(model)
        for p, est in zip(params, estimates):
            p.grad = est
        return logits

    def __repr__(self) -> str:
        return f"WinsorizedEstimator(clip_count={self.clip_count!r})"


# --------------------------------------------------------------------------------------------
# registry and factory


def _check_clip_count(clip_count: Any) -> None:
    if not _is_int(clip_count) or clip_count < 0:
        raise InvalidArgumentError(
            f"--clip-count must be a non-negative integer, got {clip_count!r}")


def _sgd(batch_size: int, clip_count: int) -> GradientEstimator:
    return SGDEstimator()


def _m3(batch_size: int, clip_count: int) -> GradientEstimator:
    if batch_size % 3 != 0:
        raise InvalidArgumentError(
            f"--optimizer m3 splits each minibatch into 3 equal micro-batches and needs a "
            f"--batch-size divisible by 3, got {batch_size!r} "
            f"(e.g. {3 * max(1, round(batch_size / 3))!r})")
    return M3Estimator()


def _rm3(batch_size: int, clip_count: int) -> GradientEstimator:
    return RM3Estimator()


def _ra3(batch_size: int, clip_count: int) -> GradientEstimator:
    return RA3Estimator()


def _winsorized(batch_size: int, clip_count: int) -> GradientEstimator:
    if 2 * (clip_count + 1) > batch_size:
        raise InvalidArgumentError(
            f"--optimizer winsorized with --clip-count {clip_count!r} needs --batch-size of at "
            f"least 2*(clip_count+1) = {2 * (clip_count + 1)}, got {batch_size!r}")
    return WinsorizedEstimator(clip_count)


@dataclass(frozen=True)
class Optimizer:
    """An ``--optimizer`` entry: ``build(batch_size, clip_count)`` checks the batch size it needs
    and returns the estimator; ``clip_count`` says whether ``--clip-count`` applies."""

    build: Callable[[int, int], GradientEstimator]
    clip_count: bool = False


#: Gradient estimators by ``--optimizer`` name (Coherent Gradients, Sec. 3.1-3.2).
OPTIMIZERS: Registry[Optimizer] = Registry("optimizer", "--optimizer")
OPTIMIZERS.add("sgd", Optimizer(_sgd), help="plain SGD, the mean gradient g(B) of the minibatch")
OPTIMIZERS.add("m3", Optimizer(_m3), help="median of 3: the coordinate-wise median of the mean "
               "gradients of 3 equal micro-batches, one update per 3 micro-batches (--batch-size "
               "divisible by 3)")
OPTIMIZERS.add("rm3", Optimizer(_rm3), help="rolling median of 3: the coordinate-wise median of the "
               "gradients of this minibatch and the previous two")
OPTIMIZERS.add("ra3", Optimizer(_ra3), help="rolling average of 3: the mean of the gradients of this "
               "minibatch and the previous two (the control for rm3)")
OPTIMIZERS.add("winsorized", Optimizer(_winsorized, clip_count=True), help="winsorized SGD: per "
               "coordinate, the per-example gradients clamped to their (s+1)-th smallest and largest "
               "values, s = --clip-count, then averaged")


def make_estimator(name: str, *, batch_size: int, clip_count: int = 0) -> GradientEstimator:
    """The estimator for ``--optimizer name`` (:data:`OPTIMIZERS`) with minibatches of
    ``batch_size`` examples.

    ``m3`` needs ``batch_size`` divisible by 3; ``winsorized`` needs
    ``2 * (clip_count + 1) <= batch_size``; ``clip_count`` is only meaningful for
    ``winsorized`` and must be 0 otherwise."""
    entry = OPTIMIZERS.get(name)
    if not _is_int(batch_size) or batch_size < 1:
        raise InvalidArgumentError(f"--batch-size must be a positive integer, got {batch_size!r}")
    _check_clip_count(clip_count)
    if not entry.clip_count and clip_count != 0:
        takers = " or ".join(e.name for e in OPTIMIZERS.entries() if e.value.clip_count)
        raise InvalidArgumentError(
            f"--clip-count {clip_count!r} only applies to --optimizer {takers}, not {name!r}; "
            f"leave it at 0")
    return entry.build(batch_size, clip_count)
