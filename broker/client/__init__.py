"""The async client: one connection to a broker, kept alive across restarts, on Trio or asyncio.

This module only re-exports the public names. The package, one thing per module:

- `broker.client.client`: `Client` (publish, request, subscribe, flush, drain, aclose) and
  `connect`.
- `broker.client.subscription`: `Subscription` and `Message`.
- `broker.client.connection`: the link to the broker: connect and handshake, reader, writer,
  pinger, reconnection with backoff.
- `broker.client.limits`: the server's limits from WELCOME, and the checks every publish passes
  (shared with `broker.sync`).
- `broker.client.options`: the options of `connect`, their defaults and checks, `parse_url`.
- `broker.client.deadlines`: how a call's ``timeout`` and the caller's cancel scopes bound it.
- `broker.client.timer`: the one timer that bounds all of a client's requests.
- `broker.client.streams`: the plain TCP streams the client reads (asyncio's own; a lean
  receive under Trio).
"""

from __future__ import annotations

from .client import Client, connect
from .options import (
    CLOSE_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_FLUSH_TIMEOUT,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_MAX_PINGS_OUTSTANDING,
    DEFAULT_MAX_RECONNECT_DELAY,
    DEFAULT_NEXT_TIMEOUT,
    DEFAULT_RECONNECT_BUFFER_SIZE,
    DEFAULT_RECONNECT_DELAY,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_URL,
    DEFAULT_WRITE_BUFFER_SIZE,
    URL_ENV,
    parse_url,
)
from .subscription import Message, Subscription

__all__ = [
    "CLOSE_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_FLUSH_TIMEOUT",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_MAX_PENDING_BYTES",
    "DEFAULT_MAX_PINGS_OUTSTANDING",
    "DEFAULT_MAX_RECONNECT_DELAY",
    "DEFAULT_NEXT_TIMEOUT",
    "DEFAULT_RECONNECT_BUFFER_SIZE",
    "DEFAULT_RECONNECT_DELAY",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_URL",
    "DEFAULT_WRITE_BUFFER_SIZE",
    "URL_ENV",
    "Client",
    "Message",
    "Subscription",
    "connect",
    "parse_url",
]
