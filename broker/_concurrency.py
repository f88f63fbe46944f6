"""Small concurrency helpers the client and the testing package share.

A re-armable signal (an anyio Event per round, since Events cannot be cleared), and the unwrapping
of one-error exception groups, so users see `ConnectionClosed` rather than an `ExceptionGroup`.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any
from weakref import ref

import anyio
import anyio.lowlevel

__all__ = ["Signal", "loop_checkpoints", "running_trio", "single_leaf", "trio_if_running"]


class Signal:
    """Wake every task waiting for "something changed"; a fresh anyio Event per round."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        #: The round's event while a task waits, else None: a hot path that fires for every
        #: message may test it and skip the call to `fire` while nobody waits.
        self.event: anyio.Event | None = None

    def fire(self) -> None:
        if self.event is not None:
            self.event.set()
            self.event = None

    async def wait(self) -> None:
        if self.event is None:
            self.event = anyio.Event()
        await self.event.wait()


def single_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception a chain of one-error groups wraps, or None if any level holds more."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        if len(error.exceptions) != 1:
            return None
        error = error.exceptions[0]
    return error


def running_trio() -> bool:
    """Whether this task runs under Trio (rather than asyncio), asked without sniffio."""
    return trio_if_running() is not None


def trio_if_running() -> ModuleType | None:
    """The `trio` module if this task runs under Trio, else None; found without importing
    Trio (an asyncio program need not load it) and without sniffio."""
    trio = sys.modules.get("trio")
    if trio is None:
        return None
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return None
    return trio


def loop_checkpoints() -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """This event loop's `checkpoint_if_cancelled` and `checkpoint`, looked up once.

    anyio finds the running backend on every call (through sniffio), which costs more than the
    check itself on a path taken once per delivered message: on asyncio, a quarter of a
    subscriber's time. Under Trio these are Trio's own functions.
    """
    trio = trio_if_running()
    if trio is not None:
        return trio.lowlevel.checkpoint_if_cancelled, trio.lowlevel.checkpoint
    try:
        # anyio's own lookup, made once; private, so anything unexpected falls back to the
        # public functions, which make it on every call.
        from anyio._core._eventloop import get_async_backend

        backend = get_async_backend()
        checkpoint_if_cancelled: Callable[[], Awaitable[None]] = backend.checkpoint_if_cancelled
        if backend.__name__ == "AsyncIOBackend":
            checkpoint_if_cancelled = _asyncio_cancellation_check(checkpoint_if_cancelled)
        return checkpoint_if_cancelled, backend.checkpoint
    except (ImportError, AttributeError, RuntimeError):
        return anyio.lowlevel.checkpoint_if_cancelled, anyio.lowlevel.checkpoint


def _asyncio_cancellation_check(
    anyio_check: Callable[[], Awaitable[None]],
) -> Callable[[], Awaitable[None]]:
    """anyio's `checkpoint_if_cancelled` on asyncio, walking the same cancel scopes at half
    the cost when none is cancelled (nearly always); it calls anyio's own when one is.

    anyio finds the task's scopes through a `WeakKeyDictionary` and reads each scope through
    properties: five Python calls, about 1,400 of the 29,000 instructions a delivered message
    cost a consumer. This reads the same state directly. It is anyio's private state, so
    `_reads_as_anyio` checks once that anyio keeps it where it is read; anything unexpected
    keeps anyio's own function.
    """
    import asyncio

    current_task = asyncio.current_task
    try:
        from anyio._backends._asyncio import CancelScope, _task_states

        states: Any = getattr(_task_states, "data", None)  # the WeakKeyDictionary's dict
        if not (isinstance(states, dict) and _reads_as_anyio(states, CancelScope, current_task)):
            return anyio_check
    except Exception:  # anything unexpected in anyio's private state: its own check
        return anyio_check
    state_of = states.get

    async def checkpoint_if_cancelled() -> None:
        task = current_task()
        state = None if task is None else state_of(ref(task))
        scope = None if state is None else state.cancel_scope
        while scope is not None:
            if scope._cancel_called:
                await anyio_check()  # which raises the cancellation, as anyio would
                return
            if scope._shield:
                return
            scope = scope._parent_scope

    return checkpoint_if_cancelled


def _reads_as_anyio(states: dict[Any, Any], scope_type: Any, current_task: Any) -> bool:
    """Whether anyio keeps this task's innermost cancel scope, and each scope's parent,
    shield and cancellation, where `_asyncio_cancellation_check` reads them: checked once,
    on two scopes entered and left without cancelling anything."""
    task = current_task()
    if task is None:
        return False
    with scope_type() as outer, scope_type(shield=True) as inner:
        state = states.get(ref(task))
        found = (
            state is not None
            and state.cancel_scope is inner
            and inner._parent_scope is outer
            and inner._shield is True
            and outer._shield is False
            and outer._cancel_called is False
        )
    cancelled = scope_type()
    cancelled._cancel_called = True
    return found and cancelled.cancel_called is True
