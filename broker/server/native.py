"""The native wire's adapter: msgpack frames in, hub calls out, and MSG frames back.

`NativeAdapter` is what the hub sees of a native client (a `broker.hub.Subscriber`) and what
its `Transport` sees of the wire (a `WireAdapter`). It decodes one read's frames in one pass
and turns each into a hub call; a hub refusal becomes an ERR frame, fatal or not as its
`ErrorCode` says. Delivering encodes the MSG fields every subscriber of a publish shares once
per publish (see `_last_encoded`) and joins the subscription's own prefix onto them.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Iterator
from itertools import repeat
from typing import Any, Final, cast, final

from ..auth import Credentials
from ..errors import ErrorCode
from ..hub import FANOUT_STEP, Hub, Refused, Subscriber, Subscription
from ..message import Message, Retained
from ..permissions import ClientPermissions
from ..protocol.native import (
    NEED_DATA,
    PLAIN_TAIL_END,
    PUB_TAIL_START,
    Connection,
    Err,
    Event,
    Forward,
    Hello,
    Ping,
    Pong,
    Pub,
    PubRun,
    Role,
    Sub,
    Unsub,
    Welcome,
    encode_frame,
    encode_msg_tail,
    msg_head_sid,
    msg_prefix,
    plain_tail_head,
)
from .outbox import MESSAGE_OVERHEAD, replay_cost
from .transport import DEFERRED, Transport

__all__ = [
    "IDENTITY_LENGTH",
    "NativeAdapter",
    "continue_fanout",
    "refusal_frame",
    "rest_after_overrun",
]

_PING_FRAME: Final = encode_frame(Ping())
_PONG_FRAME: Final = encode_frame(Pong())
_pack_length = struct.Struct(">I").pack
#: Characters of a client's HELLO ``lang`` and ``client_version`` kept for monitoring.
IDENTITY_LENGTH: Final = 64
#: Most time one turn of a reader spends turning frames into hub calls before it lets the
#: other tasks run (see `NativeAdapter._dispatch`).
TURN_SECONDS: Final = 0.002
#: Work between two looks at the clock (a look costs about 50 ns): a frame counts one, a publish
#: one more per delivery. So the clock is read every 64 cheap frames, and after every publish
#: that matched as many subscriptions: one publish can match tens of thousands and take a
#: hundred milliseconds, and the next one must then wait for the next turn.
_WORK_PER_LOOK: Final = 64
#: Most frames decoded in one turn: one 64 KiB read holds up to 7,000 nine-byte PINGs, whose
#: decoding alone took 24 ms in one step (ten clients flooding PINGs held the others 300 ms).
DECODE_PER_TURN: Final = 512
#: Work since the last look at the clock that makes an overrun a client's doing, not the
#: system's: more than a split publish's step (publishes and walks are split at `FANOUT_STEP`).
REST_WORK: Final = 2 * FANOUT_STEP
#: A turn this far past `TURN_SECONDS` makes its reader rest as long before its next turn.
OVERRUN_REST: Final = 0.010

#: The last message encoded for delivery, and its MSG tail (the fields after the sid). Every
#: delivery of one publish happens in one synchronous step, so this one-entry memo, keyed on the
#: message's identity, encodes each publish once however many native subscribers it reaches.
#: It holds the message, so no other live object can share its identity. One tuple, read and
#: replaced whole, so brokers serving in other threads of this process never see half of it.
_last_encoded: tuple[object, bytes] = (None, b"")
#: The publish being routed, if its PUB came with its own encoding of the MSG fields (set by
#: `NativeAdapter._dispatch`): its first delivery takes the tail from there.
_next_forward: tuple[object, bytes, int, bytes] = (None, b"", 0, b"")
#: The last plain tail's start (`plain_tail_head`), keyed on its subject's identity and its
#: payload's size: a run of publishes to one subject (one publisher streaming, each decoded
#: with the same subject object) encodes nothing, and joins its payload onto this.
_plain_head: tuple[object, int, bytes] = (None, 0, b"")


#: The run being delivered (`NativeAdapter.deliver_run`), keyed on its list's identity: its
#: plain MSG tails, their one length (0 if they differ) and its payload bytes, made once for
#: every native subscriber the run reaches. It holds the list, so no other can share its
#: identity; `NativeAdapter._dispatch` lets go of it after each `Hub.publish_run`.
_NO_RUN_TAILS: Final[tuple[object, list[bytes], int, int]] = (None, [], 0, 0)
_run_tails = _NO_RUN_TAILS


def _plain_tails(subject: str, payloads: list[bytes]) -> tuple[list[bytes], int, int]:
    """The plain MSG tails of ``(subject, payload)`` for each payload, their one length (0 if
    their sizes differ), and the payloads' bytes."""
    sizes = set(map(len, payloads))
    if len(sizes) == 1:
        size = sizes.pop()
        start = plain_tail_head(subject, size)
        tails = [start + payload + PLAIN_TAIL_END for payload in payloads]
        return tails, len(tails[0]), size * len(payloads)
    tails = [
        plain_tail_head(subject, len(payload)) + payload + PLAIN_TAIL_END for payload in payloads
    ]
    return tails, 0, sum(map(len, payloads))


