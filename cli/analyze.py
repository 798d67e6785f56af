"""``scorebank analyze STORE <what>`` and ``scorebank analyze-bench``: thin wrappers over
:mod:`scorebank.analysis`.  Each subcommand computes, builds one JSON document and the
tables showing it, and hands both to :func:`scorebank.cli.output.emit` (table, ``--json``,
``--plot``: one output path)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from scorebank.cli.common import SCHEDULER_HELP, dask_scheduler, handle_errors
from scorebank.cli.options import OptionGroup, with_groups
from scorebank.cli.output import MAX_ROWS, Figure, Grid, emit, fmt, thin
from scorebank.cli.text import plain
from scorebank.stores.errors import InvalidArgumentError


class StoreFirst(TyperGroup):
    """The ``analyze`` group: ``scorebank analyze STORE SUBCOMMAND``.  A subcommand name where
    the store goes (``scorebank analyze forgetting scores.zarr``) is a usage error saying the
    store comes first, not "No such command 'scores.zarr'"."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        first = args[0] if args else None
        if first in self.commands and not os.path.exists(first) and not {"--help", "-h"} & set(args):
            store = next((a for a in args[1:] if not a.startswith("-") and os.path.exists(a)), "STORE")
            ctx.fail(f"the store comes first: scorebank analyze {store} {first} (usage: scorebank analyze STORE "
                     f"SUBCOMMAND [OPTIONS]); {first!r} is a subcommand, not a store")
        return super().parse_args(ctx, args)


analyze_app = typer.Typer(
    cls=StoreFirst,
    help="Analyse a score store: forgetting, averaged scores, Spearman correlations, sensitivity, "
         "data separation, smallest-margin overlaps, margin distribution, difficulty, noisy labels, "
         "training curves.  "
         "Usage: scorebank analyze STORE COMMAND [OPTIONS].",
    no_args_is_help=True,
)

#: where a help text lists a registry of scorebank.analysis; filled in when the help is
#: shown (:class:`ScoreHelp`), so that building the command line imports no analysis module
SPECS_HELP = "<<scores>>"
STRATEGIES_HELP = "<<strategies>>"


def _registry_help(placeholder: str) -> str:
    """The text :class:`ScoreHelp` puts in place of ``placeholder``."""
    if placeholder == SPECS_HELP:
        from scorebank.analysis.registry import score_help

        return score_help()
    from scorebank.analysis.selection import STRATEGIES

    return STRATEGIES.help_text()


class ScoreHelp(TyperCommand):
    """A command whose help lists the score registry or the selection strategies: the
    placeholders :data:`SPECS_HELP` and :data:`STRATEGIES_HELP` in its parameters' help are
    replaced by the registries' help texts when the help is formatted."""

    def format_help(self, ctx, formatter) -> None:
        for placeholder in (SPECS_HELP, STRATEGIES_HELP):
            params = [p for p in self.params if placeholder in (p.help or "")]
            if params:
                text = _registry_help(placeholder)
                text = text if self.rich_markup_mode is None else escape(text)  # "forgetting[@E]"
                for p in params:
                    p.help = p.help.replace(placeholder, text)
        return super().format_help(ctx, formatter)
NEVER_HELP = ("Score of examples never classified correctly in a run: 'count' = presentations + 1 "
              "(default), 'inf' = Data Diet's convention.")

# options shared by the subcommands, declared once: single options as Annotated aliases, the
# options of scores averaged over runs and of every output as groups (cli.options.with_groups)
RUNS_HELP = "Runs (seeds) to use, e.g. 0-4 or 0,2,5.  Default: every completed run."
Runs = Annotated[Optional[str], typer.Option("--runs", help=RUNS_HELP)]
NeverLearned = Annotated[str, typer.Option("--never-learned", help=NEVER_HELP)]
AllEpochs = Annotated[bool, typer.Option("--all-epochs", help=f"Show every epoch (default: at most {MAX_ROWS}).")]
AVERAGED = OptionGroup({
    "runs": (Optional[str], typer.Option(None, "--runs", help=RUNS_HELP)),
    "reduce": (str, typer.Option("mean", "--reduce", help="Combine runs by 'mean' (default, Data Diet) or 'sum'.")),
    "never_learned": (str, typer.Option("count", "--never-learned", help=NEVER_HELP)),
})
JSON_HELP = "Print machine-readable JSON instead of tables."
JsonOutput = Annotated[bool, typer.Option("--json", help=JSON_HELP)]
OUTPUT = OptionGroup({
    "json_output": (bool, typer.Option(False, "--json", help=JSON_HELP)),
    "scheduler": (Optional[str], typer.Option(None, "--scheduler", help=SCHEDULER_HELP)),
})


def _plot_option(what: str):
    """A ``--plot PATH`` option drawing ``what``."""
    return Annotated[Optional[Path], typer.Option("--plot", help=f"Also draw {what} (PNG).")]


HeatMapPlot = _plot_option("the matrix as a heat map")
CurvePlot = _plot_option("the curve")
OverlapPlot = _plot_option("the overlap and retention curves")
MarginsPlot = _plot_option("sorted margin curves (first run) and AUC over epochs")
CurvesPlot = _plot_option("train/pristine/corrupt/test accuracy and loss per epoch")

