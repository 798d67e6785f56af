"""GraNd scores: exact per-example loss-gradient norms (Data Diet, Paul et al., Def. 2.1).

The GraNd score of a training example ``(x, y)`` at weights ``w`` is ``||g(x, y)||_2``,
the Euclidean norm of the gradient of that example's cross-entropy loss with respect to
*all* trainable parameters of the network (Def. 2.1 averages it over independent weight
draws; the averaging over seeds is done by the caller).  Here it is computed with
BatchNorm in eval mode (running statistics, so one example's gradient does not depend
on the rest of the batch) and on the un-augmented input.  The score is in the units of
the loss gradient (nats per unit parameter), with the loss of one example un-averaged.

Instead of one backward pass per example, :func:`grand_scores` runs ONE eval-mode
forward + backward of the *summed* loss per batch, through the per-example gradient
engine :class:`scorebank.pipeline.per_example.PerExample` (shared with winsorized SGD;
the layer formulas below are its handlers).  In eval mode the examples do not interact,
so the gradient of the summed loss with respect to layer ``k``'s output, restricted to
example ``i``, is exactly example ``i``'s own output gradient ``g_i``.
Together with the layer's input ``a_i`` it determines the per-example parameter
gradient of that layer, whose squared norm is computed per layer without materialising
a ``(batch x all parameters)`` tensor:

* ``nn.Linear`` on ``(batch, in)`` input: weight gradient ``g_i a_i^T`` has squared norm
  ``||a_i||^2 ||g_i||^2`` (the "ghost norm"); the bias gradient is ``g_i``.
* ``nn.Linear`` on ``(batch, ..., in)`` input and ``nn.Conv2d`` (any stride, padding,
  dilation; zero padding mode): with ``U_i`` the ``(d_in, L)`` unfolded input patches
  and ``G_i`` the ``(d_out, L)`` output gradient over the ``L`` output positions, the
  weight gradient is ``G_i U_i^T``.  Its squared norm is taken either from the
  per-example weight gradients themselves (cost ``L d_in d_out``; a batched matmul of
  unfolded patches, or on CPU for wide high-resolution layers one convolution
  weight-gradient with the batch folded into ``groups``; grouped convolutions are
  handled per group) or through the Gram identity ``sum_{l,l'} (u_l . u_l') (g_l . g_l')``
  (cost ``L^2 (d_in + d_out)``, ``groups=1``), whichever is cheaper for the layer's
  sizes (Bu et al., mixed ghost clipping).  The bias gradient is ``sum_l g_l``.
* ``nn.BatchNorm1d/2d/3d`` in eval mode: ``d gamma_i = sum_spatial g_i * x_hat_i`` with
  ``x_hat = (a - running_mean) / sqrt(running_var + eps)``, ``d beta_i = sum_spatial g_i``.

Squared norms are summed over layers and the square root taken at the end.  The backward
stops at the layer outputs (``autograd.grad`` w.r.t. them), so the summed parameter
gradients are never formed and ``p.grad`` is never touched.

A parameter shared between modules or a module called more than once per forward gets
the sum of its calls' per-example gradients, formed explicitly, then squared.  Every other
trainable parameter (a module type without a closed form is taken module by module with
``vmap``; a raw parameter, a parameter also used outside its module, ...) is handled exactly
by a ``torch.func`` ``vmap(grad(...))`` over ``functional_call`` of the whole model
restricted to those parameters, so any model whose eval-mode forward treats the examples of
a batch independently is supported.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import nn

from scorebank.pipeline.per_example import PerExample
from scorebank.stores.errors import InvalidArgumentError

__all__ = ["grand_scores"]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate squared norms in float64 for float64 models, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- public API


def _validate(model: Any, inputs: Any, labels: Any, batch_size: Any) -> None:
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__!r}")
    if not isinstance(inputs, torch.Tensor):
        raise InvalidArgumentError(
            f"inputs must be a torch.Tensor of shape (N, C, H, W), got {type(inputs).__name__!r}")
    if not isinstance(labels, torch.Tensor):
        raise InvalidArgumentError(
            f"labels must be a torch.Tensor of shape (N,), got {type(labels).__name__!r}")
    if (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
            or batch_size < 1):
        raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
    if inputs.dim() < 2:
        raise InvalidArgumentError(
            f"inputs must have a leading example dimension, e.g. (N, C, H, W); "
            f"got shape {tuple(inputs.shape)!r}")
    if not inputs.is_floating_point():
        raise InvalidArgumentError(
            f"inputs must be a floating-point tensor, got dtype {inputs.dtype!r}")
    if labels.dim() != 1:
        raise InvalidArgumentError(
            f"labels must be one-dimensional (N,), got shape {tuple(labels.shape)!r}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise InvalidArgumentError(
            f"labels must be an integer (int64) tensor, got dtype {labels.dtype!r}")
    if labels.shape[0] != inputs.shape[0]:
        raise InvalidArgumentError(
            f"labels has {labels.shape[0]!r} entries but inputs has {inputs.shape[0]!r} examples; "
            f"they must match")
    for name, p in model.named_parameters():
        if p.requires_grad and p.device != inputs.device:
            raise InvalidArgumentError(
                f"parameter {name!r} is on {str(p.device)!r} but inputs are on "
                f"{str(inputs.device)!r}; move inputs to the model's device")
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None:
            raise InvalidArgumentError(
                f"BatchNorm module {name!r} has no running statistics (track_running_stats=False); "
                f"GraNd needs eval-mode BatchNorm with running statistics")


def grand_scores(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *,
                 batch_size: int = 256) -> torch.Tensor:
    """GraNd score ``||grad_w loss(f_w(x_i), y_i)||_2`` of every example (Data Diet, Def. 2.1,
    at the model's current weights; average over seeds outside).

    The gradient is over all trainable parameters (``requires_grad=True``) of the
    un-averaged cross-entropy loss of the example alone, with the model in eval mode
    (BatchNorm uses its running statistics, dropout is off) and the input exactly as
    given (un-augmented).  Equal, up to float rounding, to one backward pass per example.

    Returns ``(N,)`` float32 on ``inputs.device``.  ``inputs``: ``(N, C, H, W)``
    already-normalised float tensor on the model's device; ``labels``: ``(N,)`` int64
    class indices in ``[0, num_classes)``.  ``batch_size`` examples are processed per
    forward/backward pass and bound the memory used.  Puts the model in eval mode for
    the pass and restores every submodule's previous train/eval mode afterwards; leaves
    parameters, buffers (BatchNorm running stats) and every ``p.grad`` as they were.

    Raises :class:`~scorebank.stores.errors.InvalidArgumentError` for mismatched shapes,
    a non-positive ``batch_size``, labels out of range, inputs on another device than the
    model, or BatchNorm without running statistics.
    """
    _validate(model, inputs, labels, batch_size)
    # Gradients are needed even when called under torch.no_grad() or inference_mode().
    with torch.inference_mode(False), torch.enable_grad():
        return _grand_scores(model, inputs, labels, int(batch_size))


def _grand_scores(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                  batch_size: int) -> torch.Tensor:
    """:func:`grand_scores` after validation, with autograd enabled."""
    n = inputs.shape[0]
    device = inputs.device
    acc = _acc_dtype(inputs.dtype)
    scores = torch.zeros(n, dtype=acc, device=device)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if n == 0 or not named:
        return scores.float()  # empty gradient vector: norm 0
    labels = labels.to(device=device, dtype=torch.int64)
    if labels.is_inference():  # made under torch.inference_mode: autograd cannot save it
        labels = labels.clone()
    lo_label, hi_label = (int(v) for v in torch.aminmax(labels))  # one sync, before the loop
    if lo_label < 0:
        raise InvalidArgumentError(
            f"labels must be class indices >= 0, got minimum label {lo_label!r}")

    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with PerExample(model) as engine:
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                batch = stop - start
                x = inputs[start:stop].detach()
                if x.is_inference():
                    x = x.clone()
                y = labels[start:stop]
                logits = engine.forward(x)
                is_tensor = isinstance(logits, torch.Tensor)
                if not is_tensor or logits.dim() != 2 or logits.shape[0] != batch:
                    shape = tuple(logits.shape) if is_tensor else type(logits).__name__
                    raise InvalidArgumentError(
                        f"model must map a batch to (batch, classes) logits, got {shape!r} "
                        f"for a batch of {batch!r}")
                if hi_label >= logits.shape[1]:
                    raise InvalidArgumentError(
                        f"label {hi_label!r} is out of range for a model with "
                        f"{logits.shape[1]!r} classes; labels must be in [0, {logits.shape[1]})")
                scores[start:stop] = engine.squared_norms(logits, x, y, acc).sqrt()
                del logits
    finally:
        for m, training in modes:
            m.training = training
    return scores.float()
