"""``scorebank select STORE --score SPEC --strategy S --keep F ... --out manifest.json``: choose
a subset by a score averaged over runs, write its manifest and record it in the store."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from scorebank.cli.analyze import SPECS_HELP, STRATEGIES_HELP, ScoreHelp
from scorebank.cli.common import SCHEDULER_HELP, dask_scheduler, handle_errors
from scorebank.cli.output import Grid, emit, fmt
from scorebank.cli.text import plain
from scorebank.stores.errors import InvalidArgumentError, StoreExistsError

#: select's spelling of the selection library's parameters (``fraction`` is the fraction kept).
OPTIONS = {"fraction": "--keep"}


def select_command(
    store: str = typer.Argument(..., help="Store path (a directory to record the manifest in; archives/URLs need --no-record)."),
    score: Optional[str] = typer.Option(None, help="Score spec averaged over runs, e.g. el2n@20, grand@0, forgetting, nmargin@200.  Not used by random.  " + SPECS_HELP),
    strategy: str = typer.Option(..., help="How to choose.  " + STRATEGIES_HELP),
    keep: Optional[float] = typer.Option(None, "--keep", help="Fraction of examples KEPT, in (0, 1] (all strategies but smallest-margin)."),
    fraction: Optional[float] = typer.Option(None, "--fraction", hidden=True, help="Renamed --keep."),
    offset: Optional[float] = typer.Option(None, help="window: fraction of lowest scores dropped first, in [0, 1)."),
    count: Optional[int] = typer.Option(None, help="smallest-margin: number of examples kept."),
    seed: Optional[int] = typer.Option(None, help="random / stratified: seed of the draws (default 0)."),
    bins: Optional[int] = typer.Option(None, help="stratified: equal-width score strata (default 50)."),
    hard_cutoff: Optional[float] = typer.Option(None, help="stratified: fraction of hardest examples dropped first (default 0)."),
    class_balanced: bool = typer.Option(False, "--class-balanced", help="Apply the rule within each class (keeps round(F * n_c) per class)."),
    runs: Optional[str] = typer.Option(None, help="Runs whose scores are averaged, e.g. 0-9.  Default: every completed run."),
    reduce: str = typer.Option("mean", help="Combine runs by 'mean' (default) or 'sum'."),
    never_learned: str = typer.Option("count", help="forgetting: never-learned examples score presentations + 1 ('count') or 'inf'."),
    out: Path = typer.Option(..., help="Manifest file to write (JSON)."),
    name: Optional[str] = typer.Option(None, help="Manifest name (and store group name).  Default: strategy-score-time-id."),
    record: bool = typer.Option(True, "--record/--no-record", help="Also record the manifest in the store's 'manifests' group."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    json_output: bool = typer.Option(False, "--json", help="Print the manifest summary as JSON."),
    scheduler: Optional[str] = typer.Option(None, help=SCHEDULER_HELP),
) -> None:
    """Select a subset of the training set by a score (Data Diet, margins paper, CCS) and write its manifest."""
    from scorebank.analysis.access import parse_runs
    from scorebank.analysis.selection import select, to_manifest
    from scorebank.stores.manifest import check_name, record_manifest, write_manifest

    with handle_errors():
        if fraction is not None:
            raise InvalidArgumentError(
                f"select's --fraction is now --keep (the fraction of examples kept, in (0, 1]): write --keep {fraction!r}")
        if name is not None:
            check_name(name)
        if record and not Path(store).is_dir():
            raise InvalidArgumentError(
                f"cannot record the manifest in {store!r}: only a store directory is writable "
                "(not an archive or URL); pass --no-record")
        if out.exists() and not overwrite:
            raise StoreExistsError(f"{str(out)!r} exists; choose another --out or pass --overwrite")
        with dask_scheduler(scheduler) as sched:
            sel = select(store, strategy, score=score, runs=None if runs is None else parse_runs(runs),
                         fraction=keep, offset=offset, count=count, seed=seed, bins=bins,
                         hard_cutoff=hard_cutoff, class_balanced=class_balanced, reduce=reduce,
                         never_learned=never_learned, scheduler=sched, options=OPTIONS)
        manifest = to_manifest(sel, store, name=name)
        # the file is written beside --out first and renamed only once the store has recorded
        # the manifest, so a refused recording leaves an existing --out file untouched
        staged = write_manifest(out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.staged"), manifest)
        try:
            group = record_manifest(store, manifest) if record else None
            os.replace(staged, out)
        finally:
            staged.unlink(missing_ok=True)
        kept_scores = None if sel.scores is None else sel.scores[sel.indices]
        summary = {"name": manifest.name, "manifest": str(out), "store_group": group, "strategy": sel.rule.strategy,
                   "score": sel.score, "runs": list(sel.runs), "parameters": sel.parameters,
                   "n_kept": sel.n_kept, "n_examples": sel.n_examples, "counts_per_class": sel.counts_per_class,
                   "kept_score_range": None if kept_scores is None else [float(kept_scores.min()),
                                                                         float(kept_scores.max())]}
        emit(summary, _tables(sel, kept_scores, store, manifest, out, group), json_output=json_output)


def _tables(sel, kept_scores, store: str, manifest, out: Path, group: str | None):
    """What was kept, per class, and where the manifest went."""
    yield (f"kept [bold]{sel.n_kept}[/] of {sel.n_examples} examples "
           f"({100 * sel.n_kept / sel.n_examples:.2f}%) with {sel.rule.strategy}"
           + (f" on {sel.score} over runs {list(sel.runs)}" if sel.score else "")
           + ("" if kept_scores is None else
              f"; kept scores {fmt(kept_scores.min())} .. {fmt(kept_scores.max())}"))
    yield Grid(("class", "kept", "of"), _class_rows(store, sel.counts_per_class, manifest.class_names),
               title="per class")
    yield (f"manifest written to [bold]{plain(out)}[/]"
           + (f"; recorded in the store as {plain(group)}" if group else ""))


def _class_rows(store: str, counts: dict[str, int], names) -> list[tuple[str, str, str]]:
    """One row per class: the class (its id, and its name when the name says more), the
    examples kept and the class size."""
    from scorebank.analysis import access

    totals = np.bincount(access.labels(access.open_store(store)), minlength=len(counts))
    rows = []
    for c, kept in counts.items():
        label = str(names[int(c)]) if int(c) < len(names) else c
        shown = c if label == c else f"{c} {plain(label)}"
        rows.append((shown, str(kept), str(int(totals[int(c)]))))
    return rows


def register(app: typer.Typer) -> None:
    app.command("select", cls=ScoreHelp)(select_command)
