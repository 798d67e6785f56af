"""Every ``scorebank ...`` command line shown in README.md parses as written: its commands and
options exist, values have the right types, required options are there, and no removed
spelling (a hidden option kept only to refuse it, e.g. prune-curve's ``--fractions``) is
used.  Nothing is run."""

import shlex
from pathlib import Path

import pytest
import typer

from scorebank.cli.main import app

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands() -> list[str]:
    """The README's command lines (indented code) starting with ``scorebank``, continuation
    lines joined."""
    lines = README.read_text(encoding="utf-8").splitlines()
    commands, i = [], 0
    while i < len(lines):
        line = lines[i].strip()
        if lines[i].startswith("    scorebank "):
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1] + " " + lines[i].strip()
            commands.append(line)
        i += 1
    return commands


def parse(args: list[str]) -> None:
    """Parse ``args`` down the command tree as ``scorebank`` would, without invoking anything;
    fail on a removed (hidden) option."""
    command, name, ctx = typer.main.get_command(app), "scorebank", None
    while True:
        ctx = command.make_context(name, list(args), parent=ctx)
        removed = ["/".join(p.opts) for p in command.params if p.hidden and ctx.params.get(p.name) is not None]
        assert not removed, f"removed option(s) {removed} in: {' '.join(args)}"
        if not hasattr(command, "commands"):
            return
        name, command, args = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])


def test_the_readme_shows_commands():
    commands = readme_commands()
    assert len(commands) >= 20
    assert {shlex.split(c, comments=True)[1] for c in commands} >= {"score", "info", "analyze", "select", "retrain"}


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_parses_as_written(line):
    parse(shlex.split(line, comments=True)[1:])
