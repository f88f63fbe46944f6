"""The same client under asyncio: one implementation (anyio) must work on both event loops.

The broker runs in a thread with its own Trio loop. The tests are plain functions that call
`asyncio.run`, because pytest-trio's trio_mode would run an ``async def`` test under Trio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from wire import read_event

from broker.client import Message, connect
from broker.client.streams import _Protocol
from broker.errors import (
    BrokerError,
    ConnectionClosed,
    NoResponders,
    ProtocolViolation,
    ServerShuttingDown,
)
from broker.protocol import (
    Connection,
    Encoder,
    Msg,
    Role,
    Sub,
    Welcome,
)
from broker.testing import BrokerThread

pytestmark = pytest.mark.timeout(10)

#: Bound on every asyncio test's event loop run, in seconds.
TEST_TIMEOUT = 5.0
FAST: dict[str, Any] = {"reconnect_delay": 0.01, "max_reconnect_delay": 0.05}


def run(main: Callable[[], Awaitable[None]]) -> None:
    """Run `main` on a fresh asyncio loop, bounded in time."""

    async def bounded() -> None:
        async with asyncio.timeout(TEST_TIMEOUT):
            await main()

    asyncio.run(bounded())


def test_publish_subscribe(broker_thread: BrokerThread) -> None:
    async def main() -> None:
        async with (
            connect(broker_thread.url, name="asyncio") as client,
            client.subscribe("orders.*") as one,
            client.subscribe("orders.>") as rest,
        ):
            await client.publish("orders.created", b"one", headers={"k": "v"})
            await client.publish("orders.eu.created", b"two")
            await client.flush()
            assert (one.pending, rest.pending) == (1, 2)
            msg = await one.next()
            assert (msg.subject, msg.payload, dict(msg.headers)) == (
                "orders.created",
                b"one",
                {"k": "v"},
            )
            assert [(await rest.next()).payload for _ in range(2)] == [b"one", b"two"]

    run(main)


def test_request_reply_and_no_responders(broker_thread: BrokerThread) -> None:
    async def main() -> None:
        async with connect(broker_thread.url) as service, connect(broker_thread.url) as caller:
            sub = service.subscribe("time.now")
            await service.flush()

            async def respond() -> None:
                async for msg in sub:
                    await msg.respond(b"noon:" + msg.payload)

            responder = asyncio.create_task(respond())
            try:
                replies = await asyncio.gather(
                    *(caller.request("time.now", b"%d" % n) for n in range(5))
                )
                assert [r.payload for r in replies] == [b"noon:%d" % n for n in range(5)]
                # Idle writers: a request or an answer goes to asyncio's transport from the task
                # that makes it, in order with the writer's own sends.
                assert caller._send_now is not None and service._send_now is not None
                async with asyncio.timeout(1):
                    with pytest.raises(NoResponders):
                        await caller.request("nobody.home", b"")
                # A timeout is the caller's scope, and distinct from NoResponders.
                silent = caller.subscribe("slow.service")
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await caller.request("slow.service", b"")
                assert silent.pending == 1
            finally:
                responder.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await responder

    run(main)


def test_reconnect(broker_thread: BrokerThread) -> None:
    async def main() -> None:
        disconnected = asyncio.Event()
        reconnected = asyncio.Event()
        reasons: list[ConnectionClosed] = []

        def on_disconnected(error: ConnectionClosed) -> None:
            reasons.append(error)
            disconnected.set()

        async def on_reconnected() -> None:
            reconnected.set()

        async with connect(
            broker_thread.url,
            on_disconnected=on_disconnected,
            on_reconnected=on_reconnected,
            **FAST,
        ) as client:
            news = client.subscribe("news.*")
            await client.flush()
            await asyncio.to_thread(broker_thread.stop_server)
            await disconnected.wait()
            assert [type(e) for e in reasons] == [ServerShuttingDown]
            await client.publish("news.buffered", b"while down")
            await asyncio.to_thread(broker_thread.start_server)
            await reconnected.wait()
            async with connect(broker_thread.url) as other:
                await other.publish("news.live", b"after")
                await other.flush()
            await client.flush()
            received: list[Message] = [await news.next(), await news.next()]
            assert [m.payload for m in received] == [b"while down", b"after"]

    run(main)


def test_drain_and_closed_errors(broker_thread: BrokerThread) -> None:
    async def main() -> None:
        async with connect(broker_thread.url) as client:
            sub = client.subscribe("work")
            await client.publish("work", b"1")
            await client.flush()
            taken: list[bytes] = []

            async def consume() -> None:
                async for msg in sub:
                    taken.append(msg.payload)

            consumer = asyncio.create_task(consume())
            await client.drain()
            await consumer
            assert taken == [b"1"]
            assert client.is_closed
            with pytest.raises(ConnectionClosed):
                await client.publish("work", b"2")

    run(main)


def test_errors_from_the_block_are_not_wrapped(broker_thread: BrokerThread) -> None:
    async def main() -> None:
        with pytest.raises(KeyError):
            async with connect(broker_thread.url):
                raise KeyError("mine")

    run(main)


def test_what_arrives_while_the_reader_waits_is_dispatched_without_waking_it(
    broker_thread: BrokerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under asyncio a read lands in the transport's callback. While the client's reader waits
    # with nothing buffered, that callback decodes and dispatches it (`AsyncioSocketStream
    # .feed_to`), so a reply wakes its requester one pass of the loop sooner: the readers of
    # both sides stay parked through every request.
    async def main() -> None:
        async with connect(broker_thread.url) as service, connect(broker_thread.url) as caller:
            sub = service.subscribe("echo")
            await service.flush()

            async def respond() -> None:
                async for msg in sub:
                    await msg.respond(b"re:" + msg.payload)

            responder = asyncio.create_task(respond())
            try:
                await caller.request("echo", b"warm")
                wakes = 0
                wake = _Protocol._wake_reader

                def counted(self: _Protocol) -> None:
                    nonlocal wakes
                    wakes += self.read_waiter is not None
                    wake(self)

                monkeypatch.setattr(_Protocol, "_wake_reader", counted)
                replies = [await caller.request("echo", b"%d" % n) for n in range(10)]
                assert [r.payload for r in replies] == [b"re:%d" % n for n in range(10)]
                assert wakes == 0
            finally:
                responder.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await responder

    run(main)


async def _fake_broker(
    script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, int]:
    """A server on a free loopback port that runs `script` for each connection."""
    server = await asyncio.start_server(script, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    return server, port


_WELCOME = Welcome({"version": 1, "max_payload": 1024, "max_frame": 4096})


_GARBAGE = b"\x00\x00\x00\x01\xc1"
_MSG = Encoder(Role.SERVER).send(Msg(1, "x", b"y" * 100))


@pytest.mark.parametrize(
    ("after_sub", "close", "error", "says"),
    [
        (_GARBAGE, False, ProtocolViolation, "the server broke the wire contract"),
        # Good frames first: the codec hands them out and keeps the error for its next call,
        # which must come at once, not with the next bytes (the server may send none) or EOF.
        (_MSG + _MSG + _GARBAGE, False, ProtocolViolation, "the server broke the wire contract"),
        (_MSG[:-50], True, ConnectionClosed, "in the middle of a frame"),
    ],
    ids=["garbage", "frames-then-garbage", "eof-mid-frame"],
)
def test_bad_bytes_fed_while_the_reader_waits_end_the_connection_as_the_reader_would(
    after_sub: bytes, close: bool, error: type[BrokerError], says: str
) -> None:
    # The bytes reach the transport's callback, not the reader (the client is idle, its
    # subscription made): garbage is a violation of the contract, half a frame then EOF is how
    # the broker cuts off a slow consumer, as when the reader itself finds them.
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(Role.SERVER)
        await read_event(reader.read, conn)  # HELLO
        writer.write(conn.send(_WELCOME))
        while type(await read_event(reader.read, conn)) is not Sub:
            pass
        writer.write(after_sub)
        await writer.drain()
        if not close:
            await read_event(reader.read, conn)  # until the client leaves
        writer.close()

    async def main() -> None:
        server, port = await _fake_broker(script)
        async with server, connect(f"127.0.0.1:{port}", reconnect=False) as client:
            sub = client.subscribe("x")
            with pytest.raises(error, match=says) as info:
                while True:  # the good frames first
                    assert (await sub.next(timeout=1)).payload == b"y" * 100
            assert type(info.value) is error
            assert client.is_closed

    run(main)


def test_an_error_raised_while_dispatching_fed_bytes_comes_out_of_the_client(
    broker_thread: BrokerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug in handling a message, met in the transport's callback, is raised by the reader's
    # task as when the reader decodes the bytes itself: out of `connect`, once, not logged by
    # asyncio as a broken connection and reconnected after, again and again.
    from broker.client import Client

    def broken(self: Client, event: Msg) -> None:
        raise RuntimeError("a bug in dispatching")

    async def main() -> None:
        with pytest.raises(RuntimeError, match="a bug in dispatching"):
            async with connect(broker_thread.url, **FAST) as client:
                sub = client.subscribe("bug")
                await client.flush()
                monkeypatch.setattr(Client, "_on_msg", broken)
                await client.publish("bug", b"1")
                await sub.next(timeout=3)
        assert broker_thread.statistics().total_connections == 1

    run(main)


def test_a_cancelled_consumer_sees_it_at_its_next_call_with_messages_queued(
    broker_thread: BrokerThread,
) -> None:
    # The asyncio counterpart of the Trio test in test_client.py: the check each call makes
    # walks anyio's cancel scopes itself (`broker._concurrency`), and must see what anyio's
    # own `checkpoint_if_cancelled` would, shields and nested scopes included.
    import anyio

    async def main() -> None:
        async with connect(broker_thread.url) as client, client.subscribe("s") as sub:
            for number in range(8):
                await client.publish("s", bytes([number]))
            await client.flush()
            assert client._cancellation_check.__module__ == "broker._concurrency"
            with anyio.CancelScope() as scope:
                assert (await sub.next()).payload == b"\x00"
                scope.cancel()
                await sub.next()
                pytest.fail("a cancelled consumer took a message")  # pragma: no cover
            assert scope.cancelled_caught
            assert sub.pending == 7  # nothing taken by the cancelled call
            with anyio.CancelScope() as outer:
                with anyio.CancelScope():  # the cancelled scope is not the innermost
                    outer.cancel()
                    async for _message in sub:
                        pytest.fail("a cancelled async for took a message")  # pragma: no cover
            assert outer.cancelled_caught
            assert sub.pending == 7
            with anyio.CancelScope() as outer:
                outer.cancel()
                with anyio.CancelScope(shield=True):  # shielded: it takes one
                    assert (await sub.next()).payload == b"\x01"
            with anyio.move_on_after(-1) as expired:  # a deadline already past
                await sub.next()
                pytest.fail("a consumer past its deadline took a message")  # pragma: no cover
            assert expired.cancelled_caught
            assert [(await sub.next()).payload for _ in range(6)] == [
                bytes([n]) for n in range(2, 8)
            ]

    run(main)


def test_the_fast_cancellation_check_is_used_only_where_anyio_keeps_its_scopes() -> None:
    from anyio._backends._asyncio import CancelScope, _task_states

    from broker._concurrency import _reads_as_anyio

    async def main() -> None:
        assert _reads_as_anyio(_task_states.data, CancelScope, asyncio.current_task)
        # Where the scopes are not found (anyio keeping them elsewhere one day), anyio's own.
        assert not _reads_as_anyio({}, CancelScope, asyncio.current_task)

    run(main)
