"""No call of the clients or the testing helpers waits forever by default (broker.client.deadlines).

Each waiting call takes ``timeout`` (seconds; nats.py users type ``request(..., timeout=1)``).
Left at None it defers to the caller's cancel scope when that has a deadline, and otherwise
applies a bounded default. Most tests here run on Trio's autojump clock, so the defaults (up to
30 s) cost no real time; the "no deadline in effect" case, which is what a service's code without
a cancel scope is in, comes from `no_deadline`.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import FrameType

import anyio
import pytest
import trio
from trio.testing import MockClock

import broker.client.client
from broker import Subscription
from broker.client import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_FLUSH_TIMEOUT,
    DEFAULT_NEXT_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT,
)
from broker.client.connection import _Waiter
from broker.client.timer import COMPACT_MIN
from broker.errors import ConnectionClosed
from broker.testing import (
    CAPTURE_CLIENT_NAME,
    DEFAULT_WAIT_TIMEOUT,
    BrokerThread,
    RunningBroker,
    running_broker,
)

pytestmark = pytest.mark.timeout(30)

#: Virtual seconds after which `no_deadline` gives up on a call that should have ended by itself.
WATCHDOG = 1000.0


@asynccontextmanager
async def no_deadline() -> AsyncIterator[None]:
    """A block with no cancel scope deadline in effect, as in a service's own code.

    The block is shielded from the test's ``fail_after``, so the call under test sees no
    deadline; a watchdog task cancels it after `WATCHDOG` virtual seconds and fails the test, so
    a call that would wait forever fails rather than hangs.
    """
    hung = False
    async with trio.open_nursery() as nursery:
        with trio.CancelScope(shield=True) as block:

            async def watchdog() -> None:
                nonlocal hung
                await trio.sleep(WATCHDOG)
                hung = True
                block.cancel()

            nursery.start_soon(watchdog)
            assert trio.current_effective_deadline() == math.inf
            yield
        nursery.cancel_scope.cancel()
    if hung:
        pytest.fail(f"the call was still waiting after {WATCHDOG} s: it has no default limit")


async def elapsed_until_timeout(call: Callable[[], Awaitable[object]]) -> tuple[float, str]:
    """Await `call()`, which must raise TimeoutError; return the virtual seconds it took and
    the error's message."""
    start = trio.current_time()
    with pytest.raises(TimeoutError) as caught:
        await call()
    return trio.current_time() - start, str(caught.value)


@asynccontextmanager
async def silent_responder(handle: RunningBroker, subject: str) -> AsyncIterator[Subscription]:
    """A subscriber to `subject` that never answers, so requests find a responder and wait."""
    async with handle.connect(name="silent") as silent:
        sub = silent.subscribe(subject)
        await silent.flush()
        yield sub


async def answer_after(sub: Subscription, delay: float) -> None:
    """Answer each request on `sub` after `delay` seconds."""
    async for message in sub:
        await trio.sleep(delay)
        await message.respond(b"late")


@asynccontextmanager
async def late_responder(handle: RunningBroker, subject: str, delay: float) -> AsyncIterator[None]:
    async with handle.connect(name="late") as late, trio.open_nursery() as nursery:
        sub = late.subscribe(subject)
        await late.flush()
        nursery.start_soon(answer_after, sub, delay)
        yield
        nursery.cancel_scope.cancel()


# -- request ----------------------------------------------------------------------------------


async def test_request_with_no_scope_gives_up_after_the_default(
    autojump_clock: MockClock,
) -> None:
    with trio.fail_after(WATCHDOG * 2):
        async with (
            running_broker() as handle,
            silent_responder(handle, "slow"),
            handle.connect() as client,
            no_deadline(),
        ):
            took, message = await elapsed_until_timeout(lambda: client.request("slow", b""))
    assert took == pytest.approx(DEFAULT_REQUEST_TIMEOUT, abs=0.05)
    assert DEFAULT_REQUEST_TIMEOUT == 2.0
    assert "no reply to a request on 'slow' within 2.0 s, the default timeout" in message
    assert "timeout=" in message  # it says how to wait longer


