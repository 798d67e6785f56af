"""Score specifications ``name@epoch`` and scores averaged over runs.

Scores (each a per-example number at one epoch of one run):

``el2n``
    EL2N, ``||softmax(f(x)) - onehot(y)||_2`` (Data Diet, Paul et al. 2021, Def. 2.3).
``grand``
    GraNd, ``||grad_w loss(x, y)||_2`` (Data Diet Def. 2.1); present only in stores made
    with GraNd epochs.
``loss``
    cross-entropy of the example.
``margin``
    classification margin ``f_y(x) - max_{j != y} f_j(x)`` on raw logits (Banburski et al.
    2021, "Distribution of classification margins", Sec. 2.1).
``nmargin``
    normalised margin ``margin / rho``, rho = ``norm_product`` (the margins paper's
    product of layer norms, Sec. 3), computed in float64.
``forgetting``
    forgetting events (Toneva et al. 2019, Data Diet Sec. 2.3; see
    :mod:`scorebank.analysis.forgetting`); ``forgetting`` counts over every completed
    epoch, ``forgetting@E`` over epochs 1..E.

Data Diet (appendix B.3) averages every score over independent runs; :func:`average_score`
does that over a chosen set of runs (default: every completed run).  Each score declares
which end is *hard* (:attr:`ScoreSpec.high_is_hard`): high EL2N, GraNd, loss and forgetting,
low (normalised) margin.
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
from scorebank.analysis.forgetting import check_never_learned, lazy_forgetting
from scorebank.stores import schema as S
from scorebank.stores.errors import InvalidArgumentError, ScorebankError

NMARGIN = "nmargin"
FORGETTING = "forgetting"
#: Every score name a spec may use, in display order.
SCORES = (S.EL2N, S.GRAND, S.LOSS, S.MARGIN, NMARGIN, FORGETTING)
_HIGH_IS_HARD = {S.EL2N: True, S.GRAND: True, S.LOSS: True, FORGETTING: True,
                 S.MARGIN: False, NMARGIN: False}
#: How scores of several runs are combined.
REDUCTIONS = ("mean", "sum")


@dataclass(frozen=True)
class ScoreSpec:
    """A parsed score specification: ``name`` and ``epoch`` (None only for forgetting
    over all epochs)."""

    name: str
    epoch: int | None = None

    def __str__(self) -> str:
        return self.name if self.epoch is None else f"{self.name}@{self.epoch}"

    @property
    def high_is_hard(self) -> bool:
        """True when large values mark hard examples (EL2N, GraNd, loss, forgetting)."""
        return _HIGH_IS_HARD[self.name]


def parse_score(spec: str | ScoreSpec) -> ScoreSpec:
    """``"el2n@20"`` -> ``ScoreSpec("el2n", 20)``; ``"forgetting"`` -> all epochs."""
    if isinstance(spec, ScoreSpec):
        return spec
    m = re.fullmatch(r"\s*([A-Za-z0-9_]+)\s*(?:@\s*(-?\d+)\s*)?", str(spec))
    accepted = ", ".join(SCORES)
    if m is None or m.group(1).lower() not in SCORES:
        raise InvalidArgumentError(
            f"unknown score {spec!r}; use NAME@EPOCH with NAME one of {accepted} "
            "(e.g. el2n@20, grand@0, nmargin@200, forgetting@200; 'forgetting' alone counts "
            "over every epoch)")
    name = m.group(1).lower()
    epoch = None if m.group(2) is None else int(m.group(2))
    if epoch is not None and epoch < 0:
        raise InvalidArgumentError(f"score {spec!r} names a negative epoch; epochs start at 0")
    if epoch is None and name != FORGETTING:
        raise InvalidArgumentError(f"score {spec!r} needs an epoch: write {name}@E, e.g. {name}@20")
    return ScoreSpec(name, epoch)


def check_reduce(reduce: str) -> str:
    if reduce not in REDUCTIONS:
        raise InvalidArgumentError(f"reduce {reduce!r} is not accepted; use 'mean' or 'sum'")
    return reduce


# ------------------------------------------------------------------------------ availability
def _grand_available(ds: xr.Dataset, seeds: Sequence[int]) -> np.ndarray:
    """(run, epoch) bool: GraNd was recorded.  From the configuration's ``grand_epochs``
    when present, else by probing the first example of every (run, epoch)."""
    completed = access.completed_mask(ds, seeds)
    cfg = access.config(ds)
    if "grand_epochs" in cfg:
        wanted = np.isin(access.epochs(ds), np.asarray(cfg["grand_epochs"], dtype=np.int64))
        return completed & wanted[None, :]
    probe = ds[S.GRAND].isel({S.RUN: access.run_positions(ds, seeds), S.EXAMPLE: 0}).values
    return completed & ~np.isnan(probe)


def available(ds: xr.Dataset, spec: ScoreSpec, seeds: Sequence[int]) -> np.ndarray:
    """(run, epoch) bool: ``spec``'s variable holds values at that epoch of each run."""
    if spec.name == S.GRAND:
        return _grand_available(ds, seeds)
    if spec.name == FORGETTING:
        return access.completed_mask(ds, seeds)
    rec = access.recorded_mask(ds, seeds)
    if spec.name == NMARGIN:
        rho = access.per_epoch(ds, S.NORM_PRODUCT, seeds)
        rec &= np.isfinite(rho) & (rho > 0)
    return rec


