"""The reader's receive on a plain TCP socket: trio's ``receive_some``, with fewer steps.

A broker's reader spends most of a small request's hop in its receive, and trio's
``SocketStream.receive_some`` is about thirty Python calls deep (a conflict detector, an error
translator, the socket's sync-then-wait helper) and, after a read that emptied the socket,
always tries the socket once more and fails with EAGAIN before it waits. `socket_receive`
keeps what the reader relies on (every call a checkpoint, data never lost to a cancellation,
closed and broken told apart as trio does) and drops the rest.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable

import trio

__all__ = ["socket_receive"]


def socket_receive(stream: trio.abc.Stream) -> Callable[[int], Awaitable[bytes]] | None:
    """For a plain `trio.SocketStream` on POSIX, a ``receive_some`` for its one reader.

    Returns None for any other stream (use its ``receive_some``). After a read that returned
    less than it asked (the socket was emptied), the next call waits for readability before it
    reads, rather than reading, failing with EAGAIN, then waiting: for a request the reader
    answers in one read, that is one system call and one raised exception less per hop. After
    a full read it reads at once, as trio does, since more is probably waiting.

    The returned function must be the only reader of the stream; it is not guarded against
    concurrent calls as ``receive_some`` is.
    """
    if type(stream) is not trio.SocketStream or os.name != "posix":
        return None
    sock = stream.socket
    read = os.read
    wait_readable = trio.lowlevel.wait_readable
    checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
    cancel_shielded_checkpoint = trio.lowlevel.cancel_shielded_checkpoint
    drained = False

    async def receive(max_bytes: int) -> bytes:
        nonlocal drained
        # Every call is a checkpoint, as trio's are: it waits, or it checks for cancellation
        # before reading and yields after (shielded, so bytes read are never dropped).
        if drained:
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
            except OSError as error:
                if error.errno == errno.EBADF:
                    raise trio.ClosedResourceError("this socket was already closed") from None
                raise trio.BrokenResourceError(f"socket connection broken: {error}") from error
            break
        if not waited:
            await cancel_shielded_checkpoint()
        drained = len(data) < max_bytes
        return data

    return receive
