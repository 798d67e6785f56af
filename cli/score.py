"""``scorebank score``: parse options, call :func:`scorebank.pipeline.scoring.score`, print."""

from __future__ import annotations

from typing import Optional

import typer

from scorebank.cli.common import console, execution, execution_group, handle_errors
from scorebank.cli.options import Quiet, Seeds, config_group, with_groups
from scorebank.cli.progress import RunProgress
from scorebank.core.errors import InvalidArgumentError


@with_groups
def score_command(
    config: dict = config_group(),
    record_every: Optional[int] = typer.Option(None, help="Clean pass every K epochs (plus epoch 0 and the last)."),
    record_epochs: Optional[str] = typer.Option(None, help="Clean pass at these epochs, e.g. 0,1,2,5,10,20; "
                                                           "default: every epoch."),
    grand_epochs: Optional[str] = typer.Option(None, help="Record GraNd at these epochs, e.g. 0,10,20."),
    grand_only: bool = typer.Option(False, "--grand-only", help="Only GraNd at initialisation (epoch 0), no training."),
    seeds: Seeds = "0-2",
    store: str = typer.Option("scores.zarr", help="The Zarr store to create or extend: a directory, or an "
                                                  "object-store URL (s3://bucket/prefix.zarr, gs://...; endpoint "
                                                  "and credentials from the environment, e.g. AWS_ENDPOINT_URL)."),
    execution_options: dict = execution_group("Replace an existing store made with another configuration."),
    quiet: Quiet = False,
) -> None:
    """Train several seeds and record per-example, per-epoch scores into a Zarr store.

    Re-running the same command continues unfinished runs, skips finished ones and adds new
    seeds; a different configuration is refused unless --overwrite.  With --workers or
    --scheduler every run is a Dask task (a killed worker's run resumes elsewhere from its
    checkpoint); a second command on the same store is refused while the first runs."""
    from scorebank.pipeline.config import parse_seeds, resolve_config
    from scorebank.pipeline.scoring import score

    with handle_errors():
        if grand_only:
            if grand_epochs not in (None, "0"):
                raise InvalidArgumentError(f"--grand-only records GraNd at epoch 0 only; drop --grand-epochs {grand_epochs!r}")
            config["epochs"], grand_epochs = 0, "0"
        resolved = resolve_config(**config, record_every=record_every, record_epochs=record_epochs,
                                  grand_epochs=grand_epochs)
        seed_list = parse_seeds(seeds)
        with execution(execution_options) as how, \
                RunProgress("scoring", len(seed_list) * (resolved.epochs + 1), enabled=not quiet) as bar:
            outcomes = score(resolved, seed_list, store, progress=bar, **how)
        skipped = [o.seed for o in outcomes if o.skipped]
        if skipped:
            console.print(f"already finished, skipped: seeds {', '.join(map(str, skipped))}")
        from scorebank.cli.info import print_summary

        print_summary(store)


def register(app: typer.Typer) -> None:
    app.command("score")(score_command)
