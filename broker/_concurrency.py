"""Small concurrency helpers the client and the testing package share.

A re-armable signal (an anyio Event per round, since Events cannot be cleared), and the unwrapping
of one-error exception groups, so users see `ConnectionClosed` rather than an `ExceptionGroup`.
"""

from __future__ import annotations

import anyio

__all__ = ["Signal", "single_leaf"]


class Signal:
    """Wake every task waiting for "something changed"; a fresh anyio Event per round."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def fire(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self) -> None:
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


def single_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception a chain of one-error groups wraps, or None if any level holds more."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        if len(error.exceptions) != 1:
            return None
        error = error.exceptions[0]
    return error
