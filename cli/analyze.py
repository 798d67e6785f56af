"""``scorebank analyze STORE <what>`` and ``scorebank analyze-bench``: thin wrappers over
:mod:`scorebank.analysis` that print rich tables (or ``--json``) and draw ``--plot`` figures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.table import Table

from scorebank.cli.common import SCHEDULER_HELP, console, dask_scheduler, handle_errors, print_json
from scorebank.stores.errors import InvalidArgumentError

analyze_app = typer.Typer(
    help="Analyse a score store: forgetting, averaged scores, Spearman correlations, sensitivity, "
         "data separation, smallest-margin overlaps, margin distribution, difficulty, noisy labels, "
         "training curves.  "
         "Usage: scorebank analyze STORE COMMAND [OPTIONS].",
    no_args_is_help=True,
)

RUNS_HELP = "Runs (seeds) to use, e.g. 0-4 or 0,2,5.  Default: every completed run."
JSON_HELP = "Print machine-readable JSON instead of tables."
NEVER_HELP = ("Score of examples never classified correctly in a run: 'count' = presentations + 1 "
              "(default), 'inf' = Data Diet's convention.")
REDUCE_HELP = "Combine runs by 'mean' (default, Data Diet) or 'sum'."
MAX_ROWS = 15


# ------------------------------------------------------------------------------ helpers
def _store(ctx: typer.Context) -> str:
    return ctx.obj["store"]


def _runs(text: Optional[str]):
    from scorebank.analysis.access import parse_runs

    return None if text is None else parse_runs(text)


def _numbers(text: str, option: str, kind=float) -> list:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidArgumentError(f"bad {option} {text!r}; give comma-separated numbers like "
                                   f"{'20,100,200' if kind is int else '0.01,0.1'}") from None
    if not values:
        raise InvalidArgumentError(f"bad {option} {text!r}; give at least one value")
    return values


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if math.isnan(v):
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def _clean(obj):
    """JSON-safe copy: numpy scalars/arrays to Python, NaN to null."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    return obj


def _thin(values: np.ndarray, keep_all: bool) -> np.ndarray:
    """Positions of at most MAX_ROWS evenly spaced entries (first and last included)."""
    n = len(values)
    if keep_all or n <= MAX_ROWS:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, MAX_ROWS).round().astype(int))


def _saved(path: Path) -> None:
    console.print(f"figure written to [bold]{path}[/]", highlight=False)


# ------------------------------------------------------------------------------ group
@analyze_app.callback()
def analyze_main(ctx: typer.Context,
                 store: str = typer.Argument(..., help="Store path, .zip archive or URL.")) -> None:
    """Analyse a score store (read only; streams with Dask, memory bounded by a few chunks)."""
    ctx.obj = {"store": store}


@analyze_app.command("forgetting")
def forgetting_command(
    ctx: typer.Context,
    epoch: Optional[int] = typer.Option(None, "--epoch", "-e", help="Count over epochs 1..E (forgetting@E). Default: every epoch."),
    runs: Optional[str] = typer.Option(None, help=RUNS_HELP),
    never_learned: str = typer.Option("count", help=NEVER_HELP),
    reduce: str = typer.Option("mean", help=REDUCE_HELP),
    top: int = typer.Option(10, help="Also list this many most-forgotten examples."),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
    scheduler: Optional[str] = typer.Option(None, help=SCHEDULER_HELP),
) -> None:
    """Forgetting events per run (Toneva et al.; Data Diet 2.3) and the score over runs."""
    from scorebank.analysis import access
    from scorebank.analysis.forgetting import forgetting, forgetting_summary
    from scorebank.analysis.scores import check_reduce

    with handle_errors(), dask_scheduler(scheduler) as sched:
        check_reduce(reduce)
        ds = access.open_store(_store(ctx))
        out = forgetting(ds, epoch=epoch, runs=_runs(runs), never_learned=never_learned, scheduler=sched)
        doc = forgetting_summary(out, access.labels(ds), reduce=reduce, top=top).to_dict()
        rows, top_rows = doc["per_run"], doc["most_forgotten"]
        if json_output:
            print_json(_clean(doc))
            return
        table = Table("run", "presentations", "never learned", "unforgettable", "mean events (learned)",
                      "max events", "median stays-learned epoch",
                      title=f"forgetting events ({doc['spec']}, Toneva et al.)")
        for r in rows:
            table.add_row(str(r["run"]), str(r["presentations"]), str(r["never_learned"]), str(r["unforgettable"]),
                          _fmt(r["mean_events"]), str(r["max_events"]), _fmt(r["median_learned_epoch"]))
        console.print(table)
        q = doc["score"]
        console.print(f"{reduce} over {len(rows)} runs ({never_learned} for never learned): "
                      + ", ".join(f"{k} {_fmt(v)}" for k, v in q.items()), highlight=False)
        if top_rows:
            t2 = Table("example", "label", "score", title=f"{len(top_rows)} most forgotten")
            for r in top_rows:
                t2.add_row(str(r["example"]), str(r["label"]), _fmt(r["score"]))
            console.print(t2)


