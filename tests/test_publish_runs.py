"""Runs of publishes to one subject: decoded without msgpack, routed with one check.

A publisher streaming to one subject sends frames that repeat each other up to the payload.
The server's codec hands such a run over as one `PubRun` (`Connection.events_and_tails`), the
hub publishes it with its subject checked and matched once (`Hub.publish_run`), and delivery
joins each payload onto one encoded start (`plain_tail_head`). Each of these must be exactly
what the PUBs one by one would have been: the same events, the same refusals, the same
deliveries in the same order, and the same counters.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
from typing import Any

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from test_hub import Recorder, make_hub
from wire import StartServer, wire_client

from broker.config import ResponsesConfig
from broker.errors import ErrorCode
from broker.hub import FANOUT_STEP, Hub, Refused, Subscription
from broker.message import Message
from broker.permissions import ClientPermissions, Permissions, Rules
from broker.protocol import (
    Connection,
    Err,
    Event,
    Hello,
    Msg,
    Ping,
    Pub,
    PubRun,
    Role,
    Sub,
    Unsub,
    Welcome,
    encode_frame,
    encode_msg_tail,
    plain_tail_head,
)
from broker.protocol.native import PLAIN_TAIL_END

# -- the codec -----------------------------------------------------------------------------------


def _server() -> Connection:
    server = Connection(Role.SERVER)
    server.receive_data(encode_frame(Hello({})))
    assert server.next_event() == Hello({})
    return server


def _expand(events: list[Any]) -> list[Event]:
    """The PUBs a `PubRun` stands for, in place."""
    out: list[Event] = []
    for event in events:
        if type(event) is PubRun:
            out.extend(Pub(event.subject, payload) for payload in event.payloads)
        else:
            out.append(event)
    return out


def test_pubs_that_repeat_the_last_plain_pub_up_to_their_payload_arrive_as_one_run() -> None:
    payloads = [bytes([n]) * 10 for n in range(8)]
    server = _server()
    server.receive_data(
        b"".join(encode_frame(Pub("a.b", p)) for p in payloads[:5])
        + encode_frame(Ping())
        + b"".join(encode_frame(Pub("a.b", p)) for p in payloads[5:7])
    )
    events, forwards = server.events_and_tails()
    # A run starts after two alike PUBs (decoded by msgpack). Another frame ends it, and the
    # next PUB alike to the last starts the next.
    assert events == [
        Pub("a.b", payloads[0]),
        Pub("a.b", payloads[1]),
        PubRun("a.b", payloads[2:5]),
        Ping(),
        Pub("a.b", payloads[5]),
        PubRun("a.b", payloads[6:7]),
    ]
    assert [type(f) for f in forwards] == [tuple, tuple, type(None), type(None), tuple, type(None)]
    assert forwards[0] is not None and forwards[0][0] is events[0]
    # One subject object for the run: the server's memo of the encoded tail keys on it.
    assert events[2].subject is events[0].subject
    # The run goes on in the next read.
    server.receive_data(encode_frame(Pub("a.b", payloads[7])))
    assert server.events_and_tails() == ([PubRun("a.b", payloads[7:])], [None])


def test_a_different_subject_size_or_shape_starts_over_with_msgpack() -> None:
    server = _server()
    frames = [
        Pub("a", b"xx"),
        Pub("a", b"yy"),
        Pub("a", b"zz"),
        Pub("a", b"www"),  # another size
        Pub("a", b"vvv"),
        Pub("a", b"uuu"),
        Pub("b", b"uuu"),  # another subject
        Pub("b", b"ttt"),
        Pub("b", b"sss"),
        Pub("b", b"rrr", "reply"),  # a reply subject: never part of a run
        Pub("b", b"qqq"),
        Pub("b", b"ppp"),
        Pub("b", b"ooo", None, None, True),  # retained: neither
        Pub("b", b"nnn"),
        Pub("b", b"mmm"),
    ]
    server.receive_data(b"".join(map(encode_frame, frames)))
    events, _ = server.events_and_tails()
    assert events == [
        Pub("a", b"xx"),
        Pub("a", b"yy"),
        PubRun("a", [b"zz"]),
        Pub("a", b"www"),
        Pub("a", b"vvv"),
        PubRun("a", [b"uuu"]),
        Pub("b", b"uuu"),
        Pub("b", b"ttt"),
        PubRun("b", [b"sss"]),
        Pub("b", b"rrr", "reply"),
        Pub("b", b"qqq"),
        PubRun("b", [b"ppp"]),
        Pub("b", b"ooo", None, None, True),
        Pub("b", b"nnn"),
        PubRun("b", [b"mmm"]),
    ]


def test_only_the_servers_batch_decode_makes_runs() -> None:
    frames = b"".join(encode_frame(Pub("a", b"%02d" % n)) for n in range(5))
    server = _server()
    server.receive_data(frames)
    assert server.events() == [Pub("a", b"%02d" % n) for n in range(5)]


def test_each_frame_of_a_run_counts_towards_the_limit_and_a_partial_frame_waits() -> None:
    server = _server()
    data = b"".join(encode_frame(Pub("a", b"%03d" % n)) for n in range(10))
    server.receive_data(data[:-3])
    first, _ = server.events_and_tails(4)
    assert first == [Pub("a", b"000"), Pub("a", b"001"), PubRun("a", [b"002", b"003"])]
    second, _ = server.events_and_tails(4)
    assert second == [PubRun("a", [b"%03d" % n for n in range(4, 8)])]
    third, _ = server.events_and_tails(4)
    assert third == [PubRun("a", [b"008"])]  # the last frame lacks 3 bytes
    server.receive_data(data[-3:])
    fourth, _ = server.events_and_tails(4)
    assert fourth == [PubRun("a", [b"009"])]


def test_a_bad_frame_ends_a_run_and_what_came_before_is_kept() -> None:
    server = _server()
    good = b"".join(encode_frame(Pub("a", b"%02d" % n)) for n in range(3))
    server.receive_data(good + struct.pack(">I", 2) + b"\xc1\xc1")
    events, _ = server.events_and_tails()
    assert _expand(events) == [Pub("a", b"%02d" % n) for n in range(3)]
    with pytest.raises(Exception, match="msgpack"):
        server.events_and_tails()


_subjects = st.sampled_from(["a", "a.b", "s" * 31, "t" * 32, "é.ü", "u" * 300])
_sizes = st.sampled_from([0, 1, 2, 255, 256, 65_535, 65_536])


@st.composite
def _frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["pub", "pub", "pub", "pub", "request", "retain", "ping", "sub"]))
    if kind == "ping":
        return encode_frame(Ping())
    if kind == "sub":
        return encode_frame(Sub(1, draw(_subjects)))
    subject = draw(_subjects)
    payload = bytes([draw(st.integers(0, 255))]) * draw(_sizes)
    if kind == "request":
        return encode_frame(Pub(subject, payload, "reply"))
    if kind == "retain":
        return encode_frame(Pub(subject, payload, None, None, True))
    encoded = subject.encode()
    if len(encoded) < 256 and draw(st.booleans()):
        # The same PUB with its subject in a longer encoding (str 8): still a run's start.
        body = b"\x93\xa3PUB\xd9" + bytes([len(encoded)]) + encoded + msgpack.packb(payload)
        return struct.pack(">I", len(body)) + body
    return encode_frame(Pub(subject, payload))


@settings(max_examples=150, deadline=None)
@given(
    frames=st.lists(st.lists(_frames(), min_size=1, max_size=4), min_size=1, max_size=12),
    cuts=st.lists(st.integers(1, 70_000), max_size=8),
    limits=st.lists(st.sampled_from([-1, 1, 2, 3, 512]), min_size=1, max_size=4),
)
def test_runs_stand_for_exactly_the_pubs_msgpack_would_decode(
    frames: list[list[bytes]], cuts: list[int], limits: list[int]
) -> None:
    # Each drawn frame repeated (runs), the stream cut anywhere, taken with any limit.
    data = b"".join(
        frame * (1 + index % 3) for group in frames for index, frame in enumerate(group)
    )
    plain = _server()
    plain.receive_data(data)
    expected = plain.events()
    server = _server()
    got: list[Any] = []
    position = 0
    for turn, cut in enumerate([*cuts, len(data)]):
        server.receive_data(data[position : position + cut])
        position += cut
        while True:
            events, forwards = server.events_and_tails(limits[turn % len(limits)])
            if not events:
                break
            assert len(forwards) == len(events)
            for event, forward in zip(events, forwards, strict=True):
                if type(event) is PubRun:
                    assert forward is None and event.payloads
                    assert len({len(payload) for payload in event.payloads}) == 1
                elif forward is not None:
                    # The PUB's own bytes: a subject in a longer encoding stays so.
                    _pub, body, stop, pad = forward
                    assert msgpack.unpackb(b"\x94" + body[5:stop] + pad) == [*event[:4]]
            got.extend(events)
        if position >= len(data):
            break
    server.receive_data(data[position:])
    got.extend(server.events_and_tails()[0])
    assert _expand(got) == expected


def _client() -> Connection:
    client = Connection(Role.CLIENT)
    client.send(Hello({}))
    client.receive_data(encode_frame(Welcome({})))
    assert client.next_event() == Welcome({})
    return client


@st.composite
def _msgs(draw: st.DrawFn, keys: list[tuple[int, str, int]]) -> bytes:
    sid, subject, size = draw(st.sampled_from(keys))
    payload = bytes([draw(st.integers(0, 255))]) * size
    shape = draw(st.sampled_from(["plain", "plain", "plain", "reply", "headers", "retained"]))
    if shape == "reply":
        return encode_frame(Msg(sid, subject, payload, "r"))
    if shape == "headers":
        return encode_frame(Msg(sid, subject, payload, None, {"k": "v"}))
    if shape == "retained":
        return encode_frame(Msg(sid, subject, payload, None, None, True))
    if draw(st.booleans()):
        # Equal to a plain MSG up to its payload, then other one-byte values than two nils.
        tail = draw(st.sampled_from([b"\xc0\xc3", b"\xa0\xc0", b"\xc0\x00", b"\xc0\xc0"]))
        head = msgpack.packb(["MSG", sid, subject, payload, None, None])[: -2 - len(payload)]
        body = head + payload + tail
        return struct.pack(">I", len(body)) + body
    return encode_frame(Msg(sid, subject, payload))


_keys = st.lists(st.tuples(st.sampled_from([1, 2, 300]), _subjects, _sizes), min_size=1, max_size=3)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), keys=_keys, cuts=st.lists(st.integers(1, 70_000), max_size=8))
def test_a_client_decodes_repeated_msgs_as_msgpack_does_each_alone(
    data: st.DataObject, keys: list[tuple[int, str, int]], cuts: list[int]
) -> None:
    frames = data.draw(st.lists(st.lists(_msgs(keys), min_size=1, max_size=4), max_size=12))
    # A client skips msgpack for a MSG equal to the last plain one but for its payload.
    stream = [
        frame for group in frames for index, frame in enumerate(group) for _ in range(1 + index % 3)
    ]
    joined = b"".join(stream)
    expected: list[Any] = []
    for frame in stream:
        alone = _client()
        alone.receive_data(frame)
        try:
            expected.append(alone.next_event())
        except Exception as error:
            expected.append(type(error))
            break
    client = _client()
    got: list[Any] = []
    position = 0
    for cut in [*cuts, len(joined)]:
        client.receive_data(joined[position : position + cut])
        position += cut
        try:
            while events := client.events():
                got.extend(events)
        except Exception as error:
            got.append(type(error))
            break
        if position >= len(joined):
            break
    assert got == expected


@pytest.mark.parametrize("subject", ["a", "x" * 31, "x" * 32, "x" * 255, "x" * 256, "é"])
@pytest.mark.parametrize("size", [0, 1, 255, 256, 65_535, 65_536])
def test_a_plain_tail_is_its_head_the_payload_and_two_nils(subject: str, size: int) -> None:
    payload = b"p" * size
    head = plain_tail_head(subject, size)
    assert head + payload + PLAIN_TAIL_END == encode_msg_tail(subject, payload, None, None)


# -- the hub -------------------------------------------------------------------------------------


def _publish_all(hub: Hub, origin: Recorder, subject: str, payloads: list[bytes]) -> list[str]:
    """What the native adapter does with a run: `publish_run`, and `publish` where it stops.

    Returns the refusals' codes, in order.
    """
    refusals: list[str] = []
    done = 0
    while done < len(payloads):
        stop, _ = hub.publish_run(origin, subject, payloads, done, 64)
        if stop > done:
            done = stop
            continue
        try:
            hub.publish(origin, (subject, payloads[done], None, None, False), FANOUT_STEP)
        except Refused as refused:
            refusals.append(refused.code.value)
        done += 1
        while origin in hub.fanouts:
            hub.resume(origin, FANOUT_STEP)
    return refusals


def _one_by_one(hub: Hub, origin: Recorder, subject: str, payloads: list[bytes]) -> list[str]:
    refusals: list[str] = []
    for payload in payloads:
        try:
            hub.publish(origin, (subject, payload, None, None, False), FANOUT_STEP)
        except Refused as refused:
            refusals.append(refused.code.value)
        while origin in hub.fanouts:
            hub.resume(origin, FANOUT_STEP)
    return refusals


def _observed(hub: Hub, everyone: list[Recorder]) -> Any:
    stats = hub.statistics()
    return (
        [(r.got, r.in_msgs, r.in_bytes, r.out_msgs, r.out_bytes) for r in everyone],
        (stats.messages_in, stats.bytes_in, stats.messages_out, stats.bytes_out),
        hub.table.matches - hub.table.misses,
    )


class Counted(Recorder):
    """A subscriber that keeps `Subscriber.deliver`'s promise on ``max_msgs``."""

    def __init__(self, hub: Hub, name: str) -> None:
        super().__init__(name)
        self.hub = hub

    def deliver(self, sub: Subscription, message: Message) -> int:
        sub.delivered += 1
        if sub.max_msgs is not None and sub.delivered >= sub.max_msgs:
            self.hub.remove(sub)
        return super().deliver(sub, message)


