"""What the built-in trainer takes from outside scorebank: user code named by an import path
(``--model package.module:factory``, ``--dataset package.module:function``), and the stores
it cannot rebuild because they were written by someone else's training loop.

* :class:`ImportPathRegistry`: a :class:`~scorebank.core.registry.Registry` whose names may
  also be import paths ``package.module:attribute``; such a name resolves to the one entry
  registered as the registry's import entry, with the whole path as its argument.
* :func:`load_callable`: import the module and return the named callable, checked against
  the call scorebank will make; every failure is one :class:`InvalidArgumentError` line.
* :func:`refuse_recorder_store`: stores written through :mod:`scorebank.pipeline.record`
  hold no model factory and no data set scorebank can load, so ``retrain``, ``prune-curve``,
  ``compress`` and ``easy-hard`` refuse them, saying so.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
from collections.abc import Callable
from typing import Any

from scorebank.core.errors import InvalidArgumentError
from scorebank.core.registry import Entry, Registry
from scorebank.stores import schema as S
from scorebank.stores.zarrstore import root_attrs

#: ``package.module:attribute`` (dotted names of Python identifiers on both sides).
IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")

#: The ``source`` a recorder store's configuration names (:data:`scorebank.pipeline.record.CONFIG_SOURCE`;
#: record imports the models, which import this module).
RECORDER_SOURCE = "recorder"


class ImportPathRegistry(Registry):
    """A registry whose names are its entries' names or, failing those, import paths
    ``package.module:attribute``, which resolve to the entry named ``import_entry`` (register
    it with ``prefix=True``; its help shows it as ``package.module:METAVAR``) with the whole
    path as the argument."""

    def __init__(self, kind: str, option: str, import_entry: str = "package.module"):
        super().__init__(kind, option)
        self.import_entry = import_entry

    def lookup(self, text: str) -> tuple[Entry, str | None]:
        try:
            entry, argument = super().lookup(text)
        except InvalidArgumentError:
            if not (isinstance(text, str) and IMPORT_PATH.fullmatch(text) and self.import_entry in self.names()):
                raise
            return self.entry_named(self.import_entry), text
        return (entry, text) if entry.name == self.import_entry else (entry, argument)

    def entry_named(self, name: str) -> Entry:
        return {e.name: e for e in self.entries()}[name]


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}".rstrip(": ")


def load_callable(path: str, option: str, call: tuple, expected: str) -> Callable:
    """The callable ``package.module:attribute`` names, after importing ``package.module``,
    checked to accept ``call`` (positional arguments) by its signature.  ``option`` and
    ``expected`` (the signature scorebank calls, e.g. ``(input_shape, num_classes, width)``)
    are quoted in the errors, each one :class:`InvalidArgumentError` line."""
    shown = f"{option} {path!r}"
    if not (isinstance(path, str) and IMPORT_PATH.fullmatch(path)):
        raise InvalidArgumentError(f"{shown} is no import path; give package.module:function")
    module_name, _, attribute = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # user code: anything may fail while it is imported
        raise InvalidArgumentError(f"{shown}: cannot import {module_name!r} ({_one_line(exc)}); put the folder "
                                   "holding it on PYTHONPATH or install it") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise InvalidArgumentError(f"{shown}: module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InvalidArgumentError(f"{shown}: {attribute!r} is a {type(obj).__name__}, not a function {expected}")
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # some builtins have none; the call itself will tell
        return obj
    try:
        signature.bind(*call)
    except TypeError as exc:
        raise InvalidArgumentError(f"{shown}: {attribute}{signature} cannot be called as {expected} ({exc}); "
                                   f"give a function {expected}") from None
    return obj


def call_user(fn: Callable, path: str, option: str, *args: Any) -> Any:
    """``fn(*args)``; an exception raised by the user's code becomes one
    :class:`InvalidArgumentError` line naming ``option`` and ``path``."""
    try:
        return fn(*args)
    except InvalidArgumentError:
        raise
    except Exception as exc:  # user code
        raise InvalidArgumentError(f"{option} {path!r} raised {_one_line(exc)}") from None


def refuse_recorder_store(store: str | os.PathLike, command: str) -> None:
    """Refuse (:class:`InvalidArgumentError`) to rebuild networks from a store written through
    the recorder API (its configuration's ``source`` is ``"recorder"``): it names neither a
    model scorebank can build nor a data set it can load."""
    try:
        text = root_attrs(store, (S.ATTR_CONFIG,))[S.ATTR_CONFIG]
        config = json.loads(text) if isinstance(text, str) else None
    except (OSError, ValueError):
        return  # not readable here: the command's own checks report it
    if isinstance(config, dict) and config.get("source") == RECORDER_SOURCE:
        raise InvalidArgumentError(
            f"{command}: {os.fspath(store)!r} was written through the recorder API (your own training loop), so it "
            "records no model factory and no data set scorebank can load and its networks cannot be rebuilt here; "
            "train on the examples `scorebank select` keeps in your own loop")
