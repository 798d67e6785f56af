"""The ``scorebank`` command: a thin typer layer that parses, calls the library, prints.

Each command lives in its own module and is registered below; :class:`App` lists them in
the order a user meets them and tidies every command's help (see its docstring)."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from importlib import metadata

import typer
from typer import _click as click
from typer.core import TyperGroup

from scorebank.cli.common import fail
from scorebank.cli.options import resolve_late_help

#: ``scorebank --help`` lists the commands in this order (a user's first hour: score, look,
#: analyse, select and retrain, share); commands missing here follow in registration order.
COMMAND_ORDER = ("score", "info", "analyze", "select", "retrain", "prune-curve", "compress", "easy-hard",
                 "difficulty-accuracy", "holdout", "memorization", "run", "presets", "report", "export",
                 "inspect", "import", "merge", "import-dynamics", "bench", "analyze-bench")


class App(TyperGroup):
    """The root command group.  Beyond typer's: commands are listed in :data:`COMMAND_ORDER`;
    a command's help is finished when it is looked up (not while the root lists commands,
    so ``scorebank --help`` imports no registry): flags get no ``<bool>`` value placeholder,
    lines inside a paragraph are joined (the listing shows whole sentences) and registry
    lists (models, data sets, optimisers) are filled in."""

    _listing = False

    def make_context(self, info_name, args, parent=None, **extra):
        with _one_line_usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: typer.Context):
        with _one_line_usage_errors():
            return super().invoke(ctx)

    def list_commands(self, ctx: typer.Context) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n)))

    def get_command(self, ctx: typer.Context, cmd_name: str):
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _finish_help(command, ctx, late=not self._listing)
        return command

    def get_params(self, ctx: typer.Context):
        params = super().get_params(ctx)
        _plain_flags(params)
        return params

    def format_help(self, ctx: typer.Context, formatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


@contextlib.contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    """Usage errors (missing option, unknown option, bad value) in every command's style: one
    line, ``error: ...``, exit status 2 (instead of click's usage line, hint and box)."""
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise
    except click.exceptions.UsageError as exc:
        hint = f"; see '{exc.ctx.command_path} --help'" if exc.ctx is not None else ""
        fail(exc.format_message().rstrip(".") + hint, 2)


def _plain_flags(params) -> None:
    """Flags take no value: show no ``<bool>`` placeholder for them; arguments are named in
    capitals (``STORE``), as usage lines conventionally do."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
        elif p.param_type_name == "argument" and p.metavar is None:
            p.metavar = p.name.upper()


def _unwrap(text: str | None) -> str | None:
    """Join the lines of each paragraph (``\\b`` paragraphs, click's verbatim marker, stay)."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split()) for p in paragraphs)


def _finish_help(command, ctx: typer.Context, *, late: bool) -> None:
    command.help = _unwrap(command.help)
    help_option = command.get_help_option(ctx)
    _plain_flags([*command.params, *([help_option] if help_option is not None else [])])
    if late:
        for p in command.params:
            if getattr(p, "help", None):
                p.help = resolve_late_help(p.help)
    for sub in getattr(command, "commands", {}).values():
        _finish_help(sub, ctx, late=late)


def version() -> str:
    try:
        return metadata.version("scorebank")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"scorebank {version()}")
        raise typer.Exit(0)


app = typer.Typer(
    name="scorebank",
    cls=App,
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(ctx: typer.Context,
          show_version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                            help="Print scorebank's version and exit.")) -> None:
    """Record per-example training scores (margin, EL2N, loss, forgetting, GraNd) in Zarr stores, analyse
    them with Dask/xarray, select subsets and retrain on them.

    Start with 'scorebank score', then 'scorebank info scores.zarr'."""
    if ctx.invoked_subcommand is None:  # bare 'scorebank': the help, and success
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


# --- command registration: one line per command module -------------------------------
from scorebank.cli import analyze as _analyze  # noqa: E402
from scorebank.cli import archive as _archive  # noqa: E402
from scorebank.cli import bench as _bench  # noqa: E402
from scorebank.cli import easyhard as _easyhard  # noqa: E402
from scorebank.cli import holdout as _holdout  # noqa: E402
from scorebank.cli import import_dynamics as _import_dynamics  # noqa: E402
from scorebank.cli import info as _info  # noqa: E402
from scorebank.cli import report as _report  # noqa: E402
from scorebank.cli import retrain as _retrain  # noqa: E402
from scorebank.cli import run as _run  # noqa: E402
from scorebank.cli import score as _score  # noqa: E402
from scorebank.cli import select as _select  # noqa: E402

_score.register(app)
_info.register(app)
_bench.register(app)
_retrain.register(app)
_analyze.register(app)
_select.register(app)
_archive.register(app)
_easyhard.register(app)
_holdout.register(app)
_run.register(app)
_report.register(app)
_import_dynamics.register(app)
# --- end of command registration -------------------------------------------------------


def main() -> None:
    app()


if __name__ == "__main__":
    main()
