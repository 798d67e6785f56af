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


def _rezip(archive, out, replace: dict):
    """``archive`` with members replaced (None: removed) and the manifest's member table
    re-listed, as an attacker who rewrites the whole archive would do; returns ``out``."""
    import hashlib
    import json
    import zipfile

    from scorebank.stores.archive import MANIFEST

    with zipfile.ZipFile(archive) as zf:
        members = {i.filename: zf.read(i.filename) for i in zf.infolist()}
    for name, data in replace.items():
        if data is None:
            members.pop(name, None)
        else:
            members[name] = data
    manifest = json.loads(members.pop(MANIFEST))
    manifest["members"] = {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in members.items()}
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr(MANIFEST, json.dumps(manifest))
    return out


@pytest.fixture
def rezip():
    """``rezip(archive, out, {member: bytes or None})``: a tampered, re-listed archive."""
    return _rezip
