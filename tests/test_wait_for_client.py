"""wait_for_client: a test knows when a service is (back) up after drop_client or restart."""

from __future__ import annotations

import math

import pytest
import trio
from trio.testing import MockClock

from broker.testing import BrokerThread, running_broker

pytestmark = pytest.mark.timeout(30)

WAIT = 5.0


async def test_after_a_drop_the_service_is_back_with_its_subscriptions() -> None:
    with trio.fail_after(WAIT):
        async with (
            running_broker() as handle,
            handle.connect(name="svc") as svc,
            handle.connect(name="shop") as shop,
        ):
            jobs, news = svc.subscribe("jobs"), svc.subscribe("news")
            await svc.flush()
            await handle.wait_for_client("svc", subscriptions=2)  # up already: at once
            for _ in range(3):
                handle.drop_client("svc")
                # The connection just cut does not count: this waits for the new one.
                await handle.wait_for_client("svc", subscriptions=2)
                await shop.publish("jobs", b"j")
                await shop.publish("news", b"n")
                assert (await jobs.next()).payload == b"j"
                assert (await news.next()).payload == b"n"
            assert handle.statistics().total_connections == 2 + 3


async def test_after_a_restart_the_service_is_back() -> None:
    with trio.fail_after(WAIT):
        async with (
            running_broker() as handle,
            handle.connect(name="svc") as svc,
            handle.connect(name="shop") as shop,
        ):
            jobs = svc.subscribe("jobs")
            await svc.flush()
            await handle.restart()
            await handle.wait_for_client("svc", subscriptions=1)
            await handle.wait_for_client("shop")
            await shop.publish("jobs", b"after")
            assert (await jobs.next()).payload == b"after"


async def test_it_waits_for_a_service_that_starts_later_and_for_several() -> None:
    with trio.fail_after(WAIT):
        async with running_broker() as handle, trio.open_nursery() as nursery:
            started = []

            async def worker(delay: float) -> None:
                await trio.sleep(delay)
                async with handle.connect(name="worker") as client:
                    client.subscribe("work", queue="workers")
                    started.append(delay)
                    await trio.sleep_forever()

            nursery.start_soon(worker, 0.05)
            nursery.start_soon(worker, 0.1)
            await handle.wait_for_client("worker", 2, subscriptions=1)
            assert sorted(started) == [0.05, 0.1]
            assert handle.client_names() == ["worker", "worker"]
            nursery.cancel_scope.cancel()


async def test_it_gives_up_after_the_default_and_names_who_is_there(
    autojump_clock: MockClock,
) -> None:
    async with running_broker() as handle, handle.connect(name="svc") as svc:
        svc.subscribe("jobs")
        await svc.flush()
        start = trio.current_time()
        # Shielded: no deadline around it, so the default applies.
        with trio.CancelScope(shield=True), pytest.raises(TimeoutError) as caught:
            await handle.wait_for_client("svc", subscriptions=2)
        assert trio.current_time() - start == pytest.approx(5.0, abs=0.05)
        assert str(caught.value).startswith(
            "1 live client(s) named 'svc' holding 2 subscriptions did not come (now: 'svc') "
            "within 5.0 s, the default timeout"
        )
        with pytest.raises(TimeoutError, match=r"'sv' did not come \(now: 'svc'\) within timeout"):
            await handle.wait_for_client("sv", timeout=0.5)
        with pytest.raises(TimeoutError):
            await handle.wait_for_client("svc", 2, timeout=0.5)
        for bad in ({"count": 0}, {"count": 1.0}, {"subscriptions": -1}):
            with pytest.raises(ValueError, match="must be an int"):
                await handle.wait_for_client("svc", **bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout"):
            await handle.wait_for_client("svc", timeout=-1)


def test_thread_handle_waits_for_sync_clients() -> None:
    with (
        BrokerThread() as handle,
        handle.connect_sync(name="svc") as svc,
        handle.connect_sync(name="shop") as shop,
        svc.subscribe("jobs") as jobs,
    ):
        svc.flush()
        handle.drop_client("svc")
        handle.wait_for_client("svc", subscriptions=1)
        shop.publish("jobs", b"after the drop")
        assert jobs.next(timeout=WAIT).payload == b"after the drop"
        handle.restart()
        handle.wait_for_client("svc", subscriptions=1, timeout=None)
        shop.publish("jobs", b"after the restart")
        assert jobs.next(timeout=WAIT).payload == b"after the restart"
        with pytest.raises(TimeoutError, match="'nobody' did not come"):
            handle.wait_for_client("nobody", timeout=0.05)
        with pytest.raises(ValueError, match="timeout"):
            handle.wait_for_client("svc", timeout=math.nan)
