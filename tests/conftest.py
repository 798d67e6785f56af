"""Shared fixtures: tiny configurations on digits that train in well under a second."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def tiny_config():
    from scorebank.pipeline.config import resolve_config

    def make(**overrides):
        fields = dict(dataset="digits", limit=200, model="mlp", width=16, epochs=3, batch_size=32, lr=0.05)
        fields.update(overrides)
        return resolve_config(**fields)

    return make
