"""Capture what is published on a pattern, then wait for N messages or for one that matches.

A service's test publishes through the service and asserts on what reached the broker. Two
shapes, one implementation:

- `capture` (async, on anyio, so it runs under Trio and asyncio alike) subscribes with a client
  the test already has, flushes so the subscription is live when the block is entered, and moves
  each delivery into `Capture.messages` from a task of its own. Its waits take ``timeout`` as
  the async client's calls do (`broker.client.deadlines`): left at None, the caller's cancel
  scope bounds them if it has a deadline (``with trio.fail_after(2): await cap.wait_for(3)``),
  else `DEFAULT_WAIT_TIMEOUT` (5 s) does; running out raises the builtin `TimeoutError`.
- `SyncCapture` is the same for sync tests, made by `broker.testing.BrokerThread.capture`: the
  subscription lives in the broker thread's Trio loop and deliveries cross to the test's thread
  under a lock, so its waits take a ``timeout`` (default `DEFAULT_WAIT_TIMEOUT`; None waits
  forever, as in `broker.sync`) and raise the builtin `TimeoutError`.

Messages are `broker.Message` objects. The async capture keeps everything it receives; bound a
capture's life, not its size, by keeping it to one test. Retained messages the broker replays
(when the capture subscribes, and again after a reconnection) are skipped: a capture records
live deliveries only, so a value published while the capture was disconnected is not in it.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Final, final

import anyio
import trio

from .._checks import check_timeout
from .._concurrency import Signal, single_leaf
from .._portal import Portal, PortalClosed
from ..client import Client, Message, Subscription
from ..client.deadlines import deadline
from ..errors import BrokerError, ConnectionClosed, SubscriptionClosed, _again

__all__ = ["DEFAULT_WAIT_TIMEOUT", "Capture", "SyncCapture", "capture"]

#: Seconds a capture's wait allows by default before raising `TimeoutError` (for `Capture`, when
#: no cancel scope with a deadline surrounds the call).
DEFAULT_WAIT_TIMEOUT: Final = 5.0

Predicate = Callable[[Message], object]


def _check_count(n: object) -> None:
    if type(n) is not int or n < 0:
        raise ValueError(f"the number of messages to wait for must be an int >= 0, got {n!r}")


@final
class Capture:
    """Every message delivered on one pattern since the capture started; made by `capture`.

    Attributes:
        pattern: The pattern subscribed to.
        messages: What arrived so far, oldest first. A list the test may read (and clear) at
            any time; new deliveries are appended to it.
    """

    __slots__ = (
        "_changed",
        "_client",
        "_ended",
        "_error",
        "_observers",
        "_sub",
        "messages",
        "pattern",
    )

    def __init__(self, client: Client, sub: Subscription) -> None:
        self._client = client
        self._sub = sub
        self.pattern = sub.subject
        self.messages: list[Message] = []
        self._changed = Signal()
        self._ended = False
        self._error: BrokerError | None = None
        # Called with each message, then with None once the capture ended; used by SyncCapture.
        self._observers: list[Callable[[Message | None], None]] = []

    def __repr__(self) -> str:
        return f"<Capture {self.pattern!r} messages={len(self.messages)}>"

    async def wait_for(self, n: int, timeout: float | None = None) -> list[Message]:
        """Wait until at least `n` messages have arrived and return the first `n`.

        `n` counts everything in `messages`, including what arrived before the call (clear
        `messages` to count afresh).

        Args:
            n: How many messages to wait for.
            timeout: Seconds to wait (``math.inf``: no limit of its own). None, the default,
                leaves the bound to the caller's cancel scope if it has a deadline, else waits
                `DEFAULT_WAIT_TIMEOUT` (5 s).

        Raises:
            TimeoutError: Fewer than `n` arrived in time; the message says how many did.
            ValueError: `n` is not an int >= 0, or `timeout` is not seconds >= 0 or None.
            SubscriptionClosed: The capture ended (its block was left) with fewer messages.
            ConnectionClosed: The capturing client's connection is gone for good.
        """
        _check_count(n)
        wanted = f"{n} messages"
        with deadline(timeout, DEFAULT_WAIT_TIMEOUT, lambda: self._missed(wanted)):
            while len(self.messages) < n:
                self._check_ended(wanted)
                await self._changed.wait()
        return self.messages[:n]

    async def wait_until(self, predicate: Predicate, timeout: float | None = None) -> Message:
        """Wait for a message for which `predicate(message)` is true, and return the first one.

        Messages that arrived before the call are checked first, oldest first.

        Args:
            predicate: Called with each message until it returns a true value.
            timeout: As `wait_for`.

        Raises:
            TimeoutError: No message matched in time.
            ValueError: `timeout` is not seconds >= 0 or None.
            SubscriptionClosed, ConnectionClosed: As `wait_for`.
        """
        wanted = "a message matching the predicate"
        with deadline(timeout, DEFAULT_WAIT_TIMEOUT, lambda: self._missed(wanted)):
            checked = 0
            while True:
                messages = self.messages
                for message in messages[checked:]:
                    if predicate(message):
                        return message
                checked = len(messages)
                self._check_ended(wanted)
                await self._changed.wait()

    async def flush(self, timeout: float | None = None) -> None:
        """Make `messages` hold everything routed to the capture before this call.

        A PING round trip on the capturing client (so the server has written it all), then a
        wait until the capture has taken each delivery. To assert that something was *not*
        published: flush the publisher, flush the capture, then look at `messages`.

        Args:
            timeout: As `wait_for`.

        Raises:
            TimeoutError: That took longer than ``timeout`` (or the default).
            ConnectionClosed: As `broker.Client.flush`.
        """
        missed = f"the capture of {self.pattern!r} did not flush"
        with deadline(timeout, DEFAULT_WAIT_TIMEOUT, lambda: missed):
            await self._client.flush(math.inf)
            while self._sub.pending and not self._ended:
                await self._changed.wait()

    def _missed(self, wanted: str) -> str:
        return f"captured {len(self.messages)} messages on {self.pattern!r} (waiting for {wanted})"

    def _check_ended(self, wanted: str) -> None:
        if not self._ended:
            return
        if self._error is not None:
            raise _again(self._error)
        raise SubscriptionClosed(
            f"the capture of {self.pattern!r} has ended with {len(self.messages)} messages, "
            f"waiting for {wanted}"
        )

    async def _pump(self) -> None:
        try:
            async for message in self._sub:
                if message.retained:
                    # A replay (at subscription, or again after a reconnection), not a live
                    # delivery: a capture records only what it saw being published.
                    continue
                self.messages.append(message)
                for observer in self._observers:
                    observer(message)
                self._changed.fire()
        except BrokerError as error:
            self._error = error
        finally:
            self._ended = True
            for observer in self._observers:
                observer(None)
            self._changed.fire()


@asynccontextmanager
async def capture(client: Client, pattern: str) -> AsyncIterator[Capture]:
    """Capture every message published on `pattern` while the block runs.

    Subscribes with `client` and flushes, so a message published after entering (by any
    client) is captured. Leaving the block unsubscribes. Runs under Trio and asyncio.

    Example::

        async with capture(client, "orders.>") as cap:
            await service.place_order()
            with trio.fail_after(2):
                [message] = await cap.wait_for(1)

    Raises:
        BadSubject: The pattern is invalid.
        ConnectionClosed: The client is closed, or the flush failed.
    """
    sub = client.subscribe(pattern)
    failure: BaseException | None = None
    try:
        await client.flush()
        cap = Capture(client, sub)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(cap._pump, name=f"capture {pattern!r}")
            try:
                yield cap
            finally:
                tasks.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        failure = single_leaf(group)
        if failure is None:
            raise
    finally:
        sub.unsubscribe()
    if failure is not None:
        # Raised outside the except block, so the group does not become its __context__.
        raise failure


@final
class SyncCapture:
    """`Capture` for sync tests; made by `broker.testing.BrokerThread.capture`.

    The subscription runs on its own client in the broker thread's Trio loop (named
    ``broker.testing.capture``, so leave that name alone in fault injection), which reconnects
    after `BrokerThread.restart`. Waits block the calling thread, each up to `timeout` seconds.
    Use it as a context manager, or call `close`; `BrokerThread.stop` closes any left open.

    The messages are `broker.Message` objects; their async ``respond`` belongs to the broker
    thread's loop, so answer requests with a client of the test's own instead.
    """

    __slots__ = (
        "_capture",
        "_cond",
        "_error",
        "_finished",
        "_messages",
        "_portal",
        "_scope",
        "_task_done",
        "pattern",
    )

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._cond = threading.Condition()
        self._messages: list[Message] = []
        self._finished = False
        self._error: BrokerError | None = None
        # Set in the broker thread once the subscription is live.
        self._portal: Portal | None = None
        self._scope: trio.CancelScope | None = None
        self._task_done: trio.Event | None = None
        self._capture: Capture | None = None

    def __repr__(self) -> str:
        with self._cond:
            count = len(self._messages)
            state = " closed" if self._finished else ""
        return f"<SyncCapture {self.pattern!r} messages={count}{state}>"

    @property
    def messages(self) -> list[Message]:
        """A copy of what arrived so far, oldest first."""
        with self._cond:
            return list(self._messages)

    def clear(self) -> None:
        """Forget what arrived so far, so the next `wait_for` counts afresh."""
        with self._cond:
            self._messages.clear()

    def wait_for(self, n: int, timeout: float | None = DEFAULT_WAIT_TIMEOUT) -> list[Message]:
        """Wait up to `timeout` seconds until `n` messages have arrived; return the first `n`.

        Raises:
            ValueError: `n` is not an int >= 0, or `timeout` is negative.
            TimeoutError: Fewer than `n` arrived in time; the message says how many did.
            SubscriptionClosed: The capture was closed with fewer messages.
            ConnectionClosed: The capturing client's connection is gone for good.
        """
        _check_count(n)
        check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < n:
                self._check_finished(f"{n} messages")
                self._wait(deadline, f"{n} messages", timeout)
            return self._messages[:n]

    def wait_until(
        self, predicate: Predicate, timeout: float | None = DEFAULT_WAIT_TIMEOUT
    ) -> Message:
        """Wait up to `timeout` seconds for a message for which `predicate(message)` is true.

        Returns the first such message, checking those that arrived before the call first. The
        predicate runs in the calling thread.

        Raises:
            TimeoutError: No message matched in time.
            SubscriptionClosed, ConnectionClosed: As `wait_for`.
        """
        check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        checked = 0
        while True:
            with self._cond:
                fresh = self._messages[checked:]
                checked = len(self._messages)
            for message in fresh:
                if predicate(message):
                    return message
            with self._cond:
                if len(self._messages) == checked:
                    self._check_finished("a message matching the predicate")
                    self._wait(deadline, "a message matching the predicate", timeout)

    def flush(self, timeout: float | None = DEFAULT_WAIT_TIMEOUT) -> None:
        """Make `messages` hold everything routed to the capture before this call.

        See `Capture.flush`: flush the publisher first, then this, then assert.

        Raises:
            TimeoutError: The round trip did not finish within `timeout` seconds.
            ConnectionClosed: The capture is closed or its connection is gone for good.
        """
        check_timeout(timeout)
        portal, cap = self._portal, self._capture
        if portal is None or cap is None or self._finished:
            raise ConnectionClosed(f"the capture of {self.pattern!r} is closed")
        limit = float("inf") if timeout is None else timeout

        async def flush() -> None:
            with trio.move_on_after(limit):
                await cap.flush(math.inf)
                return
            raise TimeoutError(f"the capture of {self.pattern!r} did not flush within {timeout} s")

        try:
            portal.run(flush)
        except PortalClosed:
            raise ConnectionClosed(f"the capture of {self.pattern!r} is closed") from None

    def close(self) -> None:
        """Unsubscribe and close the capturing client; idempotent. `messages` stays readable.

        Returns once the capture's client is closed (the broker notices soon after).
        """
        portal, scope, done = self._portal, self._scope, self._task_done
        if portal is None or scope is None or done is None:
            return

        async def close() -> None:
            scope.cancel()
            await done.wait()

        # If the broker thread is gone, the capture went with it.
        with contextlib.suppress(PortalClosed):
            portal.run(close)

    def __enter__(self) -> SyncCapture:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- with the lock held ----------------------------------------------------------------------

    def _check_finished(self, wanted: str) -> None:
        if not self._finished:
            return
        if self._error is not None:
            raise _again(self._error)
        raise SubscriptionClosed(
            f"the capture of {self.pattern!r} was closed with {len(self._messages)} messages, "
            f"waiting for {wanted}"
        )

    def _wait(self, deadline: float | None, wanted: str, timeout: float | None) -> None:
        if deadline is None:
            self._cond.wait()
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"captured {len(self._messages)} messages on {self.pattern!r} within {timeout} s, "
                f"waiting for {wanted}"
            )
        self._cond.wait(remaining)

    # -- called in the broker thread -------------------------------------------------------------

    def _attach(
        self, portal: Portal, scope: trio.CancelScope, task_done: trio.Event, cap: Capture
    ) -> None:
        self._portal = portal
        self._scope = scope
        self._task_done = task_done
        self._capture = cap
        cap._observers.append(self._observe)

    def _observe(self, message: Message | None) -> None:
        with self._cond:
            if message is not None:
                self._messages.append(message)
            else:
                self._finished = True
                if self._capture is not None:
                    self._error = self._capture._error
            self._cond.notify_all()

    def _detach(self) -> None:
        """The capture's task has finished: nothing more will arrive."""
        with self._cond:
            self._finished = True
            self._cond.notify_all()
