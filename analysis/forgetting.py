"""Forgetting events (Toneva et al. 2019, "An empirical study of example forgetting during
deep neural network learning", as used by Data Diet, Paul et al. 2021, Sec. 2.3).

A *forgetting event* of an example is a transition from classified correctly to
misclassified between two consecutive presentations of the example in training.  The
store's ``train_correct[run, e, x]`` is the in-flight decision when ``x`` was presented in
a minibatch during epoch ``e`` (before that step's update), so the presentations of a run
are its completed epochs ``e >= 1``, and

    forgetting events = #{e : train_correct[e-1] and not train_correct[e]},

counted over pairs of consecutive epochs that are both completed (epoch 0 is no
presentation; an epoch missing between two completed ones breaks the pair).

Examples never classified correctly in any presentation have no defined count.  Toneva et
al. and Data Diet rank them as the most forgotten (infinitely often).  Here their score is
``P + 1`` by default, where ``P`` is the run's number of presentations: larger than any
possible count (at most ``P // 2``), finite so that averages over runs stay informative;
``never_learned="inf"`` gives the Data Diet convention (score ``inf``).

The epoch from which an example *stays learned* is the first presentation after its last
misclassified presentation (the first presentation if it was never misclassified), or
:data:`~scorebank.analysis.access.NEVER` (-1) when it is misclassified at the last one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import dask.array as da
import numpy as np
import xarray as xr

from scorebank.analysis import access
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError

NEVER_LEARNED = ("count", "inf")


def check_never_learned(never_learned: str) -> str:
    if never_learned not in NEVER_LEARNED:
        raise InvalidArgumentError(
            f"never_learned {never_learned!r} is not accepted; use 'count' (presentations + 1) "
            "or 'inf' (the Data Diet convention)")
    return never_learned


@dataclass(frozen=True)
class LazyForgetting:
    """The Dask graph of the forgetting statistics of some runs (arrays are (run, example))."""

    seeds: list[int]
    epochs: np.ndarray  # the epochs considered (1..last)
    presented: np.ndarray  # (run, epoch) bool
    events: da.Array  # unsigned, the smallest type holding the last epoch
    ever_correct: da.Array  # bool
    last_correct: da.Array  # bool: correct at the run's last presentation
    last_wrong: da.Array  # last misclassified presentation epoch, 0 if none (unsigned, as events)

    @property
    def presentations(self) -> np.ndarray:
        return self.presented.sum(axis=1).astype(np.int64)

    def score(self, never_learned: str = "count") -> da.Array:
        """Per-run forgetting score (float64): events, never-learned examples P + 1 or inf."""
        check_never_learned(never_learned)
        fill = (np.inf if never_learned == "inf"
                else (self.presentations + 1).astype(np.float64))
        fill = np.broadcast_to(np.asarray(fill, dtype=np.float64), (len(self.seeds),))[:, None]
        return da.where(self.ever_correct, self.events.astype(np.float64), fill)


def lazy_forgetting(ds: xr.Dataset, seeds: list[int], last_epoch: int | None = None) -> LazyForgetting:
    """Build (without computing) the forgetting statistics of ``seeds`` over epochs
    ``1..last_epoch`` (default: every completed epoch of each run).

    With ``last_epoch`` every run must have completed epochs 1..last_epoch; without, every
    run must have completed at least epoch 1."""
    ep = access.epochs(ds)
    completed = access.completed_mask(ds, seeds)
    top = int(ep.max()) if ep.size else 0
    if last_epoch is not None:
        last_epoch = int(last_epoch)
        if last_epoch < 1 or last_epoch > top:
            raise InvalidArgumentError(
                f"forgetting@{last_epoch!r} is out of range; forgetting counts over epochs "
                f"1..E with 1 <= E <= {top} (the store's last epoch)")
    sel = (ep >= 1) if last_epoch is None else ((ep >= 1) & (ep <= last_epoch))
    pos = np.flatnonzero(sel)
    presented = completed[:, pos]
    if last_epoch is not None:
        missing = [s for s, p in zip(seeds, presented) if not p.all()]
        if missing:
            common = [int(e) for e in ep[pos][presented.all(axis=0)]]
            raise InvalidArgumentError(
                f"forgetting@{last_epoch} needs epochs 1..{last_epoch} completed, but run(s) "
                f"{missing!r} have not completed them; epochs >= 1 completed in all chosen runs: "
                f"{access.format_epochs(common)}")
    none = [s for s, p in zip(seeds, presented) if not p.any()]
    if none:
        raise InvalidArgumentError(
            f"run(s) {none!r} have no completed training epoch (>= 1), so no forgetting "
            "statistics; choose other --runs")
    x = access.select(ds, S.TRAIN_CORRECT, runs=access.run_positions(ds, seeds), epochs=pos)
    # x (run, epoch, example) -> state (run, epoch block, 6, example): one row per quantity,
    # so every quantity is a contiguous row of the block
    # every state value (0/1, events, an epoch) is at most the last epoch: the smallest
    # unsigned type that holds it (one byte per value up to epoch 255)
    kind = np.min_scalar_type(max(1, int(ep[pos].max())))
    state = da.map_blocks(_block_state, x, presented, ep[pos].astype(np.int64), dtype=kind, kind=kind,
                          new_axis=[2], chunks=(x.chunks[0], (1,) * len(x.chunks[1]), (_NSTATE,), x.chunks[2]),
                          meta=np.empty((0, 0, 0, 0), dtype=kind))
    bounds = np.cumsum(x.chunks[1])[:-1]  # first position of every epoch block but the first
    joins = presented[:, bounds - 1] & presented[:, bounds]  # (run, blocks - 1)
    state = state.rechunk({1: -1})
    # (run, all epoch blocks, 6, example) -> (run, 4, example)
    folded = da.map_blocks(_fold_states, state, joins, dtype=kind, drop_axis=[1],
                           chunks=(state.chunks[0], (_NFOLDED,), state.chunks[3]),
                           meta=np.empty((0, 0, 0), dtype=kind))
    events, ever_correct, last_correct, last_wrong = (folded[:, i, :] for i in range(_NFOLDED))
    return LazyForgetting(list(seeds), ep[pos], presented, events, ever_correct.astype(bool),
                          last_correct.astype(bool), last_wrong)


# per-block state: events, first value, last value, ever correct, correct at the run's last
# presentation, last misclassified presentation epoch (0 = none)
_NSTATE = 6
# folded per run: events, ever correct, correct at the last presentation, last wrong epoch
_NFOLDED = 4


def _count_drops(xb: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Per column of the (e, n) bool block ``xb``: how many rows ``i`` of ``pairs`` have
    ``xb[i]`` True and ``xb[i + 1]`` False (forgetting events), counted one pair at a time
    in the smallest unsigned type that holds ``len(pairs)`` (a few bytes per example,
    instead of an int32 copy of the block)."""
    acc = np.zeros(xb.shape[1], dtype=np.min_scalar_type(pairs.size))
    drop = np.empty(xb.shape[1], dtype=bool)
    for i in pairs:
        np.greater(xb[i], xb[i + 1], out=drop)  # True > False: correct, then wrong
        acc += drop
    return acc