#: commands on several scores averaged over runs: the specs, AVERAGED and OUTPUT
SCORED = OptionGroup({
    "specs": (list[str], typer.Argument(..., help="Score specs, e.g. el2n@20 grand@0 nmargin@200 forgetting.  "
                                                  + SPECS_HELP)),
    **AVERAGED.options, **OUTPUT.options,
})


# ------------------------------------------------------------------------------ helpers
def command(name: str):
    """Register an ``analyze`` subcommand, its option groups expanded (:func:`with_groups`)."""
    return lambda function: analyze_app.command(name, cls=ScoreHelp)(with_groups(function))


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


def _figure(path: Optional[Path], draw_name: str, *args) -> Figure:
    """The ``--plot`` request drawn by ``scorebank.analysis.plots.<draw_name>(*args, path)``."""
    def draw(where: Path) -> None:
        from scorebank.analysis import plots

        getattr(plots, draw_name)(*args, where)
    return Figure(path, draw)


def _averaging(options: dict) -> dict:
    """The AVERAGED options among ``options`` as the analysis functions take them (runs parsed)."""
    return {**{name: options[name] for name in AVERAGED.options}, "runs": _runs(options["runs"])}


def _per_run(values, seeds) -> dict:
    """``{str(seed): values[i]}``: the JSON shape of per-run results."""
    return {str(s): values[i] for i, s in enumerate(seeds)}


# ------------------------------------------------------------------------------ group
@analyze_app.callback()
def analyze_main(ctx: typer.Context,
                 store: str = typer.Argument(..., metavar="STORE", help="Store path, .zip archive or URL (it comes first).")) -> None:
    """Analyse a score store (read only; streams with Dask, memory bounded by a few chunks)."""
    ctx.obj = {"store": store}


@command("forgetting")
def forgetting_command(
    ctx: typer.Context,
    epoch: Optional[int] = typer.Option(None, "--epoch", "-e", help="Count over epochs 1..E (forgetting@E). Default: every epoch."),
    averaged: dict = AVERAGED,
    top: int = typer.Option(10, help="Also list this many most-forgotten examples."),
    output: dict = OUTPUT,
) -> None:
    """Forgetting events per run (Toneva et al.; Data Diet 2.3) and the score over runs."""
    from scorebank.analysis import access
    from scorebank.analysis.forgetting import forgetting, forgetting_summary
    from scorebank.analysis.scores import check_reduce

    reduce, never_learned = averaged["reduce"], averaged["never_learned"]
    with handle_errors(), dask_scheduler(output["scheduler"]) as sched:
        check_reduce(reduce)
        ds = access.open_store(_store(ctx))
        out = forgetting(ds, epoch=epoch, runs=_runs(averaged["runs"]), never_learned=never_learned, scheduler=sched)
        doc = forgetting_summary(out, access.labels(ds), reduce=reduce, top=top).to_dict()
        emit(doc, _forgetting_tables(doc, reduce, never_learned), json_output=output["json_output"])


@command("scores")
def scores_command(
    ctx: typer.Context,
    scored: dict = SCORED,
    out: Optional[Path] = typer.Option(None, help="Write the per-example averaged scores to this CSV file."),
) -> None:
    """Scores averaged over runs (Data Diet B.3): summary statistics, optionally all values as CSV."""
    from scorebank.analysis.scores import average_scores, score_quantiles, write_scores_csv

    with handle_errors(), dask_scheduler(scored["scheduler"]) as sched:
        avg = average_scores(_store(ctx), scored["specs"], **_averaging(scored), scheduler=sched)
        summary = {name: score_quantiles(avg[name].values) for name in avg.data_vars}
        if out is not None:
            write_scores_csv(avg, out)
        doc = {"runs": avg.attrs["runs"], "reduce": avg.attrs["reduce"], "scores": summary,
               "csv": None if out is None else str(out)}
        emit(doc, _scores_tables(summary, avg, out), json_output=scored["json_output"])


@command("correlation")
def correlation_command(ctx: typer.Context, scored: dict = SCORED, plot: HeatMapPlot = None) -> None:
    """Spearman rank correlations between two or more scores averaged over runs (Data Diet D.3, Fig. 12)."""
    from scorebank.analysis.correlation import spearman_matrix

    with handle_errors(), dask_scheduler(scored["scheduler"]) as sched:
        mat = spearman_matrix(_store(ctx), scored["specs"], **_averaging(scored), scheduler=sched)
        names = [str(n) for n in mat["score_a"].values]
        doc = {"scores": names, "runs": mat.attrs["runs"], "spearman": mat.values}
        emit(doc, _correlation_tables(names, mat),
             json_output=scored["json_output"], figure=_figure(plot, "plot_spearman", mat))