def _setup(hub: Hub) -> tuple[Recorder, list[Recorder]]:
    origin = Recorder("origin")
    plain, wild, counted = Recorder("plain"), Recorder("wild"), Counted(hub, "counted")
    workers = [Recorder(f"w{n}") for n in range(3)]
    hub.subscribe(plain, 1, "s")
    hub.subscribe(wild, 1, "*")
    hub.subscribe(counted, 1, "s")
    hub.unsubscribe(counted.subscriptions[1], 7)  # leaves mid-run: the table changes
    for worker in workers:
        hub.subscribe(worker, 1, "s", "q")
    return origin, [origin, plain, wild, counted, *workers]


@pytest.mark.parametrize("count", [1, 2, 100])
def test_a_run_delivers_and_counts_exactly_as_its_publishes_one_by_one(count: int) -> None:
    payloads = [b"%05d" % n for n in range(count)]
    results = []
    for publish in (_one_by_one, _publish_all):
        hub = make_hub()
        origin, everyone = _setup(hub)
        hub.publish(origin, ("s", b"first", None, None, False))  # matched: now in the cache
        assert publish(hub, origin, "s", payloads) == []
        results.append(_observed(hub, everyone))
    assert results[0] == results[1]
    assert [got for got, *_ in results[1][0][3:4]] == [
        [(1, "s", b"first")] + [(1, "s", p) for p in payloads[:6]]
    ]


