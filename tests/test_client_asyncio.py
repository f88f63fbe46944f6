"""The same client under asyncio: one implementation (anyio) must work on both event loops.

The broker runs in a thread with its own Trio loop. The tests are plain functions that call
`asyncio.run`, because pytest-trio's trio_mode would run an ``async def`` test under Trio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from broker.client import Message, connect
from broker.errors import ConnectionClosed, NoResponders, ServerShuttingDown
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