@analyze_app.command("scores")
def scores_command(
    ctx: typer.Context,
    specs: list[str] = typer.Argument(..., help="Score specs, e.g. el2n@20 grand@0 nmargin@200 forgetting."),
    runs: Optional[str] = typer.Option(None, help=RUNS_HELP),
    reduce: str = typer.Option("mean", help=REDUCE_HELP),
    never_learned: str = typer.Option("count", help=NEVER_HELP),
    out: Optional[Path] = typer.Option(None, help="Write the per-example averaged scores to this CSV file."),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
    scheduler: Optional[str] = typer.Option(None, help=SCHEDULER_HELP),
) -> None:
    """Scores averaged over runs (Data Diet B.3): summary statistics, optionally all values as CSV."""
    from scorebank.analysis.scores import average_scores, score_quantiles, write_scores_csv

    with handle_errors(), dask_scheduler(scheduler) as sched:
        avg = average_scores(_store(ctx), specs, runs=_runs(runs), reduce=reduce, never_learned=never_learned,
                             scheduler=sched)
        summary = {name: score_quantiles(avg[name].values) for name in avg.data_vars}
        if out is not None:
            write_scores_csv(avg, out)
        if json_output:
            print_json(_clean({"runs": avg.attrs["runs"], "reduce": reduce, "scores": summary,
                               "csv": None if out is None else str(out)}))
            return
        table = Table("score", *next(iter(summary.values())).keys(),
                      title=f"{reduce} over runs {avg.attrs['runs']}")
        for name, q in summary.items():
            table.add_row(name, *(_fmt(v) for v in q.values()))
        console.print(table)
        if out is not None:
            console.print(f"per-example scores written to [bold]{out}[/]", highlight=False)


@analyze_app.command("correlation")
def correlation_command(
    ctx: typer.Context,
    specs: list[str] = typer.Argument(..., help="Two or more score specs, e.g. el2n@20 grand@0 forgetting@200 margin@200."),
    runs: Optional[str] = typer.Option(None, help=RUNS_HELP),
    reduce: str = typer.Option("mean", help=REDUCE_HELP),
    never_learned: str = typer.Option("count", help=NEVER_HELP),
    plot: Optional[Path] = typer.Option(None, help="Also draw the matrix as a heat map (PNG)."),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
    scheduler: Optional[str] = typer.Option(None, help=SCHEDULER_HELP),
) -> None:
    """Spearman rank correlations between scores averaged over runs (Data Diet D.3, Fig. 12)."""
    from scorebank.analysis.correlation import spearman_matrix

    with handle_errors(), dask_scheduler(scheduler) as sched:
        mat = spearman_matrix(_store(ctx), specs, runs=_runs(runs), reduce=reduce, never_learned=never_learned,
                              scheduler=sched)
        names = [str(n) for n in mat["score_a"].values]
        if plot is not None:
            from scorebank.analysis.plots import plot_spearman

            plot_spearman(mat, plot)
        if json_output:
            print_json(_clean({"scores": names, "runs": mat.attrs["runs"], "spearman": mat.values}))
            return
        table = Table("", *names, title=f"Spearman rank correlation ({reduce} over runs {mat.attrs['runs']})")
        for i, name in enumerate(names):
            table.add_row(name, *(_fmt(v, 3) for v in mat.values[i]))
        console.print(table)
        if plot is not None:
            _saved(plot)


