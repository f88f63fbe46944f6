"""The client for threaded code and scripts: ``broker.sync.connect(url)``, no ``async`` needed.

Example::

    from broker import sync

    with sync.connect("tcp://127.0.0.1:5878") as client:
        with client.subscribe("greetings.*") as sub:
            client.publish("greetings.world", b"hello")
            print(sub.next(timeout=1.0).payload)
        print(client.request("time.now", b"", timeout=2.0).payload)

Rather than a second implementation of the protocol, each `SyncClient` runs one async
`broker.Client` on a Trio loop in a background thread of its own, so reconnection, keepalive,
limits and typed errors behave exactly as they do for async code:

- **Publishes go by queue.** `SyncClient.publish` checks the message in the caller's thread
  (raising `BadSubject`, `PayloadTooLarge`, `TypeError` at once), appends it to a thread-safe
  outbox and returns; a sender task in the client's thread hands each batch to the async client.
  A burst of publishes costs one thread wake-up, so publishing takes microseconds, and callers
  wait only while ``write_buffer_size`` bytes are on their way (backpressure). The few errors
  only the client's thread can see (the reconnect buffer is full while disconnected, the
  connection was lost for good a moment before) go to the log and the ``on_error`` hook.
- **Everything else hops to the client's thread**, through the `broker._portal.Portal` that
  `broker.testing` uses too. ``subscribe`` and ``unsubscribe`` run there as calls; blocking
  calls (``request``, ``flush``, ``drain``) as tasks, bounded by their ``timeout``. Each acts
  after every publish queued before it, so what one thread does happens in the order it was
  called, and errors come out as the same typed exceptions from `broker.errors`, never as an
  `ExceptionGroup`. From a Trio task these calls raise `RuntimeError` saying so (they would
  block its loop): async code uses `broker.connect`, or calls them through
  ``trio.to_thread.run_sync``.
- **Deliveries cross by queue.** A task in the client's thread moves each subscription's
  messages into a thread-safe queue of its own, so `SyncSubscription.next` is a plain,
  timeout-bounded wait on a condition variable. Once the async subscription is empty, the task
  takes its next message only when the consumers are idle (nothing queued, nobody holding a
  message it took by iterating), so the async side's bound (``max_pending``) and drop counting
  apply while the consumers are busy, and `SyncClient.drain` waits until they have finished
  what they took, as `broker.Client.drain` does for ``async for`` loops.
- **Timeouts are parameters** with a default each (`DEFAULT_REQUEST_TIMEOUT`, 2 s, and the
  others), as in the async client, but threads have no cancel scopes, so None here means wait
  forever (where the async client takes None as "the caller's cancel scope, else the default").
  Running out raises the builtin `TimeoutError`, as in the async client.
- **Hooks** (``on_disconnected`` and the rest, as for `broker.connect`) are plain callables run
  one at a time, in order, in a worker thread, so they may call this client's methods.

Lifetime: `close` (or leaving the ``with`` block) writes what is queued, stops the thread and
joins it; it is idempotent. The thread is a daemon thread, so a client that is never closed
cannot keep the interpreter from exiting, and an `atexit` hook closes such clients gracefully, so
a script that forgets `close` still sends what it published. No ``__del__`` is involved: the
thread keeps the client alive until it is closed.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import MappingProxyType, TracebackType
from typing import Any, Final, TypeAlias, TypeVar, Unpack, cast, final

import anyio
import msgpack
import trio

from ._checks import check_timeout
from ._concurrency import single_leaf
from ._portal import Portal, PortalClosed
from .client import (
    CLOSE_TIMEOUT,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_FLUSH_TIMEOUT,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_NEXT_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT,
    Client,
    Message,
    Subscription,
)
from .client.client import open_client
from .client.limits import Payload, ServerLimits, check_headers
from .client.options import ConnectOptions, check_options, document_options, resolve_targets
from .errors import (
    BrokerError,
    ConnectionClosed,
    PayloadTooLarge,
    SubscriptionClosed,
    _again,
)
from .protocol import Encoder, LocalProtocolError, Role, frame_too_large

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_FLUSH_TIMEOUT",
    "DEFAULT_NEXT_TIMEOUT",
    "DEFAULT_REQUEST_TIMEOUT",
    "SyncClient",
    "SyncMessage",
    "SyncSubscription",
    "connect",
]

log = logging.getLogger("broker.sync")

#: The length prefix before each frame, which ``max_frame`` does not count.
_FRAME_HEADER: Final = 4
#: Seconds between looks for new messages while a consumer holds one and nothing is queued.
_HOLD_POLL: Final = 0.005
#: Seconds `SyncClient.close` waits for the client's thread beyond the graceful close itself.
_JOIN_MARGIN: Final = 3.0

T = TypeVar("T")


@final
class SyncMessage:
    """One message delivered to a `SyncSubscription`, or the reply to `SyncClient.request`.

    The same fields as `broker.Message`, with a blocking `respond`: the async message's
    ``respond`` returns a coroutine, which sync code would silently never run. Immutable, and
    compared by identity, as `broker.Message`.

    Attributes:
        subject: The subject it was published to (not the pattern that matched it).
        payload: The bytes published.
        headers: The publisher's headers; empty when there were none.
        reply_to: Where the publisher wants an answer (set for requests), else None.
        retained: True for a retained message replayed to a new subscription, else False.
    """

    # Slotted and filled through its slot descriptors, as `broker.Message` (one per delivery).
    __slots__ = ("_client", "headers", "payload", "reply_to", "retained", "subject")
    __match_args__ = ("subject", "payload", "headers", "reply_to", "_client", "retained")

    subject: str
    payload: bytes
    headers: Mapping[str, str]
    reply_to: str | None
    _client: SyncClient
    retained: bool

    def __init__(
        self,
        subject: str,
        payload: bytes,
        headers: Mapping[str, str],
        reply_to: str | None,
        _client: SyncClient,
        retained: bool = False,
    ) -> None:
        _fill(self, subject, payload, headers, reply_to, _client, retained)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a SyncMessage is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a SyncMessage is immutable: cannot delete {name!r}")

    def __repr__(self) -> str:
        return (
            f"SyncMessage(subject={self.subject!r}, payload={self.payload!r}, "
            f"headers={self.headers!r}, reply_to={self.reply_to!r}, retained={self.retained!r})"
        )

    def respond(self, payload: Payload, headers: Mapping[str, str] | None = None) -> None:
        """Publish `payload` to this message's ``reply_to``: the answer to a request.

        Raises:
            ValueError: The message has no ``reply_to``; nobody asked for an answer.
            ConnectionClosed, PayloadTooLarge: As `SyncClient.publish`.
        """
        if self.reply_to is None:
            raise ValueError(
                f"message on {self.subject!r} has no reply_to, so there is nobody to respond to"
            )
        self._client._respond(self.reply_to, payload, headers)


_set_subject = vars(SyncMessage)["subject"].__set__
_set_payload = vars(SyncMessage)["payload"].__set__
_set_headers = vars(SyncMessage)["headers"].__set__
_set_reply_to = vars(SyncMessage)["reply_to"].__set__
_set_client = vars(SyncMessage)["_client"].__set__
_set_retained = vars(SyncMessage)["retained"].__set__
_new_message = object.__new__


def _fill(
    message: SyncMessage,
    subject: str,
    payload: bytes,
    headers: Mapping[str, str],
    reply_to: str | None,
    client: SyncClient,
    retained: bool,
) -> None:
    _set_subject(message, subject)
    _set_payload(message, payload)
    _set_headers(message, headers)
    _set_reply_to(message, reply_to)
    _set_client(message, client)
    _set_retained(message, retained)


def _wrap(message: Message, client: SyncClient) -> SyncMessage:
    wrapped: SyncMessage = _new_message(SyncMessage)
    _fill(
        wrapped,
        message.subject,
        message.payload,
        message.headers,
        message.reply_to,
        client,
        message.retained,
    )
    return wrapped


@final
class SyncSubscription:
    """Messages matching one pattern, queued for consuming threads; made by `SyncClient.subscribe`.

    Take messages with `next` (bounded by a timeout) or iterate with ``for``. Several threads
    may consume one subscription; each message goes to one of them. Using it as a context
    manager unsubscribes on exit.

    Bounds: while the consumer is busy, up to ``max_pending`` messages (and
    ``max_pending_bytes`` of payload) wait in the client; past that the newest are dropped and
    counted in `dropped`, because waiting would stall every other subscription. Messages
    already moved to this queue (at most one such batch, taken when the consumer came back for
    more) are counted in `pending` but not against the bound.

    The iterator ends, and `next` raises `SubscriptionClosed`, after `unsubscribe`, after
    ``max_msgs`` deliveries, or once the client is closed or drained, when the queued messages
    are taken. They raise instead when the subscription failed: the server refused it
    (`BadSubject`, `TooManySubscriptions`) or the connection is gone for good
    (`ConnectionClosed`, with reconnection off or given up).
    """

    __slots__ = (
        "_client",
        "_cond",
        "_error",
        "_finished",
        "_holders",
        "_idle_event",
        "_messages",
        "_sub",
        "max_pending",
        "max_pending_bytes",
        "queue",
        "sid",
        "subject",
    )

    def __init__(self, client: SyncClient, sub: Subscription) -> None:
        self._client = client
        #: The async subscription; touched only in the client's thread.
        self._sub = sub
        #: The subscription id on the wire.
        self.sid = sub.sid
        #: The pattern subscribed to.
        self.subject = sub.subject
        #: The queue group, or None.
        self.queue = sub.queue
        self.max_pending = sub.max_pending
        self.max_pending_bytes = sub.max_pending_bytes
        # Everything below is guarded by the condition's lock.
        self._cond = threading.Condition()
        self._messages: deque[SyncMessage] = deque()
        #: Threads that took a message by iterating and have not come back for the next one:
        #: drain waits for them, so a responder can answer the last request it took.
        self._holders: set[int] = set()
        #: Set once no more messages will be added; `_error` says whether it failed.
        self._finished = False
        self._error: BrokerError | None = None
        #: Set by the pump when it waits for the consumers to be idle before taking more.
        self._idle_event: trio.Event | None = None

    def __repr__(self) -> str:
        queue = "" if self.queue is None else f" queue={self.queue!r}"
        return f"<SyncSubscription {self.sid} {self.subject!r}{queue}>"

    # -- state ---------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Messages queued for the consumers and not yet taken."""
        # Counted in the client's thread, where the pump moves messages from one queue to the
        # other, so none is counted twice or missed.
        return self._client._peek(self._count_pending)

    def _count_pending(self) -> int:
        with self._cond:
            return len(self._messages) + self._sub.pending

    @property
    def dropped(self) -> int:
        """Messages lost because the consumers fell behind (see `broker.Subscription.dropped`)."""
        return self._client._peek(lambda: self._sub.dropped)

    @property
    def received(self) -> int:
        """Messages the server delivered to this subscription, including dropped ones."""
        return self._client._peek(lambda: self._sub.received)

    @property
    def active(self) -> bool:
        """Whether messages may still arrive (not unsubscribed, ended or failed)."""
        with self._cond:
            if self._finished:
                return False
        return self._client._peek(lambda: self._sub.active)

    # -- consuming -----------------------------------------------------------------------------

    def next(self, timeout: float | None = DEFAULT_NEXT_TIMEOUT) -> SyncMessage:
        """Wait up to `timeout` seconds for the next message and return it.

        Args:
            timeout: Seconds to wait; 0 only takes what is already queued, None waits forever.

        Raises:
            TimeoutError: Nothing arrived in time.
            SubscriptionClosed: The subscription ended normally and nothing is left queued.
            BrokerError: The subscription failed (see the class docstring); queued messages are
                still handed out first.
        """
        check_timeout(timeout)
        return self._take(timeout, hold=False)

    def __iter__(self) -> Iterator[SyncMessage]:
        return self

    def __next__(self) -> SyncMessage:
        try:
            return self._take(None, hold=True)
        except SubscriptionClosed:
            raise StopIteration from None

    def _take(self, timeout: float | None, *, hold: bool) -> SyncMessage:
        me = threading.get_ident()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            # Coming back for more means the message taken before is finished with.
            self._holders.discard(me)
            messages = self._messages
            if not messages:
                self._wake_pump()
            while not messages:
                if self._finished:
                    if self._error is not None:
                        raise _again(self._error)
                    raise SubscriptionClosed(
                        f"subscription {self.sid} to {self.subject!r} has ended"
                    )
                if deadline is None:
                    self._cond.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"no message on {self.subject!r} within {timeout} s "
                        f"(subscription {self.sid})"
                    )
                self._cond.wait(remaining)
            message = messages.popleft()
            if hold:
                self._holders.add(me)
            if not messages:
                self._wake_pump()
            return message

    def _wake_pump(self) -> None:
        """With the lock held and the queue empty: the pump may take more (or stop holding)."""
        event = self._idle_event
        if event is not None:
            self._idle_event = None
            self._client._soon(event.set)

    # -- stopping ------------------------------------------------------------------------------

    def unsubscribe(self, max_msgs: int | None = None) -> None:
        """Stop this subscription, now or after ``max_msgs`` deliveries in total.

        With no argument delivery stops at once and queued messages are discarded; with
        ``max_msgs`` it ends after that many messages in all (see
        `broker.Subscription.unsubscribe`). Does nothing on an ended subscription or a closed
        client.

        Raises:
            ValueError: ``max_msgs`` is not a non-negative int.
        """
        if max_msgs is not None and (type(max_msgs) is not int or max_msgs < 0):
            raise ValueError(f"max_msgs must be a non-negative int or None, got {max_msgs!r}")
        try:
            self._client._run_ordered(functools.partial(self._unsubscribe, max_msgs))
        except ConnectionClosed:
            # The client is closed: nothing more arrives anyway.
            if max_msgs is None:
                self._finish(None, discard=True)

    def _unsubscribe(self, max_msgs: int | None) -> None:
        # In the client's thread, so no message slips between the two steps.
        self._sub.unsubscribe(max_msgs)
        if max_msgs is None:
            self._finish(None, discard=True)

    def __enter__(self) -> SyncSubscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.unsubscribe()

    # -- called in the client's thread ---------------------------------------------------------

    def _put(self, batch: list[SyncMessage]) -> None:
        with self._cond:
            self._messages.extend(batch)
            self._cond.notify(len(batch))

    def _busy(self) -> tuple[trio.Event, bool] | None:
        """None once the consumers are idle; else an event set when the queue is next empty,
        and whether messages are queued (False: only held)."""
        with self._cond:
            if not self._messages and not self._holders:
                return None
            self._idle_event = event = trio.Event()
            return event, bool(self._messages)

    def _finish(self, error: BrokerError | None, *, discard: bool = False) -> None:
        with self._cond:
            if discard:
                self._messages.clear()
                self._holders.clear()
            if not self._finished:
                self._finished = True
                self._error = error
            event = self._idle_event
            self._idle_event = None
            self._cond.notify_all()
        if event is not None:
            self._client._soon(event.set)


