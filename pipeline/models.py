"""Model families: ``mlp`` (for digits), ``cnn5`` (the margins paper's net) and ``resnet18``
(the CIFAR low-resolution variant), and models from outside scorebank: ``torchvision:NAME``
(any torchvision classification builder) and ``package.module:factory`` (a user function).

All models map a float batch ``(batch, channels, height, width)`` to raw logits
``(batch, classes)``.  :func:`norm_product` gives the margins paper's normalisation rho.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from scorebank.pipeline.outside import ImportPathRegistry, call_user, load_callable
from scorebank.stores.errors import InvalidArgumentError

#: Model families by ``--model`` name.  An entry is a builder ``(input_shape, num_classes, *,
#: batchnorm, init_std, width, cifar_stem) -> nn.Module``; a prefix entry (``torchvision:NAME``,
#: ``package.module:factory``) is a function of its argument returning such a builder.  Adding a
#: model is one entry (and a test).
MODELS: ImportPathRegistry = ImportPathRegistry("model", "--model")


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
def _mlp(input_shape, num_classes, *, batchnorm=True, init_std=None, width=None, cifar_stem=False) -> nn.Module:
    _no_stem("mlp", cifar_stem)
    c, h, w = input_shape
    return MLP(c * h * w, num_classes, (256, 128) if width is None else (width, width))


@MODELS.register("cnn5", help="the margins paper's 5-layer CNN: four 3x3 stride-2 convs (16/32/64/128 channels, "
                              "--width sets the first), optional BatchNorm, no biases, linear classifier")
def _cnn5(input_shape, num_classes, *, batchnorm=True, init_std=None, width=None, cifar_stem=False) -> nn.Module:
    _no_stem("cnn5", cifar_stem)
    c, h, w = input_shape
    base = 16 if width is None else width
    return CNN5(c, num_classes, (h, w), batchnorm=batchnorm, init_std=init_std,
                widths=(base, 2 * base, 4 * base, 8 * base))


@MODELS.register("resnet18", help="ResNet-18 for low-resolution images (Data Diet's CIFAR variant, 3x3 stem, "
                                  "64 first-stage channels or --width)")
def _resnet18(input_shape, num_classes, *, batchnorm=True, init_std=None, width=None, cifar_stem=False) -> nn.Module:
    _no_stem("resnet18", cifar_stem, " (it has the 3x3 stride-1 stem already)")
    return ResNet18(input_shape[0], num_classes, width=64 if width is None else width)


def _no_stem(name: str, cifar_stem: bool, note: str = "") -> None:
    if cifar_stem:
        raise InvalidArgumentError(f"--cifar-stem swaps the stem of --model torchvision:NAME ResNets; "
                                   f"{name!r} has none to swap{note}: drop --cifar-stem")


#: What ``torchvision:NAME`` accepts: torchvision's classification builders.
TORCHVISION_HELP = ("any torchvision classification builder (resnet50, wide_resnet50_2, vit_b_16, ...) with "
                    "weights=None; --cifar-stem gives ResNets a 3x3 stride-1 first conv and no max-pool")


@MODELS.register("torchvision", prefix=True, metavar="NAME", help=TORCHVISION_HELP)
def _torchvision(name: str):
    """The builder of torchvision classification model ``name`` (``torchvision.models``'s
    ``list_models``): built with ``weights=None`` and ``num_classes``.

    * Inputs with ``C != 3`` channels: the first convolution (the stem) is rebuilt with ``C``
      input channels, same kernel, stride, padding and bias, He-normal (fan_out, ReLU) init
      as torchvision's ResNets/VGGs/MobileNets initialise convolutions.
    * ``cifar_stem`` (``--cifar-stem``, 32x32 inputs): a ResNet's (``resnet*``, ``resnext*``,
      ``wide_resnet*``) 7x7 stride-2 ``conv1`` becomes a 3x3 stride-1 padding-1 conv (same
      init) and its ``maxpool`` an identity, as in the CIFAR ResNets; other families have
      no such stem and are refused.
    * Auxiliary classifiers (googlenet, inception_v3) are removed: training uses the main
      logits only.  ViTs are built for the data's (square) image size; other families with
      a fixed input size fail at their first forward pass.
    * ``--width`` does not apply (refused); ``--batchnorm``/``--init-std`` are ignored."""
    import torchvision.models as tvm

    names = tvm.list_models(module=tvm)
    if name not in names:
        import difflib

        near = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        raise InvalidArgumentError(f"unknown torchvision model {name!r}; {hint}--model torchvision:NAME takes one of "
                                   f"the {len(names)} classification builders of torchvision.models, e.g. "
                                   "resnet18, resnet50, wide_resnet50_2, vit_b_16")
    builder = tvm.get_model_builder(name)

    def build(input_shape, num_classes, *, batchnorm=True, init_std=None, width=None, cifar_stem=False) -> nn.Module:
        if width is not None:
            raise InvalidArgumentError(f"--width does not apply to --model torchvision:{name}; drop it")
        model = builder(weights=None, num_classes=num_classes)
        if isinstance(model, tvm.VisionTransformer) and model.image_size != input_shape[1]:
            c, h, w = input_shape  # ViTs are built for one image size: rebuild for (h, w)
            if h != w or h % model.patch_size:
                raise InvalidArgumentError(f"--model torchvision:{name} takes square images whose side is a multiple "
                                           f"of its patch size {model.patch_size}; the data's are {h}x{w}")
            model = builder(weights=None, num_classes=num_classes, image_size=h)
        if getattr(model, "aux_logits", False):  # googlenet, inception_v3: main logits only
            model.aux_logits = False
            for aux in ("AuxLogits", "aux1", "aux2"):
                if hasattr(model, aux):
                    setattr(model, aux, None)
        channels = input_shape[0]
        if cifar_stem:
            if not isinstance(model, tvm.ResNet):
                raise InvalidArgumentError(f"--cifar-stem swaps the stem of ResNets (conv1 and maxpool); torchvision "
                                           f"model {name!r} is a {type(model).__name__}: drop --cifar-stem")
            model.conv1 = _he_conv(channels, model.conv1.out_channels, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
        else:
            parent, attr, conv = _first_conv(model)
            if conv.in_channels != channels:
                setattr(parent, attr, _he_conv(channels, conv.out_channels, conv.kernel_size, conv.stride,
                                               conv.padding, bias=conv.bias is not None))
        return model

    return build


def _he_conv(c_in: int, c_out: int, kernel, stride, padding, *, bias: bool) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=bias)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """``(parent, attribute name, conv)`` of the first ``nn.Conv2d`` in registration order."""
    for qualified, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, attr = qualified.rpartition(".")
            return model.get_submodule(parent_name), attr, module
    raise InvalidArgumentError(f"{type(model).__name__} has no convolution to take the input's channels")


FACTORY_CALL = "(input_shape, num_classes, width)"


@MODELS.register("package.module", prefix=True, metavar="MODEL_FACTORY",
                 help=f"your function {FACTORY_CALL} -> nn.Module, imported from PYTHONPATH; input_shape is "
                      "(C, H, W), width is --width or None")
def _factory(path: str):
    """The builder calling the user's factory ``package.module:factory`` as
    ``factory(input_shape, num_classes, width)``; it must return an ``nn.Module`` mapping
    ``(batch, C, H, W)`` to logits ``(batch, num_classes)``.  ``--batchnorm`` and
    ``--init-std`` are the factory's business (ignored); ``--cifar-stem`` is refused."""
    factory = load_callable(path, "--model", ((1, 1, 1), 2, None), FACTORY_CALL)

    def build(input_shape, num_classes, *, batchnorm=True, init_std=None, width=None, cifar_stem=False) -> nn.Module:
        _no_stem(path, cifar_stem)
        model = call_user(factory, path, "--model", tuple(input_shape), num_classes, width)
        if not isinstance(model, nn.Module):
            raise InvalidArgumentError(f"--model {path!r} returned a {type(model).__name__}, not a torch.nn.Module")
        return model

    return build


