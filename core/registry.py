"""A registry: named entries of one kind (scores, models, optimizers, data set kinds, ...).

Every place that used to be an if-chain over names is a :class:`Registry` instead; CLI help
texts and validation messages are generated from it, so adding an entry is the whole change::

    MODELS = Registry("model", "--model")

    @MODELS.register("mlp", help="two hidden layers (256, 128), ReLU")
    def _mlp(input_shape, num_classes, **options): ...

    MODELS.get("mlp")            # the entry; an unknown name raises InvalidArgumentError
    MODELS.choices()             # "mlp, cnn5 or resnet18"
    MODELS.help_text()           # "mlp: two hidden layers ...; cnn5: ..."

Names may also be matched by prefix (``imagefolder:PATH``): register with
``prefix=True`` and :meth:`Registry.lookup` splits ``"imagefolder:/data"`` into the entry and
its argument.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from scorebank.core.errors import InvalidArgumentError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered thing: its name, the object, a one-line help text and whether the name
    is a prefix followed by an argument (``name:ARG``)."""

    name: str
    value: T
    help: str = ""
    prefix: bool = False
    metavar: str = ""

    @property
    def shown(self) -> str:
        """The name as help texts show it (``imagefolder:PATH`` for prefix entries)."""
        return f"{self.name}:{self.metavar or 'ARG'}" if self.prefix else self.name


class Registry(Generic[T]):
    """Named entries of one ``kind`` selected by a CLI ``option`` (used in messages)."""

    def __init__(self, kind: str, option: str):
        self.kind, self.option = kind, option
        self._entries: dict[str, Entry[T]] = {}

    # ---------------------------------------------------------------- registering
    def add(self, name: str, value: T, *, help: str = "", prefix: bool = False, metavar: str = "") -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, value, help, prefix, metavar)
        return value

    def register(self, name: str, *, help: str = "", prefix: bool = False,
                 metavar: str = "") -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        def deco(value: T) -> T:
            return self.add(name, value, help=help, prefix=prefix, metavar=metavar)
        return deco

    # ---------------------------------------------------------------- reading
    def __contains__(self, name: object) -> bool:
        try:
            self.lookup(name)  # type: ignore[arg-type]
        except InvalidArgumentError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> tuple[Entry[T], ...]:
        return tuple(self._entries.values())

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def entry(self, name: str) -> Entry[T]:
        return self.lookup(name)[0]

    def get(self, name: str) -> T:
        """The registered object for ``name``; unknown names raise :class:`InvalidArgumentError`
        listing every accepted name."""
        return self.entry(name).value

    def lookup(self, text: str) -> tuple[Entry[T], str | None]:
        """``(entry, argument)``: ``argument`` is the part after ``NAME:`` of a prefix entry,
        else None."""
        if isinstance(text, str):
            entry = self._entries.get(text)
            if entry is not None and not entry.prefix:
                return entry, None
            head, sep, arg = text.partition(":")
            entry = self._entries.get(head)
            if sep and entry is not None and entry.prefix and arg:
                return entry, arg
        raise InvalidArgumentError(f"unknown {self.kind} {text!r}; {self.option} takes {self.choices()}")

    def choices(self) -> str:
        """``"a, b or c"``: every accepted name, prefix entries as ``name:ARG``."""
        shown = [e.shown for e in self._entries.values()]
        if len(shown) <= 1:
            return "".join(shown)
        return f"{', '.join(shown[:-1])} or {shown[-1]}"

    def help_text(self) -> str:
        """One sentence per entry, for a CLI option's help."""
        return "; ".join(f"{e.shown}: {e.help}" if e.help else e.shown for e in self._entries.values()) + "."

    def as_dict(self) -> dict[str, Any]:
        return {name: e.value for name, e in self._entries.items()}
