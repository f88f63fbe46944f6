"""Hostile input over loopback: every error is a bounded ERR, and everyone else carries on.

Issue 10's attacks, each checked against what it did before: a megabyte of bad value copied
into the ERR (too large to send: a silent close) and the log, msgpack nested too deep for
`repr`, a megabyte queue-group name, a bug that closed a connection without the documented
`internal_error`, handshake refusals not counted, and one read of expensive frames holding
the reader for as long as they took.
"""

from __future__ import annotations

import gc
import logging
import struct
import tracemalloc
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from wire import StartServer, bystanders, raw_frame, wait_until, wire_client

from broker.hub import Subscription
from broker.message import Message, Retained
from broker.protocol import (
    Err,
    Hello,
    Msg,
    Ping,
    Pong,
    Pub,
    Sub,
    Welcome,
    encode_frame,
    msg_head_sid,
)
from broker.server.native import NativeAdapter
from broker.server.outbox import CONTROL_OVERHEAD
from broker.server.transport import Transport
from broker.testing import faults

#: An ERR about a client's value stays this small, whatever the value.
ERR_BOUND = 1024


def _nested(depth: int) -> bytes:
    """A msgpack value nested `depth` arrays deep, built as bytes (no Python recursion)."""
    return b"\x91" * depth + b"\xc0"


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    ("hello", "code"),
    [
        ({"version": "v" * 1_000_000}, "bad_handshake"),
        ({"echo": b"x" * 1_000_000}, "bad_handshake"),
        ({"name": ["n" * 1000] * 1000}, "bad_handshake"),
    ],
)
async def test_a_huge_bad_value_in_hello_gets_a_short_err(
    start_server: StartServer, hello: dict[str, Any], code: str
) -> None:
    with trio.fail_after(10):
        server = await start_server()
        async with bystanders(server.port) as pair, wire_client(server.port, hello=False) as bad:
            await bad.send_raw(raw_frame(["HELLO", hello]))
            (err,) = await bad.closed()
            assert type(err) is Err and err.code == code and err.fatal
            assert len(err.message) < ERR_BOUND
            await pair.check()
        stats = server.statistics()
        assert (stats.refused_connections, stats.protocol_errors) == (1, 1)


