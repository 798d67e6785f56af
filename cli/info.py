"""``scorebank info STORE``: runs, recorded epochs, completion, accuracy, data separation."""

from __future__ import annotations

import dataclasses
import math

import typer
from rich.table import Table

from scorebank.cli.common import console, handle_errors, print_json
from scorebank.stores import schema as S


def print_summary(location, summary=None) -> None:
    """Print the per-run summary of the store at ``location`` (``summary``: an already
    computed :class:`~scorebank.stores.summary.StoreSummary` of it, to skip re-reading)."""
    from scorebank.stores.location import open_scores
    from scorebank.stores.summary import summarize

    s = summary if summary is not None else summarize(open_scores(location))
    console.print(f"[bold]{location}[/]: {s.dataset}, {s.n_examples} examples, epochs 0..{s.epochs}, "
                  f"fingerprint {s.fingerprint[:19]}…", highlight=False)
    rec = s.recorded_epochs
    shown = ",".join(map(str, rec)) if len(rec) <= 12 else f"{len(rec)} epochs ({rec[0]}..{rec[-1]})"
    console.print(f"clean pass recorded at: {shown}" + (f"; features: {', '.join(s.features)}" if s.features else ""),
                  highlight=False)
    noisy = S.FEATURE_LABEL_NOISE in s.features
    extra = ("pristine acc", "corrupt acc") if noisy else ()
    merged = any(r.source is not None for r in s.runs)
    ids = ("run", "seed", "source") if merged else ("seed",)
    table = Table(*ids, "status", "last epoch", "train acc", *extra, "test acc", "separated at")
    for r in s.runs:
        status = r.status if r.failed_epoch is None else f"{r.status} (epoch {r.failed_epoch})"
        noise_cols = (_pct(r.pristine_accuracy), _pct(r.corrupt_accuracy)) if noisy else ()
        id_cols = (str(r.run), str(r.seed), r.source) if merged else (str(r.seed),)
        table.add_row(*id_cols, status, "-" if r.last_epoch is None else str(r.last_epoch),
                      _pct(r.train_accuracy), *noise_cols, _pct(r.test_accuracy),
                      "-" if r.separation_epoch is None else str(r.separation_epoch))
    console.print(table)


def _pct(v: float) -> str:
    return "-" if math.isnan(v) else f"{100 * v:.2f}%"


def info_command(
    store: str = typer.Argument(..., help="Store path (or archive/URL where supported)."),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Summarise a store: runs, recorded epochs, completion, failures, accuracy, data separation."""
    with handle_errors():
        if json_output:
            from scorebank.stores.location import open_scores
            from scorebank.stores.summary import summarize

            print_json(dataclasses.asdict(summarize(open_scores(store))))
        else:
            print_summary(store)


def register(app: typer.Typer) -> None:
    app.command("info")(info_command)
