"""Fault injection: what a bad network or a stuck client would do to a running `Server`.

Kept out of the production API on purpose: a server has no method to cut or stall a client,
and these functions reach into its connections only for tests. `RunningBroker` and
`BrokerThread` expose the same operations as methods.

A client is found by the name it gave in HELLO. A name no live connection has raises
`LookupError` listing the names there are, so a misspelt name cannot let a test pass for the
wrong reason (it used to cut nothing and return 0).
"""

from __future__ import annotations

import logging

from ..server import Server
from ..server.transport import Transport

__all__ = ["connections", "drop_client", "live_names", "resume_client", "stall_client"]

log = logging.getLogger("broker.testing")


def connections(server: Server, name: str | None = None) -> list[Transport]:
    """The live connections, or those whose handshake gave `name`, oldest first."""
    found = [t for t in server.transports if name is None or t.adapter.name == name]
    return sorted(found, key=lambda transport: transport.client_id)


def drop_client(server: Server, name: str) -> int:
    """Cut every connection named `name` with no ERR, as a network failure would.

    For tests of reconnect logic; `broker.testing.RunningBroker.wait_for_client` then waits
    for the client to be back. Returns how many connections were cut (at least one).

    Raises:
        LookupError: No connection is named `name` (a misspelt name, or a client that has not
            connected yet or is reconnecting); the message lists the names there are.
    """
    cut = _named(server, name)
    for transport in cut:
        log.info("%r dropped on request", transport)
        transport.abort()
    return len(cut)


def stall_client(server: Server, name: str) -> int:
    """Stop writing to every client named `name`, so it becomes a slow consumer.

    Deliveries to it keep being queued, so the slow-consumer policy applies as it would to a
    client that stopped reading. `resume_client` undoes it. Returns the count (at least one).

    Raises:
        LookupError: As `drop_client`.
    """
    stalled = _named(server, name)
    for transport in stalled:
        transport._stall()
    return len(stalled)


def resume_client(server: Server, name: str | None) -> int:
    """Undo `stall_client`; returns the count.

    With `name` None, every connection is resumed and there may be none.

    Raises:
        LookupError: `name` is given and, as in `drop_client`, no connection has it.
    """
    # Closing connections too: one the policy is cutting still writes its last frames.
    resumed = connections(server) if name is None else _named(server, name, closing=True)
    for transport in resumed:
        transport._resume()
    return len(resumed)


def live_names(server: Server) -> list[str]:
    """The names of the connections that are neither closing nor cut, oldest first."""
    return [t.adapter.name for t in connections(server) if t.accepting]


def _named(server: Server, name: str, *, closing: bool = False) -> list[Transport]:
    """The connections named `name` (only those not closing, unless `closing`); refuse a name
    that has none.

    A connection already cut or closing is left out by default, so a second `drop_client` right
    after the first finds nothing rather than the one it cut (the client is not back yet).
    """
    found = [t for t in connections(server, name) if closing or t.accepting]
    if not found:
        names = ", ".join(repr(n) for n in dict.fromkeys(live_names(server))) or "none"
        raise LookupError(
            f"no live client named {name!r} (live clients: {names}); a client "
            "that is reconnecting is not live yet: wait_for_client(name) waits for it"
        )
    return found
