"""One client connection: handshake, a reader task, a writer task, and the bounded outbox between.

Data flows one way. The reader decodes every complete frame of a read in one pass and routes
publishes itself: for each matching subscription it encodes the frame and offers it to that
subscriber's `Outbox` without waiting. A full outbox makes its owner a slow consumer, handled by
the configured policy. Each session's writer is the only task that writes to its socket; it takes
everything pending and sends it in one `send_all`.
"""

from __future__ import annotations

import logging
import math
import sys
from collections import deque
from typing import Any, Final, final

import trio

from ._version import __version__
from .config import Config
from .protocol import (
    CLOSED,
    NEED_DATA,
    PROTOCOL_VERSION,
    Connection,
    Err,
    ErrorCode,
    Event,
    Hello,
    Ping,
    Pong,
    Pub,
    RemoteProtocolError,
    Role,
    Sub,
    Unsub,
    Welcome,
    encode_frame,
    encode_msg_tail,
    encode_retained_tail,
    msg_head,
    msg_head_sid,
    msg_prefix,
)
from .retained import RetainedStore
from .routing import RoutingTable
from .stats import Counters
from .subjects import SubjectError, validate_subject

__all__ = ["Hub", "Outbox", "Session", "Subscription"]

log = logging.getLogger("broker.session")

#: Bytes asked of the socket per read; one read's frames are decoded and routed in one pass.
READ_SIZE: Final = 64 * 1024
#: How long a closing connection is drained so the peer reads our final ERR, not a reset.
LINGER_SECONDS: Final = 0.5
_NO_RESPONDERS_HEADERS: Final = {"status": "503"}
#: Most bytes one write takes from a backlog (everything, when less is queued).
WRITE_BATCH_BYTES: Final = 1024 * 1024
#: Memory a queued message holds beyond its frame bytes, at most: its head is a `bytes` object
#: of its own, its tail another (shared with other subscribers, but a stalled client may be the
#: last to hold it), each rounded up to the allocator's 16-byte blocks, and each takes a deque
#: slot. Counting it makes `max_pending_bytes` bound the memory a stalled client pins, not just
#: its frame bytes (small frames were 1.5x over).
MESSAGE_OVERHEAD: Final = 2 * (sys.getsizeof(b"") + 15) + 2 * 8
#: The errors counted as `protocol_errors`: the client broke the contract, as opposed to being
#: slow, idle, late or turned away.
PROTOCOL_VIOLATIONS: Final = frozenset(
    {
        ErrorCode.BAD_FRAME,
        ErrorCode.BAD_HANDSHAKE,
        ErrorCode.UNKNOWN_OP,
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.BAD_SUBJECT,
        ErrorCode.BAD_SID,
        ErrorCode.TOO_MANY_SUBSCRIPTIONS,
    }
)


@final
class Hub:
    """What every session shares: config, routing table, retained store, counters, sessions."""

    __slots__ = (
        "closing",
        "config",
        "counters",
        "info",
        "next_client_id",
        "retained",
        "sessions",
        "table",
    )

    def __init__(self, config: Config, *, server_id: str) -> None:
        self.config = config
        self.table: RoutingTable[Subscription] = RoutingTable(
            max_subject_length=config.max_subject_length,
            max_subject_tokens=config.max_subject_tokens,
        )
        #: Each retained subject's message, encoded ready to follow a replay's MSG prefix, and
        #: the size of its payload (for the statistics).
        self.retained: RetainedStore[tuple[bytes, int]] = RetainedStore(
            max_subjects=config.max_retained_subjects, max_bytes=config.max_retained_bytes
        )
        self.counters = Counters()
        self.sessions: set[Session] = set()
        self.next_client_id = 1
        #: Set once shutdown begins, so a session that was accepted but not yet registered
        #: refuses its client instead of serving it until the grace period runs out.
        self.closing = False
        self.info: dict[str, Any] = {
            "version": PROTOCOL_VERSION,
            "server_id": server_id,
            "server_name": "broker",
            "broker_version": __version__,
            "max_payload": config.max_payload,
            "max_frame": config.frame_limit,
            "max_subscriptions": config.max_subscriptions,
            "max_subject_length": config.max_subject_length,
            "max_subject_tokens": config.max_subject_tokens,
            "ping_interval": config.ping_interval,
            "slow_consumer_policy": config.slow_consumer_policy,
            "headers": True,
            "max_retained_subjects": config.max_retained_subjects,
            "max_retained_bytes": config.max_retained_bytes,
        }


