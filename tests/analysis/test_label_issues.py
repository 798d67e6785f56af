"""Confident learning on stored out-of-fold probabilities: the mean over seeds, cleanlab's
verdict against calling it directly, label quality as self-confidence, the manifest."""

import shutil

import numpy as np
import pytest
import xarray as xr
import zarr

cleanlab = pytest.importorskip("cleanlab")

from scorebank.analysis.label_issues import (drop_manifest, holdout_probabilities, label_issues,  # noqa: E402
                                             label_quality)
from scorebank.stores.errors import InvalidArgumentError, ScorebankError  # noqa: E402
from scorebank.stores.manifest import read_manifest, write_manifest  # noqa: E402


# ``base_store`` / ``store`` (tests/conftest.py): scored, then out-of-fold probabilities of 2 seeds, 3 folds
STORE_CONFIG = dict(epochs=3, label_noise=0.2)
STORE_BUILD = dict(holdout=(3, (0, 1)))


@pytest.fixture
def store(module_store):  # not tests/analysis/conftest.py's
    return module_store


def stored(path):
    probs = xr.open_zarr(path, group="holdout")["probability"].values.astype(np.float64)  # (seed, N, C)
    labels = xr.open_zarr(path)["label"].values
    return probs, labels


def test_label_issues_are_cleanlabs_on_the_mean_probabilities(base_store):
    import cleanlab.filter

    probs, labels = stored(base_store)
    mean = (probs[0] + probs[1]) / 2
    issues = label_issues(base_store)
    assert issues.seeds == (0, 1) and issues.folds == 3
    np.testing.assert_array_equal(issues.pred_probs, mean)
    expected = cleanlab.filter.find_label_issues(labels, mean)
    np.testing.assert_array_equal(issues.is_issue, expected)
    # the default method is self-confidence: the probability of the given label
    np.testing.assert_allclose(issues.quality, mean[np.arange(labels.size), labels], rtol=1e-12)
    np.testing.assert_array_equal(issues.suggested, mean.argmax(1))
    assert sorted(issues.ranked.tolist()) == np.flatnonzero(expected).tolist()
    q = issues.quality[issues.ranked]
    assert (np.diff(q) >= 0).all()
    # with label noise, confident learning finds mostly corrupted examples
    corrupted = xr.open_zarr(base_store)["corrupted"].values
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(corrupted, -issues.quality) > 0.8
    np.testing.assert_array_equal(label_quality(base_store), issues.quality)


def test_one_seed(base_store):
    probs, labels = stored(base_store)
    pred, seeds, folds = holdout_probabilities(base_store, [1])
    assert seeds == (1,) and folds == 3
    np.testing.assert_array_equal(pred, probs[1])


def test_manifest_drops_the_flagged_examples(base_store, tmp_path):
    issues = label_issues(base_store)
    manifest = drop_manifest(issues, base_store, name="clean")
    path = write_manifest(tmp_path / "keep.json", manifest)
    back = read_manifest(path, expected_fingerprint=xr.open_zarr(base_store).attrs["dataset_fingerprint"],
                         n_examples=200)
    assert back.indices.tolist() == np.flatnonzero(~issues.is_issue).tolist()
    assert back.n_kept == 200 - issues.n_issues
    assert back.strategy == "drop-label-issues" and back.score == "label_quality" and back.runs == (0, 1)
    assert back.parameters["folds"] == 3 and back.parameters["n_dropped"] == issues.n_issues


def test_unfinished_and_unknown_seeds(store):
    group = zarr.open_group(store / "holdout", mode="r+")
    group["fold_done"][1, 2] = False
    assert label_issues(store).seeds == (0,)
    with pytest.raises(InvalidArgumentError, match=r"seed\(s\) \[1\]"):
        label_issues(store, [1])
    with pytest.raises(InvalidArgumentError, match=r"seed\(s\) \[7\]"):
        holdout_probabilities(store, [0, 7])
    group["fold_done"][0, 0] = False
    with pytest.raises(ScorebankError, match="no holdout seed"):
        label_issues(store)


def test_store_without_holdout(store):
    from scorebank.stores.create import consolidate

    shutil.rmtree(store / "holdout")
    consolidate(store)
    with pytest.raises(ScorebankError, match="scorebank holdout"):
        label_issues(store)