def test_a_run_nobody_receives_is_counted_whole_at_once() -> None:
    hub = make_hub()
    origin = Recorder()
    hub.publish(origin, ("quiet", b"x", None, None, False))
    payloads = [b"%04d" % n for n in range(1000)]
    assert hub.publish_run(origin, "quiet", payloads, 10, 1) == (1000, 0)
    stats = hub.statistics()
    assert (stats.messages_in, stats.bytes_in, stats.messages_out) == (991, 1 + 990 * 4, 0)
    assert (origin.in_msgs, origin.in_bytes) == (991, 1 + 990 * 4)
    assert hub.table.matches - hub.table.misses == 990


def test_a_run_stops_where_publish_must_decide() -> None:
    hub = make_hub(max_payload=4)
    origin, sub = Recorder(), Recorder()
    hub.subscribe(sub, 1, "s")
    # Not in the match cache yet: `publish` matches it first.
    assert hub.publish_run(origin, "s", [b"1"], 0, 64) == (0, 0)
    hub.publish(origin, ("s", b"0", None, None, False))
    # A payload over max_payload: what came before is published, then it stops there.
    assert hub.publish_run(origin, "s", [b"1", b"2", b"12345", b"3"], 0, 64) == (2, 2)
    # A reserved subject, for a client.
    assert hub.publish_run(origin, "$SYS.x", [b"1"], 0, 64) == (0, 0)
    # The budget of work: one per message and one per delivery.
    assert hub.publish_run(origin, "s", [b"a"] * 10, 0, 6) == (3, 3)
    assert [payload for _, _, payload in sub.got] == [b"0", b"1", b"2", b"a", b"a", b"a"]