#: A publish its caller could not encode (the frame exceeds ``max_frame``): its subject,
#: payload, reply subject, headers and retain flag, for the client's thread to publish as
#: `broker.Client.publish` would and to report its failure.
_Fields: TypeAlias = tuple[str, bytes, str | None, dict[str, str] | None, bool]
#: What the client's thread takes from the outbox: chunks of joined frames, and the fields of
#: publishes that could not be encoded, in call order.
_Item: TypeAlias = bytearray | _Fields
#: Bytes of joined frames after which a caller starts a new chunk. Growing a bytearray may copy
#: it, under the outbox's lock, so a chunk stays small enough for that to take microseconds.
_CHUNK_BYTES: Final = 64 * 1024


@final
class _Outbox:
    """Publishes on their way from callers' threads to the client's thread, in call order.

    A caller joins its frame onto the current chunk and returns; the first put after the sender
    took a batch schedules one wake-up of the client's thread, so a burst of publishes costs one
    thread hop, not one each. The client's thread takes bytes, not the callers' objects: it no
    longer unpacks, joins and frees a tuple and a frame per publish, memory that the caller's
    thread wrote, often on another core. Callers wait only while more than ``limit`` bytes are
    queued or being sent (the sync twin of the async client's write buffer backpressure),
    counted as the async client counts them, by the frames' length: a publish with an empty
    payload costs its subject's bytes all the same.
    """

    __slots__ = (
        "_bytes",
        "_chunk",
        "_cond",
        "_error",
        "_items",
        "_limit",
        "_lock",
        "_longest",
        "_scheduled",
    )

    def __init__(self, limit: int) -> None:
        # The lock under the condition, taken directly on the publish path: entering a
        # Condition is a Python-level call, the lock's own __enter__ is not.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._items: deque[_Item] = deque()
        #: The chunk frames are joined onto, the last of `_items`; None: start a new one.
        self._chunk: bytearray | None = None
        #: The longest frame queued since the last take, checked against ``max_frame`` then.
        self._longest = 0
        #: Bytes queued here or taken by the sender and not yet handed to the client: frames',
        #: or the payloads' of publishes that could not be encoded.
        self._bytes = 0
        self._limit = limit
        self._scheduled = False
        #: Once set, publishes are refused with (a copy of) it.
        self._error: ConnectionClosed | None = None

    def put(self, item: bytes | _Fields, size: int, wake: Callable[[], None]) -> None:
        """Queue an encoded frame, or the fields of a publish its caller could not encode,
        costing `size` bytes, in a caller's thread; call `wake` if the sender needs waking.

        The lock is held for a few bytecodes, and `wake` (a system call) runs after it is let
        go: a thread that loses the GIL while holding it stalls every other one that wants it
        until it gets the GIL back, a switch interval later.
        """
        with self._lock:
            while self._bytes > self._limit and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise _again(self._error)
            if type(item) is bytes:
                chunk = self._chunk
                if chunk is None or len(chunk) >= _CHUNK_BYTES:
                    chunk = self._chunk = bytearray()
                    self._items.append(chunk)
                chunk += item
                length = len(item)
                if length > self._longest:
                    self._longest = length
            else:
                self._items.append(cast(_Fields, item))
                self._chunk = None  # later frames go after it
            self._bytes += size
            if self._scheduled:
                return
            self._scheduled = True
        wake()

    def take(self) -> tuple[deque[_Item], int, int]:
        """Everything queued, in order, with the bytes it costs and its longest frame; in the
        client's thread, which calls `sent` before it takes again. The queue is swapped, not
        copied, so the lock is held for as long whatever the batch's size."""
        with self._lock:
            batch = self._items
            self._items = deque()
            self._chunk = None
            longest = self._longest
            self._longest = 0
            self._scheduled = False
            return batch, self._bytes, longest

    def sent(self, size: int) -> None:
        """`size` bytes taken earlier are now the client's: let waiting callers in."""
        with self._lock:
            self._bytes -= size
            self._cond.notify_all()

    @property
    def empty(self) -> bool:
        return not self._items  # one read of a reference: no lock needed

    def close(self, error: ConnectionClosed) -> None:
        """Refuse publishes from now on (the first reason wins) and release waiting callers."""
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()