def check_available(ds: xr.Dataset, spec: ScoreSpec, seeds: Sequence[int]) -> None:
    """Raise :class:`InvalidArgumentError` naming the epochs that exist when ``spec`` is not
    recorded in every one of ``seeds``."""
    if spec.name == S.GRAND and S.GRAND not in ds:
        present = [s for s in SCORES if s != S.GRAND]
        raise InvalidArgumentError(
            f"score {str(spec)!r}: this store has no GraNd (it was made without --grand-epochs); "
            f"available scores: {', '.join(present)}")
    if spec.name == FORGETTING:
        return  # checked by lazy_forgetting
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
    check_never_learned(never_learned)
    check_available(ds, spec, seeds)
    coords = {S.RUN: np.asarray(seeds, dtype=np.int64)}
    if spec.name == FORGETTING:
        lf = lazy_forgetting(ds, list(seeds), spec.epoch)
        return xr.DataArray(lf.score(never_learned), dims=(S.RUN, S.EXAMPLE), coords=coords,
                            name=str(spec))
    var = S.MARGIN if spec.name == NMARGIN else spec.name
    pos = access.epoch_position(ds, spec.epoch)
    data = access.select(ds, var, runs=access.run_positions(ds, seeds), epochs=pos).astype(np.float64)
    if spec.name == NMARGIN:
        rho = access.per_epoch(ds, S.NORM_PRODUCT, seeds)[:, pos].astype(np.float64)
        data = data / rho[:, None]
    return xr.DataArray(data, dims=(S.RUN, S.EXAMPLE), coords=coords, name=str(spec))


def _finish(values: np.ndarray, spec: ScoreSpec) -> np.ndarray:
    if np.isnan(values).any():
        bad = np.flatnonzero(np.isnan(values.reshape(-1, values.shape[-1])).any(axis=0))
        raise ScorebankError(
            f"score {str(spec)!r} has missing (NaN) values for {bad.size} example(s), e.g. "
            f"example {int(bad[0])}; the store is incomplete at that epoch")
    return values


def run_scores(store: access.StoreLike, spec: str | ScoreSpec, *, runs: Iterable[int] | None = None,
               never_learned: str = "count", scheduler=None) -> xr.DataArray:
    """``spec`` for each chosen run (default: completed runs) as a (run, example) float64
    DataArray."""
    ds = access.open_store(store)
    spec = parse_score(spec)
    seeds = access.resolve_runs(ds, runs)
    lazy = lazy_run_scores(ds, spec, seeds, never_learned=never_learned)
    (values,) = access.compute(lazy.data, scheduler=scheduler)
    return lazy.copy(data=_finish(np.asarray(values), spec))


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
    values = access.compute(*[x.data for x in lazy], scheduler=scheduler)
    coords = {S.LABEL: (S.EXAMPLE, access.labels(ds))}
    if S.ORIGINAL_INDEX in ds.coords or S.ORIGINAL_INDEX in ds:
        coords[S.ORIGINAL_INDEX] = (S.EXAMPLE, np.asarray(ds[S.ORIGINAL_INDEX].values))
    out = xr.Dataset({n: (S.EXAMPLE, _finish(np.asarray(v), s)) for n, v, s in zip(names, values, parsed)},
                     coords=coords)
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