def test_a_run_stops_at_a_subject_it_may_not_publish_to() -> None:
    hub = make_hub()
    origin = Recorder()
    origin.permissions = ClientPermissions(Permissions(publish=Rules(deny=["secret"])))
    hub.table.match("secret")
    assert hub.publish_run(origin, "secret", [b"1"], 0, 64) == (0, 0)  # type: ignore[arg-type]
    assert _publish_all(hub, origin, "secret", [b"1", b"2"]) == ["permission_denied"] * 2


def test_a_run_of_answers_uses_up_one_allowed_response_per_message() -> None:
    # `allow_responses`: a reply subject the rules deny may be published to max times after a
    # request; each message uses one up, so a run may not pass them all on one check.
    payloads = [b"%d" % n for n in range(5)]
    results = []
    for publish in (_one_by_one, _publish_all):
        for subscribed in (False, True):
            hub = make_hub()
            responder, requester = Recorder("responder"), Recorder("requester")
            responder.permissions = ClientPermissions(
                Permissions(publish=Rules(deny=[">"]), responses=ResponsesConfig(max=3))
            )
            hub.subscribe(requester, 1, "reply.1")
            if subscribed:
                hub.subscribe(responder, 1, "reply.1")
            responder.permissions.note_request("reply.1")
            hub.table.match("reply.1")
            refusals = publish(hub, responder, "reply.1", payloads)
            results.append((refusals, requester.got, responder.got))
    assert results[0] == results[2] and results[1] == results[3]
    assert results[2][0] == ["permission_denied"] * 2
    assert [payload for _, _, payload in results[2][1]] == payloads[:3]


