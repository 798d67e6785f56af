"""Tests of scorebank.pipeline.robust: each estimator's p.grad against a hand computation.

Most checks use a linear softmax classifier ``logits = x W^T + b`` in float64, whose
per-example cross-entropy gradients have the closed form ``dW_i = (softmax_i - onehot_i) x_i^T``
and ``db_i = softmax_i - onehot_i`` (:func:`closed_form`); the estimators compute theirs with
autograd, so the only difference is float64 rounding (hence ``atol=1e-12``).
"""

from __future__ import annotations

import io
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scorebank.pipeline.models import build_model
from scorebank.pipeline.per_example import per_example_gradients
from scorebank.pipeline.robust import OPTIMIZERS, GradientEstimator, _median3, make_estimator
from scorebank.stores.errors import InvalidArgumentError, ScorebankError

D, K = 5, 3  # features, classes of the linear model
ATOL = 1e-12  # float64 autograd vs float64 closed form: rounding only


def linear_model(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(D, K).double()


def batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, D, generator=g, dtype=torch.float64),
            torch.randint(0, K, (n,), generator=g))


def closed_form(model: nn.Linear, x: torch.Tensor, y: torch.Tensor):
    """Per-example gradients ``(dW (n, K, D), db (n, K))`` in closed form."""
    with torch.no_grad():
        r = torch.softmax(x @ model.weight.T + model.bias, dim=1) - F.one_hot(y, K).double()
        return r[:, :, None] * x[:, None, :], r


def closed_mean(model: nn.Linear, x: torch.Tensor, y: torch.Tensor):
    dw, db = closed_form(model, x, y)
    return dw.mean(0), db.mean(0)


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def close(a, b, atol=ATOL) -> bool:
    return all(torch.allclose(u, v, rtol=0, atol=atol) for u, v in zip(a, b))


def tiny_cnn(seed: int = 0) -> nn.Module:
    """cnn5 with BatchNorm, first width 4, for 8x8 RGB images (float32)."""
    torch.manual_seed(seed)
    return build_model("cnn5", (3, 8, 8), 4, width=4)


def image_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


# ---------------------------------------------------------------------------------- factory


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(name="adam", batch_size=12), "'adam'"),
    (dict(name="m3", batch_size=128), "128"),
    (dict(name="m3", batch_size=10), "divisible by 3"),
    (dict(name="sgd", batch_size=0), "0"),
    (dict(name="sgd", batch_size=True), "True"),
    (dict(name="winsorized", batch_size=32, clip_count=-1), "-1"),
    (dict(name="winsorized", batch_size=32, clip_count=1.5), "1.5"),
    (dict(name="winsorized", batch_size=7, clip_count=3), "at least 2\\*\\(clip_count\\+1\\) = 8"),
    (dict(name="rm3", batch_size=32, clip_count=2), "only applies to --optimizer winsorized"),
])
def test_make_estimator_rejects(kwargs, fragment):
    with pytest.raises(InvalidArgumentError, match=fragment):
        make_estimator(**kwargs)


def test_optimizer_registry_lists_every_estimator_with_help():
    assert list(OPTIMIZERS) == ["sgd", "m3", "rm3", "ra3", "winsorized"]
    assert "rm3" in OPTIMIZERS and "adam" not in OPTIMIZERS
    assert all(e.help for e in OPTIMIZERS.entries())
    with pytest.raises(InvalidArgumentError,
                       match=r"unknown optimizer 'adam'; --optimizer takes sgd, m3, rm3, ra3 or winsorized"):
        make_estimator("adam", batch_size=12)


def test_make_estimator_names():
    for name in OPTIMIZERS:
        est = make_estimator(name, batch_size=12, clip_count=2 if name == "winsorized" else 0)
        assert isinstance(est, GradientEstimator) and est.name == name
    # the boundary 2*(s+1) == batch_size is accepted
    assert make_estimator("winsorized", batch_size=8, clip_count=3).clip_count == 3


# ---------------------------------------------------------------------------------- median


