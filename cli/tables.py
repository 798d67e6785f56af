"""Tables that fit an 80-column terminal: headers are never truncated ("comple…"), numbers
never wrap, and only the columns of names (groups, sources: often long, from files) fold.

Long headers are written over two lines (``"test\\nacc"``) rather than shortened, so each
column is as narrow as its values.  Cells that come from files go through
:func:`scorebank.cli.text.plain` before they reach a table."""

from __future__ import annotations

import math
from collections.abc import Iterable

from rich import box
from rich.table import Table


def compact_table(*headers: str, fold: Iterable[int] = (0,), min_fold: int = 12) -> Table:
    """A table with a simple head rule and no outer padding.  Every column is at least as
    wide as its header's longest line; the columns in ``fold`` (indices) fold long values
    over lines (at least ``min_fold`` wide), the others never wrap."""
    fold = set(fold)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for i, header in enumerate(headers):
        width = max(len(line) for line in header.split("\n"))
        if i in fold:
            table.add_column(header, overflow="fold", min_width=max(width, min_fold))
        else:
            table.add_column(header, no_wrap=True, min_width=width)
    return table


def pct(value: float | None, digits: int = 1) -> str:
    """``value`` (a fraction) in percent, or ``-`` when missing (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.{digits}f}"