@analyze_app.command("sensitivity")
def sensitivity_command(
    ctx: typer.Context,
    spec: str = typer.Argument(..., help="Score spec, e.g. el2n@10 or grand@0."),
    runs: Optional[str] = typer.Option(None, help=RUNS_HELP),
    draws: int = typer.Option(20, help="Random k-subsets per k (every subset when there are at most this many)."),
    seed: int = typer.Option(0, help="Seed of the subset draws."),
    never_learned: str = typer.Option("count", help=NEVER_HELP),
    plot: Optional[Path] = typer.Option(None, help="Also draw the curve (PNG)."),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
    scheduler: Optional[str] = typer.Option(None, help=SCHEDULER_HELP),
) -> None:
    """Spearman between the score averaged over k runs and over all runs, k = 1..R (Data Diet D.1)."""
    from scorebank.analysis.correlation import sensitivity_curve

    with handle_errors(), dask_scheduler(scheduler) as sched:
        curve = sensitivity_curve(_store(ctx), spec, runs=_runs(runs), draws=draws, seed=seed,
                                  never_learned=never_learned, scheduler=sched)
        if plot is not None:
            from scorebank.analysis.plots import plot_sensitivity

            plot_sensitivity(curve, plot)
        rows = [{"k": int(k), **{n: float(curve[n].sel(k=k)) for n in ("mean", "std", "min", "max")},
                 "subsets": int(curve["subsets"].sel(k=k))} for k in curve["k"].values]
        if json_output:
            print_json(_clean({"spec": curve.attrs["spec"], "runs": curve.attrs["runs"], "curve": rows}))
            return
        table = Table("runs averaged (k)", "mean", "std", "min", "max", "subsets",
                      title=f"{curve.attrs['spec']}: Spearman vs the average of all {len(rows)} runs")
        for r in rows:
            table.add_row(str(r["k"]), *(_fmt(r[n], 4) for n in ("mean", "std", "min", "max")), str(r["subsets"]))
        console.print(table)
        if plot is not None:
            _saved(plot)


@analyze_app.command("separation")
def separation_command(
    ctx: typer.Context,
    runs: Optional[str] = typer.Option(None, help=RUNS_HELP),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
    scheduler: Optional[str] = typer.Option(None, help=SCHEDULER_HELP + "  (Not needed: reads per-epoch values only.)"),
) -> None:
    """Per run, the first epoch with 100% clean-pass train accuracy (margins paper)."""
    from scorebank.analysis import access
    from scorebank.analysis.separation import data_separation, final_epochs, final_train_accuracy

    with handle_errors():
        ds = access.open_store(_store(ctx))
        sep = data_separation(ds, runs=_runs(runs))
        seeds = [int(s) for s in sep["run"].values]
        final = final_epochs(ds, runs=seeds).values
        acc = final_train_accuracy(ds, runs=seeds).values
        rows = [{"run": s, "separation_epoch": None if e < 0 else int(e), "final_epoch": None if f < 0 else int(f),
                 "final_train_accuracy": float(a)}
                for s, e, f, a in zip(seeds, sep.values, final, acc)]
        if json_output:
            print_json(_clean({"runs": rows}))
            return
        table = Table("run", "separated at epoch", "last recorded epoch", "train accuracy there",
                      title="data separation (100% clean-pass train accuracy)")
        for r in rows:
            table.add_row(str(r["run"]), "never" if r["separation_epoch"] is None else str(r["separation_epoch"]),
                          _fmt(r["final_epoch"]), _fmt(r["final_train_accuracy"]))
        console.print(table)


