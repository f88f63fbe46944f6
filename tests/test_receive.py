"""The lean receive of a plain TCP socket's reader under Trio (`broker._receive`): the
broker's (`broker.server.receive.socket_receive`) and the Trio client's
(`broker.client.streams.trio_receive`).

On real loopback sockets: what it returns, that it keeps trio's checkpoint and cancellation
guarantees and tells closed from broken, and that after a read that emptied the socket it waits
before reading rather than failing a read with EAGAIN first.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest
import trio
import trio.testing
import trustme
from services import echo_service

from broker import _receive as receive_module
from broker.client import connect
from broker.client.streams import trio_receive
from broker.config import Config
from broker.server import Server
from broker.server.receive import socket_receive

Receive = Callable[[int], Awaitable[bytes]]


@pytest.fixture
async def pair() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """A connected (peer, ours) pair of plain TCP streams on loopback."""
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    peer = await trio.open_tcp_stream("127.0.0.1", port)
    ours = await listener.accept()
    await listener.aclose()
    try:
        yield peer, ours
    finally:
        await peer.aclose()
        await ours.aclose()


def _receive(stream: trio.SocketStream) -> Receive:
    receive = socket_receive(stream)
    assert receive is not None
    return receive


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every read `socket_receive` makes from now on: "data", "eof" or "eagain"."""
    made: list[str] = []
    real_read = os.read

    def read(fd: int, size: int) -> bytes:
        try:
            data = real_read(fd, size)
        except BlockingIOError:
            made.append("eagain")
            raise
        made.append("data" if data else "eof")
        return data

    monkeypatch.setattr(receive_module.os, "read", read)
    return made


