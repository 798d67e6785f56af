"""The per-example gradient engine against a plain loop: one backward per example.

Both of its users are checked on the same models: squared norms (GraNd) and materialised
per-example gradients (winsorized SGD), for every registered layer handler, tied weights, a
module applied twice, raw parameters (the whole-model vmap fallback) and BatchNorm in eval mode.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import scorebank.pipeline.per_example as pe
from scorebank.pipeline.per_example import LAYERS, LayerHandler, PerExample, per_example_gradients
from scorebank.stores.errors import InvalidArgumentError

RTOL = 1e-9  # float64 throughout: the engine and the loop differ by summation order only


def loop_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """``(n, *shape)`` per trainable parameter: the gradient of example i's loss, alone."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1], reduction="sum")
        rows.append(torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True))
    return [torch.stack(col) for col in zip(*rows)]


def engine_both(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """The engine's squared norms and per-example gradients of the same minibatch."""
    with torch.enable_grad(), PerExample(model) as engine:
        sq = engine.squared_norms(engine.forward(x), x, y, torch.float64)
    _, params, terms = per_example_gradients(model, x, y, verify=True)
    return sq, terms


def check_both(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    want = loop_gradients(model, x, y)
    sq, terms = engine_both(model, x, y)
    for t, w in zip(terms, want):
        torch.testing.assert_close(t, w, rtol=RTOL, atol=1e-12)
    want_sq = sum(w.flatten(1).square().sum(1) for w in want)
    assert bool((want_sq > 0).all())
    torch.testing.assert_close(sq, want_sq, rtol=RTOL, atol=0.0)


def batch(shape: tuple[int, ...], n: int = 5, classes: int = 3, seed: int = 0, long_max: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randint(0, long_max, (n, *shape), generator=g) if long_max
         else torch.randn(n, *shape, generator=g, dtype=torch.float64))
    return x, torch.randint(0, classes, (n,), generator=g)


def head(features: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Tanh(), nn.Linear(features, 3))


def eval_bn(bn: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Running statistics far from (0, 1), then eval mode."""
    bn.train()
    with torch.no_grad():
        bn(torch.randn(8, *shape, dtype=torch.float64) * 3 + 1.5)
    return bn.eval()


# one case per registered layer type: (layer, input shape, features after it, integer inputs)
LAYER_CASES = {
    "Linear": (lambda: nn.Linear(4, 6), (4,), 6, 0),
    "Conv2d": (lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1, dilation=1, groups=2), (2, 7, 6), 4 * 4 * 3, 0),
    "BatchNorm1d": (lambda: eval_bn(nn.BatchNorm1d(4).double(), (4,)), (4,), 4, 0),
    "BatchNorm2d": (lambda: eval_bn(nn.BatchNorm2d(2).double(), (2, 3, 3)), (2, 3, 3), 18, 0),
    "BatchNorm3d": (lambda: eval_bn(nn.BatchNorm3d(2).double(), (2, 2, 2, 2)), (2, 2, 2, 2), 16, 0),
    "Conv1d": (lambda: nn.Conv1d(2, 3, 3), (2, 6), 12, 0),
    "Conv3d": (lambda: nn.Conv3d(1, 2, 2), (1, 3, 3, 3), 16, 0),
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(2, 2, 3, stride=2), (2, 3), 14, 0),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(2, 2, 2), (2, 3, 3), 32, 0),
    "ConvTranspose3d": (lambda: nn.ConvTranspose3d(1, 1, 2), (1, 2, 2, 2), 27, 0),
    "LayerNorm": (lambda: nn.LayerNorm(5), (3, 5), 15, 0),
    "GroupNorm": (lambda: nn.GroupNorm(2, 4), (4, 3), 12, 0),
    "Embedding": (lambda: nn.Embedding(7, 3), (4,), 12, 7),
    "PReLU": (lambda: nn.PReLU(3), (3, 2), 6, 0),
}


def test_every_registered_layer_has_a_case():
    assert set(LAYERS) == set(LAYER_CASES)


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_each_layer_handler_matches_the_loop(name, monkeypatch):
    make, shape, features, long_max = LAYER_CASES[name]
    torch.manual_seed(0)
    layer = make()
    assert pe.handler_for(layer) is LAYERS.get(name)
    model = nn.Sequential(layer, head(features)).double()
    x, y = batch(shape, long_max=long_max)

    def no_fallback(*args):
        raise AssertionError("whole-model fallback used")

    monkeypatch.setattr(pe, "_vmap_grads", no_fallback)
    check_both(model, x, y)


@pytest.mark.parametrize("name", ["Linear", "Conv2d", "BatchNorm2d"])
def test_closed_form_squared_norms_are_the_gradients_norms(name):
    make, shape, _, _ = LAYER_CASES[name]
    torch.manual_seed(0)
    layer = make().double()
    a = torch.randn(6, *shape, dtype=torch.float64)
    g = torch.randn_like(layer(a))
    handler = LAYERS.get(name)
    for names in (frozenset({"weight"}), frozenset({"bias"}), frozenset({"weight", "bias"})):
        terms = handler.grads(layer, names, a, g)
        assert set(terms) == names
        want = sum(t.flatten(1).square().sum(1) for t in terms.values())
        torch.testing.assert_close(handler.sqnorms(layer, names, a, g), want, rtol=RTOL, atol=0.0)


def test_batchnorm_closed_form_needs_eval_mode():
    bn = nn.BatchNorm2d(2).double()  # training mode: the statistics are the batch's
    a = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    assert LAYERS.get("BatchNorm2d").sqnorms(bn, frozenset({"weight"}), a, a) is None


class Tied(nn.Module):
    """An encoder and decoder sharing one weight, and a Linear applied twice."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(6, 4, bias=False)
        self.dec = nn.Linear(4, 6)
        self.dec.weight = nn.Parameter(self.enc.weight.detach().T.clone())
        self.tied = nn.Linear(6, 4, bias=False)
        self.tied.weight = self.enc.weight
        self.twice = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.dec(torch.tanh(self.enc(x))))
        h = torch.tanh(self.twice(torch.tanh(self.twice(h))))
        return self.out(h) + self.tied(h)[:, :3]


def test_tied_weights_and_repeated_modules_are_summed_over_calls(monkeypatch):
    torch.manual_seed(0)
    model = Tied().double()
    x, y = batch((6,), n=6)

    def no_fallback(*args):
        raise AssertionError("whole-model fallback used")

    monkeypatch.setattr(pe, "_vmap_grads", no_fallback)
    check_both(model, x, y)


class RawParameters(nn.Module):
    """Parameters no layer handler covers: a raw scale, and a Linear weight also used outside
    its module (only the whole-model vmap fallback is exact for them)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 3).reshape(1, 3, 1, 1))
        self.side = nn.Linear(3 * 4 * 4, 3 * 4 * 4)
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        h = torch.tanh(self.conv(x) * self.scale).flatten(1)
        h = torch.tanh(self.side(h) + 0.5 * F.linear(h, self.side.weight))
        return self.fc(h)


def test_fallback_for_parameters_outside_handled_calls(monkeypatch):
    torch.manual_seed(0)
    model = RawParameters().double()
    x, y = batch((2, 4, 4))
    used = []
    real = pe._vmap_grads

    def spy(model_, names, *args):
        used.append(sorted(names))
        return real(model_, names, *args)

    monkeypatch.setattr(pe, "_vmap_grads", spy)
    check_both(model, x, y)
    assert used and all(names == ["scale", "side.weight"] for names in used)


def test_inplace_changed_outputs_and_eval_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(inplace=True), nn.Flatten(),
                          nn.Linear(12, 5), nn.ReLU(inplace=True), nn.Linear(5, 3)).double()
    eval_bn(model[1], (3, 2, 2))
    x, y = batch((2, 4, 4))
    check_both(model, x, y)


def test_train_mode_batchnorm_refuses_the_fallback():
    model = nn.Sequential(RawParameters(), nn.BatchNorm1d(3)).double()
    x, y = batch((2, 4, 4))
    with pytest.raises(InvalidArgumentError, match=r"parameter '0\.scale'.* BatchNorm module '1' uses batch"):
        per_example_gradients(model, x, y, who="winsorized")


def test_verify_catches_a_handler_that_does_not_add_up(monkeypatch):
    real = pe.handler_for

    def doubled(m, names, a, g):
        return {n: 2 * t for n, t in pe._linear_grads(m, names, a, g).items()}

    wrong = LayerHandler(nn.Linear, doubled)
    monkeypatch.setattr(pe, "handler_for", lambda m: wrong if type(m) is nn.Linear else real(m))
    model = nn.Sequential(nn.Linear(4, 3)).double()
    x, y = batch((4,))
    per_example_gradients(model, x, y)  # unchecked: no error
    with pytest.raises(InvalidArgumentError, match=r"parameter '0\.weight' do not add up"):
        per_example_gradients(model, x, y, verify=True, who="winsorized")


def test_reduce_is_applied_and_hooks_are_removed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3), nn.Linear(3, 3)).double()
    model[3].requires_grad_(False)
    x, y = batch((4,))
    logits, params, sums = per_example_gradients(model, x, y, reduce=lambda t: t.amax(0))
    want = loop_gradients(model, x, y)
    assert len(params) == 4 and not logits.requires_grad
    torch.testing.assert_close(logits, model(x).detach(), rtol=0, atol=0)
    for s, w in zip(sums, want):
        torch.testing.assert_close(s, w.amax(0), rtol=RTOL, atol=1e-12)
    assert all(not m._forward_hooks for m in model.modules())
