"""Scores' own cut-offs: which examples a method itself flags, next to the rankings that
``analyze noise`` evaluates at every cut.  A score registry entry declares its cut-off as
``own_threshold`` (:mod:`scorebank.analysis.registry`), a function ``(ds, values) ->
OwnThreshold | None`` of the store and the score averaged over runs (``(N,)`` float64), None
where the store lacks what the cut-off needs (``analyze noise`` then shows "-").

* AUM (Pleiss et al. 2020): real examples whose AUM is below the 99th percentile of the
  threshold samples' AUM (:mod:`scorebank.analysis.aum`); needs a store scored with
  ``--threshold-samples``.
* label quality (confident learning): the examples cleanlab's ``find_label_issues`` flags on
  the out-of-fold probabilities (:mod:`scorebank.analysis.label_issues`); needs the store's
  ``holdout/`` group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from scorebank.analysis import aum
from scorebank.stores import schema as S


@dataclass(frozen=True)
class OwnThreshold:
    """The examples a score's own rule flags."""

    flagged: np.ndarray  # (N,) bool
    rule: str  # what was flagged, for tables and JSON
    cutoff: float | None = None  # the score value of the cut, when the rule is one


def aum_threshold_samples(ds: xr.Dataset, values: np.ndarray) -> OwnThreshold | None:
    """AUM's cut-off: real examples below the 99th percentile of the threshold samples' AUM
    (``values`` is AUM averaged over the runs); None for a store without threshold samples."""
    if not aum.has_threshold_samples(ds):
        return None
    threshold, flagged = aum.aum_cutoff(values, np.asarray(ds[S.THRESHOLD_SAMPLE].values, dtype=bool),
                                        aum.DEFAULT_PERCENTILE)
    return OwnThreshold(flagged, f"AUM < {aum.DEFAULT_PERCENTILE:g}th percentile of the threshold samples' AUM",
                        threshold)


def cleanlab_label_issues(ds: xr.Dataset, values: np.ndarray) -> OwnThreshold | None:
    """Confident learning's cut: ``cleanlab.filter.find_label_issues`` on the store's mean
    out-of-fold probabilities (every finished holdout seed); None when the store has no
    ``holdout/`` group or is an in-memory Dataset (no path to read the group from)."""
    from scorebank.analysis.label_issues import label_issues
    from scorebank.stores import heldout as H
    from scorebank.stores.location import open_group

    source = ds.encoding.get("source")
    if not source:
        return None
    root, _ = open_group(str(source))
    if H.HOLDOUT_GROUP not in root:
        return None
    issues = label_issues(str(source))
    return OwnThreshold(np.asarray(issues.is_issue, dtype=bool), "cleanlab find_label_issues")
