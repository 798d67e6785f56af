"""``scorebank retrain``, ``scorebank prune-curve`` and ``scorebank compress``: parse options,
call :mod:`scorebank.pipeline.retrain`, :mod:`scorebank.pipeline.prune_curve` and
:mod:`scorebank.pipeline.compress`, show progress, print tables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from scorebank.cli.common import console, err_console, handle_errors, print_json
from scorebank.stores.errors import InvalidArgumentError

# Training options shared by retrain and prune-curve: each defaults to the store's value.
_STORE = " Default: the store's."
OPT_MODEL = typer.Option(None, help="mlp, cnn5 or resnet18." + _STORE)
OPT_BATCHNORM = typer.Option(None, "--batchnorm/--no-batchnorm", help="cnn5: BatchNorm after each convolution." + _STORE)
OPT_INIT_STD = typer.Option(None, help="cnn5: normal init with this std." + _STORE)
OPT_WIDTH = typer.Option(None, help="Model width." + _STORE)
OPT_OPTIMIZER = typer.Option(None, help="sgd, m3, rm3, ra3 or winsorized." + _STORE)
OPT_CLIP_COUNT = typer.Option(None, help="winsorized: values clipped at each end per coordinate." + _STORE)
OPT_EPOCHS = typer.Option(None, help="Training epochs (with --budget steps each has the full data's number of steps)." + _STORE)
OPT_LR = typer.Option(None, help="Learning rate." + _STORE)
OPT_MOMENTUM = typer.Option(None, help="SGD momentum." + _STORE)
OPT_NESTEROV = typer.Option(None, "--nesterov/--no-nesterov", help="Nesterov momentum." + _STORE)
OPT_WEIGHT_DECAY = typer.Option(None, help="L2 weight decay." + _STORE)
OPT_BATCH_SIZE = typer.Option(None, help="Minibatch size." + _STORE)
OPT_SCHEDULE = typer.Option(None, help="constant or multistep:E1,E2,...:FACTOR (epochs)." + _STORE)
OPT_AUGMENT = typer.Option(None, "--augment/--no-augment", help="Pad-4 random crop + flip." + _STORE)
OPT_EVAL_BS = typer.Option(None, help="Batch size of test evaluation." + _STORE)
OPT_DATA_DIR = typer.Option(None, help="Where the data set lives." + _STORE)
OPT_DOWNLOAD = typer.Option(None, "--download/--no-download", help="Download torchvision data sets if missing." + _STORE)
OPT_BUDGET = typer.Option("steps", help="steps: every epoch takes ceil(N_full / batch size) optimiser steps, as on the "
                                        "full data (Data Diet); epochs: an epoch is one pass over the subset.")
OPT_SEEDS = typer.Option("0-3", help="Retrain seeds, e.g. 0-3 or 0,5; one fresh network each.")
OPT_DEVICE = typer.Option("auto", help="auto, cpu or cuda.")
OPT_QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar.")


def _overrides(**values) -> dict:
    out = {k: v for k, v in values.items() if v is not None}
    if "data_dir" in out:
        out["data_dir"] = str(out["data_dir"])
    return out


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


def _pct(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _signed(v: float) -> str:
    return "-" if math.isnan(v) else f"{100 * v:+.1f}"


def _table(first: str, *columns: str, names: list[str] = ()) -> Table:
    """A compact table that fits 80 columns: the first column (group names) folds beyond 20
    characters, the others never wrap."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column(first, overflow="fold", min_width=min(20, max([len(first)] + [len(n) for n in names])))
    for c in columns:
        table.add_column(c, no_wrap=True)
    return table


class _RetrainProgress:
    """Rich progress over every (group, seed) epoch, fed by RetrainEvents."""

    def __init__(self, total: int, enabled: bool, label: str):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.done: dict[tuple[str, int], int] = {}
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                                 disable=not enabled)
        self.task = self.progress.add_task(label, total=total)

    def __enter__(self):
        return self  # the bar appears with the first event, after the library validated everything

    def __exit__(self, *exc):
        self.progress.stop()

    def __call__(self, event, prefix: str = "") -> None:
        self.progress.start()
        key = (event.group, event.seed)
        self.done[key] = event.epoch if event.kind == "run" else event.epoch + 1
        desc = f"{prefix}{event.group} seed {event.seed} epoch {min(event.epoch, event.total_epochs)}/{event.total_epochs}"
        acc = event.metrics.get("test_accuracy")
        if acc is not None:
            desc += f" test acc {acc:.3f}"
        self.progress.update(self.task, completed=sum(self.done.values()), description=desc)


def _band(lo: float, hi: float) -> str:
    return "-" if math.isnan(lo) else f"{100 * lo:.1f}-{100 * hi:.1f}"