def _last_false(seen: np.ndarray) -> np.ndarray:
    """Per column of the (k, n) bool block ``seen``: 1 + the last row that is False, 0 if
    none, in the smallest unsigned type that holds ``k`` (rows in order, so a running
    maximum of ``(row + 1) * not seen[row]``)."""
    k, n = seen.shape
    acc = np.zeros(n, dtype=np.min_scalar_type(k))
    wrong = np.empty(n, dtype=bool)
    tmp = np.empty(n, dtype=acc.dtype)
    for j in range(k):
        np.logical_not(seen[j], out=wrong)
        np.multiply(wrong, acc.dtype.type(j + 1), out=tmp)
        np.maximum(acc, tmp, out=acc)
    return acc


def _block_state(x: np.ndarray, presented: np.ndarray, epoch_values: np.ndarray, kind=np.int32,
                 block_info=None) -> np.ndarray:
    """Forgetting state of one (1 run, e epochs, n examples) block of train_correct:
    (1, 1, 6, n) of dtype ``kind``, one row per quantity (:data:`_NSTATE`)."""
    (r0, _), (e0, e1), _ = block_info[0]["array-location"]
    xb = x[0]
    p_all = presented[r0]
    p = p_all[e0:e1]
    n = xb.shape[1]
    out = np.zeros((1, 1, _NSTATE, n), dtype=kind)
    pairs = np.flatnonzero(p[:-1] & p[1:])
    if pairs.size:
        out[0, 0, 0] = _count_drops(xb, pairs)
    out[0, 0, 1] = xb[0]
    out[0, 0, 2] = xb[-1]
    rows = np.flatnonzero(p)
    if rows.size:
        seen = xb if rows.size == xb.shape[0] else xb[rows]
        out[0, 0, 3] = seen.any(axis=0)
        last = np.flatnonzero(p_all)[-1]
        if e0 <= last < e1:
            out[0, 0, 4] = xb[last - e0]
        # the epoch of the last misclassified presentation, 0 if none
        out[0, 0, 5] = np.concatenate(([0], epoch_values[e0:e1][rows]))[_last_false(seen)]
    return out