def continue_fanout(hub: Hub, origin: Subscriber) -> bool:
    """Deliver more of `origin`'s split publish, for one turn; True once it is done.

    Shared by every wire's adapter: each calls it before routing anything more of its client's.
    """
    resume = hub.resume
    fanouts = hub.fanouts
    clock = time.perf_counter
    deadline = clock() + TURN_SECONDS
    while origin in fanouts:
        resume(origin, FANOUT_STEP)
        if clock() > deadline:
            return origin not in fanouts
    return True


def work_left(hub: Hub, origin: Subscriber, deferred: object, buffered: int) -> bool:
    """`WireAdapter.pending` for every wire's adapter: the rest of a turn kept (`deferred`),
    bytes received and not yet taken (`buffered`), or `origin`'s fan-out still under way."""
    fanouts = hub.fanouts
    return deferred is not None or buffered > 0 or (bool(fanouts) and origin in fanouts)


def rest_after_overrun(transport: Transport, by: float, work: int) -> None:
    """A turn took `by` seconds past its budget: past `OVERRUN_REST`, the reader rests.

    One publish that matches tens of thousands of subscriptions is one step that cannot be
    split; back to back, such publishes would hold every other client off for as long as
    their client keeps sending them. Resting as long as the step took gives the others at
    least half the time, so what they wait is about one such step. Only when the last step
    did much work (`REST_WORK`): a turn of cheap frames that overran because the system
    preempted the process must not make its client wait too.
    """
    if by > OVERRUN_REST and work >= REST_WORK:
        transport.rest = by + TURN_SECONDS


def refusal_frame(code: ErrorCode, message: str) -> bytes:
    """A fatal ERR sent as the opening frame, before any session exists."""
    return Connection(Role.SERVER).send(Err(code.value, message))