@command("sensitivity")
def sensitivity_command(
    ctx: typer.Context,
    spec: str = typer.Argument(..., help="Score spec, e.g. el2n@10 or grand@0.  " + SPECS_HELP),
    runs: Runs = None,
    draws: int = typer.Option(20, help="Random k-subsets per k (every subset when there are at most this many)."),
    seed: int = typer.Option(0, help="Seed of the subset draws."),
    never_learned: NeverLearned = "count",
    plot: CurvePlot = None,
    output: dict = OUTPUT,
) -> None:
    """Spearman between the score averaged over k runs and over all runs, k = 1..R (Data Diet D.1)."""
    from scorebank.analysis.correlation import sensitivity_curve

    stats = ("mean", "std", "min", "max")
    with handle_errors(), dask_scheduler(output["scheduler"]) as sched:
        curve = sensitivity_curve(_store(ctx), spec, runs=_runs(runs), draws=draws, seed=seed,
                                  never_learned=never_learned, scheduler=sched)
        rows = [{"k": int(k), **{n: float(curve[n].sel(k=k)) for n in stats},
                 "subsets": int(curve["subsets"].sel(k=k))} for k in curve["k"].values]
        doc = {"spec": curve.attrs["spec"], "runs": curve.attrs["runs"], "curve": rows}
        emit(doc, _sensitivity_tables(rows, curve, stats),
             json_output=output["json_output"], figure=_figure(plot, "plot_sensitivity", curve))


@command("separation")
def separation_command(ctx: typer.Context, runs: Runs = None, output: dict = OUTPUT) -> None:
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
        emit({"runs": rows}, _separation_tables(rows), json_output=output["json_output"])


@command("overlap")
def overlap_command(
    ctx: typer.Context,
    k: str = typer.Option("20,100,200", help="Set sizes k, comma-separated."),
    runs: Runs = None,
    all_epochs: AllEpochs = False,
    plot: OverlapPlot = None,
    output: dict = OUTPUT,
) -> None:
    """Overlap of the k smallest-normalised-margin sets between runs and with the final set (margins paper Figs. 6, 8, 9)."""
    from scorebank.analysis.overlap import margin_overlaps

    with handle_errors(), dask_scheduler(output["scheduler"]) as sched:
        res = margin_overlaps(_store(ctx), k=_numbers(k, "--k", int), runs=_runs(runs), scheduler=sched)
        ks = [int(v) for v in res["k"].values]
        ep = res["epoch"].values
        seeds = [int(s) for s in res["run"].values]
        pairwise = "pairwise_mean" in res

        def by_k(name):
            return {str(kk): _per_run(res[name].sel(k=kk).values, seeds) for kk in ks}

        doc = {"k": ks, "runs": seeds, "epochs": ep,
               "separation_epoch": {str(s): int(v) for s, v in zip(seeds, res["separation_epoch"].values)},
               "final_epoch": {str(s): int(v) for s, v in zip(seeds, res["final_epoch"].values)},
               "retention": by_k("retention"), "retention_at_separation": by_k("at_separation")}
        if pairwise:
            for name in ("pairwise_mean", "pairwise_min", "pairwise_max"):
                doc[name] = {str(kk): res[name].sel(k=kk).values for kk in ks}
        emit(doc, _overlap_tables(res, ep, ks, seeds, pairwise, all_epochs),
             json_output=output["json_output"], figure=_figure(plot, "plot_overlaps", res))


@command("margins")
def margins_command(
    ctx: typer.Context,
    gamma: str = typer.Option("0.01,0.1", help="Cutoffs gamma above the smallest normalised margin."),
    epochs: Optional[str] = typer.Option(None, help="Epochs, e.g. 0,10,200.  Default: every recorded epoch."),
    runs: Runs = None,
    by_class: bool = typer.Option(False, "--by-class", help="Also show the per-class statistics."),
    all_epochs: AllEpochs = False,
    plot: MarginsPlot = None,
    output: dict = OUTPUT,
) -> None:
    """Normalised-margin distribution: AUC of the sorted curve and small-margin counts (margins paper 4.2)."""
    from scorebank.analysis.distribution import margin_distribution, sorted_margins

    with handle_errors(), dask_scheduler(output["scheduler"]) as sched:
        ep_list = None if epochs is None else _numbers(epochs, "--epochs", int)
        res = margin_distribution(_store(ctx), gammas=_numbers(gamma, "--gamma"), runs=_runs(runs),
                                  epochs=ep_list, scheduler=sched)
        gam = [float(g) for g in res["gamma"].values]
        seeds = [int(s) for s in res["run"].values]
        ep = res["epoch"].values
        doc = {"runs": seeds, "epochs": ep, "gamma": gam,
               "auc": _per_run(res["auc"].values, seeds), "smallest": _per_run(res["smallest"].values, seeds),
               "n_within": {str(g): _per_run(res["n_within"].values[a], seeds) for a, g in enumerate(gam)}}
        if by_class:
            doc["classes"] = [str(c) for c in res["class_name"].values]
            doc["class_auc"] = {str(s): res["class_auc"].values[:, i].T for i, s in enumerate(seeds)}
            doc["class_n_within"] = {str(g): {str(s): res["class_n_within"].values[a, :, i].T
                                              for i, s in enumerate(seeds)} for a, g in enumerate(gam)}

        def draw(where: Path) -> None:
            from scorebank.analysis.plots import plot_margin_distribution

            first = np.isfinite(res["auc"].values[0])
            shown = ep[first][np.unique(np.linspace(0, first.sum() - 1, min(8, first.sum())).round().astype(int))]
            curves = sorted_margins(_store(ctx), run=seeds[0], epochs=[int(e) for e in shown], scheduler=sched)
            plot_margin_distribution(res, curves, where)
        emit(doc, _margins_tables(res, ep, seeds, gam, by_class, all_epochs),
             json_output=output["json_output"], figure=Figure(plot, draw))


