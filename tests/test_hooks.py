"""The hooks of `connect` are called with what their documentation says, and it says it."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import trio

from broker import BrokerError, ConnectionClosed, MessagesDropped, ServerShuttingDown
from broker.client.options import ConnectOptions
from broker.testing import running_broker

README = Path(__file__).resolve().parent.parent / "README.md"


async def test_each_hook_gets_the_arguments_documented() -> None:
    """Hooks with exactly the documented signatures: a wrong arity would raise TypeError in the
    hook's task, be logged, and leave its event unset."""
    disconnected: list[ConnectionClosed] = []
    shutting_down: list[ServerShuttingDown] = []
    errors: list[BrokerError] = []
    back, cut, told, closing = trio.Event(), trio.Event(), trio.Event(), trio.Event()

    def on_disconnected(error: ConnectionClosed) -> None:
        disconnected.append(error)
        cut.set()

    def on_reconnected() -> None:
        back.set()

    async def on_shutting_down(error: ServerShuttingDown) -> None:  # async hooks too
        shutting_down.append(error)
        closing.set()

    def on_error(error: BrokerError) -> None:
        errors.append(error)
        told.set()

    with trio.fail_after(5):
        async with (
            running_broker(max_pending_messages=1, slow_consumer_policy="drop_newest") as handle,
            handle.connect(
                name="svc",
                on_disconnected=on_disconnected,
                on_reconnected=on_reconnected,
                on_shutting_down=on_shutting_down,
                on_error=on_error,
            ) as svc,
            handle.connect(name="pub") as pub,
        ):
            svc.subscribe("work")
            await svc.flush()
            handle.drop_client("svc")
            await cut.wait()
            await back.wait()
            assert isinstance(disconnected[0], ConnectionClosed)

            await handle.wait_for_client("svc", subscriptions=1)
            handle.stall_client("svc")
            for i in range(3):
                await pub.publish("work", b"%d" % i)
                await pub.flush()
            handle.resume_client("svc")
            await told.wait()
            assert isinstance(errors[0], MessagesDropped)

            await handle.restart()
            await closing.wait()
            assert isinstance(shutting_down[0], ServerShuttingDown)


def test_the_hooks_arguments_are_documented() -> None:
    options = inspect.cleandoc(ConnectOptions.__doc__ or "")
    for signature in (
        "``on_disconnected(error)``",
        "``on_reconnected()``: called with no arguments",
        "``on_shutting_down(error)``",
        "``on_error(error)``",
    ):
        assert signature in options
    readme = README.read_text()
    for signature in (
        "`on_disconnected(error)`",
        "`on_reconnected()`, no arguments",
        "`on_shutting_down(error)`",
        "`on_error(error)`",
    ):
        assert signature in readme


@pytest.mark.parametrize("connect", ["broker.connect", "broker.sync.connect"])
def test_help_shows_the_hooks_arguments(connect: str) -> None:
    import broker.sync

    fn = broker.connect if connect == "broker.connect" else broker.sync.connect
    assert "``on_reconnected()``: called with no arguments" in (fn.__doc__ or "")
