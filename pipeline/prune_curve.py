"""Pruning curves and the sliding-window study (Data Diet Figs. 1 and 2).

A curve is a grid of cells; each cell selects a subset with the selection library
(:func:`scorebank.analysis.selection.select`, never re-implemented here) and retrains
fresh networks on it with :func:`scorebank.pipeline.retrain.run_job` (fixed optimiser-step
budget by default), into the store group ``retrain/<cell name>``.  Re-running skips the
finished seeds of every cell, so an interrupted curve resumes where it stopped.

Pruning curve (Data Diet Fig. 1, bottom row): ``fractions`` are the fractions of the
training set *pruned*, ``p``; a cell keeps ``1 - p`` of the data with ``strategy``
(``keep-highest``: prune the lowest scores, Data Diet's rule; ``random``: the baseline;
any other fraction-based strategy of the selection library).

Sliding window (Data Diet Fig. 2): with ``offsets``, the strategy ``window`` keeps the
fixed fraction ``window_fraction`` of the data after discarding the ``offset`` fraction
with the lowest scores; ``random`` at the same kept fraction is drawn as a baseline band.

Every cell reports the mean final test accuracy over its seeds and the 16th-84th
percentile band (Data Diet's reporting), next to the full-data accuracy: the mean final
test accuracy of the store's completed scoring runs, with their band.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from scorebank.pipeline.lifecycle import ProgressEvent
from scorebank.pipeline.retrain import (RetrainJob, StoreData, _check_seeds, _store_data, band,
                                        check_group_name, full_data_accuracy, plan_retrain, retrain_summary,
                                        run_job, run_jobs)
from scorebank.stores.errors import InvalidArgumentError

FRACTION_STRATEGIES = ("keep-highest", "keep-lowest", "random", "stratified")


@dataclass(frozen=True)
class Cell:
    """One point of a curve: a strategy at one fraction pruned (or window offset)."""

    strategy: str
    fraction_kept: float
    offset: float | None  # window only
    name: str

    @property
    def fraction_pruned(self) -> float:
        return round(1.0 - self.fraction_kept, 12)


@dataclass(frozen=True)
class CurveRow:
    """One line of the curve's table."""

    strategy: str
    score: str | None
    fraction_pruned: float
    fraction_kept: float
    offset: float | None
    subset_size: int
    seeds: tuple[int, ...]
    accuracies: tuple[float, ...]
    mean: float
    p16: float
    p84: float
    full_data_accuracy: float
    difference: float
    group: str


@dataclass(frozen=True)
class Curve:
    store: str
    score: str
    mode: str  # "fraction" or "window"
    rows: tuple[CurveRow, ...]
    full_data: dict  # {"mean", "p16", "p84", "accuracies"}

    def to_dict(self) -> dict:
        return {"store": self.store, "score": self.score, "mode": self.mode, "full_data": self.full_data,
                "rows": [asdict(r) for r in self.rows]}


def _fraction(v, what: str, lo_open: bool, hi_open: bool) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v > 0 if lo_open else v >= 0) and (v < 1 if hi_open else v <= 1)
    if not ok:
        lo, hi = "(0" if lo_open else "[0", "1)" if hi_open else "1]"
        raise InvalidArgumentError(f"{what} {v!r} is outside {lo}, {hi}")
    return float(v)


def _slug(x: float) -> str:
    return f"{x:g}"


