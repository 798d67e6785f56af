"""Printing text that comes from files (archives, stores, manifests) as plain text.

Strings read from a store or archive are untrusted: they may hold Rich markup
(``[link=...]``), ANSI escape sequences (colours, clear-screen, OSC-8 hyperlinks) or other
control characters.  :func:`plain` makes any such string safe to print: control characters
(C0 except tab/newline, DEL, C1) are shown as ``\\xNN`` escapes and Rich markup is escaped,
so the terminal shows exactly the characters of the file.  Use it for every value from a
file that reaches ``console.print`` or a Rich table cell; :func:`visible` (control
characters only) is for :class:`rich.text.Text`, which never interprets markup."""

from __future__ import annotations

import re

from rich.markup import escape

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(value: object) -> str:
    """``value`` as a string with every control character shown as a ``\\xNN`` escape."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def plain(value: object) -> str:
    """``value`` as a string safe to hand to Rich: control characters escaped as ``\\xNN``
    and Rich markup escaped."""
    return escape(visible(value))
