"""AsyncioThread and the asyncio_service fixture: sync tests drive an asyncio service."""

from __future__ import annotations

import asyncio
import textwrap
import threading

import pytest
from test_plugin import _ini, _run, suite

import broker
from broker.testing import AsyncioThread, BrokerThread, start_asyncio_thread

__all__ = ["suite"]  # the pytester fixture, shared with test_plugin.py

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(30)

WAIT = 5.0
PRICES = {"apple": b"3", "pear": b"4"}


async def serve_prices(url: str, loops: list[str]) -> None:
    """The service under test: answers price.<item> on asyncio until cancelled."""
    loops.append(type(asyncio.get_running_loop()).__module__)
    async with broker.connect(url, name="prices") as client, client.subscribe("price.*") as sub:
        async for request in sub:
            await request.respond(PRICES.get(request.subject.split(".")[1], b"?"))


def test_a_sync_test_drives_an_asyncio_service() -> None:
    loops: list[str] = []
    with BrokerThread() as handle, handle.connect_sync(name="shop") as shop:
        with AsyncioThread(serve_prices, handle.url, loops) as service:
            assert service.running
            handle.wait_for_client("prices", subscriptions=1)
            assert shop.request("price.apple", b"", timeout=WAIT).payload == b"3"
            handle.drop_client("prices")  # its reconnection runs in its own loop
            handle.wait_for_client("prices", subscriptions=1)
            assert shop.request("price.pear", b"", timeout=WAIT).payload == b"4"
        assert not service.running
        assert loops[0].startswith("asyncio")
        assert service.stop() is None  # idempotent
        assert handle.client_names() in (["shop"], ["shop", "prices"])  # closing, or gone


def test_a_failing_service_is_raised_where_it_is_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failed = threading.Event()

    async def broken() -> None:
        await asyncio.sleep(0)
        failed.set()
        raise ValueError("the service broke")

    service = start_asyncio_thread(broken, name="broken")
    assert failed.wait(WAIT)
    with pytest.raises(ValueError, match="the service broke"):
        service.join()
    with pytest.raises(ValueError, match="the service broke"):
        service.stop()
    assert "the asyncio service 'broken' failed" in caplog.text  # logged as it happened
    assert repr(service) == "<AsyncioThread 'broken' failed>"


def test_a_failing_service_joins_the_blocks_own_error_as_a_note() -> None:
    async def broken() -> None:
        raise ValueError("the service broke")

    with pytest.raises(AssertionError) as caught, AsyncioThread(broken) as service:
        with pytest.raises(ValueError):
            service.join()
        raise AssertionError("the test's own failure")
    assert caught.value.__notes__ == [
        "and the asyncio service 'asyncio-service' failed too: ValueError('the service broke')"
    ]


def test_results_calls_and_bad_uses() -> None:
    async def answer() -> int:
        return 42

    assert start_asyncio_thread(answer).join() == 42

    state = {"hits": 0}
    never = asyncio.Event  # made in the service's loop, below

    async def service() -> None:
        state["ready"] = never()
        await state["ready"].wait()  # type: ignore[attr-defined]

    async def hit() -> int:
        state["hits"] += 1
        return state["hits"]

    with AsyncioThread(service) as thread:
        assert thread.call(hit) == 1
        assert thread.call(hit) == 2
        with pytest.raises(TimeoutError, match=r"did not finish within 0\.05 s"):
            thread.call(asyncio.sleep, 10, timeout=0.05)
        with pytest.raises(TimeoutError, match="still runs"):
            thread.join(timeout=0)
        with pytest.raises(RuntimeError, match="started already"):
            thread.start()
    with pytest.raises(RuntimeError, match="not running"):
        thread.call(hit)

    with pytest.raises(TypeError, match="runs a coroutine function"):
        AsyncioThread(lambda: 42).start()
    with pytest.raises(ValueError, match="timeout"):
        thread.stop(timeout=-1)


def test_a_service_that_ignores_cancellation_is_reported() -> None:
    release = threading.Event()

    async def stubborn() -> str:
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue
        return "ended at last"

    service = start_asyncio_thread(stubborn, name="stubborn")
    with pytest.raises(TimeoutError, match=r"'stubborn' did not end within 0\.1 s"):
        service.stop(timeout=0.1)
    release.set()
    assert service.stop() == "ended at last"


FIXTURE_SUITE = """
    import threading

    import broker

    PRICES = {"apple": b"3"}


    async def serve_prices(url):
        async with broker.connect(url, name="prices") as client:
            async with client.subscribe("price.*") as sub:
                async for request in sub:
                    await request.respond(PRICES[request.subject.split(".")[1]])


    def test_prices(broker_thread, broker_client_sync, asyncio_service):
        service = asyncio_service(serve_prices, broker_thread.url)
        broker_thread.wait_for_client("prices", subscriptions=1)
        assert broker_client_sync.request("price.apple", b"").payload == b"3"
        assert service.running


    crashed = threading.Event()


    async def crash():
        crashed.set()
        raise KeyError("plum")


    def test_a_service_that_crashed_fails_the_test(asyncio_service):
        asyncio_service(crash)
        assert crashed.wait(5)  # the test itself notices nothing
"""


def test_the_asyncio_service_fixture(suite: pytest.Pytester) -> None:
    _ini(suite)
    suite.makepyfile(test_fixture_suite=textwrap.dedent(FIXTURE_SUITE))
    result = _run(suite)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        ["ERROR test_fixture_suite.py::test_a_service_that_crashed_fails_the_test - Key*"]
    )
