"""The async client: one connection to a broker, kept alive across restarts, on Trio or asyncio.

One implementation serves both event loops because it is written against anyio; the wire format
comes from the shared I/O-free codec in `broker.protocol`, so client and server cannot disagree
about a frame. The shape follows the server's sessions:

- **One writer per connection.** `Client.publish` encodes the frame, appends it to the write
  buffer and returns: it does no I/O. The writer task sends everything pending in one write, so a
  burst of publishes becomes one ``send``. ``publish`` is async only for backpressure: it waits
  while more than ``write_buffer_size`` bytes (default 1 MiB) are queued and not yet handed to
  the socket. ``publish_nowait`` raises `anyio.WouldBlock` instead of waiting.
- **One reader per connection** decodes frames, answers server PINGs with PONG, routes MSG to
  subscriptions and replies to requests, and turns ERR frames into typed exceptions
  (`broker.errors`). A subscription queues at most ``max_pending`` messages (and
  ``max_pending_bytes``); past that the newest message is dropped and counted in
  ``Subscription.dropped``, so one slow consumer cannot eat the application's memory.
- **Keepalive.** The client PINGs every ``ping_interval`` (the server's, from WELCOME, unless
  given) and gives the connection up as dead (`StaleConnection`) when ``max_pings_outstanding``
  PINGs are unanswered, so a broker that vanished without a FIN is noticed.
- **Reconnection.** When a live connection breaks, the client retries with exponential backoff
  and jitter (``reconnect_delay`` doubling up to ``max_reconnect_delay``, each delay scaled by a
  random factor in [0.5, 1]), ``max_reconnect_attempts`` times (None: forever). On success it
  re-sends every live subscription with the same sid (and ``max_msgs`` reduced by what was
  already received), then what was buffered, then a PING; ``on_reconnected`` runs once that PONG
  arrives, so the subscriptions are known to be in place.

Decisions a caller can rely on:

- **Publishing while disconnected** queues the frame in the same buffer, up to
  ``reconnect_buffer_size`` bytes of encoded frames (default 8 MiB); a publish that does not fit
  raises `ReconnectBufferFull` (a `ConnectionClosed`) and queues nothing. Frames the writer had
  already handed to a connection that broke are lost (delivery is at most once); frames still
  queued are sent after reconnecting.
- **Requests in flight** when a connection breaks (their PUB was handed to it) fail at once with
  the `ConnectionClosed` that ended it: whether the responder saw the request is unknown, so
  retrying is the caller's decision. Requests whose PUB is still queued, and requests made while
  disconnected, wait for the next connection, bounded by the caller's cancel scope.
- **Hooks** are plain callables, sync or async, given to `connect`: ``on_disconnected(error)``
  when a live connection breaks (not when we close it), ``on_reconnected()`` once resubscribed,
  ``on_shutting_down(error)`` when the server sends ERR ``shutting_down``, and ``on_error(error)``
  for errors that belong to no caller (``messages_dropped``, a refused PUB subject). They run one
  at a time, in order, in a task of their own, so a slow hook never stalls the reader; an
  exception from a hook is logged and the client carries on.
- **Closing.** Leaving the ``async with connect(...)`` block normally writes what is queued,
  half-closes and waits up to `CLOSE_TIMEOUT` for the server to finish; leaving it with an
  exception closes at once. `Client.drain` is the graceful way out for consumers.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import random
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Final, TypeAlias, final
from urllib.parse import urlsplit

import anyio
import anyio.abc
import anyio.lowlevel

from .._checks import check_seconds
from .._concurrency import Signal, single_leaf
from ..config import DEFAULT_MAX_PAYLOAD, DEFAULT_PORT
from ..errors import (
    BadSubject,
    BrokerError,
    ConnectionClosed,
    NoResponders,
    PayloadTooLarge,
    ProtocolViolation,
    ReconnectBufferFull,
    RetainedLimitExceeded,
    ServerShuttingDown,
    StaleConnection,
    SubscriptionClosed,
    _again,
    error_from_wire,
)
from ..protocol import (
    CLOSED,
    MSG_GROWTH,
    NEED_DATA,
    PROTOCOL_VERSION,
    Connection,
    Encoder,
    Err,
    ErrorCode,
    Event,
    Hello,
    LocalProtocolError,
    Msg,
    Ping,
    Pong,
    Pub,
    RemoteProtocolError,
    Role,
    Sub,
    Unsub,
    Welcome,
)
from ..subjects import (
    MAX_SUBJECT_LENGTH,
    MAX_SUBJECT_TOKENS,
    SubjectError,
    validate_pattern,
    validate_queue,
    validate_subject,
)

__all__ = [
    "CLOSE_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_MAX_PENDING_BYTES",
    "DEFAULT_MAX_PINGS_OUTSTANDING",
    "DEFAULT_MAX_RECONNECT_DELAY",
    "DEFAULT_RECONNECT_BUFFER_SIZE",
    "DEFAULT_RECONNECT_DELAY",
    "DEFAULT_WRITE_BUFFER_SIZE",
    "Client",
    "Message",
    "Subscription",
    "connect",
    "parse_url",
]

log = logging.getLogger("broker.client")

KiB: Final = 1024
MiB: Final = 1024 * KiB

#: Messages one subscription queues for its consumer before dropping the newest.
DEFAULT_MAX_PENDING: Final = 65_536
#: Payload bytes one subscription queues before dropping the newest (a message always fits an
#: empty queue, so one large message is never refused outright).
DEFAULT_MAX_PENDING_BYTES: Final = 64 * MiB
#: Queued, unwritten bytes above which `Client.publish` waits for the writer (backpressure).
DEFAULT_WRITE_BUFFER_SIZE: Final = 1 * MiB
#: Encoded bytes of publishes kept while disconnected, sent after reconnecting.
DEFAULT_RECONNECT_BUFFER_SIZE: Final = 8 * MiB
#: First reconnection delay in seconds; doubles per failed attempt up to the maximum.
DEFAULT_RECONNECT_DELAY: Final = 0.1
DEFAULT_MAX_RECONNECT_DELAY: Final = 5.0
#: Seconds one connection attempt (TCP connect plus HELLO/WELCOME) may take.
DEFAULT_CONNECT_TIMEOUT: Final = 2.0
#: Unanswered PINGs after which the connection is given up as dead.
DEFAULT_MAX_PINGS_OUTSTANDING: Final = 2
#: Seconds a graceful close waits for queued frames to be written and the server to finish.
CLOSE_TIMEOUT: Final = 2.0
#: Bytes asked of the socket per read.
READ_SIZE: Final = 64 * KiB
#: First token of every request inbox; the rest is random per client.
INBOX_PREFIX: Final = "_INBOX"

_NO_HEADERS: Final[Mapping[str, str]] = MappingProxyType({})
_NO_RESPONDERS_STATUS: Final = "503"
#: Doubling stops here so the backoff arithmetic stays in range; the delay is capped long before.
_MAX_BACKOFF_EXPONENT: Final = 32

DisconnectedHook: TypeAlias = Callable[[ConnectionClosed], Awaitable[None] | None]
ReconnectedHook: TypeAlias = Callable[[], Awaitable[None] | None]
ShuttingDownHook: TypeAlias = Callable[[ServerShuttingDown], Awaitable[None] | None]
ErrorHook: TypeAlias = Callable[[BrokerError], Awaitable[None] | None]
Payload: TypeAlias = bytes | bytearray | memoryview


class _Control(bytes):
    """A queued frame (SUB, UNSUB, PING, PONG) that only means something on its connection.

    When a connection breaks these are dropped from the write buffer: resubscribing regenerates
    what still matters. Publishes are plain `bytes` and survive into the next connection.
    """

    __slots__ = ()


class _Waiter:
    """One outcome to wait for: a PONG, or a request's reply."""

    __slots__ = ("_event", "error", "frame", "refused", "subject", "value")

    def __init__(self, subject: str = "") -> None:
        self._event = anyio.Event()
        self.subject = subject
        self.value: Message | None = None
        self.error: BrokerError | None = None
        #: For a PONG: publishes the server refused while it was awaited (`Client.flush`).
        self.refused: list[BrokerError] = []
        #: The queued PUB of a request, to tell whether it reached a connection that broke.
        self.frame: bytes | None = None

    def succeed(self, value: Message | None = None) -> None:
        if not self._event.is_set():
            self.value = value
            self._event.set()

    def fail(self, error: BrokerError) -> None:
        if not self._event.is_set():
            self.error = error
            self._event.set()

    async def wait(self) -> Message | None:
        await self._event.wait()
        if self.error is not None:
            raise _again(self.error)
        return self.value