def test_a_run_counts_its_work_as_a_turn_does_one_per_message_and_delivery() -> None:
    hub = make_hub()
    origin, closed = Recorder(), Recorder(accepting=False)
    hub.subscribe(closed, 1, "s")
    hub.publish(origin, ("s", b"0", None, None, False))
    # Deliveries refused (a closing connection) still cost the message its unit of work.
    assert hub.publish_run(origin, "s", [b"x"] * 100, 0, 10) == (10, 0)
    taker = Recorder()
    hub.subscribe(taker, 1, "s")
    hub.table.match("s")
    assert hub.publish_run(origin, "s", [b"x"] * 100, 0, 10) == (5, 5)


def test_a_run_goes_one_by_one_when_its_origin_receives_it_too() -> None:
    # Delivering to itself can end the origin's connection (its outbox overflowing), after
    # which none of its later messages may be published: `publish`, checked after each.
    hub = make_hub()
    origin = Recorder()
    hub.subscribe(origin, 1, "s")
    hub.publish(origin, ("s", b"0", None, None, False))
    assert hub.publish_run(origin, "s", [b"1"], 0, 64) == (0, 0)
    grouped = Recorder()
    hub.subscribe(grouped, 1, "g", "q")
    hub.publish(grouped, ("g", b"0", None, None, False))
    assert hub.publish_run(grouped, "g", [b"1"], 0, 64) == (0, 0)


def test_a_run_to_more_subscriptions_than_one_step_goes_one_by_one_in_steps() -> None:
    hub = make_hub()
    origin = Recorder()
    many = [Recorder(f"r{n}") for n in range(FANOUT_STEP + 1)]
    for n, recorder in enumerate(many):
        hub.subscribe(recorder, n, "wide")
    hub.publish(origin, ("wide", b"0", None, None, False))
    assert hub.publish_run(origin, "wide", [b"1"], 0, 10**6) == (0, 0)
    hub.fanouts.clear()


def _in_process_adapter(hub: Hub, client_id: int) -> Any:
    """A native client's adapter on an in-memory stream: its turns run by hand."""
    import trio.testing

    from broker.server.native import NativeAdapter
    from broker.server.transport import Transport

    transport = Transport(hub, trio.testing.MemorySendStream(), "peer", client_id)
    adapter = transport.adapter = NativeAdapter(hub, transport)
    adapter.receive_data(encode_frame(Hello({})))
    assert adapter.handshake()
    return adapter


def test_a_run_from_a_connection_closed_meanwhile_is_not_published() -> None:
    from broker.server import Server
    from broker.testing.inprocess import config_for_tests

    hub = Server(config_for_tests()).hub
    publisher = _in_process_adapter(hub, 1)
    publisher.receive_data(b"".join(encode_frame(Pub("s", b"%02d" % n)) for n in range(3)))
    assert publisher.process()
    assert hub.statistics().messages_in == 3
    # The next read is one run; another task closes the connection before its turn.
    publisher.receive_data(b"".join(encode_frame(Pub("s", b"%02d" % n)) for n in range(10)))
    publisher.transport.accepting = False
    publisher.process()
    assert hub.statistics().messages_in == 3


def test_a_turn_looks_at_the_clock_as_often_inside_a_run_as_between_pubs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Subscriptions whose deliveries are all discarded: each message still counts one unit of
    # work, so a turn past its deadline stops after `_WORK_PER_LOOK` of them, run or not.
    import broker.server.native as native
    from broker.server import Server
    from broker.testing.inprocess import config_for_tests

    hub = Server(config_for_tests()).hub
    for n in range(100):
        gone = _in_process_adapter(hub, n + 2)
        gone.receive_data(encode_frame(Sub(1, "s")))
        assert gone.process()
        gone.transport.accepting = False
    publisher = _in_process_adapter(hub, 1)
    publisher.receive_data(b"".join(encode_frame(Pub("s", b"%04d" % n)) for n in range(512)))
    ticks = itertools.count()  # a second passes between two looks: each is past the deadline

    class Clock:
        perf_counter = staticmethod(lambda: float(next(ticks)))

    monkeypatch.setattr(native, "time", Clock)
    assert publisher.process()
    assert hub.statistics().messages_in == native._WORK_PER_LOOK
    # Its rest waits in the adapter: the reader must come back for it without reading.
    assert publisher.pending and not publisher.buffered
    turns = 1
    while publisher.process():
        turns += 1
    assert hub.statistics().messages_in == 512
    assert turns == 512 // native._WORK_PER_LOOK
    assert not publisher.pending


