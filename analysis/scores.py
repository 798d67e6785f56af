"""Score specifications ``name@epoch`` and scores averaged over runs.

The scores themselves (what each is, its spec syntax, which end is hard, what it reads
from the store, how it is computed and when it may be infinite) are the entries of
:data:`scorebank.analysis.registry.SCORES`; this module parses specs against that registry
and computes them.

Data Diet (appendix B.3) averages every score over independent runs; :func:`average_score`
does that over a chosen set of runs (default: every completed run).

Non-finite values follow one rule, the registry's: every score must be finite (a NaN means
the store is incomplete there, an infinity that a run produced an unusable value), except
where an entry allows ``+inf`` on request (forgetting of never-learned examples with
``never_learned="inf"``).  A score breaking the rule is refused with a one-line
:class:`ScorebankError` naming the score and how many examples are affected, in every
analysis that reads scores (select, correlation, sensitivity, noise, scores).
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from scorebank.analysis import access
from scorebank.analysis.registry import (EPOCH_NONE, EPOCH_REQUIRED, SCORES, ScoreKind, ScoreOptions,
                                         infinite_scores)
from scorebank.stores import schema as S
from scorebank.stores.location import require_variables
from scorebank.stores.errors import InvalidArgumentError, ScorebankError

NMARGIN = "nmargin"
FORGETTING = "forgetting"
#: How scores of several runs are combined.
REDUCTIONS = ("mean", "sum")


@dataclass(frozen=True)
class ScoreSpec:
    """A parsed score specification: ``name`` and ``epoch`` (None for scores whose epoch
    is optional and left out, e.g. forgetting over all epochs)."""

    name: str
    epoch: int | None = None

    def __str__(self) -> str:
        return self.name if self.epoch is None else f"{self.name}@{self.epoch}"

    @property
    def kind(self) -> ScoreKind:
        """The registry entry of this score."""
        return SCORES.get(self.name)

    @property
    def high_is_hard(self) -> bool:
        """True when large values mark hard examples (the registry says which end)."""
        return self.kind.high_is_hard


def _syntax_help() -> str:
    return (f"use NAME@EPOCH with NAME one of {', '.join(SCORES.names())} ("
            + ", ".join(k.syntax for k in (e.value for e in SCORES.entries())) + "; e.g. el2n@20)")


def parse_score(spec: str | ScoreSpec) -> ScoreSpec:
    """``"el2n@20"`` -> ``ScoreSpec("el2n", 20)``; ``"forgetting"`` -> all epochs.  The
    accepted names and syntaxes come from the registry."""
    if isinstance(spec, ScoreSpec):
        return spec
    m = re.fullmatch(r"\s*([A-Za-z0-9_]+)\s*(?:@\s*(-?\d+)\s*)?", str(spec))
    if m is None or m.group(1).lower() not in SCORES:
        raise InvalidArgumentError(f"unknown score {spec!r}; {_syntax_help()}")
    name = m.group(1).lower()
    kind = SCORES.get(name)
    epoch = None if m.group(2) is None else int(m.group(2))
    if epoch is not None and epoch < 0:
        raise InvalidArgumentError(f"score {spec!r} names a negative epoch; epochs start at 0")
    if epoch is None and kind.epoch == EPOCH_REQUIRED:
        raise InvalidArgumentError(f"score {spec!r} needs an epoch: write {name}@E, e.g. {name}@20")
    if epoch is not None and kind.epoch == EPOCH_NONE:
        raise InvalidArgumentError(f"score {spec!r} takes no epoch: write {name}")
    return ScoreSpec(name, epoch)


def check_reduce(reduce: str) -> str:
    if reduce not in REDUCTIONS:
        raise InvalidArgumentError(f"reduce {reduce!r} is not accepted; use 'mean' or 'sum'")
    return reduce


# ------------------------------------------------------------------------------ availability
def available(ds: xr.Dataset, spec: ScoreSpec, seeds: Sequence[int]) -> np.ndarray:
    """(run, epoch) bool: ``spec``'s variables hold values at that epoch of each run (for
    scores without an epoch of their own: every completed epoch)."""
    kind = spec.kind
    if kind.available is None:
        return access.completed_mask(ds, seeds)
    return kind.available(ds, seeds)


def check_variables(ds: xr.Dataset, spec: ScoreSpec) -> None:
    """Refuse, in one line, a score whose store variables this store does not have: with the
    entry's own reason when it gives one (an optional feature the store was made without:
    a bad argument, naming the scores the store has), else with the store reader's
    (:func:`scorebank.stores.location.require_variables`: e.g. the store's format predates
    the variable)."""
    kind = spec.kind
    if all(v in ds.variables for v in kind.variables):
        return
    if kind.missing:
        present = [k.name for k in (e.value for e in SCORES.entries()) if all(v in ds for v in k.variables)]
        raise InvalidArgumentError(f"score {str(spec)!r}: {kind.missing}; available scores: {', '.join(present)}")
    require_variables(ds, kind.variables, f"score {str(spec)!r}")


def check_available(ds: xr.Dataset, spec: ScoreSpec, seeds: Sequence[int]) -> None:
    """Raise :class:`InvalidArgumentError` when the store lacks ``spec``'s variables, or,
    for a score at one epoch, naming the epochs that exist when it is not recorded in
    every one of ``seeds`` (other scores check their epochs when built)."""
    check_variables(ds, spec)
    if not spec.kind.at_epoch:
        return
    pos = access.epoch_position(ds, spec.epoch)
    avail = available(ds, spec, seeds)
    missing = [s for s, ok in zip(seeds, avail[:, pos]) if not ok]
    if missing:
        common = access.epochs(ds)[avail.all(axis=0)]
        raise InvalidArgumentError(
            f"score {str(spec)!r} is not recorded at epoch {spec.epoch} in run(s) {missing!r}; "
            f"epochs where {spec.name} is recorded in all chosen runs: {access.format_epochs(common)}")


# ------------------------------------------------------------------------------ per run
def lazy_run_scores(ds: xr.Dataset, spec: str | ScoreSpec, seeds: Sequence[int], *,
                    never_learned: str = "count") -> xr.DataArray:
    """The Dask graph of ``spec`` per run: a (run, example) float64 DataArray, not computed."""
    spec = parse_score(spec)
    options = ScoreOptions(never_learned=never_learned)
    check_available(ds, spec, seeds)
    data = spec.kind.compute(ds, seeds, spec.epoch, options)
    coords = {S.RUN: np.asarray(seeds, dtype=np.int64)}
    return xr.DataArray(data, dims=(S.RUN, S.EXAMPLE), coords=coords, name=str(spec))


def check_finite(values: np.ndarray, spec: str | ScoreSpec, *, never_learned: str = "count") -> np.ndarray:
    """``values`` of ``spec`` (any shape, examples last) if they follow the registry's
    non-finite rule, else a one-line :class:`ScorebankError` naming the score, how many
    examples break it and the first of them."""
    spec = parse_score(spec)
    values = np.asarray(values)
    flat = values.reshape(-1, values.shape[-1]) if values.ndim else values.reshape(1, 1)
    nan = np.isnan(flat).any(axis=0)
    if nan.any():
        bad = np.flatnonzero(nan)
        raise ScorebankError(
            f"score {str(spec)!r} has missing (NaN) values for {bad.size} example(s), e.g. "
            f"example {int(bad[0])}; the store is incomplete at that epoch")
    inf_ok = spec.kind.may_be_inf(ScoreOptions(never_learned=never_learned))
    inf = (np.isneginf(flat) | (np.isposinf(flat) & (not inf_ok))).any(axis=0)
    if inf.any():
        bad = np.flatnonzero(inf)
        raise ScorebankError(
            f"score {str(spec)!r} is infinite for {bad.size} example(s), e.g. example {int(bad[0])}; "
            f"scores must be finite (infinite only on request: {infinite_scores()}); the runs that "
            "produced it diverged or the store holds unusable values, choose other --runs or epochs")
    return values


def _block_nonfinite(x: np.ndarray, rho: np.ndarray, block_info=None) -> np.ndarray:
    """(r, e, n) margins -> (r, e, 1) counts of non-finite normalised margins."""
    (r0, r1), (e0, e1), _ = block_info[0]["array-location"]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        m = x.astype(np.float64) / rho[r0:r1, e0:e1, None]
    return (~np.isfinite(m)).sum(axis=2, keepdims=True)


def lazy_nonfinite_nmargins(x, rho: np.ndarray):
    """The Dask graph of how many normalised margins ``x / rho`` are not finite, per
    (run, epoch): ``x`` the streamed (run, epoch, example) margins, ``rho`` (run, epoch).
    Compute it with the analysis's own pass over ``x`` (one read)."""
    import dask.array as da

    counts = da.map_blocks(_block_nonfinite, x, np.asarray(rho, dtype=np.float64), dtype=np.int64,
                           chunks=(x.chunks[0], x.chunks[1], (1,) * len(x.chunks[2])),
                           meta=np.empty((0, 0, 0), dtype=np.int64))
    return counts.sum(axis=2)