@final
@dataclass(frozen=True, slots=True, eq=False)
class Message:
    """One message delivered to a subscription, or the reply to a request.

    Attributes:
        subject: The subject it was published to (not the pattern that matched it).
        payload: The bytes published.
        headers: The publisher's headers; empty when there were none.
        reply_to: Where the publisher wants an answer (set for requests), else None.
        retained: True for a retained message the broker replayed because this subscription is
            new (the subject's current value), False for a live one. A reconnection
            resubscribes, so the current values are replayed again: a consumer catches up on
            what changed while it was away.
    """

    subject: str
    payload: bytes
    headers: Mapping[str, str]
    reply_to: str | None
    _client: Client = field(repr=False)
    retained: bool = False

    async def respond(self, payload: Payload, headers: Mapping[str, str] | None = None) -> None:
        """Publish `payload` to this message's ``reply_to``: the answer to a request.

        Raises:
            ValueError: The message has no ``reply_to``; nobody asked for an answer.
            ConnectionClosed, PayloadTooLarge: As `Client.publish`.
        """
        if self.reply_to is None:
            raise ValueError(
                f"message on {self.subject!r} has no reply_to, so there is nobody to respond to"
            )
        await self._client.publish(self.reply_to, payload, headers=headers)


@final
class Subscription:
    """Messages matching one pattern, queued for the consumer; made by `Client.subscribe`.

    Iterate with ``async for``, or take one at a time with `next`. The queue is bounded by
    ``max_pending`` messages and ``max_pending_bytes`` of payload: past either, the newest message
    is dropped and counted in `dropped`, because waiting would stall every other subscription on
    the connection. Using it as an async context manager unsubscribes on exit.

    The iterator ends (and `next` raises `SubscriptionClosed`) after `unsubscribe`, after
    ``max_msgs`` deliveries, or after `Client.drain`, once the queued messages are taken. It
    raises instead when the subscription failed: the server refused it (`BadSubject`,
    `TooManySubscriptions`, `BadSid`), or the client's connection is gone for good
    (`ConnectionClosed`).
    """

    __slots__ = (
        "_bytes",
        "_client",
        "_draining",
        "_dropped",
        "_ended",
        "_error",
        "_holding",
        "_max_msgs",
        "_messages",
        "_received",
        "_server_dropped",
        "_signal",
        "max_pending",
        "max_pending_bytes",
        "queue",
        "sid",
        "subject",
    )

    def __init__(
        self,
        client: Client,
        sid: int,
        subject: str,
        queue: str | None,
        max_pending: int,
        max_pending_bytes: int,
    ) -> None:
        self._client = client
        #: The subscription id on the wire; kept across reconnections.
        self.sid = sid
        #: The pattern subscribed to.
        self.subject = subject
        #: The queue group, or None.
        self.queue = queue
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self._messages: deque[Message] = deque()
        self._bytes = 0
        self._received = 0
        self._dropped = 0
        self._server_dropped = 0
        self._max_msgs: int | None = None
        self._ended = False
        self._error: BrokerError | None = None
        self._draining = False
        self._holding = False
        self._signal = Signal()

    def __repr__(self) -> str:
        queue = "" if self.queue is None else f" queue={self.queue!r}"
        return f"<Subscription {self.sid} {self.subject!r}{queue} pending={len(self._messages)}>"

    @property
    def dropped(self) -> int:
        """Messages lost: discarded here because the queue was full (``max_pending`` or
        ``max_pending_bytes``), or by the broker's drop policy because this client read too
        slowly (as it reports in ``messages_dropped``)."""
        return self._dropped + self._server_dropped

    @property
    def received(self) -> int:
        """Messages the server delivered to this subscription, including dropped ones."""
        return self._received

    @property
    def pending(self) -> int:
        """Messages queued and not yet taken by the consumer."""
        return len(self._messages)

    @property
    def active(self) -> bool:
        """Whether messages may still arrive (not unsubscribed, ended or failed)."""
        return not self._ended and self._error is None

    async def next(self) -> Message:
        """Wait for and return the next message.

        Raises:
            SubscriptionClosed: The subscription ended normally and nothing is left queued.
            BrokerError: The subscription failed (see the class docstring); queued messages are
                still handed out first.
        """
        self._holding = False
        await anyio.lowlevel.checkpoint()
        while True:
            messages = self._messages
            if messages:
                message = messages.popleft()
                self._bytes -= len(message.payload)
                if not messages:
                    self._client._drain_signal.fire()
                return message
            self._client._drain_signal.fire()
            if self._error is not None:
                raise _again(self._error)
            if self._ended:
                raise SubscriptionClosed(
                    f"subscription {self.sid} to {self.subject!r} has ended "
                    f"({self._received} messages received)"
                )
            await self._signal.wait()

    def unsubscribe(self, max_msgs: int | None = None) -> None:
        """Stop this subscription, now or after ``max_msgs`` deliveries in total.

        Does no I/O: the writer sends UNSUB. With no argument, delivery stops at once and queued
        messages are discarded. With ``max_msgs`` the iterator ends after that many messages in
        all, counting those already received (the wire's rule, so it survives reconnection);
        if that many were received already, it stops now but keeps what is queued. Calling it
        on an ended subscription does nothing.

        Raises:
            ValueError: ``max_msgs`` is not a non-negative int.
        """
        if max_msgs is not None and (type(max_msgs) is not int or max_msgs < 0):
            raise ValueError(f"max_msgs must be a non-negative int or None, got {max_msgs!r}")
        if not self.active:
            return
        # The server counts messages it dropped for us towards max_msgs, so we do too.
        if max_msgs is None or self._received + self._server_dropped >= max_msgs:
            self._client._unsubscribe(self, None)
            if max_msgs is None:
                self._messages.clear()
                self._bytes = 0
                self._holding = False
            self._end()
        else:
            self._max_msgs = max_msgs
            self._client._unsubscribe(self, max_msgs)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.unsubscribe()
        self._holding = False
        self._client._drain_signal.fire()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        # An `async for` loop coming back for more has finished the message it held; drain
        # waits for that, so a responder can still answer the last request it took.
        try:
            message = await self.next()
        except SubscriptionClosed:
            raise StopAsyncIteration from None
        self._holding = True
        return message

    # -- called by the client ---------------------------------------------------------------

    @property
    def _quiescent(self) -> bool:
        return not self._messages and not self._holding

    def _deliver(self, message: Message) -> None:
        if not self.active:
            return
        self._received += 1
        size = len(message.payload)
        messages = self._messages
        if messages and (
            len(messages) >= self.max_pending or self._bytes + size > self.max_pending_bytes
        ):
            self._dropped += 1
        else:
            messages.append(message)
            self._bytes += size
            self._signal.fire()
        self._check_max_msgs()

    def _lost_at_server(self, count: int) -> None:
        """The broker dropped `count` messages routed here; they count towards ``max_msgs``."""
        self._server_dropped += count
        self._check_max_msgs()

    def _check_max_msgs(self) -> None:
        # The server counts every message routed to the subscription, delivered or dropped by
        # its policy, and removes it after the same one; forget it here too.
        if self._max_msgs is not None and self._received + self._server_dropped >= self._max_msgs:
            self._client._forget(self)
            self._end()

    def _resubscribe_frames(self, encoder: Encoder) -> list[bytes]:
        frames = [encoder.send(Sub(self.sid, self.subject, self.queue))]
        if self._max_msgs is not None:
            remaining = self._max_msgs - self._received - self._server_dropped
            frames.append(encoder.send(Unsub(self.sid, remaining)))
        return frames

    def _end(self) -> None:
        self._ended = True
        self._signal.fire()
        self._client._drain_signal.fire()

    def _fail(self, error: BrokerError) -> None:
        if self.active:
            self._error = error
            self._signal.fire()
            self._client._drain_signal.fire()