async def test_request_takes_a_timeout_keyword_as_in_nats_py(autojump_clock: MockClock) -> None:
    with trio.fail_after(WATCHDOG):
        async with (
            running_broker() as handle,
            silent_responder(handle, "slow"),
            handle.connect() as client,
        ):
            took, message = await elapsed_until_timeout(
                lambda: client.request("slow", b"", timeout=1)
            )
            assert took == pytest.approx(1.0, abs=0.05)
            assert message == "no reply to a request on 'slow' within timeout (1.0 s)"
            # A timeout longer than the default applies as given.
            took, _ = await elapsed_until_timeout(lambda: client.request("slow", b"", timeout=7.5))
            assert took == pytest.approx(7.5, abs=0.05)
            # The client carries on: a later request with an answer works.
            async with late_responder(handle, "fast", 0.1):
                reply = await client.request("fast", b"", timeout=1)
                assert reply.payload == b"late"


async def test_a_cancel_scope_longer_than_the_default_still_decides(
    autojump_clock: MockClock,
) -> None:
    async with (
        running_broker() as handle,
        handle.connect() as client,
        late_responder(handle, "slow", 3 * DEFAULT_REQUEST_TIMEOUT),
    ):
        start = trio.current_time()
        with trio.fail_after(10):
            reply = await client.request("slow", b"")
        assert reply.payload == b"late"
        assert trio.current_time() - start == pytest.approx(6.0, abs=0.05)
        # A shorter scope ends it as that scope always did: move_on_after raises nothing.
        with trio.move_on_after(1) as scope:
            await client.request("slow", b"")
        assert scope.cancelled_caught


async def test_timeout_and_the_callers_scope_the_first_to_expire_wins(
    autojump_clock: MockClock,
) -> None:
    async with (
        running_broker() as handle,
        silent_responder(handle, "slow"),
        handle.connect() as client,
    ):
        start = trio.current_time()
        with pytest.raises(trio.TooSlowError), trio.fail_after(1):
            await client.request("slow", b"", timeout=5)
        assert trio.current_time() - start == pytest.approx(1.0, abs=0.05)
        start = trio.current_time()
        with trio.fail_after(10), pytest.raises(TimeoutError):
            await client.request("slow", b"", timeout=1)
        assert trio.current_time() - start == pytest.approx(1.0, abs=0.05)


async def test_math_inf_means_no_limit_of_the_calls_own(autojump_clock: MockClock) -> None:
    async with (
        running_broker() as handle,
        handle.connect() as client,
        late_responder(handle, "slow", 100.0),
        no_deadline(),
    ):
        reply = await client.request("slow", b"", timeout=math.inf)
        assert reply.payload == b"late"


async def test_requests_end_at_their_own_limits_in_any_order(autojump_clock: MockClock) -> None:
    # One timer bounds every request (broker.client.timer): a deadline earlier than the one it
    # sleeps until must wake it.
    async with (
        running_broker() as handle,
        silent_responder(handle, "slow"),
        handle.connect() as client,
    ):
        start = trio.current_time()
        ended: dict[float, float] = {}

        async def ask(timeout: float) -> None:
            with pytest.raises(TimeoutError, match=rf"within timeout \({timeout} s\)"):
                await client.request("slow", b"", timeout=timeout)
            ended[timeout] = trio.current_time() - start

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for offset, timeout in enumerate((3.0, 1.0, 2.0)):
                    nursery.start_soon(ask, timeout)
                    await trio.sleep(0.01)  # in this order, the latest deadline first
                    assert len(ended) == 0 or offset == 0
        assert ended == pytest.approx({3.0: 3.0, 1.0: 1.01, 2.0: 2.02}, abs=0.02)
        assert client._timer._heap == []


async def test_a_reply_that_came_first_is_kept_when_the_limit_passes_in_the_same_tick() -> None:
    waiter = _Waiter("s")
    waiter.succeed(None)  # the reply (its value is what wait returns)
    waiter.expire()
    assert not waiter.expired and await waiter.wait() is None
    late = _Waiter("s")
    late.expire()
    late.fail(ConnectionClosed("gone"))  # what comes after the limit does not count
    assert late.expired and late.error is None


