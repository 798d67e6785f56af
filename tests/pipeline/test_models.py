"""The model registry: names, help texts and validation come from one entry per model."""

import pytest
import torch
from torch import nn

from scorebank.pipeline.config import resolve_config
from scorebank.pipeline.models import MODELS, build_model, check_model_size, parameter_count
from scorebank.stores.errors import InvalidArgumentError


def test_registered_models_and_their_texts():
    assert list(MODELS) == ["mlp", "cnn5", "resnet18", "torchvision", "package.module"]
    choices = "mlp, cnn5, resnet18, torchvision:NAME or package.module:MODEL_FACTORY"
    assert MODELS.choices() == choices
    text = MODELS.help_text()
    assert all(f"{e.shown}: " in text for e in MODELS.entries()) and text.endswith(".")
    with pytest.raises(InvalidArgumentError, match=f"unknown model 'vgg'; --model takes {choices}"):
        resolve_config(model="vgg")
    with pytest.raises(InvalidArgumentError, match=f"--model takes {choices}"):
        build_model("vgg", (1, 8, 8), 10)


def test_adding_a_model_is_one_entry(monkeypatch):
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))  # restored after the test

    @MODELS.register("linear", help="one linear layer")
    def _linear(input_shape, num_classes, *, batchnorm=True, init_std=None, width=None, cifar_stem=False):
        c, h, w = input_shape
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))

    assert resolve_config(model="linear").model == "linear"
    assert "linear: one linear layer" in MODELS.help_text()
    model = build_model("linear", (1, 8, 8), 10)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert parameter_count("linear", (1, 8, 8), 10) == 64 * 10 + 10


@pytest.mark.parametrize("name, width", [("mlp", None), ("mlp", 7), ("cnn5", 4), ("resnet18", 2)])
def test_parameter_count_on_the_meta_device_equals_the_built_model(name, width):
    torch.manual_seed(0)
    built = build_model(name, (3, 8, 8), 10, width=width)
    assert parameter_count(name, (3, 8, 8), 10, width=width) == sum(p.numel() for p in built.parameters())


def test_model_size_bound():
    assert check_model_size("mlp", (1, 8, 8), 10) == 64 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    with pytest.raises(InvalidArgumentError, match="--model resnet18 with --width 16384 has 731,222,392,842 parameters"):
        check_model_size("resnet18", (3, 32, 32), 10, width=16384)