@final
class _Link:
    """One TCP connection that completed the handshake, and what only makes sense on it."""

    __slots__ = (
        "announce",
        "conn",
        "finish_by",
        "info",
        "missed",
        "pongs",
        "reason",
        "scope",
        "stream",
    )

    def __init__(
        self, stream: anyio.abc.SocketStream, conn: Connection, info: dict[str, Any]
    ) -> None:
        self.stream = stream
        self.conn = conn
        self.info = info
        #: One entry per PING sent, in order: a waiter, or None for a keepalive.
        self.pongs: deque[_Waiter | None] = deque()
        #: Keepalive ticks that passed with no PONG at all since the last one; flush PINGs still
        #: in flight are not evidence of a dead peer, so they are not counted.
        self.missed = 0
        self.reason: ConnectionClosed | None = None
        self.scope: anyio.CancelScope | None = None
        #: Deadline of a graceful close in progress, or None.
        self.finish_by: float | None = None
        #: The resubscription round trip whose PONG triggers on_reconnected.
        self.announce: _Waiter | None = None

    def end(self, reason: ConnectionClosed) -> None:
        """Record why the connection ended (first reason wins) and stop its tasks."""
        if self.reason is None:
            self.reason = reason
        if self.scope is not None:
            self.scope.cancel()


@dataclass(frozen=True, slots=True, kw_only=True)
class _Options:
    name: str | None
    echo: bool
    token: str | None
    reconnect: bool
    max_reconnect_attempts: int | None
    reconnect_delay: float
    max_reconnect_delay: float
    reconnect_buffer_size: int
    write_buffer_size: int
    connect_timeout: float
    ping_interval: float | None
    max_pings_outstanding: int
    on_disconnected: DisconnectedHook | None
    on_reconnected: ReconnectedHook | None
    on_shutting_down: ShuttingDownHook | None
    on_error: ErrorHook | None