async def test_a_bounded_request_enters_no_cancel_scope_of_its_own(
    autojump_clock: MockClock,
) -> None:
    # A cancel scope per request cost 12 to 16 us of the request's latency; the client's timer
    # bounds it instead (only the caller's own scopes are entered, as they always were).
    async with (
        running_broker() as handle,
        handle.connect() as client,
        late_responder(handle, "echo", 0.0),
    ):
        with trio.fail_after(10):
            await client.request("echo", b"", timeout=1)  # also subscribes the inbox
        me = trio.lowlevel.current_task()
        enter = trio.CancelScope.__enter__.__code__
        entered = 0

        def profile(frame: FrameType, event: str, arg: object) -> None:
            nonlocal entered
            if event == "call" and frame.f_code is enter and trio.lowlevel.current_task() is me:
                entered += 1

        async with no_deadline():
            sys.setprofile(profile)
            try:
                for timeout in (1, None, 2.5):
                    assert (await client.request("echo", b"", timeout=timeout)).payload == b"late"
            finally:
                sys.setprofile(None)
        assert entered == 0


async def test_the_timer_holds_about_twice_the_requests_waiting(autojump_clock: MockClock) -> None:
    async with (
        running_broker() as handle,
        handle.connect() as client,
        late_responder(handle, "echo", 0.0),
    ):
        with trio.fail_after(10):
            for _ in range(3 * COMPACT_MIN):
                await client.request("echo", b"", timeout=5)
                # Ended requests' deadlines are dropped once they outnumber the live ones.
                assert len(client._timer._heap) <= COMPACT_MIN + 2


# -- flush, next, async for, drain -------------------------------------------------------------


async def test_flush_with_no_scope_gives_up_after_the_default(autojump_clock: MockClock) -> None:
    async with running_broker() as handle, handle.connect(name="stuck") as client:
        await client.flush()
        handle.stall_client("stuck")  # the server stops writing to it: no PONG comes back
        async with no_deadline():
            took, message = await elapsed_until_timeout(client.flush)
        assert took == pytest.approx(DEFAULT_FLUSH_TIMEOUT, abs=0.05)
        assert f"no PONG from {client.url} within 5.0 s, the default timeout" in message
        took, _ = await elapsed_until_timeout(lambda: client.flush(0.5))
        assert took == pytest.approx(0.5, abs=0.05)
        handle.resume_client("stuck")
        await client.flush()  # still usable


async def test_next_with_no_scope_gives_up_after_the_default(autojump_clock: MockClock) -> None:
    async with running_broker() as handle, handle.connect() as client:
        sub = client.subscribe("quiet")
        await client.flush()
        async with no_deadline():
            took, message = await elapsed_until_timeout(sub.next)
        assert took == pytest.approx(DEFAULT_NEXT_TIMEOUT, abs=0.05)
        assert f"no message on 'quiet' (subscription {sub.sid}) within 1.0 s" in message
        took, _ = await elapsed_until_timeout(lambda: sub.next(timeout=0))
        assert took == 0
        await client.publish("quiet", b"1")
        await client.flush()
        # timeout=0 takes what is already there.
        assert (await sub.next(timeout=0)).payload == b"1"
        assert sub.active


async def test_async_for_waits_as_long_as_it_takes(autojump_clock: MockClock) -> None:
    async with running_broker() as handle, handle.connect() as client:
        sub = client.subscribe("rare")
        await client.flush()

        async def publish_later() -> None:
            await trio.sleep(60)
            await client.publish("rare", b"at last")

        received = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_later)
            async with no_deadline():
                async for message in sub:
                    received.append(message.payload)
                    break
        assert received == [b"at last"]


async def test_drain_with_no_scope_closes_anyway_after_the_default(
    autojump_clock: MockClock,
) -> None:
    async with running_broker() as handle, handle.connect() as client:
        client.subscribe("work")
        await client.flush()
        await client.publish("work", b"never taken")  # a queued message keeps drain waiting
        await client.flush()
        async with no_deadline():
            took, message = await elapsed_until_timeout(client.drain)
        assert took == pytest.approx(DEFAULT_DRAIN_TIMEOUT, abs=0.05)
        assert "drain: the consumers did not finish what they hold within 30.0 s" in message
        assert client.is_closed


