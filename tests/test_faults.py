"""Faults over real sockets: bad input, silent and dead peers, slow consumers.

Each test checks that the faulty client got the right ERR and was closed, and that a bystander
pair connected before the fault still exchanges messages and gets PONGs afterwards.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import msgpack
import pytest
import trio
from trio.testing import MockClock
from wire import (
    Closed,
    StartServer,
    WireClient,
    bystanders,
    connect,
    raw_frame,
    wait_until,
    wire_client,
)

from broker.protocol import (
    Err,
    Event,
    Msg,
    Ping,
    Pong,
    Pub,
    RemoteProtocolError,
    Sub,
    Welcome,
)
from broker.server import Server
from broker.server.outbox import MESSAGE_OVERHEAD
from broker.testing import faults

HELLO = raw_frame(["HELLO", {"version": 1, "name": "faulty"}])


def frame_bytes(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def codes(events: list[Event]) -> list[tuple[str, str]]:
    return [(type(e).__name__, getattr(e, "code", "")) for e in events]


# -- 9. bad input ------------------------------------------------------------------------------

# (what is sent after a good HELLO, the ERR code expected)
BAD_AFTER_HELLO: dict[str, tuple[bytes, str]] = {
    "garbage": (frame_bytes(b"\xc1\xc1\xc1"), "bad_frame"),
    "http request": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "frame_too_large"),
    "truncated msgpack": (frame_bytes(b"\x93\xa3PUB"), "bad_frame"),
    "two values in one frame": (frame_bytes(msgpack.packb(["PING"]) + b"\xc0"), "bad_frame"),
    "map, not array": (raw_frame({"op": "PUB"}), "bad_frame"),
    "str, not array": (raw_frame("PING"), "bad_frame"),
    "empty array": (raw_frame([]), "bad_frame"),
    "int op": (raw_frame([1, "a", b"x"]), "bad_frame"),
    "bin op": (raw_frame([b"PING"]), "bad_frame"),
    "nil op": (raw_frame([None]), "bad_frame"),
    "unknown op": (raw_frame(["FROB", 1]), "unknown_op"),
    "lower-case op": (raw_frame(["ping"]), "unknown_op"),
    "server op MSG": (raw_frame(["MSG", 1, "a", b"x"]), "unknown_op"),
    "server op WELCOME": (raw_frame(["WELCOME", {}]), "unknown_op"),
    "PUB payload as str": (raw_frame(["PUB", "a", "text"]), "bad_frame"),
    "PUB subject as bin": (raw_frame(["PUB", b"a", b"x"]), "bad_frame"),
    "PUB headers not str": (raw_frame(["PUB", "a", b"x", None, {"n": 1}]), "bad_frame"),
    "PUB headers int key": (raw_frame(["PUB", "a", b"x", None, {1: "v"}]), "bad_frame"),
    "PUB reply_to as int": (raw_frame(["PUB", "a", b"x", 5]), "bad_frame"),
    "PUB too few fields": (raw_frame(["PUB", "a"]), "bad_frame"),
    "PUB too many fields": (raw_frame(["PUB", "a", b"x", None, None, None, None]), "bad_frame"),
    "PUB retain not bool": (raw_frame(["PUB", "a", b"x", None, None, 1]), "bad_frame"),
    "SUB sid as str": (raw_frame(["SUB", "1", "a"]), "bad_frame"),
    "SUB sid negative": (raw_frame(["SUB", -1, "a"]), "bad_frame"),
    "SUB sid as bool": (raw_frame(["SUB", True, "a"]), "bad_frame"),
    "SUB sid 2**63": (raw_frame(["SUB", 2**63, "a"]), "bad_frame"),
    "SUB queue as int": (raw_frame(["SUB", 1, "a", 7]), "bad_frame"),
    "UNSUB max_msgs negative": (raw_frame(["UNSUB", 1, -1]), "bad_frame"),
    "UNSUB max_msgs as str": (raw_frame(["UNSUB", 1, "3"]), "bad_frame"),
    "PING with a field": (raw_frame(["PING", 1]), "bad_frame"),
    "second HELLO": (HELLO, "bad_handshake"),
    "zero-length frame": (b"\x00\x00\x00\x00", "bad_frame"),
}


@pytest.mark.parametrize(
    ("data", "code"), list(BAD_AFTER_HELLO.values()), ids=list(BAD_AFTER_HELLO)
)
async def test_bad_frame_after_hello_is_fatal_and_harms_nobody(
    server: Server, data: bytes, code: str
) -> None:
    with trio.fail_after(5):
        async with bystanders(server.port) as pair, wire_client(server.port) as client:
            await client.send(Sub(1, "bystander.>"))
            await client.flush()
            await client.send_raw(data)
            events = await client.closed()
            assert codes(events) == [("Err", code)]
            await pair.check()
            assert server.statistics().protocol_errors == 1
            # Once it is gone, its subscription is gone too; the bystander's is left.
            await client.aclose()
            await wait_until(lambda: server.statistics().connections == 2)
            assert server.statistics().subscriptions == 1


# (what a client sends first, instead of a good HELLO; the ERR code expected)
BAD_OPENING: dict[str, tuple[bytes, str]] = {
    "PUB first": (raw_frame(["PUB", "bystander.x", b"sneaky"]), "bad_handshake"),
    "SUB first": (raw_frame(["SUB", 1, ">"]), "bad_handshake"),
    "PING first": (raw_frame(["PING"]), "bad_handshake"),
    "garbage first": (frame_bytes(b"\xc1"), "bad_frame"),
    "oversized first": (struct.pack(">I", 2**31), "frame_too_large"),
    "unknown op first": (raw_frame(["CONNECT", {}]), "unknown_op"),
    "HELLO options not a map": (raw_frame(["HELLO", "me"]), "bad_handshake"),
    "HELLO echo not a bool": (raw_frame(["HELLO", {"echo": "no"}]), "bad_handshake"),
    "HELLO unsupported version": (raw_frame(["HELLO", {"version": 2}]), "bad_handshake"),
}


@pytest.mark.parametrize(("data", "code"), list(BAD_OPENING.values()), ids=list(BAD_OPENING))
async def test_bad_opening_is_refused_and_harms_nobody(
    server: Server, data: bytes, code: str
) -> None:
    with trio.fail_after(5):
        async with bystanders(server.port) as pair, wire_client(server.port, hello=False) as bad:
            await bad.send_raw(data)
            events = await bad.closed()
            assert codes(events) == [("Err", code)]
            await pair.check()
        assert server.statistics().protocol_errors == 1
        # A PUB before HELLO was never routed.
        assert server.statistics().messages_in == 2  # the two bystander checks


async def test_frames_before_a_bad_frame_in_the_same_read_are_handled(server: Server) -> None:
    with trio.fail_after(5):
        async with bystanders(server.port) as pair, wire_client(server.port) as client:
            good = raw_frame(["PUB", "bystander.before", b"made it"])
            await client.send_raw(good + raw_frame(["NOPE"]) + good)
            assert codes(await client.closed()) == [("Err", "unknown_op")]
            # Exactly one copy: the frame after the bad one is never read.
            assert await pair.sub.drain() == [Msg(1, "bystander.before", b"made it")]
            await pair.check()


async def test_fatal_err_is_readable_while_the_client_is_still_sending(
    start_server: StartServer,
) -> None:
    # The server reads on after a fatal ERR instead of closing with unread data (a reset that
    # could destroy the ERR before the client reads it).
    with trio.fail_after(5):
        server = await start_server(max_payload=1024)
        async with wire_client(server.port) as client, trio.open_nursery() as nursery:

            async def keep_sending() -> None:
                more = raw_frame(["PUB", "x", bytes(1000)]) * 64
                try:
                    for _ in range(16):
                        await client.send_raw(more)
                except trio.BrokenResourceError:
                    pass

            await client.send(Pub("x", bytes(1025)))
            nursery.start_soon(keep_sending)
            assert codes(await client.closed()) == [("Err", "payload_too_large")]
            assert not client.truncated


@pytest.mark.parametrize("handshake", [True, False], ids=["after-hello", "before-hello"])
async def test_peer_closing_mid_frame_leaves_the_server_running(
    server: Server, handshake: bool
) -> None:
    with trio.fail_after(5):
        async with bystanders(server.port) as pair:
            client = await connect(server.port)
            if handshake:
                await client.send_raw(HELLO)
                await client.expect(Welcome)
            # A header promising 100 bytes, 10 of them, then EOF.
            await client.send_raw(struct.pack(">I", 100) + b"\x95" + b"\x00" * 9)
            await client.stream.send_eof()
            assert codes(await client.closed()) == [("Err", "bad_frame")]
            await client.aclose()
            await pair.check()
            await wait_until(lambda: server.statistics().connections == 2)
        assert server.statistics().protocol_errors == 1


async def test_peer_vanishing_without_a_word_is_not_an_error(server: Server) -> None:
    with trio.fail_after(5):
        async with bystanders(server.port) as pair:
            async with wire_client(server.port) as leaver:
                await leaver.send(Sub(1, "bystander.>"))
                await leaver.flush()
            await wait_until(lambda: server.statistics().connections == 2)
            await pair.check()
            assert server.statistics().subscriptions == 1
        assert server.statistics().protocol_errors == 0


# -- 10. handshake timeout ---------------------------------------------------------------------


async def test_silent_client_gets_handshake_timeout(
    start_server: StartServer, autojump_clock: MockClock
) -> None:
    with trio.fail_after(30):
        server = await start_server(handshake_timeout=2.0)
        async with bystanders(server.port) as pair, wire_client(server.port, hello=False) as mute:
            start = trio.current_time()
            events = await mute.closed()
            assert codes(events) == [("Err", "handshake_timeout")]
            assert trio.current_time() - start == pytest.approx(2.0, abs=0.05)
            await pair.check()
        # Late is not a contract violation: it is not counted as a protocol error.
        assert server.statistics().protocol_errors == 0


async def test_half_a_hello_gets_handshake_timeout(
    start_server: StartServer, autojump_clock: MockClock
) -> None:
    with trio.fail_after(30):
        server = await start_server(handshake_timeout=2.0)
        async with wire_client(server.port, hello=False) as slow:
            start = trio.current_time()
            await slow.send_raw(HELLO[:-3])
            await trio.sleep(1.5)
            events = await slow.closed()
            assert codes(events) == [("Err", "handshake_timeout")]
            assert trio.current_time() - start == pytest.approx(2.0, abs=0.05)


async def test_handshake_timeout_does_not_apply_after_hello(
    start_server: StartServer, autojump_clock: MockClock
) -> None:
    with trio.fail_after(30):
        server = await start_server(handshake_timeout=2.0)
        async with wire_client(server.port) as client:
            await trio.sleep(10)
            await client.send(Sub(1, "x"), Pub("x", b"alive"))
            assert await client.drain() == [Msg(1, "x", b"alive")]


# -- 11. keepalive -----------------------------------------------------------------------------


async def answer_pings(client: WireClient, into: list[Event]) -> None:
    """Answer every server PING with PONG and keep every other event, until the connection ends."""
    while True:
        event = await client.next_event()
        if event == Ping():
            await client.send(Pong())
        into.append(event)


async def test_unanswered_pings_close_a_stale_connection(
    start_server: StartServer, autojump_clock: MockClock
) -> None:
    interval = 1.0
    with trio.fail_after(60):
        server = await start_server(ping_interval=interval, max_pings_outstanding=2)
        async with (
            wire_client(server.port, name="answers") as alive_sub,
            wire_client(server.port, name="answers-too") as alive_pub,
            wire_client(server.port, name="stale") as stale,
        ):
            start = trio.current_time()
            seen_sub: list[Event] = []
            seen_pub: list[Event] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer_pings, alive_sub, seen_sub)
                nursery.start_soon(answer_pings, alive_pub, seen_pub)
                await alive_sub.send(Sub(1, "still.here"))
                events = await stale.closed()
                closed_after = trio.current_time() - start
                # Two PINGs go unanswered; at the third interval the client is closed.
                assert codes(events) == [("Ping", ""), ("Ping", ""), ("Err", "stale_connection")]
                assert closed_after == pytest.approx(3 * interval, abs=0.1)
                # The clients that answer stay connected through many intervals.
                await trio.sleep(10.5 * interval)
                await alive_pub.send(Pub("still.here", b"yes"))
                await wait_until(lambda: Msg(1, "still.here", b"yes") in seen_sub)
                nursery.cancel_scope.cancel()
            assert seen_sub.count(Ping()) >= 10
            assert seen_pub.count(Ping()) >= 10
            assert server.statistics().connections == 2
        # Silence is not a contract violation: it is not counted as a protocol error.
        assert server.statistics().protocol_errors == 0


async def test_any_traffic_postpones_the_server_ping(
    start_server: StartServer, autojump_clock: MockClock
) -> None:
    interval = 1.0
    with trio.fail_after(30):
        server = await start_server(ping_interval=interval, max_pings_outstanding=1)
        async with wire_client(server.port) as chatty:
            # Our own PINGs every half interval count as life: the server never needs to ask.
            for _ in range(10):
                await trio.sleep(interval / 2)
                assert await chatty.drain() == []
            start = trio.current_time()
            events = await chatty.closed()
            assert codes(events) == [("Ping", ""), ("Err", "stale_connection")]
            assert trio.current_time() - start == pytest.approx(2 * interval, abs=0.1)


# -- 12. slow consumers ------------------------------------------------------------------------

#: Small kernel receive buffer for the client that stops reading, so the server's writes to it
#: block after a few kilobytes instead of megabytes.
SLOW_RCVBUF = 4096

#: Each outbox bound in turn: big payloads against the byte bound, small ones against the count.
#: The bounds leave room for what one batch routes, so the healthy subscriber is never slow.
BOUNDS = {
    "bytes": (16 * 1024, {"max_pending_messages": 50, "max_pending_bytes": 256 * 1024}),
    "messages": (200, {"max_pending_messages": 50, "max_pending_bytes": 1024 * 1024}),
}


def numbered(i: int, size: int) -> bytes:
    return struct.pack(">I", i) + bytes(size - 4)


def number(msg: Msg) -> int:
    return int(struct.unpack_from(">I", msg.payload)[0])


class Collector:
    """Reads events into `numbers` (MSGs) and `others` until cancelled."""

    def __init__(self, client: WireClient) -> None:
        self.client = client
        self.numbers: list[int] = []
        self.others: list[Event] = []

    async def run(self) -> None:
        while True:
            event = await self.client.next_event()
            if type(event) is Msg:
                self.numbers.append(number(event))
            else:
                self.others.append(event)


async def flood(pub: WireClient, start: int, count: int, size: int) -> None:
    """Publish numbered messages start.. on "flood", waiting for a PONG after every 16.

    The PONGs pace the publisher so one read of the server routes at most 16 messages; that
    keeps the healthy subscriber's outbox within its small bound.
    """
    for first in range(start, start + count, 16):
        await pub.send(*(Pub("flood", numbered(i, size)) for i in range(first, first + 16)))
        await pub.flush()


async def flood_until(pub: WireClient, size: int, done: Callable[[], bool]) -> int:
    """Flood in rounds of 64 until `done()` holds after a round; return how many were sent."""
    sent = 0
    while not done():
        assert sent < 4096, f"{sent} messages published and the condition still does not hold"
        await flood(pub, sent, 64, size)
        sent += 64
    return sent


async def subscribe_both(healthy: WireClient, slow: WireClient) -> None:
    for client in (healthy, slow):
        await client.send(Sub(1, "flood"))
        await client.flush()


@pytest.mark.parametrize(("size", "limits"), list(BOUNDS.values()), ids=list(BOUNDS))
async def test_slow_consumer_is_disconnected_and_nobody_else_notices(
    start_server: StartServer, size: int, limits: dict[str, int]
) -> None:
    with trio.fail_after(20):
        server = await start_server(slow_consumer_policy="disconnect", **limits)
        async with (
            bystanders(server.port) as pair,
            wire_client(server.port, name="healthy") as healthy,
            wire_client(server.port, name="slow", rcvbuf=SLOW_RCVBUF) as slow,
            wire_client(server.port, name="publisher") as pub,
            trio.open_nursery() as nursery,
        ):
            await subscribe_both(healthy, slow)
            collector = Collector(healthy)
            nursery.start_soon(collector.run)
            # The slow client never reads, and the publisher is never held up by it.
            sent = await flood_until(pub, size, lambda: server.statistics().slow_consumers == 1)
            await flood(pub, sent, 64, size)
            sent += 64
            await wait_until(lambda: len(collector.numbers) >= sent)
            assert collector.numbers == list(range(sent))
            assert collector.others == []
            # The slow client got a prefix of the stream in order, then was closed: with ERR
            # slow_consumer unless the server was in the middle of writing a frame to it.
            events = await slow.closed()
            msgs = [e for e in events if type(e) is Msg]
            assert [number(m) for m in msgs] == list(range(len(msgs)))
            assert len(msgs) < sent
            rest = codes(events[len(msgs) :])
            assert rest == [("Err", "slow_consumer")] or (rest == [] and slow.truncated)
            await slow.aclose()
            await wait_until(lambda: server.statistics().connections == 4)
            stats = server.statistics()
            assert stats.slow_consumers == 1
            assert stats.subscriptions == 2  # the healthy one and the bystander
            assert stats.protocol_errors == 0
            await pair.check()
            nursery.cancel_scope.cancel()


async def resume_reading(slow: WireClient, sent: int) -> tuple[list[int], list[Err]]:
    """Read as a slow client catching up: the numbers received and the ERRs, until they account
    for all `sent` (or three flushes did not get there)."""
    received: list[int] = []
    reports: list[Err] = []
    for _ in range(3):
        for event in await slow.drain():
            if type(event) is Msg:
                received.append(number(event))
            else:
                assert type(event) is Err, event
                reports.append(event)
        if reports and len(received) + reports[-1].details["total"] == sent:
            break
    return received, reports


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
@pytest.mark.parametrize(("size", "limits"), list(BOUNDS.values()), ids=list(BOUNDS))
async def test_drop_policy_keeps_the_slow_consumer_and_reports_drops(
    start_server: StartServer, policy: str, size: int, limits: dict[str, int]
) -> None:
    with trio.fail_after(20):
        server = await start_server(slow_consumer_policy=policy, **limits)
        async with (
            bystanders(server.port) as pair,
            wire_client(server.port, name="healthy") as healthy,
            wire_client(server.port, name="slow", rcvbuf=SLOW_RCVBUF) as slow,
            wire_client(server.port, name="publisher") as pub,
            trio.open_nursery() as nursery,
        ):
            await subscribe_both(healthy, slow)
            collector = Collector(healthy)
            nursery.start_soon(collector.run)
            sent = await flood_until(pub, size, lambda: server.statistics().dropped_messages > 0)
            await flood(pub, sent, 64, size)
            sent += 64
            await wait_until(lambda: len(collector.numbers) >= sent)
            assert collector.numbers == list(range(sent))
            assert collector.others == []
            # The slow client resumes reading: messages in order without duplicates, and
            # ERR messages_dropped reports that account for every one it did not get.
            received, reports = await resume_reading(slow, sent)
            assert received == sorted(set(received))
            assert [r.code for r in reports] == ["messages_dropped"] * len(reports)
            dropped = [r.details["dropped"] for r in reports]
            totals = [r.details["total"] for r in reports]
            assert totals == [sum(dropped[: i + 1]) for i in range(len(dropped))]
            assert len(received) + totals[-1] == sent
            if policy == "drop_newest":
                # Once full, everything newer was refused: what arrived is the start.
                assert received == list(range(len(received)))
            else:
                # The oldest queued were discarded for the newest, so the last one arrived.
                assert received[-1] == sent - 1
            stats = server.statistics()
            assert stats.dropped_messages == totals[-1]
            assert stats.slow_consumers == 1
            assert stats.connections == 5
            # Still connected and caught up: new messages flow again, with nothing dropped.
            await pub.send(Pub("flood", numbered(sent, size)))
            await pub.flush()
            assert [number(e) for e in await slow.drain()] == [sent]
            await pair.check()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
async def test_ping_to_a_full_outbox_is_answered_under_drop_policies(
    start_server: StartServer, policy: str
) -> None:
    # The outbox holds exactly four of these frames, so when it is full it is full to the byte.
    frame_size = 16_405  # a MSG frame on "flood" with sid 1 and 16 KiB of payload
    size = 16 * 1024
    with trio.fail_after(20):
        server = await start_server(
            slow_consumer_policy=policy,
            max_pending_messages=1000,
            max_pending_bytes=4 * (frame_size + MESSAGE_OVERHEAD),
        )
        async with (
            wire_client(server.port, name="slow", rcvbuf=SLOW_RCVBUF) as slow,
            wire_client(server.port, name="publisher") as pub,
        ):
            await slow.send(Sub(1, "flood"))
            await slow.flush()
            sent = await flood_until(pub, size, lambda: server.statistics().dropped_messages > 0)
            # A client whose outbox is full asks for a PONG: a drop policy keeps it connected,
            # and control frames are never dropped, so the PONG must come.
            try:
                received, reports = await resume_reading(slow, sent)
            except (Closed, RemoteProtocolError) as error:
                pytest.fail(f"a PING closed the client under {policy}: {error!r}")
            assert len(received) + reports[-1].details["total"] == sent
            stats = server.statistics()
            assert stats.connections == 2
            assert stats.dropped_messages == reports[-1].details["total"]


# -- 13. write_timeout -------------------------------------------------------------------------


async def test_write_timeout_closes_a_client_that_stops_reading(start_server: StartServer) -> None:
    write_timeout = 0.3
    size = 16 * 1024
    with trio.fail_after(10):
        # Bounds far above what is sent, so only the write timeout can catch the slow client.
        server = await start_server(write_timeout=write_timeout, slow_consumer_policy="drop_newest")
        async with (
            bystanders(server.port) as pair,
            wire_client(server.port, name="healthy") as healthy,
            wire_client(server.port, name="slow", rcvbuf=SLOW_RCVBUF) as slow,
            wire_client(server.port, name="publisher") as pub,
            trio.open_nursery() as nursery,
        ):
            await subscribe_both(healthy, slow)
            collector = Collector(healthy)
            nursery.start_soon(collector.run)
            start = trio.current_time()
            await flood(pub, 0, 64, size)
            await wait_until(lambda: server.statistics().slow_consumers == 1)
            # The slow client's first write started after `start`, so it cannot time out sooner.
            assert trio.current_time() - start >= write_timeout
            await wait_until(lambda: len(collector.numbers) >= 64)
            assert collector.numbers == list(range(64))
            events = await slow.closed()
            msgs = [e for e in events if type(e) is Msg]
            assert [number(m) for m in msgs] == list(range(len(msgs)))
            assert len(msgs) < 64
            stats = server.statistics()
            assert stats.dropped_messages == 0
            assert stats.slow_consumers == 1
            await pair.check()
            nursery.cancel_scope.cancel()


async def test_a_keepalive_deadline_that_passes_as_a_message_arrives_does_not_cut_the_send(
    start_server: StartServer,
) -> None:
    # The writer's cancel scope holds the keepalive deadline while it waits. If that deadline
    # passes just as a delivery wakes the writer, the send that follows must not be taken for
    # a write that timed out.
    interval = 0.2
    with trio.fail_after(10):
        server = await start_server(ping_interval=interval)
        async with wire_client(server.port, name="sub") as sub:
            await sub.send(Sub(1, "x"))
            await sub.flush()
            await trio.testing.wait_all_tasks_blocked()
            (session,) = faults.connections(server, "sub")
            adapter = session.adapter
            adapter.deliver(adapter.subscriptions[1], ("x", b"on time", None, None, False))
            # Block the whole run past the deadline, so it expires before the woken writer runs.
            time.sleep(interval * 1.5)
            assert [await sub.next_event(), await sub.next_event()] == [
                Msg(1, "x", b"on time"),
                Ping(),
            ]
            await sub.send(Pong())
            assert await sub.drain() == []
        assert server.statistics().slow_consumers == 0