@final
class Client:
    """A connection to one broker; made by `connect`, which also closes it.

    Every method may be called from any task of the event loop the client was made in. Methods
    raise `ConnectionClosed` once the client is closed, or its connection broke and reconnection
    is off or gave up; while a reconnection is under way they keep working (see the module
    docstring for what is buffered and what waits).
    """

    def __init__(self, host: str, port: int, options: _Options) -> None:
        self._host = host
        self._port = port
        self._url = f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
        self._options = options
        self._hello: dict[str, Any] = {
            "version": PROTOCOL_VERSION,
            "echo": options.echo,
            "retained": True,  # this client takes MSG's retained flag
        }
        if options.name is not None:
            self._hello["name"] = options.name
        if options.token is not None:
            self._hello["token"] = options.token
        # Frames are encoded once, when queued, whichever connection ends up carrying them, so
        # one codec encodes for every connection. The handshake frame goes through each
        # connection's own codec; this one is told a HELLO went first so it accepts the rest.
        self._encoder = Encoder(Role.CLIENT)
        self._ping_frame = _Control(self._encoder.send(Ping()))
        self._pong_frame = _Control(self._encoder.send(Pong()))
        self._info: dict[str, Any] = {}
        self._max_payload = 0
        self._max_subject_length = MAX_SUBJECT_LENGTH
        self._max_subject_tokens = MAX_SUBJECT_TOKENS
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._writer_signal = Signal()
        self._drained_signal = Signal()
        self._changed_signal = Signal()
        self._drain_signal = Signal()
        self._link: _Link | None = None
        self._closed: ConnectionClosed | None = None
        self._draining = False
        self._subs: dict[int, Subscription] = {}
        self._sids = itertools.count(1)
        self._inbox = f"{INBOX_PREFIX}.{secrets.token_hex(11)}"
        self._inbox_sid: int | None = None
        self._replies: dict[str, _Waiter] = {}
        self._reply_ids = itertools.count(1)
        self._hooks: deque[tuple[Callable[..., Awaitable[None] | None], tuple[Any, ...]]] = deque()
        self._hooks_signal = Signal()
        self._supervisor_scope = anyio.CancelScope()
        self._hooks_scope = anyio.CancelScope()
        self._supervisor_done = anyio.Event()

    def __repr__(self) -> str:
        if self._closed is not None:
            state = "closed"
        elif self._link is not None:
            state = "connected"
        else:
            state = "reconnecting"
        return f"<Client {self._url} {state}>"

    # -- state ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The broker's address, as ``tcp://host:port``."""
        return self._url

    @property
    def server_info(self) -> Mapping[str, Any]:
        """The WELCOME info of the current (or last) connection: limits, ids, ping interval."""
        return MappingProxyType(self._info)

    @property
    def max_payload(self) -> int:
        """The largest payload the server accepts, from its WELCOME."""
        return self._max_payload

    @property
    def is_connected(self) -> bool:
        """Whether a connection is up now (False while reconnecting and once closed)."""
        return self._link is not None and self._closed is None

    @property
    def is_closed(self) -> bool:
        """Whether the client is closed for good: by us, or reconnection is off or gave up."""
        return self._closed is not None

    # -- publishing ----------------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        payload: Payload,
        *,
        reply_to: str | None = None,
        headers: Mapping[str, str] | None = None,
        retain: bool = False,
    ) -> None:
        """Queue one message for the writer; returns without I/O unless the buffer is full.

        Waits (backpressure) only while more than ``write_buffer_size`` bytes are queued on a
        live connection. It does not otherwise yield, so a burst of publishes is sent in one
        write; `flush` proves the server processed them.

        Args:
            subject: A concrete subject: no wildcards, not starting with ``$``.
            payload: At most the server's ``max_payload`` bytes.
            reply_to: A subject for the answer (what `request` sets), or None.
            headers: A mapping of str to str, or None.
            retain: Keep this as the subject's retained message: the broker replays it to every
                later subscription whose pattern matches, before live messages. An empty
                ``payload`` deletes the subject's retained message instead (and is delivered
                live as usual). A full store refuses the message: it is then neither kept nor
                delivered, and ``on_error`` gets `RetainedLimitExceeded`.

        Raises:
            BadSubject: ``subject`` or ``reply_to`` is not a valid concrete subject.
            PayloadTooLarge: ``payload`` (or the whole frame) exceeds the server's limits.
            TypeError: ``payload`` is not bytes-like, or a header is not str to str.
            RetainedLimitExceeded: ``retain`` is set and the server retains nothing (its
                ``max_retained_subjects`` is 0, or it predates retained messages).
            ReconnectBufferFull: Disconnected, and the reconnect buffer has no room.
            ConnectionClosed: The client is closed.
        """
        frame = self._encode_pub(subject, payload, reply_to, headers, retain)
        await self._make_room()
        self._append_pub(frame)

    def publish_nowait(
        self,
        subject: str,
        payload: Payload,
        *,
        reply_to: str | None = None,
        headers: Mapping[str, str] | None = None,
        retain: bool = False,
    ) -> None:
        """Like `publish`, for sync code; raises `anyio.WouldBlock` where publish would wait."""
        frame = self._encode_pub(subject, payload, reply_to, headers, retain)
        if self._must_wait():
            raise anyio.WouldBlock(
                f"{self._pending_bytes} bytes wait for the writer, more than write_buffer_size "
                f"({self._options.write_buffer_size})"
            )
        self._append_pub(frame)

    async def request(
        self, subject: str, payload: Payload, *, headers: Mapping[str, str] | None = None
    ) -> Message:
        """Publish a request and wait for the first reply.

        Replies come through one wildcard subscription per client (``_INBOX.<random>.*``, made
        on the first request) and are matched by their last token. There is no timeout
        parameter: bound the wait with the caller's cancel scope (``anyio.fail_after``,
        ``trio.fail_after``, ``asyncio.timeout``).

        Returns:
            The reply; ``reply.payload`` is the answer.

        Raises:
            NoResponders: Nothing subscribes to ``subject``; raised as soon as the server says so.
            ConnectionClosed: The connection broke after the request was sent, or the client is
                closed or draining.
            BadSubject, PayloadTooLarge, TypeError, ReconnectBufferFull: As `publish`.
        """
        self._check_open()
        token = str(next(self._reply_ids))
        frame = self._encode_pub(subject, payload, f"{self._inbox}.{token}", headers)
        if self._inbox_sid is None:
            self._inbox_sid = next(self._sids)
            if self._link is not None:
                self._queue_control(self._encoder.send(Sub(self._inbox_sid, self._inbox + ".*")))
        waiter = _Waiter(subject)
        self._replies[token] = waiter
        try:
            await self._make_room()
            self._append_pub(frame)
            waiter.frame = frame
            reply = await waiter.wait()
        finally:
            del self._replies[token]
        assert reply is not None
        return reply

    async def flush(self, *, raise_refused: bool = False) -> None:
        """Round trip a PING: when it returns, the server has processed everything sent before.

        Subscriptions made are in place, publishes are routed, and messages routed to this
        client before that point are queued in their subscriptions. While reconnecting, waits
        for the connection first (and so also flushes the reconnect buffer).

        Args:
            raise_refused: Also raise the first publish the server refused while this flush
                waited (a full retained store, or a subject only the server could judge), so
                publish-then-flush learns whether its messages went through. The refusal may
                be of any task's publish made before the flush; ``on_error`` hears of it too.

        Raises:
            RetainedLimitExceeded, BadSubject: With ``raise_refused``: the server refused a
                publish made before the flush; the others were processed.
            ConnectionClosed: The connection broke before the PONG (what was sent may or may not
                have been processed), or the client is closed.
        """
        link = await self._wait_for_link()
        waiter = _Waiter()
        link.pongs.append(waiter)
        self._queue_control(self._ping_frame)
        await waiter.wait()
        if raise_refused and waiter.refused:
            raise _again(waiter.refused[0])

    # -- subscribing ---------------------------------------------------------------------------

    def subscribe(
        self,
        subject: str,
        *,
        queue: str | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    ) -> Subscription:
        """Subscribe to a pattern; does no I/O (the writer sends SUB).

        Use the result with ``async with`` to unsubscribe on exit. To be sure the server has the
        subscription before another client publishes, call `flush`. A refusal from the server
        (e.g. ``max_subscriptions``) fails the subscription: its iterator raises.

        Args:
            subject: A pattern: ``*`` matches one token, a final ``>`` one or more.
            queue: A queue group name: each message goes to one member of the group.
            max_pending: Messages queued for the consumer before the newest are dropped.
            max_pending_bytes: Payload bytes queued before the newest are dropped.

        Raises:
            BadSubject: The pattern or queue name is invalid.
            ValueError: A bound is not a positive int.
            ConnectionClosed: The client is closed or draining.
        """
        self._check_open()
        try:
            validate_pattern(
                subject, max_length=self._max_subject_length, max_tokens=self._max_subject_tokens
            )
            if queue is not None:
                validate_queue(queue)
        except SubjectError as error:
            raise BadSubject(str(error)) from None
        _require_positive_int("max_pending", max_pending)
        _require_positive_int("max_pending_bytes", max_pending_bytes)
        sid = next(self._sids)
        sub = Subscription(self, sid, subject, queue, max_pending, max_pending_bytes)
        self._subs[sid] = sub
        if self._link is not None:
            self._queue_control(self._encoder.send(Sub(sid, subject, queue)))
        return sub

    # -- closing -------------------------------------------------------------------------------

    async def drain(self) -> None:
        """Stop every subscription, let consumers finish what they hold, flush, then close.

        New subscriptions and requests are refused from the start; publishing still works, so
        consumers can respond. Each subscription is unsubscribed and a PING round trip makes
        sure nothing more is on its way. Drain then waits until every queue is empty and every
        ``async for`` loop over a subscription has come back for more (its iterator ends), or
        left its ``async with`` block: so a responder answers the last request it took before
        the connection closes. Then the client closes; requests still waiting fail with
        `ConnectionClosed`. Queued messages nobody takes keep drain waiting, and so does a loop
        left with ``break`` outside ``async with``: bound drain with the caller's cancel scope.
        """
        if self._closed is not None:
            return
        self._draining = True
        subs = list(self._subs.values())
        for sub in subs:
            sub._draining = True
            if self._link is not None:
                self._queue_control(self._encoder.send(Unsub(sub.sid)))
        # A broken connection delivers nothing more either, so the flush may fail harmlessly.
        with contextlib.suppress(ConnectionClosed):
            await self.flush()
        for sub in subs:
            self._forget(sub)
            sub._end()
        while not all(sub._quiescent for sub in subs):
            await self._drain_signal.wait()
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client: write what is queued, half-close, wait up to `CLOSE_TIMEOUT`.

        Leaving the ``async with connect(...)`` block calls this. Idempotent. Subscriptions
        still open and requests still waiting then raise `ConnectionClosed`. While disconnected
        there is nothing to write to: buffered publishes are discarded. Hooks not yet run are
        not run. To know the server processed everything, `flush` (or `drain`) first.
        """
        if self._closed is None:
            self._closed = ConnectionClosed("the client was closed")
            self._changed_signal.fire()
        link = self._link
        if link is not None and link.reason is None:
            link.finish_by = anyio.current_time() + CLOSE_TIMEOUT
            if link.scope is not None:
                link.scope.deadline = link.finish_by
            self._writer_signal.fire()
        else:
            self._supervisor_scope.cancel()
        await self._supervisor_done.wait()
        self._hooks_scope.cancel()
        self._terminate(self._closed)

    # -- internals: the write buffer ----------------------------------------------------------

    def _encode_pub(
        self,
        subject: str,
        payload: Payload,
        reply_to: str | None,
        headers: Mapping[str, str] | None,
        retain: bool = False,
    ) -> bytes:
        if self._closed is not None:
            raise _again(self._closed)
        self._check_subject(subject, "subject")
        if reply_to is not None:
            self._check_subject(reply_to, "reply_to")
        if type(payload) is not bytes:
            if not isinstance(payload, bytearray | memoryview):
                raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
            payload = bytes(payload)
        if len(payload) > self._max_payload:
            raise PayloadTooLarge(
                f"payload of {len(payload)} bytes exceeds the server's max_payload "
                f"({self._max_payload} bytes)"
            )
        if retain:
            limit = self._info.get("max_retained_subjects")
            _check_retain(limit, payload, f"the server at {self._url}")
        wire_headers = None if headers is None else _wire_headers(headers)
        try:
            return self._encoder.send(Pub(subject, payload, reply_to, wire_headers, bool(retain)))
        except LocalProtocolError as error:
            if error.code is ErrorCode.FRAME_TOO_LARGE:
                raise PayloadTooLarge(error.message) from None
            raise TypeError(error.message) from None

    def _check_subject(self, subject: str, what: str) -> None:
        try:
            validate_subject(
                subject, max_length=self._max_subject_length, max_tokens=self._max_subject_tokens
            )
        except SubjectError as error:
            raise BadSubject(f"{what}: {error}") from None

    def _must_wait(self) -> bool:
        return (
            self._link is not None
            and self._closed is None
            and self._pending_bytes > self._options.write_buffer_size
        )

    async def _make_room(self) -> None:
        while self._must_wait():
            await self._drained_signal.wait()

    def _append_pub(self, frame: bytes) -> None:
        if self._closed is not None:
            raise _again(self._closed)
        if self._link is None:
            limit = self._options.reconnect_buffer_size
            if self._pending_bytes + len(frame) > limit:
                raise ReconnectBufferFull(
                    f"not connected, and the reconnect buffer holds {self._pending_bytes} of "
                    f"{limit} bytes (reconnect_buffer_size): a {len(frame)}-byte frame does not fit"
                )
        self._pending.append(frame)
        self._pending_bytes += len(frame)
        self._writer_signal.fire()

    def _queue_control(self, frame: bytes) -> None:
        if type(frame) is not _Control:
            frame = _Control(frame)
        self._pending.append(frame)
        self._pending_bytes += len(frame)
        self._writer_signal.fire()

    def _take_pending(self) -> bytes:
        pending = self._pending
        data = pending.popleft() if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._pending_bytes = 0
        self._drained_signal.fire()
        return data

    # -- internals: subscriptions and requests ---------------------------------------------------

    def _check_open(self) -> None:
        if self._closed is not None:
            raise _again(self._closed)
        if self._draining:
            raise ConnectionClosed("the client is draining: no new subscriptions or requests")

    def _unsubscribe(self, sub: Subscription, max_msgs: int | None) -> None:
        if max_msgs is None:
            self._forget(sub)
        if self._link is not None and self._closed is None:
            self._queue_control(self._encoder.send(Unsub(sub.sid, max_msgs)))

    def _forget(self, sub: Subscription) -> None:
        if self._subs.get(sub.sid) is sub:
            del self._subs[sub.sid]

    def _on_msg(self, event: Msg) -> None:
        sid, subject, payload, reply_to, headers, retained = event
        if sid == self._inbox_sid:
            self._on_reply(event)
            return
        sub = self._subs.get(sid)
        if sub is None:
            return  # Unsubscribed while this message was on its way.
        wrapped = _NO_HEADERS if headers is None else MappingProxyType(headers)
        sub._deliver(Message(subject, payload, wrapped, reply_to, self, retained))

    def _on_reply(self, event: Msg) -> None:
        token = event.subject.rpartition(".")[2]
        waiter = self._replies.get(token)
        if waiter is None:
            return  # Its requester gave up (cancelled), or a second responder answered.
        headers = event.headers
        if (
            not event.payload
            and headers is not None
            and headers.get("status") == _NO_RESPONDERS_STATUS
        ):
            waiter.fail(NoResponders(f"no responders for {waiter.subject!r}: nothing subscribes"))
            return
        wrapped = _NO_HEADERS if headers is None else MappingProxyType(headers)
        waiter.succeed(Message(event.subject, event.payload, wrapped, event.reply_to, self))

    def _on_err(self, link: _Link, event: Err) -> None:
        error = error_from_wire(event.code, event.message, event.details)
        if event.fatal:
            if not isinstance(error, ConnectionClosed):
                error = ConnectionClosed(str(error), code=error.code, details=error.details)
            if isinstance(error, ServerShuttingDown):
                self._queue_hook(self._options.on_shutting_down, error)
            link.end(error)
            return
        if event.code == ErrorCode.MESSAGES_DROPPED:
            self._credit_drops(error.details.get("sids"))
        sid = error.details.get("sid")
        if type(sid) is int:
            if sid == self._inbox_sid:
                # The inbox was refused: fail whoever waits on it, and try afresh next time.
                self._inbox_sid = None
                for waiter in self._replies.values():
                    waiter.fail(error)
                return
            sub = self._subs.pop(sid, None)
            if sub is not None:
                log.info("subscription %d to %r refused by the server: %s", sid, sub.subject, error)
                sub._fail(error)
                return
        if "subject" in error.details:
            # A refused publish: a flush awaiting a PONG sent after it may raise it.
            for pending in link.pongs:
                if pending is not None:
                    pending.refused.append(error)
        self._report(error)

    def _credit_drops(self, pairs: object) -> None:
        """Tell each subscription how many of its messages the broker dropped."""
        if type(pairs) is not list:
            return
        for pair in pairs:
            if type(pair) is list and len(pair) == 2 and type(pair[0]) is type(pair[1]) is int:
                sub = self._subs.get(pair[0])
                if sub is not None:
                    sub._lost_at_server(pair[1])

    def _report(self, error: BrokerError) -> None:
        if self._options.on_error is None:
            log.warning("error from the broker at %s: %r", self._url, error)
        else:
            self._queue_hook(self._options.on_error, error)

    # -- internals: hooks -------------------------------------------------------------------------

    def _queue_hook(self, hook: Callable[..., Awaitable[None] | None] | None, *args: Any) -> None:
        if hook is not None:
            self._hooks.append((hook, args))
            self._hooks_signal.fire()

    async def _run_hooks(self) -> None:
        with self._hooks_scope:
            while True:
                while self._hooks:
                    hook, args = self._hooks.popleft()
                    try:
                        result = hook(*args)
                        if inspect.isawaitable(result):
                            await result
                    except Exception:
                        log.exception("hook %r raised; the client carries on", hook)
                await self._hooks_signal.wait()

    # -- internals: connections -------------------------------------------------------------------

    def _start(self, task_group: anyio.abc.TaskGroup, link: _Link) -> None:
        self._install(link, reconnected=False)
        task_group.start_soon(self._supervise, link)
        task_group.start_soon(self._run_hooks)

    async def _wait_for_link(self) -> _Link:
        while True:
            if self._closed is not None:
                raise _again(self._closed)
            link = self._link
            if link is not None and link.reason is None:
                return link
            await self._changed_signal.wait()

    async def _open_link(self) -> _Link:
        """Connect and handshake, within ``connect_timeout``; any failure is ConnectionClosed."""
        timeout = self._options.connect_timeout
        stream: anyio.abc.SocketStream | None = None
        try:
            with anyio.move_on_after(timeout):
                stream = await anyio.connect_tcp(self._host, self._port)
                conn = Connection(Role.CLIENT)
                await stream.send(conn.send(Hello(self._hello)))
                info = await _read_welcome(stream, conn)
                link = _Link(stream, conn, info)
                stream = None  # The link owns it now.
                return link
            raise ConnectionClosed(
                f"connecting to {self._url} took longer than connect_timeout ({timeout} s)"
            )
        except OSError as error:
            raise ConnectionClosed(f"cannot connect to {self._url}: {error}") from error
        except (anyio.BrokenResourceError, anyio.EndOfStream) as error:
            raise ConnectionClosed(
                f"the connection to {self._url} broke during the handshake"
            ) from error
        finally:
            if stream is not None:
                await anyio.aclose_forcefully(stream)

    def _install(self, link: _Link, *, reconnected: bool) -> None:
        """Make `link` the live connection, queueing resubscriptions ahead of buffered PUBs."""
        info = link.info
        self._info = info
        self._max_payload = _info_int(info, "max_payload", DEFAULT_MAX_PAYLOAD)
        max_frame = _info_int(info, "max_frame", link.conn.max_frame)
        # A MSG may be MSG_GROWTH bytes longer than the largest PUB it delivers.
        link.conn.max_frame = max_frame + MSG_GROWTH
        self._encoder.max_frame = max_frame
        self._max_subject_length = _info_int(info, "max_subject_length", MAX_SUBJECT_LENGTH)
        self._max_subject_tokens = _info_int(info, "max_subject_tokens", MAX_SUBJECT_TOKENS)
        if reconnected:
            frames: list[bytes] = []
            for sub in self._subs.values():
                if sub.active and not sub._draining:
                    frames.extend(sub._resubscribe_frames(self._encoder))
            if self._inbox_sid is not None:
                frames.append(self._encoder.send(Sub(self._inbox_sid, self._inbox + ".*")))
            for frame in reversed(frames):
                self._pending.appendleft(_Control(frame))
                self._pending_bytes += len(frame)
            # The PONG to this PING proves the subscriptions and the buffer went through.
            link.announce = _Waiter()
            link.pongs.append(link.announce)
            self._queue_control(self._ping_frame)
        self._link = link
        self._changed_signal.fire()
        self._writer_signal.fire()
        self._drained_signal.fire()

    def _link_lost(self, link: _Link, reason: ConnectionClosed) -> None:
        self._link = None
        kept = deque(frame for frame in self._pending if type(frame) is not _Control)
        self._pending = kept
        self._pending_bytes = sum(map(len, kept))
        still_queued = {id(frame) for frame in kept}
        for waiter in self._replies.values():
            if waiter.frame is not None and id(waiter.frame) not in still_queued:
                waiter.fail(reason)
        for pong in link.pongs:
            if pong is not None:
                pong.fail(reason)
        self._changed_signal.fire()
        self._drained_signal.fire()
        if self._closed is None:
            # With a hook the application hears of it there; logging WARNING too would say it
            # twice in every script that has no logging set up.
            hooked = self._options.on_disconnected is not None
            log.log(
                logging.INFO if hooked else logging.WARNING,
                "connection to %s lost: %s",
                self._url,
                reason,
            )
            self._queue_hook(self._options.on_disconnected, reason)

    async def _supervise(self, link: _Link) -> None:
        """Serve each connection until it ends, then reconnect, until closed or given up."""
        try:
            with self._supervisor_scope:
                while True:
                    reason = await self._serve_link(link)
                    self._link_lost(link, reason)
                    if self._closed is not None:
                        return
                    next_link = await self._reconnect(reason)
                    if next_link is None:
                        return
                    link = next_link
                    self._install(link, reconnected=True)
        finally:
            self._supervisor_done.set()

    async def _reconnect(self, reason: ConnectionClosed) -> _Link | None:
        options = self._options
        if not options.reconnect:
            self._terminate(reason)
            return None
        attempts = 0
        last = reason
        while options.max_reconnect_attempts is None or attempts < options.max_reconnect_attempts:
            await anyio.sleep(self._backoff(attempts))
            attempts += 1
            try:
                link = await self._open_link()
            except ConnectionClosed as error:
                log.info("reconnection attempt %d to %s failed: %s", attempts, self._url, error)
                last = error
                continue
            log.info("reconnected to %s after %d attempts", self._url, attempts)
            return link
        gave_up = ConnectionClosed(
            f"gave up reconnecting to {self._url} after {attempts} attempts "
            f"(max_reconnect_attempts); last error: {last}",
            code=last.code,
        )
        gave_up.__cause__ = last
        self._terminate(gave_up)
        return None

    def _backoff(self, attempt: int) -> float:
        options = self._options
        delay = options.reconnect_delay * 2.0 ** min(attempt, _MAX_BACKOFF_EXPONENT)
        # Jitter spreads a crowd of clients that lost the same broker over time.
        return min(delay, options.max_reconnect_delay) * random.uniform(0.5, 1.0)

    def _terminate(self, reason: ConnectionClosed) -> None:
        """The client is done for good: fail everything still waiting."""
        if self._closed is None:
            self._closed = reason
        self._link = None
        self._pending.clear()
        self._pending_bytes = 0
        subs = list(self._subs.values())
        self._subs.clear()
        for sub in subs:
            sub._fail(reason)
        for waiter in self._replies.values():
            waiter.fail(reason)
        self._changed_signal.fire()
        self._drained_signal.fire()
        self._drain_signal.fire()

    async def _serve_link(self, link: _Link) -> ConnectionClosed:
        try:
            async with anyio.create_task_group() as tasks:
                link.scope = tasks.cancel_scope
                if link.reason is not None:
                    tasks.cancel_scope.cancel()
                if link.finish_by is not None:
                    tasks.cancel_scope.deadline = link.finish_by
                tasks.start_soon(self._read_loop, link)
                tasks.start_soon(self._write_loop, link)
                tasks.start_soon(self._ping_loop, link)
                if link.announce is not None:
                    tasks.start_soon(self._announce, link.announce)
        finally:
            link.scope = None
            await anyio.aclose_forcefully(link.stream)
        if link.reason is None:
            # Only a graceful close that ran out of CLOSE_TIMEOUT ends without a reason.
            link.reason = ConnectionClosed("the client was closed")
        return link.reason

    async def _read_loop(self, link: _Link) -> None:
        conn = link.conn
        receive = link.stream.receive
        data = b"-"
        while True:
            try:
                events = conn.events()
            except RemoteProtocolError as error:
                if not data:
                    # EOF inside a frame: the server cuts off a slow consumer it is writing to
                    # that way (it cannot send ERR after half a frame). Not a broken contract.
                    link.end(
                        ConnectionClosed(
                            f"the server at {self._url} closed the connection in the middle of "
                            "a frame, as it does when it cuts off a client that reads too slowly"
                        )
                    )
                else:
                    link.end(
                        ProtocolViolation(
                            f"the server broke the wire contract: {error.message}",
                            code=error.code,
                        )
                    )
                return
            if events:
                self._dispatch(link, events)
                if link.reason is not None:
                    return
                continue
            if conn.closed:
                if link.finish_by is not None:
                    link.end(ConnectionClosed("the client was closed"))
                else:
                    link.end(ConnectionClosed(f"the server at {self._url} closed the connection"))
                return
            try:
                data = await receive(READ_SIZE)
            except anyio.EndOfStream:
                data = b""
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as error:
                link.end(ConnectionClosed(f"the connection to {self._url} broke: {error!r}"))
                return
            conn.receive_data(data)

    def _dispatch(self, link: _Link, events: list[Event]) -> None:
        for event in events:
            kind = type(event)
            if kind is Msg:
                self._on_msg(event)  # type: ignore[arg-type]
            elif kind is Ping:
                self._queue_control(self._pong_frame)
            elif kind is Pong:
                link.missed = 0
                if link.pongs:
                    waiter = link.pongs.popleft()
                    if waiter is not None:
                        waiter.succeed()
            elif kind is Err:
                self._on_err(link, event)  # type: ignore[arg-type]
                if link.reason is not None:
                    return

    async def _write_loop(self, link: _Link) -> None:
        stream = link.stream
        try:
            while True:
                if not self._pending:
                    if link.finish_by is not None:
                        await stream.send_eof()
                        return
                    await self._writer_signal.wait()
                    continue
                await stream.send(self._take_pending())
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as error:
            link.end(ConnectionClosed(f"the connection to {self._url} broke: {error!r}"))

    async def _ping_loop(self, link: _Link) -> None:
        interval = self._options.ping_interval
        if interval is None:
            interval = _info_float(link.info, "ping_interval", 120.0)
        limit = self._options.max_pings_outstanding
        while True:
            await anyio.sleep(interval)
            if link.missed >= limit:
                link.end(
                    StaleConnection(
                        f"{link.missed} keepalive PINGs to {self._url} unanswered "
                        f"(max_pings_outstanding is {limit}, one every {interval} s)"
                    )
                )
                return
            link.missed += 1
            link.pongs.append(None)
            self._queue_control(self._ping_frame)

    async def _announce(self, waiter: _Waiter) -> None:
        await waiter.wait()
        self._queue_hook(self._options.on_reconnected)


async def _read_welcome(stream: anyio.abc.SocketStream, conn: Connection) -> dict[str, Any]:
    """Read up to the server's first frame; leave anything after it in `conn` for the reader."""
    while True:
        try:
            event = conn.next_event()
        except RemoteProtocolError as error:
            raise ProtocolViolation(
                f"the server broke the wire contract during the handshake: {error.message}",
                code=error.code,
            ) from None
        if event is NEED_DATA:
            try:
                data = await stream.receive(READ_SIZE)
            except anyio.EndOfStream:
                data = b""
            conn.receive_data(data)
            continue
        if event is CLOSED:
            raise ConnectionClosed("the server closed the connection before WELCOME")
        if type(event) is Welcome:
            return event.info
        assert type(event) is Err
        refusal = error_from_wire(event.code, event.message, event.details)
        if isinstance(refusal, ConnectionClosed):
            raise refusal
        raise ConnectionClosed(str(refusal), code=refusal.code, details=refusal.details)