def _print_rows(rows) -> None:
    table = _table("group", "kind", "subset", "seeds", "acc %", "16-84 %", "diff", names=[r.group for r in rows])
    for r in rows:
        table.add_row(r.group, "random" if r.baseline_of is not None else r.source,
                      f"{r.subset_size}/{r.n_full}", str(len(r.seeds)), _pct(r.mean), _band(r.p16, r.p84),
                      _signed(r.difference))
    console.print(table)
    if rows:
        console.print(f"full data: {_pct(rows[0].full_data_accuracy)}% mean final test accuracy of the store's "
                      "completed scoring runs (diff = subset minus full data, in percentage points)", highlight=False)


# ----------------------------------------------------------------------------- retrain
def retrain_command(
    store: str = typer.Argument(..., help="The score store the manifest was selected from."),
    manifest: Path = typer.Option(..., help="Manifest JSON written by 'scorebank select'."),
    seeds: str = OPT_SEEDS,
    name: Optional[str] = typer.Option(None, help="Group name under retrain/. Default: the manifest's name."),
    baseline: Optional[str] = typer.Option(None, help="random: also retrain on a random subset of the same size "
                                                      "(with the manifest's class counts if it was class-balanced)."),
    baseline_seed: int = typer.Option(0, help="Seed drawing the random baseline subset."),
    budget: str = OPT_BUDGET,
    model: Optional[str] = OPT_MODEL, batchnorm: Optional[bool] = OPT_BATCHNORM,
    init_std: Optional[float] = OPT_INIT_STD, width: Optional[int] = OPT_WIDTH,
    optimizer: Optional[str] = OPT_OPTIMIZER, clip_count: Optional[int] = OPT_CLIP_COUNT,
    epochs: Optional[int] = OPT_EPOCHS, lr: Optional[float] = OPT_LR, momentum: Optional[float] = OPT_MOMENTUM,
    nesterov: Optional[bool] = OPT_NESTEROV, weight_decay: Optional[float] = OPT_WEIGHT_DECAY,
    batch_size: Optional[int] = OPT_BATCH_SIZE, schedule: Optional[str] = OPT_SCHEDULE,
    augment: Optional[bool] = OPT_AUGMENT, eval_batch_size: Optional[int] = OPT_EVAL_BS,
    data_dir: Optional[Path] = OPT_DATA_DIR, download: Optional[bool] = OPT_DOWNLOAD,
    device: str = OPT_DEVICE,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing group made with another subset or options."),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = OPT_QUIET,
) -> None:
    """Retrain fresh networks on a manifest's examples (Data Diet protocol).

    Test accuracy per seed and epoch goes under retrain/<name> in the store; finished seeds
    are skipped, unfinished ones resumed."""
    from scorebank.pipeline.config import parse_seeds
    from scorebank.pipeline.retrain import retrain_manifest, retrain_summary

    with handle_errors():
        seed_list = parse_seeds(seeds)
        overrides = _overrides(model=model, batchnorm=batchnorm, init_std=init_std, width=width, optimizer=optimizer,
                               clip_count=clip_count, epochs=epochs, lr=lr, momentum=momentum, nesterov=nesterov,
                               weight_decay=weight_decay, batch_size=batch_size, schedule=schedule, augment=augment,
                               eval_batch_size=eval_batch_size, data_dir=data_dir, download=download)
        n_epochs = _epochs_for(store, overrides)
        total = (2 if baseline else 1) * len(seed_list) * (n_epochs + 1)
        with _RetrainProgress(total, enabled=not quiet, label="retraining") as bar:
            results = retrain_manifest(store, manifest, seed_list, name=name, baseline=baseline,
                                       baseline_seed=baseline_seed, overrides=overrides, budget=budget,
                                       device=device, overwrite=overwrite, progress=bar)
        rows = retrain_summary(store, [r.group for r in results])
        if json_output:
            print_json([r.to_dict() for r in rows])
            return
        for r in results:
            skipped = [o.seed for o in r.outcomes if o.skipped]
            if skipped:
                console.print(f"{r.group}: already finished, skipped seeds {', '.join(map(str, skipped))}")
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
def prune_curve_command(
    store: str = typer.Argument(..., help="The score store."),
    score: str = typer.Option(..., help="Score spec, e.g. el2n@20, grand@0, forgetting, nmargin@10."),
    strategies: str = typer.Option("keep-highest,random", "--strategies", "--strategy",
                                   help="Comma-separated selection strategies: keep-highest, keep-lowest, random, "
                                        "stratified; or window (with --offsets) optionally with random."),
    fractions: Optional[str] = typer.Option(None, help="Fractions of the training set PRUNED, e.g. 0.1,0.3,0.5,0.7,0.9."),
    offsets: Optional[str] = typer.Option(None, help="Sliding window (Data Diet Fig. 2): offsets, e.g. 0,0.1,0.2,0.3."),
    fraction: Optional[float] = typer.Option(None, help="Sliding window: fraction of the data each window KEEPS."),
    seeds: str = OPT_SEEDS,
    runs: Optional[str] = typer.Option(None, help="Scoring runs whose scores are averaged. Default: all completed."),
    seed: int = typer.Option(0, help="Seed of the random (and stratified) selection."),
    class_balanced: bool = typer.Option(False, "--class-balanced", help="Apply each selection within every class."),
    prefix: str = typer.Option("curve", help="Prefix of the cells' group names under retrain/."),
    out: Path = typer.Option(Path("prune-curve"), help="Writes OUT.csv, OUT.json and OUT.png."),
    budget: str = OPT_BUDGET,
    model: Optional[str] = OPT_MODEL, batchnorm: Optional[bool] = OPT_BATCHNORM,
    init_std: Optional[float] = OPT_INIT_STD, width: Optional[int] = OPT_WIDTH,
    optimizer: Optional[str] = OPT_OPTIMIZER, clip_count: Optional[int] = OPT_CLIP_COUNT,
    epochs: Optional[int] = OPT_EPOCHS, lr: Optional[float] = OPT_LR, momentum: Optional[float] = OPT_MOMENTUM,
    nesterov: Optional[bool] = OPT_NESTEROV, weight_decay: Optional[float] = OPT_WEIGHT_DECAY,
    batch_size: Optional[int] = OPT_BATCH_SIZE, schedule: Optional[str] = OPT_SCHEDULE,
    augment: Optional[bool] = OPT_AUGMENT, eval_batch_size: Optional[int] = OPT_EVAL_BS,
    data_dir: Optional[Path] = OPT_DATA_DIR, download: Optional[bool] = OPT_DOWNLOAD,
    device: str = OPT_DEVICE,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace cells made with another subset or options."),
    quiet: bool = OPT_QUIET,
) -> None:
    """Pruning curve or sliding window: select + retrain over a grid (Data Diet Figs. 1, 2).

    Strategies x fractions pruned, or --strategy window --offsets ... --fraction F for the
    sliding window.  Finished cells are skipped."""
    from scorebank.analysis.access import parse_runs
    from scorebank.pipeline.config import parse_seeds
    from scorebank.pipeline.prune_curve import plan_cells, plot_curve, prune_curve, write_table

    with handle_errors():
        seed_list = parse_seeds(seeds)
        strategy_list = [s.strip() for s in strategies.split(",") if s.strip()]
        fr = _floats(fractions, "--fractions")
        offs = _floats(offsets, "--offsets")
        run_list = None if runs is None else parse_runs(runs)
        overrides = _overrides(model=model, batchnorm=batchnorm, init_std=init_std, width=width, optimizer=optimizer,
                               clip_count=clip_count, epochs=epochs, lr=lr, momentum=momentum, nesterov=nesterov,
                               weight_decay=weight_decay, batch_size=batch_size, schedule=schedule, augment=augment,
                               eval_batch_size=eval_batch_size, data_dir=data_dir, download=download)
        _, cells = plan_cells(strategy_list, score=score, fractions=fr, offsets=offs, window_fraction=fraction,
                              seed=seed, class_balanced=class_balanced, prefix=prefix)
        n_epochs = _epochs_for(store, overrides)
        with _RetrainProgress(len(cells) * len(seed_list) * (n_epochs + 1), enabled=not quiet,
                              label="pruning curve") as bar:
            curve = prune_curve(store, score=score, strategies=strategy_list, seeds=seed_list, fractions=fr,
                                offsets=offs, window_fraction=fraction, runs=run_list, seed=seed,
                                class_balanced=class_balanced, prefix=prefix, overrides=overrides, budget=budget,
                                device=device, overwrite=overwrite,
                                progress=lambda ev: bar(ev.event, prefix=f"cell {ev.cell + 1}/{ev.n_cells} "))
        paths = [Path(f"{out}.csv"), Path(f"{out}.json"), Path(f"{out}.png")]
        write_table(curve, paths[0], paths[1])
        plot_curve(curve, paths[2])
        window = curve.mode == "window"
        table = _table("strategy", "offset" if window else "pruned", "kept", "subset", "seeds", "acc %",
                       "16-84 %", "diff", names=[r.strategy for r in curve.rows])
        for r in curve.rows:
            table.add_row(r.strategy, "-" if (window and r.offset is None) else f"{r.offset if window else r.fraction_pruned:g}",
                          f"{r.fraction_kept:g}", str(r.subset_size), str(len(r.seeds)), _pct(r.mean),
                          _band(r.p16, r.p84), _signed(r.difference))
        console.print(table)
        full = curve.full_data
        console.print(f"full data: {_pct(full['mean'])}% test accuracy (16-84: {_band(full['p16'], full['p84'])}%, "
                      f"{len(full['accuracies'])} scoring runs); diff = cell minus full data, in percentage points",
                      highlight=False)
        console.print(f"wrote {', '.join(map(str, paths))}", highlight=False)


