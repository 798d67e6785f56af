"""Finding examples with corrupted labels by their scores (Data Diet, Paul et al. 2021,
Sec. 4 and appendix E.2: corrupted examples have higher EL2N scores).

For a score averaged over runs, an example's *hardness* is the score when high values are
hard (EL2N, GraNd, loss, forgetting) and minus the score when low values are (margins).
Against the store's ``corrupted`` flags:

* **ROC AUC**: the probability that a corrupted example is harder than a clean one, ties
  counting one half (the Mann-Whitney statistic; 0.5 = chance, 1 = perfect).
* **precision at the noise rate**: of the ``n_c`` hardest examples, where ``n_c`` is the
  number of corrupted examples, the fraction that are corrupted (equal to the recall at
  that cut).  Equal hardness is broken by example index, lower first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import xarray as xr
from scipy.stats import rankdata

from scorebank.analysis import access
from scorebank.analysis.scores import ScoreSpec, average_scores, parse_score
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError, ScorebankError


def roc_auc(hardness: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``hardness`` for the boolean labels ``positive`` (Mann-Whitney U /
    (n_pos n_neg), average ranks for ties)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ScorebankError("ROC AUC needs both corrupted and clean examples")
    ranks = rankdata(hardness, method="average")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def precision_at(hardness: np.ndarray, positive: np.ndarray, n: int) -> float:
    """Fraction of positives among the ``n`` hardest (ties by lower index first)."""
    order = np.lexsort((np.arange(hardness.size), -np.asarray(hardness, dtype=np.float64)))
    return float(np.asarray(positive, dtype=bool)[order[:n]].mean()) if n > 0 else float("nan")


def noise_detection(store: access.StoreLike, specs: str | ScoreSpec | Sequence[str | ScoreSpec], *,
                    runs: Iterable[int] | None = None, reduce: str = "mean",
                    never_learned: str = "count", scheduler=None) -> xr.Dataset:
    """Data Diet Sec. 4 / E.2: how well each score, averaged over runs, finds the examples
    whose label was corrupted.

    Returns a Dataset over ``score`` with ``roc_auc`` and ``precision_at_noise_rate``, and
    scalars ``noise_rate`` and ``n_corrupted``.  Raises :class:`ScorebankError` when the
    store has no corrupted (or no clean) example."""
    ds = access.open_store(store)
    if S.CORRUPTED not in ds:
        raise ScorebankError("the store has no 'corrupted' flags; it was not made with label noise")
    corrupted = np.asarray(ds[S.CORRUPTED].values, dtype=bool)
    n_c = int(corrupted.sum())
    if n_c == 0 or n_c == corrupted.size:
        raise ScorebankError(
            f"noise detection needs both corrupted and clean examples; this store has {n_c} corrupted "
            f"of {corrupted.size} (make one with 'scorebank score --label-noise 0.1')")
    spec_list = [specs] if isinstance(specs, (str, ScoreSpec)) else list(specs)
    parsed = [parse_score(s) for s in spec_list]
    if not parsed:
        raise InvalidArgumentError("no score given; name at least one, e.g. el2n@10")
    avg = average_scores(ds, parsed, runs=runs, reduce=reduce, never_learned=never_learned,
                         scheduler=scheduler)
    auc, prec = [], []
    for spec in parsed:
        values = avg[str(spec)].values
        hardness = values if spec.high_is_hard else -values
        auc.append(roc_auc(hardness, corrupted))
        prec.append(precision_at(hardness, corrupted, n_c))
    names = [str(s) for s in parsed]
    out = xr.Dataset({"roc_auc": ("score", np.asarray(auc)),
                      "precision_at_noise_rate": ("score", np.asarray(prec)),
                      "noise_rate": ((), n_c / corrupted.size), "n_corrupted": ((), n_c)},
                     coords={"score": names})
    out.attrs.update(avg.attrs)
    return out
