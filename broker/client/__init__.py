"""The async client: one connection to a broker, kept alive across restarts, on Trio or asyncio.

This module only re-exports the public names; `broker.client.client` has the client and
`connect`.
"""

from __future__ import annotations

from .client import (
    CLOSE_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_MAX_PINGS_OUTSTANDING,
    DEFAULT_MAX_RECONNECT_DELAY,
    DEFAULT_RECONNECT_BUFFER_SIZE,
    DEFAULT_RECONNECT_DELAY,
    DEFAULT_WRITE_BUFFER_SIZE,
    Client,
    Message,
    Subscription,
    connect,
    parse_url,
)

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
    "Client",
    "Message",
    "Subscription",
    "connect",
    "parse_url",
]
