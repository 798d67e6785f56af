"""Confident learning's own cut-off as a registry field: ``cleanlab.filter.find_label_issues`` on
the mean out-of-fold probabilities, read here from the holdout group with plain zarr."""

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("cleanlab")

import scorebank.analysis.heldout_scores  # noqa: E402,F401  (registers the scores)
from scorebank.analysis.own_thresholds import cleanlab_label_issues  # noqa: E402

# runs 1 and 2, out-of-fold probabilities (3 folds, 1 seed): the shared store of the held-out tests
STORE_CONFIG = dict(epochs=2, label_noise=0.2)
STORE_BUILD = dict(seeds=(1, 2), holdout=(3, (0,)))


@pytest.fixture
def store(base_store):
    return base_store


def test_flags_are_find_label_issues_on_the_mean_out_of_fold_probabilities(store):
    import cleanlab.filter
    import zarr

    probs = np.asarray(zarr.open_group(str(store), mode="r")["holdout"]["probability"][:], dtype=np.float64)
    ds = xr.open_zarr(store)
    labels = ds["label"].values
    want = cleanlab.filter.find_label_issues(labels, probs.mean(axis=0), n_jobs=1)
    got = cleanlab_label_issues(ds, np.zeros(labels.size))
    np.testing.assert_array_equal(got.flagged, want)
    assert got.rule == "cleanlab find_label_issues" and got.flagged.any()


def test_no_cutoff_without_a_holdout_group_or_a_path(store, digits_store, config):
    plain = digits_store(config, seeds=(1, 2), copy_to=None)  # the same store before holdout ran
    ds = xr.open_zarr(plain)
    n = ds.sizes["example"]
    assert cleanlab_label_issues(ds, np.zeros(n)) is None
    in_memory = xr.Dataset({"label": xr.open_zarr(store)["label"].load()})  # no path to read holdout/ from
    assert cleanlab_label_issues(in_memory, np.zeros(n)) is None


def test_label_quality_declares_cleanlabs_cut_as_its_own_threshold():
    from scorebank.analysis.registry import SCORES

    assert SCORES.get("label_quality").own_threshold is cleanlab_label_issues
