"""broker.testing without pytest machinery: the in-process handles, captures and fault injection.

Each fault test does what a service's test would: inject the fault through the handle, watch the
client react through its own hooks, and check that everyone else was unharmed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest
import trio

import broker
from broker import Config, ConnectionClosed, MessagesDropped, SlowConsumer
from broker.testing import (
    CAPTURE_CLIENT_NAME,
    BrokerThread,
    capture,
    config_for_tests,
    running_broker,
    start_broker_thread,
)

pytestmark = pytest.mark.timeout(20)

#: Bound on each test's waits, in seconds; generous, since nothing here should come near it.
WAIT = 5.0


def hook(event: trio.Event) -> Callable[..., None]:
    """A client hook that sets `event`, whatever it is called with."""

    def fire(*args: object) -> None:
        event.set()

    return fire


# -- config ------------------------------------------------------------------------------------


def test_config_for_tests_listens_on_loopback_with_a_free_port() -> None:
    config = config_for_tests(max_payload=1024)
    assert config.hosts == ("127.0.0.1",)
    assert config.port == 0
    assert config.max_payload == 1024
    base = Config(port=6000, max_payload=2048)
    assert config_for_tests(base) is base
    assert config_for_tests(base, max_payload=10).max_payload == 10


def test_config_for_tests_refuses_unknown_and_bad_overrides() -> None:
    with pytest.raises(TypeError, match="no field 'max_paylod'"):
        config_for_tests(max_paylod=1)
    with pytest.raises(broker.ConfigError, match="max_payload"):
        BrokerThread(max_payload=0)


# -- the thread handle -------------------------------------------------------------------------


def test_thread_starts_and_stops_repeatedly() -> None:
    durations = []
    for _ in range(20):
        began = time.perf_counter()
        handle = start_broker_thread()
        assert handle.url == f"tcp://127.0.0.1:{handle.port}"
        assert handle.port > 0
        assert handle.config.port == handle.port
        assert handle.statistics().connections == 0
        handle.stop()
        handle.stop()  # idempotent
        durations.append(time.perf_counter() - began)
        with pytest.raises(RuntimeError, match="not running"):
            handle.statistics()
    # No speed assertion (machines vary); the figure is in the -rA output for the curious.
    durations.sort()
    print(f"start+stop p50: {durations[len(durations) // 2] * 1000:.2f} ms")


def test_a_start_that_times_out_leaves_no_broker_thread_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import broker.testing.inprocess as inprocess

    monkeypatch.setattr(inprocess, "START_TIMEOUT", 0.0)
    before = set(threading.enumerate())
    # With no time allowed, start() nearly always gives up first; now and then the broker wins
    # the race and listens at once, and then there is nothing to test: try again.
    for _attempt in range(50):
        handle = BrokerThread()
        try:
            handle.start()
        except RuntimeError as error:
            assert "did not listen within 0.0 s" in str(error)
            break
        handle.stop()
    else:
        pytest.fail("start() never timed out")
    assert set(threading.enumerate()) == before, "the abandoned broker thread still runs"
    handle.stop()  # a no-op now, and harmless


def test_thread_reports_a_port_in_use_and_cannot_be_started_twice() -> None:
    with BrokerThread() as first:
        with pytest.raises(RuntimeError, match="started already"):
            first.start()
        with pytest.raises(OSError):
            start_broker_thread(port=first.port)
        assert first.statistics().connections == 0


def test_thread_methods_before_start_say_so() -> None:
    handle = BrokerThread()
    with pytest.raises(RuntimeError, match="not started"):
        handle.url  # noqa: B018
    handle.stop()  # stopping what never started does nothing


def test_thread_serves_clients_and_counts_them() -> None:
    with BrokerThread() as handle, handle.connect_sync(name="svc") as client:
        client.flush()
        assert handle.client_names() == ["svc"]
        client.publish("a.b", b"x")
        client.flush()
        assert handle.statistics().messages_in == 1


async def test_thread_handle_is_usable_from_trio_code() -> None:
    # trio.from_thread refuses calls from a Trio thread; the handle must not.
    with BrokerThread() as handle, trio.fail_after(WAIT):
        back = trio.Event()
        async with handle.connect(name="svc", on_reconnected=hook(back)) as client:
            await client.flush()
            assert handle.client_names() == ["svc"]
            with handle.capture("a") as cap:
                await client.publish("a", b"1")
                await trio.to_thread.run_sync(cap.wait_for, 1)
                # restart waits for this loop's client to read its ERR: run it in a thread.
                await trio.to_thread.run_sync(handle.restart)
                await back.wait()
                await client.publish("a", b"2")
                await trio.to_thread.run_sync(cap.wait_for, 2)
            assert handle.drop_client("svc") == 1


# -- sync captures -----------------------------------------------------------------------------


def test_sync_capture_waits_for_n_and_for_a_predicate() -> None:
    with (
        BrokerThread() as handle,
        handle.capture("orders.>") as cap,
        handle.connect_sync(name="pub") as client,
    ):
        assert handle.client_names() == [CAPTURE_CLIENT_NAME, "pub"]
        for i in range(3):
            client.publish(f"orders.{i}", b"%d" % i)
        client.publish("other", b"not captured")
        assert [m.subject for m in cap.wait_for(3, timeout=WAIT)] == [
            "orders.0",
            "orders.1",
            "orders.2",
        ]
        assert cap.wait_until(lambda m: m.payload == b"1", timeout=WAIT).subject == "orders.1"
        client.publish("orders.late", b"late", headers={"k": "v"})
        late = cap.wait_until(lambda m: m.subject == "orders.late", timeout=WAIT)
        assert late.headers == {"k": "v"}
        client.flush()
        cap.flush()
        assert [m.payload for m in cap.messages] == [b"0", b"1", b"2", b"late"]
        cap.clear()
        assert cap.wait_for(0) == []
    # Closed: what arrived stays readable, waiting for more says it is over.
    assert cap.messages == []
    with pytest.raises(broker.SubscriptionClosed, match="closed with 0 messages"):
        cap.wait_for(1, timeout=WAIT)


def test_sync_capture_times_out_saying_what_it_got() -> None:
    with BrokerThread() as handle, handle.capture("x") as cap, handle.connect_sync() as client:
        client.publish("x", b"1")
        cap.wait_for(1, timeout=WAIT)
        with pytest.raises(TimeoutError, match=r"captured 1 messages on 'x' within 0\.05 s"):
            cap.wait_for(2, timeout=0.05)
        with pytest.raises(TimeoutError, match="matching the predicate"):
            cap.wait_until(lambda m: m.payload == b"never", timeout=0.05)
        with pytest.raises(ValueError, match="int >= 0"):
            cap.wait_for(-1)
        with pytest.raises(ValueError, match="timeout"):
            cap.wait_for(1, timeout=-1)


def test_sync_capture_refuses_a_bad_pattern_and_stop_closes_open_captures() -> None:
    handle = start_broker_thread()
    try:
        with pytest.raises(broker.BadSubject):
            handle.capture("a..b")
        cap = handle.capture("a")
    finally:
        handle.stop()
    with pytest.raises(broker.SubscriptionClosed):
        cap.wait_for(1, timeout=WAIT)
    with pytest.raises(ConnectionClosed):
        cap.flush()
    cap.close()  # after stop: nothing to do


# -- async captures ----------------------------------------------------------------------------


async def test_async_capture_under_trio() -> None:
    with trio.fail_after(WAIT):
        async with running_broker() as handle, handle.connect(name="svc") as client:
            async with capture(client, "orders.*") as cap:
                await client.publish("orders.1", b"1")
                await client.publish("orders.2", b"2")
                await client.publish("elsewhere", b"-")
                assert [m.payload for m in await cap.wait_for(2)] == [b"1", b"2"]
                found = await cap.wait_until(lambda m: m.subject == "orders.2")
                assert found.payload == b"2"
                await cap.flush()
                assert len(cap.messages) == 2
                with pytest.raises(trio.TooSlowError), trio.fail_after(0.05):
                    await cap.wait_for(3)
            await client.flush()
            assert handle.statistics().subscriptions == 0  # leaving unsubscribed
            with pytest.raises(broker.SubscriptionClosed, match="has ended with 2 messages"):
                await cap.wait_for(3)


async def test_capture_skips_retained_replays_but_keeps_live_retained_publishes() -> None:
    with trio.fail_after(WAIT):
        async with running_broker() as handle, handle.connect(name="svc") as client:
            await client.publish("cfg.mode", b"old", retain=True)
            await client.flush()
            async with capture(client, "cfg.*") as cap:
                await client.publish("cfg.mode", b"new", retain=True)
                [message] = await cap.wait_for(1)
                assert (message.payload, message.retained) == (b"new", False)
                await cap.flush()
                assert [m.payload for m in cap.messages] == [b"new"]


async def test_running_broker_capture_uses_a_client_of_its_own() -> None:
    with trio.fail_after(WAIT):
        async with (
            running_broker() as handle,
            handle.capture(">") as cap,
            handle.connect(name="svc") as client,
        ):
            assert handle.client_names() == [CAPTURE_CLIENT_NAME, "svc"]
            await client.publish("a", b"1")
            [message] = await cap.wait_for(1)
            assert message.subject == "a"


async def test_running_broker_lets_errors_out_unwrapped() -> None:
    with pytest.raises(KeyError):
        async with running_broker():
            raise KeyError("mine")
    with pytest.raises(ZeroDivisionError):
        async with (
            running_broker() as handle,
            handle.connect() as client,
            capture(client, "x"),
        ):
            1 / 0  # noqa: B018


def test_async_capture_under_asyncio() -> None:
    async def main() -> None:
        async with asyncio.timeout(WAIT):
            async with (
                handle.connect(name="svc") as client,
                capture(client, "orders.>") as cap,
            ):
                await client.publish("orders.eu.1", b"1")
                [message] = await cap.wait_for(1)
                assert message.subject == "orders.eu.1"
                assert (await cap.wait_until(lambda m: m.payload == b"1")) is message

    with BrokerThread() as handle:
        asyncio.run(main())


# -- fault injection ---------------------------------------------------------------------------


async def test_drop_client_and_the_client_reconnects_and_resubscribes() -> None:
    dropped, back = trio.Event(), trio.Event()
    with trio.fail_after(WAIT):
        async with (
            running_broker() as handle,
            handle.connect(name="bystander") as bystander,
            handle.connect(
                name="svc", on_disconnected=hook(dropped), on_reconnected=hook(back)
            ) as svc,
        ):
            sub = svc.subscribe("jobs")
            await svc.flush()
            assert handle.drop_client("svc") == 1
            with pytest.raises(LookupError, match="no live client named 'nobody'"):
                handle.drop_client("nobody")
            await dropped.wait()
            await back.wait()
            assert handle.statistics().total_connections == 3
            await bystander.publish("jobs", b"after")
            assert (await sub.next()).payload == b"after"
            assert bystander.is_connected  # untouched by the fault


async def test_stalled_client_is_cut_off_as_a_slow_consumer_and_others_carry_on() -> None:
    cut = trio.Event()
    reasons: list[ConnectionClosed] = []

    def disconnected(error: ConnectionClosed) -> None:
        reasons.append(error)
        cut.set()

    with trio.fail_after(WAIT):
        async with (
            running_broker(max_pending_messages=10) as handle,
            handle.connect(name="slow", on_disconnected=disconnected) as slow,
            handle.connect(name="healthy") as healthy,
            handle.connect(name="pub") as pub,
        ):
            slow_sub = slow.subscribe("work")
            healthy_sub = healthy.subscribe("work")
            await slow.flush()
            await healthy.flush()
            assert handle.stall_client("slow") == 1
            # One at a time: a single read's publishes are routed before any writer runs.
            for i in range(11):
                await pub.publish("work", b"%d" % i)
                await pub.flush()
            await cut.wait()
            assert isinstance(reasons[0], SlowConsumer)
            assert [(await healthy_sub.next()).payload for _ in range(11)] == [
                b"%d" % i for i in range(11)
            ]
            assert handle.statistics().slow_consumers == 1
            assert slow_sub.active  # it reconnects and carries on, as a service would
            await pub.flush()


async def test_stalled_client_with_a_drop_policy_is_told_what_it_lost() -> None:
    told = trio.Event()
    errors: list[broker.BrokerError] = []

    def on_error(error: broker.BrokerError) -> None:
        errors.append(error)
        told.set()

    with trio.fail_after(WAIT):
        async with (
            running_broker(max_pending_messages=4, slow_consumer_policy="drop_newest") as handle,
            handle.connect(name="slow", on_error=on_error) as slow,
            handle.connect(name="pub") as pub,
        ):
            sub = slow.subscribe("work")
            await slow.flush()
            handle.stall_client("slow")
            for i in range(6):
                await pub.publish("work", b"%d" % i)
                await pub.flush()
            assert handle.resume_client("slow") == 1
            await told.wait()
            assert isinstance(errors[0], MessagesDropped)
            assert [(await sub.next()).payload for _ in range(4)] == [b"0", b"1", b"2", b"3"]
            assert handle.statistics().dropped_messages == 2


async def test_restart_keeps_the_port_and_clients_resubscribe() -> None:
    back = trio.Event()
    with trio.fail_after(WAIT):
        async with (
            running_broker() as handle,
            handle.capture("news") as cap,
            handle.connect(name="svc", on_reconnected=hook(back)) as svc,
        ):
            sub = svc.subscribe("news")
            await svc.flush()
            port, first = handle.port, handle.server
            await svc.publish("news", b"before")
            await cap.wait_for(1)
            await handle.restart()
            assert handle.port == port
            assert handle.server is not first
            await back.wait()
            await svc.publish("news", b"after")
            assert [m.payload for m in await cap.wait_for(2)] == [b"before", b"after"]
            assert [(await sub.next()).payload for _ in range(2)] == [b"before", b"after"]
            assert handle.statistics().messages_in == 1  # a new server counts afresh


async def test_stop_server_then_start_server_is_a_restart_with_a_gap() -> None:
    lost, back = trio.Event(), trio.Event()
    with trio.fail_after(WAIT):
        async with (
            running_broker() as handle,
            handle.capture("news") as cap,
            handle.connect(
                name="svc", on_disconnected=hook(lost), on_reconnected=hook(back)
            ) as svc,
        ):
            with pytest.raises(RuntimeError, match="call stop_server"):
                await handle.start_server()
            port = handle.port
            await handle.stop_server()
            await handle.stop_server()  # stopped already: nothing to do
            await lost.wait()
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", port)  # nothing listens meanwhile
            await handle.start_server()  # returns once the capture has resubscribed
            assert handle.port == port
            await back.wait()
            await svc.publish("news", b"after")
            assert [m.payload for m in await cap.wait_for(1)] == [b"after"]


def test_thread_restart_keeps_the_port_and_sync_clients_resubscribe() -> None:
    with (
        BrokerThread() as handle,
        handle.capture("news") as cap,
        handle.connect_sync(name="svc") as svc,
    ):
        port = handle.port
        with svc.subscribe("news") as sub:
            svc.flush()
            handle.restart()
            assert handle.port == port
            svc.publish("news", b"after")  # buffered until reconnected, then sent
            assert sub.next(timeout=WAIT).payload == b"after"
            assert [m.payload for m in cap.wait_for(1, timeout=WAIT)] == [b"after"]


def test_thread_fault_injection_reaches_sync_clients() -> None:
    back = threading.Event()
    with (
        BrokerThread() as handle,
        handle.connect_sync(name="svc", on_reconnected=back.set) as svc,
        svc.subscribe("jobs") as sub,
    ):
        svc.flush()
        assert handle.drop_client("svc") == 1
        assert back.wait(WAIT)
        svc.publish("jobs", b"1")
        assert sub.next(timeout=WAIT).payload == b"1"
        assert handle.stall_client("svc") == 1
        assert handle.resume_client("svc") == 1
        assert handle.statistics().total_connections == 2
