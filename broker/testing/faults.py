"""Fault injection: what a bad network or a stuck client would do to a running `Server`.

Kept out of the production API on purpose: a server has no method to cut or stall a client,
and these functions reach into its connections only for tests. `RunningBroker` and
`BrokerThread` expose the same operations as methods.
"""

from __future__ import annotations

import logging

from ..server import Server
from ..server.transport import Transport

__all__ = ["connections", "drop_client", "resume_client", "stall_client"]

log = logging.getLogger("broker.testing")


def connections(server: Server, name: str | None = None) -> list[Transport]:
    """The live connections, or those whose handshake gave `name`, oldest first."""
    found = [t for t in server.transports if name is None or t.adapter.name == name]
    return sorted(found, key=lambda transport: transport.client_id)


def drop_client(server: Server, name: str) -> int:
    """Cut every connection named `name` with no ERR, as a network failure would.

    For tests of reconnect logic; returns how many connections were cut.
    """
    cut = connections(server, name)
    for transport in cut:
        log.info("%r dropped on request", transport)
        transport.abort()
    return len(cut)


def stall_client(server: Server, name: str) -> int:
    """Stop writing to every client named `name`, so it becomes a slow consumer.

    Deliveries to it keep being queued, so the slow-consumer policy applies as it would to a
    client that stopped reading. `resume_client` undoes it. Returns the count.
    """
    stalled = connections(server, name)
    for transport in stalled:
        transport._stall()
    return len(stalled)


def resume_client(server: Server, name: str | None) -> int:
    """Undo `stall_client` (for every connection when `name` is None); returns the count."""
    resumed = connections(server, name)
    for transport in resumed:
        transport._resume()
    return len(resumed)