def _frame_end(chunk: memoryview, start: int) -> int:
    """Where the frame that begins at `start` of `chunk` ends (frames carry their length)."""
    return start + _FRAME_HEADER + int.from_bytes(chunk[start : start + _FRAME_HEADER], "big")


def _cut(chunk: memoryview, start: int, room: int) -> int:
    """The end of the last whole frame within `room` bytes of `start`; at least one frame's."""
    stop = _frame_end(chunk, start)
    while stop < len(chunk):
        following = _frame_end(chunk, stop)
        if following - start > room:
            break
        stop = following
    return stop


def _subject_of(frame: memoryview) -> str:
    """The subject of an encoded PUB frame, for a report of its loss."""
    fields = msgpack.unpackb(frame[_FRAME_HEADER:])
    return str(fields[1])


class _Busy:
    """Returned by an ordered call that found publishes still on their way (see `_run_ordered`)."""


_BUSY: Final = _Busy()


class _Abort(Exception):
    """Raised inside the client's ``async with`` block to close at once, without flushing."""


#: Clients not closed yet; closed at interpreter exit so their queued publishes are sent.
_live: set[SyncClient] = set()
_live_lock = threading.Lock()


@atexit.register
def _close_forgotten() -> None:
    with _live_lock:
        forgotten = list(_live)
    for client in forgotten:
        try:
            client.close()
        except Exception:
            log.exception("closing %r at exit failed", client)


