"""Run an asyncio service on a loop in a thread of its own, so a sync test can drive it.

A service written for asyncio (``async def serve(url): async with broker.connect(url) ...``)
is tested from a plain ``def test_...`` by running it in the background while the test talks to
it with `broker.sync` or a `broker.testing.BrokerThread` capture. `AsyncioThread` is that
background: ``asyncio.run`` of the service's coroutine function in a daemon thread, stopped by
cancelling it, with the service's own failure raised where the test stops it (and logged when it
happens, since a test waiting on a dead service only sees a timeout).

Example::

    def test_prices(broker_thread, broker_client_sync):
        with AsyncioThread(serve_prices, broker_thread.url):
            broker_thread.wait_for_client("prices", subscriptions=1)
            assert broker_client_sync.request("price.apple", b"").payload == b"3"

The pytest plugin's ``asyncio_service`` fixture starts one and stops it after the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Final, Generic, TypeVar, final

from .._checks import check_timeout
from .capture import DEFAULT_WAIT_TIMEOUT

__all__ = ["STOP_TIMEOUT", "AsyncioThread", "start_asyncio_thread"]

log = logging.getLogger("broker.testing")

T = TypeVar("T")
R = TypeVar("R")

#: Seconds `AsyncioThread.stop` waits for the service to end once cancelled.
STOP_TIMEOUT: Final = 5.0


@final
class AsyncioThread(Generic[T]):
    """``fn(*args)``, a coroutine function, run by ``asyncio.run`` in a background thread.

    Use it as a context manager (`start`, then `stop` on exit), or call them. Stopping cancels
    the coroutine, so the service's ``async with`` blocks close its clients as they would on
    shutdown.

    Args:
        fn: The service: a coroutine function (or any callable returning an awaitable).
        args: Its positional arguments.
        name: The thread's name, also used in messages.
    """

    __slots__ = (
        "_args",
        "_done",
        "_error",
        "_fn",
        "_loop",
        "_result",
        "_started",
        "_stopping",
        "_task",
        "_thread",
        "name",
    )

    def __init__(
        self, fn: Callable[..., Awaitable[T]], *args: Any, name: str = "asyncio-service"
    ) -> None:
        self._fn = fn
        self._args = args
        self.name = name
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._done = threading.Event()
        self._stopping = False
        # Set in the thread before _started, read-only afterwards.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        # Set in the thread before _done.
        self._result: T | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        if self._thread is None:
            state = "not started"
        elif self._done.is_set():
            state = "failed" if self._error is not None else "finished"
        else:
            state = "running"
        return f"<AsyncioThread {self.name!r} {state}>"

    @property
    def running(self) -> bool:
        """Whether the service is still running (started, and neither finished nor failed)."""
        return self._started.is_set() and not self._done.is_set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The service's event loop, for ``asyncio.run_coroutine_threadsafe`` and the like.

        Raises:
            RuntimeError: Not started.
        """
        if self._loop is None:
            raise RuntimeError(f"{self!r}: start() it first")
        return self._loop

    def start(self) -> AsyncioThread[T]:
        """Start the thread; return `self` once the service's coroutine runs in its loop.

        The service may still be connecting: wait for it with what it does
        (`broker.testing.BrokerThread.wait_for_client` for its client).

        Raises:
            RuntimeError: Already started.
            TypeError: `fn` did not return an awaitable.
        """
        if self._thread is not None:
            raise RuntimeError(f"{self!r} was started already; make a new AsyncioThread")
        self._thread = threading.Thread(target=self._thread_main, name=self.name, daemon=True)
        self._thread.start()
        self._started.wait()
        if self._task is None:  # it failed before the coroutine ran
            self._thread.join()
            assert self._error is not None
            raise self._error
        return self

    def join(self, timeout: float | None = DEFAULT_WAIT_TIMEOUT) -> T | None:
        """Wait up to `timeout` seconds for the service to end by itself; return its result.

        Raises:
            TimeoutError: It still runs.
            BaseException: What the service raised.
        """
        check_timeout(timeout)
        if self._thread is None:
            raise RuntimeError(f"{self!r}: start() it first")
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the asyncio service {self.name!r} still runs after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    def stop(self, timeout: float | None = STOP_TIMEOUT) -> T | None:
        """Cancel the service and wait up to `timeout` seconds for it to end; idempotent.

        Returns:
            What the service returned, if it finished by itself (or returned once cancelled);
            None if it ended by the cancellation.

        Raises:
            TimeoutError: It did not end in time (it may ignore cancellation).
            BaseException: What the service raised (again on each call), other than the
                cancellation.
        """
        check_timeout(timeout)
        if self._thread is None:
            return None
        self._stopping = True
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not self._done.is_set():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(
                f"the asyncio service {self.name!r} did not end within {timeout} s of being "
                "cancelled"
            )
        if self._error is not None:
            raise self._error
        return self._result

    def call(
        self,
        fn: Callable[..., Coroutine[Any, Any, R]],
        *args: Any,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
    ) -> R:
        """Await ``fn(*args)`` in the service's loop and return its result here.

        For a look at the service's state from the test (``thread.call(service.ready.wait)``).

        Raises:
            TimeoutError: It took longer than `timeout` seconds (None waits forever); it is
                cancelled.
            RuntimeError: The service's loop has ended.
            BaseException: What ``fn`` raised.
        """
        check_timeout(timeout)
        if not self.running:
            raise RuntimeError(f"{self!r} is not running")
        future = asyncio.run_coroutine_threadsafe(fn(*args), self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(
                f"{getattr(fn, '__name__', fn)!r} did not finish within {timeout} s in the "
                f"loop of {self.name!r}"
            ) from None

    def __enter__(self) -> AsyncioThread[T]:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            self.stop()
            return
        # The block's own error is what the test reports; the service's joins it as a note.
        try:
            self.stop()
        except BaseException as error:
            exc.add_note(f"and the asyncio service {self.name!r} failed too: {error!r}")

    # -- in the thread -------------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            self._result = asyncio.run(self._main())
        except asyncio.CancelledError:
            pass  # stopped, or it cancelled itself: it ended either way
        except BaseException as error:
            self._error = error
            if self._started.is_set() and not self._stopping:
                log.error("the asyncio service %r failed", self.name, exc_info=error)
        finally:
            self._started.set()
            self._done.set()

    async def _main(self) -> T:
        awaitable = self._fn(*self._args)
        if not inspect.isawaitable(awaitable):
            raise TypeError(
                f"AsyncioThread runs a coroutine function; {self._fn!r} returned {awaitable!r}"
            )
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._started.set()
        return await awaitable


def start_asyncio_thread(
    fn: Callable[..., Awaitable[T]], *args: Any, name: str = "asyncio-service"
) -> AsyncioThread[T]:
    """Start an `AsyncioThread` running ``fn(*args)`` and return it; `stop` it when done."""
    return AsyncioThread(fn, *args, name=name).start()
