"""Models from outside scorebank: ``torchvision:NAME`` (with ``--cifar-stem``) and a user's
``package.module:factory``; ScoreConfig's ``cifar_stem`` field keeps older identities."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import textwrap
import uuid

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from torch import nn

from scorebank.core.config import ADDED_LATER, NON_IDENTITY_FIELDS, ScoreConfig
from scorebank.pipeline.config import resolve_config
from scorebank.pipeline.models import build_model, parameter_count
from scorebank.stores.errors import InvalidArgumentError


def same_parameters(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def he_conv(c_in, c_out, k, s, p):
    conv = nn.Conv2d(c_in, c_out, k, s, p, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def test_torchvision_resnet_with_cifar_stem_is_torchvisions_resnet_with_a_3x3_stem():
    torch.manual_seed(3)
    built = build_model("torchvision:resnet18", (3, 32, 32), 10, cifar_stem=True)
    torch.manual_seed(3)
    expected = tvm.resnet18(weights=None, num_classes=10)
    expected.conv1 = he_conv(3, 64, 3, 1, 1)
    expected.maxpool = nn.Identity()
    same_parameters(built, expected)
    assert isinstance(built.maxpool, nn.Identity) and built.conv1.kernel_size == (3, 3) and built.conv1.stride == (1, 1)
    x = torch.randn(2, 3, 32, 32)
    built.eval(), expected.eval()
    torch.testing.assert_close(built(x), expected(x), rtol=0, atol=0)
    assert parameter_count("torchvision:resnet18", (3, 32, 32), 10, cifar_stem=True) == \
        sum(p.numel() for p in built.parameters())


def test_torchvision_without_stem_keeps_torchvisions_model_and_adapts_the_first_conv_to_the_channels():
    torch.manual_seed(0)
    same = build_model("torchvision:resnet18", (3, 16, 16), 4)
    torch.manual_seed(0)
    same_parameters(same, tvm.resnet18(weights=None, num_classes=4))
    torch.manual_seed(1)
    grey = build_model("torchvision:resnet18", (1, 8, 8), 4)
    torch.manual_seed(1)
    expected = tvm.resnet18(weights=None, num_classes=4)
    expected.conv1 = he_conv(1, 64, 7, 2, 3)
    same_parameters(grey, expected)
    assert grey(torch.randn(2, 1, 8, 8)).shape == (2, 4)


def test_torchvision_aux_classifiers_removed_and_vit_built_for_the_image_size():
    net = build_model("torchvision:googlenet", (3, 32, 32), 5).train()
    out = net(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)
    vit = build_model("torchvision:vit_b_32", (3, 32, 32), 5)
    assert vit.image_size == 32 and vit(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    with pytest.raises(InvalidArgumentError, match=r"square images whose side is a multiple of its patch size 32"):
        build_model("torchvision:vit_b_32", (3, 40, 40), 5)


@pytest.mark.parametrize("name, options, message", [
    ("torchvision:resnt18", {}, r"unknown torchvision model 'resnt18'; did you mean resnet18"),
    ("torchvision:vgg11", {"cifar_stem": True}, r"--cifar-stem swaps the stem of ResNets .*'vgg11' is a VGG"),
    ("torchvision:resnet18", {"width": 8}, r"--width does not apply to --model torchvision:resnet18"),
    ("mlp", {"cifar_stem": True}, r"'mlp' has none to swap"),
    ("resnet18", {"cifar_stem": True}, r"'resnet18' has none to swap \(it has the 3x3 stride-1 stem already\)"),
])
def test_torchvision_refusals_are_one_line(name, options, message):
    with pytest.raises(InvalidArgumentError, match=message) as err:
        build_model(name, (3, 32, 32), 10, **options)
    assert "\n" not in str(err.value)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module written to a tmp folder on sys.path (as PYTHONPATH would put it)."""
    name = f"user_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def make(input_shape, num_classes, width):
            c, h, w = input_shape
            return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width or 16), nn.ReLU(),
                                 nn.Linear(width or 16, num_classes))

        def two_args(input_shape, num_classes):
            return make(input_shape, num_classes, None)

        def not_a_module(input_shape, num_classes, width):
            return 3

        def raises(input_shape, num_classes, width):
            raise RuntimeError("out of\\nideas")

        NOT_CALLABLE = 5
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_user_factory_is_called_with_shape_classes_and_width(user_module):
    torch.manual_seed(0)
    built = build_model(f"{user_module}:make", (1, 8, 8), 10, width=12)
    import importlib

    make = importlib.import_module(user_module).make
    torch.manual_seed(0)
    same_parameters(built, make((1, 8, 8), 10, 12))
    assert resolve_config(model=f"{user_module}:make").model == f"{user_module}:make"
    assert json.loads(resolve_config(model=f"{user_module}:make").to_json())["model"] == f"{user_module}:make"