@pytest.mark.parametrize(
    "body",
    [
        msgpack.packb(["SUB", "x" * 1_000_000, "s"]),  # a sid that is a megabyte of text
        msgpack.packb(["PUB", "s", b"p", None, {"k": b"v" * 1_000_000}]),
        msgpack.packb(["UNSUB", 1, "m" * 1_000_000]),
        b"\x93\xa5UNSUB\x01" + _nested(1000),  # max_msgs nested a thousand arrays deep
        b"\x92\xa3SUB" + _nested(100_000),  # deeper than msgpack's own stack
    ],
    ids=["huge-sid", "huge-header", "huge-max-msgs", "nested-1000", "nested-100k"],
)
async def test_a_huge_or_deep_bad_value_gets_a_short_bad_frame(
    start_server: StartServer, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(10):
        server = await start_server()
        async with bystanders(server.port) as pair, wire_client(server.port) as bad:
            await bad.send_raw(_frame(body))
            (err,) = await bad.closed()
            assert type(err) is Err and err.code == "bad_frame"
            assert len(err.message) < ERR_BOUND
            await pair.check()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert all(len(r.getMessage()) < 2 * ERR_BOUND for r in caplog.records)


async def test_a_megabyte_queue_name_is_refused_and_the_connection_carries_on(
    start_server: StartServer,
) -> None:
    with trio.fail_after(10):
        server = await start_server()
        async with wire_client(server.port) as client:
            await client.send(Sub(1, "jobs", "q" * 1_000_000), Sub(2, "jobs", "q" * 256))
            err = await client.expect(Err)
            assert err.code == "bad_subject" and not err.fatal
            assert err.details == {"sid": 1} and "at most 256 bytes" in err.message
            assert len(err.message) < ERR_BOUND
            await client.send(Pub("jobs", b"work"))
            assert await client.expect(Msg) == Msg(2, "jobs", b"work")
            assert server.statistics().subscriptions == 1


async def test_an_internal_error_sends_internal_error_then_closes_that_client_only(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        """An in-process subscriber with a bug: it raises on every delivery."""

        name = "broken"
        echo = True
        permissions = None
        lang = version = ""
        in_msgs = in_bytes = out_msgs = out_bytes = 0

        def __init__(self) -> None:
            self.subscriptions: dict[Any, Subscription] = {}

        def deliver(self, sub: Subscription, message: Message) -> int:
            raise RuntimeError("a bug in a subscriber")

        def replay(self, sub: Subscription, entries: list[tuple[str, Retained]]) -> bool:
            return False

    with trio.fail_after(10):
        server = await start_server()
        server.hub.subscribe(Broken(), 1, "boom")
        async with bystanders(server.port) as pair, wire_client(server.port) as victim:
            await victim.send(Pub("boom", b"x"))
            (err,) = await victim.closed()
            assert type(err) is Err and err.code == "internal_error" and err.fatal
            await pair.check()
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1 and failures[0].exc_info is not None


async def test_refusals_at_the_handshake_count_as_refused_connections(
    start_server: StartServer,
) -> None:
    with trio.fail_after(10):
        server = await start_server(handshake_timeout=0.05)
        async with wire_client(server.port, hello=False) as late:
            (err,) = await late.closed()
            assert type(err) is Err and err.code == "handshake_timeout"
        async with wire_client(server.port, hello=False) as bad:
            await bad.send(Pub("not", b"a hello"))
            (err,) = await bad.closed()
            assert type(err) is Err and err.code == "bad_handshake"
        assert server.statistics().refused_connections == 2


def test_one_turn_of_expensive_frames_is_cut_short_and_nothing_is_lost() -> None:
    from broker.server import Server
    from broker.testing.inprocess import config_for_tests

    hub = Server(config_for_tests(max_pending_messages=10**6, max_pending_bytes=2**30)).hub

    def connected(client_id: int) -> NativeAdapter:
        transport = Transport(hub, trio.testing.MemorySendStream(), "peer", client_id)
        adapter = transport.adapter = NativeAdapter(hub, transport)
        adapter.receive_data(encode_frame(Hello({})))
        assert adapter.handshake()
        transport.outbox.take_batch()
        return adapter

    publisher, subscriber = connected(1), connected(2)
    subscriber.receive_data(b"".join(encode_frame(Sub(sid, "fan")) for sid in range(500)))
    while subscriber.process():
        pass
    assert len(subscriber.subscriptions) == 500
    publisher.receive_data(b"".join(encode_frame(Pub("fan", b"%d" % n)) for n in range(400)))
    turns = 0
    while publisher.process():
        turns += 1
    assert turns > 1  # 200,000 deliveries do not fit in one turn
    frames = list(subscriber.outbox._frames)
    assert len(frames) == 2 * 400 * 500
    # Each queued message is a head (length, array byte, op, sid) and a tail (its fields).
    messages = zip(frames[0::1000], frames[1::1000], strict=True)
    payloads = [msgpack.unpackb(head[4:] + tail)[3] for head, tail in messages]
    assert payloads == [b"%d" % n for n in range(400)]  # every publish, in order


def _connected(hub: Any, client_id: int, *, echo: bool = True) -> NativeAdapter:
    transport = Transport(hub, trio.testing.MemorySendStream(), "peer", client_id)
    adapter = transport.adapter = NativeAdapter(hub, transport)
    adapter.receive_data(encode_frame(Hello({"echo": echo})))
    assert adapter.handshake()
    transport.outbox.take_batch()
    return adapter


def test_a_publish_to_65536_subscriptions_goes_out_in_steps_and_its_clients_frames_wait() -> None:
    from broker.hub import FANOUT_STEP
    from broker.server import Server
    from broker.testing.inprocess import config_for_tests

    hub = Server(config_for_tests(max_pending_messages=10**6, max_pending_bytes=2**30)).hub
    publisher, subscriber = _connected(hub, 1), _connected(hub, 2)
    subscriber.receive_data(b"".join(encode_frame(Sub(sid, "fan.>")) for sid in range(65_536)))
    while subscriber.process():
        pass
    subscriber.transport.outbox.take_batch()
    publisher.receive_data(
        encode_frame(Pub("fan.out", b"first")) + encode_frame(Pub("fan.out", b"second"))
    )
    assert publisher.process()
    # One step delivered FANOUT_STEP; the rest, and the second PUB, wait for later turns.
    assert len(subscriber.outbox._frames) == 2 * FANOUT_STEP
    assert publisher in hub.fanouts and publisher._deferred is not None
    # A subscription removed between two steps gets nothing more.
    hub.unsubscribe(subscriber.subscriptions[65_535])
    turns = 1
    while publisher.process():
        turns += 1
    assert turns > 2 and not hub.fanouts
    heads = list(subscriber.outbox._frames)[0::2]
    tails = list(subscriber.outbox._frames)[1::2]
    sids = [msg_head_sid(head) for head in heads]
    payloads = [
        msgpack.unpackb(head[4:] + tail)[3] for head, tail in zip(heads, tails, strict=True)
    ]
    assert sids == list(range(65_535)) * 2  # each once, in subscription order, per publish
    assert payloads == [b"first"] * 65_535 + [b"second"] * 65_535
    assert hub.statistics().messages_out == 2 * 65_535


def test_a_client_that_leaves_in_the_middle_of_a_split_publish_still_delivers_all_of_it() -> None:
    from broker.hub import FANOUT_STEP
    from broker.server import Server
    from broker.testing.inprocess import config_for_tests

    hub = Server(config_for_tests(max_pending_messages=10**6, max_pending_bytes=2**30)).hub
    publisher, subscriber = _connected(hub, 1), _connected(hub, 2)
    subscriber.receive_data(b"".join(encode_frame(Sub(sid, "fan.>")) for sid in range(5000)))
    while subscriber.process():
        pass
    subscriber.transport.outbox.take_batch()
    publisher.receive_data(encode_frame(Pub("fan.out", b"accepted")))
    assert publisher.process()
    assert publisher in hub.fanouts
    # The publisher's connection closes: its teardown finishes the publish first.
    while hub.remove_all(publisher, limit=FANOUT_STEP):
        pass
    assert not hub.fanouts
    assert len(subscriber.outbox._frames) == 2 * 5000


def test_a_reader_whose_turn_overran_its_budget_rests_as_long() -> None:
    from broker.server import Server
    from broker.server.native import OVERRUN_REST, REST_WORK, TURN_SECONDS
    from broker.testing.inprocess import config_for_tests

    adapter = _connected(Server(config_for_tests()).hub, 1)
    adapter._overran(OVERRUN_REST / 2, REST_WORK)
    assert adapter.transport.rest == 0.0  # a little over: the clock's noise, not a client
    adapter._overran(0.050, 64)
    assert adapter.transport.rest == 0.0  # cheap frames and a long turn: the system's doing
    adapter._overran(0.050, REST_WORK)
    assert adapter.transport.rest == 0.050 + TURN_SECONDS


def test_one_turn_decodes_a_bounded_number_of_frames() -> None:
    from broker.server import Server
    from broker.server.native import DECODE_PER_TURN
    from broker.testing.inprocess import config_for_tests

    adapter = _connected(Server(config_for_tests()).hub, 1)
    # One 64 KiB read of PINGs: 7,000 frames, whose decoding alone took 24 ms in one step.
    adapter.receive_data(encode_frame(Ping()) * 7000)
    turns = 0
    while adapter.process():
        turns += 1
    assert turns == -(-7000 // DECODE_PER_TURN)
    assert adapter.transport.outbox.control_bytes > 0  # every PING got its PONG


def test_queued_pongs_are_not_objects_the_garbage_collector_walks() -> None:
    # A PING flood queues a PONG per PING; each full collection walks every tracked object, so
    # a million of them (10 flooders) cost 80 ms pauses for every client.
    from broker.server import Server
    from broker.testing.inprocess import config_for_tests

    adapter = _connected(Server(config_for_tests()).hub, 1)
    adapter.receive_data(encode_frame(Ping()) * 5000)
    gc.collect()
    before = len(gc.get_objects())
    while adapter.process():
        pass
    assert adapter.transport.outbox.control_bytes >= 5000 * len(encode_frame(Pong()))
    gc.collect()
    assert len(gc.get_objects()) - before < 100


@pytest.mark.parametrize("extra", [0, 1], ids=["at-the-bound", "one-past"])
async def test_pongs_count_at_their_memory_cost_against_max_pending_bytes(
    start_server: StartServer, extra: int
) -> None:
    limit = 1024
    pong_cost = len(encode_frame(Pong())) + CONTROL_OVERHEAD  # about 70 bytes, not 9
    fit = limit // pong_cost
    with trio.fail_after(10):
        server = await start_server(max_pending_bytes=limit)
        async with bystanders(server.port) as pair, wire_client(server.port, name="pinger") as c:
            await c.flush()
            assert faults.stall_client(server, "pinger") == 1
            (pinger,) = faults.connections(server, "pinger")
            await c.send(*[Ping()] * (fit + extra))
            if extra:
                await wait_until(lambda: server.statistics().slow_consumers == 1)
            else:  # every PONG is queued, and the connection holds exactly its bound
                await wait_until(lambda: pinger.outbox.control_bytes == fit * pong_cost)
                assert server.statistics().slow_consumers == 0
            faults.resume_client(server, "pinger")
            if extra:
                (err,) = await c.closed()
                assert type(err) is Err and err.code == "slow_consumer"
            else:
                assert [await c.next_event() for _ in range(fit)] == [Pong()] * fit
                await c.flush()
            await pair.check()


async def test_half_a_frame_is_cut_after_frame_timeout_and_trickling_does_not_help(
    start_server: StartServer,
) -> None:
    frame = encode_frame(Pub("slow", b"x" * 100))
    with trio.fail_after(10):
        server = await start_server(frame_timeout=0.3)
        async with (
            bystanders(server.port) as pair,
            wire_client(server.port, name="half") as half,
            wire_client(server.port, name="trickle") as trickle,
        ):
            started = trio.current_time()
            await half.send_raw(frame[:50])
            # One byte every 20 ms for 0.5 s: bytes all along, but never a whole frame. It stops
            # while the server still lingers after cutting it, so no reset eats the ERR.
            for byte in frame[:25]:
                await trickle.send_raw(bytes([byte]))
                await trio.sleep(0.02)
            for client in (half, trickle):
                (err,) = await client.closed()
                assert type(err) is Err and err.code == "stale_connection"
                assert "frame_timeout" in err.message
            assert trio.current_time() - started < 2
            await pair.check()


async def test_half_a_frame_sent_with_the_hello_is_cut_after_frame_timeout_too(
    start_server: StartServer,
) -> None:
    # The read that brings HELLO may bring the start of the next frame: the reader begins with
    # bytes buffered, and they must be timed like any others (they escaped frame_timeout, and
    # the connection lived until keepalive cut it, minutes later).
    hello = encode_frame(Hello({"version": 1, "name": "half-with-hello"}))
    frame = encode_frame(Pub("slow", b"x" * 100))
    with trio.fail_after(10):
        server = await start_server(frame_timeout=0.3)
        async with bystanders(server.port) as pair, wire_client(server.port, hello=False) as half:
            started = trio.current_time()
            await half.send_raw(hello + frame[:50])
            welcome, err = await half.closed()
            assert type(welcome) is Welcome
            assert type(err) is Err and err.code == "stale_connection"
            assert trio.current_time() - started < 2
            await pair.check()


async def test_frames_that_arrive_in_pieces_within_frame_timeout_are_fine(
    start_server: StartServer,
) -> None:
    frame = encode_frame(Pub("pieces", b"x" * 100))
    with trio.fail_after(10):
        server = await start_server(frame_timeout=0.5)
        async with wire_client(server.port) as client:
            await client.send(Sub(1, "pieces"))
            for _ in range(3):
                for piece in (frame[:30], frame[30:70], frame[70:]):
                    await client.send_raw(piece)
                    await trio.sleep(0.1)  # 0.2 s per frame, 0.9 s in all: each one in time
            assert [await client.expect(Msg) for _ in range(3)] == [
                Msg(1, "pieces", b"x" * 100)
            ] * 3


async def test_a_client_that_never_reads_a_replay_holds_a_chunk_not_the_store(
    start_server: StartServer,
) -> None:
    # 40 retained messages of 100 KB: a 4 MB store. Replayed whole, two SUBs of '>' from a
    # client that never reads pinned twice the store; streamed, it pins about one chunk.
    with trio.fail_after(20):
        server = await start_server(write_timeout=1.0)
        async with wire_client(server.port, name="pub") as pub:
            await pub.send(*(Pub(f"r.{i}", b"r" * 100_000, None, None, True) for i in range(40)))
            await pub.flush()
        async with bystanders(server.port) as pair:
            tracemalloc.start()
            try:
                async with wire_client(server.port, name="sleeper", rcvbuf=4096) as sleeper:
                    before = tracemalloc.get_traced_memory()[0]
                    await sleeper.send(Sub(1, ">"), Sub(2, ">"))
                    (transport,) = faults.connections(server, "sleeper")
                    # The first replay is being sent, the second waits its turn: neither copied.
                    await wait_until(lambda: transport.outbox.streaming is not None)
                    await wait_until(lambda: transport.outbox.replaying == 1)
                    held = tracemalloc.get_traced_memory()[0] - before
                    assert held < 3 * 1024 * 1024, held  # was more than 8 MB
                    # It never reads: write_timeout cuts it, as any client that stops reading.
                    await wait_until(lambda: server.statistics().slow_consumers == 1)
            finally:
                tracemalloc.stop()
            await pair.check()


@pytest.mark.parametrize("request_line", [b"GET / HTTP/1.1", b"HEAD /healthz HTTP/1.1"])
async def test_an_http_request_to_the_broker_port_is_told_where_to_go(
    start_server: StartServer, request_line: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broker")
    with trio.fail_after(10):
        server = await start_server()
        async with wire_client(server.port, hello=False) as curl:
            await curl.send_raw(request_line + b"\r\nHost: 127.0.0.1\r\n\r\n")
            (err,) = await curl.closed()
            assert type(err) is Err and err.code == "bad_handshake"
            assert "not HTTP" in err.message and "monitoring port" in err.message
    assert not any("1195725856" in record.getMessage() for record in caplog.records)
    assert any("not HTTP" in record.getMessage() for record in caplog.records)


async def test_replays_under_way_are_bounded_server_wide_and_a_waiting_sub_goes_on_later(
    start_server: StartServer,
) -> None:
    # 40 retained messages of 100 KB. One client that never reads starts a replay of '>' and
    # fills max_replay_bytes; a second client's SUB of '>' waits (its later PING with it) until
    # write_timeout cuts the first, then gets its whole replay, in order, and its PONG.
    with trio.fail_after(20):
        server = await start_server(write_timeout=1.0, max_replay_bytes=64 * 1024)
        memory = server.hub.replay_memory
        async with wire_client(server.port, name="pub") as pub:
            await pub.send(*(Pub(f"r.{i:02}", b"r" * 100_000, None, None, True) for i in range(40)))
            await pub.flush()
        async with (
            bystanders(server.port) as pair,
            wire_client(server.port, name="sleeper", rcvbuf=4096) as sleeper,
            wire_client(server.port, name="patient") as patient,
        ):
            await sleeper.send(Sub(1, ">"))
            await wait_until(lambda: memory.used >= memory.limit)
            charged = memory.used
            await patient.send(Sub(1, ">"), Ping())
            (waiting,) = faults.connections(server, "patient")
            # The bystanders' live traffic goes on while the patient's replay waits for room.
            await pair.check()
            assert waiting.outbox.streaming is None and memory.used == charged
            await wait_until(lambda: server.statistics().slow_consumers == 1)
            subjects = [(await patient.expect(Msg)).subject for _ in range(40)]
            assert subjects == [f"r.{i:02}" for i in range(40)]
            await patient.expect(Pong)
            await pair.check()
        await wait_until(lambda: not server.transports)
        assert memory.used == 0


@pytest.mark.parametrize("how", ["eof", "cut"])
async def test_a_replay_ended_by_a_leaving_client_frees_its_charge(
    start_server: StartServer, how: str
) -> None:
    with trio.fail_after(20):
        server = await start_server(write_timeout=1.0)
        memory = server.hub.replay_memory
        async with wire_client(server.port, name="pub") as pub:
            await pub.send(*(Pub(f"r.{i}", b"r" * 100_000, None, None, True) for i in range(40)))
            await pub.flush()
        async with wire_client(server.port, name="leaver", rcvbuf=4096) as leaver:
            await leaver.send(Sub(1, ">"), Sub(2, ">"))
            (transport,) = faults.connections(server, "leaver")
            await wait_until(lambda: transport.outbox.replaying == 1)
            assert memory.used > 0
            if how == "cut":
                faults.drop_client(server, "leaver")
        await wait_until(lambda: not server.transports)
        assert memory.used == 0


async def test_lines_about_one_host_are_rate_limited_and_every_refusal_still_counts(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broker")
    with trio.fail_after(10):
        server = await start_server(log_peer_lines_per_minute=3)
        async with bystanders(server.port) as pair:
            for _ in range(10):
                async with wire_client(server.port, hello=False) as bad:
                    await bad.send_raw(_frame(msgpack.packb(["HELLO", {"version": "x" * 100}])))
                    (err,) = await bad.closed()
                    assert type(err) is Err and err.code == "bad_handshake"
            await pair.check()
        assert server.statistics().refused_connections == 10
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 3
