"""AUM's own cut-off from threshold samples (Pleiss, Zhang, Elenberg & Weinberger 2020,
"Identifying mislabeled data using the area under the margin ranking", Sec. 3).

A store scored with ``score --threshold-samples`` holds ``threshold_sample``: ``N // (C + 1)``
examples trained under a fake class C (:mod:`scorebank.pipeline.threshold_samples`), mislabelled
by construction.  With ``aum@E`` averaged over runs (the mean over epochs 1..E of the in-flight
margin, a registry score):

* the **threshold** is the ``percentile``-th percentile (99 in the paper) of the threshold
  samples' AUM, by numpy's default linear interpolation;
* a real example (not a threshold sample) is **flagged** when its AUM is strictly **below**
  the threshold: it is learned no better than 99% of the examples known to be mislabelled.
  (The reference code, ``asappresearch/aum``'s ``generate_aum_details``, flags an example
  when more than 1% of the threshold samples have a larger AUM; both put the cut at the top
  1% of the threshold samples and differ only by the interpolation between two of them.)
* against the store's label noise: **precision** = flagged examples whose label noise changed
  the label / flagged, **recall** = the same / examples whose label noise changed the label.
  Threshold samples are left out of both (their ``corrupted`` is True because their label is
  the fake class, not because of label noise).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import xarray as xr

from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError

#: The paper's percentile of the threshold samples' AUM.
DEFAULT_PERCENTILE = 99.0
STRATEGY = "drop-aum-flagged"


class NoThresholdSamplesError(InvalidArgumentError):
    """The store was scored without threshold samples, so AUM has no cut-off of its own."""


def has_threshold_samples(ds: xr.Dataset) -> bool:
    return S.THRESHOLD_SAMPLE in ds.variables


def threshold_samples(ds: xr.Dataset) -> np.ndarray:
    """``(N,)`` bool: the store's threshold samples; :class:`NoThresholdSamplesError` (one line,
    saying how to make a store that has them) when it was scored without."""
    if not has_threshold_samples(ds):
        raise NoThresholdSamplesError(
            "this store has no AUM threshold samples (variable 'threshold_sample'); score one with "
            "'scorebank score --threshold-samples --store NEW.zarr' (with your other options)")
    return np.asarray(ds[S.THRESHOLD_SAMPLE].values, dtype=bool)


def real_examples(ds: xr.Dataset) -> np.ndarray:
    """``(N,)`` bool: the examples that are not threshold samples (every example of a store
    scored without them)."""
    if not has_threshold_samples(ds):
        return np.ones(int(ds.sizes[S.EXAMPLE]), dtype=bool)
    return ~np.asarray(ds[S.THRESHOLD_SAMPLE].values, dtype=bool)


def check_percentile(percentile) -> float:
    """``percentile`` as a float in (0, 100] (numpy scalars too), else one-line
    :class:`InvalidArgumentError`."""
    ok = isinstance(percentile, numbers.Real) and not isinstance(percentile, (bool, np.bool_))
    if not (ok and math.isfinite(percentile) and 0 < percentile <= 100):
        raise InvalidArgumentError(f"--percentile must be a number in (0, 100], got {percentile!r}; "
                                   "the paper uses 99")
    return float(percentile)


def aum_cutoff(aum: np.ndarray, is_threshold: np.ndarray, percentile: float = DEFAULT_PERCENTILE
               ) -> tuple[float, np.ndarray]:
    """``(threshold, flagged)``: the ``percentile``-th percentile of the threshold samples' AUM
    and the ``(N,)`` bool mask of real examples whose AUM is strictly below it."""
    aum = np.asarray(aum, dtype=np.float64)
    is_threshold = np.asarray(is_threshold, dtype=bool)
    if not is_threshold.any():
        raise NoThresholdSamplesError("the store has no threshold samples to take AUM's cut-off from")
    threshold = float(np.percentile(aum[is_threshold], check_percentile(percentile)))
    return threshold, ~is_threshold & (aum < threshold)


def noise_corrupted(ds: xr.Dataset) -> np.ndarray | None:
    """``(N,)`` bool: real examples whose label noise changed the label (threshold samples
    excluded), or None when the store has no label noise."""
    if S.CORRUPTED not in ds:
        return None
    corrupted = np.asarray(ds[S.CORRUPTED].values, dtype=bool) & real_examples(ds)
    return corrupted if corrupted.any() else None


@dataclass(frozen=True)
class AUMFlags:
    """``analyze aum``'s verdict (arrays over the ``example`` dimension)."""

    spec: str  # "aum@E"
    epoch: int
    percentile: float
    runs: tuple[int, ...]
    aum: np.ndarray  # (N,) float64, aum@E averaged over the runs
    threshold_sample: np.ndarray  # (N,) bool
    threshold: float
    flagged: np.ndarray  # (N,) bool, real examples with aum < threshold
    corrupted: np.ndarray | None  # (N,) bool, real examples changed by label noise; None without noise

    @property
    def n_flagged(self) -> int:
        return int(self.flagged.sum())

    @property
    def ranked(self) -> np.ndarray:
        """The flagged examples, lowest AUM first (ties by index)."""
        idx = np.flatnonzero(self.flagged)
        return idx[np.lexsort((idx, self.aum[idx]))].astype(np.int64)

    @property
    def true_positives(self) -> int | None:
        return None if self.corrupted is None else int((self.flagged & self.corrupted).sum())

    @property
    def precision(self) -> float | None:
        if self.corrupted is None:
            return None
        return self.true_positives / self.n_flagged if self.n_flagged else float("nan")

    @property
    def recall(self) -> float | None:
        return None if self.corrupted is None else self.true_positives / int(self.corrupted.sum())


