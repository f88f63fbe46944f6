"""The exceptions the client raises: one typed error for every way an operation can fail.

Users never see a raw ERR frame. Every ERR code the server sends maps to one class here (see
`error_from_wire`), and the local checks the client makes before sending (subjects, payload size)
raise the same classes, so ``except BadSubject`` catches a bad subject whichever side noticed it.

The hierarchy follows trio's vocabulary. `ConnectionClosed` means the connection is gone: closed
if we did it (``aclose``, ``drain``, leaving the ``async with`` block), broken if the server or the
network did; its ``code`` says which ERR, if any, the server sent as its reason. Errors that leave
the connection usable (`NoResponders`, `TooManySubscriptions`, ...) derive from `BrokerError`
directly. The errors about bad input also derive from `ValueError`, as the rest of Python does.

This module is pure: it imports neither trio, anyio nor the client.
"""

from __future__ import annotations

import copy
from enum import StrEnum
from typing import Any, Final, TypeVar, final

from .subjects import SubjectError

__all__ = [
    "AuthFailed",
    "BadSid",
    "BadSubject",
    "BrokerError",
    "ConnectionClosed",
    "ErrorCode",
    "MessagesDropped",
    "NoResponders",
    "PayloadTooLarge",
    "PermissionDenied",
    "ProtocolViolation",
    "ReconnectBufferFull",
    "RetainedLimitExceeded",
    "ServerShuttingDown",
    "SlowConsumer",
    "StaleConnection",
    "SubscriptionClosed",
    "TooManySubscriptions",
    "error_from_wire",
]

E = TypeVar("E", bound=BaseException)


class ErrorCode(StrEnum):
    """The stable codes carried by ERR frames, each with its classification.

    The classification lives here, on the code, so the server (what closes a connection, what
    counts as a protocol error) and the client (which exception reports it) cannot disagree:

    - ``fatal``: the server closes the connection after sending it.
    - ``violation``: the peer broke the wire contract (counted as ``protocol_errors``), as
      opposed to being slow, idle, late, refused by a limit or turned away.

    docs/protocol.md lists every code.
    """

    fatal: bool
    violation: bool

    def __new__(cls, value: str, fatal: bool, violation: bool) -> ErrorCode:
        member = str.__new__(cls, value)
        member._value_ = value
        member.fatal = fatal
        member.violation = violation
        return member

    #                        value                     fatal  violation
    BAD_FRAME = "bad_frame", True, True
    BAD_HANDSHAKE = "bad_handshake", True, True
    UNKNOWN_OP = "unknown_op", True, True
    FRAME_TOO_LARGE = "frame_too_large", True, True
    PAYLOAD_TOO_LARGE = "payload_too_large", True, True
    BAD_SUBJECT = "bad_subject", False, True
    BAD_SID = "bad_sid", False, True
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions", False, True
    MAX_CONNECTIONS = "max_connections", True, False
    HANDSHAKE_TIMEOUT = "handshake_timeout", True, False
    SLOW_CONSUMER = "slow_consumer", True, False
    MESSAGES_DROPPED = "messages_dropped", False, False
    STALE_CONNECTION = "stale_connection", True, False
    SHUTTING_DOWN = "shutting_down", True, False
    INTERNAL_ERROR = "internal_error", True, False
    RETAINED_LIMIT = "retained_limit", False, False
    AUTH_FAILED = "auth_failed", True, False
    PERMISSION_DENIED = "permission_denied", False, False


class BrokerError(Exception):
    """Base class of every error the client raises on purpose.

    Attributes:
        message: What happened, for people; also ``str(error)``.
        code: The server's ERR code when the server reported the error, else None (the client
            found the problem itself).
        details: The ERR frame's details map (e.g. ``{"sid": 3}``), or an empty dict.
    """

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details: dict[str, Any] = {} if details is None else dict(details)

    def __repr__(self) -> str:
        code = "" if self.code is None else f", code={self.code.value!r}"
        return f"{type(self).__name__}({self.message!r}{code})"


class ConnectionClosed(BrokerError):
    """The connection is gone, so the operation could not complete.

    Raised by operations on a client that was closed (by us) or whose connection broke (the
    server or the network) with reconnection off or given up, by requests in flight when a
    connection breaks, and by subscriptions of a client that ended. ``code`` is the fatal ERR
    code the server sent as its reason, or None when there was none (a reset, EOF, a refused
    TCP connection, or our own close).
    """


@final
class ServerShuttingDown(ConnectionClosed):
    """The server sent ERR ``shutting_down``: it is stopping and closed this connection."""


@final
class SlowConsumer(ConnectionClosed):
    """The server cut this client off (ERR ``slow_consumer``): it read more slowly than others
    published to it, and the server's policy is to disconnect.

    Messages the server drops under a drop policy are reported as `MessagesDropped` instead,
    and messages the client itself drops for a full subscription are counted in
    ``Subscription.dropped``.
    """


@final
class StaleConnection(ConnectionClosed):
    """PINGs went unanswered: the server said so (ERR ``stale_connection``), or the client sent
    ``max_pings_outstanding`` PINGs without a PONG and gave the connection up as dead.
    """


@final
class ProtocolViolation(ConnectionClosed):
    """One side broke the wire contract, which is a bug in that side.

    The server says we did (``bad_frame``, ``bad_handshake``, ``unknown_op``,
    ``frame_too_large``, ``payload_too_large``), it failed itself (``internal_error``), or the
    client could not decode what the server sent (``code`` is then the code the client would
    have reported).
    """


@final
class AuthFailed(ConnectionClosed):
    """The server refused this client's credentials (ERR ``auth_failed``) and closed the
    connection: a wrong or missing token, user, password or certificate. The server gives
    the same answer whatever was wrong, so the message does not say which.
    """