def test_median3_is_exact_middle_value():
    a = torch.tensor([1e8, 3.0, -1.0, 2.0, 5.0], dtype=torch.float32)
    b = torch.tensor([1e-3, 1.0, -1.0, 2.0, 4.0], dtype=torch.float32)
    c = torch.tensor([-1e8, 2.0, 7.0, 9.0, 6.0], dtype=torch.float32)
    out, tmp = torch.empty(5), torch.empty(5)
    _median3(a, b, c, out=out, tmp=tmp)
    # a+b+c-min-max in float32 gives 0 for the first coordinate (1e-3 is lost next to 1e8)
    assert torch.equal(out, torch.tensor([1e-3, 2.0, -1.0, 2.0, 5.0], dtype=torch.float32))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1000, generator=g)
    _median3(x[0], x[1], x[2], out=(o := torch.empty(1000)), tmp=torch.empty(1000))
    assert torch.equal(o, x.median(0).values)


# ---------------------------------------------------------------------------------- sgd


def test_sgd_is_mean_gradient_and_overwrites():
    model = linear_model()
    for p in model.parameters():
        p.grad = torch.full_like(p, 123.0)  # must be overwritten, not accumulated into
    x, y = batch(12, seed=1)
    logits = make_estimator("sgd", batch_size=12).compute(model, x, y)
    assert close(grads(model), closed_mean(model, x, y))
    assert torch.equal(logits, model(x).detach()) and not logits.requires_grad


# ---------------------------------------------------------------------------------- m3


def test_m3_is_median_of_three_microbatch_means():
    model = linear_model()
    x, y = batch(12, seed=2)
    make_estimator("m3", batch_size=12).compute(model, x, y)
    parts = [closed_mean(model, x[k:k + 4], y[k:k + 4]) for k in (0, 4, 8)]
    expected = [torch.stack([p[j] for p in parts]).median(0).values for j in range(2)]
    assert close(grads(model), expected)
    # and it is not the plain mean (the three micro-batch gradients genuinely differ)
    assert not close(grads(model), closed_mean(model, x, y), atol=1e-3)


@pytest.mark.parametrize("n, splits", [
    (7, [(0, 3), (3, 5), (5, 7)]),
    (4, [(0, 2), (2, 3), (3, 4)]),
])
def test_m3_short_batch_uses_near_equal_microbatches(n, splits):
    model = linear_model()
    x, y = batch(n, seed=3)
    make_estimator("m3", batch_size=12).compute(model, x, y)
    parts = [closed_mean(model, x[a:b], y[a:b]) for a, b in splits]
    expected = [torch.stack([p[j] for p in parts]).median(0).values for j in range(2)]
    assert close(grads(model), expected)


@pytest.mark.parametrize("n", [1, 2])
def test_m3_batch_below_three_falls_back_to_mean(n):
    model = linear_model()
    x, y = batch(n, seed=4)
    logits = make_estimator("m3", batch_size=12).compute(model, x, y)
    assert close(grads(model), closed_mean(model, x, y))
    assert logits.shape == (n, K)


# ---------------------------------------------------------------------------------- rm3 / ra3


@pytest.mark.parametrize("name, combine", [
    ("rm3", lambda t: t.median(0).values),
    ("ra3", lambda t: t.mean(0)),
])
def test_rolling_estimators_against_history(name, combine):
    model = linear_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    est = make_estimator(name, batch_size=8)
    history = []
    for step in range(6):
        x, y = batch(8 if step != 4 else 5, seed=10 + step)  # step 4: a short batch
        g = closed_mean(model, x, y)  # at the parameters before this step's update
        history.append(g)
        est.compute(model, x, y)
        if step < 2:  # plain SGD for the first two steps
            expected = g
        else:
            expected = [combine(torch.stack([h[j] for h in history[-3:]])) for j in range(2)]
        assert close(grads(model), expected), step
        if step >= 2:  # the rolling estimate is not the current gradient
            assert not close(grads(model), g, atol=1e-6), step
        opt.step()