@analyze_app.command("overlap")
def overlap_command(
    ctx: typer.Context,
    k: str = typer.Option("20,100,200", help="Set sizes k, comma-separated."),
    runs: Optional[str] = typer.Option(None, help=RUNS_HELP),
    all_epochs: bool = typer.Option(False, "--all-epochs", help=f"Show every epoch (default: at most {MAX_ROWS})."),
    plot: Optional[Path] = typer.Option(None, help="Also draw the overlap and retention curves (PNG)."),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
    scheduler: Optional[str] = typer.Option(None, help=SCHEDULER_HELP),
) -> None:
    """Overlap of the k smallest-normalised-margin sets between runs and with the final set (margins paper Figs. 6, 8, 9)."""
    from scorebank.analysis.overlap import margin_overlaps

    with handle_errors(), dask_scheduler(scheduler) as sched:
        res = margin_overlaps(_store(ctx), k=_numbers(k, "--k", int), runs=_runs(runs), scheduler=sched)
        if plot is not None:
            from scorebank.analysis.plots import plot_overlaps

            plot_overlaps(res, plot)
        ks = [int(v) for v in res["k"].values]
        ep = res["epoch"].values
        seeds = [int(s) for s in res["run"].values]
        pairwise = "pairwise_mean" in res
        if json_output:
            doc = {"k": ks, "runs": seeds, "epochs": ep,
                   "separation_epoch": {str(s): int(v) for s, v in zip(seeds, res["separation_epoch"].values)},
                   "final_epoch": {str(s): int(v) for s, v in zip(seeds, res["final_epoch"].values)},
                   "retention": {str(kk): {str(s): res["retention"].sel(k=kk).values[i] for i, s in enumerate(seeds)}
                                 for kk in ks},
                   "retention_at_separation": {str(kk): {str(s): res["at_separation"].sel(k=kk).values[i]
                                                         for i, s in enumerate(seeds)} for kk in ks}}
            if pairwise:
                doc["pairwise_mean"] = {str(kk): res["pairwise_mean"].sel(k=kk).values for kk in ks}
                doc["pairwise_min"] = {str(kk): res["pairwise_min"].sel(k=kk).values for kk in ks}
                doc["pairwise_max"] = {str(kk): res["pairwise_max"].sel(k=kk).values for kk in ks}
            print_json(_clean(doc))
            return
        rows = _thin(ep, all_epochs)
        if pairwise:
            table = Table("epoch", *[f"k={kk}" for kk in ks],
                          title="k smallest normalised margins shared by two runs:\nmean \\[min, max] over pairs")
            for j in rows:
                table.add_row(str(ep[j]), *(
                    f"{_fmt(res['pairwise_mean'].sel(k=kk).values[j], 3)} [{_fmt(res['pairwise_min'].sel(k=kk).values[j], 2)}, "
                    f"{_fmt(res['pairwise_max'].sel(k=kk).values[j], 2)}]" for kk in ks))
            console.print(table)
        table = Table("epoch", *[f"k={kk}" for kk in ks],
                      title="fraction of the final-epoch k-set present\nat each epoch, mean over runs")
        for j in rows:
            cells = []
            for kk in ks:
                vals = res["retention"].sel(k=kk).values[:, j]
                cells.append(_fmt(float(np.mean(vals)), 3) if np.isfinite(vals).all() else "-")
            table.add_row(str(ep[j]), *cells)
        console.print(table)
        t2 = Table("run", "final epoch", "separated at", *[f"k={kk}" for kk in ks],
                   title="fraction of the final-epoch k-set present\nat data separation")
        for i, s in enumerate(seeds):
            sep = int(res["separation_epoch"].values[i])
            t2.add_row(str(s), str(int(res["final_epoch"].values[i])), "never" if sep < 0 else str(sep),
                       *(_fmt(res["at_separation"].sel(k=kk).values[i], 3) for kk in ks))
        console.print(t2)
        if plot is not None:
            _saved(plot)


