"""Client-supplied values, shown safely in error frames and log lines.

Any value a client sends can be a megabyte long or nested a thousand deep. `brief` shows it in
at most `BRIEF_LIMIT` characters (about), never copies more of it than it shows, and never
recurses past a few levels, so an error about a bad value stays small enough to send in an ERR
frame and to log, and costs microseconds, not a copy of the whole value.

Pure: no trio, anyio or socket.
"""

from __future__ import annotations

import reprlib
from typing import Any, Final

__all__ = ["BRIEF_LIMIT", "brief"]

#: About the most characters `brief` shows of one value (a str, bytes or number).
BRIEF_LIMIT: Final = 200
#: The most characters `brief` returns of a container of values, each cut to the limit above
#: (eight of eight of eight of them would otherwise run to 100 KB), before its "...".
_MOST: Final = 2 * BRIEF_LIMIT


class _Brief(reprlib.Repr):
    """reprlib, plus bytes and bytearray cut before they are turned into text."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = BRIEF_LIMIT
        self.maxother = BRIEF_LIMIT
        self.maxlong = 60
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 8

    def repr_bytes(self, value: bytes, level: int) -> str:
        return self._cut(value)

    def repr_bytearray(self, value: bytearray, level: int) -> str:
        return self._cut(value)

    def _cut(self, value: bytes | bytearray) -> str:
        limit = self.maxstring // 4  # an escaped byte shows as up to 4 characters
        if len(value) <= limit:
            return repr(value)
        return f"{bytes(value[:limit])!r}... ({len(value)} bytes)"


_BRIEF: Final = _Brief()


def brief(value: Any) -> str:
    """`repr(value)`, bounded in length and depth; a str is shown with its length if cut."""
    text = _BRIEF.repr(value)
    if isinstance(value, str) and len(value) > BRIEF_LIMIT:
        return f"{text} ({len(value)} characters)"
    if len(text) > _MOST:
        return f"{text[:_MOST]}..."
    return text
