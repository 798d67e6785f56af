"""``scorebank info STORE``: runs, recorded epochs, completion, accuracy, data separation."""

from __future__ import annotations

import dataclasses
import typer
from scorebank.cli.common import console, handle_errors, print_json
from scorebank.cli.options import JsonOutput
from scorebank.cli.tables import compact_table, pct
from scorebank.cli.text import plain
from scorebank.stores import schema as S


def print_summary(location, summary=None) -> None:
    """Print the per-run summary of the store at ``location`` (``summary``: an already
    computed :class:`~scorebank.stores.summary.StoreSummary` of it, to skip re-reading).
    Every value read from the store is printed as plain text (:func:`plain`)."""
    from scorebank.stores.location import open_scores
    from scorebank.stores.summary import summarize

    s = summary if summary is not None else summarize(open_scores(location))
    console.print(f"[bold]{plain(location)}[/]: {plain(s.dataset)}, {s.n_examples} examples, epochs 0..{s.epochs}, "
                  f"fingerprint {plain(s.fingerprint[:19])}…", highlight=False)
    rec = s.recorded_epochs
    shown = ",".join(map(str, rec)) if len(rec) <= 12 else f"{len(rec)} epochs ({rec[0]}..{rec[-1]})"
    console.print(f"clean pass recorded at: {shown}"
                  + (f"; features: {', '.join(map(plain, s.features))}" if s.features else ""), highlight=False)
    noisy = S.FEATURE_LABEL_NOISE in s.features
    extra = ("pristine\nacc %", "corrupt\nacc %") if noisy else ()
    merged = any(r.source is not None for r in s.runs)
    ids = ("run", "seed", "source") if merged else ("seed",)
    # accuracies in percent with one decimal and headers over two lines: ten columns fit 80;
    # separation: the first epoch with 100% clean-pass training accuracy
    table = compact_table(*ids, "status", "last\nepoch", "train\nacc %", *extra, "test\nacc %", "separ-\nation",
                          fold=(len(ids) - 1, len(ids)) if merged else (len(ids),), min_fold=8)
    for r in s.runs:
        status = r.status if r.failed_epoch is None else f"{r.status} (epoch {r.failed_epoch})"
        noise_cols = (pct(r.pristine_accuracy), pct(r.corrupt_accuracy)) if noisy else ()
        id_cols = (str(r.run), str(r.seed), plain(r.source)) if merged else (str(r.seed),)
        table.add_row(*id_cols, plain(status), "-" if r.last_epoch is None else str(r.last_epoch),
                      pct(r.train_accuracy), *noise_cols, pct(r.test_accuracy),
                      "-" if r.separation_epoch is None else str(r.separation_epoch))
    console.print(table)
    from scorebank.stores.summary import training_groups

    for group in training_groups(location):  # retrain/NAME, holdout, memorization: live status per unit
        console.print(plain(group.describe()), highlight=False)


def info_command(
    store: str = typer.Argument(..., help="Store path (or archive/URL where supported)."),
    json_output: JsonOutput = False,
) -> None:
    """Summarise a store: runs, recorded epochs, completion, failures, accuracy, data separation."""
    with handle_errors():
        if json_output:
            from scorebank.stores.location import open_scores
            from scorebank.stores.summary import summarize

            from scorebank.stores.summary import training_groups

            doc = dataclasses.asdict(summarize(open_scores(store)))
            groups = training_groups(store)
            if groups:  # only then, so stores without training groups print what they always did
                doc["groups"] = [dataclasses.asdict(g) for g in groups]
            print_json(doc)
        else:
            print_summary(store)


def register(app: typer.Typer) -> None:
    app.command("info")(info_command)