@analyze_app.command("margins")
def margins_command(
    ctx: typer.Context,
    gamma: str = typer.Option("0.01,0.1", help="Cutoffs gamma above the smallest normalised margin."),
    epochs: Optional[str] = typer.Option(None, help="Epochs, e.g. 0,10,200.  Default: every recorded epoch."),
    runs: Optional[str] = typer.Option(None, help=RUNS_HELP),
    by_class: bool = typer.Option(False, "--by-class", help="Also show the per-class statistics."),
    all_epochs: bool = typer.Option(False, "--all-epochs", help=f"Show every epoch (default: at most {MAX_ROWS})."),
    plot: Optional[Path] = typer.Option(None, help="Also draw sorted margin curves (first run) and AUC over epochs (PNG)."),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
    scheduler: Optional[str] = typer.Option(None, help=SCHEDULER_HELP),
) -> None:
    """Normalised-margin distribution: AUC of the sorted curve and small-margin counts (margins paper 4.2)."""
    from scorebank.analysis.distribution import margin_distribution, sorted_margins

    with handle_errors(), dask_scheduler(scheduler) as sched:
        ep_list = None if epochs is None else _numbers(epochs, "--epochs", int)
        res = margin_distribution(_store(ctx), gammas=_numbers(gamma, "--gamma"), runs=_runs(runs),
                                  epochs=ep_list, scheduler=sched)
        gam = [float(g) for g in res["gamma"].values]
        seeds = [int(s) for s in res["run"].values]
        ep = res["epoch"].values
        if plot is not None:
            from scorebank.analysis.plots import plot_margin_distribution

            first = np.isfinite(res["auc"].values[0])
            shown = ep[first][np.unique(np.linspace(0, first.sum() - 1, min(8, first.sum())).round().astype(int))]
            curves = sorted_margins(_store(ctx), run=seeds[0], epochs=[int(e) for e in shown], scheduler=sched)
            plot_margin_distribution(res, curves, plot)
        if json_output:
            doc = {"runs": seeds, "epochs": ep, "gamma": gam,
                   "auc": {str(s): res["auc"].values[i] for i, s in enumerate(seeds)},
                   "smallest": {str(s): res["smallest"].values[i] for i, s in enumerate(seeds)},
                   "n_within": {str(g): {str(s): res["n_within"].values[a, i] for i, s in enumerate(seeds)}
                                for a, g in enumerate(gam)}}
            if by_class:
                doc["classes"] = [str(c) for c in res["class_name"].values]
                doc["class_auc"] = {str(s): res["class_auc"].values[:, i].T for i, s in enumerate(seeds)}
                doc["class_n_within"] = {str(g): {str(s): res["class_n_within"].values[a, :, i].T
                                                  for i, s in enumerate(seeds)} for a, g in enumerate(gam)}
            print_json(_clean(doc))
            return
        table = Table("run", "epoch", "AUC", "smallest", *[f"within {g:g} of smallest" for g in gam],
                      title="normalised margin distribution (margin / rho)")
        for i, s in enumerate(seeds):
            for j in _thin(ep, all_epochs):
                table.add_row(str(s), str(ep[j]), _fmt(res["auc"].values[i, j]), _fmt(res["smallest"].values[i, j]),
                              *(_fmt(res["n_within"].values[a, i, j]) for a in range(len(gam))))
        console.print(table)
        if by_class:
            last = len(ep) - 1
            t2 = Table("run", "class", "size", "AUC", "smallest", *[f"within {g:g}" for g in gam],
                       title=f"per class at epoch {ep[last]}")
            for i, s in enumerate(seeds):
                for c, name in enumerate(res["class_name"].values):
                    t2.add_row(str(s), str(name), str(int(res["class_size"].values[c])),
                               _fmt(res["class_auc"].values[c, i, last]), _fmt(res["class_smallest"].values[c, i, last]),
                               *(_fmt(res["class_n_within"].values[a, c, i, last]) for a in range(len(gam))))
            console.print(t2)
        if plot is not None:
            _saved(plot)


@analyze_app.command("difficulty")
def difficulty_command(
    ctx: typer.Context,
    threshold: float = typer.Option(0.5, help="Train accuracy at which examples are split into easy and hard."),
    runs: Optional[str] = typer.Option(None, help=RUNS_HELP),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
    scheduler: Optional[str] = typer.Option(None, help=SCHEDULER_HELP),
) -> None:
    """Easy/hard examples and difficulty = runs in which an example is hard (Coherent Gradients 4.3)."""
    from scorebank.analysis.difficulty import difficulty

    with handle_errors(), dask_scheduler(scheduler) as sched:
        res = difficulty(_store(ctx), threshold=threshold, runs=_runs(runs), scheduler=sched)
        seeds = [int(s) for s in res["run"].values]
        hist = np.bincount(res["difficulty"].values, minlength=len(seeds) + 1)
        n = int(res["difficulty"].size)
        per_run = [{"run": s, "threshold_epoch": int(res["threshold_epoch"].values[i]),
                    "train_accuracy": float(res["train_accuracy"].values[i]),
                    "hard": int(res["hard"].values[i].sum())} for i, s in enumerate(seeds)]
        if json_output:
            print_json(_clean({"threshold": threshold, "runs": per_run,
                               "histogram": {str(d): int(c) for d, c in enumerate(hist)}}))
            return
        t1 = Table("run", "epoch reaching threshold", "train accuracy", "hard examples",
                   title=f"easy/hard split at train accuracy >= {threshold:g}")
        for r in per_run:
            t1.add_row(str(r["run"]), str(r["threshold_epoch"]), _fmt(r["train_accuracy"]), str(r["hard"]))
        console.print(t1)
        t2 = Table("difficulty (runs hard)", "examples", "fraction", title="difficulty distribution")
        for d, c in enumerate(hist):
            t2.add_row(str(d), str(int(c)), f"{c / n:.4f}")
        console.print(t2)


