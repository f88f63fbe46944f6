"""The bounded outbox between fan-out and one client's writer task.

Publishers' tasks offer frames without waiting; the client's writer takes everything pending as
one buffer for one ``send_all``. Bounds are in messages and in bytes at their real memory cost,
and a full outbox is a slow consumer, which the transport handles by policy.

While a reader turns one read into deliveries, the wakes of idle writers are held
(`HeldWakes`): when the read is done, the reader writes what it queued for them at once, without
waiting, as nats-server's read loop does, and wakes only those it could not finish for. A reply
then leaves in the same scheduling pass as the request that caused it, instead of two passes
later through the writer's task.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterator
from typing import Final, cast, final

import trio

from ..hub import REPLAY_ENTRY_COST, ReplayMemory

__all__ = [
    "CONTROL_OVERHEAD",
    "DIRECT_WRITES_PER_TURN",
    "DIRECT_WRITE_BYTES",
    "MESSAGE_OVERHEAD",
    "WRITE_BATCH_BYTES",
    "HeldWakes",
    "Outbox",
    "held_wakes",
    "replay_cost",
]

#: Most bytes one write takes from a backlog (everything, when less is queued).
WRITE_BATCH_BYTES: Final = 1024 * 1024
#: Most bytes a reader writes for an idle writer at the end of its turn (see `HeldWakes`); a
#: larger batch is left to the writer, so one reader's turn stays short.
DIRECT_WRITE_BYTES: Final = 64 * 1024
#: Most outboxes one reader writes for at the end of a turn; the writers of the others are woken
#: as usual. A publish reaching thousands of idle subscribers must not make its reader do
#: thousands of system calls in one step.
DIRECT_WRITES_PER_TURN: Final = 32
#: Memory a queued message holds beyond its frame bytes, at most: its head is a `bytes` object
#: of its own, its tail another (shared with other subscribers, but a stalled client may be the
#: last to hold it), each rounded up to the allocator's 16-byte blocks, and each takes a deque
#: slot. Counting it makes `max_pending_bytes` bound the memory a stalled client pins, not just
#: its frame bytes (small frames were 1.5x over).
MESSAGE_OVERHEAD: Final = 2 * (sys.getsizeof(b"") + 15) + 2 * 8
#: The same for a queued control frame (PONG, ERR, PING): one `bytes` object of its own and two
#: deque slots (`_CONTROL`, then the frame). A 9-byte PONG holds about 70 bytes; counting only
#: its 9 let a client that sends PINGs and never reads pin seven times `max_pending_bytes`.
CONTROL_OVERHEAD: Final = sys.getsizeof(b"") + 15 + 2 * 8


def replay_cost(count: int, size: int) -> int:
    """What a replay of `count` messages of `size` bytes in all holds while it is under way.

    Its references to the store (`REPLAY_ENTRY_COST` each), and the chunk being written: the
    frames of about `WRITE_BATCH_BYTES` (one frame more at most), their list, and the buffer
    they are joined into, which briefly hold the chunk twice.
    """
    chunk = min(size, WRITE_BATCH_BYTES) + MESSAGE_OVERHEAD * count
    return count * REPLAY_ENTRY_COST + 2 * min(chunk, 2 * WRITE_BATCH_BYTES)


#: Queued before a frame (PING, PONG, ERR) that the drop policies must never discard. Empty, so
#: joining the queue as it is sends the frames alone; no message head is empty. Not a marked
#: `bytes` subclass: its instances are objects the garbage collector tracks, and a client
#: flooding PINGs made a million of them, each full collection walking them all (80 ms).
_CONTROL: Final = b""


@final
class _Replay:
    """A new subscription's retained messages, queued as one item where its SUB was routed.

    The frames are made as the writer reaches them, a chunk at a time (see
    `Outbox.take_batch`), from references to the store's own encodings: a replay of the whole
    store costs a client a list of references and one chunk, never a copy of the store.
    """

    __slots__ = ("cost", "frames")

    def __init__(self, frames: Iterator[tuple[bytes, bytes]], cost: int) -> None:
        self.frames = frames
        #: What it is charged against the server-wide `ReplayMemory` until it ends.
        self.cost = cost


@final
class HeldWakes:
    """The wakes of idle writers held while one reader turns a read into deliveries.

    One per trio run (`held_wakes`): a reader's turn is synchronous, so every delivery made while
    `holding` is that reader's. `release` gives each listed outbox to its `direct` writer (the
    transport's non-blocking write), and wakes the writer of any it did not empty.
    """

    __slots__ = ("holding", "outboxes", "unsent")

    def __init__(self) -> None:
        self.holding = False
        self.outboxes: list[Outbox] = []
        #: Whether the reader's turn left frames for a writer to send: it woke one, queued
        #: behind one still sending, or found an outbox full. If not (every delivery written
        #: at the turn's end, or none made), no writer needs to send before the next read.
        self.unsent = False

    def release(self) -> None:
        """Stop holding; write for, or wake, every outbox that was offered to meanwhile."""
        self.holding = False
        outboxes = self.outboxes
        if not outboxes:
            return
        self.outboxes = []
        try:
            for number, outbox in enumerate(outboxes):
                outbox._listed = False
                if not outbox._waiting:
                    continue  # woken meanwhile (the session is ending, for one)
                direct = outbox.direct
                if number >= DIRECT_WRITES_PER_TURN or direct is None or not direct():
                    outbox.wake()
        except BaseException:
            # A bug in a direct write: no other writer may be left asleep with frames queued.
            for outbox in outboxes:
                outbox._listed = False
                if outbox._waiting and outbox:
                    outbox.wake()
            raise


_HELD: Final = trio.lowlevel.RunVar[HeldWakes]("broker_held_wakes")


def held_wakes() -> HeldWakes:
    """This trio run's `HeldWakes`, shared by every outbox and reader in it (outside a run, as
    in a synchronous test, one of its own)."""
    try:
        return _HELD.get()
    except RuntimeError:
        return HeldWakes()
    except LookupError:
        held = HeldWakes()
        _HELD.set(held)
        return held


@final
class Outbox:
    """The bounded queue of encoded frames between fan-out and one client's writer.

    A trio memory channel bounds only the item count; this queue also bounds bytes, lets the
    drop_oldest policy discard from the head, and hands the writer everything at once as one
    buffer. Bounds apply to what is waiting plus the batch the writer is sending.

    A message is queued as two items: its own head (length, op, sid) and the tail it shares
    with every other subscriber of the same publish, so fan-out never copies a payload. A
    control frame is two items too: `_CONTROL`, then the frame. A retained replay is one
    `_Replay` item, streamed when the writer reaches it.
    """

    __slots__ = (
        "_frames",
        "_held",
        "_listed",
        "_lot",
        "_replay_memory",
        "_replay_taken",
        "_rest",
        "_streaming_cost",
        "_waiting",
        "bytes",
        "control_bytes",
        "direct",
        "max_bytes",
        "max_messages",
        "messages",
        "replaying",
        "sending",
        "streaming",
    )

    def __init__(
        self,
        *,
        max_messages: int,
        max_bytes: int,
        replay_memory: ReplayMemory | None = None,
        held: HeldWakes | None = None,
    ) -> None:
        self._frames: deque[bytes | _Replay] = deque()
        #: Where a wake is held during a reader's turn, and whether this outbox is listed there.
        self._held = HeldWakes() if held is None else held
        self._listed = False
        #: Writes the next batch now, without waiting, for an idle writer; True if it sent it
        #: all. Set by the transport for streams that can (plain TCP), None for the others.
        self.direct: Callable[[], bool] | None = None
        #: What a direct write left unsent: it goes out first, and counts in `sending`.
        self._rest: bytes | None = None
        #: The server-wide bound every replay queued here is charged against.
        self._replay_memory = ReplayMemory(2**63) if replay_memory is None else replay_memory
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
        #: Replays queued and not yet reached by the writer (outside the bounds), and who waits
        #: for the writer to take them.
        self.replaying = 0
        self._replay_taken: trio.Event | None = None
        #: The frames of the replay the writer is sending, a chunk per batch.
        self.streaming: Iterator[tuple[bytes, bytes]] | None = None
        self._streaming_cost = 0

    def __bool__(self) -> bool:
        return bool(self._frames) or self.streaming is not None or self._rest is not None

    def offer(self, head: bytes, tail: bytes) -> bool:
        """Queue one message frame, `head + tail`; False (nothing queued) past a bound.

        A message always fits an outbox holding no other message, so a frame larger than
        `max_bytes` is delivered to a reader that keeps up instead of failing every time.
        """
        size = len(head) + len(tail) + MESSAGE_OVERHEAD
        if self.messages and (
            self.messages >= self.max_messages or self.bytes + self.sending + size > self.max_bytes
        ):
            self._held.unsent = True  # its writer is behind
            return False
        frames = self._frames
        frames.append(head)
        frames.append(tail)
        self.messages += 1
        self.bytes += size
        if self._waiting:
            self._wake_or_hold()
        else:
            self._held.unsent = True  # queued behind a write still under way
        return True

    def offer_run(self, frames: list[bytes], count: int, size: int) -> bool:
        """Queue `count` message frames at once, or nothing (False) unless they all fit.

        `frames` alternates heads and tails, as `offer` queues them; `size` is what they
        cost, `MESSAGE_OVERHEAD` each included. A run that does not fit is for the caller to
        `offer` one frame at a time, so each goes through the bounds and the drop policy.
        """
        if (
            self.messages + count > self.max_messages
            or self.bytes + self.sending + size > self.max_bytes
        ):
            return False
        self._frames.extend(frames)
        self.messages += count
        self.bytes += size
        if self._waiting:
            self._wake_or_hold()
        else:
            self._held.unsent = True  # queued behind a write still under way
        return True

    def offer_replay(self, frames: Iterator[tuple[bytes, bytes]], cost: int = 0) -> None:
        """Queue a new subscription's retained messages, outside the bounds, in order.

        A replay is the retained store's content, already bounded by its own limits; counting
        it against the outbox's would cut off a subscriber that keeps up merely because it
        subscribed to a wide pattern. It costs the client no copy: `frames` makes each
        (head, tail) as the writer reaches it, a chunk of `WRITE_BATCH_BYTES` per write. An
        adapter queues one replay at a time beyond the one being sent (see
        `NativeAdapter.process`); a client that stops reading during a replay is cut by
        write_timeout like any other. `cost` (see `replay_cost`) is charged against the
        server-wide `ReplayMemory` until the replay ends or the outbox is cleared; the adapter
        starts one only while that has room (see `wait_replay_room`).
        """
        self._replay_memory.charge(cost)
        self._frames.append(_Replay(frames, cost))
        self.replaying += 1
        if self._waiting:
            self.wake()
        else:
            self._held.unsent = True

    @property
    def replay_room(self) -> bool:
        """Whether a new replay may be queued now: none waits here, and the server has room."""
        return not self.replaying and self._replay_memory.has_room

    async def wait_replay_room(self) -> None:
        """Sleep until `replay_room`: the writer took the replay queued here, and the replays
        under way server-wide leave room for one more."""
        while not self.replay_room:
            if self.replaying:
                if self._replay_taken is None:
                    self._replay_taken = trio.Event()
                await self._replay_taken.wait()
            else:
                room = trio.Event()
                self._replay_memory.when_room(room.set)
                await room.wait()

    def push_control(self, frame: bytes) -> None:
        """Queue a control frame; it counts towards bytes but is never dropped by policy."""
        frames = self._frames
        frames.append(_CONTROL)
        frames.append(frame)
        size = len(frame) + CONTROL_OVERHEAD
        self.bytes += size
        self.control_bytes += size
        if self._waiting:
            self._wake_or_hold()
        else:
            self._held.unsent = True

    def drop_oldest(self, room: int) -> list[bytes]:
        """Discard the oldest messages until a frame of `room` bytes fits; return their heads."""
        room += MESSAGE_OVERHEAD
        frames = self._frames
        kept: list[bytes | _Replay] = []
        dropped: list[bytes] = []
        while self.messages and (
            self.messages >= self.max_messages or self.bytes + self.sending + room > self.max_bytes
        ):
            head = frames.popleft()
            if type(head) is _Replay:
                kept.append(head)
                continue
            tail = frames.popleft()
            if not head:  # _CONTROL, then the control frame
                kept.append(head)
                kept.append(tail)
                continue
            assert type(head) is bytes and type(tail) is bytes
            self.messages -= 1
            self.bytes -= len(head) + len(tail) + MESSAGE_OVERHEAD
            dropped.append(head)
        frames.extendleft(reversed(kept))
        return dropped

    @property
    def mid_frame(self) -> bool:
        """Whether a direct write left part of a frame unsent (`put_back`): until it goes, no
        other frame (an ERR above all) may be written on this stream."""
        return self._rest is not None

    def clear(self, *, keep_rest: bool = False) -> None:
        """Discard everything queued (the client is being cut off, or is gone).

        With `keep_rest`, the unsent rest of a frame stays, to go out first (`put_back`).
        """
        queued = sum(item.cost for item in self._frames if type(item) is _Replay)
        self._replay_memory.release(queued + self._streaming_cost)
        self._streaming_cost = 0
        self._frames.clear()
        self.streaming = None
        self.messages = 0
        self.bytes = 0
        if keep_rest and self._rest is not None:
            self.sending = len(self._rest)
        else:
            self._rest = None
            self.sending = 0
        self.control_bytes = 0
        self._replay_done()

    def take_batch(self) -> bytes:
        """The next frames to send, as one buffer for one `send_all`; call `sent` after it.

        Usually everything queued. A backlog of live messages larger than `WRITE_BATCH_BYTES`
        goes out in batches of about that size: joining frames into one buffer briefly holds
        them twice, and a batch the client stops reading in the middle of stays pinned until it
        is sent. A replay goes out in chunks of about that size when the writer reaches it; it
        is taken (and the SUBs waiting on it go ahead) as soon as it is reached, and its
        chunks never count in `sending`. Empty only when a replay matched nothing.
        """
        rest = self._rest
        if rest is not None:
            self._rest = None
            return rest  # still counted in `sending`
        if self.streaming is not None:
            return self._stream_chunk()
        frames = self._frames
        if frames and type(frames[0]) is _Replay:
            replay = frames.popleft()
            assert isinstance(replay, _Replay)
            self.streaming = replay.frames
            self._streaming_cost = replay.cost
            self.replaying -= 1
            if not self.replaying:
                self._replay_done()
            return self._stream_chunk()
        if not self.replaying and self.bytes <= WRITE_BATCH_BYTES:
            # No replay is queued, so every item is bytes.
            queued = cast("deque[bytes]", frames)
            data = queued.popleft() if len(queued) == 1 else b"".join(queued)
            self.sending = len(data)
            frames.clear()
            self.messages = 0
            self.bytes = 0
            self.control_bytes = 0
            return data
        data = self._take_some(WRITE_BATCH_BYTES)
        self.sending = len(data)
        return data

    def _stream_chunk(self) -> bytes:
        """About `WRITE_BATCH_BYTES` of the replay being sent; ends the replay when it is done."""
        streaming = self.streaming
        assert streaming is not None
        chunk: list[bytes] = []
        size = 0
        for head, tail in streaming:
            chunk.append(head)
            chunk.append(tail)
            size += len(head) + len(tail)
            if size >= WRITE_BATCH_BYTES:
                break
        else:
            self.streaming = None  # its cost is released once this last chunk is sent
        self.sending = 0
        return b"".join(chunk)

    def _take_some(self, limit: int) -> bytes:
        """About `limit` bytes of live messages and control frames, up to the next replay."""
        frames = self._frames
        popleft = frames.popleft
        batch: list[bytes] = []
        size = 0
        while frames and size < limit:
            if type(frames[0]) is _Replay:
                break
            head = popleft()
            tail = popleft()
            assert isinstance(head, bytes) and isinstance(tail, bytes)
            if not head:  # _CONTROL, then the control frame
                batch.append(tail)
                size += len(tail)
                self.bytes -= len(tail) + CONTROL_OVERHEAD
                self.control_bytes -= len(tail) + CONTROL_OVERHEAD
                continue
            batch.append(head)
            batch.append(tail)
            frame = len(head) + len(tail)
            size += frame
            self.messages -= 1
            self.bytes -= frame + MESSAGE_OVERHEAD
        return b"".join(batch)

    def take_direct(self) -> bytes | None:
        """`take_batch` for a reader writing on an idle writer's behalf (`HeldWakes`), or None.

        Only what the writer would send straight away, in one write: live messages and
        control frames, none being sent or replayed, at most `DIRECT_WRITE_BYTES` at their
        counted cost. Anything else is left to the writer.
        """
        if (
            self.sending
            or self.replaying
            or self.streaming is not None
            or self._rest is not None
            or not self._frames
            or self.bytes > DIRECT_WRITE_BYTES
        ):
            return None
        return self.take_batch()

    def put_back(self, rest: bytes) -> None:
        """Part of the batch just taken was not sent: it goes out first, and counts until then."""
        self._rest = rest
        self.sending = len(rest)

    def sent(self) -> None:
        """The batch `take_batch` returned is on the wire: its bytes no longer count."""
        self.sending = 0
        if self.streaming is None and self._streaming_cost:
            self._replay_memory.release(self._streaming_cost)  # a replay's last chunk
            self._streaming_cost = 0

    def _replay_done(self) -> None:
        self.replaying = 0
        if self._replay_taken is not None:
            self._replay_taken.set()
            self._replay_taken = None

    async def wait(self) -> None:
        """Sleep until something is queued (or the caller's cancel scope fires)."""
        if self:
            return
        self._waiting = True
        try:
            await self._lot.park()
        finally:
            self._waiting = False

    def _wake_or_hold(self) -> None:
        """Wake the idle writer, or list this outbox for the reader's turn's end (`HeldWakes`)."""
        if self._held.holding and self.direct is not None:
            if not self._listed:
                self._listed = True
                self._held.outboxes.append(self)
        else:
            self.wake()

    def wake(self) -> None:
        """Wake the writer (it looks at the outbox and the session state again)."""
        self._held.unsent = True
        self._waiting = False
        self._lot.unpark_all()