@command("difficulty")
def difficulty_command(
    ctx: typer.Context,
    threshold: float = typer.Option(0.5, help="Train accuracy at which examples are split into easy and hard."),
    runs: Runs = None,
    output: dict = OUTPUT,
) -> None:
    """Easy/hard examples and difficulty = runs in which an example is hard (Coherent Gradients 4.3)."""
    from scorebank.analysis.difficulty import difficulty

    with handle_errors(), dask_scheduler(output["scheduler"]) as sched:
        res = difficulty(_store(ctx), threshold=threshold, runs=_runs(runs), scheduler=sched)
        seeds = [int(s) for s in res["run"].values]
        hist = np.bincount(res["difficulty"].values, minlength=len(seeds) + 1)
        n = int(res["difficulty"].size)
        per_run = [{"run": s, "threshold_epoch": int(res["threshold_epoch"].values[i]),
                    "train_accuracy": float(res["train_accuracy"].values[i]),
                    "hard": int(res["hard"].values[i].sum())} for i, s in enumerate(seeds)]
        doc = {"threshold": threshold, "runs": per_run, "histogram": {str(d): int(c) for d, c in enumerate(hist)}}
        emit(doc, _difficulty_tables(per_run, hist, n, threshold), json_output=output["json_output"])


NoisePlot = _plot_option("ROC and precision-recall curves of every score")
NOISE_METRICS = ("roc_auc", "average_precision", "precision_at_noise_rate", "recall_at_noise_rate")


@command("noise")
def noise_command(ctx: typer.Context, scored: dict = SCORED, plot: NoisePlot = None) -> None:
    """How well averaged scores find corrupted labels: ROC AUC, average precision, precision and recall at
    the noise rate (Data Diet 4, E.2; AUM and confident-learning comparisons)."""
    from scorebank.analysis.noise import noise_detection

    with handle_errors(), dask_scheduler(scored["scheduler"]) as sched:
        res = noise_detection(_store(ctx), scored["specs"], **_averaging(scored), scheduler=sched)
        rows = [{"score": str(s), **{m: float(res[m].sel(score=s)) for m in NOISE_METRICS},
                 **_own_threshold(res, s)} for s in res["score"].values]
        doc = {"noise_rate": float(res["noise_rate"]), "n_corrupted": int(res["n_corrupted"]),
               "runs": res.attrs["runs"], "scores": rows}
        if int(res["n_threshold_samples"]):
            doc["n_threshold_samples"] = int(res["n_threshold_samples"])

        def draw(where: Path) -> None:
            from scorebank.analysis.noise_plots import plot_noise_curves

            plot_noise_curves(res, where)
        emit(doc, _noise_tables(rows, doc), json_output=scored["json_output"], figure=Figure(plot, draw))


def _own_threshold(res, score) -> dict:
    """``{"own_threshold": ...}`` for a score whose registry entry declares a cut-off of its own
    (null where this store lacks what it needs), ``{}`` for the others."""
    from scorebank.analysis.scores import parse_score

    if parse_score(str(score)).kind.own_threshold is None:
        return {}
    rule = str(res["own_rule"].sel(score=score).item())
    if not rule:
        return {"own_threshold": None}
    return {"own_threshold": {"rule": rule, "n_flagged": int(res["own_n_flagged"].sel(score=score)),
                              "precision": float(res["own_precision"].sel(score=score)),
                              "recall": float(res["own_recall"].sel(score=score))}}


