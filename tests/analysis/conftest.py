"""Small score stores built directly as xarray Datasets following the schema, written with
``to_zarr(zarr_format=3, consolidated=True)``.  Tests compute their expected values from
the numpy arrays the builder returns, independently of the analysis code."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from scorebank.stores import schema as S


@dataclass
class BuiltStore:
    path: Path
    arrays: dict  # name -> numpy array as written
    seeds: tuple
    statuses: dict

    def __getitem__(self, name):
        return self.arrays[name]

    @property
    def complete_positions(self) -> list[int]:
        return [i for i, s in enumerate(self.seeds) if self.statuses[s] == S.RUN_COMPLETE]


def build_store(path, *, seeds=(0, 1, 2), epochs=6, n=40, classes=3, seed=0, grand_epochs=(0,),
                label_noise=0.0, statuses=None, completed=None, recorded=None, chunk=None,
                overrides=None, ties=True) -> BuiltStore:
    """Write a store with ``len(seeds)`` runs, epochs ``0..epochs`` and ``n`` examples.

    ``completed``/``recorded``: (run, epoch) bool arrays (default all True); values of
    per-example variables are NaN/False wherever they are not written, as in real stores.
    ``chunk``: examples per chunk (default the schema's).  ``overrides``: name -> array."""
    rng = np.random.default_rng(seed)
    r, e = len(seeds), epochs + 1
    overrides = dict(overrides or {})
    completed = np.ones((r, e), bool) if completed is None else np.asarray(completed, bool)
    recorded = (np.ones((r, e), bool) if recorded is None else np.asarray(recorded, bool)) & completed
    features = set()
    if grand_epochs:
        features.add(S.FEATURE_GRAND)
    true_label = rng.integers(0, classes, n)
    label = true_label.copy()
    if label_noise:
        pick = rng.choice(n, int(round(label_noise * n)), replace=False)
        label[pick] = (label[pick] + 1) % classes
        features.add(S.FEATURE_LABEL_NOISE)
    label = overrides.pop(S.LABEL, label)
    true_label = overrides.pop(S.TRUE_LABEL, true_label)
    arrays = {S.LABEL: np.asarray(label, np.int64), S.TRUE_LABEL: np.asarray(true_label, np.int64)}
    arrays[S.CORRUPTED] = arrays[S.LABEL] != arrays[S.TRUE_LABEL]
    margin = rng.normal(size=(r, e, n))
    if ties:
        margin = np.round(margin, 1)  # plenty of equal values
    arrays[S.MARGIN] = overrides.pop(S.MARGIN, margin).astype(np.float32)
    arrays[S.EL2N] = overrides.pop(S.EL2N, np.round(rng.uniform(0, 1.4, (r, e, n)), 2)).astype(np.float32)
    arrays[S.LOSS] = overrides.pop(S.LOSS, rng.exponential(size=(r, e, n))).astype(np.float32)
    arrays[S.CORRECT] = overrides.pop(S.CORRECT, arrays[S.MARGIN] > 0).astype(bool)
    tc = overrides.pop(S.TRAIN_CORRECT, rng.random((r, e, n)) < 0.6).astype(bool)
    tc[:, 0] = False
    arrays[S.TRAIN_CORRECT] = tc & completed[:, :, None]
    for name in (S.MARGIN, S.EL2N, S.LOSS):
        arrays[name] = np.where(recorded[:, :, None], arrays[name], np.float32(np.nan))
    arrays[S.CORRECT] &= recorded[:, :, None]
    if grand_epochs:
        g = overrides.pop(S.GRAND, np.round(rng.uniform(0, 3, (r, e, n)), 1)).astype(np.float32)
        mask = np.isin(np.arange(e), grand_epochs)[None, :, None] & completed[:, :, None]
        arrays[S.GRAND] = np.where(mask, g, np.float32(np.nan))
    arrays[S.NORM_PRODUCT] = overrides.pop(S.NORM_PRODUCT, rng.uniform(0.5, 3.0, (r, e)))
    arrays[S.NORM_PRODUCT] = np.where(completed, arrays[S.NORM_PRODUCT], np.nan)
    with np.errstate(invalid="ignore"):
        acc = np.where(recorded, arrays[S.CORRECT].mean(axis=2), np.nan)
    arrays[S.TRAIN_ACCURACY] = overrides.pop(S.TRAIN_ACCURACY, acc).astype(np.float32)
    arrays[S.TRAIN_LOSS] = np.where(recorded, 1.0, np.nan).astype(np.float32)
    arrays[S.TEST_ACCURACY] = np.where(completed, 0.5, np.nan).astype(np.float32)
    arrays[S.TEST_LOSS] = np.where(completed, 1.0, np.nan).astype(np.float32)
    if label_noise:  # clean-pass summaries over the pristine and the corrupted examples
        with np.errstate(invalid="ignore"):
            for c, acc_name, loss_name in ((~arrays[S.CORRUPTED], S.PRISTINE_ACCURACY, S.PRISTINE_LOSS),
                                           (arrays[S.CORRUPTED], S.CORRUPT_ACCURACY, S.CORRUPT_LOSS)):
                arrays[acc_name] = np.where(recorded, arrays[S.CORRECT][:, :, c].mean(axis=2),
                                            np.nan).astype(np.float32)
                arrays[loss_name] = np.where(recorded, arrays[S.LOSS][:, :, c].astype(np.float64).mean(axis=2),
                                             np.nan).astype(np.float32)
    arrays[S.COMPLETED] = completed
    arrays[S.RECORDED] = recorded
    for var in S.variables(frozenset(features)):  # variables of newer formats: given, else random
        if var.name not in arrays:
            arrays[var.name] = _other_variable(var, overrides.pop(var.name, None), rng, completed, n)
    if overrides:
        raise ValueError(f"unknown overrides {sorted(overrides)}")

    data_vars, encoding = {}, {}
    for var in S.variables(frozenset(features)):
        data_vars[var.name] = (var.dims, arrays[var.name].astype(var.dtype), var.attrs)
        chunks = S.chunks_for(var, e, n)
        if chunk is not None and S.EXAMPLE in var.dims:
            chunks = chunks[:-1] + (chunk,)
        encoding[var.name] = {"chunks": chunks}
    statuses = statuses or {s: S.RUN_COMPLETE for s in seeds}
    ds = xr.Dataset(data_vars, coords={S.RUN: np.asarray(seeds, np.int64), S.EPOCH: np.arange(e),
                                       S.EXAMPLE: np.arange(n),
                                       S.ORIGINAL_INDEX: (S.EXAMPLE, np.arange(n) * 10)})
    ds.attrs = {**S.format_attrs(),
                S.ATTR_CONFIG: json.dumps({"epochs": epochs, "grand_epochs": list(grand_epochs),
                                           "record_epochs": [int(x) for x in np.flatnonzero(recorded.any(0))]}),
                S.ATTR_DATASET: "toy", S.ATTR_FINGERPRINT: f"toy-{seed}-{n}",
                S.ATTR_CLASS_NAMES: [f"c{i}" for i in range(classes)], S.ATTR_CREATED: "2026-01-01T00:00:00+00:00",
                S.ATTR_RUNS: {str(s): {"status": statuses[s],
                                       "failed_epoch": None} for s in seeds},
                "features": sorted(features)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        ds.to_zarr(path, zarr_format=3, consolidated=True, encoding=encoding, mode="w-")
    return BuiltStore(Path(path), arrays, tuple(seeds), statuses)


def _other_variable(var, given, rng, completed, n):
    """A schema variable the builder has no model for (added by a later format): ``given``,
    else standard normal floats (False booleans) where its epoch is completed, the fill
    value elsewhere (NaN at epoch 0 for in-flight values, which are not presented then)."""
    r, e = completed.shape
    shape = {S.RUN: r, S.EPOCH: e, S.EXAMPLE: n}
    values = np.asarray(given) if given is not None else rng.normal(size=tuple(shape[d] for d in var.dims))
    values = values.astype(var.dtype)
    if var.dims[:2] == (S.RUN, S.EPOCH):
        mask = completed.copy()
        if given is None:
            mask[:, 0] = False
        values = np.where(mask.reshape(mask.shape + (1,) * (values.ndim - 2)), values,
                          np.asarray(var.fill_value, dtype=var.dtype))
    return values


def forgetting_reference(tc: np.ndarray, presented: np.ndarray, never: str = "count"):
    """Forgetting of one run by straightforward loops, the oracle of the tests (never the
    code under test): ``tc`` (epoch, example) train_correct, ``presented`` (epoch,) the
    epochs counted (completed, and <= E for forgetting@E).  Returns events, never-learned,
    stays-learned epoch and score per example."""
    epochs = [e for e in range(tc.shape[0]) if e >= 1 and presented[e]]
    n = tc.shape[1]
    events = np.zeros(n, int)
    learned = np.full(n, -1)
    ever = np.zeros(n, bool)
    for x in range(n):
        for a, b in zip(range(tc.shape[0] - 1), range(1, tc.shape[0])):
            if a >= 1 and presented[a] and presented[b] and tc[a, x] and not tc[b, x]:
                events[x] += 1
        seq = [bool(tc[e, x]) for e in epochs]
        ever[x] = any(seq)
        if seq and seq[-1]:
            i = len(seq) - 1
            while i > 0 and seq[i - 1]:
                i -= 1
            learned[x] = epochs[i]
    fill = np.inf if never == "inf" else len(epochs) + 1
    score = np.where(ever, events.astype(float), fill)
    return events, ~ever, learned, score


@pytest.fixture(scope="session")
def reference():
    """:func:`forgetting_reference` (conftest modules are not importable by tests)."""
    return forgetting_reference


@pytest.fixture
def make_store(tmp_path):
    counter = iter(range(10_000))

    def make(**kwargs) -> BuiltStore:
        return build_store(tmp_path / f"store{next(counter)}.zarr", **kwargs)

    return make


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> BuiltStore:
    """Three complete runs, epochs 0..6, 40 examples in chunks of 16 (three blocks).
    Shared by the tests that only read it."""
    return build_store(tmp_path_factory.mktemp("shared") / "store.zarr", chunk=16)


@pytest.fixture
def small_blocks(monkeypatch):
    """Force Dask blocks of very few epochs, to exercise the cross-block code paths."""
    from scorebank.analysis import access

    monkeypatch.setattr(access, "BLOCK_BYTES", 32)  # 2 epochs of 16 booleans, 1 of anything wider
