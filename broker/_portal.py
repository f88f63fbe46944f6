"""The one bridge from threads to a Trio loop running on a background thread of its own.

`broker.sync` runs its client on such a thread and `broker.testing.BrokerThread` its broker;
both hand work to the loop through a `Portal`. It calls into the loop from any other thread,
even one that runs a Trio loop of its own: `trio.from_thread` refuses that (it cannot tell that
the loop it would block is not the one it calls into), but a Trio test calling a broker thread
is exactly that. It does the same job with `TrioToken.run_sync_soon` and a `threading.Event`,
blocking the calling thread, which is safe for any thread but the loop's own. Whether a caller
may block at all is the caller's rule (`broker.sync` refuses Trio tasks).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar, final

import trio

__all__ = ["Portal", "PortalClosed"]

T = TypeVar("T")


class PortalClosed(RuntimeError):
    """The loop behind a `Portal` has finished, or is stopping and takes no new work."""


class _Result(Generic[T]):
    """One call's outcome, handed from the loop's thread to the caller's."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: T | None = None
        self.error: BaseException | None = None

    def succeed(self, value: T) -> None:
        self.value = value
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()

    def unwrap(self) -> T:
        self.done.wait()
        if self.error is not None:
            try:
                raise self.error
            finally:
                self.error = None  # break the frame <-> exception cycle
        return self.value  # type: ignore[return-value]


@final
class Portal:
    """Runs functions in one Trio loop on behalf of other threads; made in that loop.

    Args:
        nursery: Where `run` starts its tasks; once it is closed (or cancelled), `run` raises
            `PortalClosed`.
        closed_message: The message of `PortalClosed` once the loop is gone.
    """

    __slots__ = ("_nursery", "_thread", "_token", "closed_message")

    def __init__(self, nursery: trio.Nursery, closed_message: str) -> None:
        # Made in the loop's own thread, so these name that loop and that thread.
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.current_thread()
        #: Async calls run as tasks here; once it is closed, calls raise RuntimeError.
        self._nursery = nursery
        #: The PortalClosed message once the loop is gone.
        self.closed_message = closed_message

    def run_sync(self, fn: Callable[[], T]) -> T:
        """Call `fn()` in the loop and return its result (or raise its exception) here.

        Raises:
            PortalClosed: The loop has finished.
            RuntimeError: This is the loop's own thread.
        """
        result: _Result[T] = _Result()

        def call() -> None:
            try:
                value = fn()
            except BaseException as error:
                result.fail(error)
            else:
                result.succeed(value)

        self._submit(call)
        return result.unwrap()

    def run(self, afn: Callable[[], Awaitable[T]]) -> T:
        """Await `afn()` in a task of the loop and return its result (or raise) here.

        Raises:
            PortalClosed: The loop has finished or is stopping.
            RuntimeError: This is the loop's own thread.
        """
        result: _Result[T] = _Result()

        async def task() -> None:
            try:
                value = await afn()
            except Exception as error:
                result.fail(error)
            else:
                result.succeed(value)
            finally:
                if not result.done.is_set():  # cancelled: the loop is stopping
                    result.fail(PortalClosed(self.closed_message))

        def spawn() -> None:
            try:
                self._nursery.start_soon(task)
            except RuntimeError:  # the nursery is closed: the loop is stopping
                result.fail(PortalClosed(self.closed_message))

        self._submit(spawn)
        return result.unwrap()

    def run_soon(self, fn: Callable[[], object]) -> None:
        """Schedule `fn()` in the loop and return at once; nothing happens once it has finished.

        Any thread may call it, the loop's own included. `fn` must not raise: an exception
        would crash the loop.
        """
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn)

    def _submit(self, fn: Callable[[], None]) -> None:
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                "a thread cannot wait for its own Trio loop; call from another thread"
            )
        try:
            self._token.run_sync_soon(fn)
        except trio.RunFinishedError:
            raise PortalClosed(self.closed_message) from None
