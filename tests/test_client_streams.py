"""The client's asyncio TCP stream (`broker.client.streams`), against a real loopback peer.

It must speak anyio's stream vocabulary as the client expects (EndOfStream, BrokenResourceError,
ClosedResourceError), keep every byte in order, bound what it buffers for a reader that falls
behind, and wait when the peer stops reading.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest

from broker.client.streams import READ_HIGH_WATER, AsyncioSocketStream, connect_tcp

pytestmark = pytest.mark.timeout(20)


def run(main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(15):
            await main()

    asyncio.run(bounded())


@asynccontextmanager
async def peer() -> AsyncIterator[tuple[AsyncioSocketStream, asyncio.Queue[socket.socket]]]:
    """A connected stream, and the peer's end as a plain non-blocking socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    accepted: asyncio.Queue[socket.socket] = asyncio.Queue()

    async def accept() -> None:
        connection, _ = await loop.sock_accept(listener)
        await accepted.put(connection)

    task = asyncio.create_task(accept())
    stream = await connect_tcp("127.0.0.1", listener.getsockname()[1])
    await task
    try:
        yield stream, accepted
    finally:
        await stream.aclose()
        listener.close()


def test_bytes_arrive_in_order_split_and_joined_to_max_bytes() -> None:
    async def main() -> None:
        async with peer() as (stream, accepted):
            other = await accepted.get()
            loop = asyncio.get_running_loop()
            data = bytes(range(256)) * 64  # 16 KiB
            await loop.sock_sendall(other, data)
            received = b""
            while len(received) < len(data):
                chunk = await stream.receive(1000)
                assert 0 < len(chunk) <= 1000
                received += chunk
            assert received == data
            await stream.send(b"back")
            assert await loop.sock_recv(other, 10) == b"back"
            other.close()

    run(main)


def test_the_peers_close_is_end_of_stream_and_our_close_is_closed() -> None:
    async def main() -> None:
        async with peer() as (stream, accepted):
            other = await accepted.get()
            other.sendall(b"last")
            other.shutdown(socket.SHUT_WR)
            assert await stream.receive() == b"last"
            with pytest.raises(anyio.EndOfStream):
                await stream.receive()
            await stream.send(b"still writable")  # a half-closed peer may still read
            other.close()
            await stream.aclose()
            with pytest.raises(anyio.ClosedResourceError):
                await stream.receive()
            with pytest.raises(anyio.ClosedResourceError):
                await stream.send(b"x")

    run(main)


def test_a_reset_connection_is_broken() -> None:
    async def main() -> None:
        async with peer() as (stream, accepted):
            other = await accepted.get()
            # SO_LINGER 0: close sends RST, not FIN.
            other.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            other.close()
            with pytest.raises((anyio.BrokenResourceError, anyio.EndOfStream)):
                for _ in range(100):
                    await stream.receive()
                    await stream.send(b"x")

    run(main)


def test_a_reader_that_falls_behind_holds_about_read_high_water() -> None:
    async def main() -> None:
        async with peer() as (stream, accepted):
            other = await accepted.get()
            loop = asyncio.get_running_loop()
            # Far more than the bound and what the kernel's socket buffers hold between them.
            data = bytes(range(251)) * (24 * READ_HIGH_WATER // 251)
            sender = asyncio.create_task(loop.sock_sendall(other, data))
            # Not reading: the transport stops once past the bound, and the sender is held up.
            for _ in range(50):
                await asyncio.sleep(0.01)
            protocol = stream._protocol
            assert protocol.reading_paused
            assert READ_HIGH_WATER < protocol.buffered <= READ_HIGH_WATER + 256 * 1024
            assert not sender.done()
            received = bytearray()
            while len(received) < len(data):
                received += await stream.receive(65536)
            await sender
            assert received == data
            assert not protocol.reading_paused and protocol.buffered == 0
            other.close()

    run(main)


def test_send_waits_while_the_peer_does_not_read() -> None:
    async def main() -> None:
        async with peer() as (stream, accepted):
            other = await accepted.get()
            loop = asyncio.get_running_loop()
            block = b"y" * (1024 * 1024)
            sent = 0
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1):
                    while True:
                        await stream.send(block)
                        sent += len(block)
            assert sent < 64 * len(block)  # held up, not buffering without bound
            received = 0
            while received < sent:
                received += len(await loop.sock_recv(other, 1 << 20))
            other.close()

    run(main)


def test_closing_does_not_wait_for_a_peer_that_stopped_reading() -> None:
    async def main() -> None:
        async with peer() as (stream, accepted):
            other = await accepted.get()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    while True:  # until the kernel's buffers and the transport's are full
                        await stream.send(b"z" * 65536)
            raw = stream._transport.get_extra_info("socket")
            assert raw.fileno() != -1 and stream._transport.get_write_buffer_size()
            await anyio.aclose_forcefully(stream)
            for _ in range(10):
                await asyncio.sleep(0)
            # Aborted, as anyio's stream does: the socket and what was queued for it are gone.
            assert raw.fileno() == -1
            other.close()

    run(main)


def test_send_now_hands_bytes_over_in_order_and_nothing_when_it_cannot() -> None:
    async def main() -> None:
        async with peer() as (stream, accepted):
            other = await accepted.get()
            loop = asyncio.get_running_loop()
            assert stream.send_now(b"one,") == 4
            await stream.send(b"two,")
            assert stream.send_now(b"three") == 5
            received = b""
            while len(received) < 13:
                received += await loop.sock_recv(other, 64)
            assert received == b"one,two,three"
            # Over the transport's high-water mark (the peer stopped reading): not taken, so
            # the caller leaves it to the writer, which waits.
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    while True:
                        await stream.send(b"z" * 65536)
            assert stream._protocol.write_waiter is not None
            assert stream.send_now(b"late") == 0
            other.close()
        assert stream.send_now(b"closed") == 0

    run(main)
