"""What a subscription hands out: `Message`, and `Subscription`, its bounded queue.

A subscription queues at most ``max_pending`` messages (and ``max_pending_bytes``); past that
the newest message is dropped and counted in `Subscription.dropped`, so one slow consumer cannot
eat the application's memory. The client's reader delivers into it (``_deliver``); the consumer
takes from it with ``async for`` or `Subscription.next`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Final, final

from .._checks import check_timeout
from .._concurrency import Signal
from ..errors import BrokerError, SubscriptionClosed, _again
from ..protocol import Encoder, Sub, Unsub
from .deadlines import deadline
from .limits import Payload
from .options import DEFAULT_NEXT_TIMEOUT

if TYPE_CHECKING:
    from .client import Client

__all__ = ["YIELD_EVERY", "Message", "Subscription", "make_message"]

#: A consumer taking queued messages yields to the scheduler once per this many (see
#: `Subscription._checkpoint`); in between it only checks for cancellation.
YIELD_EVERY: Final = 32


@final
class Message:
    """One message delivered to a subscription, or the reply to a request.

    Immutable: setting an attribute raises `AttributeError`. Compared by identity.

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

    # A slotted class filled through its slot descriptors rather than a frozen dataclass: one
    # is built per delivery, and a frozen dataclass's __init__ cost three times as much.
    __slots__ = ("_client", "headers", "payload", "reply_to", "retained", "subject")
    __match_args__ = ("subject", "payload", "headers", "reply_to", "_client", "retained")

    subject: str
    payload: bytes
    headers: Mapping[str, str]
    reply_to: str | None
    _client: Client
    retained: bool

    def __init__(
        self,
        subject: str,
        payload: bytes,
        headers: Mapping[str, str],
        reply_to: str | None,
        _client: Client,
        retained: bool = False,
    ) -> None:
        _fill(self, subject, payload, headers, reply_to, _client, retained)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a Message is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a Message is immutable: cannot delete {name!r}")

    def __repr__(self) -> str:
        return (
            f"Message(subject={self.subject!r}, payload={self.payload!r}, "
            f"headers={self.headers!r}, reply_to={self.reply_to!r}, retained={self.retained!r})"
        )

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
        await self._client._respond(self.reply_to, payload, headers)


_set_subject = vars(Message)["subject"].__set__
_set_payload = vars(Message)["payload"].__set__
_set_headers = vars(Message)["headers"].__set__
_set_reply_to = vars(Message)["reply_to"].__set__
_set_client = vars(Message)["_client"].__set__
_set_retained = vars(Message)["retained"].__set__
_new_message = object.__new__


def _fill(
    message: Message,
    subject: str,
    payload: bytes,
    headers: Mapping[str, str],
    reply_to: str | None,
    client: Client,
    retained: bool,
) -> None:
    _set_subject(message, subject)
    _set_payload(message, payload)
    _set_headers(message, headers)
    _set_reply_to(message, reply_to)
    _set_client(message, client)
    _set_retained(message, retained)


def make_message(
    subject: str,
    payload: bytes,
    headers: Mapping[str, str],
    reply_to: str | None,
    client: Client,
    retained: bool,
) -> Message:
    """`Message(...)` for the reader's hot path, without the call through ``__init__``."""
    message: Message = _new_message(Message)
    _set_subject(message, subject)
    _set_payload(message, payload)
    _set_headers(message, headers)
    _set_reply_to(message, reply_to)
    _set_client(message, client)
    _set_retained(message, retained)
    return message


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
        "_streak",
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
        #: Messages taken since the consumer last yielded to the scheduler (`_checkpoint`).
        self._streak = 0

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

    async def next(self, timeout: float | None = None) -> Message:
        """Wait for and return the next message.

        Args:
            timeout: Seconds to wait (0 only takes what is already queued; ``math.inf``: no
                limit of its own). None, the default, leaves the bound to the caller's cancel
                scope if it has a deadline, else waits `DEFAULT_NEXT_TIMEOUT` (1 s); see
                `broker.client.deadlines`. ``async for`` has no limit: it ends with the
                subscription.

        Raises:
            TimeoutError: No message within ``timeout`` (or the default).
            SubscriptionClosed: The subscription ended normally and nothing is left queued.
            BrokerError: The subscription failed (see the class docstring); queued messages are
                still handed out first.
            ValueError: ``timeout`` is not a number of seconds >= 0 or None.
        """
        if timeout is not None:
            check_timeout(timeout)
        self._holding = False
        if self._messages and self._streak < YIELD_EVERY:
            # `_checkpoint`'s commonest branch, written out: this runs for every message.
            self._streak += 1
            await self._client._cancellation_check()
        else:
            await self._checkpoint()
        message = self._take()
        if message is not None:
            return message
        with deadline(timeout, DEFAULT_NEXT_TIMEOUT, self._nothing_arrived):
            while message is None:
                await self._signal.wait()
                message = self._take()
        return message

    async def _next(self) -> Message:
        """`next` with no limit: for ``async for``, which ends with the subscription."""
        self._holding = False
        if self._messages and self._streak < YIELD_EVERY:
            self._streak += 1  # as in `next`
            await self._client._cancellation_check()
        else:
            await self._checkpoint()
        while (message := self._take()) is None:
            await self._signal.wait()
        return message

    async def _checkpoint(self) -> None:
        """A checkpoint that yields to the scheduler unless a message is already queued.

        A queued message is handed over without a trip through the scheduler (that trip cost
        more than everything else a delivery does), up to `YIELD_EVERY` in a row, so a
        consumer that keeps finding messages still lets the other tasks run regularly.
        Cancellation is seen at every call. With nothing queued it only checks for
        cancellation too, as the consumer is about to wait for a message and that wait yields;
        unless the subscription has ended or failed: then it is a full checkpoint, so what
        the client's other tasks have to report (``on_error``) runs before the end is raised.
        """
        if not self._messages:
            self._streak = 0
            if self._ended or self._error is not None:
                await self._client._scheduler_checkpoint()
            else:
                await self._client._cancellation_check()
        elif self._streak < YIELD_EVERY:
            self._streak += 1
            await self._client._cancellation_check()
        else:
            self._streak = 0
            await self._client._scheduler_checkpoint()

    def _take(self) -> Message | None:
        """The next queued message, or None (and the consumers are idle); raises once ended."""
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
        return None

    def _take_queued(self) -> list[Message]:
        """Every message queued now, without waiting (for `broker.sync`'s pump, which has
        just taken one with ``anext`` and so holds it: the consumers' hold covers these too)."""
        messages = self._messages
        if not messages:
            return []
        batch = list(messages)
        messages.clear()
        self._bytes = 0
        self._client._drain_signal.fire()
        return batch

    def _nothing_arrived(self) -> str:
        return f"no message on {self.subject!r} (subscription {self.sid})"

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
            message = await self._next()
        except SubscriptionClosed:
            raise StopAsyncIteration from None
        self._holding = True
        return message

    # -- called by the client ---------------------------------------------------------------

    @property
    def _quiescent(self) -> bool:
        return not self._messages and not self._holding

    def _deliver(self, message: Message) -> None:
        if self._ended or self._error is not None:  # not self.active, inlined
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
            if self._signal.event is not None:  # a consumer waits
                self._signal.fire()
        if self._max_msgs is not None:
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
