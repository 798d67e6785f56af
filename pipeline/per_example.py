"""Per-example gradients of the cross-entropy loss: the one engine behind GraNd and winsorized SGD.

For a minibatch of examples ``(x_i, y_i)`` and the trainable parameters ``theta`` of a model,
example ``i``'s gradient is ``g_i = d CE(f_theta(x_i), y_i) / d theta``.  GraNd (Data Diet,
Paul et al., Def. 2.1) needs its squared norm ``||g_i||^2``; winsorized SGD (Coherent Gradients,
Chatterjee 2020, Sec. 3.1) needs ``g_i`` itself, to clamp it coordinate-wise across the batch.
Both come from ONE forward and ONE backward of the *summed* loss (Goodfellow's per-example
decomposition; the pattern of opacus ``grad_sample``):

* a forward hook on every parameter-owning module of a registered type records the module's
  input ``a`` of each call, and a tensor hook on the call's output records ``delta``, the
  gradient of the summed loss there;
* the module type's *layer handler* (:data:`LAYERS`) turns ``(a, delta)`` into example ``i``'s
  contribution ``d/dtheta <m(theta, a_i), delta_i>`` to the module's own parameters ``theta``:
  in closed form for ``Linear`` and ``Conv2d``, by ``torch.func`` ``vmap(grad(...))`` of the
  module alone for BatchNorm and the other registered types.  GraNd takes a handler's closed-form
  squared norm when it has one (``Linear``, ``Conv2d``, eval-mode BatchNorm: "ghost norms",
  the per-example gradients are never formed);
* a parameter used by several calls (a module applied twice, weights tied between modules)
  gets the sum of its calls' contributions -- in both users alike;
* every other trainable parameter (owned by a module type without a handler, a raw parameter
  used in some ``forward``, a parameter also used outside its module, a call whose input or
  output is not one batched tensor) goes to the exact fallback: ``vmap(grad(...))`` of the
  one-example loss over ``functional_call`` of the whole model, restricted to those parameters.

Whether a parameter is covered by its module calls is decided from the autograd graph: every
call of a module adds exactly one edge into each of its parameters, so a parameter with more
edges than recorded calls is also used elsewhere.

When the forward treats the examples of a batch independently (eval mode, or no BatchNorm in
training mode) the contributions are exactly the per-example gradients.  With BatchNorm in
training mode ``delta_i`` also carries the backward through the batch statistics, so a
contribution is example ``i``'s exact *share* of the minibatch gradient (the shares sum to it);
the whole-model fallback evaluates each example alone, which is not that, and is refused there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from scorebank.core.registry import Registry
from scorebank.core.errors import InvalidArgumentError

__all__ = ["LAYERS", "LayerHandler", "PerExample", "per_example_gradients"]

# Upper bound on the elements of the per-layer temporaries (unfolded patches, per-example
# weight gradients or Gram matrices, per-example fallback gradients) built at once when only
# squared norms are wanted; the batch is cut into chunks of examples to respect it.
# 2**25 float32 = 128 MiB.
_CHUNK_ELEMENTS = 1 << 25

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


# --------------------------------------------------------------------------- squared norms


def _rows_sqnorm(w: Tensor) -> Tensor:
    """Squared Frobenius norm of each ``w[i]`` of a ``(n, rows, cols)`` tensor.

    Row norms first, then their squares summed: a two-level reduction, accurate to float
    rounding even for millions of entries (one flat float32 norm loses ~1e-4)."""
    return torch.linalg.vector_norm(w, dim=2).square().sum(1)  # (n, rows) -> (n,)


def _use_gram(length: int, d_in: int, d_out: int) -> bool:
    """Mixed ghost norm (Bu et al.): the Gram route costs ``L^2 (d_in + d_out)`` multiply-adds
    per example, the per-example weight gradient ``L d_in d_out``; take the cheaper."""
    return length * (d_in + d_out) < d_in * d_out


def _chunk(batch: int, per_example: int) -> int:
    """Examples per chunk so that a chunk's temporaries stay under ``_CHUNK_ELEMENTS``."""
    return max(1, min(batch, _CHUNK_ELEMENTS // max(per_example, 1)))


def _gram_sqnorms(u: Tensor, g: Tensor) -> Tensor:
    """``||G_i U_i^T||_F^2 = sum_{l,l'} (u_l . u_l') (g_l . g_l')`` without forming the
    product.  ``u``: (n, d_in, L), ``g``: (n, d_out, L) -> (n,)."""
    gram_u = torch.bmm(u.transpose(1, 2), u)  # (n, L, L): u_l . u_l'
    gram_g = torch.bmm(g.transpose(1, 2), g)  # (n, L, L): g_l . g_l'
    return gram_u.mul_(gram_g).sum((1, 2))


def _linear_sqnorms(m: nn.Linear, names: frozenset[str], a: Tensor, g: Tensor) -> Tensor:
    """Per-example squared norm of the Linear layer's weight and bias gradients (those in
    ``names``).  ``a``: (batch, ..., in) layer input, ``g``: (batch, ..., out) output gradient.

    On ``(batch, in)`` input the weight gradient ``g_i a_i^T`` has squared norm
    ``||a_i||^2 ||g_i||^2`` (the ghost norm) and the bias gradient is ``g_i``.  On
    ``(batch, T, in)`` input the weight gradient ``G_i U_i^T`` (``U_i``: (in, T), ``G_i``:
    (out, T)) is formed or its norm taken through the Gram identity, whichever is cheaper."""
    with_weight, with_bias = "weight" in names, "bias" in names
    batch = a.shape[0]
    if a.dim() == 2:  # a: (batch, in), g: (batch, out): ghost norm ||a_i||^2 ||g_i||^2
        g_sq = g.square().sum(1)  # (batch,)
        out = torch.zeros_like(g_sq)
        if with_weight:
            out += a.square().sum(1) * g_sq
        if with_bias:
            out += g_sq
        return out
    a3 = a.reshape(batch, -1, a.shape[-1]).transpose(1, 2)  # (batch, in, T)
    g3 = g.reshape(batch, -1, g.shape[-1]).transpose(1, 2)  # (batch, out, T)
    d_in, d_out, length = a3.shape[1], g3.shape[1], a3.shape[2]
    out = torch.zeros(batch, dtype=g.dtype, device=g.device)
    if with_bias:
        out += g3.sum(2).square().sum(1)  # sum over positions: (batch, out) -> (batch,)
    if with_weight:
        gram = _use_gram(length, d_in, d_out)
        step = _chunk(batch, 2 * length * length if gram else d_in * d_out)
        for lo in range(0, batch, step):
            u, gc = a3[lo:lo + step], g3[lo:lo + step]  # (n, in, T), (n, out, T)
            if gram:
                out[lo:lo + step] += _gram_sqnorms(u, gc)
            else:
                out[lo:lo + step] += _rows_sqnorm(torch.bmm(gc, u.transpose(1, 2)))  # (n, out, in)
    return out


def _same_padding(m: nn.Conv2d) -> tuple[int, int, int, int]:
    """``F.pad`` amounts (left, right, top, bottom) that ``padding='same'`` applies."""
    pads: list[int] = []
    for d, k in zip(reversed(m.dilation), reversed(m.kernel_size)):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return tuple(pads)  # type: ignore[return-value]


def _unfold(a: Tensor, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int],
            d: tuple[int, int]) -> Tensor:
    """``F.unfold`` (same layout) built from a strided view and one copy, several times
    faster than ``im2col`` on CPU.  ``a``: (n, C, H, W) -> (n, C*kh*kw, Ho*Wo)."""
    n, c = a.shape[0], a.shape[1]
    if p != (0, 0):
        a = F.pad(a, (p[1], p[1], p[0], p[0]))  # (n, C, H + 2ph, W + 2pw)
    v = a.unfold(2, d[0] * (k[0] - 1) + 1, s[0]).unfold(3, d[1] * (k[1] - 1) + 1, s[1])
    v = v[..., ::d[0], ::d[1]]  # (n, C, Ho, Wo, kh, kw): a view
    ho, wo = v.shape[2], v.shape[3]
    return v.permute(0, 1, 4, 5, 2, 3).reshape(n, c * k[0] * k[1], ho * wo)  # (n, C*kh*kw, L)


def _conv_route(device: torch.device, c_in_group: int, c_out: int, d_in: int, length: int,
                groups: int) -> str:
    """Weight route of a Conv2d layer's squared norm: ``"gram"``, ``"grouped"`` or ``"unfold"``.

    Gram when it needs fewer multiply-adds than forming the per-example weight gradients
    (small ``L`` relative to the channels: the deep, low-resolution layers).  Otherwise
    the per-example weight gradients are formed, on CPU by one grouped-convolution
    weight gradient when the layer is wide and high-resolution enough for oneDNN's
    grouped kernels to beat an unfold + batched matmul (measured: 3x faster at 16
    channels x 32x32, 6x slower with the 3-channel stem), else by unfold + bmm (the
    Opacus route, also the one used on accelerators)."""
    if groups == 1 and _use_gram(length, d_in, c_out):
        return "gram"
    if device.type == "cpu" and length >= 256 and c_in_group >= 8:
        return "grouped"
    return "unfold"


def _conv2d_weight_grads(m: nn.Conv2d, a: Tensor, g: Tensor, padding: tuple[int, int]) -> Tensor:
    """Per-example weight gradients ``(n, out, in/groups, kh, kw)`` by one convolution
    weight-gradient with the batch folded into ``groups``: example j's input channels meet only
    example j's output channels (the same call ``vmap`` makes for a convolution's backward).
    ``a``: (n, in, H, W), ``g``: (n, out, Ho, Wo)."""
    n, c_in, c_out = a.shape[0], a.shape[1], g.shape[1]
    k = m.kernel_size
    w = torch.nn.grad.conv2d_weight(
        a.reshape(1, n * c_in, a.shape[2], a.shape[3]),  # (1, n*in, H, W)
        (n * c_out, c_in // m.groups, k[0], k[1]),
        g.reshape(1, n * c_out, g.shape[2], g.shape[3]),  # (1, n*out, Ho, Wo)
        stride=m.stride, padding=padding, dilation=m.dilation, groups=n * m.groups)
    return w.reshape(n, c_out, c_in // m.groups, k[0], k[1])  # (n*out, ...) -> (n, out, ...)


def _conv2d_sqnorms(m: nn.Conv2d, names: frozenset[str], a: Tensor, g: Tensor) -> Tensor:
    """Per-example squared norm of the Conv2d layer's weight and bias gradients (those in
    ``names``; zero padding mode, any stride, dilation, groups and padding).

    ``a``: (batch, in, H, W) layer input, ``g``: (batch, out, Ho, Wo) output gradient.  With
    ``U_i`` the (d_in, L) unfolded input patches and ``G_i`` the (d_out, L) output gradient
    over the L output positions the weight gradient is ``G_i U_i^T``; its squared norm is
    taken from the per-example weight gradients (cost ``L d_in d_out``) or through the Gram
    identity (cost ``L^2 (d_in + d_out)``, ``groups=1``), whichever is cheaper (Bu et al.,
    mixed ghost clipping); :func:`_conv_route` decides.  The bias gradient is ``sum_l g_l``."""
    batch, c_in, c_out = a.shape[0], a.shape[1], g.shape[1]
    length = g.shape[2] * g.shape[3]
    out = torch.zeros(batch, dtype=g.dtype, device=g.device)
    if "bias" in names:
        out += g.sum((2, 3)).square().sum(1)  # sum over positions: (batch, out) -> (batch,)
    if "weight" not in names:
        return out
    padding = m.padding
    if isinstance(padding, str):
        if padding == "same":
            a = F.pad(a, _same_padding(m))
        padding = (0, 0)
    k, s, d, groups = m.kernel_size, m.stride, m.dilation, m.groups
    c_in_g, c_out_g = c_in // groups, c_out // groups
    d_in = c_in_g * k[0] * k[1]  # weight columns per output channel
    route = _conv_route(a.device, c_in_g, c_out, d_in, length, groups)
    if route == "gram":
        per_example = (c_in * k[0] * k[1] + 2 * length) * length
    elif route == "grouped":
        per_example = c_out * d_in
    else:
        per_example = (c_in * k[0] * k[1] + c_out) * length + c_out * d_in
    step = _chunk(batch, per_example)
    for lo in range(0, batch, step):
        ac, gc = a[lo:lo + step], g[lo:lo + step]
        n = ac.shape[0]
        if route == "grouped":
            w = _conv2d_weight_grads(m, ac, gc, padding)  # (n, out, in/groups, kh, kw)
            out[lo:lo + n] += _rows_sqnorm(w.reshape(n, c_out, d_in))  # (n, out, in/groups*kh*kw)
            continue
        if k == (1, 1) and padding == (0, 0):  # 1x1: the patches are strided pixels
            u = ac[:, :, ::s[0], ::s[1]].reshape(n, c_in, length)  # (n, in, L)
        else:
            u = _unfold(ac, k, s, padding, d)  # (n, in*kh*kw, L), rows ordered (in, kh, kw)
        if route == "gram":
            out[lo:lo + n] += _gram_sqnorms(u, gc.reshape(n, c_out, length))
        else:
            u = u.reshape(n * groups, d_in, length)  # (n*groups, in/groups*kh*kw, L)
            gg = gc.reshape(n * groups, c_out_g, length)  # (n*groups, out/groups, L)
            w = torch.bmm(gg, u.transpose(1, 2))  # (n*groups, out/groups, in/groups*kh*kw)
            out[lo:lo + n] += _rows_sqnorm(w.reshape(n, c_out, d_in))
    return out


def _batchnorm_sqnorms(m: nn.modules.batchnorm._BatchNorm, names: frozenset[str], a: Tensor,
                       g: Tensor) -> Tensor | None:
    """Per-example squared norm of eval-mode BatchNorm's gamma and beta gradients (those in
    ``names``); None in training mode (then the statistics are the batch's, see
    :func:`_batchnorm_grads`).

    ``d gamma_i = sum_s g_i x_hat_i = inv_std * (sum_s g_i a_i - mean * sum_s g_i)`` with the
    running ``mean`` and ``inv_std = 1 / sqrt(running_var + eps)``; ``d beta_i = sum_s g_i``.
    ``a``, ``g``: (batch, C) or (batch, C, *spatial)."""
    if m.training or m.running_mean is None or m.running_var is None:
        return None
    batch, channels = a.shape[0], a.shape[1]
    a3 = a.reshape(batch, channels, -1)  # (batch, C, spatial)
    g3 = g.reshape(batch, channels, -1)  # (batch, C, spatial)
    g_sum = g3.sum(2)  # (batch, C)
    out = torch.zeros(batch, dtype=g.dtype, device=g.device)
    if "weight" in names:
        mean = m.running_mean.to(a.dtype)
        inv_std = torch.rsqrt(m.running_var.to(a.dtype) + m.eps)
        ga = torch.einsum("ncs,ncs->nc", g3, a3)  # (batch, C): sum over spatial of g * a
        out += ((ga - mean * g_sum) * inv_std).square().sum(1)  # d gamma_i: (batch, C)
    if "bias" in names:
        out += g_sum.square().sum(1)  # d beta_i: (batch, C)
    return out


# --------------------------------------------------------------------------- per-example gradients


def _module_vmap_grads(m: nn.Module, names: frozenset[str], a: Tensor, g: Tensor) -> dict[str, Tensor]:
    """``d/dtheta <m(theta, a_i), g_i>`` for the module's parameters ``names``, by
    ``vmap(grad(...))`` over ``functional_call`` of the module alone (opacus' functorch route).
    ``a``: (batch, ...) input, ``g``: (batch, ...) output gradient -> ``{name: (batch, *shape)}``."""
    theta = {n: getattr(m, n).detach() for n in names}

    def contribution(th: dict[str, Tensor], ai: Tensor, gi: Tensor) -> Tensor:
        return (functional_call(m, th, (ai[None],)) * gi[None]).sum()

    return vmap(grad(contribution), in_dims=(None, 0, 0))(theta, a, g)


def _linear_grads(m: nn.Linear, names: frozenset[str], a: Tensor, g: Tensor) -> dict[str, Tensor]:
    """Per-example ``dW_i = sum_t g_it a_it^T`` and ``db_i = sum_t g_it`` (over the positions
    ``t`` of a ``(batch, ..., in)`` input; one outer product for ``(batch, in)``)."""
    out = {}
    if a.dim() == 2:  # a: (batch, in), g: (batch, out)
        if "weight" in names:
            out["weight"] = g[:, :, None] * a[:, None, :]  # (batch, out, in)
        if "bias" in names:
            out["bias"] = g.clone()  # (batch, out); callers may clamp it in place
        return out
    batch = a.shape[0]
    a3 = a.reshape(batch, -1, a.shape[-1])  # (batch, T, in)
    g3 = g.reshape(batch, -1, g.shape[-1])  # (batch, T, out)
    if "weight" in names:
        out["weight"] = torch.bmm(g3.transpose(1, 2), a3)  # (batch, out, in)
    if "bias" in names:
        out["bias"] = g3.sum(1)  # (batch, out)
    return out


def _conv2d_grads(m: nn.Conv2d, names: frozenset[str], a: Tensor, g: Tensor) -> dict[str, Tensor]:
    """Per-example ``dW_i = G_i U_i^T`` (one grouped convolution weight-gradient, see
    :func:`_conv2d_weight_grads`) and ``db_i = sum_l g_il``; padding modes other than zeros and
    string paddings go through :func:`_module_vmap_grads`."""
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        return _module_vmap_grads(m, names, a, g)
    out = {}
    if "weight" in names:
        out["weight"] = _conv2d_weight_grads(m, a, g, m.padding)  # (batch, out, in/groups, kh, kw)
    if "bias" in names:
        out["bias"] = g.sum((2, 3))  # (batch, out)
    return out


def _batchnorm_grads(m: nn.modules.batchnorm._BatchNorm, names: frozenset[str], a: Tensor,
                     g: Tensor) -> dict[str, Tensor]:
    """Per-example gamma/beta contributions.  In training mode ``y_i = gamma * xhat_i + beta``
    with ``xhat_i`` normalised by the batch statistics; those do not depend on gamma or beta, so
    holding them fixed gives example i's exact contribution (their effect on the layers below is
    already in ``g``).  In eval mode the running statistics: :func:`_module_vmap_grads`."""
    if not (m.training or m.running_mean is None):
        return _module_vmap_grads(m, names, a, g)
    dims = [0] + list(range(2, a.dim()))
    mean = a.mean(dims)
    var = a.var(dims, unbiased=False)
    theta = {n: getattr(m, n).detach() for n in names}

    def contribution(th: dict[str, Tensor], ai: Tensor, gi: Tensor) -> Tensor:
        y = F.batch_norm(ai[None], mean, var, th.get("weight", m.weight), th.get("bias", m.bias),
                         False, 0.0, m.eps)
        return (y * gi[None]).sum()

    return vmap(grad(contribution), in_dims=(None, 0, 0))(theta, a, g)


# --------------------------------------------------------------------------- the registry

GradsFn = Callable[[nn.Module, frozenset, Tensor, Tensor], dict]
SqnormsFn = Callable[[nn.Module, frozenset, Tensor, Tensor], Any]


@dataclass(frozen=True)
class LayerHandler:
    """How to get per-example gradients of one module type's own parameters from a call's
    input ``a`` (batch, ...) and output gradient ``g`` (batch, ...).

    ``grads(module, names, a, g)`` returns ``{name: (batch, *param.shape)}`` for the parameter
    attribute names ``names``; ``sqnorms(module, names, a, g)``, where there is a closed form,
    returns their summed squared norms ``(batch,)`` without forming them (or None when it does not
    apply to this module's state); ``inputs(a)`` says whether a batched input of that shape is
    one the formulas cover (else the module's parameters go to the whole-model fallback)."""

    module_type: type
    grads: GradsFn
    sqnorms: SqnormsFn | None = None
    inputs: Callable[[Tensor], bool] = lambda a: a.dim() >= 1


#: Layer handlers by exact module type name (subclasses may override ``forward``: they go to the
#: whole-model fallback).  Adding a handler is one :func:`register_layer` call and a test.
LAYERS: Registry[LayerHandler] = Registry("layer type", "a per-example gradient handler")


def register_layer(module_type: type, *, grads: GradsFn, sqnorms: SqnormsFn | None = None,
                   inputs: Callable[[Tensor], bool] | None = None, help: str = "") -> None:
    extra = {} if inputs is None else {"inputs": inputs}
    LAYERS.add(module_type.__name__, LayerHandler(module_type, grads, sqnorms, **extra), help=help)


def handler_for(module: nn.Module) -> LayerHandler | None:
    """The handler registered for ``type(module)`` exactly, or None."""
    name = type(module).__name__
    if name not in LAYERS.names():
        return None
    handler = LAYERS.get(name)
    return handler if handler.module_type is type(module) else None


register_layer(nn.Linear, grads=_linear_grads, sqnorms=_linear_sqnorms,
               inputs=lambda a: a.dim() >= 2,
               help="closed form (outer products; ghost norm ||a_i||^2 ||g_i||^2)")
register_layer(nn.Conv2d, grads=_conv2d_grads,
               sqnorms=lambda m, names, a, g: (_conv2d_sqnorms(m, names, a, g)
                                               if m.padding_mode == "zeros" else None),
               inputs=lambda a: a.dim() == 4,
               help="closed form (grouped weight gradient; unfold or Gram squared norms)")
for _bn in _BATCHNORMS:
    register_layer(_bn, grads=_batchnorm_grads, sqnorms=_batchnorm_sqnorms,
                   inputs=lambda a: a.dim() >= 2,
                   help="batch statistics held fixed in training mode; closed-form norm in eval mode")
for _module_type, _dims in ((nn.Conv1d, 3), (nn.Conv3d, 5), (nn.ConvTranspose1d, 3),
                            (nn.ConvTranspose2d, 4), (nn.ConvTranspose3d, 5)):
    register_layer(_module_type, grads=_module_vmap_grads, inputs=lambda a, d=_dims: a.dim() == d,
                   help="vmap(grad) of the module alone")
for _module_type in (nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.PReLU):
    register_layer(_module_type, grads=_module_vmap_grads, help="vmap(grad) of the module alone")
del _bn, _module_type, _dims


# --------------------------------------------------------------------------- the engine


@dataclass(eq=False)
class _Call:
    """One application of a handled module in the forward."""

    a: Tensor | None  # its input (batch, ...)
    out: Tensor | None  # its output (batch, ...), dropped after the backward
    a_version: int  # version counters then (in-place changes bump them)
    out_version: int
    g: Tensor | None = None  # gradient of the summed loss at the output (when deferred)


@dataclass(eq=False)
class _Site:
    """A module with a layer handler and trainable direct parameters."""

    name: str
    module: nn.Module
    handler: LayerHandler
    params: dict[str, nn.Parameter]  # attribute name -> parameter
    calls: list[_Call] = field(default_factory=list)
    problem: str | None = None  # why this module's calls cannot be used (then: fallback)
    fast: frozenset[str] = frozenset()  # squared norms taken in the hook, closed form
    deferred: frozenset[str] = frozenset()  # per-example gradients formed after the backward

    def reset(self) -> None:
        self.calls, self.problem = [], None
        self.fast = self.deferred = frozenset()


def _param_use_counts(root: Tensor) -> dict[int, int]:
    """How many autograd edges lead into each leaf tensor's accumulator (id -> count).

    A module call adds exactly one edge into each of its parameters; more edges than calls
    means the parameter is also used outside its module's ``forward``."""
    counts: dict[int, int] = {}
    seen: set[int] = set()
    stack = [root.grad_fn] if root.grad_fn is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            var = getattr(nxt, "variable", None)
            if var is not None:
                counts[id(var)] = counts.get(id(var), 0) + 1
            stack.append(nxt)
    return counts


def _vmap_grads(model: nn.Module, names: list[str], x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Per-example gradients ``{name: (n, *shape)}`` of the one-example cross-entropy loss
    restricted to parameters ``names`` (the others held fixed), exactly, by ``vmap(grad(...))``
    over ``functional_call`` of the whole model in its current mode."""
    params = dict(model.named_parameters())
    selected = {n: params[n].detach() for n in names}
    fixed = {n: p.detach() for n, p in params.items() if n not in selected}
    buffers = dict(model.named_buffers())

    def loss_one(sel: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        logits = functional_call(model, (sel, fixed, buffers), (xi.unsqueeze(0),))  # (1, K)
        return F.cross_entropy(logits, yi.unsqueeze(0))

    return vmap(grad(loss_one), in_dims=(None, 0, 0))(selected, x, y)


def _vmap_sqnorms(model: nn.Module, names: list[str], x: Tensor, y: Tensor,
                  acc: torch.dtype) -> Tensor:
    """Squared norms ``(n,)`` of :func:`_vmap_grads`, in chunks of examples that keep the
    per-example gradients under ``_CHUNK_ELEMENTS``."""
    params = dict(model.named_parameters())
    numel = sum(params[n].numel() for n in names)
    batch = x.shape[0]
    chunk = _chunk(batch, numel)
    out = torch.zeros(batch, dtype=acc, device=x.device)
    for lo in range(0, batch, chunk):
        grads = _vmap_grads(model, names, x[lo:lo + chunk], y[lo:lo + chunk])  # name -> (n, *shape)
        for gp in grads.values():
            out[lo:lo + chunk] += gp.flatten(1).to(acc).square().sum(1)  # (n, numel) -> (n,)
    return out


def _batch_statistics(model: nn.Module) -> str | None:
    """The name of a BatchNorm module normalising with batch statistics, if any."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None):
            return name or "<model>"
    return None


class PerExample:
    """Per-example cross-entropy gradients of ``model``'s trainable parameters, minibatch by
    minibatch.  Use as a context manager (the hooks live inside it)::

        with PerExample(model) as engine:
            logits = engine.forward(x)                    # (batch, classes)
            sq = engine.squared_norms(logits, x, y, acc)  # GraNd: ||g_i||^2, (batch,)
            # or
            params, terms = engine.gradients(logits, x, y, reduce=...)  # winsorized

    The model's mode is left to the caller (GraNd: eval).  The parameters' use counts are read
    from the first minibatch's graph and reused: the model's graph must be the same for every
    minibatch of one engine."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.sites: list[_Site] = []
        self.owners: dict[int, list[_Site]] = {}
        for qual, m in model.named_modules():
            handler = handler_for(m)
            if handler is None:
                continue
            params = {n: p for n, p in m._parameters.items() if p is not None and p.requires_grad}
            if params:
                site = _Site(qual or "<model>", m, handler, params)
                self.sites.append(site)
                for p in params.values():
                    self.owners.setdefault(id(p), []).append(site)
        self._handles: list[Any] = []
        self._use_counts: dict[int, int] | None = None
        self._capturing = False
        self._total: Tensor | None = None  # squared norms being accumulated by the hooks

    # ------------------------------------------------------------------ hooks
    def __enter__(self) -> "PerExample":
        self._handles = [s.module.register_forward_hook(partial(self._forward_hook, s), with_kwargs=True)
                         for s in self.sites]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._reset()

    def _reset(self) -> None:
        for s in self.sites:
            s.reset()
        self._total = None

    def _forward_hook(self, site: _Site, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not self._capturing or site.problem is not None:
            return
        if len(args) == 1 and not kwargs:
            a = args[0]
        elif not args and set(kwargs) == {"input"}:
            a = kwargs["input"]
        else:
            a = None
        if not isinstance(a, Tensor) or not isinstance(output, Tensor):
            site.problem = "is not called with one tensor returning one tensor"
            return
        if not output.requires_grad:
            site.problem = "returns an output that does not require grad"
            return
        call = _Call(a, output, a._version, output._version)
        site.calls.append(call)
        output.register_hook(partial(self._on_grad, site, call))

    def _on_grad(self, site: _Site, call: _Call, g: Tensor) -> None:
        if call.a is None:
            return
        if site.fast:  # squared norms in closed form, now (GraNd)
            acc = self._total.dtype
            sq = site.handler.sqnorms(site.module, site.fast, call.a.detach().to(acc), g.to(acc))
            if sq is None:  # no closed form in this module's state: form the gradients later
                site.deferred, site.fast = site.deferred | site.fast, frozenset()
            else:
                self._total += sq
        if site.deferred:
            call.g = g
        else:
            call.a = None  # free the activation as soon as it is used

    # ------------------------------------------------------------------ one minibatch
    def forward(self, x: Tensor) -> Any:
        """The model's forward on ``x`` (batch, ...) with every handled module call recorded."""
        self._reset()
        self._batch = x.shape[0]
        self._capturing = True
        try:
            return self.model(x)
        finally:
            self._capturing = False

    def _plan(self, loss: Tensor, squared: bool) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, str]]]:
        """Decide, before the backward, which parameters come from their module calls (sets each
        site's ``fast`` / ``deferred``) and which go to the fallback.  Returns
        ``(covered, fallback)``: ``[(name, param)]`` and ``[(name, reason)]``."""
        if self._use_counts is None:
            self._use_counts = _param_use_counts(loss)
        counts = self._use_counts
        for s in self.sites:
            for c in s.calls if s.problem is None else ():
                a, out = c.a, c.out
                if a.dim() < 1 or a.shape[0] != self._batch or out.dim() < 1 or out.shape[0] != self._batch:
                    s.problem = (f"does not keep the batch as dimension 0 (input {tuple(a.shape)!r}, "
                                 f"output {tuple(out.shape)!r})")
                elif not s.handler.inputs(a):
                    s.problem = f"gets an input of shape {tuple(a.shape)!r} its handler does not cover"
                elif a._version != c.a_version:
                    s.problem = "has its input modified in place later in the forward"
        covered, fallback = [], []
        for name, p in self.named:
            uses = counts.get(id(p), 0)
            if uses == 0:
                continue  # not used by the forward: zero gradient
            owners = self.owners.get(id(p), [])
            problem = next((f"is used by module {s.name!r}, which {s.problem}" for s in owners if s.problem),
                           None)
            if not owners:
                problem = "is not owned by a module with a layer handler"
            elif problem is None and sum(len(s.calls) for s in owners) != uses:
                problem = "is also used outside its module's forward"
            if problem is None:
                covered.append((name, p))
            else:
                fallback.append((name, problem))
        single = {id(p) for _, p in covered
                  if sum(len(s.calls) for s in self.owners[id(p)]) == 1}
        covered_ids = {id(p) for _, p in covered}
        for s in self.sites:
            names = frozenset(n for n, p in s.params.items() if id(p) in covered_ids)
            fast = frozenset(n for n in names if id(s.params[n]) in single) if (
                squared and s.handler.sqnorms is not None) else frozenset()
            s.fast, s.deferred = fast, names - fast
            if not names:
                for c in s.calls:
                    c.a = None
        return covered, fallback

    def _backward(self, loss: Tensor, extra: list[Tensor]) -> tuple:
        """Back-propagate ``loss`` only as far as the wanted module outputs (their hooks fire on
        the way) plus ``extra`` tensors; returns the gradients of ``extra``.  A module output
        changed in place later (``relu_``) names a later graph node, so for such a call the
        module's own parameters are targets instead, which runs its node and fires its hook."""
        targets: dict[int, Tensor] = {}
        for s in self.sites:
            if not (s.fast or s.deferred):
                continue
            for c in s.calls:
                if c.out._version == c.out_version:
                    targets[id(c.out)] = c.out
                else:
                    targets.update((id(p), p) for p in s.params.values())
        wanted = list(targets.values())
        grads: tuple = ()
        if (wanted or extra) and loss.requires_grad:
            grads = torch.autograd.grad(loss, wanted + extra, allow_unused=True)[len(wanted):]
        for s in self.sites:
            for c in s.calls:
                if s.deferred and c.g is None:  # no gradient reached this output
                    c.g = torch.zeros_like(c.out)
                c.out = None
        return grads

    def _deferred_calls(self, p: nn.Parameter) -> list[tuple[_Site, str, _Call]]:
        """``(site, attribute name, call)`` of every call whose contribution to ``p`` is formed
        after the backward."""
        return [(s, n, c) for s in self.owners[id(p)] for n, q in s.params.items()
                if q is p and n in s.deferred for c in s.calls]

    def _call_grads(self, site: _Site, call: _Call) -> dict[str, Tensor]:
        terms = site.handler.grads(site.module, site.deferred, call.a.detach(), call.g)
        call.a = call.g = None
        return terms

    def squared_norms(self, logits: Tensor, x: Tensor, y: Tensor, acc: torch.dtype) -> Tensor:
        """``||g_i||^2`` ``(batch,)`` in ``acc`` for the minibatch just forwarded (``logits``
        from :meth:`forward`, ``x`` its input, ``y`` its labels).  Exact when the forward treats
        the examples independently (eval mode)."""
        loss = F.cross_entropy(logits, y, reduction="sum")
        batch = x.shape[0]
        self._total = torch.zeros(batch, dtype=acc, device=x.device)
        covered, fallback = self._plan(loss, squared=True)
        self._backward(loss, [])
        del loss
        total = self._total
        for _, p in covered:  # parameters whose per-example gradients must be formed
            calls = self._deferred_calls(p)
            step = _chunk(batch, p.numel())
            for lo in range(0, batch if calls else 0, step):
                summed = None  # sum over the calls: (chunk, *shape)
                for s, n, c in calls:
                    t = s.handler.grads(s.module, frozenset({n}), c.a[lo:lo + step].detach(),
                                        c.g[lo:lo + step])[n]
                    summed = t if summed is None else summed + t
                total[lo:lo + step] += summed.flatten(1).to(acc).square().sum(1)  # (chunk, numel) -> (chunk,)
        for s in self.sites:
            for c in s.calls:
                c.a = c.g = None
        if fallback:
            total += _vmap_sqnorms(self.model, [n for n, _ in fallback], x.detach(), y, acc)
        self._total = None
        return total

    def gradients(self, logits: Tensor, x: Tensor, y: Tensor, *,
                  reduce: Callable[[Tensor], Tensor] | None = None, verify: bool = False,
                  who: str = "per-example gradients") -> tuple[list[nn.Parameter], list[Tensor]]:
        """Per-example gradients of the summed cross-entropy of the minibatch just forwarded:
        ``(params, terms)`` with ``params`` the trainable parameters in ``model.parameters()``
        order and ``terms[j]`` of shape ``(batch, *params[j].shape)``; ``terms[j].sum(0)`` is
        the gradient of the summed loss.  With ``reduce``, ``terms[j]`` is ``reduce(terms)``
        instead, applied module by module as the terms are formed (it may modify its argument).

        With ``verify`` the sums of the terms are compared with the minibatch gradient of the
        same backward (one host sync); a mismatch raises InvalidArgumentError.  ``who`` names
        the caller in messages."""
        loss = F.cross_entropy(logits, y, reduction="sum")
        batch = x.shape[0]
        params = [p for p in self.model.parameters() if p.requires_grad]
        covered, fallback = self._plan(loss, squared=False)
        if fallback:
            coupled = _batch_statistics(self.model)
            if coupled is not None:
                name, reason = fallback[0]
                raise InvalidArgumentError(
                    f"{who} cannot take parameter {name!r}: it {reason}, which needs the whole-model "
                    f"vmap fallback, and that is not exact while BatchNorm module {coupled!r} uses batch "
                    f"statistics; modules with a per-example handler: {LAYERS.choices()}")
        batch_grads = self._backward(loss, params if verify else [])
        del loss
        results: dict[int, Tensor] = {}
        sums: dict[int, Tensor] = {}
        partial_sums: dict[int, Tensor] = {}
        remaining = {id(p): sum(len(s.calls) for s in self.owners[id(p)]) for _, p in covered}

        def finish(p: nn.Parameter, t: Tensor) -> None:
            if verify:
                sums[id(p)] = t.sum(0)
            results[id(p)] = t if reduce is None else reduce(t)

        for s in self.sites:
            if not s.deferred:
                continue
            for c in s.calls:
                terms = self._call_grads(s, c)
                for n in s.deferred:
                    p, t = s.params[n], terms.pop(n)
                    remaining[id(p)] -= 1
                    if id(p) in partial_sums:
                        t = partial_sums.pop(id(p)) + t
                    if remaining[id(p)]:
                        partial_sums[id(p)] = t
                    else:
                        finish(p, t)
                    del t
        if fallback:
            try:
                terms = _vmap_grads(self.model, [n for n, _ in fallback], x.detach(), y)
            except RuntimeError as err:  # e.g. random operations (dropout) under vmap
                raise InvalidArgumentError(
                    f"{who}: the whole-model vmap fallback for parameters "
                    f"{[n for n, _ in fallback]!r} failed: {err}") from None
            named = dict(self.named)
            for n, _ in fallback:
                finish(named[n], terms.pop(n))
        per_example = []
        for p in params:
            if id(p) not in results:  # not used by the forward: zero per-example gradients
                finish(p, torch.zeros((batch, *p.shape), device=p.device, dtype=p.dtype))
            per_example.append(results.pop(id(p)))
        if verify:
            self._verify(params, sums, batch_grads, who)
        return params, per_example

    def _verify(self, params: list[nn.Parameter], sums: dict[int, Tensor], batch_grads: tuple,
                who: str) -> None:
        errs, scales = [], []
        for p, g in zip(params, batch_grads):
            g = torch.zeros_like(p) if g is None else g
            s = sums[id(p)]
            errs.append(torch.linalg.vector_norm(s - g))
            scales.append(torch.linalg.vector_norm(g) + torch.linalg.vector_norm(s))
        errs_l, scales_l = torch.stack(errs).tolist(), torch.stack(scales).tolist()
        total = max(scales_l) if scales_l else 0.0
        names = {id(p): n for n, p in self.model.named_parameters()}
        for p, e, sc in zip(params, errs_l, scales_l):
            if not e <= 1e-3 * sc + 1e-6 * total:
                raise InvalidArgumentError(
                    f"{who}: the per-example gradients of parameter {names.get(id(p))!r} do not add "
                    f"up to its minibatch gradient (relative error {e / max(sc, 1e-30):.3g}); the "
                    "model uses it in a way its module's handler does not cover")


def per_example_gradients(model: nn.Module, inputs: Tensor, labels: Tensor, *,
                          reduce: Callable[[Tensor], Tensor] | None = None, verify: bool = False,
                          who: str = "per-example gradients",
                          ) -> tuple[Tensor, list[nn.Parameter], list[Tensor]]:
    """One minibatch forward (in the model's current mode) and backward of the summed
    cross-entropy: ``(logits, params, terms)`` as in :meth:`PerExample.gradients`, with
    ``logits`` the detached ``(batch, classes)`` minibatch logits."""
    with torch.enable_grad(), PerExample(model) as engine:
        logits = engine.forward(inputs)
        params, terms = engine.gradients(logits, inputs, labels, reduce=reduce, verify=verify, who=who)
    return logits.detach(), params, terms