def check_finite_nmargins(counts: np.ndarray, valid: np.ndarray, seeds: Sequence[int],
                          epochs: Sequence[int]) -> None:
    """The registry's rule for ``nmargin`` in the analyses that stream margins themselves
    (margins, overlap): a one-line :class:`ScorebankError` naming the first (run, epoch)
    whose recorded normalised margins are not all finite, and how many examples."""
    bad = np.where(np.asarray(valid, dtype=bool), np.asarray(counts), 0)
    if not bad.any():
        return
    hits = np.argwhere(bad > 0)
    i, j = (int(v) for v in hits[0])
    spec = ScoreSpec(NMARGIN, int(epochs[j]))
    more = f" (and at {len(hits) - 1} more run/epoch pair(s))" if len(hits) > 1 else ""
    raise ScorebankError(
        f"score {str(spec)!r} is not finite (NaN or inf) for {int(bad[i, j])} example(s) in run "
        f"{int(seeds[i])}{more}; normalised margins must be finite where the clean pass was recorded: "
        "choose other --runs or --epochs")


def run_scores(store: access.StoreLike, spec: str | ScoreSpec, *, runs: Iterable[int] | None = None,
               never_learned: str = "count", scheduler=None) -> xr.DataArray:
    """``spec`` for each chosen run (default: completed runs) as a (run, example) float64
    DataArray."""
    ds = access.open_store(store)
    spec = parse_score(spec)
    seeds = access.resolve_runs(ds, runs)
    lazy = lazy_run_scores(ds, spec, seeds, never_learned=never_learned)
    (values,) = access.compute(lazy.data, scheduler=scheduler)
    return lazy.copy(data=check_finite(np.asarray(values), spec, never_learned=never_learned))


