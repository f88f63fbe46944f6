"""A plain TCP stream for the client under asyncio that keeps reading, instead of anyio's.

anyio's asyncio socket stream stops the transport reading whenever no ``receive`` waits, and
starts it again at the next one: two ``epoll_ctl`` calls and a trip through anyio's event per
read. The client's reader always reads again at once, so on each side of a request that is
pure cost. `connect_tcp` opens the connection with asyncio's own ``create_connection`` and a
protocol that buffers what arrives, up to `READ_HIGH_WATER` bytes (then the transport pauses,
so a reader that falls behind is still bounded), and wakes the one reader; or, while that
reader waits with nothing buffered, hands the bytes to the client's decoder in the transport's
callback (`AsyncioSocketStream.feed_to`), a pass of the loop sooner. Under Trio, and
for TLS, the client keeps anyio's streams: Trio's stream has no such cost, and TLS stays with
anyio's well-tried handshake. Under Trio, over plain TCP, the reader receives through
`trio_receive` (`broker._receive.lean_receive`) rather than anyio's and Trio's layers.

The stream speaks anyio's `ByteStream` vocabulary: ``EndOfStream`` after the peer's FIN,
``BrokenResourceError`` when the connection failed, ``ClosedResourceError`` after our own
close.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, final

import anyio
import anyio.abc

from .._concurrency import running_trio
from .._receive import lean_receive

__all__ = [
    "HAPPY_EYEBALLS_DELAY",
    "READ_HIGH_WATER",
    "AsyncioSocketStream",
    "connect_tcp",
    "trio_receive",
]

#: Seconds before trying a host's next address while one still connects (anyio's value).
HAPPY_EYEBALLS_DELAY: Final = 0.25
#: Bytes received and not yet taken past which the transport stops reading.
READ_HIGH_WATER: Final = 1024 * 1024


@final
class _Protocol(asyncio.Protocol):
    """Keeps what arrives, and wakes whoever waits to read or to write."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.error: BaseException | None = None
        self.lost = False
        self.reading_paused = False
        self.read_waiter: asyncio.Future[None] | None = None
        self.write_waiter: asyncio.Future[None] | None = None
        #: Takes what arrives while the reader waits with nothing buffered (`feed_to`).
        self.feed: Callable[[bytes], None] | None = None
        #: What `feed` raised, for the reader to raise in its own task.
        self.feed_error: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        feed = self.feed
        if feed is not None and self.read_waiter is not None and not self.chunks:
            try:
                feed(data)
            except Exception as error:
                # Raised in the reader's task instead: here asyncio would log it, close the
                # connection and leave the reader to see only a broken one.
                self.feed = None
                self.feed_error = error
                self._wake_reader()
            return
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > READ_HIGH_WATER and not self.reading_paused:
            self.reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return True  # keep our side open: we may still write (a graceful close drains)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        if self.write_waiter is None:
            self.write_waiter = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    def _wake_reader(self) -> None:
        waiter, self.read_waiter = self.read_waiter, None
        _resolve(waiter)

    def _wake_writer(self) -> None:
        waiter, self.write_waiter = self.write_waiter, None
        _resolve(waiter)


