"""Choosing a subset of the training set from a score (data pruning).

All rules sort the examples by ascending score, equal scores by ascending example index
(Data Diet, Paul et al. 2021, appendix B.3: "score all examples and sort them in ascending
order by score"), and keep ``round(F * n)`` examples (rounding half up):

``keep-highest --fraction F``
    the highest-scoring ones (Data Diet's pruning: drop the lowest scores).
``keep-lowest --fraction F``
    the lowest-scoring ones.
``window --offset O --fraction F``
    drop the ``round(O * n)`` lowest first, keep the next ``round(F * n)`` (Data Diet
    Sec. 4, Figs. 2 and 13: the sliding window).  ``O + F`` must not exceed 1; when rounding
    pushes the window one past the end it stops at the end.
``random --fraction F --seed S``
    a uniformly random subset, the baseline (uses no score).
``smallest-margin --count K``
    the ``K`` examples with the smallest (normalised) margin, the margins paper's
    compressed training set (Banburski et al. 2021, Sec. 5).
``stratified --fraction F [--bins B --hard-cutoff C --seed S]``
    coverage-centric coreset selection (Zheng et al. 2023, "Coverage-centric coreset
    selection for high pruning rates", Alg. 1): drop the ``round(C * n)`` hardest examples
    (highest EL2N, GraNd, loss or forgetting; lowest margin), split the remaining score
    range into ``B`` equal-width strata (the maximum belongs to the last), and give the
    strata a budget of ``round(F * n)`` examples: visiting them from the smallest
    (equal sizes by stratum number), each gets ``min(size, remaining budget // strata
    left)``.  Each stratum's examples are then drawn uniformly without replacement,
    strata in increasing order, with one generator seeded with ``S``.

Each strategy is an entry of the registry :data:`STRATEGIES` (the parameters it uses, the
function choosing what it keeps, whether it ranks by a score and which scores it accepts);
adding one is one decorated function.

``class_balanced=True`` applies the rule within each class (training label) separately,
with ``n`` the class size (and ``F = K / N`` for ``smallest-margin``); random draws use
one generator across classes in label order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from scorebank.analysis import access
from scorebank.analysis.registry import ScoreOptions
from scorebank.analysis.scores import NMARGIN, ScoreSpec, average_score, parse_score
from scorebank.core.registry import Registry
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError


@dataclass(frozen=True)
class Strategy:
    """A selection strategy (an entry of :data:`STRATEGIES`): the rule parameters it
    ``uses``, ``keep(rule, scores, n, n_total, rng, where)`` giving the positions (0..n-1)
    kept from one group of ``n`` examples (``where`` names the group in messages), whether
    it ranks by a score, the score names it accepts (None: any) and whether its manifest
    records which end is hard."""

    uses: frozenset[str]
    keep: Callable[..., np.ndarray]
    uses_score: bool = True
    scores: tuple[str, ...] | None = None
    records_hard_end: bool = False


#: Every strategy, in display order.
STRATEGIES: Registry[Strategy] = Registry("strategy", "--strategy")


def _strategy(name: str, *, help: str, uses: set[str], **options) -> Callable:
    """Decorator registering ``keep`` as the strategy ``name``."""
    def deco(keep: Callable) -> Callable:
        STRATEGIES.add(name, Strategy(frozenset(uses), keep, **options), help=help)
        return keep
    return deco

#: How messages name each parameter (the CLI options); a caller whose command line spells one
#: differently passes ``options`` (``scorebank select`` says ``--keep`` for ``fraction``).
OPTIONS = {"fraction": "--fraction", "offset": "--offset", "count": "--count", "seed": "--seed",
           "bins": "--bins", "hard_cutoff": "--hard-cutoff"}
DEFAULT_BINS = 50


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def ascending_order(scores: np.ndarray) -> np.ndarray:
    """Positions sorted by ascending score, equal scores by ascending position."""
    return np.lexsort((np.arange(scores.size), scores))


@dataclass(frozen=True)
class Rule:
    """A validated selection rule (strategy and the parameters it uses)."""

    strategy: str
    fraction: float | None = None
    offset: float | None = None
    count: int | None = None
    seed: int | None = None
    bins: int | None = None
    hard_cutoff: float | None = None
    class_balanced: bool = False
    high_is_hard: bool = True
    options: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # parameter -> option name

    def option(self, name: str) -> str:
        """How messages name parameter ``name`` (see :data:`OPTIONS`)."""
        return dict(self.options).get(name, OPTIONS[name])

    @property
    def kind(self) -> Strategy:
        """The registry entry of the strategy."""
        return STRATEGIES.get(self.strategy)

    def parameters(self) -> dict:
        """Every parameter of the rule, defaults filled in (for the manifest)."""
        out = {k: getattr(self, k) for k in sorted(self.kind.uses)}
        out["class_balanced"] = self.class_balanced
        if self.kind.records_hard_end:
            out["hard_end"] = "high" if self.high_is_hard else "low"
        return out


def _given(value, message: str) -> None:
    """InvalidArgumentError(``message``) when a parameter the strategy needs is missing."""
    if value is None:
        raise InvalidArgumentError(message)


def make_rule(strategy: str, *, fraction: float | None = None, offset: float | None = None,
              count: int | None = None, seed: int | None = None, bins: int | None = None,
              hard_cutoff: float | None = None, class_balanced: bool = False,
              high_is_hard: bool = True, options: Mapping[str, str] | None = None) -> Rule:
    """Validate a strategy and its options (InvalidArgumentError naming what is accepted,
    with the option names of :data:`OPTIONS` updated by ``options``)."""
    opt = {**OPTIONS, **(options or {})}
    if strategy not in STRATEGIES:
        raise InvalidArgumentError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    given = {k: v for k, v in dict(fraction=fraction, offset=offset, count=count, seed=seed, bins=bins,
                                   hard_cutoff=hard_cutoff).items() if v is not None}
    uses = STRATEGIES.get(strategy).uses
    extra = sorted(set(given) - uses)
    if extra:
        raise InvalidArgumentError(
            f"--strategy {strategy} does not take {', '.join(opt[k] for k in extra)}; it uses "
            f"{', '.join(opt[k] for k in sorted(uses))}")
    if "fraction" in uses:
        _given(fraction, f"--strategy {strategy} needs {opt['fraction']} F with 0 < F <= 1")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise InvalidArgumentError(f"{opt['fraction']} {fraction!r} is outside (0, 1]; give e.g. 0.5")
    if "offset" in uses:
        offset = 0.0 if offset is None else offset
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not 0 <= offset < 1:
            raise InvalidArgumentError(f"--offset {offset!r} is outside [0, 1); give e.g. 0.1")
        if offset + fraction > 1 + 1e-12:
            raise InvalidArgumentError(
                f"{strategy} --offset {offset!r} {opt['fraction']} {fraction!r} runs past the end of the "
                f"sorted data (offset + fraction = {offset + fraction:g} > 1); lower one of them")
    if "count" in uses:
        _given(count, f"--strategy {strategy} needs {opt['count']} K (examples to keep)")
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise InvalidArgumentError(f"--count {count!r} must be a positive integer")
    if "seed" in uses:
        seed = 0 if seed is None else seed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InvalidArgumentError(f"--seed {seed!r} must be a non-negative integer")
    if "bins" in uses:
        bins = DEFAULT_BINS if bins is None else bins
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
            raise InvalidArgumentError(f"--bins {bins!r} must be a positive integer (default {DEFAULT_BINS})")
    if "hard_cutoff" in uses:
        hard_cutoff = 0.0 if hard_cutoff is None else hard_cutoff
        if (isinstance(hard_cutoff, bool) or not isinstance(hard_cutoff, (int, float))
                or not 0 <= hard_cutoff < 1):
            raise InvalidArgumentError(f"--hard-cutoff {hard_cutoff!r} is outside [0, 1); give e.g. 0.1")
    return Rule(strategy, fraction=None if fraction is None else float(fraction),
                offset=None if offset is None else float(offset), count=None if count is None else int(count),
                seed=None if seed is None else int(seed), bins=None if bins is None else int(bins),
                hard_cutoff=None if hard_cutoff is None else float(hard_cutoff),
                class_balanced=bool(class_balanced), high_is_hard=bool(high_is_hard),
                options=tuple(sorted((options or {}).items())))


def stratum_budgets(sizes: np.ndarray, budget: int) -> np.ndarray:
    """CCS allocation: visiting strata from the smallest (ties by stratum number), each
    gets ``min(size, remaining // strata left)``."""
    sizes = np.asarray(sizes, dtype=np.int64)
    out = np.zeros_like(sizes)
    remaining = int(budget)
    for i, s in enumerate(np.argsort(sizes, kind="stable")):
        take = min(int(sizes[s]), remaining // (sizes.size - i))
        out[s] = take
        remaining -= take
    return out


def strata(scores: np.ndarray, bins: int) -> np.ndarray:
    """Stratum number (0..bins-1) of each score: equal-width bins over [min, max] of the
    finite scores; ``+inf`` (e.g. forgetting of never-learned examples with
    ``never_learned="inf"``) goes to the last stratum and ``-inf`` to the first."""
    out = np.zeros(scores.size, dtype=np.int64)
    finite = np.isfinite(scores)
    if finite.any():
        lo, hi = float(scores[finite].min()), float(scores[finite].max())
        if hi > lo:
            width = (hi - lo) / bins
            out[finite] = np.minimum(((scores[finite] - lo) / width).astype(np.int64), bins - 1)
    out[scores == np.inf] = bins - 1
    return out


def _apply(rule: Rule, scores: np.ndarray | None, n: int, n_total: int, rng: np.random.Generator,
           where: str) -> np.ndarray:
    """Positions (0..n-1) kept from one group of ``n`` examples, by the rule's strategy."""
    return rule.kind.keep(rule, scores, n, n_total, rng, where)


@_strategy("keep-highest", uses={"fraction"}, help="the highest-scoring round(F * n) (Data Diet's pruning)")
def _keep_highest(rule, scores, n, n_total, rng, where):
    return ascending_order(scores)[n - round_half_up(rule.fraction * n):]


@_strategy("keep-lowest", uses={"fraction"}, help="the lowest-scoring round(F * n)")
def _keep_lowest(rule, scores, n, n_total, rng, where):
    return ascending_order(scores)[:round_half_up(rule.fraction * n)]


@_strategy("window", uses={"fraction", "offset"},
           help="drop the round(O * n) lowest, keep the next round(F * n) (Data Diet's sliding window)")
def _window(rule, scores, n, n_total, rng, where):
    start = round_half_up(rule.offset * n)
    return ascending_order(scores)[start:min(n, start + round_half_up(rule.fraction * n))]


@_strategy("random", uses={"fraction", "seed"}, uses_score=False, help="a uniformly random round(F * n), the baseline")
def _random(rule, scores, n, n_total, rng, where):
    m = round_half_up(rule.fraction * n)
    return np.sort(rng.choice(n, m, replace=False)) if m else np.zeros(0, dtype=np.int64)


@_strategy("smallest-margin", uses={"count"}, scores=(NMARGIN, S.MARGIN),
           help="the K smallest margins (margins paper Sec. 5)")
def _smallest_margin(rule, scores, n, n_total, rng, where):
    m = rule.count if n == n_total else round_half_up(rule.count * n / n_total)
    return ascending_order(scores)[:m]


@_strategy("stratified", uses={"fraction", "bins", "hard_cutoff", "seed"}, records_hard_end=True,
           help="coverage-centric coreset selection (Zheng et al. 2023, Alg. 1)")
def _stratified(rule, scores, n, n_total, rng, where):
    order = ascending_order(scores)
    cut = round_half_up(rule.hard_cutoff * n)
    keep = order[:n - cut] if rule.high_is_hard else order[cut:]
    budget = round_half_up(rule.fraction * n)
    if budget > keep.size:
        raise InvalidArgumentError(
            f"stratified {rule.option('fraction')} {rule.fraction!r} keeps {budget} examples{where} but only "
            f"{keep.size} remain after --hard-cutoff {rule.hard_cutoff!r}; lower one of them")
    if budget == 0:
        return np.zeros(0, dtype=np.int64)
    members = np.sort(keep)
    stratum = strata(scores[members], rule.bins)
    sizes = np.bincount(stratum, minlength=rule.bins)
    alloc = stratum_budgets(sizes, budget)
    chosen = [rng.choice(members[stratum == b], alloc[b], replace=False)
              for b in range(rule.bins) if alloc[b] > 0]
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def select_indices(rule: Rule, scores: np.ndarray | None, labels: np.ndarray) -> np.ndarray:
    """Apply ``rule`` to per-example ``scores`` (None for random) and training ``labels``;
    returns the sorted kept example indices.  Pure numpy: the semantic core of
    :func:`select`."""
    labels = np.asarray(labels)
    n_total = labels.size
    if rule.kind.uses_score:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != labels.shape:
            raise InvalidArgumentError(f"{scores.size} scores for {labels.size} examples")
        if np.isnan(scores).any():
            raise InvalidArgumentError("scores contain NaN; the score is not recorded for every example")
    if rule.strategy == "smallest-margin" and rule.count > n_total:
        raise InvalidArgumentError(
            f"--count {rule.count!r} is larger than the data set ({n_total} examples)")
    rng = np.random.default_rng(rule.seed if rule.seed is not None else 0)
    if not rule.class_balanced:
        kept = _apply(rule, scores, n_total, n_total, rng, "")
    else:
        parts = []
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            sub = None if scores is None else scores[members]
            parts.append(members[_apply(rule, sub, members.size, n_total, rng, f" in class {int(c)}")])
        kept = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    kept = np.sort(kept.astype(np.int64))
    if kept.size == 0:
        raise InvalidArgumentError(
            f"--strategy {rule.strategy} with {rule.parameters()!r} keeps no example of {n_total}; "
            f"raise {rule.option('fraction')} / {rule.option('count')}")
    return kept


@dataclass(frozen=True)
class Selection:
    """The result of :func:`select`: kept indices and everything a manifest records."""

    indices: np.ndarray
    rule: Rule
    score: str | None
    runs: tuple[int, ...]
    n_examples: int
    counts_per_class: dict[str, int]
    parameters: dict = field(default_factory=dict)
    scores: np.ndarray | None = None  # the averaged score of every example (None for random)

    @property
    def n_kept(self) -> int:
        return int(self.indices.size)


def select(store: access.StoreLike, strategy: str, *, score: str | ScoreSpec | None = None,
           runs: Iterable[int] | None = None, fraction: float | None = None, offset: float | None = None,
           count: int | None = None, seed: int | None = None, bins: int | None = None,
           hard_cutoff: float | None = None, class_balanced: bool = False, reduce: str = "mean",
           never_learned: str = "count", scheduler=None, options: Mapping[str, str] | None = None) -> Selection:
    """Select examples from a store by ``score`` averaged over ``runs`` (default: all
    completed runs) with one of :data:`STRATEGIES` (see the module docstring).

    ``random`` takes no score (and records no runs unless ``runs`` is given);
    ``smallest-margin`` needs a ``margin@E`` or ``nmargin@E`` score.  ``options`` renames
    parameters in messages (:data:`OPTIONS`).  Nothing is written; see :func:`to_manifest`
    and :func:`scorebank.stores.manifest.record_manifest`."""
    spec = None if score is None else parse_score(score)
    rule = make_rule(strategy, fraction=fraction, offset=offset, count=count, seed=seed, bins=bins,
                     hard_cutoff=hard_cutoff, class_balanced=class_balanced,
                     high_is_hard=True if spec is None else spec.high_is_hard, options=options)
    if rule.kind.uses_score and spec is None:
        raise InvalidArgumentError(f"--strategy {strategy} needs --score, e.g. --score el2n@20")
    if not rule.kind.uses_score and spec is not None:
        raise InvalidArgumentError(f"--strategy random uses no score; drop --score {str(spec)!r}")
    allowed = STRATEGIES.get(strategy).scores
    if allowed is not None and spec.name not in allowed:
        raise InvalidArgumentError(
            f"--strategy {strategy} ranks by {' or '.join(allowed)}; use --score "
            f"{' or '.join(f'{a}@E' for a in allowed)}, not {str(spec)!r}")
    ds = access.open_store(store)
    n = int(ds.sizes[S.EXAMPLE])
    if rule.count is not None and rule.count > n:
        raise InvalidArgumentError(f"--count {rule.count!r} is larger than the data set ({n} examples)")
    # the random baseline uses no score, so it needs no (completed) run unless runs are named
    seeds = [] if spec is None and runs is None else access.resolve_runs(ds, runs)
    values = None
    if spec is not None:
        values = average_score(ds, spec, runs=seeds, reduce=reduce, never_learned=never_learned,
                               scheduler=scheduler).values
    lab = access.labels(ds)
    kept = select_indices(rule, values, lab)
    counts = np.bincount(lab[kept], minlength=access.n_classes(ds, lab))
    params = rule.parameters()
    if spec is not None:
        params.update(reduce=reduce)
        params.update({name: getattr(ScoreOptions(never_learned=never_learned), name) for name in spec.kind.uses})
    return Selection(indices=kept, rule=rule, score=None if spec is None else str(spec),
                     runs=tuple(seeds), n_examples=n,
                     counts_per_class={str(c): int(v) for c, v in enumerate(counts)},
                     parameters=params, scores=values)


def to_manifest(selection: Selection, store: access.StoreLike, *, name: str | None = None):
    """The :class:`scorebank.stores.manifest.Manifest` describing ``selection`` made from
    ``store`` (a path, recorded absolute, or a Dataset, recorded by its source)."""
    from scorebank.stores.manifest import Manifest, check_name, default_name, now_iso
    from scorebank.stores.zarrstore import scorebank_version

    ds = access.open_store(store)
    if hasattr(store, "attrs"):
        path = str(ds.encoding.get("source", ""))
    else:
        path = os.fspath(store)
        path = os.path.abspath(path) if os.path.exists(path) else str(path)
    return Manifest(
        name=check_name(name) if name is not None else default_name(selection.rule.strategy, selection.score),
        store=path, dataset=str(ds.attrs.get(S.ATTR_DATASET, "")),
        dataset_fingerprint=str(ds.attrs.get(S.ATTR_FINGERPRINT, "")), n_examples=selection.n_examples,
        score=selection.score, runs=selection.runs, strategy=selection.rule.strategy,
        parameters=selection.parameters, indices=selection.indices,
        counts_per_class=selection.counts_per_class, class_names=tuple(access.class_names(ds)),
        created=now_iso(), scorebank_version=scorebank_version())
