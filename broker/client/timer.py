"""The client's one timer for its requests' own limits: a heap and a task, not a scope each.

A request bounded by its ``timeout`` (or the default) used to wait inside a cancel scope of its
own. Entering and leaving one costs 12 to 16 us on these machines, Trio's and anyio's alike,
and a request's latency waits for all of it: more than a tenth of what the requester spends
on a request. A `RequestTimer` keeps every bounded request's deadline in one heap, and one task
sleeps until the earliest and ends the requests whose time is up (`_Waiter.expire`), so a
request pays a heap push. The caller's own cancel scopes still apply as before: whichever ends
first wins (`broker.client.deadlines`).

Deadlines of requests that ended are not looked for in the heap: they are dropped when they
reach its top, or all at once when they outnumber the live ones (`COMPACT_MIN`), so the heap
holds at most about twice the requests waiting.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, final

import anyio

from .._concurrency import Signal

if TYPE_CHECKING:
    from .connection import _Waiter

__all__ = ["COMPACT_MIN", "RequestTimer"]

#: Deadlines of ended requests the heap may hold beyond twice the requests waiting.
COMPACT_MIN: Final = 64


@final
class RequestTimer:
    """Ends each request of `replies` (by reply token) whose deadline passed."""

    __slots__ = ("_clock", "_heap", "_next", "_replies", "_signal", "running", "scope")

    def __init__(self, replies: dict[str, _Waiter], clock: Callable[[], float]) -> None:
        """`clock` is the event loop's (``trio.current_time``, the asyncio loop's ``time``),
        whose deadlines anyio's cancel scopes use."""
        self._replies = replies
        self._clock = clock
        self._heap: list[tuple[float, str]] = []
        #: When the task wakes next, unless an earlier deadline comes.
        self._next = math.inf
        self._signal = Signal()
        #: Whether the task runs: a request uses the timer only then (else a scope of its own).
        self.running = False
        self.scope = anyio.CancelScope()

    def add(self, token: str, limit: float) -> None:
        """End request `token` (waiting in `replies`) `limit` seconds from now, unless it
        ended before."""
        at = self._clock() + limit
        heap = self._heap
        heapq.heappush(heap, (at, token))
        if at < self._next:
            self._next = at
            self._signal.fire()
        if len(heap) > 2 * len(self._replies) + COMPACT_MIN:
            replies = self._replies
            self._heap = [entry for entry in heap if entry[1] in replies]
            heapq.heapify(self._heap)

    async def run(self) -> None:
        """The timer's task, until `scope` is cancelled."""
        with self.scope:
            self.running = True
            try:
                while True:
                    self._expire()
                    with anyio.CancelScope(deadline=self._next):
                        await self._signal.wait()
            finally:
                self.running = False

    def _expire(self) -> None:
        """End the requests whose deadline passed; drop the deadlines of ended ones on top."""
        heap = self._heap
        replies = self._replies
        now = self._clock()
        while heap:
            at, token = heap[0]
            waiter = replies.get(token)
            if waiter is not None and at > now:
                break
            heapq.heappop(heap)
            if waiter is not None:
                waiter.expire()
        self._next = heap[0][0] if heap else math.inf