def aum_flags(store, epoch: int | None = None, *, percentile: float = DEFAULT_PERCENTILE,
              runs: Iterable[int] | None = None, scheduler=None) -> AUMFlags:
    """AUM's threshold-sample cut-off on ``store`` (see the module docstring): ``aum@epoch``
    (default: the store's last epoch) averaged over ``runs`` (default: every completed run)."""
    from scorebank.analysis import access
    from scorebank.analysis.scores import average_scores

    percentile = check_percentile(percentile)
    ds = access.open_store(store)
    is_threshold = threshold_samples(ds)
    if epoch is None:
        epoch = int(access.epochs(ds).max())
    spec = f"aum@{int(epoch)}"
    avg = average_scores(ds, [spec], runs=runs, scheduler=scheduler)
    aum = np.asarray(avg[spec].values, dtype=np.float64)
    threshold, flagged = aum_cutoff(aum, is_threshold, percentile)
    return AUMFlags(spec, int(epoch), percentile, tuple(int(r) for r in avg.attrs["runs"]), aum, is_threshold,
                    threshold, flagged, noise_corrupted(ds))


def drop_manifest(result: AUMFlags, store, *, name: str | None = None):
    """A :class:`~scorebank.stores.manifest.Manifest` keeping every real example AUM did not
    flag (threshold samples are dropped too: their label is the fake class)."""
    from scorebank.analysis import access
    from scorebank.stores.manifest import Manifest, check_name, default_name, now_iso
    from scorebank.stores.zarrstore import scorebank_version

    ds = access.open_store(store)
    path = os.fspath(store) if not hasattr(store, "attrs") else str(ds.encoding.get("source", ""))
    if path and os.path.exists(path):
        path = os.path.abspath(path)
    labels = access.labels(ds)
    kept = np.flatnonzero(~result.flagged & ~result.threshold_sample).astype(np.int64)
    counts = np.bincount(labels[kept], minlength=access.n_classes(ds, labels))
    return Manifest(
        name=check_name(name) if name is not None else default_name(STRATEGY, "aum"), store=path,
        dataset=str(ds.attrs.get(S.ATTR_DATASET, "")), dataset_fingerprint=str(ds.attrs.get(S.ATTR_FINGERPRINT, "")),
        n_examples=int(labels.size), score=result.spec, runs=tuple(result.runs), strategy=STRATEGY,
        parameters={"method": "AUM below the percentile of the threshold samples' AUM (Pleiss et al. 2020)",
                    "percentile": result.percentile, "threshold": result.threshold,
                    "n_dropped": result.n_flagged, "n_threshold_samples_dropped": int(result.threshold_sample.sum())},
        indices=kept, counts_per_class={str(c): int(v) for c, v in enumerate(counts)},
        class_names=tuple(access.class_names(ds)), created=now_iso(), scorebank_version=scorebank_version())
