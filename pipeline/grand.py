"""GraNd scores: exact per-example loss-gradient norms (Data Diet, Paul et al., Def. 2.1).

The GraNd score of a training example ``(x, y)`` at weights ``w`` is ``||g(x, y)||_2``,
the Euclidean norm of the gradient of that example's cross-entropy loss with respect to
*all* trainable parameters of the network (Def. 2.1 averages it over independent weight
draws; the averaging over seeds is done by the caller).  Here it is computed with
BatchNorm in eval mode (running statistics, so one example's gradient does not depend
on the rest of the batch) and on the un-augmented input.  The score is in the units of
the loss gradient (nats per unit parameter), with the loss of one example un-averaged.

Instead of one backward pass per example, :func:`grand_scores` runs ONE eval-mode
forward + backward of the *summed* loss per batch.  In eval mode the examples do not
interact, so the gradient of the summed loss with respect to layer ``k``'s output,
restricted to example ``i``, is exactly example ``i``'s own output gradient ``g_i``.
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

Squared norms are summed over layers and the square root taken at the end.  Only the
input gradient is back-propagated (``autograd.grad`` w.r.t. the input batch), so the
summed parameter gradients are never formed and ``p.grad`` is never touched.

Every other trainable parameter (a module type not listed above, a parameter shared
between modules, a module called more than once per forward, a parameter also used
outside its module, ...) is handled exactly by a ``torch.func`` ``vmap(grad(...))``
over ``functional_call`` restricted to those parameters, so any model whose eval-mode
forward treats the examples of a batch independently is supported.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from scorebank.stores.errors import InvalidArgumentError

__all__ = ["grand_scores"]

# Upper bound on the elements of the per-layer temporaries (unfolded patches, per-example
# weight gradients or Gram matrices, per-example fallback gradients) built at once; the
# batch is cut into chunks of examples to respect it.  2**25 float32 = 128 MiB.
_CHUNK_ELEMENTS = 1 << 25

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate squared norms in float64 for float64 models, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- per-layer norms


def _rows_sqnorm(w: torch.Tensor) -> torch.Tensor:
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


def _gram_sqnorms(u: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``||G_i U_i^T||_F^2 = sum_{l,l'} (u_l . u_l') (g_l . g_l')`` without forming the
    product.  ``u``: (n, d_in, L), ``g``: (n, d_out, L) -> (n,)."""
    gram_u = torch.bmm(u.transpose(1, 2), u)  # (n, L, L): u_l . u_l'
    gram_g = torch.bmm(g.transpose(1, 2), g)  # (n, L, L): g_l . g_l'
    return gram_u.mul_(gram_g).sum((1, 2))


def _linear_sqnorms(m: nn.Linear, a: torch.Tensor, g: torch.Tensor, with_weight: bool,
                    with_bias: bool) -> torch.Tensor:
    """Per-example squared norm of the Linear layer's weight and bias gradients.

    ``a``: (batch, ..., in) layer input, ``g``: (batch, ..., out) gradient of the layer output."""
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


def _unfold(a: torch.Tensor, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int],
            d: tuple[int, int]) -> torch.Tensor:
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
    """Weight route of a Conv2d layer: ``"gram"``, ``"grouped"`` or ``"unfold"``.

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


def _conv2d_sqnorms(m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, with_weight: bool,
                    with_bias: bool) -> torch.Tensor:
    """Per-example squared norm of the Conv2d layer's weight and bias gradients.

    ``a``: (batch, in, H, W) layer input, ``g``: (batch, out, Ho, Wo) output gradient;
    the weight route is chosen by :func:`_conv_route` from the layer's sizes."""
    batch, c_in, c_out = a.shape[0], a.shape[1], g.shape[1]
    length = g.shape[2] * g.shape[3]
    out = torch.zeros(batch, dtype=g.dtype, device=g.device)
    if with_bias:
        out += g.sum((2, 3)).square().sum(1)  # sum over positions: (batch, out) -> (batch,)
    if not with_weight:
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
            # Example j's input channels meet only example j's output channels when the
            # batch is folded into the channel axis with groups = n * groups.
            w = torch.nn.grad.conv2d_weight(
                ac.reshape(1, n * c_in, ac.shape[2], ac.shape[3]),  # (1, n*in, H, W)
                (n * c_out, c_in_g, k[0], k[1]),
                gc.reshape(1, n * c_out, g.shape[2], g.shape[3]),  # (1, n*out, Ho, Wo)
                stride=s, padding=padding, dilation=d, groups=n * groups)
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


