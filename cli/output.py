"""One output path for the reading commands (every ``scorebank analyze`` subcommand and
``select``): a command builds one JSON document and the tables that show it, and
:func:`emit` draws the ``--plot`` figure, then prints either the document (``--json``) or
the tables, fitted to the terminal, and says where the figure went.

Tables are :class:`Grid` objects (headers, rows of strings, title, caption) rendered at the
console's width when printed: headers wrap between words and are never cut short
("presenta…"); when a table is wider than the terminal its columns get their widest words'
width first and the rest of the room in proportion to what they lack.  Cells that come from
files (class names, manifest names) must go through :func:`scorebank.cli.text.plain`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table
from rich.text import Text

from scorebank.cli.common import console, print_json
from scorebank.cli.text import plain

#: Rows of per-epoch tables shown without --all-epochs.
MAX_ROWS = 15


# ------------------------------------------------------------------------------ values
def fmt(v: Any, digits: int = 4) -> str:
    """A number for a table cell: ``-`` for missing (None, NaN), ``inf``/``-inf``, integers
    as they are, floats with ``digits`` significant digits."""
    if v is None:
        return "-"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    v = float(v)
    if math.isnan(v):
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars and arrays to Python, tuples to lists, NaN to null and
    infinities to the strings ``"inf"`` / ``"-inf"``."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    return obj


def thin(n: int, keep_all: bool, what: str = "epochs") -> tuple[np.ndarray, str | None]:
    """Positions of the rows shown out of ``n`` (at most :data:`MAX_ROWS`, evenly spaced,
    first and last included, unless ``keep_all``) and a caption saying what was left out
    (None when nothing was)."""
    if keep_all or n <= MAX_ROWS:
        return np.arange(n), None
    shown = np.unique(np.linspace(0, n - 1, MAX_ROWS).round().astype(int))
    return shown, f"{shown.size} of {n} {what} shown, evenly spaced; --all-epochs shows every one"


# ------------------------------------------------------------------------------ tables
def _width(text: str) -> int:
    return max((Text.from_markup(line).cell_len for line in text.split("\n")), default=0)


def _longest_word(text: str) -> int:
    return max((Text.from_markup(w).cell_len for w in text.split()), default=0)


@dataclass
class Grid:
    """A table to print: ``headers``, ``rows`` (strings, Rich markup: escape file text with
    :func:`plain`), an optional ``title`` and ``caption``."""

    headers: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    title: str | None = None
    caption: str | None = None

    def add(self, *cells: str) -> None:
        self.rows.append(cells)

    def layout(self, width: int) -> tuple[list[int] | None, bool]:
        """``(widths, compact)`` that fit ``width`` terminal columns: the column content
        widths (None: the natural widths fit, or not even the cells fit and Rich folds them
        where it must) and whether the table drops its outer edge and edge padding (4
        columns) because the values need the room."""
        cols = list(zip(self.headers, *self.rows)) if self.rows else [(h,) for h in self.headers]
        natural = [max(_width(c) for c in col) for col in cols]
        values = [max([1] + [_width(c) for c in col[1:]]) for col in cols]  # cells never fold...
        least = [max(_longest_word(col[0]), v) for col, v in zip(cols, values)]  # ...nor header words
        room = width - (3 * len(cols) + 1)  # a border and two padding spaces per column
        compact = sum(values) > room
        if compact:
            room += 4
        if sum(natural) <= room or sum(values) > room:
            return None, compact
        if sum(least) > room:  # too narrow for whole header words: fold headers, never numbers
            least = values
        out, spare = list(least), room - sum(least)
        lacking = [i for i in range(len(cols)) if natural[i] > least[i]]
        while spare > 0 and lacking:  # share the room out, the least-lacking first
            share = max(1, spare // len(lacking))
            for i in sorted(lacking, key=lambda j: natural[j] - out[j]):
                give = min(share, natural[i] - out[i], spare)
                out[i] += give
                spare -= give
            lacking = [i for i in lacking if natural[i] > out[i]]
        return out, compact

    def table(self, width: int) -> Table:
        widths, compact = self.layout(width)
        table = Table(title=self.title, caption=self.caption, show_edge=not compact, pad_edge=not compact)
        for i, header in enumerate(self.headers):
            table.add_column(header, overflow="fold", width=None if widths is None else widths[i])
        for row in self.rows:
            table.add_row(*row)
        return table


# ------------------------------------------------------------------------------ the output path
@dataclass(frozen=True)
class Figure:
    """A ``--plot`` request: where, and the function drawing the figure there."""

    path: Path | None
    draw: Callable[[Path], None]


def emit(doc: dict, tables: Iterable[Grid | str], *, json_output: bool, figure: Figure | None = None) -> None:
    """Draw ``figure`` (when a path was given), then print ``doc`` as JSON with
    ``json_output``, else the grids and lines of ``tables`` (lines are Rich markup; a
    generator is only run here, so tables cost nothing with ``--json``) followed by where
    the figure was written."""
    drawn = figure is not None and figure.path is not None
    if drawn:
        figure.draw(figure.path)
    if json_output:
        print_json(clean(doc))
        return
    for item in tables:
        if isinstance(item, Grid):
            console.print(item.table(console.width))
        else:
            console.print(item, highlight=False)
    if drawn:
        console.print(f"figure written to [bold]{plain(figure.path)}[/]", highlight=False)