def test_rm3_grad_is_not_aliased_to_history():
    """In-place changes to p.grad (gradient clipping) must not leak into the history."""
    model_a, model_b = linear_model(), linear_model()
    est_a, est_b = make_estimator("rm3", batch_size=8), make_estimator("rm3", batch_size=8)
    for step in range(5):
        x, y = batch(8, seed=30 + step)
        est_a.compute(model_a, x, y)
        est_b.compute(model_b, x, y)
        assert all(torch.equal(u, v) for u, v in zip(grads(model_a), grads(model_b))), step
        for p in model_a.parameters():
            p.grad.mul_(0.0)


# ---------------------------------------------------------------------------------- state


def _run(est, model, opt, seeds):
    out = []
    for s in seeds:
        x, y = image_batch(12, seed=s)
        est.compute(model, x, y)
        out.append(grads(model))
        opt.step()
    return out


@pytest.mark.parametrize("name", ["rm3", "ra3"])
@pytest.mark.parametrize("split", [1, 4])
def test_state_dict_round_trip_is_bit_exact(name, split):
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    est = make_estimator(name, batch_size=12)
    _run(est, model, opt, range(split))
    buf = io.BytesIO()
    torch.save({"est": est.state_dict(), "model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    resumed = tiny_cnn(seed=99)
    resumed.load_state_dict(saved["model"])
    ropt = torch.optim.SGD(resumed.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    ropt.load_state_dict(saved["opt"])
    rest = make_estimator(name, batch_size=12)
    rest.load_state_dict(saved["est"])

    tail = range(100, 105)
    expected, got = _run(est, model, opt, tail), _run(rest, resumed, ropt, tail)
    for e, g in zip(expected, got):
        assert all(torch.equal(u, v) for u, v in zip(e, g))
    # without the state the resumed run differs (so the comparison above has teeth)
    fresh_model = tiny_cnn(seed=99)
    fresh_model.load_state_dict(saved["model"])
    fopt = torch.optim.SGD(fresh_model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    fopt.load_state_dict(saved["opt"])
    fresh = _run(make_estimator(name, batch_size=12), fresh_model, fopt, tail)
    assert not all(torch.equal(u, v) for f, e in zip(fresh, expected) for u, v in zip(f, e))


def test_state_dict_validation():
    est = make_estimator("rm3", batch_size=12)
    assert est.state_dict() == {"count": 0}
    with pytest.raises(InvalidArgumentError, match="'count'"):
        est.load_state_dict({"count": -1})
    with pytest.raises(InvalidArgumentError, match="keys"):
        est.load_state_dict({"count": 1, "momentum": torch.zeros(3)})
    with pytest.raises(InvalidArgumentError, match="history"):
        est.load_state_dict({"count": 2})
    est.load_state_dict({"count": 2, "history": torch.zeros(3, 7)})
    model = linear_model()  # 18 parameters, not 7
    x, y = batch(4, seed=0)
    with pytest.raises(ScorebankError, match="different model"):
        est.compute(model, x, y)
    for name in ("sgd", "m3", "winsorized"):
        stateless = make_estimator(name, batch_size=12)
        assert stateless.state_dict() == {}
        stateless.load_state_dict({})
        with pytest.raises(InvalidArgumentError, match="stateless"):
            stateless.load_state_dict({"count": 3})


# ---------------------------------------------------------------------------------- winsorized


def test_winsorized_matches_clamped_closed_form():
    model = linear_model()
    x, y = batch(10, seed=5)
    s = 2
    make_estimator("winsorized", batch_size=10, clip_count=s).compute(model, x, y)
    expected = []
    for per in closed_form(model, x, y):
        srt = per.sort(0).values
        expected.append(torch.clamp(per, srt[s], srt[-1 - s]).sum(0) / 10)
    assert close(grads(model), expected)
    assert not close(grads(model), closed_mean(model, x, y), atol=1e-6)


def test_winsorized_clips_an_outlier_coordinate():
    """Zero weights and bias, 2 classes, all labels 0: softmax is (1/2, 1/2), so example i's
    gradient for W[k, j] is r_k * x_i[j] with r = (-1/2, 1/2).  Feature 3 takes the values
    1, 2, 3, 4, 5, 1000 (example 5 is an outlier).  With s = 1 the values are clamped to
    [2nd smallest, 2nd largest] = [2, 5] -> 2, 2, 3, 4, 5, 5, summing to 21: the estimate is
    r_k * 21 / 6 = -/+1.75, where SGD gives r_k * 1015 / 6.  All numbers are exact in binary."""
    model = nn.Linear(4, 2).double()
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    x = torch.zeros(6, 4, dtype=torch.float64)
    x[:, 3] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 1000.0])
    y = torch.zeros(6, dtype=torch.long)
    make_estimator("winsorized", batch_size=6, clip_count=1).compute(model, x, y)
    assert torch.equal(model.weight.grad[:, 3], torch.tensor([-1.75, 1.75], dtype=torch.float64))
    assert torch.equal(model.weight.grad[:, :3], torch.zeros(2, 3, dtype=torch.float64))
    make_estimator("sgd", batch_size=6).compute(model, x, y)
    assert torch.allclose(model.weight.grad[:, 3],
                          torch.tensor([-0.5, 0.5], dtype=torch.float64) * 1015 / 6)


def test_winsorized_s0_equals_sgd_with_batchnorm():
    x, y = image_batch(12, seed=6)
    m_sgd, m_win, m_clip = tiny_cnn(), tiny_cnn(), tiny_cnn()
    l_sgd = make_estimator("sgd", batch_size=12).compute(m_sgd, x, y)
    l_win = make_estimator("winsorized", batch_size=12, clip_count=0).compute(m_win, x, y)
    make_estimator("winsorized", batch_size=12, clip_count=2).compute(m_clip, x, y)
    # float32; the only difference is summation order (sum of 12 per-example terms vs the
    # batched backward): relative error ~1e-7 per term, so rtol 1e-5 is far from any real gap
    for p, q in zip(m_sgd.parameters(), m_win.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7)
    assert torch.equal(l_sgd, l_win)
    for a, b in zip(m_sgd.buffers(), m_win.buffers()):  # running stats updated once, identically
        assert torch.equal(a, b)
    assert not all(torch.allclose(p.grad, q.grad, rtol=1e-2, atol=1e-4)
                   for p, q in zip(m_sgd.parameters(), m_clip.parameters()))


def test_per_example_terms_without_batchnorm_areper_example_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3),
                          nn.LayerNorm(3)).double()
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1, 0])
    _, params, terms = per_example_gradients(model, x, y, verify=True)
    for i in range(5):
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        expected = torch.autograd.grad(loss, params)
        assert close([t[i] for t in terms], expected)


