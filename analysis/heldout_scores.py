"""The held-out scores as entries of the score registry (:mod:`scorebank.analysis.registry`),
so ``select``, ``analyze noise``, ``analyze correlation`` and the rest take them like any score.

``label_quality``
    confident learning's label quality (cleanlab's default, self-confidence) from the mean
    out-of-fold probabilities of ``scorebank holdout`` (:mod:`.label_issues`); low = likely
    mislabelled.
``memorization``
    Feldman & Zhang's memorisation estimate from ``scorebank memorization``
    (:mod:`.memorization`); high = memorised (atypical or mislabelled).

Both come from models trained on subsets, not from the scoring runs: they have no epoch and
do not depend on ``--runs`` (each chosen run gets the same values, so averaging over runs
leaves them unchanged).  They are read lazily, when the analysis computes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import dask
import dask.array as da
import numpy as np
import xarray as xr

from scorebank.analysis.label_issues import label_quality
from scorebank.analysis.memorization import memorization_score
from scorebank.analysis.own_thresholds import cleanlab_label_issues
from scorebank.analysis.registry import EPOCH_NONE, score
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError


def _location(ds: xr.Dataset) -> str:
    source = ds.encoding.get("source")
    if not source:
        raise InvalidArgumentError("held-out scores are read from the store's groups; open the store by its path "
                                   "(scorebank.analysis.access.open_store(PATH)), not as a Dataset built in memory")
    return str(source)


def _per_run(read: Callable[[str], np.ndarray], ds: xr.Dataset, seeds: Sequence[int]) -> da.Array:
    """The lazy (run, example) array holding the store's held-out values in every run."""
    n = int(ds.sizes[S.EXAMPLE])
    values = da.from_delayed(dask.delayed(read)(_location(ds)), shape=(n,), dtype=np.float64)  # (example,)
    return da.broadcast_to(values[None, :], (len(seeds), n))  # (run, example)


@score("label_quality", high_is_hard=False, variables=(), epoch=EPOCH_NONE, own_threshold=cleanlab_label_issues,
       help="confident learning's label quality (cleanlab, self-confidence) from the out-of-fold probabilities "
            "of 'scorebank holdout'")
def _label_quality(ds, seeds, epoch, options):
    return _per_run(label_quality, ds, seeds)


@score("memorization", high_is_hard=True, variables=(), epoch=EPOCH_NONE,
       help="memorisation P(correct | in subset) - P(correct | held out) (Feldman & Zhang) from "
            "'scorebank memorization'")
def _memorization(ds, seeds, epoch, options):
    return _per_run(memorization_score, ds, seeds)
