"""The bounded outbox between fan-out and one client's writer task.

Publishers' tasks offer frames without waiting; the client's writer takes everything pending as
one buffer for one ``send_all``. Bounds are in messages and in bytes at their real memory cost,
and a full outbox is a slow consumer, which the transport handles by policy.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import Final, final

import trio

__all__ = ["CONTROL_OVERHEAD", "MESSAGE_OVERHEAD", "WRITE_BATCH_BYTES", "Outbox"]

#: Most bytes one write takes from a backlog (everything, when less is queued).
WRITE_BATCH_BYTES: Final = 1024 * 1024
#: Memory a queued message holds beyond its frame bytes, at most: its head is a `bytes` object
#: of its own, its tail another (shared with other subscribers, but a stalled client may be the
#: last to hold it), each rounded up to the allocator's 16-byte blocks, and each takes a deque
#: slot. Counting it makes `max_pending_bytes` bound the memory a stalled client pins, not just
#: its frame bytes (small frames were 1.5x over).
MESSAGE_OVERHEAD: Final = 2 * (sys.getsizeof(b"") + 15) + 2 * 8
#: The same for a queued control frame (PONG, ERR, PING): one `bytes` object of its own and one
#: deque slot. A 9-byte PONG holds about 65 bytes; counting only its 9 let a client that sends
#: PINGs and never reads pin seven times `max_pending_bytes`.
CONTROL_OVERHEAD: Final = sys.getsizeof(b"") + 15 + 8


class _Control(bytes):
    """A frame (PING, PONG, ERR) that the drop policies must never discard."""

    __slots__ = ()


class _Replayed(bytes):
    """The head of a retained message replayed to a new subscription; its tail follows it.

    Replays sit outside the outbox's bounds (see `Outbox.offer_replay`), so the drop policies
    never discard them either.
    """

    __slots__ = ()


@final
class Outbox:
    """The bounded queue of encoded frames between fan-out and one client's writer.

    A trio memory channel bounds only the item count; this queue also bounds bytes, lets the
    drop_oldest policy discard from the head, and hands the writer everything at once as one
    buffer. Bounds apply to what is waiting plus the batch the writer is sending.

    A message is queued as two items: its own head (length, op, sid) and the tail it shares
    with every other subscriber of the same publish, so fan-out never copies a payload.
    """

    __slots__ = (
        "_frames",
        "_lot",
        "_replay_taken",
        "_waiting",
        "bytes",
        "control_bytes",
        "max_bytes",
        "max_messages",
        "messages",
        "replay_bytes",
        "replaying",
        "sending",
    )

    def __init__(self, *, max_messages: int, max_bytes: int) -> None:
        self._frames: deque[bytes] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._waiting = False
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.messages = 0
        self.bytes = 0
        #: Bytes the writer took and has not finished sending. They count towards `max_bytes`
        #: too, so the bound holds for the memory a client pins even while its writer is stuck
        #: in the middle of a batch (a stalled client's first batch, for one).
        self.sending = 0
        #: Bytes of queued control frames, bounded on their own: under the drop policies the
        #: outbox sits at its byte bound by design, and a PONG must not tip it over.
        self.control_bytes = 0
        #: Replayed messages queued (outside the bounds), and who waits for the writer to take
        #: them.
        self.replaying = 0
        self.replay_bytes = 0
        self._replay_taken: trio.Event | None = None

    def __bool__(self) -> bool:
        return bool(self._frames)

    def offer(self, head: bytes, tail: bytes) -> bool:
        """Queue one message frame, `head + tail`; False (nothing queued) past a bound.

        A message always fits an outbox holding no other message, so a frame larger than
        `max_bytes` is delivered to a reader that keeps up instead of failing every time.
        """
        size = len(head) + len(tail) + MESSAGE_OVERHEAD
        if self.messages and (
            self.messages >= self.max_messages or self.bytes + self.sending + size > self.max_bytes
        ):
            return False
        frames = self._frames
        frames.append(head)
        frames.append(tail)
        self.messages += 1
        self.bytes += size
        if self._waiting:
            self.wake()
        return True

    def offer_replay(self, head: bytes, tail: bytes) -> None:
        """Queue one replayed retained message, outside the bounds.

        A replay is the retained store's content, already bounded by its own limits; counting
        it against the outbox's would cut off a subscriber that keeps up merely because it
        subscribed to a wide pattern. Instead an adapter queues one replay at a time (see
        `NativeAdapter.process`), so a client holds at most one replay beyond its bounds.
        """
        frames = self._frames
        frames.append(_Replayed(head))
        frames.append(tail)
        self.replaying += 1
        self.replay_bytes += len(head) + len(tail)
        if self._waiting:
            self.wake()

    async def wait_replay_taken(self) -> None:
        """Sleep until the writer has taken every queued replayed message."""
        if not self.replaying:
            return
        if self._replay_taken is None:
            self._replay_taken = trio.Event()
        await self._replay_taken.wait()

    def push_control(self, frame: bytes) -> None:
        """Queue a control frame; it counts towards bytes but is never dropped by policy."""
        self._frames.append(_Control(frame))
        size = len(frame) + CONTROL_OVERHEAD
        self.bytes += size
        self.control_bytes += size
        if self._waiting:
            self.wake()

    def drop_oldest(self, room: int) -> list[bytes]:
        """Discard the oldest messages until a frame of `room` bytes fits; return their heads."""
        room += MESSAGE_OVERHEAD
        frames = self._frames
        kept: list[bytes] = []
        dropped: list[bytes] = []
        while self.messages and (
            self.messages >= self.max_messages or self.bytes + self.sending + room > self.max_bytes
        ):
            head = frames.popleft()
            kind = type(head)
            if kind is _Control:
                kept.append(head)
                continue
            tail = frames.popleft()
            if kind is _Replayed:
                kept.append(head)
                kept.append(tail)
                continue
            self.messages -= 1
            self.bytes -= len(head) + len(tail) + MESSAGE_OVERHEAD
            dropped.append(head)
        frames.extendleft(reversed(kept))
        return dropped

    def clear(self) -> None:
        """Discard everything queued (the client is being cut off)."""
        self._frames.clear()
        self.messages = 0
        self.bytes = 0
        self.sending = 0
        self.control_bytes = 0
        self.replay_bytes = 0
        self._replay_done()

    def take_batch(self) -> bytes:
        """The next frames to send, as one buffer for one `send_all`; call `sent` after it.

        Usually everything queued. A backlog of live messages larger than `WRITE_BATCH_BYTES`
        goes out in batches of about that size: joining frames into one buffer briefly holds
        them twice, and a batch the client stops reading in the middle of stays pinned until it
        is sent. A queued replay is taken whole, so the SUBs waiting on it go ahead at once
        (a client that writes much before it reads must not wait on its own replay); its size
        is bounded by the retained store, and it never counts in `sending`.
        """
        frames = self._frames
        if self.replaying or self.bytes <= WRITE_BATCH_BYTES:
            data = frames.popleft() if len(frames) == 1 else b"".join(frames)
            self.sending = len(data) - self.replay_bytes
            frames.clear()
            self.messages = 0
            self.bytes = 0
            self.control_bytes = 0
            self.replay_bytes = 0
            if self.replaying:
                self._replay_done()
            return data
        data = self._take_some(WRITE_BATCH_BYTES)
        self.sending = len(data)
        return data

    def _take_some(self, limit: int) -> bytes:
        """About `limit` bytes of live messages and control frames (no replay is queued)."""
        frames = self._frames
        popleft = frames.popleft
        batch: list[bytes] = []
        size = 0
        while frames and size < limit:
            head = popleft()
            kind = type(head)
            if kind is _Control:
                batch.append(head)
                size += len(head)
                self.bytes -= len(head) + CONTROL_OVERHEAD
                self.control_bytes -= len(head) + CONTROL_OVERHEAD
                continue
            tail = popleft()
            batch.append(head)
            batch.append(tail)
            frame = len(head) + len(tail)
            size += frame
            self.messages -= 1
            self.bytes -= frame + MESSAGE_OVERHEAD
        return b"".join(batch)

    def sent(self) -> None:
        """The batch `take_batch` returned is on the wire: its bytes no longer count."""
        self.sending = 0

    def _replay_done(self) -> None:
        self.replaying = 0
        if self._replay_taken is not None:
            self._replay_taken.set()
            self._replay_taken = None

    async def wait(self) -> None:
        """Sleep until something is queued (or the caller's cancel scope fires)."""
        if self._frames:
            return
        self._waiting = True
        try:
            await self._lot.park()
        finally:
            self._waiting = False

    def wake(self) -> None:
        """Wake the writer (it looks at the outbox and the session state again)."""
        self._waiting = False
        self._lot.unpark_all()
