"""The server's side of authentication: the handshake's credential check, failure logs, and
applying a reloaded ``[auth]`` to the connections already open.

bcrypt takes about a quarter of a second per check by design, so a check runs in a worker
thread, at most `AUTH_THREADS` at once for the whole process: a flood of logins waits for a
thread under each connection's own handshake deadline, and neither the accept loop nor any
other client waits for it. Every failure is counted and handed to `Hub.auth_failed` (the one
place to watch them), and logged with the peer's address through the server's per-host rate
limit (`broker.peerlog`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Final, cast

import trio

from ..auth import Authenticator, AuthFailure, Credentials, Identity
from ..errors import ErrorCode
from ..permissions import ClientPermissions
from .tls import peer_certificate_names

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ..hub import Hub, Subscriber
    from .transport import Transport

__all__ = ["AUTH_FAILED_MESSAGE", "AUTH_THREADS", "apply_auth", "authenticate", "recheck"]

log = logging.getLogger("broker.server.security")

#: What a client is told, whatever was wrong with its credentials.
AUTH_FAILED_MESSAGE: Final = "authentication failed"
#: bcrypt checks running at once, process-wide; more wait for a thread (bounded by each
#: connection's handshake deadline).
AUTH_THREADS: Final = 2

_limiter: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("auth_limiter")


def _auth_limiter() -> trio.CapacityLimiter:
    try:
        return _limiter.get()
    except LookupError:
        limiter = trio.CapacityLimiter(AUTH_THREADS)
        _limiter.set(limiter)
        return limiter


async def authenticate(
    transport: Transport, auth: Authenticator, credentials: Credentials
) -> Identity | AuthFailure:
    """Check a new client's credentials (and its TLS certificate's names).

    Runs in the connection's own task, under its handshake deadline; a cancelled check
    leaves its thread to finish on its own, still holding its place in the limit.
    """
    names = peer_certificate_names(transport.stream)
    if names:
        credentials = dataclasses.replace(credentials, certificate_names=names)
    if auth.slow:
        result = await trio.to_thread.run_sync(
            auth.check, credentials, limiter=_auth_limiter(), abandon_on_cancel=True
        )
    else:
        result = auth.check(credentials)
    if isinstance(result, AuthFailure):
        transport.hub.auth_failed(transport.peer, result.reason)
        transport.peer_log.log(
            logging.WARNING,
            transport.peer,
            "authentication failed from %s: %s",
            transport.peer,
            result.reason,
        )
    return result


def recheck(
    auth: Authenticator | None, checked: Identity | AuthFailure | None
) -> Identity | AuthFailure | None:
    """A handshake's outcome under `auth`, which a reload put in place while it ran.

    A client that authenticated under the old rules keeps its identity only if the new ones
    still hold it (with their permissions); one that connected while auth was off must
    authenticate now, and cannot: it is refused.
    """
    if auth is None:
        return None
    if isinstance(checked, Identity):
        return auth.still_valid(checked) or AuthFailure("no longer valid after a reload")
    return checked or AuthFailure("authentication was turned on by a reload during the handshake")


def apply_auth(hub: Hub, transports: Iterable[Transport]) -> tuple[int, int]:
    """Hold every open connection to `hub.auth` (just replaced by a reload).

    A client whose identity no longer holds (user removed, password or token changed, auth
    turned on) is closed with ``auth_failed``; the others get their new permissions, and each
    subscription those refuse is removed with ``permission_denied`` (the connection stays).

    Returns:
        Connections closed, and subscriptions removed.
    """
    auth = hub.auth
    closed = removed = 0
    for transport in list(transports):
        if not transport.accepting or not transport.admitted:
            continue  # one still in its handshake is held to the new rules there
        adapter = cast("Subscriber", transport.adapter)
        identity = transport.identity
        if auth is None:
            transport.identity = None
            hub.apply_permissions(adapter, None)
            continue
        kept = auth.still_valid(identity) if identity is not None else None
        if kept is None:
            who = identity.name if identity is not None else "an unauthenticated client"
            log.info("%r: %s is no longer allowed after the reload", transport, who)
            transport.fail(ErrorCode.AUTH_FAILED, AUTH_FAILED_MESSAGE)
            closed += 1
            continue
        transport.identity = kept
        current = adapter.permissions
        if current is None:
            current = ClientPermissions(kept.permissions)
        else:
            current.replace(kept.permissions)
        for sub, refusal in hub.apply_permissions(adapter, current):
            removed += 1
            log.info("%r: subscription %r removed by the reload", transport, sub)
            transport.error(refusal.code, refusal.message, refusal.details)
    return closed, removed
