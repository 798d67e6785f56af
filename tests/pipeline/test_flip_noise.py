"""Class-conditional label flips (--label-noise-kind flip --flip-map): each label y becomes
map[y] with probability F, seeded; recorded in the configuration (absent from configurations
with the default kind, so older stores' configurations are unchanged)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scorebank.core.config import ScoreConfig, parse_flip_map
from scorebank.pipeline.config import resolve_config
from scorebank.pipeline.datasets import apply_flip_noise, load_dataset
from scorebank.pipeline.scoring import prepare_labels
from scorebank.stores.errors import InvalidArgumentError


def test_flips_by_hand():
    labels = np.arange(300) % 4
    noisy, corrupted = apply_flip_noise(labels, 0.4, {0: 1, 1: 2}, seed=7, num_classes=4)
    u = np.random.default_rng(7).random(300)
    for y, got, draw in zip(labels, noisy, u):
        want = {0: 1, 1: 2}.get(int(y), int(y)) if draw < 0.4 else int(y)
        assert got == want
    np.testing.assert_array_equal(corrupted, noisy != labels)
    flipped = corrupted.sum() / np.isin(labels, (0, 1)).sum()
    assert 0.3 < flipped < 0.5  # about F of the mapped classes
    assert set(zip(labels[corrupted], noisy[corrupted])) == {(0, 1), (1, 2)}


def test_digits_labels_and_configuration_round_trip():
    data = load_dataset("digits", limit=200)
    cfg = resolve_config(dataset="digits", limit=200, label_noise=0.5, label_noise_kind="flip", flip_map="3:8,8:3")
    labels = prepare_labels(cfg, data)
    changed = labels != data.train_labels
    assert changed.any() and set(data.train_labels[changed]) <= {3, 8}
    assert ScoreConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["flip_map"] == "3:8,8:3"
    plain = json.loads(resolve_config(dataset="digits", label_noise=0.2).to_json())
    assert "label_noise_kind" not in plain and "flip_map" not in plain  # the default kind: as before


@pytest.mark.parametrize("fields,message", [
    (dict(label_noise_kind="flip"), "flip needs one"),
    (dict(flip_map="0:1"), "goes with --label-noise-kind flip"),
    (dict(label_noise_kind="flip", flip_map="0:1,0:2"), "each source once"),
    (dict(label_noise_kind="flip", flip_map="a:b"), "bad --flip-map 'a:b'"),
    (dict(label_noise_kind="pairs"), "unknown label noise kind 'pairs'"),
])
def test_bad_settings_are_refused(fields, message):
    with pytest.raises(InvalidArgumentError, match=message):
        resolve_config(dataset="digits", label_noise=0.2, **fields)


def test_classes_outside_the_data_set_are_refused():
    assert parse_flip_map(" 0:1 , 2:0") == {0: 1, 2: 0}
    with pytest.raises(InvalidArgumentError, match="names class 12"):
        apply_flip_noise(np.zeros(5, dtype=np.int64), 0.5, {0: 12}, seed=0, num_classes=10)
