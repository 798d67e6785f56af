"""``scorebank run EXPERIMENT.toml`` (or ``--preset NAME``) and ``scorebank presets``: parse,
call :mod:`scorebank.pipeline.experiment`, print one line per stage."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from scorebank.cli.common import console, dask_client, err_console, handle_errors
from scorebank.cli.options import Device, GpusPerRun, Quiet, Scheduler, Workers
from scorebank.cli.progress import INTERRUPTED_EXIT
from scorebank.cli.tables import compact_table
from scorebank.cli.text import plain
from scorebank.core.errors import InvalidArgumentError

STATUS_SHOWN = {"done": "done (skipped)", "to run": "to run", "rerun": "to run again", "changed": "CHANGED"}


def run_command(
    experiment: Optional[Path] = typer.Argument(None, help="Experiment file (TOML); or give --preset."),
    preset: Optional[str] = typer.Option(None, help="Run a shipped experiment (see 'scorebank presets')."),
    out: Optional[Path] = typer.Option(None, help="Output directory (stores, results.json, report/); default: "
                                                  "./NAME, the experiment's name."),
    rerun: Optional[list[str]] = typer.Option(None, "--rerun", metavar="STAGE", help="Run this stage again even if done or changed "
                                                                    "(replacing what it wrote); repeatable."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (what is done, what remains) and exit."),
    device: Device = "auto",
    workers: Workers = None,
    scheduler: Scheduler = None,
    gpus_per_run: GpusPerRun = 0,
    quiet: Quiet = False,
) -> None:
    """Run a staged experiment: stores, stages (score, analyses, select, retrain, prune-curve, compress,
    easy-hard, holdout) and the report, skipping what is done.

    Re-running skips finished stages; a stage whose definition changed since it ran is refused unless
    --rerun STAGE.  Writes OUT/results.json and OUT/report/index.html.  With --workers or --scheduler the
    runs of every stage that trains (score, retrain, prune-curve, easy-hard, holdout) are Dask tasks."""
    from scorebank.pipeline.experiment import load_experiment, load_preset, plan, run_experiment

    with handle_errors():
        if (experiment is None) == (preset is None):
            raise InvalidArgumentError("give an experiment file or --preset NAME (one of them)")
        exp = load_preset(preset) if preset is not None else load_experiment(experiment)
        where = out if out is not None else Path(exp.name)
        if dry_run:
            rows = plan(exp, where, rerun=rerun or ())
            table = compact_table("stage", "kind", "store", "status", "detail", fold=(0, 4))
            for r in rows:
                table.add_row(plain(r.stage.name), r.stage.kind, plain(r.stage.store or ""),
                              STATUS_SHOWN[r.status], plain(r.detail))
            console.print(table)
            done = sum(r.status == "done" for r in rows)
            changed = [r.stage.name for r in rows if r.status == "changed"]
            console.print(f"{done} of {len(rows)} stages done, {len(rows) - done - len(changed)} to run"
                          + (f", {len(changed)} changed (refused unless --rerun {plain(changed[0])} ...)" if changed
                             else "") + f"; output in {plain(where)}", highlight=False)
            return

        with dask_client(workers, scheduler, gpus_per_run) as client, _StageProgress(enabled=not quiet) as show:
            run_experiment(exp, where, device=device, rerun=rerun or (), client=client, gpus_per_run=gpus_per_run,
                           progress=show)
        console.print(f"results: {plain(where / 'results.json')}; report: {plain(where / 'report' / 'index.html')}",
                      highlight=False)


class _StageProgress:
    """One line per stage (started, skipped, finished) and, while a stage trains, a status
    line with its latest run event; Ctrl-C says how to resume and exits with status 130."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.status = None
        self.stage = None

    def __enter__(self) -> "_StageProgress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop()
        if exc_type is KeyboardInterrupt:
            where = "" if self.stage is None else f" in stage {plain(self.stage.name)}"
            err_console.print(f"interrupted{where}; run the same command to resume (finished stages are skipped)",
                              highlight=False)
            raise typer.Exit(INTERRUPTED_EXIT)

    def _stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def __call__(self, ev) -> None:
        head = f"[{ev.index + 1}/{ev.total}] {plain(ev.stage.name)} ({ev.stage.kind})"
        if ev.kind == "run":
            if self.enabled:
                r = ev.run_event
                text = plain(r.describe()) if r.kind in ("resume", "skip", "failed") else (
                    f"{plain(r.group + ' ') if r.group else ''}seed {r.seed}: {r.done}/{r.total}")
                if self.status is None:
                    self.status = err_console.status(f"{head}: {text}")
                    self.status.start()
                else:
                    self.status.update(f"{head}: {text}")
            return
        self._stop()
        self.stage = ev.stage if ev.kind == "start" else None
        if ev.kind == "skip":
            console.print(f"{head}: done, skipped", highlight=False)
        elif ev.kind == "start":
            console.print(f"{head}: running", highlight=False)
        else:
            console.print(f"{head}: finished in {ev.seconds:.1f} s", highlight=False)


def presets_command() -> None:
    """List the shipped experiments and the paper figure or table each reproduces."""
    from scorebank.pipeline.experiment import presets

    with handle_errors():
        for exp in presets():
            console.print(f"[bold]{plain(exp.name)}[/]: {plain(exp.title)}", highlight=False)
            console.print(f"  reproduces: {plain(exp.reproduces)}", highlight=False)
            console.print(f"  stages: {', '.join(plain(s.name) for s in exp.stages)}", highlight=False)
        console.print("run one with: scorebank run --preset NAME [--out DIR] [--dry-run]", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("presets")(presets_command)
