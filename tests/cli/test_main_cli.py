"""The ``scorebank`` command itself: help, order, version, defaults and shared options."""

import dataclasses
import re
import subprocess
import sys
from importlib import metadata

import pytest
import typer
from typer.testing import CliRunner

from scorebank.cli.main import COMMAND_ORDER, app
from scorebank.cli.options import CONFIG_OPTIONS, OVERRIDABLE, OptionGroup, config_option, with_groups
from scorebank.core.config import DEFAULTS, ScoreConfig

runner = CliRunner()
WIDE = {"COLUMNS": "400"}


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def click_command(*path):
    """The click command at ``path`` as the root group hands it out (help finished)."""
    group = typer.main.get_command(app)
    ctx = typer.Context(group)
    command = group
    for name in path:
        command = command.get_command(ctx, name)
    return command, ctx


def all_commands():
    group, ctx = click_command()
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield (name,), command
        for sub in getattr(command, "commands", {}):
            yield (name, sub), command.commands[sub]


def test_bare_scorebank_prints_help_and_succeeds():
    r = invoke()
    assert r.exit_code == 0, r.output
    assert "Usage: scorebank" in r.output and "score" in r.output and "--version" in r.output


def test_version():
    r = invoke("--version")
    assert r.exit_code == 0
    assert r.output.strip() == f"scorebank {metadata.version('scorebank')}"


def test_commands_are_listed_in_the_order_a_user_meets_them():
    r = invoke("--help", env=WIDE)
    assert r.exit_code == 0
    listed = [m.group(1) for m in re.finditer(r"^│ ([a-z-]+)\s{2,}", r.output, re.M)
              if m.group(1) in {n for (n,), _ in ((p, c) for p, c in all_commands() if len(p) == 1)}]
    known = [n for n in COMMAND_ORDER if n in listed]
    assert listed[:len(known)] == known
    assert listed[:4] == ["score", "info", "analyze", "select"]


def test_flags_show_no_value_placeholder():
    for path, _ in [((), None), *all_commands()]:
        r = invoke(*path, "--help", env=WIDE)
        assert r.exit_code == 0, (path, r.output)
        assert "<bool>" not in r.output, path
    r = invoke("score", "--help", env=WIDE)
    assert re.search(r"--augment\s+--no-augment\s+Pad-4", r.output)


def test_listing_shows_whole_sentences():
    r = invoke("--help", env=WIDE)
    rows = {m.group(1): m.group(2).strip() for m in re.finditer(r"^│ ([a-z-]+)\s{2,}(.*?)\s*│$", r.output, re.M)}
    for path, command in all_commands():
        if len(path) == 1:
            assert rows[path[0]].endswith("."), (path, rows[path[0]])
        first = (command.help or "").split("\n\n")[0]
        assert "\n" not in first and first.rstrip().endswith("."), (path, first)


def test_help_lists_registry_entries():
    from scorebank.pipeline.datasets import DATASETS
    from scorebank.pipeline.models import MODELS
    from scorebank.pipeline.robust import OPTIMIZERS

    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", invoke("score", "--help", env=WIDE).output).split())
    for registry in (MODELS, DATASETS, OPTIMIZERS):
        for name in registry:
            assert name in text
        help_text = getattr(registry, "help_text", None)
        if callable(help_text):
            assert " ".join(help_text().split()) in text
    assert "<<" not in text


def test_listing_commands_imports_no_registry():
    """``scorebank --help`` and ``info --help`` do not import torch (the registries' modules)."""
    code = ("import sys; from typer.testing import CliRunner; from scorebank.cli.main import app; "
            "r1 = CliRunner().invoke(app, ['--help']); r2 = CliRunner().invoke(app, ['info', '--help']); "
            "assert r1.exit_code == r2.exit_code == 0; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_score_defaults_are_the_configuration_defaults():
    command, _ = click_command("score")
    params = {p.name: p for p in command.params}
    for name in CONFIG_OPTIONS:
        assert params[name].default == getattr(DEFAULTS, name), name
    assert DEFAULTS == ScoreConfig()


@pytest.mark.parametrize("path", [("retrain",), ("prune-curve",)])
def test_retrain_commands_share_the_store_default_options(path):
    command, _ = click_command(*path)
    params = {p.name: p for p in command.params}
    for name in OVERRIDABLE:
        assert params[name].default is None, name
        assert params[name].help.endswith("Default: the store's."), name
    score, _ = click_command("score")
    score_help = {p.name: p.help for p in score.params}
    for name in OVERRIDABLE:
        assert params[name].help == score_help[name] + " Default: the store's."


def test_with_groups_expands_and_gathers():
    group = OptionGroup({"lr": config_option("lr"), "epochs": config_option("epochs", default=3)})
    seen = {}

    @with_groups
    def command(name: str = typer.Option("x", help="A name."), training: dict = group,
                flag: bool = typer.Option(False, "--flag", help="A flag.")) -> None:
        """A command."""
        seen.update(name=name, training=training, flag=flag)

    toy = typer.Typer()
    toy.command()(command)
    toy.command("other")(lambda: None)
    r = CliRunner().invoke(toy, ["command", "--epochs", "5", "--flag"])
    assert r.exit_code == 0, r.output
    assert seen == {"name": "x", "training": {"lr": DEFAULTS.lr, "epochs": 5}, "flag": True}
    options = [p.name for p in typer.main.get_command(toy).commands["command"].params]
    assert options == ["name", "lr", "epochs", "flag"]


def test_with_groups_refuses_an_option_declared_twice():
    group = OptionGroup({"lr": config_option("lr")})

    with pytest.raises(TypeError, match="declared twice"):
        @with_groups
        def command(lr: float = typer.Option(1.0), training: dict = group) -> None:
            """A command."""


def test_every_config_option_is_a_config_field():
    fields = {f.name for f in dataclasses.fields(ScoreConfig)}
    assert set(CONFIG_OPTIONS) <= fields and set(OVERRIDABLE) <= set(CONFIG_OPTIONS)


@pytest.mark.parametrize("args, message", [
    (["compress", "s.zarr"], "error: Missing option '--run'; see 'scorebank compress --help'"),
    (["info"], "error: Missing argument 'STORE'; see 'scorebank info --help'"),
    (["scor"], "error: No such command 'scor'. Did you mean 'score'?; see 'scorebank --help'"),
    (["score", "--bogus"], "error: No such option: --bogus; see 'scorebank score --help'"),
    (["score", "--epochs", "x"], "error: Invalid value for '--epochs'"),
    (["--bogus"], "error: No such option: --bogus; see 'scorebank --help'"),
])
def test_usage_errors_are_one_line_in_the_common_style(args, message):
    r = invoke(*args, env=WIDE)
    assert r.exit_code == 2
    assert r.output.startswith(message) and len(r.output.strip().splitlines()) == 1, r.output
