"""Finding examples with corrupted labels by their scores (Data Diet, Paul et al. 2021,
Sec. 4 and appendix E.2: corrupted examples have higher EL2N scores).

For a score averaged over runs, an example's *hardness* is the score when high values are
hard (EL2N, GraNd, loss, forgetting) and minus the score when low values are (margins).
Against the store's ``corrupted`` flags:

* **ROC AUC**: the probability that a corrupted example is harder than a clean one, ties
  counting one half (the Mann-Whitney statistic; 0.5 = chance, 1 = perfect).
* **average precision** (AUPRC): ``sum_n (R_n - R_{n-1}) P_n`` over the distinct hardness
  values from the hardest down, ``P_n``/``R_n`` the precision/recall of flagging every example
  at least that hard (scikit-learn's ``average_precision_score``; chance = the noise rate).
* **precision and recall at the noise rate**: of the ``n_c`` hardest examples, where ``n_c``
  is the number of corrupted examples, the fraction that are corrupted, and the fraction of
  corrupted examples among them (equal at that cut).  Equal hardness is broken by example
  index, lower first.
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


def average_precision(hardness: np.ndarray, positive: np.ndarray) -> float:
    """Average precision of ``hardness`` for the boolean labels ``positive``: the step-wise
    area under the precision-recall curve, one step per distinct hardness value (ties flagged
    together), as scikit-learn's ``average_precision_score``."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    if n_pos == 0:
        raise ScorebankError("average precision needs at least one corrupted example")
    precision, recall = precision_recall_curve(hardness, positive)
    return float(np.sum(np.diff(np.concatenate(([0.0], recall))) * precision))


def precision_recall_curve(hardness: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) of flagging every example at least as hard as each distinct
    hardness value, hardest first (ties flagged together)."""
    h = np.asarray(hardness, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-h, kind="stable")
    h, pos = h[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(h) != 0), h.size - 1]  # the last index of each tie group
    tp = np.cumsum(pos)[last]
    flagged = last + 1
    return tp / flagged, tp / max(1, int(positive.sum()))


def roc_curve(hardness: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) of flagging every example at least as hard as
    each distinct hardness value, from (0, 0), hardest first (ties flagged together)."""
    h = np.asarray(hardness, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-h, kind="stable")
    h, pos = h[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(h) != 0), h.size - 1]
    tp, fp = np.cumsum(pos)[last], np.cumsum(~pos)[last]
    return (np.r_[0.0, fp / max(1, int((~positive).sum()))], np.r_[0.0, tp / max(1, int(positive.sum()))])


def noise_detection(store: access.StoreLike, specs: str | ScoreSpec | Sequence[str | ScoreSpec], *,
                    runs: Iterable[int] | None = None, reduce: str = "mean",
                    never_learned: str = "count", scheduler=None) -> xr.Dataset:
    """Data Diet Sec. 4 / E.2: how well each score, averaged over runs, finds the examples
    whose label was corrupted.

    Returns a Dataset over ``score`` with ``roc_auc``, ``average_precision``,
    ``precision_at_noise_rate`` and ``recall_at_noise_rate``, ``hardness`` (score, example: the
    averaged score, negated where low is hard), and scalars ``noise_rate`` and ``n_corrupted``.  Raises :class:`ScorebankError` when the
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
    auc, prec, ap, hard = [], [], [], []
    for spec in parsed:
        values = avg[str(spec)].values
        hardness = values if spec.high_is_hard else -values
        hard.append(hardness)
        auc.append(roc_auc(hardness, corrupted))
        prec.append(precision_at(hardness, corrupted, n_c))
        ap.append(average_precision(hardness, corrupted))
    names = [str(s) for s in parsed]
    out = xr.Dataset({"roc_auc": ("score", np.asarray(auc)),
                      "average_precision": ("score", np.asarray(ap)),
                      "precision_at_noise_rate": ("score", np.asarray(prec)),
                      # n_c flagged, n_c corrupted: recall = true positives / n_c = precision
                      "recall_at_noise_rate": ("score", np.asarray(prec)),
                      "hardness": (("score", S.EXAMPLE), np.asarray(hard, dtype=np.float64)),
                      S.CORRUPTED: (S.EXAMPLE, corrupted),
                      "noise_rate": ((), n_c / corrupted.size), "n_corrupted": ((), n_c)},
                     coords={"score": names})
    out.attrs.update(avg.attrs)
    return out
