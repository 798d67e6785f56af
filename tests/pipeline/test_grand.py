"""grand_scores against a plain per-example autograd loop (Data Diet GraNd, Def. 2.1)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import scorebank.pipeline.per_example as pe
from scorebank.pipeline.grand import grand_scores
from scorebank.pipeline.models import build_model
from scorebank.stores.errors import InvalidArgumentError

RTOL = 1e-4


def naive_grand(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One eval-mode backward per example; norm of all trainable parameters' gradients."""
    model = copy.deepcopy(model).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    norms = []
    for i in range(inputs.shape[0]):
        loss = F.cross_entropy(model(inputs[i:i + 1]), labels[i:i + 1])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = [torch.zeros(p.numel()) if g is None else g.flatten() for g, p in zip(grads, params)]
        norms.append(torch.linalg.vector_norm(torch.cat(flat)))
    return torch.stack(norms)


def warm_bn(model: nn.Module, shape: tuple[int, ...], steps: int = 3) -> None:
    """Train-mode forwards on shifted, scaled data so BatchNorm running stats are far
    from their (0, 1) initial values."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(16, *shape) * 3.0 + 1.5)


def data(shape: tuple[int, ...], n: int, classes: int = 10, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def built(name: str, shape: tuple[int, ...], n: int, warm: bool = True, **kwargs):
    """``(model, x, y)``: a seeded 10-class model of family ``name`` (BatchNorm running stats
    warmed unless ``warm`` is False) and ``n`` examples."""
    torch.manual_seed(0)
    model = build_model(name, shape, 10, **kwargs)
    if warm:
        warm_bn(model, shape)
    return (model, *data(shape, n))


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert bool((want > 0).all())
    torch.testing.assert_close(got, want.to(got.dtype), rtol=RTOL, atol=0.0)


@pytest.mark.parametrize("name,kwargs,shape", [
    ("mlp", {"width": 8}, (1, 8, 8)),
    ("cnn5", {"width": 4}, (3, 16, 16)),
    ("cnn5", {"width": 4, "batchnorm": False}, (3, 16, 16)),
    ("cnn5", {"width": 4, "init_std": 0.3}, (3, 8, 8)),
    ("resnet18", {"width": 4}, (3, 16, 16)),
])
def test_matches_per_example_loop(name, kwargs, shape):
    model, x, y = built(name, shape, 6, **kwargs)
    assert_close(grand_scores(model, x, y, batch_size=4), naive_grand(model, x, y))


def test_nontrivial_running_stats_are_used():
    model, x, y = built("cnn5", (3, 8, 8), 5, warm=False, width=4)
    fresh = grand_scores(model, x, y)
    warm_bn(model, (3, 8, 8))
    bn = model.features[1]
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean), atol=0.1)
    warmed = grand_scores(model, x, y)
    assert_close(warmed, naive_grand(model, x, y))
    assert not torch.allclose(fresh, warmed, rtol=1e-2)


def test_state_is_left_untouched():
    model, x, y = built("resnet18", (3, 8, 8), 5, width=4)
    model.train()
    model.layers[0].bn1.eval()  # mixed modes must come back per submodule
    F.cross_entropy(model(x), y).backward()  # populate .grad (and move running stats)
    model.fc.bias.grad = None  # one grad left unset
    modes = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}

    scores = grand_scores(model, x, y, batch_size=2)

    assert bool(torch.isfinite(scores).all())
    assert {n: m.training for n, m in model.named_modules()} == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for n, p in model.named_parameters():
        if grads[n] is None:
            assert p.grad is None, n
        else:
            assert torch.equal(p.grad, grads[n]), n
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


@pytest.mark.parametrize("batch_size", [1, 3, 4, 7, 100])
def test_batch_size_not_dividing_n(batch_size):
    model, x, y = built("cnn5", (3, 8, 8), 7, width=4)
    assert_close(grand_scores(model, x, y, batch_size=batch_size), naive_grand(model, x, y))


def test_chunked_layer_temporaries(monkeypatch):
    model, x, y = built("resnet18", (3, 8, 8), 6, width=4)
    monkeypatch.setattr(pe, "_CHUNK_ELEMENTS", 500)  # forces per-chunk loops in every layer
    assert_close(grand_scores(model, x, y, batch_size=6), naive_grand(model, x, y))


class ConvZoo(nn.Module):
    """Conv2d with bias, stride, dilation, padding variants, groups and a 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, stride=1, padding=1, bias=True)
        self.c2 = nn.Conv2d(6, 6, 3, stride=2, padding=2, dilation=2, bias=True)
        self.c3 = nn.Conv2d(6, 4, (2, 3), stride=(1, 2))
        self.c4 = nn.Conv2d(4, 4, 2, padding="same", dilation=1)  # asymmetric 'same' padding
        self.c5 = nn.Conv2d(4, 8, 1, stride=2)  # 1x1 strided
        self.c6 = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)  # grouped
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        for conv in (self.c1, self.c2, self.c3, self.c4, self.c5):
            x = torch.tanh(conv(x))
        x = F.relu(self.bn(self.c6(x)))
        return self.fc(x.mean((2, 3)))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("route", ["gram", "grouped", "unfold"])