def _check_retain(limit: object, payload: bytes, server: str) -> None:
    """Refuse a retained PUB of `payload` to a server whose WELCOME announced `limit` as its
    ``max_retained_subjects`` (shared with `broker.sync`, which checks in the caller's thread).

    A server that does not announce the limit predates retained messages and would take the
    extra PUB field as a broken frame; one that announces 0 refuses all but deletions.

    Raises:
        RetainedLimitExceeded: The server would not take it.
    """
    if type(limit) is int and (limit > 0 or not payload):
        return
    shown = "not announced" if limit is None else limit
    raise RetainedLimitExceeded(
        f"{server} does not retain messages (its max_retained_subjects is {shown})"
    )


def _info_int(info: Mapping[str, Any], key: str, default: int) -> int:
    value = info.get(key)
    return value if type(value) is int and value > 0 else default


def _info_float(info: Mapping[str, Any], key: str, default: float) -> float:
    value = info.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return default


def _wire_headers(headers: Mapping[str, str]) -> dict[str, str]:
    wire = dict(headers)
    for key, value in wire.items():
        if type(key) is not str or type(value) is not str:
            raise TypeError(f"headers must map str to str, got {key!r}: {value!r}")
    return wire


def _require_positive_int(name: str, value: object) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _require_non_negative_int(name: str, value: object) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")


