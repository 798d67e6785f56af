"""``scorebank holdout``, ``scorebank memorization`` and ``scorebank analyze STORE
label-issues``: parse options, call :mod:`scorebank.pipeline.holdout`,
:mod:`scorebank.pipeline.memorization`, :mod:`scorebank.analysis.memorization` and
:mod:`scorebank.analysis.label_issues`, draw progress (one bar over every model's epochs, also when the models are Dask tasks:
``--workers`` / ``--scheduler``), print tables or ``--json``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich import box
from rich.table import Table

from scorebank.cli.common import console, execution, execution_group, handle_errors, print_json
from scorebank.cli.options import with_groups
from scorebank.cli.progress import RunProgress

MAX_ROWS = 15
OPT_QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar.")
OPT_JSON = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables.")


def _epochs(store: Path) -> int:
    from scorebank.pipeline.scoring import read_store_config

    try:
        return read_store_config(store).epochs
    except (OSError, KeyError, ValueError):
        return 1  # the library reports what is wrong with the store


def _fmt(v: float, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


# ----------------------------------------------------------------------------- holdout
@with_groups
def holdout_command(
    store: Path = typer.Argument(..., help="The score store (a local directory) whose examples and configuration to use."),
    folds: int = typer.Option(5, help="K: each model trains on K-1 folds and predicts the held-out one."),
    seeds: str = typer.Option("0-2", help="Holdout seeds, e.g. 0-2 or 0,5: one class-stratified K-fold split each."),
    execution_options: dict = execution_group("Replace a holdout group made with another --folds or configuration."),
    quiet: bool = OPT_QUIET,
    json_out: bool = OPT_JSON,
) -> None:
    """Record every training example's out-of-fold predicted probabilities (K-fold, with the
    store's configuration) into the store's holdout/ group, for confident learning
    ('scorebank analyze STORE label-issues').  Re-running skips finished folds.  With
    --workers or --scheduler every (seed, fold) model is a Dask task."""
    from scorebank.pipeline.config import parse_seeds
    from scorebank.pipeline.holdout import holdout

    with handle_errors():
        seed_list = parse_seeds(seeds)
        total = len(seed_list) * max(folds, 1) * (_epochs(store) + 1)
        with execution(execution_options) as how, \
                RunProgress("holdout", total, enabled=not quiet and not json_out) as bar:
            outcomes = holdout(store, folds, seed_list, progress=bar, **how)
        rows = [{"seed": o.seed, "folds_trained": o.folds_trained, "folds_skipped": o.folds_skipped}
                for o in outcomes]
        if json_out:
            print_json({"store": str(store), "group": "holdout", "folds": folds, "seeds": rows})
            return
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for c in ("seed", "folds trained", "already done"):
            table.add_column(c, justify="right")
        for r in rows:
            table.add_row(str(r["seed"]), str(r["folds_trained"]), str(r["folds_skipped"]))
        console.print(table)
        console.print(f"out-of-fold probabilities ({folds} folds) are in {str(store)!r}, group 'holdout'",
                      highlight=False)


# ----------------------------------------------------------------------------- memorization
@with_groups
def memorization_command(
    store: Path = typer.Argument(..., help="The score store (a local directory) whose examples and configuration to use."),
    subsets: int = typer.Option(100, help="M: models to train, each on its own random subset (Feldman & Zhang use thousands)."),
    keep: float = typer.Option(0.7, help="Fraction of the training set in each subset (the paper's 0.7)."),
    influence: bool = typer.Option(False, "--influence", help="Also estimate each training example's influence on each test example (top-k per test example)."),
    top_k: int = typer.Option(10, help="With --influence: influences kept per test example."),
    execution_options: dict = execution_group("Replace a memorization group made with another --keep or configuration."),
    quiet: bool = OPT_QUIET,
    json_out: bool = OPT_JSON,
) -> None:
    """Train M models on random subsets and store each example's memorisation estimate
    P(correct | in subset) - P(correct | held out) with its standard error in the store's
    memorization/ group.  Re-running skips finished models; a larger --subsets adds models.
    With --workers or --scheduler every model is a Dask task."""
    from scorebank.analysis.memorization import check_top_k, memorization_scores, record_estimates
    from scorebank.pipeline.memorization import memorization

    with handle_errors():
        if influence:
            check_top_k(top_k)
        total = max(subsets, 1) * (_epochs(store) + 1)
        with execution(execution_options) as how, \
                RunProgress("memorization", total, enabled=not quiet and not json_out) as bar:
            outcome = memorization(store, subsets, keep, progress=bar, **how)
        attr = record_estimates(store, influence_k=top_k if influence else None)
        est = memorization_scores(store)
        mem, se = np.asarray(est["memorization"].values), np.asarray(est["memorization_se"].values)
        order = np.lexsort((np.arange(mem.size), -np.nan_to_num(mem, nan=-np.inf)))[:MAX_ROWS]
        summary = {"store": str(store), "group": "memorization", "keep": keep, "models": attr["models"],
                   "trained": outcome.trained, "skipped": outcome.skipped,
                   "influence_k": attr["influence_k"], "mean_memorization": float(np.nanmean(mem)),
                   "mean_se": float(np.nanmean(se)),
                   "undefined": int(np.isnan(mem).sum()),
                   "most_memorized": [{"example": int(i), "memorization": float(mem[i]), "se": float(se[i])}
                                      for i in order]}
        if json_out:
            print_json(summary)
            return
        console.print(f"{attr['models']} models ({outcome.trained} trained now, {outcome.skipped} already done); "
                      f"mean memorisation {summary['mean_memorization']:.3f}, mean standard error "
                      f"{summary['mean_se']:.3f}; {summary['undefined']} example(s) without a model on one side",
                      highlight=False)
        table = Table(title="most memorised", box=box.SIMPLE_HEAD, pad_edge=False)
        for c in ("example", "memorisation", "s.e."):
            table.add_column(c, justify="right")
        for r in summary["most_memorized"]:
            table.add_row(str(r["example"]), _fmt(r["memorization"]), _fmt(r["se"]))
        console.print(table)


# ----------------------------------------------------------------------------- analyze label-issues
def label_issues_command(
    ctx: typer.Context,
    runs: Optional[str] = typer.Option(None, help="Holdout seeds whose probabilities to average, e.g. 0-2. Default: every finished seed."),
    out: Optional[Path] = typer.Option(None, help="Write a manifest keeping every example not flagged to this JSON file."),
    name: Optional[str] = typer.Option(None, help="Name of that manifest. Default: drop-label-issues-label_quality-<time>."),
    rows: int = typer.Option(MAX_ROWS, help="Flagged examples to print."),
    json_out: bool = OPT_JSON,
) -> None:
    """Confident learning (cleanlab find_label_issues, get_label_quality_scores) on the
    out-of-fold probabilities of 'scorebank holdout': the flagged examples with their suggested
    labels, and a manifest that drops them (--out)."""
    from scorebank.analysis.access import parse_runs
    from scorebank.analysis.label_issues import drop_manifest, label_issues
    from scorebank.stores.manifest import write_manifest

    store = ctx.obj["store"]
    with handle_errors():
        issues = label_issues(store, None if runs is None else parse_runs(runs))
        written = None
        if out is not None:
            written = str(write_manifest(out, drop_manifest(issues, store, name=name)))
        flagged = [{"example": int(i), "label": int(issues.labels[i]), "suggested": int(issues.suggested[i]),
                    "quality": float(issues.quality[i])} for i in issues.ranked]
        if json_out:
            print_json({"store": str(store), "holdout_seeds": list(issues.seeds), "folds": issues.folds,
                        "n_examples": int(issues.labels.size), "n_issues": issues.n_issues,
                        "cleanlab_version": issues.cleanlab_version, "issues": flagged, "manifest": written})
            return
        console.print(f"{issues.n_issues} of {issues.labels.size} examples flagged by confident learning "
                      f"(cleanlab {issues.cleanlab_version}, {issues.folds}-fold out-of-fold probabilities, "
                      f"holdout seeds {', '.join(map(str, issues.seeds))})", highlight=False)
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for c in ("example", "label", "suggested", "label quality"):
            table.add_column(c, justify="right")
        for r in flagged[:max(0, rows)]:
            table.add_row(str(r["example"]), str(r["label"]), str(r["suggested"]), _fmt(r["quality"], 4))
        console.print(table)
        if len(flagged) > rows:
            console.print(f"... {len(flagged) - rows} more (--rows, --json)", highlight=False)
        if written:
            console.print(f"manifest without them: {written}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("holdout")(holdout_command)
    app.command("memorization")(memorization_command)
    from scorebank.cli.analyze import analyze_app

    analyze_app.command("label-issues")(label_issues_command)