@final
class SyncClient:
    """A connection to one broker for threaded code; made by `connect`.

    Every method may be called from any thread at the same time, except from this client's own
    thread (no user code runs there: hooks run in worker threads). Methods raise
    `ConnectionClosed` once the client is closed, or its connection broke and reconnection is
    off or gave up; while a reconnection is under way they keep working as the async client's
    do (publishes are buffered, requests and flushes wait).
    """

    def __init__(
        self,
        *,
        write_buffer_size: int,
        on_error: Callable[[BrokerError], Awaitable[None]] | None,
    ) -> None:
        #: Set by `connect`, which builds it around hooks that share state with this client.
        self._connector: AbstractAsyncContextManager[Client] | None = None
        self._on_error = on_error
        self._thread = threading.Thread(
            target=self._thread_main, name="broker-sync-client", daemon=True
        )
        self._started = threading.Event()
        self._startup_error: BaseException | None = None
        # Set in the client's thread before _started, read-only afterwards.
        self._portal: Portal | None = None
        self._client: Client | None = None
        self._pumps: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._lock = threading.Lock()
        #: close or drain was called: subscriptions end rather than fail.
        self._closing = False
        self._abort = False
        self._url = ""
        self._outbox = _Outbox(write_buffer_size)
        #: The async client's, taken in the client's thread and read in callers' threads; it is
        #: immutable and replaced whole, so they read a consistent set without a lock.
        self._limits = ServerLimits()
        #: Encodes PUB frames in callers' threads (a publish's cost stays with its caller);
        #: its ``max_frame`` follows the async client's, set with `_limits`.
        self._encoder = Encoder(Role.CLIENT)
        # The sender's state; only the client's thread touches these.
        self._send_wanted: trio.Event | None = None
        self._batch_sent = trio.Event()
        self._sending = False

    def __repr__(self) -> str:
        if not self._thread.is_alive():
            state = "closed"
        elif self._closing:
            state = "closing"
        else:
            state = "open"
        return f"<SyncClient {self._url} {state}>"

    # -- state ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The broker's address, as ``tcp://host:port``."""
        return self._url

    @property
    def server_info(self) -> Mapping[str, Any]:
        """The WELCOME info of the current (or last) connection: limits, ids, ping interval."""
        return self._peek(self._copy_info)

    @property
    def is_connected(self) -> bool:
        """Whether a connection is up now (False while reconnecting and once closed)."""
        return self._peek(lambda: self._async.is_connected)

    @property
    def is_closed(self) -> bool:
        """Whether the client is closed for good: by us, or reconnection is off or gave up."""
        return self._peek(lambda: self._async.is_closed)

    # -- publishing and requests ---------------------------------------------------------------

    def publish(
        self,
        subject: str,
        payload: Payload,
        *,
        reply_to: str | None = None,
        headers: Mapping[str, str] | None = None,
        retain: bool = False,
    ) -> None:
        """Queue one message for the client's thread; waits only while the buffer is full.

        The checks a caller can act on run here, in the caller's thread, and raise at once; the
        message then goes out through a queue, so publishing costs no thread hop of its own.
        Messages are sent in the order they were published (across all threads), and
        `flush`, `request`, `subscribe` and the rest act after every publish made before them.

        A message that fails only in the client's thread is not raised to its publisher but
        logged and passed to the ``on_error`` hook: the reconnect buffer was full while
        disconnected (`ReconnectBufferFull`), the frame with its headers exceeds ``max_frame``,
        or the connection was lost for good just before it went out (later publishes then raise
        `ConnectionClosed`).

        ``retain`` keeps the message as its subject's retained message, as in
        `broker.Client.publish` (an empty payload deletes it).

        Raises:
            BadSubject: ``subject`` or ``reply_to`` is not a valid concrete subject.
            PayloadTooLarge: ``payload`` exceeds the server's ``max_payload``.
            TypeError: ``payload`` is not bytes-like, or a header is not str to str.
            RetainedLimitExceeded: ``retain`` is set and the server retains nothing.
            ConnectionClosed: The client is closed, or its connection is gone for good.
        """
        self._put(subject, payload, reply_to, headers, bool(retain), False)

    def _respond(self, subject: str, payload: Payload, headers: Mapping[str, str] | None) -> None:
        """`publish` for `SyncMessage.respond`: a reply's inbox subject is used once, so its
        encoding is not kept (`Encoder.pub`'s ``once``)."""
        self._put(subject, payload, None, headers, False, True)

    def _put(
        self,
        subject: str,
        payload: Payload,
        reply_to: str | None,
        headers: Mapping[str, str] | None,
        retain: bool,
        once: bool,
    ) -> None:
        """`broker.Client.publish`'s checks and encoding, in the caller's thread, with the same
        errors; then the frame goes to the outbox.

        The checks copy what the caller could change after publish returns (a bytearray, the
        headers mapping).
        """
        data = self._limits.check_publish(subject, payload, reply_to, retain)
        copied = None if headers is None else check_headers(headers)
        try:
            frame = self._encoder.pub(subject, data, reply_to, copied, retain, once=once)
        except LocalProtocolError:
            # Over max_frame: the client's thread reports it (see `publish`).
            self._outbox.put(
                (subject, data, reply_to, copied, retain), len(data), self._wake_sender
            )
            return
        self._outbox.put(frame, len(frame), self._wake_sender)

    def request(
        self,
        subject: str,
        payload: Payload,
        *,
        timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        headers: Mapping[str, str] | None = None,
    ) -> SyncMessage:
        """Publish a request and wait up to `timeout` seconds for the first reply.

        Returns:
            The reply; ``reply.payload`` is the answer.

        Raises:
            NoResponders: Nothing subscribes to ``subject``; raised as soon as the server says so.
            TimeoutError: No reply within `timeout` (None waits forever).
            ConnectionClosed: The connection broke after the request was sent, or the client is
                closed or draining.
            BadSubject, PayloadTooLarge, TypeError, ReconnectBufferFull: As `publish`.
        """
        check_timeout(timeout)
        client = self._async

        async def request() -> Message:
            with trio.move_on_after(math.inf if timeout is None else timeout):
                await self._outbox_sent()
                # This scope is the limit: math.inf, so None here still waits forever.
                return await client.request(subject, payload, timeout=math.inf, headers=headers)
            raise TimeoutError(f"no reply to a request on {subject!r} within {timeout} s")

        return _wrap(self._run_async(request), self)

    def flush(
        self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT, *, raise_refused: bool = False
    ) -> None:
        """Round trip a PING: when it returns, the server has processed everything sent before.

        Messages routed to this client before that point are queued in its subscriptions
        (counted in `SyncSubscription.pending`). While reconnecting, waits for the connection.
        ``raise_refused`` raises a publish or subscription the server refused meanwhile, as
        `broker.Client.flush`.

        Raises:
            TimeoutError: No PONG within `timeout` seconds (None waits forever).
            RetainedLimitExceeded, BadSubject, TooManySubscriptions: With ``raise_refused``, as
                `broker.Client.flush`.
            ConnectionClosed: The connection broke before the PONG, or the client is closed.
        """
        check_timeout(timeout)
        client = self._async

        async def flush() -> None:
            with trio.move_on_after(math.inf if timeout is None else timeout):
                await self._outbox_sent()
                await client.flush(math.inf, raise_refused=raise_refused)
                return
            raise TimeoutError(f"no PONG from {client.url} within {timeout} s")

        self._run_async(flush)

    # -- subscribing ---------------------------------------------------------------------------

    def subscribe(
        self,
        pattern: str,
        *,
        queue: str | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    ) -> SyncSubscription:
        """Subscribe to a pattern; messages start queueing at once.

        Use the result with ``with`` to unsubscribe on exit. To be sure the server has the
        subscription before another client publishes, call `flush`.

        Args:
            pattern: ``*`` matches one token, a final ``>`` one or more.
            queue: A queue group name: each message goes to one member of the group.
            max_pending: Messages queued while the consumer is busy before the newest are
                dropped.
            max_pending_bytes: Payload bytes queued before the newest are dropped.

        Raises:
            BadSubject: The pattern or queue name is invalid.
            ValueError: A bound is not a positive int.
            ConnectionClosed: The client is closed or draining.
        """
        return self._run_ordered(
            functools.partial(self._subscribe, pattern, queue, max_pending, max_pending_bytes)
        )

    def _subscribe(
        self, pattern: str, queue: str | None, max_pending: int, max_pending_bytes: int
    ) -> SyncSubscription:
        pumps = self._pumps
        if self._closing or pumps is None:
            raise ConnectionClosed("the client is closing: no new subscriptions")
        sub = self._async.subscribe(
            pattern, queue=queue, max_pending=max_pending, max_pending_bytes=max_pending_bytes
        )
        sync_sub = SyncSubscription(self, sub)
        pumps.start_soon(self._pump, sync_sub, name=f"pump {sub.sid} {pattern!r}")
        return sync_sub

    async def _pump(self, sync_sub: SyncSubscription) -> None:
        """Move one subscription's messages to its thread-safe queue, in the client's thread.

        Taking a message from the async subscription marks it "held" until the next take, and
        the async drain waits while anything is held or queued. So once the async queue is
        empty, the pump takes the next message only when the consumers are idle (nothing
        queued, nobody holding one): until then the async side counts as busy, as they are, and
        drain waits for them. Messages arriving meanwhile wait in the async queue (its bound
        and drop counting apply): the pump moves them when the queue here runs empty, or, while
        a consumer only holds one, on its next look (every `_HOLD_POLL` seconds), so a thread
        that holds a message does not stall the others.
        """
        sub = sync_sub._sub
        error: BrokerError | None = None
        try:
            while True:
                try:
                    message = await anext(sub)
                except StopAsyncIteration:
                    break
                # Everything else already queued goes across with it, in one hand-over.
                batch = [_wrap(message, self)]
                batch += [_wrap(queued, self) for queued in sub._take_queued()]
                sync_sub._put(batch)
                while sub.pending == 0 and (busy := sync_sub._busy()) is not None:
                    event, queued = busy
                    with trio.move_on_after(math.inf if queued else _HOLD_POLL):
                        await event.wait()
                # What a consumer published while it held a message (its answer to a request)
                # reaches the async client before the hold is released, so a drain closing on
                # the release still sends it.
                await self._outbox_sent()
        except BrokerError as failure:
            # Our own close or drain ends subscriptions; anything else is worth raising.
            if not self._closing:
                error = failure
        finally:
            sync_sub._finish(error)

    # -- closing -------------------------------------------------------------------------------

    def drain(self, timeout: float | None = DEFAULT_DRAIN_TIMEOUT) -> None:
        """Stop every subscription, let consumers finish what they took, flush, then close.

        As `broker.Client.drain`: new subscriptions and requests are refused from the start,
        publishing still works (so responders can answer), and the client closes once every
        queue is empty and every thread iterating a subscription has come back for more (or
        left its ``with`` block). A thread that takes messages with `next` holds nothing, so
        responders should iterate. Then the thread is joined, as in `close`.

        Raises:
            TimeoutError: Consumers did not finish within `timeout` seconds (None waits
                forever); the client is closed anyway.
        """
        check_timeout(timeout)
        with self._lock:
            if self._closing:
                already = True
            else:
                already = False
                self._closing = True
        if already:
            self.close()
            return
        client = self._async

        async def drain() -> None:
            with trio.move_on_after(math.inf if timeout is None else timeout):
                await self._outbox_sent()
                await client.drain(math.inf)
                return
            raise TimeoutError(
                f"drain did not finish within {timeout} s: consumers still hold messages"
            )

        try:
            self._run_async(drain)
        except ConnectionClosed:
            pass  # Closed meanwhile: there is nothing left to drain.
        finally:
            self.close()

    def close(self) -> None:
        """Close the client: write what is queued, stop its thread and join it.

        Idempotent, and safe to call from any thread, also concurrently. Subscriptions end (their
        iterators stop); requests still waiting raise `ConnectionClosed`. To know the server
        processed everything, `flush` (or `drain`) first.

        Raises:
            RuntimeError: Called from the client's own thread.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("a SyncClient cannot be closed from its own thread")
        with self._lock:
            self._closing = True
        self._outbox.close(ConnectionClosed("the client was closed"))
        self._stop_soon()
        self._thread.join(CLOSE_TIMEOUT + _JOIN_MARGIN)
        if self._thread.is_alive():
            log.warning("the thread of %r did not stop in time; abandoning it", self)
        with _live_lock:
            _live.discard(self)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None:
            # The block failed: close at once rather than flush into a possibly dead peer.
            self._abort = True
        self.close()

    # -- the client's thread -------------------------------------------------------------------

    def _start(self) -> None:
        with _live_lock:
            _live.add(self)
        self._thread.start()
        self._started.wait()
        error = self._startup_error
        if error is not None:
            self._thread.join()
            with _live_lock:
                _live.discard(self)
            raise error

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as error:
            if self._started.is_set():
                log.exception("the thread of %r failed", self)
            else:
                self._startup_error = error
        finally:
            self._started.set()

    async def _main(self) -> None:
        # Callers' calls run as tasks of `calls`, beside the client, until the client is closed.
        try:
            async with trio.open_nursery() as calls:
                self._portal = Portal(calls, "the client was closed")
                await self._serve()
                calls.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            single = single_leaf(group)
            if single is None:
                raise
        else:
            return
        # Raised outside the except block, so the group does not become its __context__.
        raise single

    async def _serve(self) -> None:
        assert self._connector is not None
        self._stop = trio.Event()
        self._send_wanted = trio.Event()
        try:
            async with self._connector as client:
                self._client = client
                self._url = client.url
                self._limits = client._limits
                self._encoder.max_frame = client._encoder.max_frame
                async with trio.open_nursery() as tasks:
                    self._pumps = tasks
                    tasks.start_soon(self._send_loop, client)
                    self._started.set()
                    await self._stop.wait()
                    if not self._abort:
                        # What callers published before close goes out with the close.
                        with trio.move_on_after(CLOSE_TIMEOUT):
                            await self._outbox_sent()
                    tasks.cancel_scope.cancel()
                if self._abort:
                    raise _Abort
        except _Abort:
            pass
        finally:
            self._outbox.close(ConnectionClosed("the client was closed"))

    def _wake_sender(self) -> None:
        """In a caller's thread: publishes are waiting for the sender."""
        self._soon(self._want_send)

    def _want_send(self) -> None:
        assert self._send_wanted is not None
        self._send_wanted.set()

    async def _send_loop(self, client: Client) -> None:
        """Hand each batch of publishes to the async client, in order; in the client's thread."""
        outbox = self._outbox
        while True:
            assert self._send_wanted is not None
            await self._send_wanted.wait()
            self._send_wanted = trio.Event()
            self._sending = True
            batch, size, longest = outbox.take()
            # A reconnection may have brought other limits; callers check against these.
            self._limits = client._limits
            max_frame = client._encoder.max_frame
            self._encoder.max_frame = max_frame
            fits = longest - _FRAME_HEADER <= max_frame
            for item in batch:
                if type(item) is not bytearray:
                    await self._hand_over(client, cast(_Fields, item))
                elif fits:
                    await self._hand_over_chunk(client, item)
                else:
                    await self._hand_over_frames(client, memoryview(item))
            outbox.sent(size)
            self._sending = False
            self._batch_sent.set()
            self._batch_sent = trio.Event()

    async def _hand_over_chunk(self, client: Client, chunk: bytearray) -> None:
        """Give the async client frames its callers encoded and joined, as `publish` would
        one by one: each waits while more than ``write_buffer_size`` bytes are queued. Those
        that fit go in one append, so a batch costs the client's thread a few calls, not a few
        per publish."""
        view = memoryview(chunk)
        limit = client._options.write_buffer_size
        start = 0
        while start < len(view):
            if client._must_wait():
                await client._make_room()
            if client._link is None or client._closed is not None:
                # Disconnected meanwhile: the reconnect buffer's bound is per message.
                await self._hand_over_frames(client, view, start)
                return
            room = limit - client._pending_bytes
            stop = len(view) if len(view) - start <= room else _cut(view, start, room)
            client._append_pub(bytes(view[start:stop]))
            start = stop

    async def _hand_over_frames(self, client: Client, chunk: memoryview, start: int = 0) -> None:
        """Give the async client a chunk's frames from `start` one by one, as `publish` would,
        and report each that fails: past the reconnect buffer while disconnected, or past a
        ``max_frame`` that a reconnection made smaller since its caller encoded it."""
        while start < len(chunk):
            stop = _frame_end(chunk, start)
            frame = chunk[start:stop]
            start = stop
            try:
                length, max_frame = len(frame) - _FRAME_HEADER, client._encoder.max_frame
                if length > max_frame:
                    # What `publish` would raise for it, in the encoder's words.
                    raise PayloadTooLarge(frame_too_large(length, max_frame).message)
                if client._must_wait():
                    await client._make_room()
                client._append_pub(bytes(frame))
            except BrokerError as error:
                self._lost(client, _subject_of(frame), error)

    async def _hand_over(self, client: Client, fields: _Fields) -> None:
        """Publish what a caller could not encode, as `publish` would; report it if it fails."""
        subject, payload, reply_to, headers, retain = fields
        try:
            try:
                client.publish_nowait(
                    subject, payload, reply_to=reply_to, headers=headers, retain=retain
                )
            except anyio.WouldBlock:
                await client.publish(
                    subject, payload, reply_to=reply_to, headers=headers, retain=retain
                )
        except (BrokerError, TypeError) as error:
            self._lost(client, subject, error)

    def _lost(self, client: Client, subject: str, error: BrokerError | TypeError) -> None:
        """A publish failed in the client's thread: nobody waits for it, so report it."""
        log.warning("a publish to %r was not sent: %s", subject, error)
        if isinstance(error, ConnectionClosed) and client.is_closed:
            self._outbox.close(error)
        hook = self._on_error
        if hook is not None and self._pumps is not None:
            report = error if isinstance(error, BrokerError) else BrokerError(str(error))
            self._pumps.start_soon(hook, report)

    def _publishes_pending(self) -> bool:
        return self._sending or not self._outbox.empty

    async def _outbox_sent(self) -> None:
        """Wait until every publish queued so far is the async client's (in its buffer)."""
        while self._publishes_pending():
            await self._batch_sent.wait()

    def _run_ordered(self, fn: Callable[[], T]) -> T:
        """`_run_sync(fn)`, but after every publish queued before it, as callers expect.

        Usually nothing is on its way and this is one hop; otherwise `fn` runs once the sender
        has handed those publishes over.
        """

        def unless_busy() -> T | _Busy:
            return _BUSY if self._publishes_pending() else fn()

        result = self._run_sync(unless_busy)
        if not isinstance(result, _Busy):
            return result

        async def after_publishes() -> T:
            await self._outbox_sent()
            return fn()

        return self._run_async(after_publishes)

    def _stop_soon(self) -> None:
        stop = self._stop
        if stop is not None:
            self._soon(stop.set)

    def _soon(self, fn: Callable[[], object]) -> None:
        """Run `fn` in the client's thread soon, unless that thread has finished."""
        portal = self._portal
        if portal is not None:
            portal.run_soon(fn)

    @property
    def _async(self) -> Client:
        client = self._client
        if client is None:
            raise ConnectionClosed("the client is not connected")
        return client

    def _copy_info(self) -> Mapping[str, Any]:
        return MappingProxyType(dict(self._async.server_info))

    def _check_caller(self) -> Portal:
        portal = self._portal
        if portal is None:
            raise ConnectionClosed("the client is not connected")
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            return portal
        # Blocking here would stall the caller's own loop, whichever loop the client runs on.
        raise RuntimeError(
            "broker.sync blocks, so it cannot be called from a Trio task: use the async client "
            "(broker.connect), or call this through trio.to_thread.run_sync"
        )

    def _run_sync(self, fn: Callable[[], T]) -> T:
        """Call `fn()` in the client's thread and return its result or raise its error."""
        portal = self._check_caller()
        try:
            return portal.run_sync(fn)
        except PortalClosed:
            raise ConnectionClosed("the client was closed") from None

    def _run_async(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await `fn()` in the client's thread and return its result or raise its error."""
        portal = self._check_caller()
        try:
            return portal.run(fn)
        except PortalClosed:
            raise ConnectionClosed("the client was closed") from None

    def _peek(self, fn: Callable[[], T]) -> T:
        """Read state in the client's thread; once that thread is done, nothing changes it, so
        read it here."""
        try:
            return self._run_sync(fn)
        except ConnectionClosed:
            return fn()


def _in_worker_thread(hook: Callable[..., object] | None) -> Callable[..., Awaitable[None]] | None:
    """Run a sync hook in a worker thread, where it may call the client's blocking methods.

    Abandoned when the client closes, so a hook that blocks cannot hold up `SyncClient.close`.
    """
    if hook is None:
        return None

    async def run_hook(*args: object) -> None:
        await trio.to_thread.run_sync(
            functools.partial(hook, *args), abandon_on_cancel=True, thread_name="broker hook"
        )

    return run_hook


@document_options
def connect(
    url: str | Sequence[str] | None = None, **options: Unpack[ConnectOptions]
) -> SyncClient:
    """Connect to a broker from sync code; returns once connected (or raises).

    Use as ``with sync.connect(url) as client:``, or call `SyncClient.close` when done. The
    options are those of `broker.connect`; the hooks are plain callables, run one at a time in
    a worker thread (see the module docstring).

    Args:
        url: ``tcp://host:port``, ``host:port`` or ``[::1]:port``. None, the default, takes
            ``$BROKER_URL`` as the command line does, else ``tcp://127.0.0.1:5878``. Several
            nodes of a cluster as a list or with commas, as `broker.connect` takes them.
        **options: Any of `broker.client.options.ConnectOptions` (listed below).

    Raises:
        ValueError: A bad URL or option (at once, before connecting).
        TypeError: An unknown option.
        ConnectionClosed: The connection or handshake failed; the server's refusal (e.g.
            ``max_connections``) is in its ``code``.
    """
    # Checked here, in the caller's thread; connecting happens in the client's.
    first, *others = resolve_targets(url)
    host, port = first.host, first.port
    also = [(target.host, target.port) for target in others]
    checked = first.apply(check_options(options, "connect"))
    report_error = _in_worker_thread(checked.on_error)
    client = SyncClient(write_buffer_size=checked.write_buffer_size, on_error=report_error)
    client._connector = open_client(
        host,
        port,
        dataclasses.replace(
            checked,
            on_disconnected=_in_worker_thread(checked.on_disconnected),
            on_reconnected=_in_worker_thread(checked.on_reconnected),
            on_shutting_down=_in_worker_thread(checked.on_shutting_down),
            on_error=report_error,
        ),
        also=also,
    )
    client._start()
    return client