# -- end to end, on real sockets -----------------------------------------------------------------


async def test_a_streamed_run_reaches_every_subscriber_in_order(
    start_server: StartServer,
) -> None:
    server = await start_server()
    port = server.port
    async with (
        wire_client(port, name="pub") as pub,
        wire_client(port, name="sub") as sub,
        wire_client(port, name="worker") as worker,
    ):
        await sub.send(Sub(1, "stream.x"), Sub(2, "stream.*"))
        await worker.send(Sub(1, "stream.x", "q"))
        await sub.flush()
        await worker.flush()
        # Runs broken by another size and by a request, in one write.
        payloads = [b"%06d" % n for n in range(3000)]
        frames = [Pub("stream.x", p) for p in payloads]
        frames.insert(1000, Pub("stream.x", b"odd size"))
        frames.insert(2000, Pub("stream.x", b"000000", "inbox"))
        with trio.fail_after(20):
            await pub.send(*frames)
            await pub.flush()
            got: list[Msg] = []
            while len(got) < 2 * len(frames):
                got.append(await sub.expect(Msg))
            taken = [await worker.expect(Msg) for _ in frames]
        for sid in (1, 2):
            mine = [(m.payload, m.reply_to) for m in got if m.sid == sid]
            assert mine == [(f.payload, f.reply_to) for f in frames]
        assert [(m.payload, m.reply_to) for m in taken] == [(f.payload, f.reply_to) for f in frames]
        assert all(m.subject == "stream.x" and m.headers is None for m in got + taken)
        stats = server.hub.statistics()
        assert stats.messages_in == len(frames)
        assert stats.messages_out == 3 * len(frames)
        assert stats.bytes_in == sum(len(f.payload) for f in frames)


async def test_each_refused_pub_of_a_run_gets_its_own_error(start_server: StartServer) -> None:
    server = await start_server(max_payload=8)
    async with wire_client(server.port) as client:
        await client.send(Sub(1, "ok"))
        with trio.fail_after(10):
            await client.send(*[Pub("$reserved", b"x")] * 20, Pub("ok", b"after"))
            events = await client.drain()
        assert [type(e) for e in events] == [Err] * 20 + [Msg]
        assert {e.code for e in events if type(e) is Err} == {ErrorCode.BAD_SUBJECT.value}
        assert events[-1] == Msg(1, "ok", b"after")
        # A run of payloads over max_payload: the first is refused, fatally; nothing is routed.
        await client.send(Pub("ok", b"123456789"), *[Pub("ok", b"987654321")] * 5)
        with trio.fail_after(10):
            rest = await client.closed()
        assert [type(e) for e in rest] == [Err]
        assert rest[0].code == ErrorCode.PAYLOAD_TOO_LARGE.value
    assert server.hub.statistics().messages_in == 1


async def test_a_run_wider_than_one_step_is_delivered_whole_in_order(
    start_server: StartServer,
) -> None:
    server = await start_server()
    async with wire_client(server.port) as sub, wire_client(server.port) as pub:
        await sub.send(*[Sub(n, "wide") for n in range(FANOUT_STEP + 1)])
        await sub.flush()
        with trio.fail_after(20):
            await pub.send(*[Pub("wide", b"%d" % n) for n in range(5)])
            got = [await sub.expect(Msg) for _ in range(5 * (FANOUT_STEP + 1))]
        for n in range(5):
            step = got[n * (FANOUT_STEP + 1) : (n + 1) * (FANOUT_STEP + 1)]
            assert {m.payload for m in step} == {b"%d" % n}
            assert [m.sid for m in step] == list(range(FANOUT_STEP + 1))


# -- a run handed to each subscription at once (`RunSubscriber.deliver_run`) ---------------------


def _native_hub(**overrides: Any) -> Hub:
    from broker.server import Server
    from broker.testing.inprocess import config_for_tests

    return Server(config_for_tests(**overrides)).hub


def _subscribed(hub: Hub, client_id: int, *frames: Event) -> Any:
    adapter = _in_process_adapter(hub, client_id)
    adapter.receive_data(b"".join(encode_frame(frame) for frame in frames))
    assert adapter.process()
    return adapter


def _queued(adapter: Any) -> tuple[Any, ...]:
    """Every byte queued for the client, and what its connection counted."""
    outbox = adapter.outbox
    data = b""
    while outbox:
        data += outbox.take_batch()
        outbox.sent()
    transport = adapter.transport
    return data, transport.accepting, transport.dropped_total, adapter.out_msgs, adapter.out_bytes