@analyze_app.command("noise")
def noise_command(
    ctx: typer.Context,
    specs: list[str] = typer.Argument(..., help="Score specs to test, e.g. el2n@10 loss@10 forgetting."),
    runs: Optional[str] = typer.Option(None, help=RUNS_HELP),
    reduce: str = typer.Option("mean", help=REDUCE_HELP),
    never_learned: str = typer.Option("count", help=NEVER_HELP),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
    scheduler: Optional[str] = typer.Option(None, help=SCHEDULER_HELP),
) -> None:
    """How well averaged scores find corrupted labels: ROC AUC, precision at the noise rate (Data Diet 4, E.2)."""
    from scorebank.analysis.noise import noise_detection

    with handle_errors(), dask_scheduler(scheduler) as sched:
        res = noise_detection(_store(ctx), specs, runs=_runs(runs), reduce=reduce, never_learned=never_learned,
                              scheduler=sched)
        rows = [{"score": str(s), "roc_auc": float(res["roc_auc"].sel(score=s)),
                 "precision_at_noise_rate": float(res["precision_at_noise_rate"].sel(score=s))}
                for s in res["score"].values]
        if json_output:
            print_json(_clean({"noise_rate": float(res["noise_rate"]), "n_corrupted": int(res["n_corrupted"]),
                               "runs": res.attrs["runs"], "scores": rows}))
            return
        table = Table("score", "ROC AUC", "precision at noise rate",
                      title=f"finding {int(res['n_corrupted'])} corrupted labels "
                            f"(noise rate {float(res['noise_rate']):.4g})")
        for r in rows:
            table.add_row(r["score"], _fmt(r["roc_auc"]), _fmt(r["precision_at_noise_rate"]))
        console.print(table)