@pytest.mark.parametrize("attribute, message", [
    ("missing", r"has no attribute 'missing'"),
    ("NOT_CALLABLE", r"'NOT_CALLABLE' is a int, not a function \(input_shape, num_classes, width\)"),
    ("two_args", r"two_args\(input_shape, num_classes\) cannot be called as \(input_shape, num_classes, width\)"),
])
def test_user_factory_import_and_signature_failures_are_one_line_at_resolve_time(user_module, attribute, message):
    with pytest.raises(InvalidArgumentError, match=message) as err:
        resolve_config(model=f"{user_module}:{attribute}")
    assert "\n" not in str(err.value)


def test_user_factory_failures_when_building(user_module):
    with pytest.raises(InvalidArgumentError, match=r"returned a int, not a torch.nn.Module"):
        build_model(f"{user_module}:not_a_module", (1, 8, 8), 10)
    with pytest.raises(InvalidArgumentError, match=r"raised RuntimeError: out of ideas$"):
        build_model(f"{user_module}:raises", (1, 8, 8), 10)
    with pytest.raises(InvalidArgumentError, match=r"cannot import 'no_such_pkg_xyz.models' \(ModuleNotFoundError"):
        resolve_config(model="no_such_pkg_xyz.models:make")
    with pytest.raises(InvalidArgumentError, match=r"has none to swap"):
        build_model(f"{user_module}:make", (1, 8, 8), 10, cifar_stem=True)


def old_identity_hash(config: ScoreConfig) -> str:
    """The identity hash as computed before ``cifar_stem`` and the other fields added later existed."""
    later = {f.name for f in dataclasses.fields(ScoreConfig) if f.metadata.get(ADDED_LATER)}
    assert "cifar_stem" in later
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in NON_IDENTITY_FIELDS | later}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def test_cifar_stem_field_changes_identity_only_when_set():
    plain = resolve_config(model="torchvision:resnet18", dataset="cifar10")
    assert "cifar_stem" not in json.loads(plain.to_json())
    assert plain.identity_hash() == old_identity_hash(plain) == old_identity_hash(ScoreConfig.from_json(plain.to_json()))
    stem = dataclasses.replace(plain, cifar_stem=True)
    assert json.loads(stem.to_json())["cifar_stem"] is True
    assert ScoreConfig.from_json(stem.to_json()) == stem
    assert stem.identity_hash() != plain.identity_hash()
    assert stem.differences(plain) == {"cifar_stem": (True, False)}
    with pytest.raises(InvalidArgumentError, match="--cifar-stem must be true or false, got 1"):
        resolve_config(cifar_stem=1)


def test_the_trainer_builds_the_cifar_stem_the_config_names():
    from scorebank.pipeline.datasets import ImageData
    from scorebank.pipeline.training import new_model, to_device_data

    images = np.zeros((4, 3, 8, 8), np.uint8)
    data = ImageData("toy", images, np.array([0, 1, 0, 1]), images, np.array([0, 1, 0, 1]), ("a", "b"))
    dd = to_device_data(data, data.train_labels, torch.device("cpu"))
    cfg = resolve_config(model="torchvision:resnet18", cifar_stem=True)
    assert new_model(cfg, dd, 0, torch.device("cpu")).conv1.kernel_size == (3, 3)