@final
class NativeAdapter:
    """One native client, as the hub's subscriber and as its transport's wire."""

    __slots__ = (
        "_deferred",
        "conn",
        "credentials",
        "echo",
        "hub",
        "in_bytes",
        "in_msgs",
        "lang",
        "name",
        "out_bytes",
        "out_msgs",
        "outbox",
        "permissions",
        "retained_flag",
        "subscriptions",
        "transport",
        "version",
    )

    def __init__(self, hub: Hub, transport: Transport) -> None:
        self.hub = hub
        self.transport = transport
        self.outbox = transport.outbox
        self.conn = Connection(Role.SERVER, max_frame=hub.config.frame_limit)
        self.name = ""
        self.lang = ""
        self.version = ""
        self.in_msgs = 0
        self.in_bytes = 0
        self.out_msgs = 0
        self.out_bytes = 0
        self.echo = True
        #: Whether the client takes MSG's 7th element, the retained flag (HELLO `retained`);
        #: older clients get replays as plain MSGs.
        self.retained_flag = False
        self.subscriptions: dict[Any, Subscription] = {}
        self.permissions: ClientPermissions | None = None
        #: What HELLO presented (token, user, password); read by the transport's auth step.
        self.credentials = Credentials()
        #: Events of one read left for later (and their `Forward`s): a SUB that would replay
        #: (and what followed it) waiting for the writer to take the replay queued by an
        #: earlier SUB, or what one turn had no time for.
        self._deferred: tuple[list[Event | PubRun], list[Forward | None]] | None = None

    def __repr__(self) -> str:
        return repr(self.transport)

    # -- the transport's side -----------------------------------------------------------------

    def greeting(self) -> bytes | None:
        return None  # The client speaks first (HELLO).

    def receive_data(self, data: bytes | bytearray) -> None:
        self.conn.receive_data(data)

    def handshake(self) -> bool:
        event = self.conn.next_event()
        if event is NEED_DATA:
            return False
        if type(event) is not Hello:
            return False  # CLOSED: the peer left before its HELLO
        options = event.options
        self.name = options.get("name") or ""
        # Shown in monitoring only, so bounded there and never checked against anything.
        self.lang = (options.get("lang") or "")[:IDENTITY_LENGTH]
        self.version = (options.get("client_version") or "")[:IDENTITY_LENGTH]
        self.echo = options.get("echo", True)
        self.retained_flag = options.get("retained", False)
        self.credentials = Credentials(
            token=options.get("token"), user=options.get("user"), password=options.get("password")
        )
        return True

    def admit(self, permissions: ClientPermissions | None) -> None:
        """The handshake passed (authentication too, when on): take `permissions`, WELCOME."""
        self.permissions = permissions
        info = dict(self.hub.info, client_id=self.transport.client_id)
        self.outbox.push_control(self.conn.send(Welcome(info)))

    @property
    def closed(self) -> bool:
        return self.conn.closed

    @property
    def buffered(self) -> int:
        return self.conn.buffered

    @property
    def pending(self) -> bool:
        conn = self.conn
        return conn.failed or work_left(self.hub, self, self._deferred, conn.buffered)

    def process(self) -> str | bool:
        fanouts = self.hub.fanouts
        if fanouts and self in fanouts and not self._continue_fanout():
            return True
        deferred = self._deferred
        if deferred is not None:
            self._deferred = None
            events, forwards = deferred
        else:
            events, forwards = self.conn.events_and_tails(DECODE_PER_TURN)
            if not events:
                return False
        return self._dispatch(events, forwards)

    def error_frame(
        self, code: ErrorCode, message: str, details: dict[str, Any] | None = None
    ) -> bytes:
        return self.conn.send(Err(code.value, message, details))

    def ping_frame(self) -> bytes:
        return _PING_FRAME

    def drops_frame(self, dropped: int, total: int, by_sid: list[tuple[Any, int]]) -> bytes:
        # Pairs, not a map: map keys on the wire are str, and sids are ints.
        details = {"dropped": dropped, "total": total, "sids": [list(p) for p in by_sid]}
        policy = self.hub.config.slow_consumer_policy
        message = f"{dropped} messages dropped: this client reads too slowly (policy {policy})"
        return self.error_frame(ErrorCode.MESSAGES_DROPPED, message, details)

    def sid_of_head(self, head: bytes) -> Any:
        return msg_head_sid(head)

    # -- frames to hub calls ------------------------------------------------------------------

    def _dispatch(self, events: list[Event | PubRun], forwards: list[Forward | None]) -> str | bool:
        """Turn events into hub calls; `DEFERRED` if the rest waits for a replay to be taken.

        One turn does at most `TURN_SECONDS` of work: past that, the rest is kept for the next
        call and the reader lets every other task run first. So a client whose frames are
        expensive (a publish matching thousands of subscriptions, a flood of SUBs) delays the
        others by milliseconds, not by the seconds one 64 KiB read of them could take.

        A PUB that came with its own encoding of the MSG fields (`forwards`) is published with
        that put in the memo first, so its deliveries send those bytes instead of encoding.
        """
        global _next_forward, _run_tails
        hub = self.hub
        publish = hub.publish
        publish_run = hub.publish_run
        fanouts = hub.fanouts
        transport = self.transport
        clock = time.perf_counter
        deadline = clock() + TURN_SECONDS
        work = 0
        for at, event in enumerate(events):
            if work >= _WORK_PER_LOOK:
                now = clock()
                if now > deadline:
                    self._deferred = events[at:], forwards[at:]
                    self._overran(now - deadline, work)
                    return True
                work = 0
            work += 1
            kind = type(event)
            try:
                if kind is Pub:
                    forward = forwards[at]
                    if forward is not None:
                        _next_forward = forward
                    work += publish(self, event, FANOUT_STEP)  # type: ignore[arg-type]
                    if fanouts and self in fanouts:
                        # Too many subscribers for one step: the rest of them, then this
                        # client's later frames, in the next turns.
                        self._deferred = events[at + 1 :], forwards[at + 1 :]
                        return True
                elif kind is PubRun:
                    work -= 1  # each of its messages counts, as its own PUB's event would
                    subject, payloads = cast(PubRun, event)
                    end = len(payloads)
                    done = 0
                    while done < end:
                        if not transport.accepting:
                            return True  # closed meanwhile: as after any of its PUBs
                        if work >= _WORK_PER_LOOK:
                            now = clock()
                            if now > deadline:
                                rest = PubRun(subject, payloads[done:])
                                self._deferred = [rest, *events[at + 1 :]], forwards[at:]
                                self._overran(now - deadline, work)
                                return True
                            work = 0
                        budget = _WORK_PER_LOOK - work
                        try:
                            stop, count = publish_run(self, subject, payloads, done, budget)
                        finally:
                            _run_tails = _NO_RUN_TAILS  # a budget's worth of payloads: not kept
                        work += stop - done + count
                        if stop > done:
                            done = stop
                            continue
                        # One the run cannot take: published alone, as its own PUB would be.
                        done += 1
                        try:
                            work += 1 + publish(self, Pub(subject, payloads[stop]), FANOUT_STEP)
                        except Refused as refused:
                            transport.error(refused.code, refused.message, refused.details)
                        if not transport.accepting:
                            return True
                        if fanouts and self in fanouts:
                            rest = PubRun(subject, payloads[done:])
                            self._deferred = [rest, *events[at + 1 :]], forwards[at:]
                            return True
                elif kind is Sub:
                    sid, pattern, queue = cast(Sub, event)
                    if not self.outbox.replay_room and hub.would_replay(pattern, queue):
                        # One replay at a time beyond the bounds, and only while the replays
                        # under way server-wide leave room: this SUB, and everything after it,
                        # waits (see `Outbox.wait_replay_room`).
                        self._deferred = events[at:], forwards[at:]
                        return DEFERRED
                    hub.subscribe(self, sid, pattern, queue, prefix=msg_prefix(sid))
                elif kind is Unsub:
                    # An unknown sid is not an error: an auto-unsubscribe may have removed it.
                    sid, max_msgs = cast(Unsub, event)
                    sub = self.subscriptions.get(sid)
                    if sub is not None:
                        hub.unsubscribe(sub, max_msgs)
                elif kind is Ping:
                    transport.push_control(_PONG_FRAME)
                elif kind is Pong:
                    transport.pong_received()
            except Refused as refused:
                transport.error(refused.code, refused.message, refused.details)
            if not transport.accepting:
                break
        if work >= _WORK_PER_LOOK:
            self._overran(clock() - deadline, work)
        return True

    def _continue_fanout(self) -> bool:
        return continue_fanout(self.hub, self)

    def _overran(self, by: float, work: int) -> None:
        rest_after_overrun(self.transport, by, work)

    # -- the hub's side: delivering (called from publishers' tasks) ---------------------------

    def deliver(self, sub: Subscription, message: Message) -> int:
        """Queue one MSG for `sub` without waiting; 1 if queued, 0 if not.

        A message a drop policy discards still counts towards the subscription's `max_msgs`:
        the count is of messages routed to it, and the client learns of the loss per sid.
        """
        global _last_encoded, _plain_head
        transport = self.transport
        if not transport.accepting:
            return 0
        last = _last_encoded
        if last[0] is message:
            tail = last[1]
        else:
            forward = _next_forward
            subject, payload, reply_to, headers, _retain = message
            if forward[0] is message:
                # The PUB's own bytes (see `Connection.events_and_tails`): no encoding.
                _, body, stop, pad = forward
                tail = body[PUB_TAIL_START:stop] + pad if pad else body[PUB_TAIL_START:stop]
            elif reply_to is None is headers:
                plain = _plain_head
                size = len(payload)
                if plain[0] is not subject or plain[1] != size:
                    _plain_head = plain = (subject, size, plain_tail_head(subject, size))
                tail = plain[2] + payload + PLAIN_TAIL_END
            else:
                tail = encode_msg_tail(subject, payload, reply_to, headers)
            _last_encoded = (message, tail)
        prefix = sub.prefix
        head = _pack_length(len(prefix) + len(tail)) + prefix  # msg_head, inlined
        queued = self.outbox.offer(head, tail) or transport.overflow(sub, head, tail)
        if not queued and not transport.accepting:
            return 0
        sub.delivered += 1
        if sub.max_msgs is not None and sub.delivered >= sub.max_msgs:
            self.hub.remove(sub)
        return 1 if queued else 0

    def deliver_run(
        self, sub: Subscription, subject: str, payloads: list[bytes]
    ) -> tuple[int, int]:
        """`deliver` each plain message of a run (`RunSubscriber.deliver_run`), in one append.

        The run's tails are made once for all its subscribers (`_run_tails`), and shared by
        their outboxes as one publish's tail is; each subscription joins its own heads on and
        queues them all, if they fit. A run that does not fit, or a subscription with a
        ``max_msgs`` to count to, goes one message at a time, as `deliver` would: the bounds,
        the drop policy and ``max_msgs`` apply to each, and the counters are up to date when
        the policy reports a slow consumer in the middle of the run.
        """
        global _run_tails
        transport = self.transport
        if not transport.accepting:
            return 0, 0
        memo = _run_tails
        if memo[0] is not payloads:
            memo = _run_tails = (payloads, *_plain_tails(subject, payloads))
        _, tails, length, payload_bytes = memo
        count = len(payloads)
        prefix = sub.prefix
        outbox = self.outbox
        frames = None
        if length:
            # One size, so one head: the usual run (a `PubRun` is one by construction).
            head = _pack_length(len(prefix) + length) + prefix
            if sub.max_msgs is None:
                frames = [head] * (2 * count)
                frames[1::2] = tails
                size = count * (len(head) + length + MESSAGE_OVERHEAD)
        else:
            varied = [_pack_length(len(prefix) + len(tail)) + prefix for tail in tails]
            if sub.max_msgs is None:
                frames = varied * 2
                frames[0::2] = varied
                frames[1::2] = tails
                size = sum(map(len, frames)) + count * MESSAGE_OVERHEAD
        if frames is not None and outbox.offer_run(frames, count, size):
            sub.delivered += count
            self.out_msgs += count
            self.out_bytes += payload_bytes
            return count, payload_bytes
        # One at a time (made only now: `repeat` alone costs 700 instructions).
        heads: Iterable[bytes] = repeat(head, count) if length else varied
        queued = queued_bytes = 0
        offer = outbox.offer
        for head, tail, payload in zip(heads, tails, payloads, strict=True):
            if not transport.accepting:
                break  # the policy cut it off
            if offer(head, tail) or transport.overflow(sub, head, tail):
                queued += 1
                queued_bytes += len(payload)
                self.out_msgs += 1
                self.out_bytes += len(payload)
            elif not transport.accepting:
                break
            sub.delivered += 1
            if sub.max_msgs is not None and sub.delivered >= sub.max_msgs:
                self.hub.remove(sub)
                break
        return queued, queued_bytes

    def replay(self, sub: Subscription, entries: list[tuple[str, Retained]]) -> bool:
        """Queue the retained messages a new subscription matches, flagged as retained.

        Queued as one item that the writer streams when it reaches it (`Outbox.offer_replay`):
        the frames are made then, from the store's own encodings.
        """
        if not self.transport.accepting:
            return False
        flagged = self.retained_flag
        prefix = msg_prefix(sub.sid, retained=flagged)
        cost = replay_cost(len(entries), sum(kept.size for _, kept in entries))
        self.outbox.offer_replay(_replay_frames(prefix, entries, flagged), cost)
        return True


def _replay_frames(
    prefix: bytes, entries: list[tuple[str, Retained]], flagged: bool
) -> Iterator[tuple[bytes, bytes]]:
    """Each replayed message's (head, tail), made as the writer asks for it."""
    for _subject, kept in entries:
        tail = kept.native
        if not flagged:
            tail = tail[:-1]  # the stored tail ends with the flag, one byte (true)
        yield _pack_length(len(prefix) + len(tail)) + prefix, tail