def _fold_states(state: np.ndarray, joins: np.ndarray, block_info=None) -> np.ndarray:
    """Combine the in-order states of all epoch blocks of one run: (1, blocks, 6, n) ->
    (1, 4, n) events, ever correct, last correct, last wrong."""
    r0 = block_info[0]["array-location"][0][0]
    st = state[0]
    out = np.empty((1, _NFOLDED, st.shape[2]), dtype=st.dtype)
    events = st[:, 0].sum(axis=0, dtype=st.dtype)  # at most the last epoch: no overflow
    for b in np.flatnonzero(joins[r0]):
        events += st[b, 2] & (1 - st[b + 1, 1])
    out[0, 0] = events
    out[0, 1] = st[:, 3].max(axis=0)
    out[0, 2] = st[:, 4].max(axis=0)
    out[0, 3] = st[:, 5].max(axis=0)
    return out


def forgetting(store: access.StoreLike, *, epoch: int | None = None, runs: Iterable[int] | None = None,
               never_learned: str = "count", scheduler=None) -> xr.Dataset:
    """Forgetting statistics per run and example (Toneva et al.; Data Diet Sec. 2.3).

    ``epoch=None`` counts over every completed epoch of each run (spec ``forgetting``);
    ``epoch=E`` over epochs 1..E (spec ``forgetting@E``).  ``runs`` defaults to all
    completed runs.  Returns a Dataset with

    * ``events`` (run, example) int: forgetting events (1 -> 0 transitions of
      ``train_correct`` between consecutive presentations),
    * ``never_learned`` (run, example) bool: never classified correctly when presented,
    * ``score`` (run, example) float64: ``events``, or for never-learned examples
      ``presentations + 1`` (``never_learned="count"``) or ``inf`` (``"inf"``, Data Diet),
    * ``learned_epoch`` (run, example) int: first epoch from which the example stays
      learned (correct at every later presentation), -1 if misclassified at the last one,
    * ``presentations`` (run) int: presentations counted.

    Reads ``train_correct`` once, streaming (see :mod:`scorebank.analysis.access`)."""
    check_never_learned(never_learned)
    ds = access.open_store(store)
    seeds = access.resolve_runs(ds, runs)
    lf = lazy_forgetting(ds, seeds, epoch)
    events, ever, last_correct, last_wrong = access.compute(
        lf.events, lf.ever_correct, lf.last_correct, lf.last_wrong, scheduler=scheduler)
    pres_count = lf.presentations
    # the first presentation after epoch e, per run (e from 0 to the last epoch considered)
    top = int(lf.epochs.max())
    nxt = np.full((len(seeds), top + 2), access.NEVER, dtype=np.int64)
    for i, p in enumerate(lf.presented):
        eps = lf.epochs[p]
        idx = np.searchsorted(eps, np.arange(top + 2), side="right")
        ok = idx < eps.size
        nxt[i, ok] = eps[idx[ok]]
    # (run, example) results written in place, no full-size temporaries
    learned = nxt[np.arange(len(seeds))[:, None], last_wrong]  # the presentation after the last wrong one
    learned[~last_correct] = access.NEVER
    fill = np.inf if never_learned == "inf" else (pres_count + 1).astype(np.float64)[:, None]
    score = events.astype(np.float64)
    np.copyto(score, fill, where=~ever)
    run_coord = {S.RUN: np.asarray(seeds, dtype=np.int64)}
    dims = (S.RUN, S.EXAMPLE)
    out = xr.Dataset(
        {"events": (dims, events.astype(np.int64)),
         "never_learned": (dims, ~ever),
         "score": (dims, score),
         "learned_epoch": (dims, learned),
         "presentations": ((S.RUN,), pres_count)},
        coords=run_coord)
    out.attrs.update(spec="forgetting" if epoch is None else f"forgetting@{int(epoch)}",
                     never_learned=never_learned,
                     definition="Toneva et al. 2019 forgetting events on train_correct")
    return out


