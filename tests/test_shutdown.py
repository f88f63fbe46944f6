"""Graceful shutdown over real sockets: stop accepting, flush, say goodbye, stop within grace."""

from __future__ import annotations

import struct

import trio
from wire import StartServer, WireClient, connect, wire_client

from broker.protocol import Err, Msg, Pub, Sub
from broker.server import Server

SLOW_RCVBUF = 4096
SIZE = 16 * 1024


def numbered(i: int) -> bytes:
    return struct.pack(">I", i) + bytes(SIZE - 4)


async def publish_flood(pub: WireClient, count: int) -> None:
    """Publish `count` numbered 16 KiB messages on "work" and wait until all are routed."""
    for first in range(0, count, 16):
        await pub.send(*(Pub("work", numbered(i)) for i in range(first, first + 16)))
        await pub.flush()


async def assert_not_served(port: int) -> None:
    """A new connection is refused, or is closed without a single frame."""
    try:
        client = await connect(port)
    except OSError:
        return
    try:
        assert await client.closed() == []
    finally:
        await client.aclose()


async def test_shutdown_flushes_what_is_queued_then_says_shutting_down(
    start_server: StartServer,
) -> None:
    grace = 2.0
    count = 64
    with trio.fail_after(10):
        server = await start_server(shutdown_grace=grace)
        async with (
            wire_client(server.port, name="backlogged", rcvbuf=SLOW_RCVBUF) as backlogged,
            wire_client(server.port, name="reader") as reader,
            wire_client(server.port, name="publisher") as pub,
            wire_client(server.port, name="no hello yet", hello=False) as newcomer,
        ):
            for client in (backlogged, reader):
                await client.send(Sub(1, "work"))
                await client.flush()
            # The backlogged client reads nothing yet, so most of a megabyte waits in its
            # outbox; the other client's messages are routed, perhaps not read.
            await publish_flood(pub, count)
            assert server.statistics().messages_out == 2 * count
            start = trio.current_time()
            server.shutdown()
            expected = [Msg(1, "work", numbered(i)) for i in range(count)]
            for client in (backlogged, reader):
                events = await client.closed()
                assert events[:-1] == expected
                assert type(events[-1]) is Err
                assert events[-1].code == "shutting_down"
            assert [(type(e), e.code) for e in await pub.closed()] == [(Err, "shutting_down")]
            assert [(type(e), e.code) for e in await newcomer.closed()] == [(Err, "shutting_down")]
            await assert_not_served(server.port)
        with trio.fail_after(grace):
            await server.wait_stopped()
        assert trio.current_time() - start < grace
        assert server.statistics().connections == 0


async def test_a_client_that_never_reads_cannot_hold_shutdown_past_grace(
    start_server: StartServer,
) -> None:
    grace = 0.5
    with trio.fail_after(10):
        server: Server = await start_server(shutdown_grace=grace)
        async with (
            wire_client(server.port, name="stuck", rcvbuf=SLOW_RCVBUF) as stuck,
            wire_client(server.port, name="polite") as polite,
            wire_client(server.port, name="publisher") as pub,
        ):
            await stuck.send(Sub(1, "work"))
            await stuck.flush()
            # Enough that the server's writes to the stuck client block.
            await publish_flood(pub, 64)
            start = trio.current_time()
            server.shutdown()
            # The others hear at once and are closed; meanwhile nobody new gets in.
            assert [(type(e), e.code) for e in await polite.closed()] == [(Err, "shutting_down")]
            assert trio.current_time() - start < grace
            await assert_not_served(server.port)
            await pub.closed()
            await polite.aclose()
            await pub.aclose()
            # The stuck client holds serve() until the grace period runs out, and no longer.
            await server.wait_stopped()
            stopped_after = trio.current_time() - start
            assert grace * 0.9 <= stopped_after < grace + 0.5
            # It was cut off: whatever it reads now ends without the goodbye.
            assert all(type(e) is Msg for e in await stuck.closed())


async def test_shutdown_of_an_idle_server_is_prompt(start_server: StartServer) -> None:
    with trio.fail_after(5):
        server = await start_server(shutdown_grace=3.0)
        port = server.port
        start = trio.current_time()
        server.shutdown()
        await server.wait_stopped()
        assert trio.current_time() - start < 1.0
        await assert_not_served(port)
