"""The reader's receive on a plain TCP socket: trio's ``receive_some``, with fewer steps.

The reader spends much of a small request's hop in its receive; `broker._receive.lean_receive`
says what it keeps of trio's and what it drops. TLS streams keep trio's (and
`broker.server.tls.batched_receive`).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import trio

from .._receive import lean_receive

__all__ = ["socket_receive"]


def socket_receive(stream: trio.abc.Stream) -> Callable[[int], Awaitable[bytes]] | None:
    """For a plain `trio.SocketStream` on POSIX, a ``receive_some`` for its one reader.

    Returns None for any other stream (use its ``receive_some``). Raises trio's
    `trio.ClosedResourceError` and `trio.BrokenResourceError`, as the stream's own does.
    """
    if type(stream) is not trio.SocketStream or os.name != "posix":
        return None
    return lean_receive(
        stream.socket, closed=trio.ClosedResourceError, broken=trio.BrokenResourceError
    )
