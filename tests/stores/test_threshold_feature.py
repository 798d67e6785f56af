"""``threshold_sample`` (AUM threshold samples) is a feature-only variable: stores made without
the feature keep the format-2 layout (which the previous release opens, test_previous_release.py),
stores made with it hold the variable, and readers that predate the feature refuse them in one
line instead of misreading the fake class."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scorebank.stores import schema as S
from scorebank.stores.location import open_scores, schema_arrays

REPO = Path(__file__).resolve().parents[2]
PREVIOUS = "3db8433"
N = 24


def _store(path, features):
    from scorebank.stores.create import create_store

    true = np.arange(N) % 3
    mask = np.zeros(N, bool)
    mask[[2, 5, 11, 17, 23, 8]] = True  # N // (3 + 1) = 6
    labels = np.where(mask, 3, true)
    per_example = {S.THRESHOLD_SAMPLE: mask} if S.FEATURE_THRESHOLD_SAMPLES in features else {}
    create_store(path, n_epochs=1, labels=labels, true_labels=true, original_index=np.arange(N), seeds=(0,),
                 features=frozenset(features), per_example=per_example,
                 attrs={S.ATTR_CONFIG: json.dumps({"epochs": 1, "threshold_samples": True}), S.ATTR_DATASET: "toy",
                        S.ATTR_FINGERPRINT: "fp", S.ATTR_CLASS_NAMES: ["a", "b", "c", "threshold"]})
    return mask


def test_the_variable_exists_only_with_the_feature(tmp_path):
    assert S.THRESHOLD_SAMPLE not in schema_arrays(frozenset())
    assert S.THRESHOLD_SAMPLE in schema_arrays(frozenset({S.FEATURE_THRESHOLD_SAMPLES}))
    mask = _store(tmp_path / "t.zarr", {S.FEATURE_THRESHOLD_SAMPLES})
    ds = open_scores(tmp_path / "t.zarr")
    np.testing.assert_array_equal(ds[S.THRESHOLD_SAMPLE].values, mask)
    np.testing.assert_array_equal(ds[S.CORRUPTED].values, mask)  # label C != true label
    _store(tmp_path / "p.zarr", set())
    assert S.THRESHOLD_SAMPLE not in open_scores(tmp_path / "p.zarr")


def test_the_previous_release_refuses_a_store_with_threshold_samples(tmp_path):
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{PREVIOUS}^{{commit}}"],
                      capture_output=True).returncode != 0:
        pytest.skip(f"git history with commit {PREVIOUS} is not available")
    root = tmp_path / "previous"
    root.mkdir()
    tar = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", PREVIOUS, "stores", "analysis",
                          "pipeline", "cli"], check=True, capture_output=True).stdout
    (root / "scorebank").mkdir()
    subprocess.run(["tar", "-x", "-C", str(root / "scorebank")], input=tar, check=True)
    _store(tmp_path / "t.zarr", {S.FEATURE_THRESHOLD_SAMPLES})
    code = "import sys, scorebank.stores.location as L; L.open_scores(sys.argv[1])"
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "t.zarr")], capture_output=True, text=True,
                       env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, cwd=root)
    assert r.returncode != 0
    assert "UnsafeStoreError" in r.stderr and "threshold_samples" in r.stderr.splitlines()[-1]