@analyze_app.command("curves")
def curves_command(
    ctx: typer.Context,
    runs: Optional[str] = typer.Option(None, help=RUNS_HELP),
    all_epochs: bool = typer.Option(False, "--all-epochs", help=f"Show every epoch (default: at most {MAX_ROWS})."),
    plot: Optional[Path] = typer.Option(None, help="Also draw train/pristine/corrupt/test accuracy and loss per epoch (PNG)."),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Train (clean pass), pristine, corrupt and test accuracy and loss per epoch (Coherent Gradients Fig. 3)."""
    from scorebank.analysis.curves import QUANTITIES, training_curves
    from scorebank.stores import schema as S

    with handle_errors():
        res = training_curves(_store(ctx), runs=_runs(runs))
        if plot is not None:
            from scorebank.analysis.plots import plot_training_curves

            plot_training_curves(res, plot)
        seeds = [int(s) for s in res[S.RUN].values]
        ep = res[S.EPOCH].values
        names = [n for n in QUANTITIES if n in res]
        if json_output:
            doc = {"runs": seeds, "epochs": ep, "label_noise": bool(res.attrs["label_noise"]),
                   **{n: {str(s): res[n].values[i] for i, s in enumerate(seeds)}
                      for n in names + [S.COMPLETED, S.RECORDED]}}
            print_json(_clean(doc))
            return
        done = np.flatnonzero(res[S.COMPLETED].values.any(axis=0))
        recorded = res[S.RECORDED].values
        noisy = bool(res.attrs["label_noise"])
        for what, group in (("accuracy", (S.TRAIN_ACCURACY, S.PRISTINE_ACCURACY, S.CORRUPT_ACCURACY,
                                          S.TEST_ACCURACY)),
                            ("loss", (S.TRAIN_LOSS, S.PRISTINE_LOSS, S.CORRUPT_LOSS, S.TEST_LOSS))):
            cols = [n for n in group if n in res]
            note = ("\n(corrupt: w.r.t. the corrupted label, i.e. memorised)" if noisy and what == "accuracy"
                    else "")
            table = Table("epoch", "runs recorded", *(n.split("_")[0] for n in cols),
                          title=f"{what} per epoch, mean over runs {seeds}{note}")
            for j in done[_thin(done, all_epochs)]:
                cells = []
                for n in cols:
                    col = res[n].values[:, j]
                    ok = np.isfinite(col)
                    cells.append(_fmt(float(col[ok].mean())) if ok.any() else "-")
                table.add_row(str(ep[j]), str(int(recorded[:, j].sum())), *cells)
            console.print(table)
        if plot is not None:
            _saved(plot)


@analyze_app.command("manifests")
def manifests_command(
    ctx: typer.Context,
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """The selection manifests recorded in the store by 'scorebank select' (its history)."""
    from scorebank.stores.manifest import read_store_manifests

    with handle_errors():
        store = _store(ctx)
        docs = [m.to_dict(with_indices=False) for m in read_store_manifests(store)]
        if json_output:
            print_json(_clean({"manifests": docs}))
            return
        table = Table("name", "strategy", "score", "runs", "kept", "created", title=f"manifests in {store}")
        for d in docs:
            table.add_row(d["name"], d["strategy"], d["score"] or "-", ",".join(map(str, d["runs"])) or "-",
                          f"{d['n_kept']}/{d['n_examples']}", d["created"])
        console.print(table)


# ------------------------------------------------------------------------------ benchmark
def bench_command(
    runs: int = typer.Option(10, help="Runs R of the synthetic store."),
    epochs: int = typer.Option(200, help="Training epochs E (the store holds epochs 0..E)."),
    examples: int = typer.Option(50_000, help="Examples N."),
    classes: int = typer.Option(10, help="Classes."),
    directory: Optional[Path] = typer.Option(None, "--dir", help="Where to build the store (default: a temporary directory, removed afterwards)."),
    keep: bool = typer.Option(False, "--keep", help="Keep the built store (with --dir)."),
    reuse: bool = typer.Option(False, "--reuse", help="Time an existing store at --dir/bench.zarr instead of building one."),
    scheduler: str = typer.Option("local", help=SCHEDULER_HELP + "  Benchmark default: local (a LocalCluster)."),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Build a synthetic R x E x N store chunk by chunk, then time forgetting, a Spearman
    matrix and an overlap curve: seconds, peak memory, MB/s of score data read."""
    from scorebank.analysis.bench import bench_store, run_benchmark

    with handle_errors():
        with bench_store(directory, runs=runs, epochs=epochs, examples=examples, classes=classes,
                         keep=keep, reuse=reuse) as bench, dask_scheduler(scheduler) as sched:
            res = run_benchmark(bench.path, scheduler=sched, build_seconds=bench.build_seconds)
        if json_output:
            print_json(_clean(res.to_dict()))
            return
        table = Table("analysis", "seconds", "CPU s", "MB read", "MB/s", "peak memory (MB)",
                      title=f"analysis benchmark: {res.runs} runs x {res.epochs} epochs x {res.examples} examples "
                            f"({res.store_bytes_on_disk / 1e6:.0f} MB on disk)")
        for t in res.timings:
            table.add_row(t.name, f"{t.seconds:.2f}", f"{t.cpu_seconds:.2f}", f"{t.bytes_read / 1e6:.0f}",
                          f"{t.mb_per_s:.0f}", f"{t.peak_memory_bytes / 1e6:.0f}")
        table.add_row("total", f"{res.total_seconds:.2f}", f"{sum(t.cpu_seconds for t in res.timings):.2f}",
                      f"{res.total_bytes / 1e6:.0f}", f"{res.mb_per_s:.0f}", f"{res.peak_memory_bytes / 1e6:.0f}")
        console.print(table)
        console.print(f"{res.cpu_count} CPUs, load average {res.load_average[0]:g} at the start"
                      + (f"; store built in {res.build_seconds:.1f} s" if res.build_seconds is not None else ""),
                      highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(analyze_app, name="analyze")
    app.command("analyze-bench")(bench_command)
