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


@pytest.fixture
def counting_store():
    """Wraps a zarr store as ``counting_store(inner)``; ``.keys`` lists every object read."""
    import zarr

    class CountingStore(zarr.storage.WrapperStore):
        def __init__(self, store):
            super().__init__(store)
            self.keys: list[str] = []

        async def get(self, key, prototype, byte_range=None):
            self.keys.append(key)
            return await self._store.get(key, prototype, byte_range)

    return CountingStore