def _resolve(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


@final
class AsyncioSocketStream(anyio.abc.ByteStream):
    """One TCP connection on asyncio's transport, reading all the time (see the module)."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        protocol = self._protocol
        if not protocol.chunks:
            self._check_readable()
            waiter = asyncio.get_running_loop().create_future()
            protocol.read_waiter = waiter
            try:
                await waiter
            finally:
                protocol.read_waiter = None
            error = protocol.feed_error
            if error is not None:
                protocol.feed_error = None
                raise error
            if not protocol.chunks:
                self._check_readable()
        else:
            await asyncio.sleep(0)  # a receive is a checkpoint, as anyio's is
            if self._closed:
                raise anyio.ClosedResourceError
        chunks = protocol.chunks
        data = chunks.popleft()
        if len(data) > max_bytes:
            data, rest = data[:max_bytes], data[max_bytes:]
            chunks.appendleft(rest)
        else:
            while chunks and len(data) + len(chunks[0]) <= max_bytes:
                data += chunks.popleft()
        protocol.buffered -= len(data)
        if protocol.reading_paused and protocol.buffered <= READ_HIGH_WATER // 2:
            protocol.reading_paused = False
            if not self._transport.is_closing():
                self._transport.resume_reading()
        return data

    def feed_to(self, feed: Callable[[bytes], None] | None) -> None:
        """While the one reader waits in `receive` with nothing buffered, hand what arrives to
        `feed`, in the transport's callback, instead of waking the reader: one pass of the
        event loop sooner, for a reader that would only decode it and wake someone else. The
        reader still gets EOF and failures, and whatever arrives while it is awake; what
        `feed` raises, its waiting `receive` raises, and feeding stops. None stops it."""
        self._protocol.feed = feed

    def _check_readable(self) -> None:
        protocol = self._protocol
        if self._closed:
            raise anyio.ClosedResourceError
        if protocol.error is not None:
            raise anyio.BrokenResourceError from protocol.error
        if protocol.eof or protocol.lost:
            raise anyio.EndOfStream

    async def send(self, item: bytes) -> None:
        protocol = self._protocol
        if self._closed:
            raise anyio.ClosedResourceError
        if protocol.lost:
            raise anyio.BrokenResourceError from protocol.error
        self._transport.write(item)
        waiter = protocol.write_waiter
        if waiter is not None:  # over the transport's high-water mark: wait for it to drain
            await asyncio.shield(waiter)
            if protocol.lost:
                raise anyio.BrokenResourceError from protocol.error

    def send_now(self, item: bytes) -> int:
        """Hand `item` to the transport without waiting: for the task that makes a request or
        an answer while the client's writer is idle. Returns the bytes taken: all of them (the
        transport writes at once and buffers any rest), or none once the connection is closed
        or lost, or while the transport is over its high-water mark."""
        protocol = self._protocol
        if self._closed or protocol.lost or protocol.write_waiter is not None:
            return 0
        self._transport.write(item)
        return len(item)

    async def send_eof(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if not self._transport.is_closing():
            self._transport.write_eof()

    async def aclose(self) -> None:
        """Send FIN, give the transport one pass to flush, then abort: as anyio's stream does,
        so a peer that stopped reading cannot keep the socket (and what waits for it) open."""
        transport = self._transport
        if not self._closed:
            self._closed = True
            self._protocol._wake_reader()
            self._protocol._wake_writer()
            if not transport.is_closing():
                with contextlib.suppress(OSError, RuntimeError):
                    transport.write_eof()
                transport.close()
        try:
            await asyncio.sleep(0)
        finally:
            transport.abort()

    @property
    def extra_attributes(self) -> Any:
        raw: socket.socket | None = self._transport.get_extra_info("socket")
        attributes: dict[Any, Any] = {}
        if raw is not None:
            attributes[anyio.abc.SocketAttribute.raw_socket] = lambda: raw
        return attributes


async def connect_tcp(host: str, port: int) -> AsyncioSocketStream:
    """Open a TCP connection on the running asyncio loop (``TCP_NODELAY``, as asyncio sets).

    Raises:
        OSError: The connection could not be made.
    """
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(
        _Protocol, host, port, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY
    )
    assert isinstance(transport, asyncio.Transport)
    return AsyncioSocketStream(transport, protocol)


def trio_receive(stream: anyio.abc.ByteStream) -> Callable[[int], Awaitable[bytes]] | None:
    """Under Trio, for anyio's plain TCP stream on POSIX, a receive for its one reader.

    None otherwise (TLS, asyncio, another platform): use the stream's ``receive``. b"" is EOF
    (where anyio's ``receive`` raises ``EndOfStream``); failures raise anyio's
    ``ClosedResourceError`` and ``BrokenResourceError``, as the stream's own do.
    """
    if os.name != "posix" or not isinstance(stream, anyio.abc.SocketStream) or not running_trio():
        return None
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
    if raw is None:
        return None
    return lean_receive(raw, closed=anyio.ClosedResourceError, broken=anyio.BrokenResourceError)