@final
class Subscription:
    """One SUB of one session; routed by identity, so it is never compared by value."""

    __slots__ = ("delivered", "max_msgs", "pattern", "prefix", "queue", "session", "sid")

    def __init__(self, session: Session, sid: int, pattern: str, queue: str | None) -> None:
        self.session = session
        self.sid = sid
        self.pattern = pattern
        self.queue = queue
        self.prefix = msg_prefix(sid)
        self.delivered = 0
        self.max_msgs: int | None = None


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
            self._wake()
        return True

    def offer_replay(self, head: bytes, tail: bytes) -> None:
        """Queue one replayed retained message, outside the bounds.

        A replay is the retained store's content, already bounded by its own limits; counting
        it against the outbox's would cut off a subscriber that keeps up merely because it
        subscribed to a wide pattern. Instead the session queues one replay at a time (see
        `Session._dispatch`), so a client holds at most one replay beyond its bounds.
        """
        frames = self._frames
        frames.append(_Replayed(head))
        frames.append(tail)
        self.replaying += 1
        self.replay_bytes += len(head) + len(tail)
        if self._waiting:
            self._wake()

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
        self.bytes += len(frame)
        self.control_bytes += len(frame)
        if self._waiting:
            self._wake()

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
                self.bytes -= len(head)
                self.control_bytes -= len(head)
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

    def _wake(self) -> None:
        self._waiting = False
        self._lot.unpark_all()


