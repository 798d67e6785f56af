"""label_quality and memorization as registry scores: averaged, correlated and compared in
``noise_detection`` like any score, with values equal to the libraries' own."""

import numpy as np
import pytest

pytest.importorskip("cleanlab")

import scorebank.analysis.heldout_scores  # noqa: E402,F401  (registers the scores)
from scorebank.analysis.label_issues import label_quality  # noqa: E402
from scorebank.analysis.memorization import memorization_score  # noqa: E402
from scorebank.analysis.noise import noise_detection, roc_auc  # noqa: E402
from scorebank.analysis.scores import average_scores, parse_score  # noqa: E402


# runs 1 and 2, out-of-fold probabilities (3 folds, 1 seed) and 20 subset models keeping 70%
STORE_CONFIG = dict(epochs=2, label_noise=0.2)
STORE_BUILD = dict(seeds=(1, 2), holdout=(3, (0,)), memorization=(20, 0.7))


@pytest.fixture
def store(base_store):  # the shared store of tests/conftest.py (only read), not tests/analysis/conftest.py's
    return base_store


def test_registry_entries_say_which_end_is_hard():
    assert parse_score("label_quality").high_is_hard is False
    assert parse_score("memorization").high_is_hard is True


def test_averaged_scores_are_the_held_out_values(store):
    avg = average_scores(store, ["label_quality", "memorization", "el2n@2"])
    np.testing.assert_array_equal(avg["label_quality"].values, label_quality(store))
    np.testing.assert_array_equal(avg["memorization"].values, memorization_score(store))
    assert avg.attrs["runs"] == [1, 2]


def test_noise_detection_ranks_low_quality_and_high_memorisation_as_suspicious(store):
    import xarray as xr

    out = noise_detection(store, ["label_quality", "memorization"])
    corrupted = xr.open_zarr(store)["corrupted"].values
    assert out["roc_auc"].sel(score="label_quality") == roc_auc(-label_quality(store), corrupted)
    assert out["roc_auc"].sel(score="memorization") == roc_auc(memorization_score(store), corrupted)