# ----------------------------------------------------------------------------- compress
def compress_command(
    store: str = typer.Argument(..., help="The score store."),
    run: int = typer.Option(..., help="Seed of the scoring run to compress (its latest checkpoint is used)."),
    keep: int = typer.Option(200, help="Examples left at the end (immediate: kept at once; continuous: the last stage)."),
    schedule: str = typer.Option("immediate", help="immediate or continuous (margins paper appendix C.5)."),
    epochs: int = typer.Option(20, help="immediate: epochs trained on the kept examples."),
    max_epochs_per_stage: int = typer.Option(50, help="continuous: at most this many epochs after each removal."),
    min_epochs_per_stage: int = typer.Option(1, help="continuous: at least this many epochs after each removal."),
    batch_size: Optional[int] = typer.Option(None, help="Minibatch SGD with this batch size. Default: full-batch gradient descent."),
    lr: Optional[float] = typer.Option(None, help="Learning rate. Default: the one the run's schedule used in the epoch of its checkpoint."),
    momentum: Optional[float] = typer.Option(None, help="Momentum. Default: the store's."),
    nesterov: Optional[bool] = typer.Option(None, "--nesterov/--no-nesterov", help="Nesterov momentum. Default: the store's."),
    weight_decay: Optional[float] = typer.Option(None, help="L2 weight decay. Default: the store's."),
    eval_batch_size: Optional[int] = typer.Option(None, help="Batch size of evaluation (and gradient accumulation)."),
    name: Optional[str] = typer.Option(None, help="Group name under compress/. Default: run<R>-<schedule>-keep<K>."),
    figure: Optional[Path] = typer.Option(None, help="PNG of test error vs examples left. Default: compress-<name>.png."),
    device: str = OPT_DEVICE,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing group of that name."),
    quiet: bool = OPT_QUIET,
) -> None:
    """Compress the training set of a separated run to its smallest margins (margins paper Sec. 5).

    Records test error against the number of examples left under compress/<name>."""
    from scorebank.pipeline.compress import compress, plot_compression, resolve_compress_config
    from scorebank.pipeline.retrain import store_identity
    from scorebank.pipeline.scoring import read_store_config

    with handle_errors():
        store_identity(store)
        cfg = resolve_compress_config(read_store_config(store), run=run, schedule=schedule, keep=keep, epochs=epochs,
                                      max_epochs_per_stage=max_epochs_per_stage,
                                      min_epochs_per_stage=min_epochs_per_stage, batch_size=batch_size, lr=lr,
                                      momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                      eval_batch_size=eval_batch_size)
        with _CompressProgress(enabled=not quiet) as bar:
            result = compress(store, cfg, name=name, device=device, overwrite=overwrite, progress=bar)
        traj, start = result.trajectory, result.start
        path = plot_compression(traj, figure or Path(f"compress-{result.name}.png"),
                                title=f"run {cfg.run}, {cfg.schedule} compression to {cfg.keep} examples")
        console.print(f"run {cfg.run}: separated at epoch {start['separation_epoch']}; continued from its latest "
                      f"checkpoint (epoch {start['checkpoint_epoch']}, training accuracy "
                      f"{_pct(start['checkpoint_train_accuracy'])}%, test accuracy "
                      f"{_pct(start['checkpoint_test_accuracy'])}%)", highlight=False)
        table = _table("stage", "examples left", "epochs", "separated", "test err %", "train err %")
        for s, row in enumerate(traj.stage_end_rows()):
            table.add_row(str(s), str(traj.stage_size[s]), str(traj.stage_epochs[s]),
                          "yes" if traj.stage_separated[s] else "no", _pct(traj.test_error[row]),
                          _pct(traj.train_error[row]))
        console.print(table)
        console.print(f"recorded compress/{result.name} in {store}; figure {path}", highlight=False)


class _CompressProgress:
    def __init__(self, enabled: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=err_console, disable=not enabled)
        self.task = self.progress.add_task("compressing", total=None)

    def __enter__(self):
        return self  # the bar appears with the first event, after the library validated everything

    def __exit__(self, *exc):
        self.progress.stop()

    def __call__(self, event) -> None:
        self.progress.start()
        # stage k is under way: k - 1 stages after the checkpoint are finished
        self.progress.update(self.task, total=event.n_stages, completed=max(0, event.stage - 1),
                             description=f"stage {event.stage}/{event.n_stages}: {event.examples_left} left, "
                                         f"epoch {event.epoch_in_stage}, test error {event.test_error:.3f}")


def register(app: typer.Typer) -> None:
    app.command("retrain")(retrain_command)
    app.command("prune-curve")(prune_curve_command)
    app.command("compress")(compress_command)