def test_every_conv_route(monkeypatch, route):
    torch.manual_seed(0)
    model = ConvZoo()
    warm_bn(model, (3, 13, 12))
    x, y = data((3, 13, 12), 5, classes=5)
    taken = []

    def forced(device, c_in_group, c_out, d_in, length, groups):
        r = "unfold" if route == "gram" and groups > 1 else route
        taken.append(r)
        return r

    monkeypatch.setattr(pe, "_conv_route", forced)
    assert_close(grand_scores(model, x, y, batch_size=3), naive_grand(model, x, y))
    assert route in taken


def test_default_conv_routes():
    # Deep low-resolution layers: Gram; 3-channel stem: unfold; wide 32x32 layers on CPU:
    # grouped convolution; accelerators never take the grouped route.
    assert pe._conv_route(torch.device("cpu"), 512, 512, 4608, 16, 1) == "gram"
    assert pe._conv_route(torch.device("cpu"), 3, 16, 27, 1024, 1) == "unfold"
    assert pe._conv_route(torch.device("cpu"), 16, 16, 144, 1024, 1) == "grouped"
    assert pe._conv_route(torch.device("cuda"), 16, 16, 144, 1024, 1) == "unfold"


class SeqNet(nn.Module):
    """Linear layers applied to (batch, tokens, features) inputs, with LayerNorm."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.mix = nn.Linear(6, 6, bias=False)
        self.head = nn.Linear(6, 3)

    def forward(self, x):  # x: (batch, 1, tokens, 4)
        h = torch.relu(self.emb(x.squeeze(1)))  # (batch, tokens, 6)
        h = self.mix(self.norm(h))
        return self.head(h.mean(1))


@pytest.mark.parametrize("gram", [True, False])
def test_linear_on_sequences(monkeypatch, gram):
    torch.manual_seed(0)
    model = SeqNet()
    x, y = data((1, 5, 4), 6, classes=3)
    monkeypatch.setattr(pe, "_use_gram", lambda length, d_in, d_out: gram)
    assert_close(grand_scores(model, x, y, batch_size=4), naive_grand(model, x, y))


class Reused(nn.Module):
    """A Linear called twice, a weight also used outside its module, tied weights, an
    in-place ReLU on a BatchNorm output and a frozen layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.frozen = nn.Linear(16, 16)
        self.frozen.requires_grad_(False)
        self.twice = nn.Linear(16, 16)
        self.side = nn.Linear(16, 16)
        self.enc = nn.Linear(16, 6, bias=False)
        self.dec = nn.Linear(6, 16, bias=False)
        self.dec.weight = nn.Parameter(torch.randn(16, 6) * 0.3)
        self.tied = nn.Linear(6, 16, bias=False)
        self.tied.weight = self.dec.weight
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.bn(self.conv(x))
        h = F.relu(h, inplace=True).mean(1).flatten(1)  # (batch, 16)
        h = self.frozen(h)
        h = torch.tanh(self.twice(torch.tanh(self.twice(h))))
        h = self.side(h) + F.linear(h, self.side.weight) * 0.5
        z = self.enc(h)
        h = self.dec(z) + self.tied(z * 0.7)
        return self.head(h)


def test_reuse_sharing_inplace_and_frozen():
    torch.manual_seed(0)
    model = Reused()
    warm_bn(model, (2, 4, 4))
    x, y = data((2, 4, 4), 5, classes=3)
    assert_close(grand_scores(model, x, y, batch_size=3), naive_grand(model, x, y))