def parse_url(url: str) -> tuple[str, int]:
    """Split a broker address into host and port.

    Accepts ``tcp://host:port``, ``host:port`` and ``[::1]:port``; the port defaults to the
    server's (`broker.config.DEFAULT_PORT`).

    Raises:
        ValueError: Another scheme, no host, a bad port, or a path, query or user part.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}")
    parts = urlsplit(url if "://" in url else "tcp://" + url)
    if parts.scheme != "tcp":
        raise ValueError(f"broker URLs use the tcp scheme (tcp://host:port), got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"the port must be an int between 0 and 65535 in {url!r}") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"a broker URL needs a host, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"a broker URL is only tcp://host:port, got {url!r}")
    return host, DEFAULT_PORT if port is None else port


def connect(
    url: str,
    *,
    name: str | None = None,
    echo: bool = True,
    token: str | None = None,
    reconnect: bool = True,
    max_reconnect_attempts: int | None = None,
    reconnect_delay: float = DEFAULT_RECONNECT_DELAY,
    max_reconnect_delay: float = DEFAULT_MAX_RECONNECT_DELAY,
    reconnect_buffer_size: int = DEFAULT_RECONNECT_BUFFER_SIZE,
    write_buffer_size: int = DEFAULT_WRITE_BUFFER_SIZE,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ping_interval: float | None = None,
    max_pings_outstanding: int = DEFAULT_MAX_PINGS_OUTSTANDING,
    on_disconnected: DisconnectedHook | None = None,
    on_reconnected: ReconnectedHook | None = None,
    on_shutting_down: ShuttingDownHook | None = None,
    on_error: ErrorHook | None = None,
) -> AbstractAsyncContextManager[Client]:
    """Connect to a broker; use as ``async with broker.connect(url) as client:``.

    Entering connects and completes the handshake (or raises); the client then runs its
    reader, writer and reconnection in the background until the block ends. Runs under Trio and
    asyncio alike. Errors from the block and from the client come out as themselves, never
    wrapped in a one-error `ExceptionGroup`.

    Args:
        url: ``tcp://host:port``, ``host:port`` or ``[::1]:port``.
        name: Shown in the server's logs.
        echo: Whether this client receives its own publishes.
        token: Sent in HELLO, reserved for authentication.
        reconnect: Reconnect when a live connection breaks. The first connection is not
            retried: a wrong address should fail loudly.
        max_reconnect_attempts: Attempts per outage before giving up; None for no limit.
        reconnect_delay: First delay before an attempt, in seconds; doubles per failure.
        max_reconnect_delay: Upper bound on that delay.
        reconnect_buffer_size: Bytes of encoded publishes kept while disconnected.
        write_buffer_size: Queued bytes above which `Client.publish` waits.
        connect_timeout: Seconds each connection attempt may take, handshake included (the
            reconnections run in the background, with no caller's cancel scope to bound them).
        ping_interval: Seconds between our PINGs; None takes the server's from WELCOME.
        max_pings_outstanding: Unanswered PINGs after which the connection is dead.
        on_disconnected: Called with the `ConnectionClosed` when a live connection breaks.
        on_reconnected: Called once a new connection is up and resubscribed.
        on_shutting_down: Called with the `ServerShuttingDown` the server sent.
        on_error: Called with errors that belong to no caller (e.g. `MessagesDropped`); they
            are logged when it is None.

    Raises:
        ValueError: A bad URL or option (at once, before connecting).
        ConnectionClosed: On entering, if the connection or handshake fails; the server's
            refusal (e.g. ``max_connections``) is in its ``code``.
    """
    host, port = parse_url(url)
    if max_reconnect_attempts is not None:
        _require_non_negative_int("max_reconnect_attempts", max_reconnect_attempts)
    check_seconds("reconnect_delay", reconnect_delay)
    check_seconds("max_reconnect_delay", max_reconnect_delay)
    if max_reconnect_delay < reconnect_delay:
        raise ValueError(
            f"max_reconnect_delay must be >= reconnect_delay ({reconnect_delay}), "
            f"got {max_reconnect_delay}"
        )
    _require_non_negative_int("reconnect_buffer_size", reconnect_buffer_size)
    _require_non_negative_int("write_buffer_size", write_buffer_size)
    check_seconds("connect_timeout", connect_timeout)
    if ping_interval is not None:
        check_seconds("ping_interval", ping_interval)
    _require_positive_int("max_pings_outstanding", max_pings_outstanding)
    options = _Options(
        name=name,
        echo=echo,
        token=token,
        reconnect=reconnect,
        max_reconnect_attempts=max_reconnect_attempts,
        reconnect_delay=float(reconnect_delay),
        max_reconnect_delay=float(max_reconnect_delay),
        reconnect_buffer_size=reconnect_buffer_size,
        write_buffer_size=write_buffer_size,
        connect_timeout=float(connect_timeout),
        ping_interval=None if ping_interval is None else float(ping_interval),
        max_pings_outstanding=max_pings_outstanding,
        on_disconnected=on_disconnected,
        on_reconnected=on_reconnected,
        on_shutting_down=on_shutting_down,
        on_error=on_error,
    )
    return _connected(host, port, options)


@asynccontextmanager
async def _connected(host: str, port: int, options: _Options) -> AsyncIterator[Client]:
    try:
        client = Client(host, port, options)
        link = await client._open_link()
        async with anyio.create_task_group() as tasks:
            client._start(tasks, link)
            try:
                yield client
            except BaseException:
                # The block failed: close at once rather than flush into a possibly dead peer.
                client._supervisor_scope.cancel()
                client._hooks_scope.cancel()
                client._terminate(ConnectionClosed("the client was closed"))
                raise
            await client.aclose()
    except BaseExceptionGroup as group:
        single = single_leaf(group)
        if single is None:
            raise
    else:
        return
    # Raised outside the except block, so the group does not become its __context__.
    raise single