def test_per_example_terms_with_batchnorm_are_exact_shares():
    """Independent check of the BatchNorm decomposition: give every example its own copy of
    every parameter (theta + e_i, e_i = 0) in a hand-written forward with batch statistics;
    d loss_sum / d e_i is example i's share of the minibatch gradient."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2)).double()
    n = 6
    x = torch.randn(n, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    _, params, terms = per_example_gradients(model, x, y)

    w1, b1, gamma, beta, w2, b2 = (p.detach() for p in params)
    eps = [torch.zeros(n, *p.shape, dtype=torch.float64, requires_grad=True) for p in params]
    z = torch.einsum("nij,nj->ni", w1 + eps[0], x) + b1 + eps[1]
    zhat = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + model[1].eps)
    h = torch.relu((gamma + eps[2]) * zhat + beta + eps[3])
    logits = torch.einsum("nij,nj->ni", w2 + eps[4], h) + b2 + eps[5]
    expected = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), eps)
    assert close(terms, expected)
    # they add up to the minibatch gradient (of the summed loss) ...
    batch_grads = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), params)
    assert close([t.sum(0) for t in terms], batch_grads)
    # ... which per-example gradients with the statistics frozen as constants do not
    z = torch.einsum("nij,nj->ni", w1 + eps[0], x) + b1 + eps[1]
    mean, var = z.mean(0).detach(), z.var(0, unbiased=False).detach()
    h = torch.relu((gamma + eps[2]) * (z - mean) / torch.sqrt(var + model[1].eps) + beta + eps[3])
    logits = torch.einsum("nij,nj->ni", w2 + eps[4], h) + b2 + eps[5]
    frozen = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), eps[0])[0]
    assert not torch.allclose(frozen.sum(0), batch_grads[0], atol=1e-6)


class _Twice(nn.Module):
    """A Linear applied twice: its per-example gradient is the sum over both calls."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(torch.tanh(self.lin(x.flatten(1))))