# ------------------------------------------------------------------------------ averaged
def _reduce(per_run: xr.DataArray, reduce: str) -> xr.DataArray:
    return per_run.sum(S.RUN, skipna=False) if reduce == "sum" else per_run.mean(S.RUN, skipna=False)


def average_scores(store: access.StoreLike, specs: Sequence[str | ScoreSpec], *,
                   runs: Iterable[int] | None = None, reduce: str = "mean",
                   never_learned: str = "count", scheduler=None) -> xr.Dataset:
    """Scores averaged (``reduce="mean"``, Data Diet B.3) or summed over runs, one variable
    per spec (named by the spec, e.g. ``"el2n@20"``), all computed in one Dask pass.

    ``runs`` defaults to every completed run.  The result has dimension ``example`` with
    coordinates ``original_index`` (when the store has it) and ``label``; attrs record
    the runs, the reduction and the never-learned convention of forgetting."""
    lazy = lazy_average_scores(store, specs, runs=runs, reduce=reduce, never_learned=never_learned)
    values = access.compute(*[v.data for v in lazy.data_vars.values()], scheduler=scheduler)
    return checked_averages(lazy, values)


def checked_averages(lazy: xr.Dataset, values: Sequence[np.ndarray]) -> xr.Dataset:
    """:func:`lazy_average_scores` with its variables replaced by their computed ``values``
    (in order), each checked against the registry's non-finite rule (:func:`check_finite`)."""
    never_learned = lazy.attrs["never_learned"]
    return lazy.copy(data={n: check_finite(np.asarray(v), n, never_learned=never_learned)
                           for n, v in zip(lazy.data_vars, values)})


