"""Model families: ``mlp`` (for digits), ``cnn5`` (the margins paper's net) and ``resnet18``
(the CIFAR low-resolution variant).

All models map a float batch ``(batch, channels, height, width)`` to raw logits
``(batch, classes)``.  :func:`norm_product` gives the margins paper's normalisation rho.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from scorebank.core.registry import Registry
from scorebank.stores.errors import InvalidArgumentError

#: Model families by ``--model`` name.  An entry is a builder ``(input_shape, num_classes, *,
#: batchnorm, init_std, width) -> nn.Module``; adding a model is one entry (and a test).
MODELS: Registry = Registry("model", "--model")


class MLP(nn.Module):
    """Flatten, then ``len(hidden)`` Linear+ReLU layers and a linear classifier."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (256, 128)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN5(nn.Module):
    """The margins paper's 5-layer network (Banburski et al., Sec. 3 and Sup. Mat.).

    Four 3x3 stride-2 convolutions (padding 1) with ``widths`` channels (16/32/64/128 by
    default), each followed by BatchNorm (optional) and ReLU, then one linear layer.  No
    biases anywhere, as in the paper.  With ``init_std`` the conv and linear weights are
    drawn from N(0, init_std^2) instead of PyTorch's default Kaiming-uniform init.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int],
                 batchnorm: bool = True, init_std: float | None = None,
                 widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        c, (h, w) = in_channels, image_size
        for width in widths:
            layers.append(nn.Conv2d(c, width, 3, stride=2, padding=1, bias=False))
            if batchnorm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU())
            c, h, w = width, (h + 1) // 2, (w + 1) // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * h * w, num_classes, bias=False)
        if init_std is not None:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.normal_(m.weight, 0.0, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (batch, c, h, w)
        return self.classifier(x.flatten(1))  # (batch, c*h*w) -> (batch, classes)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for low-resolution images (the CIFAR variant used by Data Diet).

    The ImageNet stem (7x7 stride-2 conv and max-pool) is replaced by one 3x3 stride-1
    conv; four stages of two BasicBlocks with ``width * (1, 2, 4, 8)`` channels (64 by
    default), global average pooling and a linear classifier."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        blocks: list[nn.Module] = []
        c = width
        for i, mult in enumerate((1, 2, 4, 8)):
            out = width * mult
            blocks += [BasicBlock(c, out, 1 if i == 0 else 2), BasicBlock(out, out, 1)]
            c = out
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))  # (batch, 8w, h', w')
        return self.fc(self.pool(x).flatten(1))  # (batch, 8w) -> (batch, classes)


@MODELS.register("mlp", help="flatten, two hidden ReLU layers (256, 128; --width W gives W, W), linear classifier")
def _mlp(input_shape, num_classes, *, batchnorm=True, init_std=None, width=None) -> nn.Module:
    c, h, w = input_shape
    return MLP(c * h * w, num_classes, (256, 128) if width is None else (width, width))


@MODELS.register("cnn5", help="the margins paper's 5-layer CNN: four 3x3 stride-2 convs (16/32/64/128 channels, "
                              "--width sets the first), optional BatchNorm, no biases, linear classifier")
def _cnn5(input_shape, num_classes, *, batchnorm=True, init_std=None, width=None) -> nn.Module:
    c, h, w = input_shape
    base = 16 if width is None else width
    return CNN5(c, num_classes, (h, w), batchnorm=batchnorm, init_std=init_std,
                widths=(base, 2 * base, 4 * base, 8 * base))


@MODELS.register("resnet18", help="ResNet-18 for low-resolution images (Data Diet's CIFAR variant, 3x3 stem, "
                                  "64 first-stage channels or --width)")
def _resnet18(input_shape, num_classes, *, batchnorm=True, init_std=None, width=None) -> nn.Module:
    return ResNet18(input_shape[0], num_classes, width=64 if width is None else width)


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, *,
                batchnorm: bool = True, init_std: float | None = None,
                width: int | None = None) -> nn.Module:
    """Build a fresh model of the registered family ``name`` (:data:`MODELS`).  Call under
    ``torch.manual_seed`` for a seeded init.

    ``input_shape`` is ``(channels, height, width)``; ``width`` scales the model (hidden
    units of ``mlp``, first-stage channels of ``resnet18``, channel multiplier base of
    ``cnn5`` = width of its first conv)."""
    builder = MODELS.get(name)
    if init_std is not None and not (math.isfinite(init_std) and init_std > 0):
        raise InvalidArgumentError(f"--init-std must be a positive number, got {init_std!r}")
    if width is not None and width < 1:
        raise InvalidArgumentError(f"--width must be a positive integer, got {width!r}")
    return builder(tuple(input_shape), num_classes, batchnorm=batchnorm, init_std=init_std, width=width)


#: Most parameters a model may have (2**33 float32 parameters = 32 GiB).
MAX_PARAMETERS = 2**33


def parameter_count(name: str, input_shape: tuple[int, int, int], num_classes: int, *,
                    batchnorm: bool = True, init_std: float | None = None, width: int | None = None) -> int:
    """Number of parameters of the model :func:`build_model` would build, counted on
    PyTorch's ``meta`` device (nothing is allocated)."""
    with torch.device("meta"):
        model = build_model(name, input_shape, num_classes, batchnorm=batchnorm, init_std=init_std, width=width)
    return sum(p.numel() for p in model.parameters())


def check_model_size(name: str, input_shape: tuple[int, int, int], num_classes: int, **options) -> int:
    """Refuse (:class:`InvalidArgumentError`) a model of more than :data:`MAX_PARAMETERS`
    parameters before it is allocated; returns the parameter count."""
    n = parameter_count(name, input_shape, num_classes, **options)
    if n > MAX_PARAMETERS:
        raise InvalidArgumentError(
            f"--model {name} with --width {options.get('width')!r} has {n:,} parameters "
            f"({4 * n / 2**30:,.0f} GiB); at most {MAX_PARAMETERS:,}: use a smaller --width")
    return n


def last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1]


@torch.no_grad()
def norm_product(model: nn.Module) -> float:
    """rho, the margins paper's normaliser (Banburski et al., Sec. 3).

    Without BatchNorm layers: the product of the Frobenius norms of every conv and linear
    weight.  With BatchNorm layers: the product of the BatchNorm weight (gamma) vector
    norms and the Frobenius norm of the last linear layer's weight.  Computed in float64
    on the log scale so deep nets do not overflow."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        weights = [m.weight for m in bns if m.weight is not None] + [last_linear(model).weight]
    else:
        weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    log_rho = sum(torch.linalg.vector_norm(w.double()).log() for w in weights)
    return float(torch.exp(log_rho))