def plan_cells(strategies: Sequence[str], *, score: str, fractions: Sequence[float] | None = None,
               offsets: Sequence[float] | None = None, window_fraction: float | None = None,
               seed: int = 0, class_balanced: bool = False, prefix: str = "curve") -> tuple[str, list[Cell]]:
    """The cells of a curve and its mode (``"fraction"`` or ``"window"``); see the module
    docstring.  Cell names: ``<prefix>-<score>-<strategy>[-cb]-prune<p>`` (random:
    ``<prefix>-random[-cb]-prune<p>-seed<S>``), window: ``<prefix>-<score>-window[-cb]-keep<F>-offset<O>``."""
    strategies = list(dict.fromkeys(strategies))
    if not strategies:
        raise InvalidArgumentError("no strategies given; pass e.g. --strategies keep-highest,random")
    cb = "-cb" if class_balanced else ""
    cells: list[Cell] = []
    if offsets is not None:
        if fractions is not None:
            raise InvalidArgumentError("give --fractions (pruning curve) or --offsets with --fraction (sliding window), not both")
        bad = [s for s in strategies if s not in ("window", "random")]
        if bad or "window" not in strategies:
            raise InvalidArgumentError(
                f"--offsets is the sliding-window study: use --strategy window (optionally with random), not {bad or strategies!r}")
        if window_fraction is None:
            raise InvalidArgumentError("the sliding window needs --fraction F, the fraction of the data each window keeps")
        f = _fraction(window_fraction, "--fraction", True, False)
        offs = sorted(set(_fraction(o, "--offsets value", False, True) for o in offsets))
        if not offs:
            raise InvalidArgumentError("--offsets is empty; give e.g. 0,0.1,0.2")
        for o in offs:
            if o + f > 1 + 1e-12:
                raise InvalidArgumentError(
                    f"--offsets value {o!r} with --fraction {f!r} runs past the end of the sorted data "
                    "(offset + fraction > 1); drop that offset or lower --fraction")
            cells.append(Cell("window", f, o, check_group_name(f"{prefix}-{score}-window{cb}-keep{_slug(f)}-offset{_slug(o)}")))
        if "random" in strategies:
            cells.append(Cell("random", f, None, check_group_name(f"{prefix}-random{cb}-keep{_slug(f)}-seed{seed}")))
        return "window", cells
    if window_fraction is not None:
        raise InvalidArgumentError("--fraction is the sliding window's kept fraction and needs --offsets; "
                                   "a pruning curve takes --fractions (fractions pruned)")
    bad = [s for s in strategies if s not in FRACTION_STRATEGIES]
    if bad:
        raise InvalidArgumentError(
            f"strategy {bad[0]!r} cannot make a pruning curve; choose from {', '.join(FRACTION_STRATEGIES)} "
            "(window: give --offsets and --fraction)")
    if not fractions:
        raise InvalidArgumentError("no --fractions given; pass fractions pruned like 0.1,0.3,0.5")
    pruned = sorted(set(_fraction(p, "--fractions value (fraction pruned)", False, True) for p in fractions))
    for strategy in strategies:
        for p in pruned:
            keep = round(1.0 - p, 12)
            if strategy == "random":
                name = f"{prefix}-random{cb}-prune{_slug(p)}-seed{seed}"
            else:
                name = f"{prefix}-{score}-{strategy}{cb}-prune{_slug(p)}"
            cells.append(Cell(strategy, keep, None, check_group_name(name)))
    return "fraction", cells


@dataclass(frozen=True)
class CurveEvent:
    """Progress of a curve: ``cell`` (0-based) of ``n_cells``, and the cell's retrain event
    (a :class:`~scorebank.pipeline.lifecycle.ProgressEvent` with ``group`` = the cell's name)."""

    cell: int
    n_cells: int
    name: str
    event: ProgressEvent


def prune_curve(store: str | os.PathLike, *, score: str, strategies: Sequence[str], seeds: Sequence[int],
                fractions: Sequence[float] | None = None, offsets: Sequence[float] | None = None,
                window_fraction: float | None = None, runs: Sequence[int] | None = None, seed: int = 0,
                class_balanced: bool = False, prefix: str = "curve", overrides: dict | None = None,
                budget: str = "steps", device: str = "auto", overwrite: bool = False,
                progress: Callable[[CurveEvent], None] | None = None, data=None, scheduler=None,
                client=None, gpus_per_run: int = 0) -> Curve:
    """Run (or resume) a pruning curve or sliding-window study and return its table.

    Every cell is selected and planned (subset, options, step budget, consistency with an
    existing group) before the first network trains.  ``score`` is a score spec
    (``el2n@20``) averaged over the scoring ``runs`` (default: every completed run);
    ``seed`` seeds the random strategy; ``seeds`` are the retrain seeds of every cell.
    ``client``: a ``distributed.Client``; every (cell, seed) run is then one Dask task, all
    submitted at once (:func:`scorebank.pipeline.retrain.run_jobs`); ``scheduler`` is the
    Dask scheduler of the selections."""
    from scorebank.analysis.selection import select, to_manifest

    seeds = _check_seeds(seeds)
    mode, cells = plan_cells(strategies, score=score, fractions=fractions, offsets=offsets,
                             window_fraction=window_fraction, seed=seed, class_balanced=class_balanced,
                             prefix=prefix)
    jobs: list[tuple[Cell, RetrainJob]] = []
    for cell in cells:
        is_random = cell.strategy == "random"
        sel = select(store, cell.strategy, score=None if is_random else score, runs=runs,
                     fraction=cell.fraction_kept, offset=cell.offset,
                     seed=seed if cell.strategy in ("random", "stratified") else None,
                     class_balanced=class_balanced, scheduler=scheduler)
        manifest = to_manifest(sel, store, name=cell.name)
        jobs.append((cell, plan_retrain(store, sel.indices, cell.name, overrides=overrides, budget=budget,
                                        manifest=manifest.to_dict(with_indices=False), source="manifest",
                                        overwrite=overwrite)))
    sd = _store_data(store, jobs[0][1], device, data)
    if client is not None:
        index = {cell.name: i for i, (cell, _) in enumerate(jobs)}

        def relay_all(event: ProgressEvent) -> None:
            if progress:
                progress(CurveEvent(index[event.group], len(jobs), event.group, event))

        run_jobs(store, [job for _, job in jobs], seeds, sd, overwrite=overwrite, progress=relay_all, client=client,
                 gpus_per_run=gpus_per_run, data=None if isinstance(data, StoreData) else data)
        return curve_table(store, cells, score=score, mode=mode, seeds=seeds)
    for i, (cell, job) in enumerate(jobs):
        def relay(event: ProgressEvent, i=i, name=cell.name) -> None:
            if progress:
                progress(CurveEvent(i, len(jobs), name, event))

        run_job(store, job, seeds, sd, overwrite=overwrite, progress=relay)
    return curve_table(store, cells, score=score, mode=mode, seeds=seeds)


