"""Confident learning on the stored out-of-fold probabilities (Northcutt, Jiang & Chuang,
JAIR 2021; the ``cleanlab`` package).

``scorebank holdout`` stores, per seed, every training example's softmax probabilities from
the K-fold model that did not train on it.  Averaged over the chosen seeds they are the
out-of-sample ``pred_probs`` confident learning needs, and with the store's training labels
(``label``, after label noise):

* :func:`label_quality`: ``cleanlab.rank.get_label_quality_scores`` with its default method
  (self-confidence: the out-of-fold probability of the given label), in [0, 1]; low =
  likely mislabelled.
* :func:`label_issues`: ``cleanlab.filter.find_label_issues`` with its defaults
  (``filter_by="prune_by_noise_rate"``: the confident joint estimates how many examples of
  each given class belong to each other class, and that many with the lowest margin are
  flagged), the flagged examples ranked by label quality (lowest first), and the suggested
  label of each (the class of highest out-of-fold probability).
* :func:`drop_manifest`: a selection manifest keeping every example not flagged.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from scorebank.analysis import access
from scorebank.stores import heldout as H
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError, ScorebankError

STRATEGY = "drop-label-issues"
SCORE = "label_quality"


@dataclass(frozen=True)
class LabelIssues:
    """Confident learning's verdict on a store (arrays over the ``example`` dimension)."""

    seeds: tuple[int, ...]  # holdout seeds whose probabilities were averaged
    folds: int
    labels: np.ndarray  # (N,) int64 training labels
    pred_probs: np.ndarray  # (N, C) float64, mean out-of-fold probabilities
    quality: np.ndarray  # (N,) float64 label quality, low = suspicious
    is_issue: np.ndarray  # (N,) bool
    ranked: np.ndarray  # (n_issues,) int64 flagged examples, lowest quality first
    suggested: np.ndarray  # (N,) int64 argmax of pred_probs
    cleanlab_version: str

    @property
    def n_issues(self) -> int:
        return int(self.ranked.size)


def _cleanlab():
    try:
        import cleanlab
        import cleanlab.filter
        import cleanlab.rank
    except ImportError:
        raise ScorebankError("confident learning needs the 'cleanlab' package; install it with "
                             "'pip install cleanlab'") from None
    return cleanlab


def holdout_probabilities(store, runs: Iterable[int] | None = None) -> tuple[np.ndarray, tuple[int, ...], int]:
    """``(pred_probs (N, C) float64, seeds, K)``: out-of-fold probabilities averaged over
    ``runs`` (holdout seeds; default: every seed whose folds are all done).  Raises
    :class:`ScorebankError` when the store has no holdout group or no finished seed, and
    :class:`InvalidArgumentError` for a seed it lacks or has not finished."""
    from scorebank.stores.location import open_group

    root, where = open_group(store)
    try:
        group = root[H.HOLDOUT_GROUP]
    except KeyError:
        raise ScorebankError(f"the store at {where.shown!r} has no out-of-fold probabilities; run "
                             "'scorebank holdout STORE --folds 5 --seeds 0-2' first") from None
    seeds = [int(s) for s in np.asarray(group[H.SEED][:])]
    done = np.asarray(group[H.FOLD_DONE][:], dtype=bool)  # (seed, fold)
    done = done[:len(seeds)]
    finished = [s for s, row in zip(seeds, done) if row.all()]
    if runs is None:
        if not finished:
            raise ScorebankError(f"no holdout seed of {where.shown!r} has all its folds done; finish one with "
                                 "'scorebank holdout STORE' (it resumes)")
        chosen = finished
    else:
        chosen = [int(r) for r in runs]
        if not chosen or len(set(chosen)) != len(chosen):
            raise InvalidArgumentError(f"bad holdout seed list {chosen!r}; name each seed once")
        bad = [s for s in chosen if s not in finished]
        if bad:
            raise InvalidArgumentError(f"holdout seed(s) {bad!r} of {where.shown!r} are missing or unfinished; "
                                       f"finished seeds: {finished!r}")
    probs = np.asarray(group[H.PROBABILITY][:], dtype=np.float64)  # (seed, N, C)
    rows = [seeds.index(s) for s in chosen]
    return probs[rows].mean(axis=0), tuple(chosen), int(done.shape[1])