@command("aum")
def aum_command(
    ctx: typer.Context,
    epoch: Optional[int] = typer.Option(None, "--epoch", help="AUM over epochs 1..E (aum@E). Default: the store's last epoch."),
    percentile: float = typer.Option(99.0, "--percentile", help="Percentile of the threshold samples' AUM that is the cut-off (the paper's 99)."),
    runs: Runs = None,
    out: Optional[Path] = typer.Option(None, "--out", help="Write a manifest keeping every example not flagged (and no threshold sample) to this JSON file."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of that manifest. Default: drop-aum-flagged-aum-<time>."),
    rows: int = typer.Option(MAX_ROWS, "--rows", help="Flagged examples to print."),
    output: dict = OUTPUT,
) -> None:
    """AUM's own cut-off (Pleiss et al. 2020): flag the examples whose AUM is below the 99th percentile
    of the threshold samples' AUM (a store scored with --threshold-samples); precision and recall
    against the corrupted labels when the store has label noise; a manifest without them (--out)."""
    from scorebank.analysis.aum import aum_flags, drop_manifest
    from scorebank.stores.manifest import write_manifest

    with handle_errors(), dask_scheduler(output["scheduler"]) as sched:
        if rows < 0:
            raise InvalidArgumentError(f"--rows must be 0 or more, got {rows!r}")
        res = aum_flags(_store(ctx), epoch, percentile=percentile, runs=_runs(runs), scheduler=sched)
        written = str(write_manifest(out, drop_manifest(res, _store(ctx), name=name))) if out is not None else None
        doc = {"score": res.spec, "epoch": res.epoch, "runs": list(res.runs), "percentile": res.percentile,
               "threshold": res.threshold, "n_examples": int(res.aum.size),
               "n_threshold_samples": int(res.threshold_sample.sum()), "n_flagged": res.n_flagged,
               "precision": res.precision, "recall": res.recall,
               "n_corrupted": None if res.corrupted is None else int(res.corrupted.sum()),
               "flagged": [{"example": int(i), "aum": float(res.aum[i]),
                            **({} if res.corrupted is None else {"corrupted": bool(res.corrupted[i])})}
                           for i in res.ranked],
               "manifest": written}
        emit(doc, _aum_tables(doc, rows), json_output=output["json_output"])


DataMapPlot = _plot_option("the data map (variability vs confidence, coloured by correctness)")


@command("datamap")
def datamap_command(
    ctx: typer.Context,
    epoch: Optional[int] = typer.Option(None, "--epoch", help="Map epochs 1..E (default: the store's last epoch)."),
    runs: Runs = None,
    plot: DataMapPlot = None,
    output: dict = OUTPUT,
) -> None:
    """Data map (Swayamdipta et al. 2020): confidence, variability and correctness over epochs 1..E; the
    easy-to-learn (33% most confident), ambiguous (33% most variable) and hard-to-learn (33% least
    confident) regions."""
    from scorebank.analysis.datamap import data_map, region_summary

    with handle_errors(), dask_scheduler(output["scheduler"]) as sched:
        res = data_map(_store(ctx), epoch, runs=_runs(runs), scheduler=sched)
        rows = region_summary(res)
        doc = {"epoch": res.attrs["epoch"], "runs": res.attrs["runs"], "fraction": res.attrs["fraction"],
               "n_examples": int(res.sizes["example"]), "regions": rows,
               "ambiguous_and_easy": int((res["ambiguous"] & res["easy-to-learn"]).sum()),
               "ambiguous_and_hard": int((res["ambiguous"] & res["hard-to-learn"]).sum())}

        def draw(where: Path) -> None:
            from scorebank.analysis.datamap import plot_data_map

            plot_data_map(res, where)
        emit(doc, _datamap_tables(doc), json_output=output["json_output"], figure=Figure(plot, draw))


@command("curves")
def curves_command(
    ctx: typer.Context,
    runs: Runs = None,
    all_epochs: AllEpochs = False,
    plot: CurvesPlot = None,
    json_output: JsonOutput = False,
) -> None:
    """Train (clean pass), pristine, corrupt and test accuracy and loss per epoch (Coherent Gradients Fig. 3)."""
    from scorebank.analysis.curves import QUANTITIES, training_curves
    from scorebank.stores import schema as S

    with handle_errors():
        res = training_curves(_store(ctx), runs=_runs(runs))
        seeds = [int(s) for s in res[S.RUN].values]
        ep = res[S.EPOCH].values
        names = [n for n in QUANTITIES if n in res]
        noisy = bool(res.attrs["label_noise"])
        doc = {"runs": seeds, "epochs": ep, "label_noise": noisy,
               **{n: _per_run(res[n].values, seeds) for n in names + [S.COMPLETED, S.RECORDED]}}
        emit(doc, _curves_tables(res, ep, seeds, noisy, all_epochs),
             json_output=json_output, figure=_figure(plot, "plot_training_curves", res))


@command("manifests")
def manifests_command(ctx: typer.Context, json_output: JsonOutput = False) -> None:
    """The selection manifests recorded in the store by 'scorebank select' (its history)."""
    from scorebank.stores.manifest import read_store_manifests

    with handle_errors():
        store = _store(ctx)
        docs = [m.to_dict(with_indices=False) for m in read_store_manifests(store)]
        emit({"manifests": docs}, _manifests_tables(docs, store), json_output=json_output)


# ------------------------------------------------------------------------------ benchmark
def bench_command(
    runs: int = typer.Option(10, help="Runs R of the synthetic store."),
    epochs: int = typer.Option(200, help="Training epochs E (the store holds epochs 0..E)."),
    examples: str = typer.Option("50000", help="Examples N; several, comma-separated, are timed one after another "
                                               "and shown side by side, e.g. 50000,320000,1281167 (ImageNet's "
                                               "1,281,167 last; with --dir, each size's store is DIR/N/bench.zarr)."),
    classes: int = typer.Option(10, help="Classes."),
    directory: Optional[Path] = typer.Option(None, "--dir", help="Where to build the store (default: a temporary directory, removed afterwards)."),
    keep: bool = typer.Option(False, "--keep", help="Keep the built store (with --dir)."),
    reuse: bool = typer.Option(False, "--reuse", help="Time an existing store at --dir/bench.zarr instead of building one."),
    scheduler: str = typer.Option("threads", help=SCHEDULER_HELP + "  Benchmark default: threads, as for the "
                                                                   "analyses ('local' times a LocalCluster)."),
    json_output: JsonOutput = False,
) -> None:
    """Build a synthetic R x E x N store chunk by chunk, then time forgetting, a Spearman
    matrix and an overlap curve: seconds, peak memory, MB/s of score data read."""
    from scorebank.analysis.bench import parse_sizes, run_series

    with handle_errors():
        sizes = parse_sizes(examples)
        with dask_scheduler(scheduler) as sched:
            series = run_series(directory, runs=runs, epochs=epochs, examples=sizes, classes=classes,
                                keep=keep, reuse=reuse, scheduler=sched)
        if len(series.results) == 1:
            res = series.results[0]
            emit(res.to_dict(), _bench_tables(res), json_output=json_output)
        else:
            emit(series.to_dict(), _bench_series_tables(series), json_output=json_output)


# ------------------------------------------------------------------------------ tables
def _forgetting_tables(doc, reduce, never_learned):
    """Per-run forgetting statistics, the score over runs, the most forgotten examples."""
    rows = doc["per_run"]
    yield Grid(("run", "presentations", "never learned", "unforgettable", "mean events (learned)",
                "max events", "median epoch learned for good"),
               [(str(r["run"]), str(r["presentations"]), str(r["never_learned"]), str(r["unforgettable"]),
                 fmt(r["mean_events"]), str(r["max_events"]), fmt(r["median_learned_epoch"])) for r in rows],
               title=f"forgetting events ({doc['spec']}, Toneva et al.)")
    yield (f"{reduce} over {len(rows)} runs ({never_learned} for never learned): "
           + ", ".join(f"{k} {fmt(v)}" for k, v in doc["score"].items()))
    top_rows = doc["most_forgotten"]
    if top_rows:
        yield Grid(("example", "label", "score"),
                   [(str(r["example"]), str(r["label"]), fmt(r["score"])) for r in top_rows],
                   title=f"{len(top_rows)} most forgotten")


def _scores_tables(summary, avg, out):
    """Summary statistics of each averaged score."""
    yield Grid(("score", *next(iter(summary.values()))),
               [(name, *(fmt(v) for v in q.values())) for name, q in summary.items()],
               title=f"{avg.attrs['reduce']} over runs {avg.attrs['runs']}")
    if out is not None:
        yield f"per-example scores written to [bold]{plain(out)}[/]"


def _correlation_tables(names, mat):
    """The Spearman matrix."""
    yield Grid(("", *names), [(name, *(fmt(v, 3) for v in mat.values[i])) for i, name in enumerate(names)],
               title=f"Spearman rank correlation ({mat.attrs['reduce']} over runs {mat.attrs['runs']})")


def _sensitivity_tables(rows, curve, stats):
    """Spearman against the all-run average per number of runs averaged."""
    yield Grid(("runs averaged (k)", *stats, "subsets"),
               [(str(r["k"]), *(fmt(r[n], 4) for n in stats), str(r["subsets"])) for r in rows],
               title=f"{curve.attrs['spec']}: Spearman vs the average of all {len(rows)} runs")


def _separation_tables(rows):
    """Data-separation epoch per run."""
    yield Grid(("run", "separated at epoch", "last recorded epoch", "train accuracy there"),
               [(str(r["run"]), "never" if r["separation_epoch"] is None else str(r["separation_epoch"]),
                 fmt(r["final_epoch"]), fmt(r["final_train_accuracy"])) for r in rows],
               title="data separation (100% clean-pass train accuracy)")


def _overlap_tables(res, ep, ks, seeds, pairwise, all_epochs):
    """Pairwise overlaps, retention per epoch and at data separation."""
    shown, note = thin(len(ep), all_epochs)
    heads = ("epoch", *[f"k={kk}" for kk in ks])
    if pairwise:
        def cell(kk, j):
            return (f"{fmt(res['pairwise_mean'].sel(k=kk).values[j], 3)} "
                    f"\\[{fmt(res['pairwise_min'].sel(k=kk).values[j], 2)}, "
                    f"{fmt(res['pairwise_max'].sel(k=kk).values[j], 2)}]")
        yield Grid(heads, [(str(ep[j]), *(cell(kk, j) for kk in ks)) for j in shown], caption=note,
                   title="k smallest normalised margins shared by two runs:\nmean \\[min, max] over pairs")

    def retained(kk, j):
        vals = res["retention"].sel(k=kk).values[:, j]
        return fmt(float(np.mean(vals)), 3) if np.isfinite(vals).all() else "-"
    yield Grid(heads, [(str(ep[j]), *(retained(kk, j) for kk in ks)) for j in shown], caption=note,
               title="fraction of the final-epoch k-set present\nat each epoch, mean over runs")
    sep = res["separation_epoch"].values
    yield Grid(("run", "final epoch", "separated at", *heads[1:]),
               [(str(s), str(int(res["final_epoch"].values[i])), "never" if sep[i] < 0 else str(int(sep[i])),
                 *(fmt(res["at_separation"].sel(k=kk).values[i], 3) for kk in ks))
                for i, s in enumerate(seeds)],
               title="fraction of the final-epoch k-set present\nat data separation")


def _margins_tables(res, ep, seeds, gam, by_class, all_epochs):
    """AUC and small-margin counts per run and epoch (and per class)."""
    shown, note = thin(len(ep), all_epochs)
    yield Grid(("run", "epoch", "AUC", "smallest", *[f"within {g:g} of smallest" for g in gam]),
               [(str(s), str(ep[j]), fmt(res["auc"].values[i, j]), fmt(res["smallest"].values[i, j]),
                 *(fmt(res["n_within"].values[a, i, j]) for a in range(len(gam))))
                for i, s in enumerate(seeds) for j in shown],
               title="normalised margin distribution (margin / rho)",
               caption=None if note is None else f"per run: {note}")
    if by_class:
        last = len(ep) - 1
        yield Grid(("run", "class", "size", "AUC", "smallest", *[f"within {g:g}" for g in gam]),
                   [(str(s), plain(name), str(int(res["class_size"].values[c])),
                     fmt(res["class_auc"].values[c, i, last]), fmt(res["class_smallest"].values[c, i, last]),
                     *(fmt(res["class_n_within"].values[a, c, i, last]) for a in range(len(gam))))
                    for i, s in enumerate(seeds) for c, name in enumerate(res["class_name"].values)],
                   title=f"per class at epoch {ep[last]}")


def _difficulty_tables(per_run, hist, n, threshold):
    """The easy/hard split per run and the difficulty distribution."""
    yield Grid(("run", "epoch reaching threshold", "train accuracy", "hard examples"),
               [(str(r["run"]), str(r["threshold_epoch"]), fmt(r["train_accuracy"]), str(r["hard"]))
                for r in per_run],
               title=f"easy/hard split at train accuracy >= {threshold:g}")
    yield Grid(("difficulty (runs hard)", "examples", "fraction"),
               [(str(d), str(int(c)), f"{c / n:.4f}") for d, c in enumerate(hist)],
               title="difficulty distribution")


def _noise_tables(rows, doc):
    """ROC AUC, average precision, precision and recall at the noise rate per score, and at the
    score's own threshold where it has one."""
    def own(r, key):
        return "—" if r.get("own_threshold") is None else fmt(r["own_threshold"][key])

    left_out = doc.get("n_threshold_samples", 0)
    yield Grid(("score", "ROC AUC", "AP", "P at noise rate", "R at noise rate", "own cut: flagged", "P", "R"),
               [(r["score"], *(fmt(r[m]) for m in NOISE_METRICS), own(r, "n_flagged"), own(r, "precision"),
                 own(r, "recall")) for r in rows],
               title=f"finding {doc['n_corrupted']} corrupted labels (noise rate {doc['noise_rate']:.4g})"
                     + (f"; {left_out} AUM threshold samples left out" if left_out else ""),
               caption="AP: average precision; P, R: precision, recall; own cut: the score's own threshold, "
                       + ("; ".join(f"{r['score']}: {r['own_threshold']['rule']}"
                                    for r in rows if r.get("own_threshold")) or "none here"))


def _aum_tables(doc, rows):
    """The cut-off, the counts, precision/recall and the lowest-AUM flagged examples."""
    noisy = doc["n_corrupted"] is not None
    lines = [("threshold", f"{fmt(doc['threshold'])} ({doc['percentile']:g}th percentile of "
                           f"{doc['n_threshold_samples']} threshold samples' {doc['score']})"),
             ("flagged", f"{doc['n_flagged']} of {doc['n_examples'] - doc['n_threshold_samples']} examples")]
    if noisy:
        lines += [("precision", fmt(doc["precision"])), ("recall", f"{fmt(doc['recall'])} "
                                                                   f"(of {doc['n_corrupted']} corrupted labels)")]
    yield Grid(("", ""), lines, title=f"AUM threshold samples, mean over runs {doc['runs']}")
    flagged = doc["flagged"]
    yield Grid(("example", doc["score"], *(("corrupted",) if noisy else ())),
               [(str(r["example"]), fmt(r["aum"]), *((str(r["corrupted"]),) if noisy else ()))
                for r in flagged[:max(0, rows)]],
               title="flagged, lowest AUM first",
               caption=f"... {len(flagged) - rows} more (--rows, --json)" if len(flagged) > rows else None)
    if doc["manifest"]:
        yield f"manifest without them: {plain(doc['manifest'])}"


def _datamap_tables(doc):
    """One row per data-map region."""
    noisy = any("corrupted" in r for r in doc["regions"])
    yield Grid(("region", "size", "confidence", "variability", "correctness", *(("corrupted",) if noisy else ())),
               [(r["region"], str(r["examples"]), fmt(r["confidence"]), fmt(r["variability"]), fmt(r["correctness"]),
                 *((str(r["corrupted"]),) if noisy else ())) for r in doc["regions"]],
               title=f"data map over epochs 1..{doc['epoch']}, mean over runs {doc['runs']} "
                     f"({doc['n_examples']} examples; regions of {doc['fraction']:.0%} each)",
               caption=f"ambiguous and easy-to-learn: {doc['ambiguous_and_easy']}; ambiguous and hard-to-learn: "
                       f"{doc['ambiguous_and_hard']}")


def _curves_tables(res, ep, seeds, noisy, all_epochs):
    """Accuracy and loss per completed epoch, mean over runs."""
    from scorebank.stores import schema as S

    def mean_cell(n, j):
        col = res[n].values[:, j]
        ok = np.isfinite(col)
        return fmt(float(col[ok].mean())) if ok.any() else "-"

    done = np.flatnonzero(res[S.COMPLETED].values.any(axis=0))
    recorded = res[S.RECORDED].values
    shown, note = thin(len(done), all_epochs, "completed epochs")
    for what, group in (("accuracy", (S.TRAIN_ACCURACY, S.PRISTINE_ACCURACY, S.CORRUPT_ACCURACY,
                                      S.TEST_ACCURACY)),
                        ("loss", (S.TRAIN_LOSS, S.PRISTINE_LOSS, S.CORRUPT_LOSS, S.TEST_LOSS))):
        cols = [n for n in group if n in res]
        memorised = ("\n(corrupt: w.r.t. the corrupted label, i.e. memorised)"
                     if noisy and what == "accuracy" else "")
        yield Grid(("epoch", "runs recorded", *(n.split("_")[0] for n in cols)),
                   [(str(ep[j]), str(int(recorded[:, j].sum())), *(mean_cell(n, j) for n in cols))
                    for j in done[shown]],
                   title=f"{what} per epoch, mean over runs {seeds}{memorised}", caption=note)


def _manifests_tables(docs, store):
    """One row per recorded manifest (names and dates come from the store: plain text)."""
    yield Grid(("name", "strategy", "score", "runs", "kept", "created"),
               [(plain(d["name"]), plain(d["strategy"]), plain(d["score"] or "-"),
                 ",".join(map(str, d["runs"])) or "-", f"{d['n_kept']}/{d['n_examples']}",
                 plain(d["created"])) for d in docs],
               title=f"manifests in {plain(store)}")


def _bench_tables(res):
    """Seconds, CPU, bytes, MB/s and peak memory per timed analysis."""
    rows = [(t.name, f"{t.seconds:.2f}", f"{t.cpu_seconds:.2f}", f"{t.bytes_read / 1e6:.0f}",
             f"{t.mb_per_s:.0f}", f"{t.peak_memory_bytes / 1e6:.0f}") for t in res.timings]
    rows.append(("total", f"{res.total_seconds:.2f}", f"{sum(t.cpu_seconds for t in res.timings):.2f}",
                 f"{res.total_bytes / 1e6:.0f}", f"{res.mb_per_s:.0f}", f"{res.peak_memory_bytes / 1e6:.0f}"))
    yield Grid(("analysis", "seconds", "CPU s", "MB read", "MB/s", "peak memory (MB)"), rows,
               title=f"analysis benchmark: {res.runs} runs x {res.epochs} epochs x {res.examples} examples "
                     f"({res.store_bytes_on_disk / 1e6:.0f} MB on disk)")
    yield (f"{res.cpu_count} CPUs, load average {res.load_average[0]:g} at the start"
           + (f"; store built in {res.build_seconds:.1f} s" if res.build_seconds is not None else ""))


def _bench_series_tables(series):
    """Seconds, MB/s, peak memory and linearity per analysis at each size, side by side."""
    first = series.results[0]
    rows = []
    for j, timing in enumerate(first.timings):
        for i, res in enumerate(series.results):
            t = res.timings[j]
            rows.append((timing.name.split(" (")[0] if i == 0 else "", f"{res.examples:,}", f"{t.seconds:.2f}",
                         f"{t.cpu_seconds:.2f}", f"{t.mb_per_s:.0f}", f"{t.peak_memory_bytes / 1e6:.0f}",
                         f"{series.scaling(i, j):.2f}"))
    yield Grid(("analysis", "examples", "seconds", "CPU s", "MB/s", "peak MB", "scaling"), rows,
               title=f"analysis benchmark: {first.runs} runs x {first.epochs} epochs, by examples",
               caption=f"scaling: seconds / seconds at {first.examples:,}, over examples / {first.examples:,} "
                       "(1.00 = linear in N)")
    yield "timed: " + "; ".join(t.name for t in first.timings)
    for res in series.results:
        yield (f"{res.examples:,} examples: {res.store_bytes_on_disk / 1e6:.0f} MB on disk, "
               f"{res.cpu_count} CPUs, load average {res.load_average[0]:g} at the start"
               + (f", built in {res.build_seconds:.1f} s" if res.build_seconds is not None else ""))


def register(app: typer.Typer) -> None:
    app.add_typer(analyze_app, name="analyze")
    app.command("analyze-bench")(bench_command)