def curve_table(store: str | os.PathLike, cells: Sequence[Cell], *, score: str, mode: str,
                seeds: Sequence[int] | None = None) -> Curve:
    """The table of finished cells (mean, 16-84 band over ``seeds``, default all completed)."""
    full_mean, full_values = full_data_accuracy(store)
    _, f16, f84 = band(full_values)
    summary = {r.group: r for r in retrain_summary(store, [c.name for c in cells])}
    rows = []
    for cell in cells:
        r = summary[cell.name]
        pairs = [(s, a) for s, a in zip(r.seeds, r.final_accuracies) if seeds is None or s in seeds]
        accs = tuple(a for _, a in pairs)
        mean, p16, p84 = band(accs)
        rows.append(CurveRow(strategy=cell.strategy, score=None if cell.strategy == "random" else score,
                             fraction_pruned=cell.fraction_pruned, fraction_kept=cell.fraction_kept,
                             offset=cell.offset, subset_size=r.subset_size, seeds=tuple(s for s, _ in pairs),
                             accuracies=accs, mean=mean, p16=p16, p84=p84, full_data_accuracy=full_mean,
                             difference=mean - full_mean, group=cell.name))
    return Curve(os.fspath(store), score, mode, tuple(rows),
                 {"mean": full_mean, "p16": f16, "p84": f84, "accuracies": list(full_values)})


CSV_COLUMNS = ("strategy", "score", "fraction_pruned", "fraction_kept", "offset", "subset_size", "n_seeds",
               "mean", "p16", "p84", "full_data_accuracy", "difference", "group")


def write_table(curve: Curve, csv_path: str | os.PathLike | None = None,
                json_path: str | os.PathLike | None = None) -> None:
    """CSV (one row per cell, :data:`CSV_COLUMNS`) and/or JSON (everything, with per-seed
    accuracies and the full-data reference)."""
    if csv_path is not None:
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for r in curve.rows:
                d = asdict(r)
                d["n_seeds"] = len(r.seeds)
                w.writerow(["" if d[c] is None else d[c] for c in CSV_COLUMNS])
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(curve.to_dict(), indent=1, default=_nan_safe) + "\n")


def _nan_safe(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


def plot_curve(curve: Curve, path: str | os.PathLike, *, title: str = "") -> Path:
    """PNG of final test accuracy vs fraction pruned (or window offset), one line per
    strategy with its 16-84 percentile band, and the full-data accuracy as a dashed line
    with its band (Data Diet Fig. 1 bottom row / Fig. 2)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    window = curve.mode == "window"
    xs_all: list[float] = []
    for k, strategy in enumerate(dict.fromkeys(r.strategy for r in curve.rows)):
        rows = [r for r in curve.rows if r.strategy == strategy and r.seeds]
        if not rows:
            continue
        color = f"C{k}"
        label = strategy if strategy == "random" else f"{strategy} ({curve.score})"
        if window and strategy == "random":  # one subset size: a horizontal baseline band
            r = rows[0]
            ax.axhline(r.mean, color=color, lw=1.5, label=f"random {r.fraction_kept:g} of the data")
            ax.axhspan(r.p16, r.p84, color=color, alpha=0.15, lw=0)
            continue
        rows.sort(key=lambda r: r.offset if window else r.fraction_pruned)
        x = [r.offset if window else r.fraction_pruned for r in rows]
        xs_all += x
        ax.plot(x, [r.mean for r in rows], "o-", color=color, label=label)
        ax.fill_between(x, [r.p16 for r in rows], [r.p84 for r in rows], color=color, alpha=0.2, lw=0)
    full = curve.full_data
    if math.isfinite(full["mean"]):
        ax.axhline(full["mean"], color="k", ls="--", lw=1, label="full data")
        ax.axhspan(full["p16"], full["p84"], color="k", alpha=0.08, lw=0)
    ax.set_xlabel("offset (fraction of lowest-scoring examples discarded)" if window
                  else "fraction of the training set pruned")
    ax.set_ylabel("final test accuracy")
    seeds = max((len(r.seeds) for r in curve.rows), default=0)
    ax.set_title(title or (f"window keeping {curve.rows[0].fraction_kept:g} of the data, " if window else "")
                 + f"mean and 16-84 percentile band over {seeds} seeds", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out