def model_builder(name: str):
    """The builder ``--model name`` names: a plain entry's, or the one a prefix entry's
    argument resolves to (imports torchvision or the user's module; an unknown torchvision
    name, an import or a signature failure raises :class:`InvalidArgumentError`)."""
    entry, argument = MODELS.lookup(name)
    return entry.value(argument) if entry.prefix else entry.value


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, *,
                batchnorm: bool = True, init_std: float | None = None,
                width: int | None = None, cifar_stem: bool = False) -> nn.Module:
    """Build a fresh model of the registered family ``name`` (:data:`MODELS`).  Call under
    ``torch.manual_seed`` for a seeded init.

    ``input_shape`` is ``(channels, height, width)``; ``width`` scales the model (hidden
    units of ``mlp``, first-stage channels of ``resnet18``, channel multiplier base of
    ``cnn5`` = width of its first conv; passed to a user factory); ``cifar_stem`` gives
    ``torchvision:`` ResNets the 3x3 stride-1 stem of 32x32 inputs."""
    builder = model_builder(name)
    if init_std is not None and not (math.isfinite(init_std) and init_std > 0):
        raise InvalidArgumentError(f"--init-std must be a positive number, got {init_std!r}")
    if width is not None and width < 1:
        raise InvalidArgumentError(f"--width must be a positive integer, got {width!r}")
    return builder(tuple(input_shape), num_classes, batchnorm=batchnorm, init_std=init_std, width=width,
                   cifar_stem=cifar_stem)


def check_cifar_stem(name: str) -> None:
    """Refuse (:class:`InvalidArgumentError`) ``--cifar-stem`` for a model that has no ResNet
    stem to swap, before any data is loaded: the model is built for 3x32x32 inputs on
    PyTorch's ``meta`` device (nothing is allocated)."""
    with torch.device("meta"):
        build_model(name, (3, 32, 32), 2, cifar_stem=True)


#: Most parameters a model may have (2**33 float32 parameters = 32 GiB).
MAX_PARAMETERS = 2**33


def parameter_count(name: str, input_shape: tuple[int, int, int], num_classes: int, *,
                    batchnorm: bool = True, init_std: float | None = None, width: int | None = None,
                    cifar_stem: bool = False) -> int:
    """Number of parameters of the model :func:`build_model` would build, counted on
    PyTorch's ``meta`` device (nothing is allocated)."""
    with torch.device("meta"):
        model = build_model(name, input_shape, num_classes, batchnorm=batchnorm, init_std=init_std, width=width,
                            cifar_stem=cifar_stem)
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