def lazy_average_scores(store: access.StoreLike, specs: Sequence[str | ScoreSpec], *,
                        runs: Iterable[int] | None = None, reduce: str = "mean",
                        never_learned: str = "count") -> xr.Dataset:
    """The Dataset :func:`average_scores` returns, its variables Dask graphs not yet
    computed nor checked (compute them in one pass with whatever else needs them, then
    :func:`checked_averages`)."""
    check_reduce(reduce)
    ds = access.open_store(store)
    parsed = [parse_score(s) for s in specs]
    if not parsed:
        raise InvalidArgumentError("no score given; name at least one, e.g. el2n@20")
    names = [str(s) for s in parsed]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InvalidArgumentError(f"score(s) {dup!r} given more than once; name each score once")
    seeds = access.resolve_runs(ds, runs)
    lazy = [_reduce(lazy_run_scores(ds, s, seeds, never_learned=never_learned), reduce) for s in parsed]
    coords = {S.LABEL: (S.EXAMPLE, access.labels(ds))}
    if S.ORIGINAL_INDEX in ds.coords or S.ORIGINAL_INDEX in ds:
        coords[S.ORIGINAL_INDEX] = (S.EXAMPLE, np.asarray(ds[S.ORIGINAL_INDEX].values))
    out = xr.Dataset({n: (S.EXAMPLE, x.data) for n, x in zip(names, lazy)}, coords=coords)
    out.attrs.update(runs=list(seeds), reduce=reduce, never_learned=never_learned)
    return out


def average_score(store: access.StoreLike, spec: str | ScoreSpec, *, runs: Iterable[int] | None = None,
                  reduce: str = "mean", never_learned: str = "count", scheduler=None) -> xr.DataArray:
    """One score averaged (or summed) over runs: an (example,) float64 DataArray named by
    the spec.  See :func:`average_scores`."""
    out = average_scores(store, [spec], runs=runs, reduce=reduce, never_learned=never_learned,
                         scheduler=scheduler)
    da_ = out[str(parse_score(spec))]
    da_.attrs.update(out.attrs)
    return da_


# ------------------------------------------------------------------------------ summaries, CSV
#: The statistics :func:`score_quantiles` returns, in order.
QUANTILES = ("mean", "std", "min", "q25", "median", "q75", "max")


def score_quantiles(values) -> dict[str, float]:
    """Summary statistics of per-example scores, as ``scorebank analyze`` prints them.

    Returns ``{"mean", "std", "min", "q25", "median", "q75", "max"}`` (that order) as Python
    floats: ``mean`` is the arithmetic mean of every value (``inf`` when some value is
    infinite, e.g. never-learned examples with ``never_learned="inf"``); ``std`` is the
    population standard deviation of the *finite* values; the five quantiles are actual
    values of the data, NumPy's ``"lower"`` percentiles (``min`` and ``max`` exactly), so
    an infinite score can be one.  All are NaN for no values."""
    x = np.asarray(values, dtype=np.float64).ravel()
    out = {name: math.nan for name in QUANTILES}
    if x.size == 0:
        return out
    finite = x[np.isfinite(x)]
    if np.isfinite(x).all():
        out["mean"] = float(np.mean(x))
    else:
        out["mean"] = math.inf if np.isinf(x).any() else math.nan
    out["std"] = float(np.std(finite)) if finite.size else math.nan
    for name, q in (("min", 0), ("q25", 25), ("median", 50), ("q75", 75), ("max", 100)):
        out[name] = float(np.percentile(x, q, method="lower"))
    return out


def scores_csv_columns(avg: xr.Dataset) -> list[str]:
    """Column names of :func:`write_scores_csv`: ``example``, then ``original_index`` and
    ``label`` when ``avg`` has them, then one column per score."""
    return ([S.EXAMPLE] + [c for c in (S.ORIGINAL_INDEX, S.LABEL) if c in avg.coords]
            + [str(n) for n in avg.data_vars])


def write_scores_csv(avg: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write the per-example scores of :func:`average_scores` to a CSV file, atomically.

    One header row (:func:`scores_csv_columns`), then one row per example in store order:
    its position, original index and label (integers), and every score written with
    ``repr(float)`` so reading it back gives the exact float64.  The rows go to a
    temporary sibling renamed onto ``path`` at the end, so an interrupted write never
    leaves a partial file (an existing ``path`` stays as it was).  Missing parent folders
    are created.  Returns ``path``."""
    from scorebank.stores.zarrstore import atomic_file

    path = Path(path)
    cols = scores_csv_columns(avg)
    values = [np.arange(avg.sizes[S.EXAMPLE])] + [np.asarray(avg[c].values) for c in cols[1:]]
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for row in zip(*values):
            w.writerow([repr(float(v)) if isinstance(v, (float, np.floating)) else int(v) for v in row])
    return path
