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
* **at the score's own threshold**, for scores whose registry entry declares one
  (``own_threshold``: AUM's 99th percentile of the threshold samples' AUM, confident
  learning's ``find_label_issues``): the number of examples the rule flags, the fraction of
  them that are corrupted (precision) and the fraction of corrupted examples flagged (recall);
  NaN for the other scores and where the store lacks what the rule needs.

AUM's threshold samples (``score --threshold-samples``) are not evaluated: their label is the
fake class by construction (so their ``corrupted`` is True), and they are not among the
examples whose labels the noise corrupted.  Every number above is over the other examples.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import xarray as xr
from scipy.stats import rankdata

from scorebank.analysis import access
from scorebank.analysis.aum import real_examples
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
    ``precision_at_noise_rate`` and ``recall_at_noise_rate``, the own-threshold columns
    ``own_n_flagged``, ``own_precision``, ``own_recall`` (NaN where the score has none) and
    ``own_rule`` ('' where none), ``hardness`` (score, example: the averaged score, negated
    where low is hard), and scalars ``noise_rate``, ``n_corrupted`` and
    ``n_threshold_samples``.  The ``example`` dimension holds the evaluated examples (every
    example but AUM's threshold samples).  Raises :class:`ScorebankError` when the store has
    no corrupted (or no clean) example."""
    ds = access.open_store(store)
    if S.CORRUPTED not in ds:
        raise ScorebankError("the store has no 'corrupted' flags; it was not made with label noise")
    real = real_examples(ds)  # (N,) bool: not a threshold sample
    corrupted = np.asarray(ds[S.CORRUPTED].values, dtype=bool)[real]
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
    own = {"own_n_flagged": [], "own_precision": [], "own_recall": [], "own_rule": []}
    for spec in parsed:
        values = avg[str(spec)].values  # (N,) every example
        hardness = (values if spec.high_is_hard else -values)[real]
        hard.append(hardness)
        auc.append(roc_auc(hardness, corrupted))
        prec.append(precision_at(hardness, corrupted, n_c))
        ap.append(average_precision(hardness, corrupted))
        for key, value in own_threshold_metrics(ds, spec, values, real, corrupted).items():
            own[key].append(value)
    names = [str(s) for s in parsed]
    out = xr.Dataset({"roc_auc": ("score", np.asarray(auc)),
                      "average_precision": ("score", np.asarray(ap)),
                      "precision_at_noise_rate": ("score", np.asarray(prec)),
                      # n_c flagged, n_c corrupted: recall = true positives / n_c = precision
                      "recall_at_noise_rate": ("score", np.asarray(prec)),
                      **{k: ("score", np.asarray(v, dtype=np.float64)) for k, v in own.items() if k != "own_rule"},
                      "own_rule": ("score", np.asarray(own["own_rule"], dtype=object)),
                      "hardness": (("score", S.EXAMPLE), np.asarray(hard, dtype=np.float64)),
                      S.CORRUPTED: (S.EXAMPLE, corrupted),
                      "noise_rate": ((), n_c / corrupted.size), "n_corrupted": ((), n_c),
                      "n_threshold_samples": ((), int((~real).sum()))},
                     coords={"score": names, S.EXAMPLE: np.flatnonzero(real)})
    out.attrs.update(avg.attrs)
    return out


def own_threshold_metrics(ds: xr.Dataset, spec: ScoreSpec, values: np.ndarray, real: np.ndarray,
                          corrupted: np.ndarray) -> dict:
    """``{own_n_flagged, own_precision, own_recall, own_rule}`` of ``spec``'s own cut-off (its
    registry entry's ``own_threshold``) on the evaluated examples ``real`` (``corrupted`` is over
    them); NaN and '' where the score has no cut-off or the store lacks what it needs.
    Precision of an empty flagged set is NaN."""
    rule = spec.kind.own_threshold
    verdict = None if rule is None else rule(ds, values)
    if verdict is None:
        return {"own_n_flagged": float("nan"), "own_precision": float("nan"), "own_recall": float("nan"),
                "own_rule": ""}
    flagged = np.asarray(verdict.flagged, dtype=bool)[real]
    hits = int((flagged & corrupted).sum())
    n_flagged = int(flagged.sum())
    return {"own_n_flagged": float(n_flagged), "own_precision": hits / n_flagged if n_flagged else float("nan"),
            "own_recall": hits / int(corrupted.sum()), "own_rule": verdict.rule}
