"""The async client under Trio, against a real broker on loopback (and a scripted fake broker
where the real one cannot be made to misbehave)."""

from __future__ import annotations

import dataclasses
import inspect
import math
import socket
import sys
import tracemalloc
from collections.abc import Awaitable, Callable
from functools import partial
from types import FrameType
from typing import Any

import anyio
import pytest
import trio
import trio.testing
from services import echo_service
from wire import read_event

import broker.client
import broker.errors
import broker.sync
from broker.client import Message, Subscription, connect, parse_url
from broker.client.options import ClientOptions, ConnectOptions
from broker.config import Config
from broker.errors import (
    BadSubject,
    BrokerError,
    ConnectionClosed,
    MessagesDropped,
    NoResponders,
    PayloadTooLarge,
    ProtocolViolation,
    ReconnectBufferFull,
    ServerShuttingDown,
    SlowConsumer,
    StaleConnection,
    SubscriptionClosed,
    TooManySubscriptions,
    error_from_wire,
)
from broker.protocol import (
    FATAL_ERRORS,
    Connection,
    Encoder,
    Err,
    ErrorCode,
    Msg,
    Ping,
    Pong,
    Pub,
    Role,
    Sub,
    Welcome,
    encode_frame,
)
from broker.server import Server
from broker.subjects import SubjectError
from broker.testing import faults

pytestmark = pytest.mark.timeout(10)

#: Reconnect quickly: the tests restart brokers in-process.
FAST: dict[str, Any] = {"reconnect_delay": 0.01, "max_reconnect_delay": 0.05}


async def start_broker(nursery: trio.Nursery, **overrides: Any) -> Server:
    overrides.setdefault("hosts", ("127.0.0.1",))
    overrides.setdefault("port", 0)
    server: Server = await nursery.start(Server(Config(**overrides)).serve)
    return server


class Hooks:
    """Records every hook call; one sync and one async hook, as users may pass either."""

    def __init__(self) -> None:
        self.disconnected: list[ConnectionClosed] = []
        self.shutting_down: list[ServerShuttingDown] = []
        self.errors: list[BrokerError] = []
        self.reconnects = 0
        self.disconnected_event = trio.Event()
        self.reconnected_event = trio.Event()
        self.error_event = trio.Event()

    def kwargs(self) -> dict[str, Any]:
        return {
            "on_disconnected": self.on_disconnected,
            "on_reconnected": self.on_reconnected,
            "on_shutting_down": self.shutting_down.append,
            "on_error": self.on_error,
        }

    def on_disconnected(self, error: ConnectionClosed) -> None:
        self.disconnected.append(error)
        self.disconnected_event.set()

    async def on_reconnected(self) -> None:
        await trio.sleep(0)
        self.reconnects += 1
        self.reconnected_event.set()

    def on_error(self, error: BrokerError) -> None:
        self.errors.append(error)
        self.error_event.set()