def _batchnorm_sqnorms(m: nn.modules.batchnorm._BatchNorm, a: torch.Tensor, g: torch.Tensor,
                       with_weight: bool, with_bias: bool) -> torch.Tensor:
    """Per-example squared norm of eval-mode BatchNorm's gamma and beta gradients.

    ``d gamma_i = sum_s g_i x_hat_i = inv_std * (sum_s g_i a_i - mean * sum_s g_i)`` with the
    running ``mean`` and ``inv_std = 1 / sqrt(running_var + eps)``; ``d beta_i = sum_s g_i``.
    ``a``, ``g``: (batch, C) or (batch, C, *spatial)."""
    batch, channels = a.shape[0], a.shape[1]
    a3 = a.reshape(batch, channels, -1)  # (batch, C, spatial)
    g3 = g.reshape(batch, channels, -1)  # (batch, C, spatial)
    g_sum = g3.sum(2)  # (batch, C)
    out = torch.zeros(batch, dtype=g.dtype, device=g.device)
    if with_weight:
        mean = m.running_mean.to(a.dtype)
        inv_std = torch.rsqrt(m.running_var.to(a.dtype) + m.eps)
        ga = torch.einsum("ncs,ncs->nc", g3, a3)  # (batch, C): sum over spatial of g * a
        out += ((ga - mean * g_sum) * inv_std).square().sum(1)  # d gamma_i: (batch, C)
    if with_bias:
        out += g_sum.square().sum(1)  # d beta_i: (batch, C)
    return out


# --------------------------------------------------------------------------- capture


@dataclass(eq=False)
class _Site:
    """A module whose parameter gradients are computed from captured (input, output grad)."""

    module: nn.Module
    kind: str  # "linear" | "conv2d" | "batchnorm"
    params: dict[str, nn.Parameter]  # trainable direct parameters, by full dotted name
    state: "_Capture"
    calls: int = 0
    record: torch.Tensor | None = None  # the layer's input in this forward
    output: torch.Tensor | None = None  # the layer's output in this forward
    out_version: int = 0  # its version counter then (in-place changes bump it)
    enabled: bool = False
    fired: bool = False

    def reset(self) -> None:
        self.calls, self.record, self.output = 0, None, None
        self.enabled = self.fired = False

    def forward_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not self.state.capturing:
            return
        self.calls += 1
        a = args[0] if args else kwargs.get("input")
        if (self.calls > 1 or not isinstance(a, torch.Tensor)
                or not isinstance(output, torch.Tensor) or not output.requires_grad):
            self.record = self.output = None
            return
        self.record, self.output, self.out_version = a, output, output._version
        output.register_hook(self.on_grad)

    def on_grad(self, g: torch.Tensor) -> None:
        if not self.enabled or self.record is None:
            return
        a = self.record
        acc = self.state.total.dtype
        a, g = a.detach().to(acc), g.to(acc)
        m = self.module
        with_weight = any(p is m.weight for p in self.params.values())
        with_bias = any(p is m.bias for p in self.params.values())
        if self.kind == "linear":
            sq = _linear_sqnorms(m, a, g, with_weight, with_bias)
        elif self.kind == "conv2d":
            sq = _conv2d_sqnorms(m, a, g, with_weight, with_bias)
        else:
            sq = _batchnorm_sqnorms(m, a, g, with_weight, with_bias)
        self.state.total += sq
        self.fired = True
        self.record = None  # free the activation as soon as it is used

    def usable(self, batch: int) -> bool:
        """Called exactly once (``record`` is dropped on a second call) on a batched input;
        decided after the forward, before the backward."""
        if self.record is None:
            return False
        a = self.record
        if a.dim() < 2 or a.shape[0] != batch:
            return False
        if self.kind == "conv2d" and a.dim() != 4:
            return False
        return True


@dataclass(eq=False)
class _Capture:
    capturing: bool = False
    total: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    sites: list[_Site] = field(default_factory=list)


def _site_kind(m: nn.Module) -> str | None:
    """Exact module types with a closed-form per-example gradient (subclasses may
    override ``forward``, so they go to the fallback)."""
    t = type(m)
    if t is nn.Linear:
        return "linear"
    if t is nn.Conv2d and m.padding_mode == "zeros":
        return "conv2d"
    if t in _BATCHNORMS and m.running_mean is not None and m.running_var is not None:
        return "batchnorm"
    return None


