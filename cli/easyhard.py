"""``scorebank easy-hard`` and ``scorebank difficulty-accuracy`` (Coherent Gradients Sec. 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from scorebank.cli.common import console, dask_client, err_console, handle_errors, print_json
from scorebank.cli.options import (Device, GpusPerRun, JsonOutput, Scheduler, Seeds, Workers, given, override_group,
                                   with_groups)
from scorebank.cli.tables import compact_table


@with_groups
def easy_hard_command(
    store: str = typer.Argument(..., help="Score store directory whose run defines easy/hard."),
    threshold: float = typer.Option(0.5, help="Training accuracy at which easy/hard is decided."),
    run: Optional[int] = typer.Option(None, help="Scoring run (seed) defining easy/hard; default: first completed run."),
    test_fraction: float = typer.Option(0.17, help="Held-out fraction of each of the easy and hard groups."),
    split_seed: int = typer.Option(0, help="Seed of the train/held-out split."),
    seeds: Seeds = "0",
    training: dict = override_group("epochs", "lr", "optimizer"),
    device: Device = "auto",
    workers: Workers = None,
    scheduler: Scheduler = None,
    gpus_per_run: GpusPerRun = 0,
    json_output: JsonOutput = False,
) -> None:
    """Train fresh networks on easy and on hard examples and evaluate each on both (Coherent Gradients Sec. 4.3).

    Reports the 2x2 table (trained on x evaluated on) and each generalisation gap; the
    result is stored under easy_hard/NAME in the store."""
    from scorebank.pipeline.config import parse_seeds
    from scorebank.pipeline.easyhard import easy_hard

    with handle_errors():
        overrides = given(training)
        seed_list = parse_seeds(seeds)
        with dask_client(workers, scheduler, gpus_per_run) as client, err_console.status("easy/hard") as status:
            result = easy_hard(store, seeds=seed_list, threshold=threshold, run=run, test_fraction=test_fraction,
                               split_seed=split_seed, overrides=overrides, device=device,
                               progress=lambda m: status.update(m), client=client, gpus_per_run=gpus_per_run)
    mean = result["mean_accuracy"]
    gap = result["generalization_gap"].mean("seed")
    if json_output:
        print_json({"accuracy": {t: {e: float(mean.sel(trained_on=t, evaluated_on=e))
                                     for e in mean.evaluated_on.values} for t in mean.trained_on.values},
                    "generalization_gap": {t: float(gap.sel(trained_on=t)) for t in gap.trained_on.values},
                    "part_size": dict(zip(result.evaluated_on.values.tolist(), result.part_size.values.tolist())),
                    "threshold_epoch": result.attrs["threshold_epoch"], "seeds": result.seed.values.tolist()})
        return
    sizes = dict(zip(result.evaluated_on.values.tolist(), result.part_size.values.tolist()))
    console.print(f"easy/hard at train accuracy {threshold:g} (run {result.attrs['run']}, epoch "
                  f"{result.attrs['threshold_epoch']}); mean over seeds {', '.join(map(str, result.seed.values))}",
                  highlight=False)
    table = compact_table("trained on", *(f"{p}\n({sizes[p]})" for p in mean.evaluated_on.values),
                          "generalisation\ngap", fold=())
    for t in mean.trained_on.values:
        table.add_row(f"{t}-train", *(f"{100 * float(v):.1f}%" for v in mean.sel(trained_on=t).values),
                      f"{100 * float(gap.sel(trained_on=t)):.1f} pts")
    console.print(table)


def difficulty_accuracy_command(
    store: str = typer.Argument(..., help="Store (path, .zip archive or URL) holding the run whose accuracy is measured "
                                          "(e.g. an RM3 run)."),
    run: int = typer.Option(..., help="Run (seed) of STORE."),
    difficulty_from: Optional[str] = typer.Option(None, help="Store, archive or URL whose runs define difficulty "
                                                             "(e.g. SGD runs); default: STORE."),
    epoch: Optional[int] = typer.Option(None, help="Epoch of RUN (default: its last recorded epoch)."),
    threshold: float = typer.Option(0.5, help="Training accuracy at which easy/hard is decided in each difficulty run."),
    plot: Optional[Path] = typer.Option(None, help="Write a bar chart (PNG) of accuracy per difficulty level."),
    json_output: JsonOutput = False,
) -> None:
    """Training accuracy of a run per difficulty level (Coherent Gradients Fig. 5a)."""
    from scorebank.analysis.difficulty_levels import accuracy_by_difficulty

    with handle_errors():
        res = accuracy_by_difficulty(store, run, difficulty_store=difficulty_from, epoch=epoch, threshold=threshold)
        if plot is not None:
            from scorebank.analysis.plots import plot_accuracy_by_difficulty

            plot_accuracy_by_difficulty(res, plot)
    rows = [{"difficulty": int(d), "count": int(c), "accuracy": float(a)}
            for d, c, a in zip(res.difficulty.values, res["count"].values, res["accuracy"].values)]
    if json_output:
        print_json({"run": res.attrs["run"], "epoch": res.attrs["epoch"], "levels": rows})
        return
    table = compact_table("difficulty", "examples", f"accuracy of run {run}\nat epoch {res.attrs['epoch']}", fold=())
    for r in rows:
        table.add_row(str(r["difficulty"]), str(r["count"]), "-" if r["count"] == 0 else f"{100 * r['accuracy']:.1f}%")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("easy-hard")(easy_hard_command)
    app.command("difficulty-accuracy")(difficulty_accuracy_command)
