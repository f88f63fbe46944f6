"""How a client connects: the options of `connect`, their defaults and checks, broker URLs.

Every limit the client keeps is a named constant here, so the defaults are documented in one
place; `broker.sync` takes the same options.

This module is pure: it imports neither trio, anyio nor the rest of the client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeAlias
from urllib.parse import urlsplit

from ..config import DEFAULT_PORT
from ..errors import BrokerError, ConnectionClosed, ServerShuttingDown

__all__ = [
    "CLOSE_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_MAX_PENDING_BYTES",
    "DEFAULT_MAX_PINGS_OUTSTANDING",
    "DEFAULT_MAX_RECONNECT_DELAY",
    "DEFAULT_RECONNECT_BUFFER_SIZE",
    "DEFAULT_RECONNECT_DELAY",
    "DEFAULT_WRITE_BUFFER_SIZE",
    "parse_url",
]

KiB: Final = 1024
MiB: Final = 1024 * KiB

#: Messages one subscription queues for its consumer before dropping the newest.
DEFAULT_MAX_PENDING: Final = 65_536
#: Payload bytes one subscription queues before dropping the newest (a message always fits an
#: empty queue, so one large message is never refused outright).
DEFAULT_MAX_PENDING_BYTES: Final = 64 * MiB
#: Queued, unwritten bytes above which `Client.publish` waits for the writer (backpressure).
DEFAULT_WRITE_BUFFER_SIZE: Final = 1 * MiB
#: Encoded bytes of publishes kept while disconnected, sent after reconnecting.
DEFAULT_RECONNECT_BUFFER_SIZE: Final = 8 * MiB
#: First reconnection delay in seconds; doubles per failed attempt up to the maximum.
DEFAULT_RECONNECT_DELAY: Final = 0.1
DEFAULT_MAX_RECONNECT_DELAY: Final = 5.0
#: Seconds one connection attempt (TCP connect plus HELLO/WELCOME) may take.
DEFAULT_CONNECT_TIMEOUT: Final = 2.0
#: Unanswered PINGs after which the connection is given up as dead.
DEFAULT_MAX_PINGS_OUTSTANDING: Final = 2
#: Seconds a graceful close waits for queued frames to be written and the server to finish.
CLOSE_TIMEOUT: Final = 2.0

DisconnectedHook: TypeAlias = Callable[[ConnectionClosed], Awaitable[None] | None]
ReconnectedHook: TypeAlias = Callable[[], Awaitable[None] | None]
ShuttingDownHook: TypeAlias = Callable[[ServerShuttingDown], Awaitable[None] | None]
ErrorHook: TypeAlias = Callable[[BrokerError], Awaitable[None] | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Options:
    name: str | None
    echo: bool
    token: str | None
    reconnect: bool
    max_reconnect_attempts: int | None
    reconnect_delay: float
    max_reconnect_delay: float
    reconnect_buffer_size: int
    write_buffer_size: int
    connect_timeout: float
    ping_interval: float | None
    max_pings_outstanding: int
    on_disconnected: DisconnectedHook | None
    on_reconnected: ReconnectedHook | None
    on_shutting_down: ShuttingDownHook | None
    on_error: ErrorHook | None


def _require_positive_int(name: str, value: object) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _require_non_negative_int(name: str, value: object) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")


def parse_url(url: str) -> tuple[str, int]:
    """Split a broker address into host and port.

    Accepts ``tcp://host:port``, ``host:port`` and ``[::1]:port``; the port defaults to the
    server's (`broker.config.DEFAULT_PORT`).

    Raises:
        ValueError: Another scheme, no host, a bad port, or a path, query or user part.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}")
    parts = urlsplit(url if "://" in url else "tcp://" + url)
    if parts.scheme != "tcp":
        raise ValueError(f"broker URLs use the tcp scheme (tcp://host:port), got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"the port must be an int between 0 and 65535 in {url!r}") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"a broker URL needs a host, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"a broker URL is only tcp://host:port, got {url!r}")
    return host, DEFAULT_PORT if port is None else port
