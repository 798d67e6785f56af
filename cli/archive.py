"""``scorebank export | import | inspect | merge``: sharing score stores between labs.

See :mod:`scorebank.stores.archive` for the archive format and its safety checks and
:mod:`scorebank.stores.merge` for how runs from several sources are combined."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from scorebank.cli.common import console, err_console, handle_errors, print_json
from scorebank.cli.options import JsonOutput, Quiet
from scorebank.cli.text import plain


class _StageProgress:
    """A rich progress bar fed by the library's ``progress(stage, done, total)``
    callbacks; one bar per stage, started on the first call (after validation)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.progress = None
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.progress is None:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                                     transient=False)
            self.progress.start()
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)

    def __enter__(self) -> "_StageProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def export_command(
    store: str = typer.Argument(..., help="Store to export: a directory, an archive or a URL."),
    out: Path = typer.Argument(..., help="Archive to write; must end in .zip (convention: NAME.scorebank.zip)."),
    creator: Optional[str] = typer.Option(None, help="Who made the scores (lab, person), recorded in the archive."),
    license: Optional[str] = typer.Option(None, "--license", help="License of the scores, e.g. CC-BY-4.0."),
    include_checkpoints: bool = typer.Option(False, "--include-checkpoints",
                                             help="Also pack checkpoints/run-<seed>.pt (local store directories only)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing scorebank archive at OUT."),
    quiet: Quiet = False,
) -> None:
    """Write a store as one self-contained, read-optimised .zip archive to share.

    The archive opens in place with xr.open_zarr(zarr.storage.ZipStore(OUT, mode="r")) and
    with every scorebank command that reads a store."""
    from scorebank.stores.archive import export_archive

    with handle_errors():
        with _StageProgress(not quiet) as bar:
            result = export_archive(store, out, creator=creator, license=license,
                                    include_checkpoints=include_checkpoints, overwrite=overwrite,
                                    progress=bar)
        console.print(f"wrote {plain(repr(str(result.path)))}: {len(result.manifest['runs'])} runs, "
                      f"{plain(result.manifest['n_examples'])} examples, {result.members} members, "
                      f"{_size(result.bytes)}", highlight=False, soft_wrap=True)
        console.print(f"sha256 {result.sha256}", highlight=False, soft_wrap=True)
        console.print("open without scorebank: "
                      f"xr.open_zarr(zarr.storage.ZipStore({plain(repr(str(result.path)))}, mode=\"r\"))",
                      highlight=False, soft_wrap=True)


def import_command(
    archive: str = typer.Argument(..., help="Archive to unpack: a .zip file or its URL."),
    dest: Path = typer.Argument(..., help="New store directory (must not exist, or be empty)."),
    quiet: Quiet = False,
) -> None:
    """Verify every member's checksum, then unpack an archive into a writable store."""
    from scorebank.stores.archive import import_archive

    with handle_errors():
        with _StageProgress(not quiet) as bar:
            path = import_archive(archive, dest, progress=bar)
        console.print(f"imported {plain(repr(archive))} into {plain(repr(str(path)))} (all checksums verified)",
                      highlight=False, soft_wrap=True)


def inspect_command(
    archive: str = typer.Argument(..., help="Archive (.zip file or URL) to describe."),
    verify: bool = typer.Option(False, "--verify", help="Also read every member and check its sha256."),
    json_output: JsonOutput = False,
) -> None:
    """Print an archive's metadata and per-run summary without loading score arrays."""
    from scorebank.stores.archive import open_archive
    from scorebank.stores.location import open_scores
    from scorebank.stores.summary import summarize

    with handle_errors():
        store = open_archive(archive)
        manifest = store.describe()  # the manifest without its member table, with counts and sizes
        if verify:
            n_members, n_bytes = store.verify()
        summary = summarize(open_scores(archive))
        if json_output:
            print_json({"archive": manifest, "verified": verify, "summary": dataclasses.asdict(summary)})
            return
        rows = [("format", f"{manifest['format']} v{manifest['format_version']} "
                           f"(store format {manifest.get('store_format')}, scorebank {manifest.get('scorebank_version')})"),
                ("created", manifest.get("created")),
                ("creator", manifest.get("creator") or "-"),
                ("license", manifest.get("license") or "-"),
                ("dataset", f"{manifest.get('dataset')} ({manifest.get('n_examples')} examples)"),
                ("fingerprint", manifest.get("dataset_fingerprint")),
                ("recorded", ", ".join(manifest["recorded"]["variables"])),
                ("size", f"{_size(manifest['file_bytes'])} ({manifest['file_bytes']} bytes, as export reports it)"),
                ("members", f"{manifest['n_members']}, {_size(manifest['member_bytes'])} stored"
                            + (f", checkpoints: {len(manifest['checkpoints'])}" if manifest.get("checkpoints") else "")),
                ("checksums", f"verified ({n_members} members, {_size(n_bytes)})" if verify
                 else "checked per member on read (--verify checks all now)")]
        for key, value in rows:  # one line each (soft wrap): a fingerprint stays copyable
            console.print(f"[bold]{key:>11}[/]  {plain(value)}", highlight=False, soft_wrap=True)
        from scorebank.cli.info import print_summary

        print_summary(archive, summary)


def merge_command(
    stores: list[str] = typer.Argument(..., help="Two or more stores, archives or URLs, in order."),
    out: Path = typer.Option(..., "--out", help="New store directory to write."),
    allow_duplicates: bool = typer.Option(False, "--allow-duplicates",
                                          help="Keep runs that appear twice (same seed and configuration)."),
    quiet: Quiet = False,
) -> None:
    """Concatenate the runs of several stores of the same examples into one new store.

    Runs are concatenated along `run`, recording each run's source, creator and
    configuration hash."""
    from scorebank.stores.merge import merge_stores

    with handle_errors():
        with _StageProgress(not quiet) as bar:
            result = merge_stores(stores, out, allow_duplicates=allow_duplicates, progress=bar)
        renumbered = [r for r in result.runs if r["run"] != r["seed"]]
        console.print(f"merged {len(result.runs)} runs from {len(result.sources)} sources into "
                      f"{plain(repr(str(result.path)))}"
                      + ("; renumbered (run <- seed): "
                         + ", ".join(f"{r['run']} <- {r['seed']} ({plain(r['source'])})" for r in renumbered)
                         if renumbered else ""), highlight=False, soft_wrap=True)
        from scorebank.cli.info import print_summary

        print_summary(result.path)


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
    app.command("import")(import_command)
    app.command("inspect")(inspect_command)
    app.command("merge")(merge_command)
