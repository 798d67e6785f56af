"""``scorebank score``: parse options, call :func:`scorebank.pipeline.scoring.score`, print."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from scorebank.cli.common import console, err_console, handle_errors
from scorebank.stores.errors import InvalidArgumentError


def score_command(
    dataset: str = typer.Option("digits", help="digits (embedded), cifar10, cifar100, mnist, fashion-mnist, or imagefolder:PATH (directory or zip with train/ and test/ class folders)."),
    data_dir: Optional[Path] = typer.Option(None, help="Where torchvision data sets live / are downloaded, and where decoded image folders are cached. Default: ~/.cache/scorebank/data or $SCOREBANK_DATA."),
    download: bool = typer.Option(True, "--download/--no-download", help="Download torchvision data sets on first use."),
    limit: Optional[int] = typer.Option(None, help="Class-stratified first-N subset of the training set (seed-independent)."),
    label_noise: float = typer.Option(0.0, help="Fraction of examples whose labels are permuted among themselves before training (1.0 = random labels)."),
    label_noise_seed: int = typer.Option(0, help="Seed choosing the corrupted examples (the same for every run)."),
    model: str = typer.Option("mlp", help="mlp, cnn5 (margins paper) or resnet18 (CIFAR variant)."),
    batchnorm: bool = typer.Option(True, "--batchnorm/--no-batchnorm", help="cnn5: BatchNorm after each convolution."),
    init_std: Optional[float] = typer.Option(None, help="cnn5: normal init with this std instead of PyTorch's default."),
    width: Optional[int] = typer.Option(None, help="Model width (mlp hidden units, cnn5 first conv channels, resnet18 first-stage channels)."),
    optimizer: str = typer.Option("sgd", help="sgd, m3, rm3, ra3 or winsorized (Coherent Gradients robust estimators)."),
    clip_count: int = typer.Option(0, help="winsorized: values clipped at each end per coordinate."),
    epochs: int = typer.Option(20, help="Training epochs."),
    lr: float = typer.Option(0.05, help="Learning rate."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    nesterov: bool = typer.Option(False, "--nesterov/--no-nesterov", help="Nesterov momentum."),
    weight_decay: float = typer.Option(5e-4, help="L2 weight decay."),
    batch_size: int = typer.Option(128, help="Minibatch size."),
    schedule: str = typer.Option("constant", help="constant or multistep:E1,E2,...:FACTOR."),
    augment: bool = typer.Option(False, "--augment/--no-augment", help="Pad-4 random crop + horizontal flip during training."),
    record_every: Optional[int] = typer.Option(None, help="Clean pass every K epochs (plus epoch 0 and the last)."),
    record_epochs: Optional[str] = typer.Option(None, help="Clean pass at these epochs, e.g. 0,1,2,5,10,20. Default: every epoch."),
    grand_epochs: Optional[str] = typer.Option(None, help="Record GraNd at these epochs, e.g. 0,10,20."),
    grand_only: bool = typer.Option(False, "--grand-only", help="Only GraNd at initialisation (epoch 0), no training."),
    eval_batch_size: int = typer.Option(1024, help="Batch size of the clean pass, test evaluation and GraNd."),
    seeds: str = typer.Option("0-2", help="Seeds, e.g. 0-9 or 0,3,5-7; one run each."),
    store: Path = typer.Option(Path("scores.zarr"), help="The Zarr store to create or extend."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store made with another configuration."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train several seeds and record per-example, per-epoch scores into a Zarr store."""
    from scorebank.pipeline.config import parse_seeds, resolve_config
    from scorebank.pipeline.scoring import score

    with handle_errors():
        if grand_only:
            if grand_epochs not in (None, "0"):
                raise InvalidArgumentError(f"--grand-only records GraNd at epoch 0 only; drop --grand-epochs {grand_epochs!r}")
            epochs, grand_epochs = 0, "0"
        config = resolve_config(
            dataset=dataset, data_dir=None if data_dir is None else str(data_dir), download=download,
            limit=limit, label_noise=label_noise, label_noise_seed=label_noise_seed, model=model,
            batchnorm=batchnorm, init_std=init_std, width=width, optimizer=optimizer,
            clip_count=clip_count, epochs=epochs, lr=lr, momentum=momentum, nesterov=nesterov,
            weight_decay=weight_decay, batch_size=batch_size, schedule=schedule, augment=augment,
            eval_batch_size=eval_batch_size, record_every=record_every, record_epochs=record_epochs,
            grand_epochs=grand_epochs)
        seed_list = parse_seeds(seeds)
        with _ScoreProgress(len(seed_list), config.epochs, enabled=not quiet) as bar:
            try:
                outcomes = score(config, seed_list, store, device=device, overwrite=overwrite, progress=bar)
            finally:
                bar.stop()
            skipped = [o.seed for o in outcomes if o.skipped]
        if skipped:
            console.print(f"already finished, skipped: seeds {', '.join(map(str, skipped))}")
        from scorebank.cli.info import print_summary

        print_summary(store)


class _ScoreProgress:
    """Rich progress over all runs' epochs, fed by scoring's ProgressEvents."""

    def __init__(self, n_runs: int, epochs: int, enabled: bool):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.enabled = enabled
        self.per_run = epochs + 1
        self.done: dict[int, int] = {}
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                                 disable=not enabled)
        self.task = self.progress.add_task("scoring", total=n_runs * self.per_run)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self.progress.stop()

    def __call__(self, event) -> None:
        self.done[event.seed] = event.epoch + 1 if event.kind == "epoch" else event.epoch + (event.epoch > 0)
        acc = event.metrics.get("test_accuracy")
        desc = f"seed {event.seed} epoch {event.epoch}/{event.total_epochs}"
        if acc is not None:
            desc += f" test acc {acc:.3f}"
        self.progress.update(self.task, completed=sum(self.done.values()), description=desc)


def register(app: typer.Typer) -> None:
    app.command("score")(score_command)