async def test_only_a_plain_socket_stream_gets_it(
    pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    _, ours = pair
    assert socket_receive(ours) is not None
    send, _ = trio.testing.memory_stream_pair()
    assert socket_receive(send) is None
    ca = trustme.CA()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    assert socket_receive(trio.SSLStream(ours, context, server_hostname="localhost")) is None


async def test_it_returns_what_arrived_up_to_max_bytes_then_eof(
    pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    peer, ours = pair
    receive = _receive(ours)
    with trio.fail_after(5):
        await peer.send_all(b"abc")
        assert await receive(10) == b"abc"
        await peer.send_all(b"x" * 25)
        got = b""
        while len(got) < 25:
            chunk = await receive(10)
            assert 0 < len(chunk) <= 10
            got += chunk
        assert got == b"x" * 25
        await peer.send_eof()
        assert await receive(10) == b""


async def _sent_while_waiting(receive: Receive, peer: trio.SocketStream, data: bytes) -> bytes:
    """What `receive` returns when `data` is sent only once it is waiting, as a request is."""
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:

        async def take() -> None:
            got.append(await receive(100))

        nursery.start_soon(take)
        await trio.testing.wait_all_tasks_blocked()
        await peer.send_all(data)
    return got[0]


async def test_after_a_read_that_emptied_the_socket_it_waits_before_reading(
    pair: tuple[trio.SocketStream, trio.SocketStream], reads: list[str]
) -> None:
    peer, ours = pair
    receive = _receive(ours)
    with trio.fail_after(5):
        # Request/reply's pattern: each request arrives while the reader waits. Only the first
        # call, which knows nothing of the socket yet, reads before waiting.
        for number in range(10):
            assert await _sent_while_waiting(receive, peer, bytes([number])) == bytes([number])
        assert reads == ["eagain"] + ["data"] * 10
        # A full read may have left more: the next call reads at once, and waits only if that
        # read finds nothing.
        await peer.send_all(b"y" * 100)
        assert await receive(100) == b"y" * 100
        assert await _sent_while_waiting(receive, peer, b"z") == b"z"
        assert reads == ["eagain"] + ["data"] * 11 + ["eagain", "data"]


async def test_every_call_is_a_checkpoint_even_with_data_waiting(
    pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    peer, ours = pair
    receive = _receive(ours)
    with trio.fail_after(5):
        await peer.send_all(b"a" * 30)
        # Loopback queues what is sent before send_all returns: every call finds data waiting.
        with trio.testing.assert_checkpoints():
            assert await receive(10) == b"a" * 10  # reads first (nothing read yet)
        with trio.testing.assert_checkpoints():
            assert await receive(10) == b"a" * 10  # after a full read: reads first
        await peer.send_all(b"b")
        assert await receive(100) == b"a" * 10 + b"b"
        await peer.send_all(b"c")
        with trio.testing.assert_checkpoints():
            assert await receive(100) == b"c"  # after a read that emptied it: waits first


@pytest.mark.parametrize("emptied_first", [False, True])
async def test_a_cancelled_call_reads_nothing_so_nothing_is_lost(
    pair: tuple[trio.SocketStream, trio.SocketStream], emptied_first: bool
) -> None:
    peer, ours = pair
    receive = _receive(ours)
    with trio.fail_after(5):
        if emptied_first:
            await peer.send_all(b"first")
            assert await receive(100) == b"first"
        await peer.send_all(b"kept")
        with trio.CancelScope() as scope:
            scope.cancel()
            await receive(100)
        assert scope.cancelled_caught
        assert await receive(100) == b"kept"


async def test_closing_the_stream_under_a_waiting_call_raises_closed(
    pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    _, ours = pair
    receive = _receive(ours)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            raised: list[BaseException] = []

            async def wait() -> None:
                try:
                    await receive(10)
                except trio.ClosedResourceError as error:
                    raised.append(error)

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            await ours.aclose()
        assert len(raised) == 1
        with pytest.raises(trio.ClosedResourceError):
            await receive(10)


@pytest.mark.parametrize("emptied_first", [False, True])
async def test_a_call_after_closing_raises_closed_whether_or_not_it_would_wait(
    pair: tuple[trio.SocketStream, trio.SocketStream], emptied_first: bool
) -> None:
    peer, ours = pair
    receive = _receive(ours)
    with trio.fail_after(5):
        if emptied_first:  # the next call would wait before reading
            await peer.send_all(b"x")
            assert await receive(100) == b"x"
        await ours.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await receive(100)


async def test_a_connection_reset_by_the_peer_raises_broken(
    pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    peer, ours = pair
    receive = _receive(ours)
    with trio.fail_after(5):
        # SO_LINGER with a zero timeout: close sends RST, not FIN.
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await peer.aclose()
        with pytest.raises(trio.BrokenResourceError):
            await receive(10)


def test_the_client_keeps_anyios_receive_under_asyncio() -> None:
    # Only Trio has the lean receive; the asyncio client has its own stream.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        async def main() -> None:
            stream = await anyio.connect_tcp("127.0.0.1", port)
            assert trio_receive(stream) is None
            await stream.aclose()

        asyncio.run(main())


async def test_the_trio_client_reads_each_reply_in_one_read_without_eagain(
    nursery: trio.Nursery, reads: list[str]
) -> None:
    # The broker's readers and, under Trio, the client's all read through lean_receive: a
    # request is four reads (the broker's of the request, the responder's, the broker's of the
    # answer, the requester's) and, with every reader waiting first, no read that fails.
    server: Server = await nursery.start(Server(Config(hosts=("127.0.0.1",), port=0)).serve)
    async with connect(server.url) as service, connect(server.url) as caller:
        stream = caller._link.stream  # type: ignore[union-attr]
        assert trio_receive(stream) is not None

        async with echo_service(service):
            with trio.fail_after(5):
                await caller.request("echo", b"warm")  # also sends the inbox's SUB
                await trio.testing.wait_all_tasks_blocked()
                reads.clear()
                for number in range(10):
                    assert (await caller.request("echo", bytes([number]))).payload == bytes(
                        [number]
                    )
                    await trio.testing.wait_all_tasks_blocked()
            assert reads == ["data"] * 40
