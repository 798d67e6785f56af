"""Shared fixtures: tiny configurations on digits that train in well under a second."""

from __future__ import annotations

import shutil

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


@pytest.fixture(scope="session")
def data():
    """The digits data set of ``tiny_config`` (its first 200 examples), loaded once."""
    from scorebank.pipeline.datasets import load_dataset

    return load_dataset("digits", limit=200)


@pytest.fixture(scope="session")
def _built_stores(tmp_path_factory, data):
    """Stores built once per session, keyed by what built them (see ``digits_store``)."""
    built = {}

    def get(config, seeds, holdout, memorization):
        from scorebank.pipeline.holdout import holdout as run_holdout
        from scorebank.pipeline.memorization import memorization as run_memorization
        from scorebank.pipeline.scoring import score

        key = (config.to_json(), tuple(seeds), holdout, memorization)
        if key not in built:
            path = tmp_path_factory.mktemp("digits-store") / "s.zarr"
            score(config, tuple(seeds), path, device="cpu", data=data)
            if holdout is not None:
                run_holdout(path, holdout[0], list(holdout[1]), device="cpu", data=data)
            if memorization is not None:
                run_memorization(path, *memorization, device="cpu", data=data)
            built[key] = path
        return built[key]

    return get


@pytest.fixture
def digits_store(_built_stores, tmp_path):
    """``digits_store(config, seeds=(0,), *, holdout=None, memorization=None, copy_to="s.zarr")``:
    a store scored on ``data`` with ``config`` for ``seeds`` (then, if given,
    ``holdout(store, folds, seeds)`` for ``holdout=(folds, seeds)`` and
    ``memorization(store, subsets, keep)`` for ``memorization=(subsets, keep)``), built once per
    session and copied to ``tmp_path / copy_to`` for the test to change; ``copy_to=None`` gives
    the shared store itself, which the test must only read."""

    def make(config, seeds=(0,), *, holdout=None, memorization=None, copy_to="s.zarr"):
        base = _built_stores(config, seeds, holdout, memorization)
        if copy_to is None:
            return base
        path = tmp_path / copy_to
        shutil.copytree(base, path)
        return path

    return make


# A test module that trains on one digits store declares it once, at module level:
#   STORE_CONFIG = dict(epochs=2, label_noise=0.2)       # tiny_config overrides
#   STORE_BUILD = dict(seeds=(0, 1), holdout=(3, (0,)))   # digits_store options (optional)
# and its tests ask for ``config``, ``base_store`` (shared, read only) or ``store`` (a fresh copy).
@pytest.fixture
def config(request, tiny_config):
    """``tiny_config(**STORE_CONFIG)`` of the requesting test module."""
    return tiny_config(**request.module.STORE_CONFIG)


@pytest.fixture
def base_store(request, digits_store, config):
    """The requesting module's store (``STORE_CONFIG``, ``STORE_BUILD``), shared: only read it."""
    build = dict(getattr(request.module, "STORE_BUILD", {}), copy_to=None)
    return digits_store(config, **build)


@pytest.fixture
def module_store(request, digits_store, config):
    """A fresh copy of the requesting module's store, in ``tmp_path`` (``s.zarr`` unless
    ``STORE_BUILD`` names another ``copy_to``)."""
    return digits_store(config, **getattr(request.module, "STORE_BUILD", {}))


@pytest.fixture
def store(module_store):
    """``module_store`` (under tests/analysis the conftest there defines another ``store``:
    modules there that train a digits store override ``store`` with ``module_store``)."""
    return module_store
