"""A subscription the server refuses is heard of where the caller looks: flush and on_error.

Before, it only showed when that subscription was read; a service that subscribes, flushes and
waits for messages learnt nothing.
"""

from __future__ import annotations

import threading

import pytest
import trio

from broker import BrokerError, TooManySubscriptions
from broker.testing import BrokerThread, running_broker

WAIT = 5.0


async def test_flush_raises_a_refused_subscription_and_on_error_hears_of_it() -> None:
    send, errors = trio.open_memory_channel[BrokerError](10)

    with trio.fail_after(WAIT):
        async with (
            running_broker(max_subscriptions=1) as handle,
            handle.connect(on_error=send.send) as client,
            handle.connect(name="bystander") as bystander,
        ):
            kept = client.subscribe("orders.>")
            refused = client.subscribe("audit.>")
            with pytest.raises(TooManySubscriptions) as caught:
                await client.flush(raise_refused=True)
            assert caught.value.details["sid"] == refused.sid
            error = await errors.receive()
            assert isinstance(error, TooManySubscriptions)
            assert error.details["sid"] == refused.sid
            # Its reader raises it too, as before; the other subscription is unharmed.
            assert not refused.active
            with pytest.raises(TooManySubscriptions):
                await refused.next()
            await client.flush(raise_refused=True)  # raised once, not again
            await bystander.publish("orders.1", b"1")
            assert (await kept.next()).payload == b"1"
            # Without raise_refused, flush only proves the round trip; on_error still hears.
            again = client.subscribe("more.>")
            await client.flush()
            assert (await errors.receive()).details["sid"] == again.sid
            await client.flush(raise_refused=True)  # that flush was told of it already
            # A refusal that is back before the flush sends its PING goes to the next flush.
            late = client.subscribe("late.>")
            assert (await errors.receive()).details["sid"] == late.sid
            with pytest.raises(TooManySubscriptions) as caught:
                await client.flush(raise_refused=True)
            assert caught.value.details["sid"] == late.sid
            await client.flush(raise_refused=True)


def test_the_sync_client_hears_of_it_too() -> None:
    errors: list[BrokerError] = []
    told = threading.Event()

    def on_error(error: BrokerError) -> None:
        errors.append(error)
        told.set()

    with (
        BrokerThread(max_subscriptions=1) as handle,
        handle.connect_sync(on_error=on_error) as client,
    ):
        client.subscribe("orders.>")
        refused = client.subscribe("audit.>")
        with pytest.raises(TooManySubscriptions):
            client.flush(raise_refused=True)
        assert told.wait(WAIT)
        assert isinstance(errors[0], TooManySubscriptions)
        with pytest.raises(TooManySubscriptions):
            refused.next(timeout=WAIT)
