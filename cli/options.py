"""Command-line options declared once and shared by several commands.

* :data:`CONFIG_OPTIONS`: one entry per :class:`~scorebank.core.config.ScoreConfig` field a
  command line can set (type, help, flag spelling).  ``score`` takes them with the defaults
  of :data:`~scorebank.core.config.DEFAULTS` (:func:`config_group`); commands that start
  from a store's configuration (``retrain``, ``prune-curve``, ``compress``, ``easy-hard``)
  take them with default None, "the store's" (:func:`override_group`).  Both spellings
  share one help text.
* :class:`OptionGroup` and :func:`with_groups`: a group of options a command receives as
  one ``dict`` parameter.  typer needs one function parameter per option, so the decorator
  replaces the group's parameter by the group's options in the command's signature
  (``inspect.Signature``) and gathers their values back into the dict.
* ``Annotated`` aliases (:data:`Device`, :data:`Quiet`, :data:`JsonOutput`, ...) for single
  options many commands share as they are.
* Help texts that list registry entries (models, data sets, optimisers) are written with a
  placeholder (:func:`registry_help`) and filled in by :func:`resolve_late_help` when a
  command is looked up (:class:`scorebank.cli.main.App`): the registries live in modules
  that import torch, which ``scorebank --help`` and ``scorebank info`` should not pay for.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from scorebank.core.config import DEFAULTS

# ----------------------------------------------------------------------------- registry help
#: placeholder name -> (module, attribute) of the registry whose entries it lists
REGISTRIES = {
    "datasets": ("scorebank.pipeline.datasets", "DATASETS"),
    "models": ("scorebank.pipeline.models", "MODELS"),
    "optimizers": ("scorebank.pipeline.robust", "OPTIMIZERS"),
    "label_noise_kinds": ("scorebank.pipeline.datasets", "LABEL_NOISE_KINDS"),
    "dynamics_formats": ("scorebank.pipeline.import_dynamics", "FORMATS"),
    "precision_modes": ("scorebank.pipeline.bench_precision", "MODES"),
}
_PLACEHOLDER = re.compile(r"<<(" + "|".join(REGISTRIES) + r")>>")


def registry_help(name: str) -> str:
    """A placeholder for the help text of registry ``name`` (a key of :data:`REGISTRIES`)."""
    if name not in REGISTRIES:
        raise KeyError(name)
    return f"<<{name}>>"


def describe(registry: Any) -> str:
    """One sentence listing a registry's entries: :meth:`Registry.help_text
    <scorebank.core.registry.Registry.help_text>`, or the names of a plain tuple."""
    help_text = getattr(registry, "help_text", None)
    return help_text() if callable(help_text) else ", ".join(registry) + "."


def resolve_late_help(text: str) -> str:
    """``text`` with every :func:`registry_help` placeholder replaced by its registry's help."""
    def fill(m: re.Match) -> str:
        module, attribute = REGISTRIES[m.group(1)]
        return describe(getattr(importlib.import_module(module), attribute))

    return _PLACEHOLDER.sub(fill, text)


# ----------------------------------------------------------------------------- configuration options
@dataclass(frozen=True)
class ConfigOption:
    """How the command line sets one ScoreConfig field."""

    type: Any
    help: str
    flag: str | None = None  # "--name/--no-name" for booleans


CONFIG_OPTIONS: dict[str, ConfigOption] = {
    "dataset": ConfigOption(str, "Data set: " + registry_help("datasets")),
    "data_dir": ConfigOption(Optional[Path], "Where torchvision data sets live or are downloaded to, and where decoded "
                                             "image folders are cached; default ~/.cache/scorebank/data or "
                                             "$SCOREBANK_DATA."),
    "download": ConfigOption(bool, "Download torchvision data sets on first use.", "--download/--no-download"),
    "limit": ConfigOption(Optional[int], "Class-stratified first-N subset of the training set (seed-independent)."),
    "label_noise": ConfigOption(float, "Fraction of examples whose labels are permuted among themselves before "
                                       "training (1.0 = random labels)."),
    "label_noise_seed": ConfigOption(int, "Seed choosing the corrupted examples (the same for every run)."),
    "label_noise_kind": ConfigOption(str, "How --label-noise corrupts labels: " + registry_help("label_noise_kinds")),
    "flip_map": ConfigOption(str, "--label-noise-kind flip: SOURCE:TARGET class pairs, e.g. 0:1,1:2,2:0."),
    "model": ConfigOption(str, "Model: " + registry_help("models")),
    "batchnorm": ConfigOption(bool, "cnn5: BatchNorm after each convolution.", "--batchnorm/--no-batchnorm"),
    "init_std": ConfigOption(Optional[float], "cnn5: normal initialisation with this std instead of PyTorch's "
                                              "default."),
    "width": ConfigOption(Optional[int], "Model width (mlp hidden units, cnn5 first convolution's channels, "
                                         "resnet18 first stage's channels)."),
    "optimizer": ConfigOption(str, "Gradient estimator: " + registry_help("optimizers")),
    "clip_count": ConfigOption(int, "winsorized: values clipped at each end, per coordinate."),
    "epochs": ConfigOption(int, "Training epochs."),
    "lr": ConfigOption(float, "Learning rate."),
    "momentum": ConfigOption(float, "SGD momentum."),
    "nesterov": ConfigOption(bool, "Nesterov momentum.", "--nesterov/--no-nesterov"),
    "weight_decay": ConfigOption(float, "L2 weight decay."),
    "batch_size": ConfigOption(int, "Minibatch size."),
    "schedule": ConfigOption(str, "Learning-rate schedule: constant or multistep:E1,E2,...:FACTOR (the rate is "
                                  "multiplied by FACTOR after each epoch E_i)."),
    "augment": ConfigOption(bool, "Pad-4 random crop and horizontal flip during training.", "--augment/--no-augment"),
    "eval_batch_size": ConfigOption(int, "Batch size of the clean pass, test evaluation and GraNd."),
    "cifar_stem": ConfigOption(bool, "torchvision ResNets: a 3x3 stride-1 first convolution and no max-pool, for "
                                     "32x32 inputs (other models refuse it).", "--cifar-stem/--no-cifar-stem"),
    "precision": ConfigOption(str, "Training precision: fp32, or bf16 (autocast for the training passes; the "
                                   "clean pass and every stored score are computed from float32 logits)."),
    "compile": ConfigOption(bool, "torch.compile the training forward (plain SGD; GPU).", "--compile/--no-compile"),
    "threshold_samples": ConfigOption(bool, "AUM threshold samples (Pleiss et al. 2020): N/(C+1) examples drawn with "
                                            "--label-noise-seed are moved to an extra, fake class C; the network gets "
                                            "C+1 outputs, and 'analyze STORE aum' flags examples whose AUM is below "
                                            "the 99th percentile of theirs.",
                                      "--threshold-samples/--no-threshold-samples"),
}

#: Fields a retrain on a store's examples may change (the rest define the examples and scores).
OVERRIDABLE = ("model", "batchnorm", "init_std", "width", "optimizer", "clip_count", "epochs", "lr", "momentum",
               "nesterov", "weight_decay", "batch_size", "schedule", "augment", "eval_batch_size", "data_dir",
               "download", "cifar_stem", "precision", "compile")


def config_option(name: str, *, default: Any = ..., store_default: bool = False) -> tuple[Any, Any]:
    """``(annotation, typer.Option)`` for ScoreConfig field ``name``: default from
    :data:`DEFAULTS` (``...``), ``default``, or None meaning the store's (``store_default``)."""
    spec = CONFIG_OPTIONS[name]
    decls = (spec.flag,) if spec.flag else ()
    if store_default:
        return Optional[spec.type], typer.Option(None, *decls, help=spec.help + " Default: the store's.")
    value = getattr(DEFAULTS, name) if default is ... else default
    return spec.type, typer.Option(value, *decls, help=spec.help)


# ----------------------------------------------------------------------------- groups
class OptionGroup:
    """Options a command receives as one dict (see :func:`with_groups`)."""

    def __init__(self, options: dict[str, tuple[Any, Any]]):
        self.options = options  # parameter name -> (annotation, typer.Option)

    def parameters(self) -> list[inspect.Parameter]:
        return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
                for name, (annotation, option) in self.options.items()]

    def gather(self, values: dict) -> dict:
        """Pop the group's values from a command's keyword arguments (paths become str)."""
        return {name: (str(v) if isinstance(v, Path) else v) for name in self.options
                for v in [values.pop(name)]}


def config_group(*names: str, **defaults: Any) -> OptionGroup:
    """ScoreConfig options ``names`` (default: all of :data:`CONFIG_OPTIONS`) with the
    defaults of :data:`DEFAULTS` unless given in ``defaults``."""
    return OptionGroup({n: config_option(n, default=defaults.get(n, ...)) for n in names or CONFIG_OPTIONS})


def override_group(*names: str) -> OptionGroup:
    """ScoreConfig options ``names`` (default: :data:`OVERRIDABLE`) defaulting to None, the store's
    value; :func:`given` keeps those the user set."""
    return OptionGroup({n: config_option(n, store_default=True) for n in names or OVERRIDABLE})


def given(values: dict) -> dict:
    """The values of an :func:`override_group` the user set (not None)."""
    return {k: v for k, v in values.items() if v is not None}


def with_groups(command: Callable) -> Callable:
    """Expand every parameter of ``command`` whose default is an :class:`OptionGroup` into
    the group's options (in place, so help lists them there); the command receives the
    group's values as one dict under the parameter's name."""
    signature = inspect.signature(command, eval_str=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, OptionGroup] = {}
    for p in signature.parameters.values():
        if isinstance(p.default, OptionGroup):
            groups[p.name] = p.default
            params.extend(p.default.parameters())
        else:
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    clash = {p.name for p in params if sum(q.name == p.name for q in params) > 1}
    if clash:
        raise TypeError(f"{command.__name__}: option(s) {sorted(clash)} declared twice")

    @functools.wraps(command)
    def expanded(**kwargs: Any) -> Any:
        for name, group in groups.items():
            kwargs[name] = group.gather(kwargs)
        return command(**kwargs)

    expanded.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    expanded.__annotations__ = {p.name: p.annotation for p in params}
    return expanded


# ----------------------------------------------------------------------------- single shared options
Device = Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
Seeds = Annotated[str, typer.Option(help="Seeds, e.g. 0-9 or 0,3,5-7: one run, a fresh network, each.")]
Workers = Annotated[Optional[int], typer.Option(
    help="Run every run as a Dask task on a LocalCluster of N processes (one thread each) on this machine.")]
Scheduler = Annotated[Optional[str], typer.Option(
    "--scheduler", help="Run every run as a Dask task on the cluster whose scheduler is at this address "
                        "(tcp://HOST:8786); start its workers with 'dask worker ADDRESS --nthreads 1'.")]
GpusPerRun = Annotated[int, typer.Option(
    help="GPUs each run asks of a Dask worker (worker resource GPU; with --scheduler start each worker with "
         "'--resources GPU=1' and its own CUDA_VISIBLE_DEVICES).")]
Budget = Annotated[str, typer.Option(help="steps: every epoch takes ceil(N_full / batch size) optimiser steps, as "
                                          "on the full data (Data Diet); epochs: an epoch is one pass over the "
                                          "subset.")]
