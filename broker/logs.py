"""Where the broker's log records go when it runs as a program: stderr, as text or JSON lines.

Library code only ever calls ``logging.getLogger("broker.<module>")``; this module is for the
program's entry point (the CLI), which decides once how records look. An application that embeds
the broker configures logging its own way and never calls this.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal

from broker.config import LOG_LEVELS

__all__ = ["TEXT_FORMAT", "JsonFormatter", "TextFormatter", "configure_logging"]

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller passed with ``extra=``, in the order given."""
    return {key: value for key, value in record.__dict__.items() if key not in _RECORD_ATTRIBUTES}


def _text_value(value: object) -> str:
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)  # true, 3, 0.5, null: as in the JSON format
    if isinstance(value, list | tuple):
        return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)
    text = str(value)
    if text and not any(char.isspace() or char in '"=' for char in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _key_values(fields: Mapping[Any, object]) -> Iterator[str]:
    for key, value in fields.items():
        if isinstance(value, Mapping):
            yield from _key_values(value)
        else:
            yield f"{key}={_text_value(value)}"


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT`, then `` | `` and every field passed with ``extra=`` as ``key=value``.

    So a record that carries its data as fields (the statistics when the broker stops) reads as
    well in text as it does in JSON, where `JsonFormatter` makes them keys of the object. A
    mapping stands for its items (``extra={"stats": {"messages_in": 3}}`` gives
    ``messages_in=3``); a value is written bare unless it holds a space, ``"`` or ``=``, then in
    JSON quotes; a list as compact JSON. The bar keeps the fields apart from the message
    (``broker 4f2a stopped | connections=0``, not "stopped connections").
    """

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        # formatMessage, not format: the fields stay on the message's line, above a traceback.
        line = super().formatMessage(record)
        fields = " ".join(_key_values(_fields(record)))
        return f"{line} | {fields}" if fields else line


class JsonFormatter(logging.Formatter):
    """Format each record as one JSON object on one line, for log collectors.

    Keys: ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``message``, then every
    field passed with ``extra=`` (values JSON cannot encode are written with `str`), then
    ``exc_info``/``stack_info`` as text when present. An extra field named like one of the fixed
    keys is dropped rather than allowed to overwrite it, so a collector can rely on them.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler[Any]):
    """A handler that writes to whatever `sys.stderr` is at the time of each record.

    Holding the stream from set-up time would keep writing to a stream that pytest's capture or
    typer's CliRunner has since replaced and closed.
    """

    def emit(self, record: logging.LogRecord) -> None:
        # emit runs under the handler's lock, so swapping the stream here is safe.
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: str, fmt: Literal["text", "json"]) -> None:
    """Send the ``broker`` logger tree to stderr at `level`, as text or JSON lines.

    Idempotent: calling it again replaces the handler it installed before instead of adding a
    second one (which would print every record twice). Records still propagate to the root
    logger, so a handler the host application or pytest's caplog put there keeps working; the
    program itself installs none at the root, so nothing is printed twice.

    Args:
        level: One of ``debug``, ``info``, ``warning``, ``error``, ``critical``, any case.
        fmt: ``"text"`` (see `TextFormatter`) or ``"json"`` (see `JsonFormatter`).

    Raises:
        ValueError: `level` or `fmt` is not one of the names above.
    """
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    elif fmt == "text":
        formatter = TextFormatter()
    else:
        raise ValueError(f"log format must be 'text' or 'json', got {fmt!r}")
    logger = logging.getLogger("broker")
    for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