def _param_use_counts(root: torch.Tensor) -> dict[int, int]:
    """How many autograd edges lead into each leaf tensor's accumulator (id -> count).

    A parameter used once in the forward has exactly one; more means it is also used
    outside its own module (or twice), which the per-layer formulas do not cover."""
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


# --------------------------------------------------------------------------- fallback


def _vmap_sqnorms(model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor,
                  acc: torch.dtype) -> torch.Tensor:
    """Per-example squared gradient norm restricted to parameters ``names``, exactly, via
    ``vmap(grad(...))`` of the one-example eval-mode loss (other parameters held fixed)."""
    params = dict(model.named_parameters())
    selected = {n: params[n].detach() for n in names}
    fixed = {n: p.detach() for n, p in params.items() if n not in selected}
    buffers = dict(model.named_buffers())

    def loss_one(sel: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (sel, fixed, buffers), (xi.unsqueeze(0),))  # (1, K)
        return F.cross_entropy(logits, yi.unsqueeze(0))

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
    numel = sum(p.numel() for p in selected.values())
    batch = x.shape[0]
    chunk = _chunk(batch, numel)
    out = torch.zeros(batch, dtype=acc, device=x.device)
    for lo in range(0, batch, chunk):
        grads = per_example(selected, x[lo:lo + chunk], y[lo:lo + chunk])  # name -> (n, *shape)
        for gp in grads.values():
            out[lo:lo + chunk] += gp.flatten(1).to(acc).square().sum(1)  # (n, numel) -> (n,)
    return out


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

    # Which parameters get a closed form: exact-type modules owning them alone.
    owners: dict[int, int] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                owners[id(p)] = owners.get(id(p), 0) + 1
    state = _Capture()
    site_of: dict[int, _Site] = {}
    for mod_name, m in model.named_modules():
        kind = _site_kind(m)
        if kind is None:
            continue
        prefix = f"{mod_name}." if mod_name else ""
        params = {f"{prefix}{pn}": p for pn, p in m._parameters.items()
                  if pn in ("weight", "bias") and p is not None and p.requires_grad
                  and owners[id(p)] == 1}
        if params:
            site = _Site(m, kind, params, state)
            state.sites.append(site)
            for p in params.values():
                site_of[id(p)] = site
    static_fallback = [(name, p) for name, p in named if id(p) not in site_of]

    modes = [(m, m.training) for m in model.modules()]
    handles = [s.module.register_forward_hook(s.forward_hook, with_kwargs=True)
               for s in state.sites]
    use_counts: dict[int, int] | None = None
    try:
        model.eval()
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            batch = stop - start
            xb = inputs[start:stop]
            if xb.is_inference():
                xb = xb.clone()
            x = xb.detach().requires_grad_(True)
            y = labels[start:stop]
            state.total = torch.zeros(batch, dtype=acc, device=device)
            for s in state.sites:
                s.reset()
            state.capturing = True
            try:
                logits = model(x)
            finally:
                state.capturing = False
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
            loss = F.cross_entropy(logits, y, reduction="sum")
            if use_counts is None:  # the model's graph is assumed the same for every batch
                use_counts = _param_use_counts(loss)
            for s in state.sites:
                s.enabled = s.usable(batch) and all(
                    use_counts.get(id(p), 0) == 1 for p in s.params.values())
            if loss.requires_grad:
                # Backprop only as far as the layer outputs (the output-gradient hooks fire
                # on the way), so no summed parameter gradient is computed or accumulated.
                # A layer output changed in place afterwards (``relu_``) names a later
                # graph node; then backprop to the input so every hook is reached.
                targets = [s.output for s in state.sites if s.enabled]
                if any(s.output._version != s.out_version for s in state.sites if s.enabled):
                    targets.append(x)
                torch.autograd.grad(loss, targets or [x], allow_unused=True)
                del targets
            for s in state.sites:
                s.output = None
            del logits, loss
            fallback = [name for name, p in static_fallback if use_counts.get(id(p), 0) > 0]
            for s in state.sites:
                if not (s.enabled and s.fired):
                    s.record = None
                    fallback += [name for name, p in s.params.items()
                                 if use_counts.get(id(p), 0) > 0]
            if fallback:
                state.total += _vmap_sqnorms(model, fallback, x.detach(), y, acc)
            scores[start:stop] = state.total.sqrt()
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
        for s in state.sites:
            s.reset()
        state.total = torch.zeros(0)
    return scores.float()
