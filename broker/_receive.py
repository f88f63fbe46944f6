"""A lean receive for the one reader of a plain TCP socket under Trio, for broker and client.

A read that answers one small message (a request's hop through the broker, a reply reaching
its requester) spends much of its time in the receive itself: trio's ``receive_some`` is about
thirty Python calls deep (a conflict detector, an error translator, the socket's
try-then-wait helper), anyio's stream adds its own, and after a read that emptied the socket
each tries the socket once more, failing with EAGAIN (a raised exception) before it waits.
`lean_receive` keeps what a reader relies on (every call a checkpoint, bytes never lost to a
cancellation, closed told apart from broken) and drops the rest. Trio is imported only when one
is made, so an asyncio client never loads it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = ["lean_receive"]


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


def lean_receive(
    sock: _HasFileno, *, closed: type[Exception], broken: type[Exception]
) -> Callable[[int], Awaitable[bytes]]:
    """A ``receive_some`` for `sock`'s one reader, under Trio on POSIX; b"" is EOF.

    After a read that returned less than it asked (the socket was emptied), the next call waits
    for readability before it reads, rather than reading, failing with EAGAIN, then waiting:
    for a request answered in one read, one system call and one raised exception less. After a
    full read it reads at once, as trio does, since more is probably waiting.

    Raises `closed` once `sock` is closed (also when that happens while a call waits) and
    `broken`, from the `OSError`, when the connection failed. The function is not guarded
    against concurrent calls, as trio's streams are: it must have one caller at a time.
    """
    import trio

    read = os.read
    wait_readable = trio.lowlevel.wait_readable
    checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
    cancel_shielded_checkpoint = trio.lowlevel.cancel_shielded_checkpoint
    drained = False

    async def receive(max_bytes: int) -> bytes:
        nonlocal drained
        # Every call is a checkpoint, as trio's are: it waits, or it checks for cancellation
        # before reading and yields after (shielded, so bytes read are never dropped).
        try:
            if drained:
                if sock.fileno() < 0:  # closed: trio cannot wait on -1 (ValueError)
                    raise closed("this socket was already closed")
                await wait_readable(sock)
                waited = True
            else:
                await checkpoint_if_cancelled()
                waited = False
            while True:
                try:
                    data = read(sock.fileno(), max_bytes)  # fileno() is -1 once closed: EBADF
                except BlockingIOError:
                    await wait_readable(sock)
                    waited = True
                    continue
                break
        except trio.ClosedResourceError:  # closed by another task while this one waited
            raise closed("this socket was closed") from None
        except OSError as error:
            if error.errno == errno.EBADF:
                raise closed("this socket was already closed") from None
            raise broken(f"socket connection broken: {error}") from error
        if not waited:
            await cancel_shielded_checkpoint()
        drained = len(data) < max_bytes
        return data

    return receive
