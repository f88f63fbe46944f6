"""The async client: one connection to a broker, kept alive across restarts, on Trio or asyncio.

One implementation serves both event loops because it is written against anyio; the wire format
comes from the shared I/O-free codec in `broker.protocol`, so client and server cannot disagree
about a frame. `Client` holds the state (subscriptions, requests, the write buffer) and the
verbs; `broker.client.connection` keeps it connected (reader, writer, keepalive, reconnection);
`broker.client.subscription` has `Subscription` and `Message`; `broker.client.options` the
options of `connect` and their defaults.

``publish`` is async only for backpressure: it waits while more than ``write_buffer_size``
bytes (default 1 MiB) are queued and not yet handed to the socket. ``publish_nowait`` raises
`anyio.WouldBlock` instead of waiting. ERR frames become typed exceptions (`broker.errors`).

Decisions a caller can rely on:

- **Publishing while disconnected** queues the frame in the same buffer, up to
  ``reconnect_buffer_size`` bytes of encoded frames (default 8 MiB); a publish that does not fit
  raises `ReconnectBufferFull` (a `ConnectionClosed`) and queues nothing. Frames the writer had
  already handed to a connection that broke are lost (delivery is at most once); frames still
  queued are sent after reconnecting.
- **Requests in flight** when a connection breaks (their PUB was handed to it) fail at once with
  the `ConnectionClosed` that ended it: whether the responder saw the request is unknown, so
  retrying is the caller's decision. Requests whose PUB is still queued, and requests made while
  disconnected, wait for the next connection, within their deadline.
- **Deadlines.** Every call that waits (`Client.request`, `Client.flush`, `Client.drain`,
  `Subscription.next`) takes ``timeout`` in seconds and raises the builtin `TimeoutError` when it
  passes. Left at None, the caller's cancel scope bounds the call if it has a deadline
  (``with trio.fail_after(10): await client.request(...)`` waits up to 10 s), else a default
  does (2 s for a request, 5 s for a flush, 30 s for a drain, 1 s for `Subscription.next`), so
  nothing waits forever by mistake. ``async for`` over a subscription waits as long as it
  takes: it ends when the subscription does. See `broker.client.deadlines`.
- **Hooks** are plain callables, sync or async, given to `connect`: ``on_disconnected(error)``
  when a live connection breaks (not when we close it), ``on_reconnected()`` once resubscribed,
  ``on_shutting_down(error)`` when the server sends ERR ``shutting_down``, and ``on_error(error)``
  for errors that belong to no caller (``messages_dropped``, a refused PUB or SUB). They run one
  at a time, in order, in a task of their own, so a slow hook never stalls the reader; an
  exception from a hook is logged and the client carries on.
- **Closing.** Leaving the ``async with connect(...)`` block normally writes what is queued,
  half-closes and waits up to `CLOSE_TIMEOUT` for the server to finish; leaving it with an
  exception closes at once. `Client.drain` is the graceful way out for consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import math
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import MappingProxyType
from typing import Any, Final, Unpack, final

import anyio
import anyio.abc
import anyio.lowlevel

from .._concurrency import Signal, loop_checkpoints, single_leaf, trio_if_running
from ..errors import (
    BadSubject,
    BrokerError,
    ConnectionClosed,
    NoResponders,
    PayloadTooLarge,
    ReconnectBufferFull,
    ServerShuttingDown,
    _again,
    error_from_wire,
)
from ..protocol import (
    MSG_GROWTH,
    Encoder,
    Err,
    ErrorCode,
    LocalProtocolError,
    Msg,
    Ping,
    Pong,
    Role,
    Sub,
    Unsub,
)
from ..subjects import SubjectError, validate_pattern, validate_queue
from .connection import _Control, _Link, _Supervisor, _Waiter
from .deadlines import deadline, expired, own_limit
from .limits import Payload, ServerLimits, check_headers, info_int
from .options import (
    CLOSE_TIMEOUT,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_FLUSH_TIMEOUT,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_REQUEST_TIMEOUT,
    ClientOptions,
    ConnectOptions,
    check_options,
    document_options,
    require_positive_int,
    resolve_targets,
)
from .subscription import Message, Subscription, make_message
from .timer import RequestTimer

__all__ = ["Client", "connect"]

log = logging.getLogger("broker.client")

#: First token of every request inbox; the rest is random per client.
INBOX_PREFIX: Final = "_INBOX"

_NO_HEADERS: Final[Mapping[str, str]] = MappingProxyType({})
_NO_RESPONDERS_STATUS: Final = "503"


@final
class Client:
    """A connection to one broker; made by `connect`, which also closes it.

    Every method may be called from any task of the event loop the client was made in. Methods
    raise `ConnectionClosed` once the client is closed, or its connection broke and reconnection
    is off or gave up; while a reconnection is under way they keep working (see the module
    docstring for what is buffered and what waits).
    """

    def __init__(
        self,
        host: str,
        port: int,
        options: ClientOptions,
        *,
        also: Sequence[tuple[str, int]] = (),
    ) -> None:
        scheme = "tcp" if options.tls is False else "tls"
        self._url = _url_of(host, port, scheme)
        self._options = options
        others = [(h, p, _url_of(h, p, scheme)) for h, p in also]
        self._supervisor = _Supervisor(self, host, port, self._url, options, others)
        # Frames are encoded once, when queued, whichever connection ends up carrying them, so
        # one codec encodes for every connection. The handshake frame goes through each
        # connection's own codec; this one is told a HELLO went first so it accepts the rest.
        self._encoder = Encoder(Role.CLIENT)
        self._ping_frame = _Control(self._encoder.send(Ping()))
        self._pong_frame = _Control(self._encoder.send(Pong()))
        self._info: dict[str, Any] = {}
        #: Those of the current (or last) connection; `broker.sync` checks publishes with them.
        self._limits = ServerLimits()
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._writer_signal = Signal()
        #: The connection's non-blocking ``socket.send``, set only while its writer waits with
        #: nothing to send (`_append_now`).
        self._send_now: Callable[[bytes], int] | None = None
        self._drained_signal = Signal()
        self._changed_signal = Signal()
        self._drain_signal = Signal()
        self._link: _Link | None = None
        self._closed: ConnectionClosed | None = None
        self._draining = False
        self._subs: dict[int, Subscription] = {}
        self._sids = itertools.count(1)
        self._inbox = f"{options.inbox_prefix}.{secrets.token_hex(11)}"
        self._inbox_sid: int | None = None
        self._replies: dict[str, _Waiter] = {}
        trio = trio_if_running()
        clock = asyncio.get_running_loop().time if trio is None else trio.current_time
        self._timer = RequestTimer(self._replies, clock)
        #: The first refusal that came while no flush waited; the next flush takes it.
        self._unclaimed_refusal: BrokerError | None = None
        self._reply_ids = itertools.count(1)
        self._hooks: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._hooks_signal = Signal()
        self._hooks_scope = anyio.CancelScope()
        #: Made in the event loop it serves, so these are that loop's.
        self._cancellation_check, self._scheduler_checkpoint = loop_checkpoints()

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
        """The broker's address, as ``tcp://host:port``: with several (a cluster's nodes),
        the one connected now, or last."""
        return self._url

    @property
    def server_info(self) -> Mapping[str, Any]:
        """The WELCOME info of the current (or last) connection: limits, ids, ping interval."""
        return MappingProxyType(self._info)

    @property
    def max_payload(self) -> int:
        """The largest payload the server accepts, from its WELCOME."""
        return self._limits.max_payload

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
        if self._pending_bytes > self._options.write_buffer_size:
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
        self,
        subject: str,
        payload: Payload,
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Message:
        """Publish a request and wait for the first reply.

        Replies come through one wildcard subscription per client (``_INBOX.<random>.*``, made
        on the first request) and are matched by their last token.

        Args:
            subject: Where the responders subscribe.
            payload: The request's bytes.
            timeout: Seconds to wait for the reply (``math.inf``: no limit of its own). None,
                the default, leaves the bound to the caller's cancel scope if it has a deadline
                (``trio.fail_after``, ``anyio.fail_after``), else waits `DEFAULT_REQUEST_TIMEOUT`
                (2 s); see `broker.client.deadlines`.
            headers: A mapping of str to str, or None.

        Returns:
            The reply; ``reply.payload`` is the answer.

        Raises:
            TimeoutError: No reply within ``timeout`` (or the default).
            NoResponders: Nothing subscribes to ``subject``; raised as soon as the server says so.
            ConnectionClosed: The connection broke after the request was sent, or the client is
                closed or draining.
            ValueError: ``timeout`` is not a number of seconds >= 0 or None.
            BadSubject, PayloadTooLarge, TypeError, ReconnectBufferFull: As `publish`.
        """
        self._check_open()
        limit = own_limit(timeout, DEFAULT_REQUEST_TIMEOUT)
        if self._inbox_sid is None:
            # Before the choice below: the inbox's SUB counts towards the write buffer.
            self._inbox_sid = next(self._sids)
            if self._link is not None:
                self._queue_control(self._encoder.send(Sub(self._inbox_sid, self._inbox + ".*")))

        def missed() -> str:
            return f"no reply to a request on {subject!r}"

        if limit == math.inf or (self._timer.running and not self._must_wait()):
            # Bounded by the client's timer (or only by the caller's scopes): nothing below
            # waits but for the reply, since the write buffer has room.
            reply = await self._request(subject, payload, headers, limit)
            if reply is None:
                raise TimeoutError(expired(missed(), limit, defaulted=timeout is None))
            return reply
        # Waiting for room in the write buffer too, or the timer is not running (the client is
        # starting or closing): a cancel scope bounds the whole of it.
        with deadline(timeout, DEFAULT_REQUEST_TIMEOUT, missed):
            reply = await self._request(subject, payload, headers, math.inf)
        assert reply is not None
        return reply

    async def _request(
        self, subject: str, payload: Payload, headers: Mapping[str, str] | None, limit: float
    ) -> Message | None:
        """Send a request and wait for its reply; None if `limit` (seconds, on the client's
        timer; ``math.inf`` for none) passed first."""
        token = str(next(self._reply_ids))
        frame = self._encode_pub(subject, payload, f"{self._inbox}.{token}", headers)
        waiter = _Waiter(subject)
        self._replies[token] = waiter
        try:
            await self._make_room()
            self._append_now(frame)
            waiter.frame = frame
            if limit != math.inf:
                self._timer.add(token, limit)
            reply = await waiter.wait()
        finally:
            del self._replies[token]
        return reply

    async def flush(self, timeout: float | None = None, *, raise_refused: bool = False) -> None:
        """Round trip a PING: when it returns, the server has processed everything sent before.

        Subscriptions made are in place, publishes are routed, and messages routed to this
        client before that point are queued in their subscriptions. While reconnecting, waits
        for the connection first (and so also flushes the reconnect buffer).

        Args:
            timeout: Seconds to wait for the PONG (``math.inf``: no limit of its own). None, the
                default, leaves the bound to the caller's cancel scope if it has a deadline,
                else waits `DEFAULT_FLUSH_TIMEOUT` (5 s); see `broker.client.deadlines`.
            raise_refused: Also raise the first publish or subscription the server refused
                (a full retained store, ``max_subscriptions``, a subject only the server could
                judge) that was made before this flush and that no earlier flush was told of,
                so publish-then-flush and subscribe-then-flush learn whether they went
                through. It may be any task's; ``on_error`` hears of it too (and a refused
                subscription's reader raises it).

        Raises:
            TimeoutError: No PONG within ``timeout`` (or the default).
            RetainedLimitExceeded, BadSubject, TooManySubscriptions: With ``raise_refused``:
                the server refused a publish or subscription made before the flush; the
                others were processed. A subscription's error has its ``sid`` in
                ``details``.
            ConnectionClosed: The connection broke before the PONG (what was sent may or may not
                have been processed), or the client is closed.
            ValueError: ``timeout`` is not a number of seconds >= 0 or None.
        """
        with deadline(timeout, DEFAULT_FLUSH_TIMEOUT, lambda: f"no PONG from {self._url}"):
            link = await self._wait_for_link()
            waiter = _Waiter()
            if self._unclaimed_refusal is not None:
                waiter.refused.append(self._unclaimed_refusal)
                self._unclaimed_refusal = None
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
        (e.g. ``max_subscriptions``) fails the subscription: its iterator raises, ``on_error``
        is told, and ``flush(raise_refused=True)`` raises it.

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
        limits = self._limits
        try:
            validate_pattern(
                subject, max_length=limits.max_subject_length, max_tokens=limits.max_subject_tokens
            )
            if queue is not None:
                validate_queue(queue)
        except SubjectError as error:
            raise BadSubject(str(error)) from None
        require_positive_int("max_pending", max_pending)
        require_positive_int("max_pending_bytes", max_pending_bytes)
        sid = next(self._sids)
        sub = Subscription(self, sid, subject, queue, max_pending, max_pending_bytes)
        self._subs[sid] = sub
        if self._link is not None:
            self._queue_control(self._encoder.send(Sub(sid, subject, queue)))
        return sub

    # -- closing -------------------------------------------------------------------------------

    async def drain(self, timeout: float | None = None) -> None:
        """Stop every subscription, let consumers finish what they hold, flush, then close.

        New subscriptions and requests are refused from the start; publishing still works, so
        consumers can respond. Each subscription is unsubscribed and a PING round trip makes
        sure nothing more is on its way. Drain then waits until every queue is empty and every
        ``async for`` loop over a subscription has come back for more (its iterator ends), or
        left its ``async with`` block: so a responder answers the last request it took before
        the connection closes. Then the client closes; requests still waiting fail with
        `ConnectionClosed`. Queued messages nobody takes keep drain waiting, and so does a loop
        left with ``break`` outside ``async with``, until the limit.

        Args:
            timeout: Seconds to wait for the consumers (``math.inf``: no limit of its own). None,
                the default, leaves the bound to the caller's cancel scope if it has a deadline,
                else waits `DEFAULT_DRAIN_TIMEOUT` (30 s); see `broker.client.deadlines`.

        Raises:
            TimeoutError: The consumers did not finish in time; the client is closed anyway.
            ValueError: ``timeout`` is not a number of seconds >= 0 or None.
        """
        defaulted = timeout is None
        limit = own_limit(timeout, DEFAULT_DRAIN_TIMEOUT)
        if self._closed is not None:
            return
        with anyio.move_on_after(limit) as scope:
            await self._drain()
        await self.aclose()
        if scope.cancelled_caught:
            missed = "drain: the consumers did not finish what they hold"
            raise TimeoutError(expired(missed, limit, defaulted=defaulted))

    async def _drain(self) -> None:
        self._draining = True
        subs = list(self._subs.values())
        for sub in subs:
            sub._draining = True
            if self._link is not None:
                self._queue_control(self._encoder.send(Unsub(sub.sid)))
        # A broken connection delivers nothing more either, so the flush may fail harmlessly.
        with contextlib.suppress(ConnectionClosed):
            await self.flush(math.inf)
        for sub in subs:
            self._forget(sub)
            sub._end()
        while not all(sub._quiescent for sub in subs):
            await self._drain_signal.wait()

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
            self._supervisor.scope.cancel()
        await self._supervisor.done.wait()
        self._hooks_scope.cancel()
        self._timer.scope.cancel()
        self._terminate(self._closed)

    # -- internals: the write buffer ----------------------------------------------------------

    def _encode_pub(
        self,
        subject: str,
        payload: Payload,
        reply_to: str | None,
        headers: Mapping[str, str] | None,
        retain: bool = False,
        *,
        once: bool = False,
    ) -> bytes:
        if self._closed is not None:
            raise _again(self._closed)
        data = self._limits.check_publish(subject, payload, reply_to, retain)
        wire_headers = None if headers is None else check_headers(headers)
        try:
            # The fields are checked above (types included), so the encoder need not re-parse.
            return self._encoder.pub(subject, data, reply_to, wire_headers, bool(retain), once=once)
        except LocalProtocolError as error:
            if error.code is ErrorCode.FRAME_TOO_LARGE:
                raise PayloadTooLarge(error.message) from None
            raise TypeError(error.message) from None

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
        if self._writer_signal.event is not None:  # the writer waits: a burst's first publish
            self._writer_signal.fire()

    async def _respond(
        self, subject: str, payload: Payload, headers: Mapping[str, str] | None
    ) -> None:
        """`publish` for `Message.respond`: an answer is written at once (`_append_now`)."""
        frame = self._encode_pub(subject, payload, None, headers, False, once=True)
        await self._make_room()
        self._append_now(frame)

    def _append_now(self, frame: bytes) -> None:
        """`_append_pub`, but written at once if the writer is idle with nothing pending.

        For a request or a response, whose task waits next instead of publishing more: the
        writer would send it alone anyway, a scheduler pass later. What the socket does not
        take is queued as a control frame, so a reconnection drops it rather than send half
        a frame on a new connection; a failed write leaves the writer to find the error.
        """
        send = self._send_now
        link = self._link
        if (
            send is not None
            and not self._pending
            and self._closed is None
            and link is not None
            and link.reason is None  # not ending: what is queued now goes to the next one
        ):
            try:
                sent = send(frame)
            except OSError:  # BlockingIOError (the socket is full), or a broken connection
                sent = 0
            if sent == len(frame):
                return
            if sent:
                self._queue_control(frame[sent:])
                return
        self._append_pub(frame)

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
        sub._deliver(make_message(subject, payload, wrapped, reply_to, self, retained))

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
                # Its reader raises it, but nobody may read it yet: a flush and on_error hear
                # of it as of a refused publish.
                sub._fail(error)
                self._refused(link, error)
                self._report(error)
                return
        if "subject" in error.details:
            self._refused(link, error)
        self._report(error)

    def _refused(self, link: _Link, error: BrokerError) -> None:
        """A refused publish or subscription, for `flush` to raise (``raise_refused``).

        The flushes awaiting a PONG get it (their PING was sent after what was refused). With
        none waiting, the next flush does: so a refusal that comes back before the caller's
        flush has even sent its PING (as a `broker.sync` caller's may) is not missed. Only
        the first such refusal is kept, since a flush raises only the first.
        """
        flushes = [w for w in link.pongs if w is not None and w is not link.announce]
        for pending in flushes:
            pending.refused.append(error)
        if not flushes and self._unclaimed_refusal is None:
            self._unclaimed_refusal = error

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

    def _queue_hook(self, hook: Callable[..., object] | None, *args: Any) -> None:
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
        task_group.start_soon(self._supervisor.supervise, link)
        task_group.start_soon(self._run_hooks)
        task_group.start_soon(self._timer.run)

    async def _wait_for_link(self) -> _Link:
        while True:
            if self._closed is not None:
                raise _again(self._closed)
            link = self._link
            if link is not None and link.reason is None:
                return link
            await self._changed_signal.wait()

    def _install(self, link: _Link, *, reconnected: bool) -> None:
        """Make `link` the live connection, queueing resubscriptions ahead of buffered PUBs."""
        info = link.info
        self._info = info
        self._limits = ServerLimits.from_welcome(info, f"the server at {self._url}")
        max_frame = info_int(info, "max_frame", link.conn.max_frame)
        # A MSG may be MSG_GROWTH bytes longer than the largest PUB it delivers.
        link.conn.max_frame = max_frame + MSG_GROWTH
        self._encoder.max_frame = max_frame
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


def _url_of(host: str, port: int, scheme: str = "tcp") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


@document_options
def connect(
    url: str | Sequence[str] | None = None, **options: Unpack[ConnectOptions]
) -> AbstractAsyncContextManager[Client]:
    """Connect to a broker; use as ``async with broker.connect(url) as client:``.

    Entering connects and completes the handshake (or raises); the client then runs its
    reader, writer and reconnection in the background until the block ends. Runs under Trio and
    asyncio alike. Errors from the block and from the client come out as themselves, never
    wrapped in a one-error `ExceptionGroup`.

    Args:
        url: ``tcp://host:port``, ``host:port`` or ``[::1]:port``. None, the default, takes
            ``$BROKER_URL`` as the command line does, else `DEFAULT_URL`
            (``tcp://127.0.0.1:5878``). Several nodes of a cluster, as a list or one string
            with commas: the client connects to the first that answers, and when that
            connection breaks it fails over to the next (then resubscribes, as always).
        **options: Any of `ConnectOptions` (listed below): reconnection, buffers, keepalive,
            hooks.

    Raises:
        ValueError: A bad URL or option (at once, before connecting).
        TypeError: An unknown option.
        ConnectionClosed: On entering, if the connection or handshake fails (the message
            names the URL tried); the server's refusal (e.g. ``max_connections``) is in its
            ``code``.
    """
    first, *others = resolve_targets(url)
    checked = first.apply(check_options(options, "connect"))
    also = [(target.host, target.port) for target in others]
    return open_client(first.host, first.port, checked, also=also)


@asynccontextmanager
async def open_client(
    host: str, port: int, options: ClientOptions, *, also: Sequence[tuple[str, int]] = ()
) -> AsyncIterator[Client]:
    """`connect` once the URL and options are checked; `broker.sync` enters it in its thread.

    `also` are further addresses (other nodes of a cluster) to fail over to.
    """
    try:
        client = Client(host, port, options, also=also)
        link = await client._supervisor.open_link(first=True)
        async with anyio.create_task_group() as tasks:
            client._start(tasks, link)
            try:
                yield client
            except BaseException:
                # The block failed: close at once rather than flush into a possibly dead peer.
                client._supervisor.scope.cancel()
                client._hooks_scope.cancel()
                client._timer.scope.cancel()
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
