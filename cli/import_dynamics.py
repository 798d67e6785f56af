"""``scorebank import-dynamics FORMAT PATH --out STORE``: parse options, call
:func:`scorebank.pipeline.import_dynamics.import_dynamics`, print the new store's summary."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from scorebank.cli.common import console, handle_errors
from scorebank.cli.options import registry_help
from scorebank.cli.text import plain

FORMAT_HELP = "Format of PATH: " + registry_help("dynamics_formats")


def import_dynamics_command(
    fmt: str = typer.Argument(..., metavar="FORMAT", help=FORMAT_HELP),
    path: Path = typer.Argument(..., help="The file or directory holding the dynamics."),
    out: Path = typer.Option(..., "--out", help="The new store to write (must not exist)."),
    labels: Optional[Path] = typer.Option(None, help="Training labels as an .npy int array, for formats that hold none."),
    seed: int = typer.Option(0, help="Run id (seed) of a single-run import (datamaps)."),
    steps_per_epoch: Optional[int] = typer.Option(None, help="datadiet: optimiser steps per epoch, to turn ckpt_<step> into epochs."),
    dataset: Optional[str] = typer.Option(None, help="Data set name recorded in the store (default: PATH's name)."),
) -> None:
    """Import training dynamics recorded by other tools (data maps, logits arrays, Data Diet
    scores) into a new scorebank store.  Nothing is ever unpickled."""
    from scorebank.cli.info import print_summary
    from scorebank.pipeline.import_dynamics import import_dynamics

    with handle_errors():
        store = import_dynamics(fmt, path, out, labels=None if labels is None else str(labels), seed=seed,
                                steps_per_epoch=steps_per_epoch, dataset=dataset)
        console.print(f"imported {plain(str(path))} ({plain(fmt)}) into {plain(str(store))}", highlight=False)
        print_summary(store)


def register(app: typer.Typer) -> None:
    app.command("import-dynamics")(import_dynamics_command)