def _route(
    subscriptions: list[list[Event]], payloads: list[bytes], runs: bool, **overrides: Any
) -> Any:
    """What native clients subscribed so are sent when `payloads` are published to "s", as
    runs (what the adapter does with a `PubRun`) or one by one; in a trio run, as a slow
    consumer's connection logs by trio's clock."""

    async def route() -> Any:
        return _route_now(subscriptions, payloads, runs, **overrides)

    return trio.run(route)


def _route_now(
    subscriptions: list[list[Event]], payloads: list[bytes], runs: bool, **overrides: Any
) -> Any:
    hub = _native_hub(**overrides)
    clients = [_subscribed(hub, n + 2, *frames) for n, frames in enumerate(subscriptions)]
    origin = Recorder("origin")
    hub.publish(origin, ("s", b"first", None, None, False))  # matched: now in the cache
    refusals = (_publish_all if runs else _one_by_one)(hub, origin, "s", payloads)
    stats = hub.statistics()
    return (
        [_queued(client) for client in clients],
        refusals,
        (stats.messages_in, stats.bytes_in, stats.messages_out, stats.bytes_out),
        stats.dropped_messages,
    )


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([0, 1, 5, 200, 300]), min_size=1, max_size=60),
    uniform=st.booleans(),
    subscribers=st.integers(1, 4),
    limit=st.one_of(st.none(), st.integers(2, 30)),
    byte_limit=st.one_of(st.none(), st.integers(1024, 3000)),
    policy=st.sampled_from(["disconnect", "drop_newest", "drop_oldest"]),
    max_msgs=st.one_of(st.none(), st.integers(1, 20)),
    shared=st.booleans(),
)
def test_a_run_reaches_native_clients_exactly_as_its_publishes_one_by_one(
    sizes: list[int],
    uniform: bool,
    subscribers: int,
    limit: int | None,
    byte_limit: int | None,
    policy: str,
    max_msgs: int | None,
    shared: bool,
) -> None:
    # Byte for byte and count for count: frames, order, drops under each slow-consumer policy,
    # both bounds (messages, and bytes at their real cost) and their edges, max_msgs reached
    # mid-run, and a client holding two of the subscriptions (which must see them interleaved
    # as one by one).
    if uniform:
        sizes = [sizes[0]] * len(sizes)
    payloads = [bytes([n % 256]) * size for n, size in enumerate(sizes)]
    subscriptions: list[list[Event]] = [[Sub(1, "s")] for _ in range(subscribers)]
    if max_msgs is not None:
        subscriptions[0].append(Unsub(1, max_msgs))
    if shared:
        subscriptions[-1].append(Sub(2, "*"))
    overrides: dict[str, Any] = {"slow_consumer_policy": policy}
    if limit is not None:
        overrides["max_pending_messages"] = limit
    if byte_limit is not None:
        overrides["max_pending_bytes"] = byte_limit
    one_by_one = _route(subscriptions, payloads, runs=False, **overrides)
    assert _route(subscriptions, payloads, runs=True, **overrides) == one_by_one


