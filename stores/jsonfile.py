"""Parsing JSON that comes from files (selection manifests, archive manifests, store
metadata): bad input is one specific error, never a traceback.

Files from elsewhere are untrusted: they may not be UTF-8, may not be JSON, or may nest
arrays and objects deep enough to exhaust Python's recursion (the parser's, or later code's
walking them).  :func:`loads` refuses all three as :class:`InvalidJSONError`, a bad argument
(CLI exit status 2)."""

from __future__ import annotations

import json
from typing import Any

from scorebank.core.errors import InvalidArgumentError

#: Deepest nesting of arrays/objects accepted; scorebank's own files nest at most 6 levels.
MAX_DEPTH = 64


class InvalidJSONError(InvalidArgumentError):
    """A file that should hold JSON is not UTF-8 text, not valid JSON, or nested deeper
    than :data:`MAX_DEPTH`."""


def loads(data: bytes | str, what: str) -> Any:
    """The JSON document in ``data`` (bytes must be UTF-8); ``what`` names the file in the
    :class:`InvalidJSONError` message."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJSONError(f"{what} is not UTF-8 text (byte {exc.start} is "
                                   f"{data[exc.start:exc.start + 1]!r}); save it as UTF-8 JSON") from None
    try:
        doc = json.loads(data)
    except RecursionError:
        doc = None
    except ValueError as exc:
        raise InvalidJSONError(f"{what} is not valid JSON ({exc})") from None
    else:
        if _depth_within(doc, MAX_DEPTH):
            return doc
    raise InvalidJSONError(f"{what} nests arrays/objects more than {MAX_DEPTH} levels deep; "
                           "not a file scorebank wrote")


def _depth_within(doc: Any, limit: int) -> bool:
    """True when ``doc`` nests at most ``limit`` containers deep (iterative: no recursion)."""
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return False
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return True
