"""Each connection's identity and counters, as monitoring reads them off its transport."""

from __future__ import annotations

import time

import trio
from wire import StartServer, wire_client

from broker import __version__
from broker.client import connect
from broker.hub import FANOUT_STEP
from broker.protocol import Hello, Pub, Sub
from broker.server import Server
from broker.server.transport import Transport


def by_name(server: Server, name: str) -> Transport:
    (found,) = [t for t in server.transports if t.adapter.name == name]
    return found


async def test_counters_match_the_traffic_sent(start_server: StartServer) -> None:
    with trio.fail_after(5):
        server = await start_server()
        before = time.time()
        async with (
            connect(server.url, name="pub") as pub,
            connect(server.url, name="sub") as sub,
            sub.subscribe("t.*") as inbox,
        ):
            await sub.flush()
            for _ in range(100):
                await pub.publish("t.x", b"x")
            await pub.flush()
            for _ in range(100):
                await inbox.next()
            p, s = by_name(server, "pub"), by_name(server, "sub")
            assert (p.adapter.in_msgs, p.adapter.in_bytes) == (100, 100)
            assert (p.adapter.out_msgs, p.adapter.out_bytes) == (0, 0)
            assert (s.adapter.out_msgs, s.adapter.out_bytes) == (100, 100)
            assert (s.adapter.in_msgs, s.adapter.in_bytes) == (0, 0)
            assert len(s.adapter.subscriptions) == 1
            assert (p.adapter.lang, p.adapter.version) == ("python", __version__)
            assert p.address[0] == "127.0.0.1" and p.address[1] > 0
            assert before <= p.start <= p.last_activity <= time.time()
            assert p.pending_bytes == 0
            assert p.client_id != s.client_id


async def test_group_and_retained_deliveries_count_too(start_server: StartServer) -> None:
    with trio.fail_after(5):
        server = await start_server()
        async with wire_client(server.port) as a:
            await a.send(Pub("kept", b"abc", retain=True), Sub(1, "g", "workers"))
            await a.flush()
            await a.send(Pub("g", b"12345"), Sub(2, "kept"))
            await a.flush()
            (t,) = server.transports
            assert (t.adapter.in_msgs, t.adapter.in_bytes) == (2, 8)
            assert (t.adapter.out_msgs, t.adapter.out_bytes) == (2, 8)


async def test_hello_identity_is_optional_and_bounded(start_server: StartServer) -> None:
    with trio.fail_after(5):
        server = await start_server()
        async with wire_client(server.port, hello=False) as old:
            await old.send(Hello({"name": "old"}))
            await old.flush()
            t = by_name(server, "old")
            assert (t.adapter.lang, t.adapter.version) == ("", "")
        async with wire_client(server.port, hello=False) as odd:
            await odd.send(Hello({"name": "odd", "lang": "x" * 1000, "client_version": "1.2"}))
            await odd.flush()
            t = by_name(server, "odd")
            assert (t.adapter.lang, t.adapter.version) == ("x" * 64, "1.2")


async def test_a_publish_split_into_steps_counts_every_delivery(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server()
        count = FANOUT_STEP + 100
        async with wire_client(server.port, name="many") as many:
            await many.send(*[Sub(sid, "wide") for sid in range(count)])
            await many.flush()
            await many.send(Pub("wide", b"ab"))
            await many.flush()
            (t,) = server.transports
            assert (t.adapter.out_msgs, t.adapter.out_bytes) == (count, 2 * count)
            assert server.statistics().messages_out == count
