"""Where the broker's log records go when it runs as a program: stderr, as text or JSON lines.

Library code only ever calls ``logging.getLogger("broker.<module>")``; this module is for the
program's entry point (the CLI), which decides once how records look. An application that embeds
the broker configures logging its own way and never calls this.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final, Literal

from broker.config import LOG_LEVELS

__all__ = ["TEXT_FORMAT", "JsonFormatter", "configure_logging"]

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


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
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES:
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
        fmt: ``"text"`` (``TEXT_FORMAT``) or ``"json"`` (see `JsonFormatter`).

    Raises:
        ValueError: `level` or `fmt` is not one of the names above.
    """
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    elif fmt == "text":
        formatter = logging.Formatter(TEXT_FORMAT)
    else:
        raise ValueError(f"log format must be 'text' or 'json', got {fmt!r}")
    logger = logging.getLogger("broker")
    for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