async def test_bad_timeouts_are_refused_before_waiting() -> None:
    async with running_broker() as handle, handle.connect() as client:
        sub = client.subscribe("x")
        await client.publish("x", b"queued")
        await client.flush()
        calls: list[Callable[[object], Awaitable[object]]] = [
            lambda t: client.request("x", b"", timeout=t),  # type: ignore[arg-type]
            lambda t: client.flush(t),  # type: ignore[arg-type]
            lambda t: sub.next(t),  # type: ignore[arg-type]
            lambda t: client.drain(t),  # type: ignore[arg-type]
        ]
        for call in calls:
            for bad in (-1, "1", math.nan, True):
                with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
                    await call(bad)
        assert not client.is_closed


# -- broker.testing ---------------------------------------------------------------------------


async def test_capture_waits_give_up_after_the_default(autojump_clock: MockClock) -> None:
    async with (
        running_broker() as handle,
        handle.connect() as client,
        handle.capture("orders.>") as cap,
    ):
        await client.publish("orders.1", b"1")
        await cap.wait_for(1)
        async with no_deadline():
            took, message = await elapsed_until_timeout(lambda: cap.wait_for(2))
            assert took == pytest.approx(DEFAULT_WAIT_TIMEOUT, abs=0.05)
            assert DEFAULT_WAIT_TIMEOUT == 5.0
            wanted = "captured 1 messages on 'orders.>' (waiting for 2 messages) within 5.0 s"
            assert wanted in message
            took, _ = await elapsed_until_timeout(lambda: cap.wait_until(lambda m: False))
            assert took == pytest.approx(DEFAULT_WAIT_TIMEOUT, abs=0.05)
        took, _ = await elapsed_until_timeout(lambda: cap.wait_for(2, timeout=0.25))
        assert took == pytest.approx(0.25, abs=0.05)
        # A cancel scope with a deadline still decides alone, however long.
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:

                async def publish_later() -> None:
                    await trio.sleep(20)
                    await client.publish("orders.2", b"2")

                nursery.start_soon(publish_later)
                assert [m.payload for m in await cap.wait_for(2)] == [b"1", b"2"]


async def test_capture_flush_gives_up_after_the_default(autojump_clock: MockClock) -> None:
    async with running_broker() as handle, handle.capture("orders.>") as cap:
        await cap.flush()
        handle.stall_client(CAPTURE_CLIENT_NAME)
        async with no_deadline():
            took, message = await elapsed_until_timeout(cap.flush)
        assert took == pytest.approx(DEFAULT_WAIT_TIMEOUT, abs=0.05)
        assert "the capture of 'orders.>' did not flush within 5.0 s" in message
        handle.resume_client(CAPTURE_CLIENT_NAME)


# -- the other clients: broker.sync, and asyncio -------------------------------------------------


def test_sync_none_still_waits_as_long_as_it_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    # broker.sync bounds the async call with its own scope; the async default must not cut in.

    monkeypatch.setattr(broker.client.client, "DEFAULT_REQUEST_TIMEOUT", 0.01)
    monkeypatch.setattr(broker.client.client, "DEFAULT_FLUSH_TIMEOUT", 0.01)
    with (
        BrokerThread() as handle,
        handle.connect_sync(name="responder") as responder,
        responder.subscribe("slow") as sub,
        handle.connect_sync() as client,
    ):
        responder.flush(timeout=None)

        def answer_late() -> None:
            request = sub.next(timeout=5)
            time.sleep(0.2)  # a slow responder: well past the async default patched above
            request.respond(b"late")

        worker = threading.Thread(target=answer_late)
        worker.start()
        try:
            assert client.request("slow", b"", timeout=None).payload == b"late"
        finally:
            worker.join()


def test_asyncio_takes_the_same_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main(handle: BrokerThread) -> None:
        async with handle.connect(name="silent") as silent, handle.connect() as client:
            silent.subscribe("slow")
            await silent.flush()
            with pytest.raises(TimeoutError, match="within timeout"):
                await client.request("slow", b"", timeout=0.05)
            sub = client.subscribe("quiet")
            with pytest.raises(TimeoutError):
                await sub.next(timeout=0)
            # An anyio scope with a deadline is seen under asyncio too: it alone decides.
            monkeypatch.setattr(broker.client.client, "DEFAULT_REQUEST_TIMEOUT", 0.01)
            with anyio.move_on_after(0.2) as scope:
                await client.request("slow", b"")
            assert scope.cancelled_caught

    with BrokerThread() as handle:
        anyio.run(main, handle, backend="asyncio")