async def background(*, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    """A nursery for tasks that use a client; the test cancels it before the client closes."""
    async with trio.open_nursery() as tasks:
        task_status.started(tasks)
        await trio.sleep_forever()


async def take(sub: Subscription, count: int) -> list[Message]:
    return [await sub.next() for _ in range(count)]


# ---- publish and subscribe -------------------------------------------------------------------


async def test_publish_subscribe_round_trip(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    async with connect(server.url, name="orders-svc") as client:
        assert client.is_connected
        assert client.max_payload == Config().max_payload
        async with client.subscribe("orders.created") as sub:
            await client.publish("orders.created", b"one", headers={"trace": "abc"})
            await client.publish("orders.created", bytearray(b"two"))
            await client.publish("orders.created", memoryview(b"three"), reply_to="answers.here")
            first, second, third = await take(sub, 3)
    assert (first.subject, first.payload, dict(first.headers), first.reply_to) == (
        "orders.created",
        b"one",
        {"trace": "abc"},
        None,
    )
    assert (second.payload, dict(second.headers)) == (b"two", {})
    assert (third.payload, third.reply_to) == (b"three", "answers.here")
    assert server.statistics().protocol_errors == 0


async def test_wildcards_match_by_token(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    async with connect(server.url) as client:
        one = client.subscribe("orders.*")
        rest = client.subscribe("orders.>")
        for subject in ("orders.created", "orders.eu.created", "other.created"):
            await client.publish(subject, subject.encode())
        await client.flush()
        assert (one.pending, rest.pending) == (1, 2)
        assert [m.subject for m in await take(one, 1)] == ["orders.created"]
        assert [m.subject for m in await take(rest, 2)] == ["orders.created", "orders.eu.created"]


async def test_queue_group_shares_work_and_plain_subscribers_see_all(
    nursery: trio.Nursery,
) -> None:
    server = await start_broker(nursery)
    async with connect(server.url) as client:
        workers = [client.subscribe("jobs.*", queue="workers") for _ in range(2)]
        audit = client.subscribe("jobs.*")
        for i in range(10):
            await client.publish("jobs.run", b"%d" % i)
        await client.flush()
        assert [w.pending for w in workers] == [5, 5]
        assert audit.pending == 10
        seen = [int(m.payload) for w in workers for m in await take(w, 5)]
        assert sorted(seen) == list(range(10))


async def test_echo_false_skips_own_messages(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    async with connect(server.url, echo=False) as quiet, connect(server.url) as other:
        mine = quiet.subscribe("chat")
        theirs = other.subscribe("chat")
        await quiet.flush()
        await other.flush()
        await quiet.publish("chat", b"hello")
        await quiet.flush()
        await other.flush()
        assert (mine.pending, theirs.pending) == (0, 1)


async def test_flush_means_everything_routed_to_us_is_queued(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    async with connect(server.url) as consumer, connect(server.url) as producer:
        sub = consumer.subscribe("metrics")
        await consumer.flush()  # The SUB is in the routing table.
        for i in range(100):
            await producer.publish("metrics", b"%d" % i)
        await producer.flush()  # Every PUB is routed to the consumer's outbox.
        await consumer.flush()  # And was written to us before our PONG.
        assert sub.pending == 100
        assert [int(m.payload) for m in await take(sub, 100)] == list(range(100))


# ---- request and reply -----------------------------------------------------------------------


async def test_request_reply_correlates_concurrent_requests(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    async with connect(server.url) as service, connect(server.url) as caller:

        async def respond() -> None:
            async with service.subscribe("math.double") as sub:
                async for msg in sub:
                    await msg.respond(b"%d" % (2 * int(msg.payload)), {"by": "service"})

        replies: dict[int, Message] = {}

        async def ask(n: int) -> None:
            replies[n] = await caller.request("math.double", b"%d" % n)

        async with trio.open_nursery() as tasks:
            tasks.start_soon(respond)
            await trio.testing.wait_all_tasks_blocked()
            await service.flush()
            with trio.fail_after(5):
                async with trio.open_nursery() as askers:
                    for n in range(10):
                        askers.start_soon(ask, n)
            tasks.cancel_scope.cancel()
        assert {n: int(reply.payload) for n, reply in replies.items()} == {
            n: 2 * n for n in range(10)
        }
        assert all(dict(reply.headers) == {"by": "service"} for reply in replies.values())
        # One inbox subscription serves every request.
        assert server.statistics().subscriptions == 2


async def test_requests_and_answers_are_written_at_once_while_the_writer_is_idle(
    nursery: trio.Nursery,
) -> None:
    server = await start_broker(nursery)
    async with connect(server.url) as service, connect(server.url) as caller:
        # Under Trio, on plain TCP, the socket's own non-blocking send is there to use, once
        # the writers have started.
        await trio.testing.wait_all_tasks_blocked()
        real_send = caller._send_now
        assert real_send is not None and service._send_now is not None
        written: list[bytes] = []

        def recording(data: bytes) -> int:
            sent = real_send(data)
            written.append(bytes(data[:sent]))
            return sent

        async with echo_service(service, b"re:"):
            with trio.fail_after(5):
                # The first request queues the inbox's SUB too: the writer sends both.
                assert (await caller.request("echo", b"zero")).payload == b"re:zero"
                caller._send_now = recording
                reply = await caller.request("echo", b"one")
                assert reply.payload == b"re:one"
                # The request went out whole from the requesting task, not through the writer.
                assert len(written) == 1 and b"one" in written[0]
                # A socket that takes only part of it: the rest follows through the writer,
                # before anything queued later, and the stream stays whole.
                caller._send_now = lambda data: real_send(data[:7])
                reply = await caller.request("echo", b"two")
                assert reply.payload == b"re:two"
                caller._send_now = real_send
                await caller.publish("news", b"three")  # a plain publish: through the writer
                replies = [await caller.request("echo", b"%d" % n) for n in range(20)]
                assert [r.payload for r in replies] == [b"re:%d" % n for n in range(20)]
        assert server.statistics().protocol_errors == 0


async def test_each_read_of_a_reply_is_decoded_once(nursery: trio.Nursery) -> None:
    # After handing out a read's events, the reader reads again at once when nothing is left
    # buffered; it used to decode the empty buffer first, once per read.
    server = await start_broker(nursery)
    async with (
        connect(server.url) as service,
        connect(server.url) as caller,
        echo_service(service),
    ):
        with trio.fail_after(5):
            await caller.request("echo", b"warm")
            await trio.testing.wait_all_tasks_blocked()
            decode = Connection._decode.__code__
            decodes = 0

            def profile(frame: FrameType, event: str, arg: object) -> None:
                nonlocal decodes
                if (
                    event == "call"
                    and frame.f_code is decode
                    and frame.f_locals["self"].our_role is Role.CLIENT
                ):
                    decodes += 1

            sys.setprofile(profile)
            try:
                for number in range(10):
                    reply = await caller.request("echo", bytes([number]))
                    assert reply.payload == bytes([number])
                    await trio.testing.wait_all_tasks_blocked()
            finally:
                sys.setprofile(None)
        # One decode per read: the responder's of each request, the requester's of each reply.
        assert decodes == 20


async def test_no_responders_raised_at_once(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    async with connect(server.url) as client:
        with trio.fail_after(1), pytest.raises(NoResponders, match=r"nobody\.home"):
            await client.request("nobody.home", b"?")
        # The client is unharmed: a served request right after still works.
        async with client.subscribe("echo") as sub:
            reply_task_done = trio.Event()

            async def echo_one() -> None:
                msg = await sub.next()
                await msg.respond(msg.payload)
                reply_task_done.set()

            nursery.start_soon(echo_one)
            with trio.fail_after(2):
                assert (await client.request("echo", b"ping")).payload == b"ping"
                await reply_task_done.wait()


async def test_request_timeout_is_the_callers_cancel_scope(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    async with connect(server.url) as client:
        silent = client.subscribe("slow.service")
        with pytest.raises(trio.TooSlowError):
            with trio.fail_after(0.2):
                await client.request("slow.service", b"?")
        # The responder got it; a late answer to a request nobody waits for is ignored.
        late = await silent.next()
        await late.respond(b"too late")
        await client.flush()
        assert client.is_connected


async def test_respond_needs_reply_to(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    async with connect(server.url) as client:
        sub = client.subscribe("plain")
        await client.publish("plain", b"x")
        msg = await sub.next()
        with pytest.raises(ValueError, match="no reply_to"):
            await msg.respond(b"y")


# ---- unsubscribing and bounds ----------------------------------------------------------------


async def test_unsubscribe_ends_iteration(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    async with connect(server.url) as client:
        sub = client.subscribe("news")
        await client.publish("news", b"queued, then discarded")
        await client.flush()
        sub.unsubscribe()
        await client.publish("news", b"after")
        await client.flush()
        assert [m async for m in sub] == []
        with pytest.raises(SubscriptionClosed):
            await sub.next()
        assert server.statistics().subscriptions == 0
        sub.unsubscribe()  # Idempotent.


async def test_unsubscribe_after_max_msgs(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    async with connect(server.url) as client:
        sub = client.subscribe("ticks")
        await client.publish("ticks", b"0")
        await client.flush()
        sub.unsubscribe(max_msgs=3)  # Three in all, counting the one received already.
        for i in range(1, 6):
            await client.publish("ticks", b"%d" % i)
        await client.flush()
        assert [m.payload async for m in sub] == [b"0", b"1", b"2"]
        assert sub.received == 3
        assert server.statistics().subscriptions == 0
        with pytest.raises(ValueError, match="max_msgs"):
            client.subscribe("x").unsubscribe(max_msgs=-1)


async def test_async_with_unsubscribes_on_exit(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    async with connect(server.url) as client:
        async with client.subscribe("a") as sub, client.subscribe("b"):
            await client.flush()
            assert server.statistics().subscriptions == 2
        await client.flush()
        assert server.statistics().subscriptions == 0
        assert not sub.active


async def test_max_pending_drops_the_newest_at_the_edge(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    async with connect(server.url) as client:
        sub = client.subscribe("burst", max_pending=3)
        for i in range(3):
            await client.publish("burst", b"%d" % i)
        await client.flush()
        assert (sub.pending, sub.dropped) == (3, 0)  # Exactly at the limit: all kept.
        await client.publish("burst", b"3")
        await client.flush()
        assert (sub.pending, sub.dropped, sub.received) == (3, 1, 4)  # One past: newest dropped.
        assert [m.payload for m in await take(sub, 3)] == [b"0", b"1", b"2"]
        # Room again once the consumer caught up; the other subscriptions never noticed.
        await client.publish("burst", b"4")
        await client.flush()
        assert [m.payload for m in await take(sub, 1)] == [b"4"]
        with pytest.raises(ValueError, match="max_pending"):
            client.subscribe("burst", max_pending=0)


async def test_max_pending_bytes_at_the_edge(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    async with connect(server.url) as client:
        sub = client.subscribe("bytes", max_pending_bytes=10)
        big = client.subscribe("big", max_pending_bytes=10)
        for payload in (b"12345", b"67890", b"x"):
            await client.publish("bytes", payload)
        await client.publish("big", b"0123456789ABCDEF")  # Larger than the bound, queue empty.
        await client.flush()
        assert (sub.pending, sub.dropped) == (2, 1)
        assert (big.pending, big.dropped) == (1, 0)


async def test_a_subscriber_that_falls_behind_holds_at_most_its_bounds_in_memory(
    nursery: trio.Nursery,
) -> None:
    # 2,000 messages of 1 KiB (2 MiB) reach a consumer that takes none: what it holds is what
    # max_pending allows (50 of them), measured as memory, not only counted.
    server = await start_broker(nursery)
    payload = b"x" * 1024
    async with connect(server.url) as client, connect(server.url) as publisher:
        sub = client.subscribe("lag", max_pending=50)
        await client.flush()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(2000):
                await publisher.publish("lag", payload)
            await publisher.flush()
            await client.flush()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert (sub.pending, sub.dropped) == (50, 1950)
        # 50 payloads and their messages, plus the broker's and the sockets' slack.
        assert held < 50 * 1024 + 256 * 1024, held


async def test_publish_backpressure_bound(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    frame = len(encode_frame(Pub("load", b"x" * 100)))
    async with connect(server.url, write_buffer_size=frame) as client:
        sub = client.subscribe("load")
        await client.flush()
        # No checkpoint between these: the writer cannot run, so the buffer only grows.
        client.publish_nowait("load", b"x" * 100)
        client.publish_nowait("load", b"x" * 100)  # Exactly at write_buffer_size: accepted.
        with pytest.raises(anyio.WouldBlock):
            client.publish_nowait("load", b"x" * 100)  # Past it: would block.
        with trio.fail_after(2):
            await client.publish("load", b"x" * 100)  # Waits for the writer, then goes.
        await client.flush()
        assert sub.pending == 3


# ---- local validation and server errors ------------------------------------------------------


async def test_bad_subjects_are_refused_before_sending(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    async with connect(server.url) as client:
        for subject in ("", "a..b", "a.*", "a.>", "has space", "$SYS.x"):
            with pytest.raises(BadSubject):
                await client.publish(subject, b"")
        with pytest.raises(BadSubject, match="reply_to"):
            await client.publish("ok", b"", reply_to="bad.*")
        for pattern in ("a.>.b", "a*", ""):
            with pytest.raises(BadSubject):
                client.subscribe(pattern)
        with pytest.raises(BadSubject, match="queue"):
            client.subscribe("ok", queue="two words")
        with pytest.raises(BadSubject):
            await client.request("a.*", b"")
        with pytest.raises(TypeError, match="payload"):
            await client.publish("ok", "text")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="headers"):
            await client.publish("ok", b"", headers={"n": 1})  # type: ignore[dict-item]
        error = BadSubject("x")
        assert isinstance(error, ValueError) and isinstance(error, SubjectError)
        await client.flush()
        assert server.statistics().protocol_errors == 0


async def test_payload_limit_at_the_edge(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery, max_payload=1024)
    async with connect(server.url) as client:
        assert client.max_payload == 1024
        sub = client.subscribe("blob")
        await client.publish("blob", b"x" * 1024)  # Exactly at max_payload.
        with pytest.raises(PayloadTooLarge, match="1025"):
            await client.publish("blob", b"x" * 1025)  # One past.
        with pytest.raises(ValueError):
            await client.publish("blob", b"x" * 1025)
        await client.flush()
        assert [len(m.payload) for m in await take(sub, 1)] == [1024]
        assert client.is_connected


async def test_too_many_subscriptions_fails_only_that_subscription(
    nursery: trio.Nursery,
) -> None:
    server = await start_broker(nursery, max_subscriptions=1)
    async with connect(server.url) as client:
        first = client.subscribe("one")
        second = client.subscribe("two")
        with trio.fail_after(2), pytest.raises(TooManySubscriptions) as info:
            await second.next()
        assert info.value.code is ErrorCode.TOO_MANY_SUBSCRIPTIONS
        assert not second.active
        with pytest.raises(TooManySubscriptions):
            await second.next()  # Stays failed.
        await client.publish("one", b"still fine")
        assert (await first.next()).payload == b"still fine"


async def test_subject_limits_announced_by_the_server_are_checked_locally(
    nursery: trio.Nursery,
) -> None:
    # The server's limit is stricter than the defaults; WELCOME announces it, so the client
    # refuses before sending anything and the connection is untouched.
    server = await start_broker(nursery, max_subject_length=16)
    async with connect(server.url) as client:
        assert client.server_info["max_subject_length"] == 16
        with pytest.raises(BadSubject):
            client.subscribe("a.rather.long.pattern.*")
        sub = client.subscribe("short.*")
        await client.publish("short.x", b"ok")
        with trio.fail_after(2):
            assert (await sub.next()).payload == b"ok"
        assert client.is_connected


async def test_max_msgs_ends_when_the_broker_dropped_some_of_them(nursery: trio.Nursery) -> None:
    # Under drop_oldest the broker counts every message routed to the subscription towards
    # max_msgs and reports the ones it dropped per sid, so the iterator still ends.
    server = await start_broker(nursery, slow_consumer_policy="drop_oldest", max_pending_messages=2)
    hooks = Hooks()
    async with (
        connect(server.url, name="slow", **hooks.kwargs()) as slow,
        connect(server.url) as fast,
    ):
        sub = slow.subscribe("tick")
        sub.unsubscribe(max_msgs=5)
        await slow.flush()
        faults.stall_client(server, "slow")
        for i in range(5):
            await fast.publish("tick", b"%d" % i)
            await fast.flush()
        faults.resume_client(server, "slow")
        with trio.fail_after(2):
            got = [message.payload async for message in sub]
        assert got == [b"3", b"4"]  # the oldest three were dropped to make room
        assert sub.dropped == 3
        assert isinstance(hooks.errors[0], MessagesDropped)


async def test_unsubscribe_max_msgs_counts_what_the_broker_dropped(nursery: trio.Nursery) -> None:
    # The broker dropped 3 of 5 messages; unsubscribe(max_msgs=3) is already reached, so the
    # iterator hands out what is queued and ends instead of waiting forever.
    server = await start_broker(nursery, slow_consumer_policy="drop_newest", max_pending_messages=2)
    hooks = Hooks()
    async with (
        connect(server.url, name="slow", **hooks.kwargs()) as slow,
        connect(server.url) as fast,
    ):
        sub = slow.subscribe("tick")
        await slow.flush()
        faults.stall_client(server, "slow")
        for i in range(5):
            await fast.publish("tick", b"%d" % i)
            await fast.flush()
        faults.resume_client(server, "slow")
        with trio.fail_after(2):
            await hooks.error_event.wait()
            await slow.flush()
            sub.unsubscribe(max_msgs=3)
            got = [message.payload async for message in sub]
        assert got == [b"0", b"1"]
        assert sub.dropped == 3


async def test_flushes_in_flight_do_not_make_a_live_connection_stale(
    nursery: trio.Nursery,
) -> None:
    # Only keepalive ticks with no PONG at all count; PINGs sent by flush() that are merely not
    # answered yet must not cut a healthy connection.
    server = await start_broker(nursery)
    hooks = Hooks()
    async with connect(server.url, ping_interval=0.02, **hooks.kwargs()) as client:

        async def flusher() -> None:
            for _ in range(150):
                await client.flush()

        with trio.fail_after(10):
            async with trio.open_nursery() as flushers:
                for _ in range(4):
                    flushers.start_soon(flusher)
        assert client.is_connected
        assert hooks.disconnected == []


async def test_server_drops_are_reported_to_on_error(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery, slow_consumer_policy="drop_newest", max_pending_messages=1)
    hooks = Hooks()
    async with connect(server.url, **hooks.kwargs()) as slow, connect(server.url) as fast:
        slow.subscribe("firehose")
        await slow.flush()
        for _ in range(50):  # One write, routed in one pass: the slow outbox holds only one.
            await fast.publish("firehose", b"x")
        await fast.flush()
        await slow.flush()
        with trio.fail_after(2):
            await hooks.error_event.wait()
        (error,) = hooks.errors
        assert isinstance(error, MessagesDropped)
        assert error.dropped > 0 and error.total == error.dropped
        assert slow.is_connected


def test_every_error_code_maps_to_a_typed_error() -> None:
    for code in ErrorCode:
        error = error_from_wire(code.value, "why", {"sid": 1})
        assert error.code is code
        assert error.details == {"sid": 1}
        assert str(error) == "why"
        assert isinstance(error, ConnectionClosed) == (code in FATAL_ERRORS), code
    assert isinstance(error_from_wire("shutting_down", ""), ServerShuttingDown)
    assert isinstance(error_from_wire("stale_connection", ""), StaleConnection)
    assert isinstance(error_from_wire("bad_frame", ""), ProtocolViolation)
    unknown = error_from_wire("brand_new", "from a newer server")
    assert type(unknown) is BrokerError and unknown.code is None
    assert "brand_new" in str(unknown)


def test_connect_options_are_declared_once_for_both_clients() -> None:
    fields = {field.name for field in dataclasses.fields(ClientOptions)}
    assert fields == set(ConnectOptions.__annotations__)
    for connect_fn in (connect, broker.sync.connect):
        doc = inspect.getdoc(connect_fn)
        assert doc is not None
        assert all(f"    {name}: " in doc for name in fields), connect_fn


def test_public_names() -> None:
    assert sorted(broker.client.__all__) == sorted(
        [
            "CLOSE_TIMEOUT",
            "DEFAULT_CONNECT_TIMEOUT",
            "DEFAULT_DRAIN_TIMEOUT",
            "DEFAULT_FLUSH_TIMEOUT",
            "DEFAULT_MAX_PENDING",
            "DEFAULT_MAX_PENDING_BYTES",
            "DEFAULT_MAX_PINGS_OUTSTANDING",
            "DEFAULT_MAX_RECONNECT_DELAY",
            "DEFAULT_NEXT_TIMEOUT",
            "DEFAULT_RECONNECT_BUFFER_SIZE",
            "DEFAULT_RECONNECT_DELAY",
            "DEFAULT_REQUEST_TIMEOUT",
            "DEFAULT_URL",
            "DEFAULT_WRITE_BUFFER_SIZE",
            "URL_ENV",
            "Client",
            "Message",
            "Subscription",
            "connect",
            "parse_url",
        ]
    )
    for name in broker.errors.__all__:
        assert hasattr(broker.errors, name)


# ---- connecting ------------------------------------------------------------------------------


def test_url_forms() -> None:
    assert parse_url("tcp://127.0.0.1:4222") == ("127.0.0.1", 4222)
    assert parse_url("127.0.0.1:4222") == ("127.0.0.1", 4222)
    assert parse_url("[::1]:4222") == ("::1", 4222)
    assert parse_url("tcp://[::1]:4222") == ("::1", 4222)
    assert parse_url("localhost") == ("localhost", 5878)
    for bad in ("http://host:1", "tcp://:1", "host:99999", "host:port", "tcp://h:1/path"):
        with pytest.raises(ValueError):
            parse_url(bad)


def test_options_are_checked_at_once() -> None:
    for options in (
        {"reconnect_delay": 0},
        {"max_reconnect_delay": -1},
        {"reconnect_delay": 2, "max_reconnect_delay": 1},
        {"max_reconnect_attempts": -1},
        {"reconnect_buffer_size": -1},
        {"ping_interval": 0},
        {"max_pings_outstanding": 0},
        {"connect_timeout": float("nan")},
    ):
        with pytest.raises(ValueError):
            connect("127.0.0.1:1", **options)


async def test_connect_over_ipv6(nursery: trio.Nursery) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = await start_broker(nursery, hosts=("::1",))
    except OSError:
        pytest.skip("no IPv6 loopback")
    async with connect(f"[::1]:{server.port}") as client:
        await client.flush()


async def test_refused_connection_raises_connection_closed() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionClosed, match="cannot connect"):
        async with connect(f"127.0.0.1:{port}"):
            pass


async def test_max_connections_refusal_is_typed(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery, max_connections=1)
    async with connect(server.url) as first:
        with pytest.raises(ConnectionClosed) as info:
            async with connect(server.url):
                pass
        assert info.value.code is ErrorCode.MAX_CONNECTIONS
        await first.flush()


async def test_errors_from_the_block_are_not_wrapped(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    with pytest.raises(KeyError):
        async with connect(server.url) as client:
            sub = client.subscribe("x")
            raise KeyError("mine")
    with pytest.raises(ConnectionClosed):
        await sub.next()
    with pytest.raises(ConnectionClosed):
        await client.publish("x", b"")


# ---- keepalive, fake broker ------------------------------------------------------------------


Script = Callable[[trio.SocketStream, Connection], Awaitable[None]]


async def fake_broker(nursery: trio.Nursery, script: Script) -> int:
    """Serve `script` to every connection with the shared codec; return the port."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            await script(stream, Connection(Role.SERVER))

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


def welcome(**info: Any) -> Welcome:
    return Welcome({"version": 1, "max_payload": 1024, "max_frame": 4096, **info})


async def test_dead_broker_is_noticed(nursery: trio.Nursery) -> None:
    async def never_answers(stream: trio.SocketStream, conn: Connection) -> None:
        await read_event(stream.receive_some, conn)
        await stream.send_all(conn.send(welcome(ping_interval=0.05)))
        while await read_event(stream.receive_some, conn) is not None:
            pass  # Reads our PINGs, never answers.

    port = await fake_broker(nursery, never_answers)
    hooks = Hooks()
    async with connect(f"127.0.0.1:{port}", reconnect=False, **hooks.kwargs()) as client:
        sub = client.subscribe("anything")
        with trio.fail_after(5), pytest.raises(StaleConnection):
            await sub.next()
        with trio.fail_after(5):
            await hooks.disconnected_event.wait()
        assert [type(e) for e in hooks.disconnected] == [StaleConnection]
        assert client.is_closed


async def test_a_request_behind_a_stuck_writer_still_ends_at_its_timeout(
    nursery: trio.Nursery,
) -> None:
    # The first request queues the inbox's SUB as well: when that fills the write buffer, the
    # request waits for room, and its own limit must bound that wait too (found in review).
    async def stops_reading(stream: trio.SocketStream, conn: Connection) -> None:
        await read_event(stream.receive_some, conn)
        await stream.send_all(conn.send(welcome(max_payload=1 << 20, max_frame=1 << 21)))
        await trio.sleep_forever()

    port = await fake_broker(nursery, stops_reading)
    limit = 4096
    async with connect(f"127.0.0.1:{port}", reconnect=False, write_buffer_size=limit) as client:
        with trio.fail_after(10):
            # Fill the sockets until the writer is stuck in a send (not idle: no _send_now).
            while True:
                client.publish_nowait("fill", bytes(1 << 16))
                await trio.testing.wait_all_tasks_blocked()
                if client._send_now is None:
                    break
            # Then exactly write_buffer_size bytes queued behind it: publishing still may.
            overhead = len(client._encoder.pub("f", bytes(300))) - 300
            client.publish_nowait("f", bytes(limit - overhead))
            assert client._pending_bytes == limit and not client._must_wait()
            start = trio.current_time()
            with pytest.raises(TimeoutError):
                await client.request("svc", b"", timeout=0.3)
            assert 0.3 <= trio.current_time() - start < 5


async def test_server_pings_are_answered(nursery: trio.Nursery) -> None:
    answered = trio.Event()

    async def pings(stream: trio.SocketStream, conn: Connection) -> None:
        await read_event(stream.receive_some, conn)
        await stream.send_all(conn.send(welcome(ping_interval=60)) + conn.send(Ping()))
        while (event := await read_event(stream.receive_some, conn)) is not None:
            if event == Pong():
                answered.set()

    port = await fake_broker(nursery, pings)
    async with connect(f"127.0.0.1:{port}"):
        with trio.fail_after(2):
            await answered.wait()


async def test_fatal_error_reconnects_with_a_typed_reason(nursery: trio.Nursery) -> None:
    connections = 0

    async def cut_off_once(stream: trio.SocketStream, conn: Connection) -> None:
        nonlocal connections
        connections += 1
        await read_event(stream.receive_some, conn)
        await stream.send_all(conn.send(welcome(ping_interval=60)))
        if connections == 1:
            await stream.send_all(conn.send(Err(ErrorCode.SLOW_CONSUMER.value, "too slow")))
            return
        while (event := await read_event(stream.receive_some, conn)) is not None:
            if event == Ping():
                await stream.send_all(conn.send(Pong()))

    port = await fake_broker(nursery, cut_off_once)
    hooks = Hooks()
    async with connect(f"127.0.0.1:{port}", **FAST, **hooks.kwargs()) as client:
        with trio.fail_after(5):
            await hooks.reconnected_event.wait()
        assert [type(e) for e in hooks.disconnected] == [SlowConsumer]
        assert hooks.disconnected[0].code is ErrorCode.SLOW_CONSUMER
        await client.flush()
    assert connections == 2


@pytest.mark.parametrize("trial", range(5))  # a race the bug lost about half the time
async def test_an_answer_made_as_its_connection_ends_goes_out_on_the_next(
    nursery: trio.Nursery, trial: int
) -> None:
    # A request and a fatal error in one read: the responder answers in the pass in which the
    # link ends, with its writer still idle. The answer must not be written into the dying
    # connection (`Client._append_now`), but kept and sent on the next, as any publish is.
    connections = 0
    arrived_on: list[int] = []
    answered = trio.Event()

    async def ask_then_leave(stream: trio.SocketStream, conn: Connection) -> None:
        nonlocal connections
        connections += 1
        number = connections
        await read_event(stream.receive_some, conn)
        await stream.send_all(conn.send(welcome(ping_interval=60)))
        while (event := await read_event(stream.receive_some, conn)) is not None:
            if number == 1 and type(event) is Sub:
                request = Msg(event.sid, "svc", b"q", "reply.1")
                bye = Err(ErrorCode.SHUTTING_DOWN.value, "bye")
                await stream.send_all(conn.send(request) + conn.send(bye))
            elif type(event) is Pub and event.subject == "reply.1":
                arrived_on.append(number)
                answered.set()
            elif event == Ping():
                await stream.send_all(conn.send(Pong()))

    port = await fake_broker(nursery, ask_then_leave)
    async with connect(f"127.0.0.1:{port}", **FAST) as client:
        sub = client.subscribe("svc")
        with trio.fail_after(5):
            message = await sub.next()
            await message.respond(b"answer")
            await answered.wait()
    assert arrived_on == [2]


async def test_garbage_from_the_server_is_a_protocol_violation(nursery: trio.Nursery) -> None:
    async def garbage(stream: trio.SocketStream, conn: Connection) -> None:
        await read_event(stream.receive_some, conn)
        await stream.send_all(conn.send(welcome()) + b"\x00\x00\x00\x01\xc1")
        while await read_event(stream.receive_some, conn) is not None:
            pass

    port = await fake_broker(nursery, garbage)
    async with connect(f"127.0.0.1:{port}", reconnect=False) as client:
        sub = client.subscribe("x")
        with trio.fail_after(5), pytest.raises(ProtocolViolation) as info:
            await sub.next()
        assert info.value.code is ErrorCode.BAD_FRAME


async def test_eof_in_the_middle_of_a_frame_is_a_closed_connection_not_a_violation(
    nursery: trio.Nursery,
) -> None:
    # How the broker cuts off a slow consumer it is writing to: half a frame, then EOF.
    async def cut_mid_frame(stream: trio.SocketStream, conn: Connection) -> None:
        await read_event(stream.receive_some, conn)
        msg = conn.send(welcome()) + Encoder(Role.SERVER).send(Msg(1, "x", b"y" * 100))
        await stream.send_all(msg[:-50])

    port = await fake_broker(nursery, cut_mid_frame)
    async with connect(f"127.0.0.1:{port}", reconnect=False) as client:
        sub = client.subscribe("x")
        with trio.fail_after(5), pytest.raises(ConnectionClosed) as info:
            await sub.next()
        assert type(info.value) is ConnectionClosed
        assert "middle of a frame" in str(info.value)


# ---- reconnecting ----------------------------------------------------------------------------


async def test_reconnect_resubscribes_and_sends_the_buffer(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    port = server.port
    hooks = Hooks()
    async with connect(server.url, **FAST, **hooks.kwargs()) as client:
        news = client.subscribe("news.*")
        limited = client.subscribe("limited")
        limited.unsubscribe(max_msgs=2)
        await client.publish("limited", b"1")
        await client.flush()

        async def answer_time() -> None:
            async with client.subscribe("time.now") as sub:
                async for msg in sub:
                    await msg.respond(b"noon")

        tasks = await nursery.start(background)
        tasks.start_soon(answer_time)
        await trio.testing.wait_all_tasks_blocked()
        await client.flush()

        server.shutdown()
        with trio.fail_after(5):
            await hooks.disconnected_event.wait()
        assert [type(e) for e in hooks.shutting_down] == [ServerShuttingDown]
        assert [type(e) for e in hooks.disconnected] == [ServerShuttingDown]
        assert not client.is_connected and not client.is_closed

        # While disconnected: publishes are buffered, subscriptions and requests wait.
        await client.publish("news.buffered", b"while down")
        late = client.subscribe("late.*")
        replies: list[Message] = []

        async def ask_time() -> None:
            replies.append(await client.request("time.now", b""))

        tasks.start_soon(ask_time)
        await server.wait_stopped()
        server = await start_broker(nursery, port=port)
        with trio.fail_after(5):
            await hooks.reconnected_event.wait()
        assert client.is_connected and hooks.reconnects == 1

        # The resubscriptions are in place: another client's publishes arrive.
        async with connect(server.url) as other:
            for subject in ("news.live", "late.x", "limited", "limited"):
                await other.publish(subject, subject.encode())
            await other.flush()
        await client.flush()
        assert [m.payload for m in await take(news, 2)] == [b"while down", b"news.live"]
        assert [m.payload for m in await take(late, 1)] == [b"late.x"]
        # max_msgs survives the reconnection: two in all, one of them before the outage.
        assert [m.payload async for m in limited] == [b"1", b"limited"]
        assert [r.payload for r in replies] == [b"noon"]
        tasks.cancel_scope.cancel()


async def test_reconnect_buffer_limit_at_the_edge(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    port = server.port
    frame = len(encode_frame(Pub("queued", b"x" * 50)))
    hooks = Hooks()
    async with connect(
        server.url, reconnect_buffer_size=2 * frame, **FAST, **hooks.kwargs()
    ) as client:
        sub = client.subscribe("queued")
        await client.flush()
        server.shutdown()
        with trio.fail_after(5):
            await hooks.disconnected_event.wait()
        await client.publish("queued", b"x" * 50)
        await client.publish("queued", b"x" * 50)  # Exactly reconnect_buffer_size.
        with pytest.raises(ReconnectBufferFull):
            await client.publish("queued", b"x" * 50)  # One frame past it.
        with pytest.raises(ConnectionClosed):
            client.publish_nowait("queued", b"x" * 50)
        await server.wait_stopped()
        await start_broker(nursery, port=port)
        with trio.fail_after(5):
            await client.flush()  # Waits for the reconnection, then round trips.
        assert sub.pending == 2


async def test_requests_in_flight_fail_when_the_connection_breaks(
    nursery: trio.Nursery,
) -> None:
    server = await start_broker(nursery)
    async with connect(server.url, **FAST) as requester, connect(server.url) as responder:
        silent = responder.subscribe("slow.service")
        await responder.flush()
        outcome: list[BaseException] = []

        async def ask() -> None:
            try:
                await requester.request("slow.service", b"?")
            except ConnectionClosed as error:
                outcome.append(error)

        with trio.fail_after(5):
            async with trio.open_nursery() as askers:
                askers.start_soon(ask)
                await silent.next()  # The request reached the responder: it is in flight.
                server.shutdown()
        assert [type(e) for e in outcome] == [ServerShuttingDown]


async def test_without_reconnect_the_client_ends(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    hooks = Hooks()
    async with connect(server.url, reconnect=False, **hooks.kwargs()) as client:
        sub = client.subscribe("x")
        await client.publish("x", b"before")
        await client.flush()
        server.shutdown()
        assert (await sub.next()).payload == b"before"  # Queued messages come first.
        with trio.fail_after(5), pytest.raises(ServerShuttingDown):
            await sub.next()
        assert client.is_closed
        with pytest.raises(ConnectionClosed):
            await client.publish("x", b"after")
        with pytest.raises(ConnectionClosed):
            client.subscribe("y")
        with pytest.raises(ConnectionClosed):
            await client.flush()
        assert [type(e) for e in hooks.shutting_down] == [ServerShuttingDown]


async def test_gives_up_after_max_reconnect_attempts(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    async with connect(server.url, max_reconnect_attempts=2, **FAST) as client:
        sub = client.subscribe("x")
        await client.flush()
        server.shutdown()
        with trio.fail_after(5), pytest.raises(ConnectionClosed, match="gave up"):
            await sub.next()
        assert client.is_closed


# ---- draining --------------------------------------------------------------------------------


async def test_drain_lets_responders_finish(nursery: trio.Nursery) -> None:
    server = await start_broker(nursery)
    async with connect(server.url) as caller, connect(server.url) as service:
        sub = service.subscribe("work")
        await service.flush()
        handled: list[bytes] = []
        loop_ended = trio.Event()

        async def serve() -> None:
            async for msg in sub:
                await trio.sleep(0)  # Drain runs meanwhile; the reply must still go out.
                handled.append(msg.payload)
                await msg.respond(b"done " + msg.payload)
            loop_ended.set()

        nursery.start_soon(serve)
        replies: list[bytes] = []

        async def ask(n: int) -> None:
            replies.append((await caller.request("work", b"%d" % n)).payload)

        with trio.fail_after(5):
            async with trio.open_nursery() as askers:
                for n in range(5):
                    askers.start_soon(ask, n)
                await trio.testing.wait_all_tasks_blocked()
                await caller.flush()  # Every request is routed to the service.
                await service.drain()
                assert service.is_closed
            await loop_ended.wait()
        assert sorted(replies) == [b"done %d" % n for n in range(5)]
        assert sorted(handled) == [b"%d" % n for n in range(5)]
        with pytest.raises(ConnectionClosed):
            await service.publish("work", b"")
        with pytest.raises(ConnectionClosed):
            service.subscribe("work")
        await caller.flush()
        assert server.statistics().subscriptions == 1  # Only the caller's inbox.


class _TaskSteps(trio.abc.Instrument):
    """Counts the scheduler steps of one task."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def test_a_consumer_waiting_for_each_message_takes_one_step_per_message(
    nursery: trio.Nursery,
) -> None:
    # Request/reply's responder: with nothing queued, `async for` and `next` go straight to
    # waiting, which is their schedule point, instead of yielding once more before it.
    server = await start_broker(nursery)
    async with connect(server.url) as client, client.subscribe("s") as sub:
        await client.flush()
        taken: list[bytes] = []
        consumer: list[trio.lowlevel.Task] = []
        took = trio.Event()

        async def consume() -> None:
            consumer.append(trio.lowlevel.current_task())
            nonlocal took
            async for message in sub:
                taken.append(message.payload)
                took.set()
                if len(taken) == 10:
                    return

        async with trio.open_nursery() as inner:
            inner.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
            steps = _TaskSteps(consumer[0])
            trio.lowlevel.add_instrument(steps)
            try:
                with trio.fail_after(10):
                    for number in range(10):
                        took = trio.Event()
                        await client.publish("s", bytes([number]))
                        await took.wait()
                        await trio.testing.wait_all_tasks_blocked()
            finally:
                trio.lowlevel.remove_instrument(steps)
        assert taken == [bytes([n]) for n in range(10)]
        assert steps.steps == 10


async def test_a_consumer_finding_messages_queued_yields_once_per_yield_every(
    nursery: trio.Nursery,
) -> None:
    from broker.client.subscription import YIELD_EVERY

    server = await start_broker(nursery)
    count = 3 * YIELD_EVERY + 5
    async with connect(server.url) as client, client.subscribe("s") as sub:
        for number in range(count):
            await client.publish("s", number.to_bytes(2, "big"))
        await client.flush()
        assert sub.pending == count
        steps = _TaskSteps(trio.lowlevel.current_task())
        trio.lowlevel.add_instrument(steps)
        try:
            with trio.fail_after(10):
                taken = [await sub.next() for _ in range(count)]
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert [int.from_bytes(m.payload, "big") for m in taken] == list(range(count))
        # A step begins after each yield: one per YIELD_EVERY messages taken, no more.
        assert steps.steps == count // (YIELD_EVERY + 1)


async def test_a_delivery_nobody_waits_for_and_a_message_already_queued_cost_no_extra_call(
    nursery: trio.Nursery,
) -> None:
    # Per message, on the reader's side no wake-up call while no consumer waits, and on the
    # consumer's no call into the general checkpoint while messages are queued: each is a
    # Python call for every message, and these are most messages.
    from broker._concurrency import Signal

    deliver, fire = Subscription._deliver.__code__, Signal.fire.__code__
    checkpoint = Subscription._checkpoint.__code__
    calls: list[str] = []

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            if frame.f_code is checkpoint:
                calls.append("checkpoint")
            elif frame.f_code is fire and frame.f_back and frame.f_back.f_code is deliver:
                calls.append("fire")

    server = await start_broker(nursery)
    async with connect(server.url) as client, client.subscribe("s") as sub:
        await client.flush()
        with trio.fail_after(10):
            sys.setprofile(profile)
            try:
                for number in range(10):
                    await client.publish("s", bytes([number]))
                await client.flush()  # all ten queued, nobody waiting for them
                taken = [await sub.next(timeout=1) for _ in range(10)]
            finally:
                sys.setprofile(None)
            assert [m.payload for m in taken] == [bytes([n]) for n in range(10)]
            assert calls == []
            # A consumer that waits is still woken, through the one call.
            sys.setprofile(profile)
            try:
                async with trio.open_nursery() as tasks:
                    tasks.start_soon(partial(sub.next, timeout=1))
                    await trio.testing.wait_all_tasks_blocked()
                    await client.publish("s", b"woken")
            finally:
                sys.setprofile(None)
            assert calls.count("fire") == 1


async def test_a_burst_of_publishes_wakes_the_writer_with_one_call(nursery: trio.Nursery) -> None:
    # The first publish of a burst wakes the idle writer; the rest, which it will send with
    # that one, make no call to wake it again (a Python call per publish, for nothing).
    from broker._concurrency import Signal

    append, fire = broker.client.Client._append_pub.__code__, Signal.fire.__code__
    wakes = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal wakes
        if event == "call" and frame.f_code is fire and frame.f_back:
            wakes += frame.f_back.f_code is append

    server = await start_broker(nursery)
    async with connect(server.url) as client, client.subscribe("burst") as sub:
        await client.flush()
        with trio.fail_after(10):
            for burst in range(2):
                sys.setprofile(profile)
                try:
                    for number in range(10):
                        await client.publish("burst", bytes([number]))
                finally:
                    sys.setprofile(None)
                assert wakes == burst + 1
                await client.flush()
            assert [(await sub.next()).payload for _ in range(20)] == [
                bytes([n]) for n in range(10)
            ] * 2


async def test_a_cancelled_consumer_sees_it_at_its_next_call_with_messages_queued(
    nursery: trio.Nursery,
) -> None:
    server = await start_broker(nursery)
    async with connect(server.url) as client, client.subscribe("s") as sub:
        for number in range(5):
            await client.publish("s", bytes([number]))
        await client.flush()
        with trio.CancelScope() as scope:
            assert (await sub.next()).payload == b"\x00"
            scope.cancel()
            await sub.next()
            pytest.fail("a cancelled consumer took a message")  # pragma: no cover
        assert sub.pending == 4  # nothing taken by the cancelled call
        with trio.CancelScope() as scope:
            scope.cancel()
            async for _message in sub:
                pytest.fail("a cancelled async for took a message")  # pragma: no cover
        assert sub.pending == 4
        # With nothing queued it does not wait first: the cancellation is raised at once.
        assert len(await take(sub, 4)) == 4
        with trio.CancelScope() as scope:
            scope.cancel()
            await sub.next(timeout=math.inf)
            pytest.fail("a cancelled consumer waited")  # pragma: no cover
        assert scope.cancelled_caught
        await client.publish("s", b"later")
        assert (await sub.next()).payload == b"later"  # the cancelled call took nothing
