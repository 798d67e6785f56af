"""The score registry: every per-example score a spec ``NAME@EPOCH`` may name.

One entry per score says everything the rest of scorebank needs to know about it:

* its **name** and **spec syntax**: ``NAME@E`` (an epoch is required), ``NAME[@E]`` (the
  epoch is optional: ``forgetting`` counts over every epoch) or ``NAME`` (no epoch);
* which end is **hard** (``high_is_hard``): what ``select``'s stratified strategy drops
  and what ``analyze noise`` ranks as suspicious, so no command needs a sign flag;
* the **store variables** it reads (``variables``): a store that lacks one (an optional
  feature it was made without, or a format that predates the variable) is refused in one
  line before anything is read;
* at which (run, epoch) it exists (``available``, for scores at one epoch);
* the **lazy computation**: ``compute(ds, seeds, epoch, options)`` returns the Dask graph
  of the score of each chosen run, a (run, example) float64 array, not computed;
* its **non-finite rule**: every score must be finite, except that an entry may allow
  ``+inf`` when the caller asked for it (``may_be_inf(options)``: forgetting of
  never-learned examples with ``never_learned="inf"``);
* its **own threshold** (``own_threshold``), where the method comes with a cut-off of its own
  (AUM's threshold samples, confident learning's flagged issues): a function ``(ds, values)
  -> OwnThreshold | None`` (:mod:`scorebank.analysis.own_thresholds`) that ``analyze noise``
  evaluates next to the rankings;
* the one-line **help text**, from which the CLI's help and the validation messages are
  generated.

Adding a score computed from stored variables is one decorated function here (and a test),
built from :func:`at_epoch` (one epoch), :func:`epochs_through` (epochs 1..E, for scores
summarising training so far) or :func:`per_example` (no run or epoch)::

    @score("prob", high_is_hard=False, variables=(S.LOSS,), available=clean_pass,
           help="softmax probability of the training label, exp(-loss)")
    def _prob(ds, seeds, epoch, options):
        return np.exp(-at_epoch(ds, S.LOSS, seeds, epoch))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dask.array as da
import numpy as np
import xarray as xr

from scorebank.analysis import access
from scorebank.analysis.forgetting import check_never_learned, lazy_forgetting
from scorebank.analysis.own_thresholds import OwnThreshold, aum_threshold_samples
from scorebank.core.registry import Registry
from scorebank.core.errors import InvalidArgumentError
from scorebank.stores import schema as S

#: Spec syntaxes: ``NAME@E``, ``NAME[@E]``, ``NAME``.
EPOCH_REQUIRED, EPOCH_OPTIONAL, EPOCH_NONE = "required", "optional", "none"


@dataclass(frozen=True)
class ScoreOptions:
    """Options that change how a score is computed (one field per CLI option).

    ``never_learned``: the forgetting score of examples never classified correctly in a run,
    ``"count"`` (presentations + 1) or ``"inf"`` (Data Diet's convention)."""

    never_learned: str = "count"

    def __post_init__(self) -> None:
        check_never_learned(self.never_learned)


def _finite_only(options: ScoreOptions) -> bool:
    return False


@dataclass(frozen=True)
class ScoreKind:
    """One registered score (see the module docstring)."""

    name: str
    compute: Callable[[xr.Dataset, Sequence[int], int | None, ScoreOptions], da.Array]
    high_is_hard: bool
    variables: tuple[str, ...]
    epoch: str = EPOCH_REQUIRED
    available: Callable[[xr.Dataset, Sequence[int]], np.ndarray] | None = None
    may_be_inf: Callable[[ScoreOptions], bool] = _finite_only
    inf_when: str = ""  # the request that allows +inf, for messages (e.g. "--never-learned inf")
    missing: str = ""  # why a store may lack the variables, e.g. "it was made without --grand-epochs"
    uses: tuple[str, ...] = ()  # the ScoreOptions fields it depends on (recorded in manifests)
    # the method's own cut-off: (ds, values averaged over runs (N,)) -> OwnThreshold, or None where
    # the store lacks what it needs; None here: the score has no cut-off of its own
    own_threshold: Callable[[xr.Dataset, np.ndarray], OwnThreshold | None] | None = None

    @property
    def syntax(self) -> str:
        """``el2n@E``, ``forgetting[@E]`` or ``input_norm``."""
        return {EPOCH_REQUIRED: f"{self.name}@E", EPOCH_OPTIONAL: f"{self.name}[@E]",
                EPOCH_NONE: self.name}[self.epoch]

    @property
    def at_epoch(self) -> bool:
        """True for scores read at one epoch (their availability is checked generically)."""
        return self.available is not None


#: Every score, in display order.
SCORES: Registry[ScoreKind] = Registry("score", "--score")


def score(name: str, *, help: str, high_is_hard: bool, variables: tuple[str, ...],
          epoch: str = EPOCH_REQUIRED, available: Callable | None = None,
          may_be_inf: Callable[[ScoreOptions], bool] = _finite_only, inf_when: str = "",
          missing: str = "", uses: tuple[str, ...] = (),
          own_threshold: Callable[[xr.Dataset, np.ndarray], OwnThreshold | None] | None = None) -> Callable:
    """Decorator registering ``compute(ds, seeds, epoch, options)`` as the score ``name``."""
    def deco(compute: Callable) -> Callable:
        SCORES.add(name, ScoreKind(name, compute, high_is_hard, tuple(variables), epoch, available,
                                   may_be_inf, inf_when, missing, tuple(uses), own_threshold), help=help)
        return compute
    return deco


def score_help() -> str:
    """One sentence per score with its syntax and which end is hard, for CLI help texts."""
    parts = [f"{k.value.syntax}: {k.help} ({'high' if k.value.high_is_hard else 'low'} = hard)"
             for k in SCORES.entries()]
    return "Scores: " + "; ".join(parts) + ". Scores are averaged over runs."


def infinite_scores() -> str:
    """``"forgetting (with --never-learned inf)"``: the scores that may be infinite, and when."""
    return ", ".join(f"{k.name} (with {k.inf_when})" for k in (e.value for e in SCORES.entries())
                     if k.inf_when) or "none"


# ------------------------------------------------------------------------------ building blocks
def clean_pass(ds: xr.Dataset, seeds: Sequence[int]) -> np.ndarray:
    """(run, epoch) bool: the clean pass (margin, el2n, loss, correct) was recorded."""
    return access.recorded_mask(ds, seeds)


def at_epoch(ds: xr.Dataset, name: str, seeds: Sequence[int], epoch: int) -> da.Array:
    """A per-example variable at one epoch for the chosen runs: a lazy (run, example)
    float64 Dask array, streamed chunk by chunk."""
    pos = access.epoch_position(ds, epoch)
    return access.select(ds, name, runs=access.run_positions(ds, seeds), epochs=pos).astype(np.float64)


def epochs_through(ds: xr.Dataset, name: str, seeds: Sequence[int], last: int, what: str,
                   available: Callable[[xr.Dataset, Sequence[int]], np.ndarray] = clean_pass) -> da.Array:
    """A per-example variable at epochs ``1..last`` for the chosen runs: a lazy
    (run, epoch, example) float64 Dask array, the input of scores that summarise training
    up to an epoch (AUM's mean in-flight margin, data maps' confidence and variability).
    Every one of those epochs must be ``available`` in every chosen run; otherwise an
    :class:`InvalidArgumentError` naming ``what`` (the spec) and the epochs that are."""
    ep = access.epochs(ds)
    top = int(ep.max()) if ep.size else 0
    if not 1 <= int(last) <= top:
        raise InvalidArgumentError(f"{what} is out of range: it summarises epochs 1..E with 1 <= E <= {top} "
                                   "(the store's last epoch)")
    pos = np.flatnonzero((ep >= 1) & (ep <= int(last)))
    avail = available(ds, seeds)[:, pos]
    missing = [int(s) for s, ok in zip(seeds, avail.all(axis=1)) if not ok]
    if missing:
        common = ep[pos][avail.all(axis=0)]
        raise InvalidArgumentError(
            f"{what} needs epochs 1..{int(last)} recorded, but run(s) {missing!r} lack some; epochs >= 1 "
            f"recorded in all chosen runs: {access.format_epochs(common)}")
    return access.select(ds, name, runs=access.run_positions(ds, seeds), epochs=pos).astype(np.float64)


def per_example(ds: xr.Dataset, name: str, seeds: Sequence[int]) -> da.Array:
    """A variable with one value per example (no run or epoch: e.g. an input norm) as the
    lazy (run, example) float64 array scores return, the same row for every run."""
    x = access.stream(ds[name], ds).data.astype(np.float64)  # (example,)
    return da.broadcast_to(x[None, :], (len(seeds), x.shape[0]), chunks=((1,) * len(seeds), x.chunks[0]))


def _norm_product(ds: xr.Dataset, seeds: Sequence[int]) -> np.ndarray:
    return access.per_epoch(ds, S.NORM_PRODUCT, seeds).astype(np.float64)


def _grand_recorded(ds: xr.Dataset, seeds: Sequence[int]) -> np.ndarray:
    """(run, epoch) bool: GraNd was recorded.  From the configuration's ``grand_epochs``
    when the store has a configuration, else by probing the first example of every
    (run, epoch)."""
    completed = access.completed_mask(ds, seeds)
    cfg = access.config(ds)
    if cfg is not None:
        wanted = np.isin(access.epochs(ds), np.asarray(cfg.grand_epochs, dtype=np.int64))
        return completed & wanted[None, :]
    probe = ds[S.GRAND].isel({S.RUN: access.run_positions(ds, seeds), S.EXAMPLE: 0}).values
    return completed & ~np.isnan(probe)


def _normalised_recorded(ds: xr.Dataset, seeds: Sequence[int]) -> np.ndarray:
    rho = _norm_product(ds, seeds)
    return clean_pass(ds, seeds) & np.isfinite(rho) & (rho > 0)


# ------------------------------------------------------------------------------ the scores
@score(S.EL2N, high_is_hard=True, variables=(S.EL2N,), available=clean_pass,
       help="EL2N, ||softmax(f(x)) - onehot(y)||_2 (Data Diet Def. 2.2)")
def _el2n(ds, seeds, epoch, options):
    return at_epoch(ds, S.EL2N, seeds, epoch)


@score(S.GRAND, high_is_hard=True, variables=(S.GRAND,), available=_grand_recorded,
       missing="this store has no GraNd (it was made without --grand-epochs)",
       help="GraNd, ||grad_w loss(x, y)||_2 (Data Diet Def. 2.1), at the --grand-epochs")
def _grand(ds, seeds, epoch, options):
    return at_epoch(ds, S.GRAND, seeds, epoch)


@score(S.LOSS, high_is_hard=True, variables=(S.LOSS,), available=clean_pass,
       help="cross-entropy loss")
def _loss(ds, seeds, epoch, options):
    return at_epoch(ds, S.LOSS, seeds, epoch)


@score(S.MARGIN, high_is_hard=False, variables=(S.MARGIN,), available=clean_pass,
       help="classification margin f_y(x) - max_{j!=y} f_j(x) on raw logits")
def _margin(ds, seeds, epoch, options):
    return at_epoch(ds, S.MARGIN, seeds, epoch)


@score("nmargin", high_is_hard=False, variables=(S.MARGIN, S.NORM_PRODUCT), available=_normalised_recorded,
       help="normalised margin, margin / norm_product (margins paper Sec. 3)")
def _nmargin(ds, seeds, epoch, options):
    rho = _norm_product(ds, seeds)[:, access.epoch_position(ds, epoch)]
    return at_epoch(ds, S.MARGIN, seeds, epoch) / rho[:, None]


def _never_learned_inf(options: ScoreOptions) -> bool:
    return options.never_learned == "inf"


@score("forgetting", high_is_hard=True, variables=(S.TRAIN_CORRECT,), epoch=EPOCH_OPTIONAL,
       may_be_inf=_never_learned_inf, inf_when="--never-learned inf", uses=("never_learned",),
       help="forgetting events (Toneva et al.) over epochs 1..E, or every epoch without @E; "
            "never-learned examples score presentations + 1, or inf with --never-learned inf")
def _forgetting(ds, seeds, epoch, options):
    return lazy_forgetting(ds, list(seeds), epoch).score(options.never_learned)


@score("prob", high_is_hard=False, variables=(S.LOSS,), available=clean_pass,
       help="softmax probability of the training label, exp(-loss) (the data maps' confidence at one epoch)")
def _prob(ds, seeds, epoch, options):
    return np.exp(-at_epoch(ds, S.LOSS, seeds, epoch))


def _inflight_recorded(ds: xr.Dataset, seeds: Sequence[int]) -> np.ndarray:
    """(run, epoch) bool: the in-flight values (train_correct, train_margin) were written."""
    return access.completed_mask(ds, seeds)


@score("aum", high_is_hard=False, variables=(S.TRAIN_MARGIN,), own_threshold=aum_threshold_samples,
       help="AUM, the area under the margin (Pleiss et al. 2020): mean over epochs 1..E of the in-flight "
            "margin train_margin (logits of the training step that presented the example)")
def _aum(ds, seeds, epoch, options):
    m = epochs_through(ds, S.TRAIN_MARGIN, seeds, epoch, f"aum@{epoch}", available=_inflight_recorded)
    return m.mean(axis=1)  # (run, epoch, example) -> (run, example)


def _label_probability(ds, seeds, epoch, what):
    """p_e(y | x) = exp(-loss) at the clean pass after epochs 1..E: (run, epoch, example)."""
    return np.exp(-epochs_through(ds, S.LOSS, seeds, epoch, what))


@score("confidence", high_is_hard=False, variables=(S.LOSS,),
       help="data maps' confidence (Swayamdipta et al. 2020): mean over epochs 1..E of the clean-pass "
            "probability of the label, exp(-loss)")
def _confidence(ds, seeds, epoch, options):
    return _label_probability(ds, seeds, epoch, f"confidence@{epoch}").mean(axis=1)


@score("variability", high_is_hard=True, variables=(S.LOSS,),
       help="data maps' variability: population standard deviation over epochs 1..E of the clean-pass "
            "probability of the label (high = ambiguous)")
def _variability(ds, seeds, epoch, options):
    return _label_probability(ds, seeds, epoch, f"variability@{epoch}").std(axis=1)  # ddof=0, as np.std


@score("correctness", high_is_hard=False, variables=(S.CORRECT,),
       help="data maps' correctness: fraction of epochs 1..E whose clean pass classified the example correctly")
def _correctness(ds, seeds, epoch, options):
    return epochs_through(ds, S.CORRECT, seeds, epoch, f"correctness@{epoch}").mean(axis=1)


@score(S.INPUT_NORM, high_is_hard=True, variables=(S.INPUT_NORM,), epoch=EPOCH_NONE,
       help="L2 norm of the normalised, un-augmented input as the network sees it (what GraNd at "
            "initialisation tracks, Kirsch 2023)")
def _input_norm(ds, seeds, epoch, options):
    return per_example(ds, S.INPUT_NORM, seeds)


# Scores from models trained on subsets (`scorebank holdout`, `scorebank memorization`) are
# entries too; their module registers them.
from scorebank.analysis import heldout_scores  # noqa: E402,F401