# ------------------------------------------------------------------------------ summary
@dataclass(frozen=True)
class RunForgettingStats:
    """Forgetting statistics of one run (a row of ``scorebank analyze STORE forgetting``)."""

    run: int
    presentations: int  # presentations counted
    never_learned: int  # examples never classified correctly when presented
    unforgettable: int  # learned at some presentation and never forgotten (0 events)
    mean_events: float  # mean forgetting events over the learned examples (NaN if none)
    max_events: int  # most events of any example
    median_learned_epoch: float  # median stays-learned epoch of the examples that stay learned (NaN if none)


@dataclass(frozen=True)
class ForgottenExample:
    """One of the most forgotten examples: position in the store, score over runs, label."""

    example: int
    score: float
    label: int


@dataclass(frozen=True)
class ForgettingSummary:
    """What :func:`forgetting_summary` returns; :meth:`to_dict` is the CLI's ``--json``."""

    spec: str
    runs: list[int]
    never_learned: str
    reduce: str
    per_run: list[RunForgettingStats]
    score: np.ndarray = field(repr=False)  # (example,) float64: the score reduced over runs
    quantiles: dict[str, float]  # :func:`scorebank.analysis.scores.score_quantiles` of ``score``
    most_forgotten: list[ForgottenExample]

    def to_dict(self) -> dict:
        """Plain dict (``score`` holds the quantiles, not the N values)."""
        return {"spec": self.spec, "runs": list(self.runs), "never_learned": self.never_learned,
                "reduce": self.reduce, "per_run": [asdict(r) for r in self.per_run],
                "score": dict(self.quantiles), "most_forgotten": [asdict(r) for r in self.most_forgotten]}


def forgetting_summary(result: xr.Dataset, labels, *, reduce: str = "mean", top: int = 10) -> ForgettingSummary:
    """Per-run statistics, the score over runs and the ``top`` most forgotten examples of a
    :func:`forgetting` result (computed in memory; nothing is read from the store).

    ``labels`` are the examples' training labels (``store["label"]``), reported with the
    most forgotten examples.  ``reduce`` combines the per-run scores: ``"mean"`` (Data
    Diet) or ``"sum"``.  The most forgotten examples are the ``top`` largest reduced scores,
    ties broken by the smaller example position (``top <= 0``: none).  Per run:
    presentations, never-learned examples, unforgettable examples (learned, zero events),
    mean and largest event counts over the learned examples (largest over all), and the
    median stays-learned epoch of the examples that stay learned."""
    from scorebank.analysis.scores import check_reduce, score_quantiles

    check_reduce(reduce)
    reduced = result["score"].sum(S.RUN) if reduce == "sum" else result["score"].mean(S.RUN)
    score = np.asarray(reduced.values, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.shape != score.shape:
        raise InvalidArgumentError(f"labels of shape {labels.shape!r} do not match the {score.size} examples "
                                   "of the forgetting result; pass the store's label array")
    rows = []
    for i, seed in enumerate(result[S.RUN].values):
        events = np.asarray(result["events"].values[i])
        learned = ~np.asarray(result["never_learned"].values[i])
        stays = np.asarray(result["learned_epoch"].values[i])
        stays = stays[stays >= 0]
        rows.append(RunForgettingStats(
            run=int(seed), presentations=int(result["presentations"].values[i]),
            never_learned=int((~learned).sum()), unforgettable=int((learned & (events == 0)).sum()),
            mean_events=float(events[learned].mean()) if learned.any() else math.nan,
            max_events=int(events.max()), median_learned_epoch=float(np.median(stays)) if stays.size else math.nan))
    order = np.lexsort((np.arange(score.size), -score))[:max(0, int(top))]
    top_rows = [ForgottenExample(int(i), float(score[i]), int(labels[i])) for i in order]
    return ForgettingSummary(spec=str(result.attrs["spec"]), runs=[int(s) for s in result[S.RUN].values],
                             never_learned=str(result.attrs["never_learned"]), reduce=reduce, per_run=rows,
                             score=score, quantiles=score_quantiles(score), most_forgotten=top_rows)
