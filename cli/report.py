"""``scorebank report STORE [--out DIR]``: parse, call :func:`scorebank.analysis.report.write_report`
with what :func:`scorebank.pipeline.experiment.report_inputs` gathers, print where the page is."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from scorebank.cli.common import console, handle_errors
from scorebank.cli.text import plain


def report_command(
    store: str = typer.Argument(..., help="A score store (directory, .zip archive or URL), or the output directory of 'scorebank run' "
                                          "(its results.json and every store it made)."),
    out: Optional[Path] = typer.Option(None, help="Directory for index.html and its PNGs; default: STORE-report "
                                                  "(for an experiment directory: DIR/report)."),
    score: Optional[str] = typer.Option(None, help="Score spec of the image grids; default: EL2N at the recorded "
                                                   "epoch nearest 10% of training."),
    per_class: int = typer.Option(6, help="Images per class at each end of the image grids."),
) -> None:
    """Write one static HTML page (and PNGs; no network needed to view it) of a store or an experiment:
    training, margin, forgetting, correlation, overlap, pruning, noise figures and image grids."""
    from scorebank.core.errors import InvalidArgumentError
    from scorebank.pipeline.experiment import experiment_report, report_inputs

    with handle_errors():
        if per_class < 1:
            raise InvalidArgumentError(f"--per-class must be an integer >= 1, got {per_class!r}")
        path = Path(store)
        if (path / "results.json").is_file() and not (path / "zarr.json").is_file():
            page = experiment_report(path, out if out is not None else path / "report", score=score,
                                     per_class=per_class)
        else:
            from scorebank.analysis.report import write_report

            page = write_report(out if out is not None else Path(f"{path.name.removesuffix('.zarr')}-report"),
                                {path.name: report_inputs(path)}, score=score, per_class=per_class,
                                title=f"scorebank report: {path.name}")
        console.print(f"wrote {plain(page)}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
