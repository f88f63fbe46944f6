"""Every limit over real sockets, exactly at the edge and one past it."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import msgpack
import pytest
import trio
from wire import StartServer, bystanders, raw_frame, wait_until, wire_client

import broker
from broker.protocol import (
    MSG_GROWTH,
    Err,
    ErrorCode,
    Msg,
    Pub,
    RemoteProtocolError,
    Sub,
    Unsub,
)
from broker.server import Server
from broker.server.outbox import MESSAGE_OVERHEAD, WRITE_BATCH_BYTES, Outbox


async def test_payload_of_exactly_max_payload_is_accepted_one_more_is_fatal(
    start_server: StartServer,
) -> None:
    with trio.fail_after(5):
        server = await start_server(max_payload=1000)
        async with (
            bystanders(server.port) as pair,
            wire_client(server.port) as sub,
            wire_client(server.port) as pub,
        ):
            await sub.send(Sub(1, "big"))
            await sub.flush()
            await pub.send(Pub("big", b"a" * 1000))
            await pub.flush()
            assert await sub.drain() == [Msg(1, "big", b"a" * 1000)]
            await pub.send(Pub("big", b"b" * 1001))
            events = await pub.closed()
            assert [(e.code, type(e)) for e in events] == [(ErrorCode.PAYLOAD_TOO_LARGE, Err)]
            assert "1001" in events[0].message
            assert await sub.drain() == []
            await pair.check()
        assert server.statistics().protocol_errors == 1


def pub_frame_of_size(size: int) -> bytes:
    """A valid PUB frame whose body is exactly `size` bytes, padded with a header value."""
    pad = size
    while True:
        body = msgpack.packb(["PUB", "edge", b"p", None, {"pad": "x" * pad}])
        if len(body) == size:
            return struct.pack(">I", size) + body
        pad -= len(body) - size


async def test_frame_of_exactly_max_frame_is_accepted_one_more_is_fatal(
    start_server: StartServer,
) -> None:
    with trio.fail_after(5):
        server = await start_server(max_payload=1000, max_frame=3000)
        assert server.config.frame_limit == 3000
        async with wire_client(server.port) as sub, wire_client(server.port) as pub:
            await sub.send(Sub(1, "edge"))
            await sub.flush()
            await pub.send_raw(pub_frame_of_size(3000))
            await pub.flush()
            [msg] = await sub.drain()
            assert type(msg) is Msg
            assert msg.payload == b"p"
            await pub.send_raw(pub_frame_of_size(3001))
            [err] = await pub.closed()
            assert type(err) is Err
            assert err.code == ErrorCode.FRAME_TOO_LARGE
            assert await sub.drain() == []


async def test_a_message_from_a_largest_frame_fits_max_frame_plus_msg_growth(
    start_server: StartServer,
) -> None:
    # A PUB frame of exactly max_frame is legal, and the MSG made of it may be MSG_GROWTH bytes
    # longer (a large sid, omitted nils): a receiver sized by the contract must still take it.
    with trio.fail_after(5):
        server = await start_server(max_payload=1000, max_frame=3000)
        async with wire_client(server.port) as sub, wire_client(server.port) as pub:
            sub.conn.max_frame = sub.info["max_frame"] + MSG_GROWTH
            await sub.send(Sub(2**40, "edge"))
            await sub.flush()
            await pub.send_raw(pub_frame_of_size(3000))
            await pub.flush()
            try:
                [msg] = await sub.drain()
            except RemoteProtocolError as error:
                pytest.fail(f"the MSG for a 3000-byte PUB exceeds max_frame + growth: {error!r}")
            assert type(msg) is Msg
            assert msg.payload == b"p"


async def test_the_async_client_takes_a_message_from_a_largest_frame(
    start_server: StartServer,
) -> None:
    # As above, through broker.connect: its codec must allow for MSG_GROWTH too, or the
    # largest legal publish (and a retained one, replayed on every reconnection) breaks it.
    with trio.fail_after(5):
        server = await start_server(max_payload=1000, max_frame=3000)
        lost: list[object] = []
        async with (
            broker.connect(server.url, reconnect=False, on_disconnected=lost.append) as client,
            client.subscribe("edge") as subscription,
            wire_client(server.port) as pub,
        ):
            await client.flush()
            await pub.send_raw(pub_frame_of_size(3000))
            await pub.flush()
            message = await subscription.next()
            assert message.payload == b"p"
            assert lost == []


@pytest.mark.parametrize("length", [1024 * 1024 + 64 * 1024 + 1, 2**32 - 1])
async def test_oversized_length_header_is_refused_before_the_body(
    server: Server, length: int
) -> None:
    # Only the 4-byte header is sent: the ERR must come without the server waiting for a body.
    assert length > server.config.frame_limit
    with trio.fail_after(5):
        async with bystanders(server.port) as pair, wire_client(server.port) as client:
            await client.send_raw(struct.pack(">I", length))
            [err] = await client.closed()
            assert type(err) is Err
            assert err.code == ErrorCode.FRAME_TOO_LARGE
            assert str(length) in err.message
            await pair.check()


async def test_max_subscriptions_edge_is_not_fatal(start_server: StartServer) -> None:
    with trio.fail_after(5):
        server = await start_server(max_subscriptions=5)
        async with wire_client(server.port) as client:
            await client.send(*(Sub(sid, f"s.{sid}") for sid in range(1, 6)))
            assert await client.drain() == []
            await client.send(Sub(6, "s.6"))
            [err] = await client.drain()
            assert type(err) is Err
            assert (err.code, err.details) == (ErrorCode.TOO_MANY_SUBSCRIPTIONS, {"sid": 6})
            assert "5" in err.message
            assert server.statistics().subscriptions == 5
            # Still connected, the five still work, and the sixth did not sneak in.
            await client.send(Pub("s.5", b"five"), Pub("s.6", b"six"))
            assert await client.drain() == [Msg(5, "s.5", b"five")]
            # Freeing one makes room again.
            await client.send(Unsub(1), Sub(6, "s.6"), Pub("s.6", b"six"))
            assert await client.drain() == [Msg(6, "s.6", b"six")]


async def test_duplicate_sid_is_refused_but_not_fatal(server: Server) -> None:
    with trio.fail_after(5):
        async with wire_client(server.port) as client:
            await client.send(Sub(1, "first"), Sub(1, "second"))
            [err] = await client.drain()
            assert type(err) is Err
            assert (err.code, err.details) == (ErrorCode.BAD_SID, {"sid": 1})
            await client.send(Pub("first", b"1"), Pub("second", b"2"))
            assert await client.drain() == [Msg(1, "first", b"1")]


async def test_max_connections_edge(start_server: StartServer) -> None:
    with trio.fail_after(5):
        server = await start_server(max_connections=3)
        async with (
            wire_client(server.port) as first,
            wire_client(server.port),
            wire_client(server.port) as third,
        ):
            assert server.statistics().connections == 3
            # The fourth gets the ERR at once, before it even says HELLO, and is closed.
            async with wire_client(server.port, hello=False) as fourth:
                with trio.fail_after(2):
                    [err] = await fourth.closed()
            assert type(err) is Err
            assert err.code == ErrorCode.MAX_CONNECTIONS
            assert "3" in err.message
            assert server.statistics().refused_connections == 1
            # The three are unharmed.
            await third.send(Sub(1, "x"))
            await third.flush()
            await first.send(Pub("x", b"ok"))
            assert await third.next_event() == Msg(1, "x", b"ok")
            # One leaves; a new one is welcome.
            await first.aclose()
            await wait_until(lambda: server.statistics().connections == 2)
            async with wire_client(server.port) as fifth:
                assert fifth.info["client_id"] > third.info["client_id"]
                await fifth.flush()
        assert server.statistics().refused_connections == 1
        assert server.statistics().total_connections == 4


@pytest.mark.parametrize(
    ("subject", "ok"),
    [
        ("a" * 16, True),
        ("a" * 17, False),
        ("é" * 8, True),  # 16 bytes of UTF-8
        ("é" * 8 + "a", False),  # 17 bytes of UTF-8, 9 characters
        ("a.b.c.d", True),
        ("a.b.c.d.e", False),
    ],
)
async def test_subject_length_and_tokens_edge(
    start_server: StartServer, subject: str, ok: bool
) -> None:
    with trio.fail_after(5):
        server = await start_server(max_subject_length=16, max_subject_tokens=4)
        async with wire_client(server.port) as client:
            await client.send(Sub(1, subject))
            await client.send(Pub(subject, b"x"))
            events = await client.drain()
            if ok:
                assert events == [Msg(1, subject, b"x")]
            else:
                assert [(type(e), e.code, e.details) for e in events] == [
                    (Err, ErrorCode.BAD_SUBJECT, {"sid": 1}),
                    (Err, ErrorCode.BAD_SUBJECT, {"subject": subject}),
                ]
                assert server.statistics().subscriptions == 0
            # Never fatal: the connection still works.
            await client.send(Sub(2, "fine"), Pub("fine", b"y"))
            assert await client.drain() == [Msg(2, "fine", b"y")]


async def test_reply_to_is_checked_like_a_subject(start_server: StartServer) -> None:
    with trio.fail_after(5):
        server = await start_server(max_subject_length=16)
        async with wire_client(server.port) as client:
            await client.send(Sub(1, "q"), Sub(2, "r.>"))
            await client.send(Pub("q", b"1", "r." + "a" * 14))
            assert await client.drain() == [Msg(1, "q", b"1", "r." + "a" * 14)]
            for bad in ("r." + "a" * 15, "r.*", "$r.x"):
                await client.send(Pub("q", b"2", bad))
                [err] = await client.drain()
                assert type(err) is Err
                assert (err.code, err.details) == (ErrorCode.BAD_SUBJECT, {"subject": "q"})


async def test_dollar_subjects_can_be_subscribed_not_published(server: Server) -> None:
    with trio.fail_after(5):
        async with wire_client(server.port) as client:
            await client.send(Sub(1, "$SYS.>"), Sub(2, ">"))
            assert await client.drain() == []
            await client.send(Pub("$SYS.hello", b"x"))
            [err] = await client.drain()
            assert type(err) is Err
            assert (err.code, err.details) == (ErrorCode.BAD_SUBJECT, {"subject": "$SYS.hello"})
            assert server.statistics().subscriptions == 2
            assert server.statistics().messages_out == 0


@pytest.mark.parametrize(
    ("op", "bad"),
    [
        ("sub", "a..b"),
        ("sub", "a*"),
        ("sub", ">.a"),
        ("sub", ""),
        ("sub", "a b"),
        ("pub", "a.*"),
        ("pub", "a.>"),
        ("pub", ".a"),
        ("pub", ""),
        ("pub", "a\tb"),
    ],
)
async def test_invalid_subjects_are_refused_but_not_fatal(
    server: Server, op: str, bad: str
) -> None:
    with trio.fail_after(5):
        async with wire_client(server.port) as client:
            await client.send(Sub(1, "ok"))
            await client.send(Sub(2, bad) if op == "sub" else Pub(bad, b"x"))
            [err] = await client.drain()
            assert type(err) is Err
            details = {"sid": 2} if op == "sub" else {"subject": bad}
            assert (err.code, err.details) == (ErrorCode.BAD_SUBJECT, details)
            await client.send(Pub("ok", b"still"))
            assert await client.drain() == [Msg(1, "ok", b"still")]
            assert server.statistics().protocol_errors == 1


async def test_invalid_queue_name_is_refused_but_not_fatal(server: Server) -> None:
    with trio.fail_after(5):
        async with wire_client(server.port) as client:
            await client.send_raw(raw_frame(["SUB", 4, "jobs", "has space"]))
            [err] = await client.drain()
            assert type(err) is Err
            assert (err.code, err.details) == (ErrorCode.BAD_SUBJECT, {"sid": 4})
            assert server.statistics().subscriptions == 0


def test_outbox_bytes_bound_counts_the_batch_being_sent() -> None:
    # A client that stops reading mid-batch pins the batch as well as what queues behind it:
    # both count, so max_pending_bytes bounds the memory the client holds.
    frame = MESSAGE_OVERHEAD + 100
    outbox = Outbox(max_messages=100, max_bytes=4 * frame)
    assert all(outbox.offer(b"h" * 10, b"t" * 90) for _ in range(4))
    assert not outbox.offer(b"h" * 10, b"t" * 90)
    batch = outbox.take_batch()
    assert (len(batch), outbox.sending, outbox.bytes) == (400, 400, 0)
    # While the batch is on its way only the rest of the bound is free.
    room = (4 * frame - 400) // frame
    assert room < 4
    assert all(outbox.offer(b"h" * 10, b"t" * 90) for _ in range(room))
    assert not outbox.offer(b"h" * 10, b"t" * 90)
    outbox.sent()
    assert outbox.sending == 0
    assert all(outbox.offer(b"h" * 10, b"t" * 90) for _ in range(4 - room))
    assert not outbox.offer(b"h" * 10, b"t" * 90)
    # One message always fits an empty queue, however large the batch being sent.
    outbox.take_batch()
    huge = Outbox(max_messages=100, max_bytes=4 * frame)
    huge.offer(b"h", b"t" * 10_000)
    huge.take_batch()
    assert huge.offer(b"h" * 10, b"t" * 90)
    assert not huge.offer(b"h" * 10, b"t" * 90)


def test_a_backlog_goes_out_in_batches_and_the_books_balance() -> None:
    outbox = Outbox(max_messages=10_000, max_bytes=64 * 1024 * 1024)
    payload = b"t" * 1000
    for n in range(3000):  # about 3 MB queued, with control frames among the messages
        outbox.offer(b"head%04d" % n, payload)
        if n % 100 == 0:
            outbox.push_control(b"PONG")
    sizes = []
    taken = b""
    while outbox:
        batch = outbox.take_batch()
        sizes.append(len(batch))
        taken += batch
        outbox.sent()
    assert max(sizes) <= WRITE_BATCH_BYTES + 1008 and len(sizes) > 1
    assert taken.count(b"head") == 3000 and taken.count(b"PONG") == 30
    assert taken.endswith(b"head2999" + payload)  # order kept
    assert (outbox.messages, outbox.bytes, outbox.control_bytes, outbox.sending) == (0, 0, 0, 0)


def test_a_queued_replay_is_taken_at_once_streamed_in_chunks_and_never_counts() -> None:
    # The SUBs deferred behind a replay go ahead once it is taken, not once it is sent: a
    # client that writes much before it reads must not wait on its own replay. It is sent in
    # chunks made as the writer reaches them, so it never costs the client a copy of the store.
    outbox = Outbox(max_messages=10_000, max_bytes=64 * 1024)
    made = 0

    def frames() -> Iterator[tuple[bytes, bytes]]:
        nonlocal made
        for n in range(40):  # 4 MB, far past both bounds
            made += 1
            yield b"r%02d" % n, b"v" * 100_000

    outbox.offer_replay(frames())
    outbox.offer(b"live", b"x")
    assert outbox.replaying == 1 and made == 0
    first = outbox.take_batch()
    assert WRITE_BATCH_BYTES <= len(first) < WRITE_BATCH_BYTES + 100_003
    assert made == len(first) // 100_003  # only this chunk's frames were made
    assert outbox.replaying == 0 and outbox.sending == 0  # taken; outside the bounds
    assert outbox.offer(b"live", b"y") and outbox.offer(b"live", b"z")  # room, not 4 MB over
    sent = [first]
    while outbox.streaming is not None:
        outbox.sent()
        sent.append(outbox.take_batch())
    assert sum(len(chunk) for chunk in sent) == 40 * 100_003
    assert outbox.take_batch() == b"livexliveylivez"  # the live ones, after the replay