@final
class Session:
    """One client: performs the handshake, then runs its reader and writer until closed."""

    def __init__(self, hub: Hub, stream: trio.abc.HalfCloseableStream, peer: str) -> None:
        config = hub.config
        self.hub = hub
        self.stream = stream
        self.peer = peer
        self.client_id = hub.next_client_id
        hub.next_client_id += 1
        self.name = ""
        self.echo = True
        #: Whether the client takes MSG's 7th element, the retained flag (HELLO `retained`);
        #: older clients get replays as plain MSGs.
        self.retained_flag = False
        self.conn = Connection(Role.SERVER, max_frame=config.frame_limit)
        self.outbox = Outbox(
            max_messages=config.max_pending_messages, max_bytes=config.max_pending_bytes
        )
        self.subs: dict[int, Subscription] = {}
        self.dropped_unreported = 0
        self.dropped_total = 0
        self._dropped_by_sid: dict[int, int] = {}
        self._max_payload = config.max_payload
        self._policy = config.slow_consumer_policy
        self._fatal: tuple[ErrorCode, str] | None = None
        self._accepting = True
        self._eof = False
        self._shutting_down = False
        self._slow = False
        self._reader_scope = trio.CancelScope()
        self._session_scope = trio.CancelScope()
        self._stalled: trio.Event | None = None
        self._write_scope: trio.CancelScope | None = None
        self._handshake_scope = trio.CancelScope()
        self._last_received = 0.0
        self._last_ping = 0.0
        self._pings_outstanding = 0
        #: Events of one read left for later: a plain SUB (and what followed it) waiting for
        #: the writer to take the replay queued by an earlier SUB.
        self._deferred: list[Event] | None = None

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return f"<Session {self.client_id}{name} {self.peer}>"

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve this client until it leaves, misbehaves, lags too far, or the server stops."""
        hub = self.hub
        hub.sessions.add(self)
        try:
            with self._session_scope:
                if not await self._handshake():
                    return
                log.debug("%r connected", self)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_loop)
                    await self._write_loop()
                    self._reader_scope.cancel()
                if self._fatal is not None or self._shutting_down:
                    await self._linger()
        finally:
            self._accepting = False
            hub.sessions.discard(self)
            table = hub.table
            for sub in self.subs.values():
                table.discard(sub)
            self.subs.clear()
            log.debug("%r closed", self)

    def begin_shutdown(self) -> None:
        """Tell the client the server is stopping; flush what is queued, then close."""
        if self._fatal is not None or self._shutting_down:
            return
        self._shutting_down = True
        self._reader_scope.cancel()
        self._handshake_scope.cancel()
        self.outbox.push_control(
            self._err_frame(ErrorCode.SHUTTING_DOWN, "the server is shutting down")
        )

    # -- fault injection (broker.testing): what a bad network or a stuck client would do ------

    def drop(self) -> None:
        """Cut the connection at once with no ERR, as a network failure would."""
        log.info("%r dropped on request", self)
        self._accepting = False
        self._session_scope.cancel()

    def stall(self) -> None:
        """Stop writing to this client, as if it stopped reading, until `resume`.

        Deliveries keep being queued, so the slow-consumer policy applies as it would to a
        client that really stalled.
        """
        if self._stalled is None:
            self._stalled = trio.Event()

    def resume(self) -> None:
        """Undo `stall`."""
        if self._stalled is not None:
            self._stalled.set()
            self._stalled = None

    async def _handshake(self) -> bool:
        config = self.hub.config
        conn = self.conn
        event: Event | None = None
        if self.hub.closing:
            self._handshake_scope.cancel()
        try:
            with trio.move_on_after(config.handshake_timeout), self._handshake_scope:
                while event is None:
                    data = await self.stream.receive_some(READ_SIZE)
                    conn.receive_data(data)
                    found = conn.next_event()
                    if found is CLOSED:
                        return False
                    if found is not NEED_DATA:
                        event = found
        except RemoteProtocolError as error:
            await self._refuse(error.code, error.message)
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        if self._shutting_down or self.hub.closing:
            await self._refuse(ErrorCode.SHUTTING_DOWN, "the server is shutting down")
            return False
        if event is None:
            await self._refuse(
                ErrorCode.HANDSHAKE_TIMEOUT,
                f"no HELLO within handshake_timeout ({config.handshake_timeout} s)",
            )
            return False
        assert type(event) is Hello
        options = event.options
        self.name = options.get("name") or ""
        self.echo = options.get("echo", True)
        self.retained_flag = options.get("retained", False)
        info = dict(self.hub.info, client_id=self.client_id)
        self.outbox.push_control(conn.send(Welcome(info)))
        now = trio.current_time()
        self._last_received = now
        self._last_ping = now
        return True

    async def _refuse(self, code: ErrorCode, message: str) -> None:
        """Send one fatal ERR before the session ever started, then close."""
        self.hub.counters.protocol_errors += code in PROTOCOL_VIOLATIONS
        log.info("%r refused: %s: %s", self, code.value, message)
        await refuse(self.stream, code, message, self.hub.config.write_timeout)

    # -- reading --------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        conn = self.conn
        receive = self.stream.receive_some
        dispatch = self._dispatch
        checkpoint = trio.lowlevel.checkpoint
        with self._reader_scope:
            try:
                while True:
                    try:
                        events = conn.events()
                    except RemoteProtocolError as error:
                        self.fail(error.code, error.message)
                        return
                    if events:
                        dispatch(events)
                        if self._fatal is not None:
                            return
                        while self._deferred is not None:
                            await self.outbox.wait_replay_taken()
                            events, self._deferred = self._deferred, None
                            dispatch(events)
                            if self._fatal is not None:
                                return
                        # Let the writers this batch woke send before we read again: that read
                        # usually finds nothing, and its EAGAIN and epoll registration would
                        # otherwise delay their sends. Two turns, because trio runs the tasks of
                        # one turn in random order: after the second, every writer woken above
                        # has run.
                        await checkpoint()
                        await checkpoint()
                        continue
                    if conn.closed:
                        break
                    data = await receive(READ_SIZE)
                    self._last_received = trio.current_time()
                    conn.receive_data(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            self._eof = True
            self._accepting = False
            self.outbox._wake()

    def _dispatch(self, events: list[Event]) -> None:
        publish = self._publish
        for at, event in enumerate(events):
            kind = type(event)
            if kind is Pub:
                publish(event)  # type: ignore[arg-type]
            elif kind is Sub:
                if self.outbox.replaying and self._would_replay(event):  # type: ignore[arg-type]
                    # One replay at a time beyond the bounds: this SUB, and everything after
                    # it, waits until the writer has taken the one already queued.
                    self._deferred = events[at:]
                    return
                self._subscribe(event)  # type: ignore[arg-type]
            elif kind is Unsub:
                self._unsubscribe(event)  # type: ignore[arg-type]
            elif kind is Ping:
                self.outbox.push_control(_PONG_FRAME)
                self._check_control_bound()
            elif kind is Pong:
                self._pings_outstanding = 0
            if self._fatal is not None:
                return

    def _publish(self, event: Pub) -> None:
        subject, payload, reply_to, headers, retain = event
        hub = self.hub
        counters = hub.counters
        size = len(payload)
        if size > self._max_payload:
            self.fail(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"payload of {size} bytes exceeds max_payload ({self._max_payload} bytes)",
            )
            return
        try:
            if subject[:1] == "$":
                raise SubjectError(f"subjects starting with '$' are reserved: {subject!r}")
            match = hub.table.match(subject)
            if reply_to is not None:
                validate_subject(
                    reply_to,
                    max_length=hub.config.max_subject_length,
                    max_tokens=hub.config.max_subject_tokens,
                )
        except SubjectError as error:
            self.error(ErrorCode.BAD_SUBJECT, str(error), {"subject": subject[:256]})
            return
        if retain and not self._retain(subject, payload, headers):
            return
        counters.messages_in += 1
        counters.bytes_in += size
        tail: bytes | None = None
        delivered = 0
        echo = self.echo
        for sub in match.plain:
            target = sub.session
            if target is self and not echo:
                continue
            if tail is None:
                tail = encode_msg_tail(subject, payload, reply_to, headers)
            delivered += target.deliver(sub, tail)
        if match.groups:
            skip = None if echo else self._is_own
            for group in match.groups:
                chosen = group.choose(skip)
                if chosen is None:
                    continue
                if tail is None:
                    tail = encode_msg_tail(subject, payload, reply_to, headers)
                delivered += chosen.session.deliver(chosen, tail)
        if delivered:
            counters.messages_out += delivered
            counters.bytes_out += delivered * size
        elif reply_to is not None and tail is None:
            self._no_responders(reply_to)

    def _retain(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> bool:
        """Update the subject's retained message; False (and an ERR) if the store refuses it.

        Done before routing, so a refused message is neither kept nor delivered: the publisher
        learns of one failure, not of a message that half happened.
        """
        store = self.hub.retained
        if not payload:
            store.delete(subject)
            return True
        # Not reply_to: a replayed request would send its answers to a long-gone inbox.
        tail = encode_retained_tail(subject, payload, None, headers)
        problem = store.put(subject, (tail, len(payload)), len(tail))
        if problem is None:
            return True
        self.error(ErrorCode.RETAINED_LIMIT, problem, {"subject": subject})
        return False

    def _is_own(self, sub: Subscription) -> bool:
        return sub.session is self

    def _no_responders(self, reply_to: str) -> None:
        """Answer a request nobody can serve at once, on the requester's own reply subscriptions."""
        self.hub.counters.no_responders += 1
        match = self.hub.table.match(reply_to)
        mine = [sub for sub in match.plain if sub.session is self]
        for group in match.groups:
            mine.extend(sub for sub in group.members if sub.session is self)
        if mine:
            tail = encode_msg_tail(reply_to, b"", None, _NO_RESPONDERS_HEADERS)
            for sub in mine:
                self.deliver(sub, tail)

    def _would_replay(self, event: Sub) -> bool:
        if event.queue is not None or not self.hub.retained.subjects:
            return False
        # An invalid pattern may "match" here; _subscribe then refuses it, no harm done.
        return bool(self.hub.retained.matching(event.subject))

    def _subscribe(self, event: Sub) -> None:
        sid, pattern, queue = event
        details = {"sid": sid}
        if sid in self.subs:
            self.error(ErrorCode.BAD_SID, f"sid {sid} is already subscribed", details)
            return
        limit = self.hub.config.max_subscriptions
        if len(self.subs) >= limit:
            self.error(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"a connection may hold at most {limit} subscriptions (max_subscriptions)",
                details,
            )
            return
        sub = Subscription(self, sid, pattern, queue)
        hub = self.hub
        try:
            hub.table.insert(sub, pattern, queue)
        except SubjectError as error:
            self.error(ErrorCode.BAD_SUBJECT, str(error), details)
            return
        self.subs[sid] = sub
        # Replayed in the same step as the insert, with no await between: every publish routed
        # after this SUB is live, every one before it is in the snapshot, none is in both.
        # Queue groups get no replay (as MQTT shared subscriptions): each new worker would
        # otherwise redo the group's work.
        if queue is None and hub.retained.subjects:
            self._replay(sub, hub.retained.matching(pattern))

    def _replay(self, sub: Subscription, entries: list[tuple[str, tuple[bytes, int]]]) -> None:
        """Queue the retained messages a new subscription matches, flagged as retained."""
        if not entries or not self._accepting:
            return
        flagged = self.retained_flag
        prefix = msg_prefix(sub.sid, retained=flagged)
        offer = self.outbox.offer_replay
        payload_bytes = 0
        for _subject, (tail, size) in entries:
            if not flagged:
                tail = tail[:-1]  # the stored tail ends with the flag, one byte (true)
            offer(msg_head(prefix, len(tail)), tail)
            payload_bytes += size
        # A replay comes straight after its SUB, so no UNSUB max_msgs can cut it short.
        counters = self.hub.counters
        counters.messages_out += len(entries)
        counters.bytes_out += payload_bytes
        sub.delivered += len(entries)

    def _unsubscribe(self, event: Unsub) -> None:
        # An unknown sid is not an error: an auto-unsubscribe may have removed it already.
        sub = self.subs.get(event.sid)
        if sub is None:
            return
        if event.max_msgs is None or sub.delivered >= event.max_msgs:
            self._remove(sub)
        else:
            sub.max_msgs = event.max_msgs

    def _remove(self, sub: Subscription) -> None:
        if self.subs.get(sub.sid) is sub:
            del self.subs[sub.sid]
            self.hub.table.discard(sub)

    # -- delivering (called from publishers' reader tasks) ----------------------------------

    def deliver(self, sub: Subscription, tail: bytes) -> int:
        """Queue one MSG for `sub` without waiting; return 1 if queued, 0 if not.

        A message a drop policy discards still counts towards the subscription's `max_msgs`:
        the count is of messages routed to it, and the client learns of the loss per sid.
        """
        if not self._accepting:
            return 0
        head = msg_head(sub.prefix, len(tail))
        queued = self.outbox.offer(head, tail) or self._overflow(sub, head, tail)
        if not queued and not self._accepting:
            return 0
        sub.delivered += 1
        if sub.max_msgs is not None and sub.delivered >= sub.max_msgs:
            self._remove(sub)
        return 1 if queued else 0

    def _overflow(self, sub: Subscription, head: bytes, tail: bytes) -> bool:
        """Apply the slow-consumer policy to a frame that did not fit; True if it was queued."""
        policy = self._policy
        outbox = self.outbox
        if policy == "drop_newest":
            self._dropped([sub.sid])
            return False
        if policy == "drop_oldest":
            self._dropped([msg_head_sid(old) for old in outbox.drop_oldest(len(head) + len(tail))])
            if outbox.offer(head, tail):
                return True
            self._dropped([sub.sid])
            return False
        self._mark_slow()
        self.fail(
            ErrorCode.SLOW_CONSUMER,
            f"slow consumer: outbox full ({outbox.messages} messages, {outbox.bytes} bytes "
            f"pending, {outbox.sending} bytes being written; limits {outbox.max_messages} "
            f"messages, {outbox.max_bytes} bytes)",
        )
        return False

    def _dropped(self, sids: list[int]) -> None:
        if not sids:
            return
        count = len(sids)
        self._mark_slow()
        by_sid = self._dropped_by_sid
        for sid in sids:
            by_sid[sid] = by_sid.get(sid, 0) + 1
        self.dropped_unreported += count
        self.dropped_total += count
        self.hub.counters.dropped_messages += count
        self.outbox._wake()

    def _mark_slow(self) -> None:
        if self._slow:
            return
        self._slow = True
        self.hub.counters.slow_consumers += 1
        log.warning(
            "%r is a slow consumer (policy %s, limits %d messages / %d bytes)",
            self,
            self._policy,
            self.outbox.max_messages,
            self.outbox.max_bytes,
        )

    # -- errors -------------------------------------------------------------------------------

    def error(self, code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> None:
        """Report a non-fatal error to the client; the connection stays open."""
        self.hub.counters.protocol_errors += code in PROTOCOL_VIOLATIONS
        log.debug("%r: %s: %s", self, code.value, message)
        self.outbox.push_control(self._err_frame(code, message, details))
        self._check_control_bound()

    def fail(self, code: ErrorCode, message: str) -> None:
        """Close this connection after one fatal ERR; safe to call from any task, many times."""
        if self._fatal is not None:
            return
        self._fatal = (code, message)
        self._accepting = False
        self.hub.counters.protocol_errors += code in PROTOCOL_VIOLATIONS
        if code is not ErrorCode.SLOW_CONSUMER:
            log.info("%r closed: %s: %s", self, code.value, message)
        self.outbox.clear()
        self.outbox.push_control(self._err_frame(code, message))
        self._reader_scope.cancel()
        self.resume()  # a stalled writer must still send the ERR and close
        if code is ErrorCode.SLOW_CONSUMER and self._write_scope is not None:
            # The writer is stuck on a client that stopped reading: cut it off now rather than
            # after write_timeout. The ERR cannot follow a half-written frame, so none is sent.
            self._write_scope.cancel()

    def _check_control_bound(self) -> None:
        # A client that sends PINGs but never reads could grow the outbox with PONGs alone.
        outbox = self.outbox
        if outbox.control_bytes > outbox.max_bytes:
            self._mark_slow()
            self.fail(ErrorCode.SLOW_CONSUMER, "slow consumer: replies to this client pile up")

    def _err_frame(
        self, code: ErrorCode, message: str, details: dict[str, Any] | None = None
    ) -> bytes:
        return self.conn.send(Err(code.value, message, details))

    # -- writing --------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        config = self.hub.config
        write_timeout = config.write_timeout
        while True:
            # One scope serves every message until a deadline fires: entering and leaving a
            # scope per message cost more than the rest of the loop, and it sat between a
            # publisher waking this writer and the send.
            with trio.CancelScope() as scope:
                if await self._write_batches(scope):
                    return
            if self._write_scope is None:
                continue  # An idle deadline passed: look again under a fresh scope.
            # Part of a frame may be on the wire: this connection can never be written again.
            self._write_scope = None
            self._accepting = False
            if self._fatal is None:
                self._mark_slow()
                log.info("%r closed: write_timeout (%s s) expired", self, write_timeout)
                self._fatal = (ErrorCode.SLOW_CONSUMER, "write_timeout expired")
            return

    async def _write_batches(self, scope: trio.CancelScope) -> bool:
        """Send what is queued until the session ends (True) or `scope` must be replaced (False).

        The scope's deadline is the keepalive deadline while idle and the write deadline while
        sending (`_write_scope` is set only then). When it fires while we wait, the scope
        catches it and `_write_loop` tells the two apart; when it fired just as a delivery woke
        us, we return False before sending, so a keepalive deadline never cuts a send short.
        """
        config = self.hub.config
        outbox = self.outbox
        send_all = self.stream.send_all
        write_timeout = config.write_timeout
        ping_interval = config.ping_interval
        while True:
            if not outbox:
                if self._fatal is not None or self._eof or self._shutting_down:
                    return True
                deadline = max(self._last_received, self._last_ping) + ping_interval
                if trio.current_time() >= deadline:
                    self._keepalive()
                    continue
                scope.deadline = deadline
                await outbox.wait()
                continue
            if self._stalled is not None:
                scope.deadline = math.inf
                await self._stalled.wait()
                continue
            if scope.cancel_called:
                return False
            if self.dropped_unreported:
                self._report_drops()
            data = outbox.take_batch()
            scope.deadline = trio.current_time() + write_timeout
            self._write_scope = scope
            try:
                await send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._write_scope = None
                self._accepting = False
                return True
            self._write_scope = None
            outbox.sent()

    def _report_drops(self) -> None:
        count = self.dropped_unreported
        by_sid = sorted(self._dropped_by_sid.items())
        self.dropped_unreported = 0
        self._dropped_by_sid = {}
        # Pairs, not a map: map keys on the wire are str, and sids are ints.
        details = {"dropped": count, "total": self.dropped_total, "sids": [list(p) for p in by_sid]}
        self.outbox.push_control(
            self._err_frame(
                ErrorCode.MESSAGES_DROPPED,
                f"{count} messages dropped: this client reads too slowly (policy {self._policy})",
                details,
            )
        )

    def _keepalive(self) -> None:
        if self._pings_outstanding >= self.hub.config.max_pings_outstanding:
            self.fail(
                ErrorCode.STALE_CONNECTION,
                f"no answer to {self._pings_outstanding} PINGs (max_pings_outstanding)",
            )
            return
        self._pings_outstanding += 1
        self._last_ping = trio.current_time()
        self.outbox.push_control(_PING_FRAME)

    async def _linger(self) -> None:
        """Half-close and drain briefly so the peer reads our last frame instead of a reset."""
        stream = self.stream
        with trio.move_on_after(LINGER_SECONDS):
            try:
                await stream.send_eof()
                while await stream.receive_some(READ_SIZE):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


async def refuse(
    stream: trio.abc.HalfCloseableStream, code: ErrorCode, message: str, timeout: float
) -> None:
    """Send one ERR as the opening frame (no session exists), then close gracefully."""
    conn = Connection(Role.SERVER)
    data = conn.send(Err(code.value, message))
    with trio.move_on_after(min(timeout, 2.0)):
        try:
            await stream.send_all(data)
            await stream.send_eof()
            with trio.move_on_after(LINGER_SECONDS):
                while await stream.receive_some(READ_SIZE):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


_PING_FRAME: Final = encode_frame(Ping())
_PONG_FRAME: Final = encode_frame(Pong())