@final
class ReconnectBufferFull(ConnectionClosed):
    """A publish made while disconnected did not fit in ``reconnect_buffer_size``.

    It is a `ConnectionClosed` because the connection being down is the cause: the message was
    not queued, and publishing again once reconnected will work.
    """


@final
class NoResponders(BrokerError):
    """A request matched no subscriber at all; the server said so at once (status 503).

    Distinct from a timeout (the caller's cancel scope): nobody was listening, so waiting longer
    would not have helped.
    """


@final
class PayloadTooLarge(BrokerError, ValueError):
    """A payload (or the frame around it) is larger than the server accepts (WELCOME
    ``max_payload`` / ``max_frame``); checked before sending, so nothing was sent.
    """


@final
class BadSubject(BrokerError, SubjectError):
    """A subject, pattern or queue name breaks the syntax rules (see `broker.subjects`).

    Raised before sending when the client can tell; raised by a subscription's iterator when
    the server refused its SUB (ERR ``bad_subject`` with a sid). Also a `SubjectError` and so a
    `ValueError`.
    """


@final
class BadSid(BrokerError):
    """The server refused a subscription's sid (ERR ``bad_sid``); a client bug if ever seen."""


@final
class TooManySubscriptions(BrokerError):
    """The server refused a SUB past its ``max_subscriptions``; that subscription failed, the
    connection and the other subscriptions are unharmed.
    """


@final
class MessagesDropped(BrokerError):
    """The server dropped messages for this client under a drop policy (ERR
    ``messages_dropped``). Reported to the ``on_error`` hook; nothing raises it.

    Attributes:
        dropped: Messages lost since the server's previous report.
        total: Messages lost on this connection in all.
    """

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = ErrorCode.MESSAGES_DROPPED,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.dropped = _int_detail(self.details, "dropped")
        self.total = _int_detail(self.details, "total")


@final
class RetainedLimitExceeded(BrokerError):
    """The server refused a retained publish (ERR ``retained_limit``): its retained store is at
    ``max_retained_subjects`` or ``max_retained_bytes``. The message was neither retained nor
    delivered. Reported to the ``on_error`` hook, with the subject in ``details``; the
    connection is unharmed. Raised at once by ``publish(..., retain=True)`` when the server
    retains nothing at all (retention off, or a server that predates it).
    """


@final
class PermissionDenied(BrokerError):
    """The server refused a publish or a subscription outside this client's permissions (ERR
    ``permission_denied``); ``details`` has the ``subject`` and the ``op`` (``"publish"`` or
    ``"subscribe"``). The message was neither delivered nor retained, or the subscription not
    made; the connection is unharmed.
    """


@final
class SubscriptionClosed(BrokerError):
    """``Subscription.next()`` on a subscription that ended normally: unsubscribed, drained, or
    its ``max_msgs`` delivered. ``async for`` turns it into the end of the loop.
    """


def _again(error: E) -> E:
    """A fresh copy of a stored error, to raise it once more.

    A client keeps the error that ended a connection or a subscription and raises it to every
    later caller, in many tasks or threads; raising one object each time would pile up its
    tracebacks, so each raise gets a shallow copy with the same cause.
    """
    clone = copy.copy(error)
    clone.__cause__ = error.__cause__
    return clone


def _int_detail(details: dict[str, Any], key: str) -> int:
    value = details.get(key)
    return value if type(value) is int else 0


#: The class for each ERR code. Fatal codes (`ErrorCode.fatal`) map to `ConnectionClosed` or a
#: subclass, since the server closes the connection after them; a test checks every code.
_CLASSES: Final[dict[ErrorCode, type[BrokerError]]] = {
    ErrorCode.BAD_FRAME: ProtocolViolation,
    ErrorCode.BAD_HANDSHAKE: ProtocolViolation,
    ErrorCode.UNKNOWN_OP: ProtocolViolation,
    ErrorCode.FRAME_TOO_LARGE: ProtocolViolation,
    ErrorCode.PAYLOAD_TOO_LARGE: ProtocolViolation,
    ErrorCode.INTERNAL_ERROR: ProtocolViolation,
    ErrorCode.MAX_CONNECTIONS: ConnectionClosed,
    ErrorCode.HANDSHAKE_TIMEOUT: ConnectionClosed,
    ErrorCode.SLOW_CONSUMER: SlowConsumer,
    ErrorCode.STALE_CONNECTION: StaleConnection,
    ErrorCode.SHUTTING_DOWN: ServerShuttingDown,
    ErrorCode.BAD_SUBJECT: BadSubject,
    ErrorCode.BAD_SID: BadSid,
    ErrorCode.TOO_MANY_SUBSCRIPTIONS: TooManySubscriptions,
    ErrorCode.MESSAGES_DROPPED: MessagesDropped,
    ErrorCode.RETAINED_LIMIT: RetainedLimitExceeded,
    ErrorCode.AUTH_FAILED: AuthFailed,
    ErrorCode.PERMISSION_DENIED: PermissionDenied,
}


def error_from_wire(code: str, message: str, details: dict[str, Any] | None = None) -> BrokerError:
    """Turn the fields of an ERR frame into the exception that reports it.

    A code this client does not know becomes a plain `BrokerError` with ``code`` None and the
    code in its message: a newer server may add codes, and whether the connection survives is
    then learnt from the connection itself, not guessed.
    """
    try:
        known = ErrorCode(code)  # type: ignore[call-arg]  # a lookup by value, not a new member
    except ValueError:
        return BrokerError(f"server error {code!r}: {message}", details=details)
    return _CLASSES[known](message, code=known, details=details)
