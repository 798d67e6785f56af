"""``scorebank retrain``, ``scorebank prune-curve`` and ``scorebank compress``: parse options,
call :mod:`scorebank.pipeline.retrain`, :mod:`scorebank.pipeline.prune_curve` and
:mod:`scorebank.pipeline.compress`, show progress, print tables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from scorebank.cli.common import console, err_console, execution, execution_group, handle_errors, print_json
from scorebank.cli.options import Budget, Device, JsonOutput, Quiet, Seeds, given, override_group, with_groups
from scorebank.cli.progress import RunProgress
from scorebank.cli.tables import compact_table, pct
from scorebank.cli.text import plain
from scorebank.core.errors import InvalidArgumentError

RETRAIN_SEEDS = "0-3"


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidArgumentError(f"bad {option} {text!r}; give comma-separated numbers like 0.1,0.3,0.5") from None
    if not values:
        raise InvalidArgumentError(f"bad {option} {text!r}; give comma-separated numbers like 0.1,0.3,0.5")
    return values


def _signed(v: float) -> str:
    return "-" if math.isnan(v) else f"{100 * v:+.1f}"


def _band(lo: float, hi: float) -> str:
    return "-" if math.isnan(lo) else f"{100 * lo:.1f}-{100 * hi:.1f}"


def _print_rows(rows) -> None:
    table = compact_table("group", "kind", "subset", "seeds", "acc %", "16-84 %", "diff")
    for r in rows:
        table.add_row(plain(r.group), "random" if r.baseline_of is not None else plain(r.source),
                      f"{r.subset_size}/{r.n_full}", str(len(r.seeds)), pct(r.mean), _band(r.p16, r.p84),
                      _signed(r.difference))
    console.print(table)
    if rows:
        console.print(f"full data: {pct(rows[0].full_data_accuracy)}% mean final test accuracy of the store's "
                      "completed scoring runs (diff = subset minus full data, in percentage points)", highlight=False)


# ----------------------------------------------------------------------------- retrain
@with_groups
def retrain_command(
    store: str = typer.Argument(..., help="The score store the manifest was selected from."),
    manifest: Path = typer.Option(..., help="Manifest JSON written by 'scorebank select'."),
    seeds: Seeds = RETRAIN_SEEDS,
    name: Optional[str] = typer.Option(None, help="Group name under retrain/; default: the manifest's name."),
    baseline: Optional[str] = typer.Option(None, help="random: also retrain on a random subset of the same size "
                                                      "(with the manifest's class counts if it was class-balanced)."),
    baseline_seed: int = typer.Option(0, help="Seed drawing the random baseline subset."),
    budget: Budget = "steps",
    training: dict = override_group(),
    execution_options: dict = execution_group("Replace an existing group made with another subset or options."),
    json_output: JsonOutput = False,
    quiet: Quiet = False,
) -> None:
    """Retrain fresh networks on a manifest's examples (Data Diet protocol).

    Test accuracy per seed and epoch goes under retrain/NAME in the store; finished seeds
    are skipped, unfinished ones resumed."""
    from scorebank.pipeline.config import parse_seeds
    from scorebank.pipeline.retrain import retrain_manifest, retrain_summary

    with handle_errors():
        seed_list = parse_seeds(seeds)
        overrides = given(training)
        n_epochs = _epochs_for(store, overrides)
        total = (2 if baseline else 1) * len(seed_list) * (n_epochs + 1)
        with execution(execution_options) as how, RunProgress("retraining", total, enabled=not quiet) as bar:
            results = retrain_manifest(store, manifest, seed_list, name=name, baseline=baseline,
                                       baseline_seed=baseline_seed, overrides=overrides, budget=budget,
                                       progress=bar, **how)
        rows = retrain_summary(store, [r.group for r in results])
        if json_output:
            print_json([r.to_dict() for r in rows])
            return
        for r in results:
            skipped = [o.seed for o in r.outcomes if o.skipped]
            if skipped:
                console.print(f"{plain(r.group)}: already finished, skipped seeds {', '.join(map(str, skipped))}",
                              highlight=False)
        spec = results[0].spec
        console.print(f"budget {spec.budget}: {spec.steps_per_epoch} steps/epoch x {spec.training.epochs} epochs = "
                      f"{spec.total_steps} optimiser steps", highlight=False)
        _print_rows(rows)


def _epochs_for(store: str, overrides: dict) -> int:
    """Epochs a retrain will run (for the progress bar); the library validates the rest."""
    if "epochs" in overrides:
        return overrides["epochs"] if isinstance(overrides["epochs"], int) else 0
    from scorebank.pipeline.retrain import store_identity
    from scorebank.pipeline.scoring import read_store_config

    store_identity(store)  # a missing store is reported as such
    return read_store_config(store).epochs


# ----------------------------------------------------------------------------- prune-curve
RENAMED_FRACTION = ("prune-curve has no --fraction/--fractions (select's --keep counts examples kept, and this "
                    "command's old --fractions counted them pruned): give --prune 0.2,0.4 for the fractions "
                    "pruned, or --keep F for the fraction each sliding window keeps")


@with_groups
def prune_curve_command(
    store: str = typer.Argument(..., help="The score store."),
    score: str = typer.Option(..., help="Score spec, e.g. el2n@20, grand@0, forgetting, nmargin@10."),
    strategies: str = typer.Option("keep-highest,random", "--strategies", "--strategy",
                                   help="Comma-separated selection strategies: keep-highest, keep-lowest, random, "
                                        "stratified; or window (with --offsets) optionally with random."),
    prune: Optional[str] = typer.Option(None, help="Pruning curve: fractions of the training set pruned, e.g. "
                                                   "0.1,0.3,0.5,0.7,0.9."),
    offsets: Optional[str] = typer.Option(None, help="Sliding window (Data Diet Fig. 2): offsets, e.g. 0,0.1,0.2,0.3."),
    keep: Optional[float] = typer.Option(None, help="Sliding window: fraction of the training set each window keeps."),
    old_fraction: Optional[str] = typer.Option(None, "--fraction", "--fractions", hidden=True),
    seeds: Seeds = RETRAIN_SEEDS,
    runs: Optional[str] = typer.Option(None, help="Scoring runs whose scores are averaged; default: all completed."),
    seed: int = typer.Option(0, help="Seed of the random (and stratified) selection."),
    class_balanced: bool = typer.Option(False, "--class-balanced", help="Apply each selection within every class."),
    prefix: str = typer.Option("curve", help="Prefix of the cells' group names under retrain/."),
    out: Path = typer.Option(Path("prune-curve"), help="Writes OUT.csv, OUT.json and OUT.png."),
    budget: Budget = "steps",
    training: dict = override_group(),
    execution_options: dict = execution_group("Replace cells made with another subset or options."),
    quiet: Quiet = False,
) -> None:
    """Pruning curve or sliding window: select and retrain over a grid (Data Diet Figs. 1, 2).

    Strategies x fractions pruned (--prune), or --strategy window --offsets ... --keep F for
    the sliding window.  Finished cells are skipped."""
    from scorebank.analysis.access import parse_runs
    from scorebank.pipeline.config import parse_seeds
    from scorebank.pipeline.prune_curve import plan_cells, plot_curve, prune_curve, write_table

    with handle_errors():
        if old_fraction is not None:
            raise InvalidArgumentError(RENAMED_FRACTION)
        seed_list = parse_seeds(seeds)
        strategy_list = [s.strip() for s in strategies.split(",") if s.strip()]
        fr = _floats(prune, "--prune")
        offs = _floats(offsets, "--offsets")
        run_list = None if runs is None else parse_runs(runs)
        overrides = given(training)
        _, cells = plan_cells(strategy_list, score=score, fractions=fr, offsets=offs, window_fraction=keep,
                              seed=seed, class_balanced=class_balanced, prefix=prefix)
        n_epochs = _epochs_for(store, overrides)
        with execution(execution_options) as how, \
                RunProgress("pruning curve", len(cells) * len(seed_list) * (n_epochs + 1), enabled=not quiet) as bar:
            curve = prune_curve(store, score=score, strategies=strategy_list, seeds=seed_list, fractions=fr,
                                offsets=offs, window_fraction=keep, runs=run_list, seed=seed,
                                class_balanced=class_balanced, prefix=prefix, overrides=overrides, budget=budget,
                                progress=lambda ev: bar(ev.event, prefix=f"cell {ev.cell + 1}/{ev.n_cells} "), **how)
        paths = [Path(f"{out}.csv"), Path(f"{out}.json"), Path(f"{out}.png")]
        write_table(curve, paths[0], paths[1])
        plot_curve(curve, paths[2])
        _print_curve(curve)
        console.print(f"wrote {', '.join(map(str, paths))}", highlight=False)


def _print_curve(curve) -> None:
    window = curve.mode == "window"
    table = compact_table("strategy", "offset" if window else "pruned", "kept", "subset", "seeds", "acc %",
                          "16-84 %", "diff")
    for r in curve.rows:
        table.add_row(plain(r.strategy),
                      "-" if (window and r.offset is None) else f"{r.offset if window else r.fraction_pruned:g}",
                      f"{r.fraction_kept:g}", str(r.subset_size), str(len(r.seeds)), pct(r.mean),
                      _band(r.p16, r.p84), _signed(r.difference))
    console.print(table)
    full = curve.full_data
    console.print(f"full data: {pct(full['mean'])}% test accuracy (16-84: {_band(full['p16'], full['p84'])}%, "
                  f"{len(full['accuracies'])} scoring runs); diff = cell minus full data, in percentage points",
                  highlight=False)


# ----------------------------------------------------------------------------- compress
@with_groups
def compress_command(
    store: str = typer.Argument(..., help="The score store."),
    run: int = typer.Option(..., help="Seed of the scoring run to compress (its latest checkpoint is used)."),
    keep: int = typer.Option(200, help="Examples left at the end (immediate: kept at once; continuous: the last stage)."),
    schedule: str = typer.Option("immediate", help="immediate or continuous (margins paper appendix C.5)."),
    epochs: int = typer.Option(20, help="immediate: epochs trained on the kept examples."),
    max_epochs_per_stage: int = typer.Option(50, help="continuous: at most this many epochs after each removal."),
    min_epochs_per_stage: int = typer.Option(1, help="continuous: at least this many epochs after each removal."),
    batch_size: Optional[int] = typer.Option(None, help="Minibatch SGD with this batch size; default: full-batch "
                                                        "gradient descent."),
    lr: Optional[float] = typer.Option(None, help="Learning rate; default: the one the run's schedule used in the "
                                                  "epoch of its checkpoint."),
    training: dict = override_group("momentum", "nesterov", "weight_decay"),
    eval_batch_size: Optional[int] = typer.Option(None, help="Batch size of evaluation (and gradient accumulation)."),
    name: Optional[str] = typer.Option(None, help="Group name under compress/; default: runR-SCHEDULE-keepK."),
    figure: Optional[Path] = typer.Option(None, help="PNG of test error against examples left; default: "
                                                     "compress-NAME.png."),
    device: Device = "auto",
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing group of that name."),
    quiet: Quiet = False,
) -> None:
    """Compress the training set of a separated run to its smallest margins (margins paper Sec. 5).

    Records test error against the number of examples left under compress/NAME."""
    from scorebank.pipeline.compress import compress, plot_compression, resolve_compress_config
    from scorebank.pipeline.retrain import store_identity
    from scorebank.pipeline.scoring import read_store_config

    with handle_errors():
        store_identity(store)
        cfg = resolve_compress_config(read_store_config(store), run=run, schedule=schedule, keep=keep, epochs=epochs,
                                      max_epochs_per_stage=max_epochs_per_stage,
                                      min_epochs_per_stage=min_epochs_per_stage, batch_size=batch_size, lr=lr,
                                      eval_batch_size=eval_batch_size, **training)
        with _CompressProgress(enabled=not quiet) as bar:
            result = compress(store, cfg, name=name, device=device, overwrite=overwrite, progress=bar)
        traj, start = result.trajectory, result.start
        path = plot_compression(traj, figure or Path(f"compress-{result.name}.png"),
                                title=f"run {cfg.run}, {cfg.schedule} compression to {cfg.keep} examples")
        console.print(f"run {cfg.run}: separated at epoch {start['separation_epoch']}; continued from its latest "
                      f"checkpoint (epoch {start['checkpoint_epoch']}, training accuracy "
                      f"{pct(start['checkpoint_train_accuracy'])}%, test accuracy "
                      f"{pct(start['checkpoint_test_accuracy'])}%)", highlight=False)
        table = compact_table("stage", "examples\nleft", "epochs", "separated", "test\nerr %", "train\nerr %",
                              fold=())
        for s, row in enumerate(traj.stage_end_rows()):
            table.add_row(str(s), str(traj.stage_size[s]), str(traj.stage_epochs[s]),
                          "yes" if traj.stage_separated[s] else "no", pct(traj.test_error[row]),
                          pct(traj.train_error[row]))
        console.print(table)
        console.print(f"recorded compress/{plain(result.name)} in {plain(store)}; figure {plain(path)}", highlight=False)


class _CompressProgress:
    """A bar over the compression's stages (CompressEvents: ``done`` of ``total`` stages after
    the checkpoint finished), drawn on the first event, after the library validated everything."""

    def __init__(self, enabled: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=err_console, disable=not enabled)
        self.task = self.progress.add_task("compressing", total=None)
        self.started = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.started:  # rich prints a newline when stopping a bar it never drew
            self.progress.stop()

    def __call__(self, event) -> None:
        if not self.started:
            self.progress.start()
            self.started = True
        self.progress.update(self.task, total=event.total, completed=event.done)
        if event.kind == "epoch":
            self.progress.update(self.task, description=f"stage {event.stage}/{event.n_stages}: {event.examples_left} "
                                                        f"left, epoch {event.epoch_in_stage}, test error "
                                                        f"{event.test_error:.3f}")


def register(app: typer.Typer) -> None:
    app.command("retrain")(retrain_command)
    app.command("prune-curve")(prune_curve_command)
    app.command("compress")(compress_command)
