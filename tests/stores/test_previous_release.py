"""A store written by this code opens with the previous release's reader (commit 3db8433,
taken from git history) and with plain xarray, and both read the variables they share with
this version exactly as this version does (stores/schema.py, "format versions")."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from scorebank.stores import schema as S

REPO = Path(__file__).resolve().parents[2]
PREVIOUS = "3db8433"  # the previous release: stores/, analysis/, pipeline/, cli/ (no core/ yet)
PACKAGES = ("stores", "analysis", "pipeline", "cli")
N = 50

#: run in a subprocess with only the previous release on the path: opens each location with
#: its open_scores and summarize, prints what it read
READ_WITH_PREVIOUS = r"""
import hashlib, json, sys
import numpy as np
import scorebank.stores.location as location
from scorebank.stores.summary import summarize
assert location.__file__.startswith(sys.argv[1]), location.__file__
out = {}
for where in sys.argv[2:]:
    ds = location.open_scores(where)
    values = {name: hashlib.sha256(np.ascontiguousarray(ds[name].values).tobytes()).hexdigest()
              for name in ds.variables}
    out[where] = {"values": values, "summary": json.loads(json.dumps(summarize(ds).to_dict(), default=str))}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory) -> Path:
    """The previous release's packages as tmp/scorebank/<pkg>, from ``git archive``."""
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{PREVIOUS}^{{commit}}"],
                      capture_output=True).returncode != 0:
        pytest.skip(f"git history with commit {PREVIOUS} is not available")
    root = tmp_path_factory.mktemp("previous")
    tar = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", PREVIOUS, *PACKAGES],
                         check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=tar, check=True)
    (root / "scorebank").mkdir()
    for pkg in PACKAGES:
        (root / pkg).rename(root / "scorebank" / pkg)
    return root


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """A store written by this code (both optional features, two runs, values in every
    variable kind), its archive and a merged store (string run coordinates)."""
    from scorebank.stores.archive import export_archive
    from scorebank.stores.create import create_store
    from scorebank.stores.merge import merge_stores
    from scorebank.stores.zarrstore import StoreWriter

    root = tmp_path_factory.mktemp("written")
    rng = np.random.default_rng(1)
    true = np.arange(N) % 4
    labels = np.where(rng.random(N) < 0.2, (true + 1) % 4, true)
    features = frozenset({S.FEATURE_GRAND, S.FEATURE_LABEL_NOISE})
    config = {"dataset": "toy", "epochs": 2, "record_epochs": [0, 1, 2], "grand_epochs": [0, 2]}
    path = root / "new.zarr"
    create_store(path, n_epochs=2, labels=labels, true_labels=true, original_index=np.arange(N) * 3,
                 seeds=(0, 1), features=features,
                 attrs={S.ATTR_CONFIG: json.dumps(config), S.ATTR_DATASET: "toy",
                        S.ATTR_FINGERPRINT: "toy-fp", S.ATTR_CLASS_NAMES: ["a", "b", "c", "d"]})
    with StoreWriter(path) as w:
        for seed in (0, 1):
            for epoch in range(3):
                per_example = {S.MARGIN: rng.normal(size=N).astype(np.float32),
                               S.EL2N: rng.random(N).astype(np.float32),
                               S.LOSS: rng.random(N).astype(np.float32),
                               S.CORRECT: rng.random(N) < 0.5}
                if epoch in (0, 2):
                    per_example[S.GRAND] = rng.random(N).astype(np.float32)
                if epoch:
                    per_example[S.TRAIN_CORRECT] = rng.random(N) < 0.5
                w.write_epoch(seed, epoch, per_example,
                              {S.TRAIN_ACCURACY: 0.5 + epoch / 10, S.TEST_ACCURACY: 0.25, S.RECORDED: True,
                               S.PRISTINE_ACCURACY: 0.75, S.CORRUPT_ACCURACY: 0.125, S.NORM_PRODUCT: 2.0})
            w.set_run_status(seed, S.RUN_COMPLETE)
    archive = export_archive(path, root / "new.scorebank.zip").path
    merged = merge_stores([path, archive], root / "merged.zarr", allow_duplicates=True).path
    return {"store": path, "archive": Path(archive), "merged": Path(merged)}


def _sha(values) -> str:
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def test_the_previous_release_reads_stores_written_now(previous_release, written):
    from scorebank.stores.location import open_scores
    from scorebank.stores.summary import summarize

    locations = [str(p) for p in written.values()]
    result = subprocess.run([sys.executable, "-c", READ_WITH_PREVIOUS, str(previous_release), *locations],
                            capture_output=True, text=True, env={"PYTHONPATH": str(previous_release),
                                                                 "PATH": "/usr/bin:/bin"},
                            cwd=previous_release)
    assert result.returncode == 0, result.stderr[-3000:]
    old = json.loads(result.stdout)
    for where in locations:
        ds = open_scores(where)
        shared = set(old[where]["values"]) & set(ds.variables)
        assert {S.MARGIN, S.GRAND, S.CORRUPT_ACCURACY, S.LABEL, S.RUN} <= shared
        assert shared == set(old[where]["values"])  # the old reader sees nothing we do not
        for name in shared:
            assert old[where]["values"][name] == _sha(ds[name].values), (where, name)
        now = json.loads(json.dumps(summarize(ds).to_dict(), default=str))
        for key, value in old[where]["summary"].items():
            if key == "config":  # read typed now: fields the store does not record read as defaults
                assert value.items() <= now[key].items(), where
            else:
                assert now[key] == value, (where, key)


def test_plain_xarray_reads_what_scorebank_reads(written):
    from scorebank.stores.location import open_scores

    for kind, where in written.items():
        store = zarr.storage.ZipStore(where, mode="r") if kind == "archive" else where
        plain = xr.open_zarr(store)
        ours = open_scores(where)
        assert set(plain.variables) == set(ours.variables)
        for name in ours.variables:
            assert _sha(plain[name].values) == _sha(ours[name].values), (kind, name)
