"""The same client under asyncio: one implementation (anyio) must work on both event loops.

The broker runs in a thread with its own Trio loop. The tests are plain functions that call
`asyncio.run`, because pytest-trio's trio_mode would run an ``async def`` test under Trio.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any

import pytest
import trio

from broker.client import Message, connect
from broker.config import Config
from broker.errors import ConnectionClosed, NoResponders, ServerShuttingDown
from broker.server import Server

pytestmark = pytest.mark.timeout(10)

#: Bound on every asyncio test's event loop run, in seconds.
TEST_TIMEOUT = 5.0
FAST: dict[str, Any] = {"reconnect_delay": 0.01, "max_reconnect_delay": 0.05}


class BrokerThread:
    """A broker on 127.0.0.1 in a background thread running its own Trio loop.

    `shutdown_server` and `start_server` block until done, so asyncio code calls them through
    `asyncio.to_thread` and its own loop keeps running (the client must see the shutdown).
    """

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker", daemon=True)
        self._failure: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self.server: Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def __enter__(self) -> BrokerThread:
        self._thread.start()
        if not self._ready.wait(TEST_TIMEOUT):
            raise RuntimeError("the broker thread did not start")
        if self._failure is not None:
            raise RuntimeError("the broker thread failed") from self._failure
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):  # It stopped by itself.
                trio.from_thread.run_sync(self._stop_all, trio_token=self._token)
        self._thread.join(TEST_TIMEOUT)
        assert not self._thread.is_alive(), "the broker thread did not stop"
        if self._failure is not None:
            raise RuntimeError("the broker thread failed") from self._failure

    def shutdown_server(self) -> None:
        """Shut the current server down gracefully and wait until it has stopped."""
        assert self._token is not None
        trio.from_thread.run(self._shutdown_server, trio_token=self._token)

    def start_server(self) -> None:
        """Start a new server on the same port."""
        assert self._token is not None
        trio.from_thread.run(self._start_server, trio_token=self._token)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as error:
            self._failure = error
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._start_server()
            self.port = self._server().port
            self._ready.set()
            await self._stop.wait()
            await self._server().wait_stopped()

    def _server(self) -> Server:
        assert self.server is not None
        return self.server

    def _stop_all(self) -> None:
        assert self._stop is not None
        self._server().shutdown()
        self._stop.set()

    async def _shutdown_server(self) -> None:
        self._server().shutdown()
        await self._server().wait_stopped()

    async def _start_server(self) -> None:
        assert self._nursery is not None
        config = Config(hosts=("127.0.0.1",), port=self.port)
        self.server = await self._nursery.start(Server(config).serve)


@pytest.fixture
def broker_thread() -> Iterator[BrokerThread]:
    with BrokerThread() as thread:
        yield thread


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
            await asyncio.to_thread(broker_thread.shutdown_server)
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
