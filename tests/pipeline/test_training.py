import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax

from scorebank.pipeline.models import build_model, norm_product
from scorebank.pipeline.training import (augment_batch, clean_pass, correct_from_logits, evaluate,
                                         example_scores, resolve_device)
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError


def reference_scores(logits: np.ndarray, y: np.ndarray):
    """Straightforward per-example implementation in float64 numpy."""
    margin, el2n, loss, correct = [], [], [], []
    for z, t in zip(logits.astype(np.float64), y):
        others = [z[j] for j in range(len(z)) if j != t]
        margin.append(z[t] - max(others))
        onehot = np.zeros(len(z))
        onehot[t] = 1
        el2n.append(np.sqrt(np.sum((softmax(z) - onehot) ** 2)))
        loss.append(-log_softmax(z)[t])
        correct.append(z[t] > max(others))
    return np.array(margin), np.array(el2n), np.array(loss), np.array(correct)


def test_example_scores_match_reference_on_saved_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (257, 10)).astype(np.float32)
    logits[0, :] = 1.0  # all tied: margin 0, not correct
    logits[1, 3] = logits[1, 5] = 9.0  # tie between the label and another class
    y = rng.integers(0, 10, 257)
    y[1] = 3
    out = example_scores(torch.from_numpy(logits), torch.from_numpy(y))
    m, e, l, c = reference_scores(logits, y)
    np.testing.assert_allclose(out[S.MARGIN].numpy(), m, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[S.EL2N].numpy(), e, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[S.LOSS].numpy(), l, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[S.CORRECT].numpy(), c)
    np.testing.assert_array_equal(out[S.CORRECT].numpy(), out[S.MARGIN].numpy() > 0)
    assert out[S.MARGIN][0] == 0 and out[S.MARGIN][1] == 0 and not out[S.CORRECT][1]
    np.testing.assert_array_equal(correct_from_logits(torch.from_numpy(logits), torch.from_numpy(y)).numpy(), c)


def test_loss_keeps_float32_relative_precision_for_tiny_losses():
    """The per-example loss of confidently right examples (1e-30 .. 1e-3 nats) is exact to
    float32 precision (relative, up to the rounding of f_j - f_y), not rounded to 0 as logsumexp(f) - f_y in float32 would
    round it; checked against log1p(sum_{j != y} exp(f_j - f_y)) in float64."""
    rng = np.random.default_rng(1)
    gaps = np.linspace(7.0, 70.0, 64)  # f_y - f_j: losses from ~1e-3 down to ~1e-30
    logits = rng.normal(0, 1, (64, 10)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    logits[np.arange(64), y] = logits.max(1) + gaps.astype(np.float32)
    out = example_scores(torch.from_numpy(logits), torch.from_numpy(y))[S.LOSS].numpy()
    z = logits.astype(np.float64)
    others = np.where(np.arange(10)[None, :] == y[:, None], -np.inf, z - z[np.arange(64), y][:, None])
    expected = np.log1p(np.exp(others).sum(1))  # (64,) float64
    assert (out > 0).all()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=0)  # float32 rounding of f_j - f_y
    naive = (torch.logsumexp(torch.from_numpy(logits), 1) - torch.from_numpy(logits)[np.arange(64), y]).numpy()
    assert (naive == 0).sum() > 10  # what the old float32 formula stored


def test_clean_pass_is_eval_mode_per_example_forward():
    torch.manual_seed(0)
    model = build_model("cnn5", (1, 8, 8), 10, width=4)
    model.train()
    x = torch.randn(70, 1, 8, 8)
    y = torch.randint(0, 10, (70,))
    for _ in range(3):  # non-trivial BatchNorm running statistics
        model(torch.randn(16, 1, 8, 8) * 2 + 1)
    out = clean_pass(model, x, y, batch_size=32)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        single = torch.cat([model(x[i:i + 1]) for i in range(70)])
    m, e, l, c = reference_scores(single.numpy(), y.numpy())
    np.testing.assert_allclose(out[S.MARGIN].numpy(), m, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[S.EL2N].numpy(), e, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[S.LOSS].numpy(), l, rtol=1e-5, atol=1e-5)
    acc, loss = evaluate(model, x, y, batch_size=13)
    assert float(acc) == pytest.approx(c.mean())
    assert float(loss) == pytest.approx(l.mean(), rel=1e-5)


def test_augment_batch_equals_naive_crop_and_flip():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6)
    x = x.repeat(20, 1, 1, 1)  # (40, 3, 5, 6)
    g = torch.Generator().manual_seed(3)
    out = augment_batch(x, g, pad=2)
    g = torch.Generator().manual_seed(3)
    shifts = torch.randint(0, 5, (40, 2), generator=g)
    flips = torch.rand(40, generator=g) < 0.5
    assert 0 < flips.sum() < 40
    for i in range(40):
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        dy, dx = shifts[i].tolist()
        crop = padded[:, dy:dy + 5, dx:dx + 6]
        expected = crop.flip(-1) if flips[i] else crop
        torch.testing.assert_close(out[i], expected, rtol=0, atol=0)


def test_norm_product_definitions():
    torch.manual_seed(0)
    plain = build_model("cnn5", (3, 16, 16), 10, batchnorm=False, width=4)
    expected = np.prod([torch.linalg.norm(m.weight.double()).item() for m in plain.modules()
                        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))])
    assert norm_product(plain) == pytest.approx(expected, rel=1e-9)
    bn = build_model("cnn5", (3, 16, 16), 10, batchnorm=True, width=4)
    with torch.no_grad():
        for m in bn.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
    expected = np.prod([torch.linalg.norm(m.weight.double()).item() for m in bn.modules()
                        if isinstance(m, torch.nn.BatchNorm2d)]) * torch.linalg.norm(bn.classifier.weight.double()).item()
    assert norm_product(bn) == pytest.approx(expected, rel=1e-9)


def test_cnn5_architecture():
    m = build_model("cnn5", (3, 32, 32), 10, batchnorm=False, init_std=0.01)
    convs = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 128]
    assert all(c.stride == (2, 2) and c.kernel_size == (3, 3) and c.bias is None for c in convs)
    assert m.classifier.bias is None and m.classifier.in_features == 128 * 2 * 2
    assert abs(convs[1].weight.std().item() - 0.01) < 0.001
    r = build_model("resnet18", (3, 32, 32), 10, width=8)
    assert r.conv1.kernel_size == (3, 3) and r.conv1.stride == (1, 1)
    assert not any(isinstance(mod, torch.nn.MaxPool2d) for mod in r.modules())
    assert r(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(InvalidArgumentError, match="unknown model 'vgg'"):
        build_model("vgg", (3, 32, 32), 10)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(InvalidArgumentError, match="--device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidArgumentError, match="no CUDA GPU"):
            resolve_device("cuda")