class _Tied(nn.Module):
    """A Linear whose weight is also used outside the module (the engine's vmap fallback)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return F.linear(torch.tanh(self.lin(x.flatten(1))), self.lin.weight)


class _Scaled(nn.Module):
    """A raw parameter used in ``forward`` (the engine's vmap fallback)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        return self.scale * self.lin(x.flatten(1))


def _inplace() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 4))


@pytest.mark.parametrize("make", [_Twice, _Tied, _Scaled, _inplace])
def test_winsorized_is_exact_on_shared_raw_and_inplace_models(make):
    """Once refused, now the clamped mean of the true per-example gradients (a plain loop)."""
    torch.manual_seed(0)
    model = make().double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 4, (8,))
    params = list(model.parameters())
    rows = [torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), params)
            for i in range(8)]
    make_estimator("winsorized", batch_size=8, clip_count=1).compute(model, x, y)
    expected = []
    for per in (torch.stack(col) for col in zip(*rows)):
        srt = per.sort(0).values
        expected.append(torch.clamp(per, srt[1], srt[-2]).sum(0) / 8)
    assert close(grads(model), expected)


def test_winsorized_refuses_the_fallback_under_train_mode_batchnorm():
    model = nn.Sequential(_Scaled(), nn.BatchNorm1d(4))
    x, y = torch.randn(8, 4), torch.randint(0, 4, (8,))
    with pytest.raises(InvalidArgumentError, match=r"winsorized cannot take parameter '0\.scale'.*batch statistics"):
        make_estimator("winsorized", batch_size=8, clip_count=1).compute(model, x, y)


@pytest.mark.parametrize("n, clipped", [(5, 1), (6, 2), (3, 0), (1, 0)])
def test_winsorized_short_batch_clips_as_many_as_it_allows(n, clipped):
    """clip_count 2 on a batch of n < 2*(2+1): s' = max(0, (n-2)//2) values clipped per side."""
    model = linear_model()
    x, y = batch(n, seed=3)
    make_estimator("winsorized", batch_size=12, clip_count=2).compute(model, x, y)
    expected = []
    for per in closed_form(model, x, y):
        srt = per.sort(0).values
        expected.append(torch.clamp(per, srt[clipped], srt[-1 - clipped]).sum(0) / n)
    assert close(grads(model), expected)


# ---------------------------------------------------------------------------------- toy example


def test_paper_toy_example_m3_expected_update_is_common_direction():
    """Sec. 3.2 example.  Zero weights (no bias), 2 classes, labels 0: example i's gradient is
    r (x) x_i with r = (-1/2, 1/2).  With x_i = e_0 + (i+1) e_{i+1} it is g_i = c + u_i, c =
    r (x) e_0 common, u_i = (i+1) r (x) e_{i+1} idiosyncratic, on disjoint coordinates.  Over
    every minibatch of 3b = 6 of the m = 7 examples (each in two orders), M3's update is c:
    each micro-batch mean has the common coordinates equal to r exactly and every idiosyncratic
    coordinate non-zero in at most one micro-batch, so the median there is 0.  All values are
    dyadic (halves, small integers, /2), so float64 computes them exactly: exact equality."""
    m = 7
    x = torch.zeros(m, m + 1, dtype=torch.float64)
    x[:, 0] = 1.0
    for i in range(m):
        x[i, i + 1] = i + 1.0
    y = torch.zeros(m, dtype=torch.long)
    model = nn.Linear(m + 1, 2, bias=False).double()
    nn.init.zeros_(model.weight)
    r = torch.tensor([-0.5, 0.5], dtype=torch.float64)
    c = torch.zeros(2, m + 1, dtype=torch.float64)
    c[:, 0] = r
    u_mean = torch.zeros(2, m + 1, dtype=torch.float64)
    for i in range(m):
        u_mean[:, i + 1] = (i + 1.0) * r / m

    m3, sgd = make_estimator("m3", batch_size=6), make_estimator("sgd", batch_size=6)
    m3_sum = torch.zeros_like(c)
    sgd_sum = torch.zeros_like(c)
    count = 0
    for subset in itertools.combinations(range(m), 6):
        for order in (list(subset), list(reversed(subset))):
            m3.compute(model, x[order], y[order])
            assert torch.equal(model.weight.grad, c)
            m3_sum += model.weight.grad
            sgd.compute(model, x[order], y[order])
            sgd_sum += model.weight.grad
            count += 1
    assert torch.equal(m3_sum / count, c)
    # SGD's expected update is c + (1/m) sum_i u_i (divisions by 6 and 7 round: tolerance)
    assert torch.allclose(sgd_sum / count, c + u_mean, rtol=0, atol=1e-12)
    assert not torch.allclose(sgd_sum / count, c, atol=1e-2)