def test_inplace_on_first_layer_output_stays_on_fast_path(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(inplace=True), nn.Linear(8, 3))
    x, y = data((1, 4, 4), 5, classes=3)

    def no_fallback(*args):
        raise AssertionError("fallback used")

    monkeypatch.setattr(pe, "_vmap_sqnorms", no_fallback)
    assert_close(grand_scores(model, x, y, batch_size=2), naive_grand(model, x, y))


def test_works_under_no_grad_and_inference_mode():
    model, x, y = built("mlp", (1, 4, 4), 4, warm=False, width=8)
    want = naive_grand(model, x, y)
    with torch.no_grad():
        assert_close(grand_scores(model, x, y), want)
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()
        got = grand_scores(model, xi, yi)
    assert_close(got, want)


def test_float64_model_returns_float32():
    model, x, y = built("cnn5", (3, 8, 8), 3, width=4)
    model.double()
    got = grand_scores(model, x.double(), y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), naive_grand(model, x.double(), y), rtol=1e-6, atol=0.0)


def test_no_trainable_parameters_and_empty_input():
    model = build_model("mlp", (1, 4, 4), 10, width=8)
    x, y = data((1, 4, 4), 3)
    assert torch.equal(grand_scores(model, x[:0], y[:0]), torch.zeros(0))
    model.requires_grad_(False)
    assert torch.equal(grand_scores(model, x, y), torch.zeros(3))


@pytest.mark.parametrize("kwargs,match", [
    ({"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
    ({"batch_size": -3}, r"got -3"),
    ({"batch_size": 2.5}, r"got 2\.5"),
    ({"batch_size": True}, r"got True"),
    ({"labels": torch.zeros(4, dtype=torch.int64)}, r"labels has 4 entries but inputs has 5"),
    ({"labels": torch.zeros(5, 1, dtype=torch.int64)}, r"one-dimensional .* got shape \(5, 1\)"),
    ({"labels": torch.zeros(5)}, r"integer .* torch\.float32"),
    ({"labels": torch.full((5,), 10)}, r"label 10 is out of range .* 10 classes"),
    ({"labels": torch.full((5,), -1)}, r"minimum label -1"),
    ({"inputs": torch.zeros(5)}, r"got shape \(5,\)"),
    ({"inputs": torch.zeros(5, 1, 4, 4, dtype=torch.int64)}, r"floating-point .* torch\.int64"),
    ({"inputs": [[0.0]]}, r"'list'"),
])
def test_bad_arguments(kwargs, match):
    model = build_model("mlp", (1, 4, 4), 10, width=8)
    x, y = data((1, 4, 4), 5)
    args = {"inputs": x, "labels": y, "batch_size": 2} | kwargs
    with pytest.raises(InvalidArgumentError, match=match):
        grand_scores(model, args["inputs"], args["labels"], batch_size=args["batch_size"])


def test_batchnorm_without_running_stats_is_rejected():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False),
                          nn.Flatten(), nn.Linear(8, 3))
    x, y = data((1, 4, 4), 2, classes=3)
    with pytest.raises(InvalidArgumentError, match=r"'1' has no running statistics"):
        grand_scores(model, x, y)


def test_model_output_must_be_logits():
    model = nn.Sequential(nn.Flatten(0), nn.Linear(16 * 2, 3))
    x, y = data((1, 4, 4), 2, classes=3)
    with pytest.raises(InvalidArgumentError, match=r"\(batch, classes\) logits, got \(3,\)"):
        grand_scores(model, x, y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_without_per_batch_syncs(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model, x, y = built("resnet18", (3, 16, 16), 12, width=4)
    want = naive_grand(model, x, y)
    model, xc, yc = model.cuda(), x.cuda(), y.cuda()

    def syncs(n: int) -> tuple[torch.Tensor, int]:
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                got = grand_scores(model, xc[:n], yc[:n], batch_size=4)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return got, sum("synchroniz" in str(w.message) for w in caught)

    got_one, syncs_one = syncs(4)  # one batch
    got, syncs_three = syncs(12)  # three batches: no extra host syncs in the batch loop
    assert got.device.type == "cuda" and got.dtype == torch.float32
    assert syncs_three == syncs_one
    torch.testing.assert_close(got.cpu(), want, rtol=RTOL, atol=0.0)
    torch.testing.assert_close(got_one.cpu(), want[:4], rtol=RTOL, atol=0.0)