def test_a_run_is_queued_for_each_native_client_in_one_append(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from broker.server.native import NativeAdapter

    hub = _native_hub()
    clients = [_subscribed(hub, n + 2, Sub(1, "s")) for n in range(3)]
    origin = Recorder("origin")
    hub.publish(origin, ("s", b"first", None, None, False))
    one_at_a_time = []
    monkeypatch.setattr(
        NativeAdapter, "deliver", lambda self, sub, message: one_at_a_time.append(message)
    )
    payloads = [b"%03d" % n for n in range(30)]
    # Each message is work 1 + 3; the loop one by one stops once the work reaches the budget,
    # so after the 16th of a budget of 63.
    assert hub.publish_run(origin, "s", payloads, 0, 63) == (16, 48)
    assert hub.publish_run(origin, "s", payloads, 16, 64) == (30, 42)
    assert one_at_a_time == []
    for client in clients:
        assert client.outbox.messages == 31
        assert client.out_msgs == 31
        assert client.out_bytes == len(b"first") + 30 * 3


def test_a_run_delivered_by_a_reader_is_not_held_after_its_turn() -> None:
    import broker.server.native as native

    hub = _native_hub()
    clients = [_subscribed(hub, n + 2, Sub(1, "s")) for n in range(2)]
    publisher = _in_process_adapter(hub, 1)
    big = [bytes([n]) * 100_000 for n in range(10)]
    publisher.receive_data(b"".join(encode_frame(Pub("s", payload)) for payload in big))
    assert publisher.process()
    assert [client.out_msgs for client in clients] == [10, 10]
    # The tails made for the run's subscribers go with the outboxes, not with a memo that
    # would pin them (and the payloads) until the next run.
    assert native._run_tails is native._NO_RUN_TAILS


async def test_a_run_too_big_for_an_outbox_goes_one_by_one_through_the_drop_policy() -> None:
    hub = _native_hub(max_pending_messages=10, slow_consumer_policy="drop_newest")
    client = _subscribed(hub, 2, Sub(1, "s"))
    origin = Recorder("origin")
    hub.publish(origin, ("s", b"first", None, None, False))
    # Nine places left: a run of 8 fits whole; of the next 3, one fits and two are dropped.
    assert hub.publish_run(origin, "s", [b"a"] * 8, 0, 64) == (8, 8)
    assert hub.publish_run(origin, "s", [b"b"] * 3, 0, 64) == (3, 1)
    assert client.outbox.messages == 10
    assert client.transport.dropped_total == 2
    assert hub.statistics().dropped_messages == 2


async def test_a_run_fans_out_to_many_clients_in_order_on_real_sockets(
    start_server: StartServer,
) -> None:
    server = await start_server()
    async with contextlib.AsyncExitStack() as stack:
        subscribers = [
            await stack.enter_async_context(wire_client(server.port, name=f"sub{n}"))
            for n in range(10)
        ]
        pub = await stack.enter_async_context(wire_client(server.port, name="pub"))
        for client in subscribers:
            await client.send(Sub(7, "fan"))
            await client.flush()
        payloads = [b"%06d" % n for n in range(2000)]
        with trio.fail_after(30):
            await pub.send(*[Pub("fan", p) for p in payloads])
            await pub.flush()
            for client in subscribers:
                got = [await client.expect(Msg) for _ in payloads]
                assert got == [Msg(7, "fan", p) for p in payloads]
    stats = server.hub.statistics()
    assert (stats.messages_in, stats.messages_out) == (2000, 20000)
    assert stats.bytes_out == 10 * sum(map(len, payloads))


async def test_subscribers_at_their_bound_share_each_tail_as_one_by_one() -> None:
    # Under drop_oldest an outbox sits at its bound, so each run goes one message at a time:
    # still with the tails made once for all subscribers, never a copy of a payload each.
    def tails(hub: Hub, clients: list[Any]) -> list[list[bytes]]:
        return [list(client.outbox._frames)[1::2] for client in clients]

    def route(runs: bool) -> list[list[bytes]]:
        hub = _native_hub(max_pending_bytes=50_000, slow_consumer_policy="drop_oldest")
        clients = [_subscribed(hub, n + 2, Sub(1, "s")) for n in range(3)]
        origin = Recorder("origin")
        hub.publish(origin, ("s", b"first", None, None, False))
        payloads = [bytes([n]) * 10_000 for n in range(40)]
        (_publish_all if runs else _one_by_one)(hub, origin, "s", payloads)
        return tails(hub, clients)

    for queued in (route(runs=False), route(runs=True)):
        assert len(queued[0]) == 4  # the bound holds four frames of 10 kB and their cost
        for first, *others in zip(*queued, strict=True):
            assert all(other is first for other in others)


async def test_a_slow_consumer_found_mid_run_is_reported_with_the_counts_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from broker.server.transport import Transport

    reported: list[tuple[int, int]] = []
    mark_slow = Transport._mark_slow

    def spy(self: Transport) -> None:
        if not self._slow:
            reported.append((self.adapter.out_msgs, self.adapter.out_bytes))
        mark_slow(self)

    monkeypatch.setattr(Transport, "_mark_slow", spy)
    results = []
    for publish in (_one_by_one, _publish_all):
        reported.clear()
        hub = _native_hub(max_pending_messages=6, slow_consumer_policy="drop_newest")
        _subscribed(hub, 2, Sub(1, "s"))
        origin = Recorder("origin")
        hub.publish(origin, ("s", b"first", None, None, False))
        publish(hub, origin, "s", [b"%02d" % n for n in range(20)])
        results.append(list(reported))
    assert results[0] == [(6, 5 + 5 * 2)]  # the sixth message fitted, the seventh did not
    assert results[1] == results[0]


def test_a_run_with_no_budget_left_still_delivers_one_message_as_one_by_one() -> None:
    for subscriber in (Recorder, None):  # without deliver_run, then native clients
        hub = _native_hub()
        if subscriber is None:
            _subscribed(hub, 2, Sub(1, "s"))
        else:
            hub.subscribe(subscriber("plain"), 1, "s")
        origin = Recorder("origin")
        hub.publish(origin, ("s", b"first", None, None, False))
        assert hub.publish_run(origin, "s", [b"a", b"b"], 0, 0) == (1, 1)