def _labels(store) -> tuple[np.ndarray, object]:
    ds = access.open_store(store)
    return access.labels(ds), ds


def label_quality(store, runs: Iterable[int] | None = None) -> np.ndarray:
    """``(N,)`` float64: cleanlab's label quality score (default method, self-confidence) of
    every training example from the mean out-of-fold probabilities; low = likely wrong label."""
    cl = _cleanlab()
    pred_probs, _, _ = holdout_probabilities(store, runs)
    labels, _ = _labels(store)
    return np.asarray(cl.rank.get_label_quality_scores(labels, pred_probs), dtype=np.float64)


def label_issues(store, runs: Iterable[int] | None = None) -> LabelIssues:
    """Run ``cleanlab.filter.find_label_issues`` and ``cleanlab.rank.get_label_quality_scores``
    (their default methods) on the mean out-of-fold probabilities of ``store``."""
    cl = _cleanlab()
    pred_probs, seeds, folds = holdout_probabilities(store, runs)
    labels, _ = _labels(store)
    if pred_probs.shape[0] != labels.size:
        raise ScorebankError(f"the holdout group has {pred_probs.shape[0]} examples but the store {labels.size}")
    missing = np.setdiff1d(np.arange(pred_probs.shape[1]), labels)
    if missing.size:
        raise ScorebankError(f"class(es) {missing.tolist()!r} have no training example; confident learning "
                             "needs every class present")
    quality = np.asarray(cl.rank.get_label_quality_scores(labels, pred_probs), dtype=np.float64)
    is_issue = np.asarray(cl.filter.find_label_issues(labels, pred_probs, n_jobs=1), dtype=bool)
    flagged = np.flatnonzero(is_issue)
    ranked = flagged[np.lexsort((flagged, quality[flagged]))]  # lowest quality first, ties by index
    return LabelIssues(seeds, folds, labels, pred_probs, quality, is_issue, ranked.astype(np.int64),
                       pred_probs.argmax(axis=1).astype(np.int64), str(cl.__version__))


def drop_manifest(issues: LabelIssues, store, *, name: str | None = None):
    """A :class:`~scorebank.stores.manifest.Manifest` keeping every example of ``store`` that
    confident learning did not flag (write it with
    :func:`scorebank.stores.manifest.write_manifest`, record it with ``record_manifest``)."""
    from scorebank.stores.manifest import Manifest, check_name, default_name, now_iso
    from scorebank.stores.zarrstore import scorebank_version

    ds = access.open_store(store)
    path = os.fspath(store) if not hasattr(store, "attrs") else str(ds.encoding.get("source", ""))
    if path and os.path.exists(path):
        path = os.path.abspath(path)
    kept = np.flatnonzero(~issues.is_issue).astype(np.int64)
    counts = np.bincount(issues.labels[kept], minlength=access.n_classes(ds, issues.labels))
    return Manifest(
        name=check_name(name) if name is not None else default_name(STRATEGY, SCORE), store=path,
        dataset=str(ds.attrs.get(S.ATTR_DATASET, "")), dataset_fingerprint=str(ds.attrs.get(S.ATTR_FINGERPRINT, "")),
        n_examples=int(issues.labels.size), score=SCORE, runs=tuple(issues.seeds), strategy=STRATEGY,
        parameters={"method": "cleanlab.filter.find_label_issues", "filter_by": "prune_by_noise_rate",
                    "pred_probs": f"mean out-of-fold probabilities of {issues.folds}-fold holdout seeds",
                    "holdout_seeds": list(issues.seeds), "folds": issues.folds, "n_dropped": issues.n_issues,
                    "cleanlab_version": issues.cleanlab_version},
        indices=kept, counts_per_class={str(c): int(v) for c, v in enumerate(counts)},
        class_names=tuple(access.class_names(ds)), created=now_iso(), scorebank_version=scorebank_version())