# ---------------------------------------------------------------------------------- logits


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_logits_equal_plain_forward(name):
    x, y = image_batch(12, seed=7)
    model, reference = tiny_cnn(), tiny_cnn()  # identical copies, BatchNorm in train mode
    est = make_estimator(name, batch_size=12, clip_count=1 if name == "winsorized" else 0)
    logits = est.compute(model, x, y)
    with torch.no_grad():
        if name == "m3":  # serial micro-batches: each is normalised with its own statistics
            expected = torch.cat([reference(x[k:k + 4]) for k in (0, 4, 8)])
        else:
            expected = reference(x)
    assert not logits.requires_grad
    assert torch.equal(logits, expected)
    for a, b in zip(model.buffers(), reference.buffers()):  # same BatchNorm running statistics
        assert torch.equal(a, b)


class _WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(D, K)
        self.unused = nn.Linear(D, K)

    def forward(self, x):
        return self.used(x)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_unused_parameters_get_zeros_and_no_grad_context_is_harmless(name):
    torch.manual_seed(0)
    model = _WithUnused().double()
    x, y = batch(12, seed=12)
    est = make_estimator(name, batch_size=12, clip_count=1 if name == "winsorized" else 0)
    est.compute(model, x, y)
    outside = grads(model)
    assert torch.equal(model.unused.weight.grad, torch.zeros_like(model.unused.weight))
    assert torch.equal(model.unused.bias.grad, torch.zeros_like(model.unused.bias))
    assert outside[0].abs().sum() > 0
    with torch.no_grad():  # the caller's grad mode must not matter
        make_estimator(name, batch_size=12,
                       clip_count=1 if name == "winsorized" else 0).compute(model, x, y)
    assert all(torch.equal(u, v) for u, v in zip(outside, grads(model)))


# ---------------------------------------------------------------------------------- devices


def test_rm3_makes_no_host_reads(monkeypatch):
    """Host reads of tensor values (.item(), bool(), .tolist(), ...) are what force a GPU sync;
    on CPU we forbid them during rm3's steps (see the CUDA test below for the real thing)."""
    model = tiny_cnn()
    est = make_estimator("rm3", batch_size=12)
    x, y = image_batch(12, seed=8)

    def forbidden(*args, **kwargs):
        raise AssertionError("host read of a tensor value")

    for attr in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
        monkeypatch.setattr(torch.Tensor, attr, forbidden)
    for _ in range(4):
        est.compute(model, x, y)
    monkeypatch.undo()
    assert est.state_dict()["count"] == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_cuda_matches_cpu(name):
    x, y = image_batch(12, seed=9)
    cpu, gpu = tiny_cnn(), tiny_cnn().cuda()
    kw = dict(batch_size=12, clip_count=1 if name == "winsorized" else 0)
    est_cpu, est_gpu = make_estimator(name, **kw), make_estimator(name, **kw)
    for step in range(4):
        est_cpu.compute(cpu, x, y)
        if name == "rm3" and step >= 1:
            torch.cuda.set_sync_debug_mode("error")
        try:
            est_gpu.compute(gpu, x.cuda(), y.cuda())
        finally:
            torch.cuda.set_sync_debug_mode("default")
        for p, q in zip(cpu.parameters(), gpu.parameters()):
            assert q.grad.device.type == "cuda"
            assert torch.allclose(p.grad, q.grad.cpu(), rtol=1e-3, atol=1e-5)
