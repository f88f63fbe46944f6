"""The NATS wire's adapter: stock NATS clients (nats.py, Node ``nats``, any language) on the hub.

`NatsAdapter` is what the hub sees of a NATS client (a `broker.hub.Subscriber`) and what its
`Transport` sees of the wire (a `WireAdapter`), as `broker.server.native.NativeAdapter` is for
native clients: the routing table, queue groups, limits, counters and slow-consumer policy are
the same ones, so a message published on either listener reaches subscribers on both.

What is NATS's own, and follows nats-server: the greeting is INFO; CONNECT options (``verbose``
answers +OK, ``echo``, ``headers``, ``no_responders``, ``name``, ``lang``, ``version``); errors
are ``-ERR`` with nats-server's words, fatal where nats-server closes (`nats_error_text`); a
duplicate SUB sid is ignored; a request nobody serves is answered with an HMSG whose status is
503 only to a client that asked for ``headers`` and ``no_responders``; a slow consumer is closed
with no ``-ERR`` (nats-server cannot write one to a client that does not read); on graceful
shutdown the client gets INFO with ``ldm: true`` (lame duck), then the connection closes once
what was queued for it is flushed, within the shutdown grace.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from typing import Any, Final, cast, final

from .._version import __version__
from ..auth import Credentials
from ..errors import ErrorCode
from ..hub import FANOUT_STEP, Hub, Refused, Subscription
from ..message import NO_RESPONDERS_HEADERS, Message, Retained
from ..permissions import ClientPermissions
from ..protocol.errors import RemoteProtocolError
from ..protocol.nats import (
    CLOSED,
    NEED_DATA,
    OK,
    PING,
    PONG,
    Connect,
    Connection,
    Event,
    Ping,
    Pong,
    Pub,
    Sub,
    Unsub,
    encode_err,
    encode_info,
    msg_head_sid,
    msg_parts,
)
from .native import (
    DECODE_PER_TURN,
    TURN_SECONDS,
    continue_fanout,
    rest_after_overrun,
    work_left,
)
from .outbox import replay_cost
from .transport import DEFERRED, Transport

__all__ = ["NatsAdapter", "nats_error_text", "nats_info", "nats_refusal"]

#: The client protocol version we speak (1: INFO updates, headers, no responders).
PROTO: Final = 1
_WORK_PER_LOOK: Final = 64
#: Characters of CONNECT's ``lang`` and ``version`` kept for monitoring (as the native wire's).
IDENTITY_LENGTH: Final = 64

#: nats-server's words for each fatal or fixed error, which clients match on.
_TEXT_BY_CODE: Final[dict[ErrorCode, str]] = {
    ErrorCode.UNKNOWN_OP: "Unknown Protocol Operation",
    ErrorCode.BAD_FRAME: "Unknown Protocol Operation",
    ErrorCode.BAD_HANDSHAKE: "Unknown Protocol Operation",
    ErrorCode.FRAME_TOO_LARGE: "maximum control line exceeded",
    ErrorCode.PAYLOAD_TOO_LARGE: "Maximum Payload Violation",
    ErrorCode.MAX_CONNECTIONS: "maximum connections exceeded",
    ErrorCode.HANDSHAKE_TIMEOUT: "Authentication Timeout",
    ErrorCode.STALE_CONNECTION: "Stale Connection",
    ErrorCode.TOO_MANY_SUBSCRIPTIONS: "maximum subscriptions exceeded",
    ErrorCode.AUTH_FAILED: "Authorization Violation",
}
_AUTHORIZATION_VIOLATION: Final = "Authorization Violation"
_NO_RESPONDERS_NEEDS_HEADERS: Final = "no responders requires headers support"
_BAD_PROTOCOL: Final = "invalid client protocol"
_INVALID_PUBLISH_SUBJECT: Final = "Invalid Publish Subject"
_INVALID_SUBJECT: Final = "Invalid Subject"
#: Texts the adapter passes as an error's message to be sent word for word.
_VERBATIM: Final = frozenset(
    {
        *_TEXT_BY_CODE.values(),
        _AUTHORIZATION_VIOLATION,
        _NO_RESPONDERS_NEEDS_HEADERS,
        _BAD_PROTOCOL,
        _INVALID_PUBLISH_SUBJECT,
        _INVALID_SUBJECT,
    }
)

#: The last message encoded for NATS delivery and its MSG parts (see `msg_parts`); the same
#: one-entry memo as the native adapter's `_last_encoded`, for the same reason.
_last_encoded: tuple[object, tuple[bytes, bytes, bytes]] = (None, (b"", b"", b""))


def nats_error_text(code: ErrorCode, message: str) -> str:
    """What a NATS client is told of an error: nats-server's words for it.

    A message that already is one (the adapter's own, ``Permissions Violation ...``) is sent
    as is; otherwise the code's text, or the message when nats-server has no word for it.
    """
    if message in _VERBATIM or message.startswith("Permissions Violation"):
        return message
    return _TEXT_BY_CODE.get(code, message)


def nats_info(hub: Hub, *, host: str, port: int, tls_required: bool = False) -> dict[str, Any]:
    """The INFO fields every client of one NATS listener shares (each adds its own id and IP).

    nats-core's client indexes several of these directly, so every one is always present.
    """
    config = hub.config
    return {
        "server_id": hub.info["server_id"],
        "server_name": hub.info["server_name"],
        "version": __version__,
        "go": "none (broker, Python)",
        "host": host,
        "port": port,
        "headers": True,
        "max_payload": config.max_payload,
        "proto": PROTO,
        "auth_required": False,
        "tls_required": tls_required,
    }


def nats_refusal(info: dict[str, Any], code: ErrorCode, message: str) -> bytes:
    """INFO then one ``-ERR``, for a connection refused before a session exists."""
    return encode_info(info) + encode_err(nats_error_text(code, message))


@final
class NatsAdapter:
    """One NATS client, as the hub's subscriber and as its transport's wire."""

    __slots__ = (
        "_deferred",
        "_info",
        "conn",
        "credentials",
        "echo",
        "headers",
        "hub",
        "in_bytes",
        "in_msgs",
        "lang",
        "name",
        "no_responders",
        "out_bytes",
        "out_msgs",
        "outbox",
        "pedantic",
        "permissions",
        "subscriptions",
        "tls_after_greeting",
        "transport",
        "verbose",
        "version",
    )

    def __init__(
        self,
        hub: Hub,
        transport: Transport,
        info: dict[str, Any],
        *,
        max_control_line: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.hub = hub
        self.transport = transport
        self.outbox = transport.outbox
        self.conn = Connection(
            max_payload=hub.config.max_payload, max_control_line=max_control_line
        )
        self._info = info
        self.name = ""
        self.lang = ""
        self.version = ""
        #: Counted by the hub, for monitoring (/connz), as for every wire's adapter.
        self.in_msgs = 0
        self.in_bytes = 0
        self.out_msgs = 0
        self.out_bytes = 0
        self.echo = True
        self.verbose = False
        self.pedantic = False
        self.headers = False
        self.no_responders = False
        self.subscriptions: dict[Any, Subscription] = {}
        self.permissions: ClientPermissions | None = None
        #: CONNECT's ``auth_token``, ``user`` and ``pass``; read by the transport's auth step.
        self.credentials = Credentials()
        #: With ``[tls]``: the transport upgrades to TLS right after INFO, as nats-server does.
        self.tls_after_greeting = tls
        self._deferred: list[Event] | None = None

    def __repr__(self) -> str:
        return repr(self.transport)

    # -- the transport's side -----------------------------------------------------------------

    def greeting(self) -> bytes | None:
        transport = self.transport
        client_ip = transport.peer.rpartition(":")[0].strip("[]")
        info = dict(
            self._info,
            client_id=transport.client_id,
            client_ip=client_ip,
            auth_required=self.hub.auth is not None,
            tls_required=self.tls_after_greeting is not None,
        )
        return encode_info(info)

    def receive_data(self, data: bytes | bytearray) -> None:
        self.conn.receive_data(data)

    def handshake(self) -> bool:
        """Take CONNECT; a client that starts with anything else gets the defaults.

        nats-server lets a client skip CONNECT when no authentication is required (a telnet
        session can PUB at once), so the first other operation is kept for `process`.
        """
        event = self.conn.next_event()
        if event is NEED_DATA or event is CLOSED:
            return False
        if type(event) is Connect:
            self._apply_connect(event.options)
        elif self.hub.auth is not None:
            raise RemoteProtocolError(ErrorCode.AUTH_FAILED, _AUTHORIZATION_VIOLATION)
        else:
            self._deferred = [event]
        return True

    def admit(self, permissions: ClientPermissions | None) -> None:
        """The handshake (and authentication, when on) passed: +OK to a verbose client."""
        self.permissions = permissions
        if self.verbose:
            self.outbox.push_control(OK)

    def _apply_connect(self, options: dict[str, Any]) -> None:
        """Take CONNECT's options; ones of the wrong type are refused as nats-server's JSON
        decoding refuses them (the connection closes)."""
        try:
            self.verbose = _flag(options, "verbose", False)
            self.pedantic = _flag(options, "pedantic", False)
            self.echo = _flag(options, "echo", True)
            self.headers = _flag(options, "headers", False)
            self.no_responders = _flag(options, "no_responders", False)
            self.name = _text(options, "name")
            # Shown in monitoring (/connz) only: bounded, never checked against anything.
            self.lang = _text(options, "lang")[:IDENTITY_LENGTH]
            self.version = _text(options, "version")[:IDENTITY_LENGTH]
            self.credentials = Credentials(
                token=_optional_text(options, "auth_token"),
                user=_optional_text(options, "user"),
                password=_optional_text(options, "pass"),
            )
            protocol = options.get("protocol", 0)
            if type(protocol) is not int:
                raise TypeError(f"protocol must be an integer, got {type(protocol).__name__}")
        except TypeError as error:
            raise RemoteProtocolError(ErrorCode.BAD_HANDSHAKE, f"CONNECT: {error}") from None
        if not 0 <= protocol <= PROTO:
            raise RemoteProtocolError(ErrorCode.BAD_HANDSHAKE, _BAD_PROTOCOL)
        if self.no_responders and not self.headers:
            raise RemoteProtocolError(ErrorCode.BAD_HANDSHAKE, _NO_RESPONDERS_NEEDS_HEADERS)

    @property
    def closed(self) -> bool:
        return self.conn.closed

    @property
    def buffered(self) -> int:
        return self.conn.buffered

    @property
    def pending(self) -> bool:
        return work_left(self.hub, self, self._deferred, self.conn.buffered)

    def process(self) -> str | bool:
        fanouts = self.hub.fanouts
        if fanouts and self in fanouts and not self._continue_fanout():
            return True
        deferred = self._deferred
        if deferred is not None:
            self._deferred = None
            events = deferred
        else:
            events = self.conn.events(DECODE_PER_TURN)
            if not events:
                return False
        return self._dispatch(events)

    def error_frame(
        self, code: ErrorCode, message: str, details: dict[str, Any] | None = None
    ) -> bytes:
        if code is ErrorCode.SHUTTING_DOWN:
            # Lame duck mode, as nats-server tells it: clients stop sending and move on.
            return encode_info(dict(self._info, ldm=True))
        if code is ErrorCode.SLOW_CONSUMER:
            return b""  # nats-server closes a slow consumer without a word
        if code is ErrorCode.PERMISSION_DENIED and details:
            # From a refused PUB or SUB, or from a reload of [auth] removing a subscription.
            message = _permissions_violation(details, message)
        return encode_err(nats_error_text(code, message))

    def ping_frame(self) -> bytes:
        return PING

    def drops_frame(self, dropped: int, total: int, by_sid: list[tuple[Any, int]]) -> bytes | None:
        return None  # NATS has no report of messages dropped by the server

    def sid_of_head(self, head: bytes) -> Any:
        return msg_head_sid(head)

    # -- operations to hub calls --------------------------------------------------------------

    def _dispatch(self, events: list[Event]) -> str | bool:
        """Turn events into hub calls, at most `TURN_SECONDS` of them per turn (as native)."""
        hub = self.hub
        publish = hub.publish
        fanouts = hub.fanouts
        transport = self.transport
        verbose = self.verbose
        clock = time.perf_counter
        deadline = clock() + TURN_SECONDS
        work = 0
        for at, event in enumerate(events):
            if work >= _WORK_PER_LOOK:
                now = clock()
                if now > deadline:
                    self._deferred = events[at:]
                    self._overran(now - deadline, work)
                    return True
                work = 0
            work += 1
            kind = type(event)
            try:
                if kind is Pub:
                    work += publish(self, event, FANOUT_STEP)  # type: ignore[arg-type]
                    if fanouts and self in fanouts:
                        # Too many subscribers for one step (as native): the rest of them,
                        # then this client's later operations, in the next turns.
                        if verbose:
                            transport.push_control(OK)
                        self._deferred = events[at + 1 :]
                        return True
                elif kind is Sub:
                    sid, pattern, queue = cast(Sub, event)
                    if sid not in self.subscriptions:
                        if not self.outbox.replay_room and hub.would_replay(pattern, queue):
                            self._deferred = events[at:]
                            return DEFERRED
                        hub.subscribe(self, sid, pattern, queue, prefix=sid.encode())
                elif kind is Unsub:
                    sid, max_msgs = cast(Unsub, event)
                    sub = self.subscriptions.get(sid)
                    if sub is not None:
                        hub.unsubscribe(sub, max_msgs)
                elif kind is Ping:
                    transport.push_control(PONG)
                    continue
                elif kind is Pong:
                    transport.pong_received()
                    continue
                elif kind is Connect:
                    # A second CONNECT changes options; who the client is was settled by the
                    # first (nats-server does not re-authenticate either).
                    credentials = self.credentials
                    self._apply_connect(cast(Connect, event).options)
                    self.credentials = credentials
                    verbose = self.verbose
                if verbose:
                    transport.push_control(OK)
            except Refused as refused:
                self._refused(kind, refused)
            except RemoteProtocolError as error:
                transport.fail(error.code, error.message)
            if not transport.accepting:
                break
        if work >= _WORK_PER_LOOK:
            self._overran(clock() - deadline, work)
        return True

    def _continue_fanout(self) -> bool:
        return continue_fanout(self.hub, self)

    def _overran(self, by: float, work: int) -> None:
        rest_after_overrun(self.transport, by, work)

    def _refused(self, kind: type[Any], refused: Refused) -> None:
        """Report a hub refusal in nats-server's words; fatal only where nats-server closes."""
        code = refused.code
        message = refused.message
        if code is ErrorCode.BAD_SUBJECT:
            message = _INVALID_PUBLISH_SUBJECT if kind is Pub else _INVALID_SUBJECT

        self.transport.error(code, message, refused.details)

    # -- the hub's side: delivering (called from publishers' tasks) ---------------------------

    def deliver(self, sub: Subscription, message: Message) -> int:
        """Queue one MSG (or HMSG) for `sub` without waiting; 1 if queued, 0 if not."""
        global _last_encoded
        transport = self.transport
        if not transport.accepting:
            return 0
        headers = message[3]
        if headers is not None and not self.headers:
            if headers is NO_RESPONDERS_HEADERS:
                return 0  # a client that did not ask for no_responders times out, as with NATS
            # A client that did not declare headers gets the payload alone, as nats-server does.
            before, after, tail = msg_parts(message[0], message[1], message[2], None)
        elif headers is NO_RESPONDERS_HEADERS and not self.no_responders:
            return 0
        else:
            last = _last_encoded
            if last[0] is message:
                before, after, tail = last[1]
            else:
                subject, payload, reply_to, headers, _retain = message
                parts = msg_parts(subject, payload, reply_to, headers)
                _last_encoded = (message, parts)
                before, after, tail = parts
        head = before + sub.prefix + after
        queued = self.outbox.offer(head, tail) or transport.overflow(sub, head, tail)
        if not queued and not transport.accepting:
            return 0
        sub.delivered += 1
        if sub.max_msgs is not None and sub.delivered >= sub.max_msgs:
            self.hub.remove(sub)
        return 1 if queued else 0

    def replay(self, sub: Subscription, entries: list[tuple[str, Retained]]) -> bool:
        """Queue the retained messages a new subscription matches, as plain MSGs.

        NATS has no retained flag: a replayed message looks like a live one. Each one's MSG
        parts are made once and kept on its `Retained` (``nats``).
        """
        if not self.transport.accepting:
            return False
        cost = replay_cost(len(entries), sum(kept.size for _, kept in entries))
        self.outbox.offer_replay(_replay_frames(sub.prefix, entries, self.headers), cost)
        return True


def _replay_frames(
    sid: bytes, entries: list[tuple[str, Retained]], headers: bool
) -> Iterator[tuple[bytes, bytes]]:
    """Each replayed message's (head, tail), made as the writer asks for it."""
    for _subject, kept in entries:
        subject, payload, _reply_to, message_headers, _retain = kept.message
        if message_headers is not None and not headers:
            before, after, tail = msg_parts(subject, payload, None, None)
        else:
            parts = kept.nats
            if parts is None:
                parts = kept.nats = msg_parts(subject, payload, None, message_headers)
            before, after, tail = parts
        yield before + sid + after, tail


def _permissions_violation(details: dict[str, Any], fallback: str) -> str:
    """nats-server's words for a refused publish or subscription (not fatal, as there)."""
    subject = details.get("subject")
    operation = details.get("op")
    if type(subject) is not str or operation not in ("publish", "subscribe"):
        return fallback
    quoted = json.dumps(subject, ensure_ascii=False)  # as Go's %q, for what subjects hold
    if operation == "publish":
        return f"Permissions Violation for Publish to {quoted}"
    return f"Permissions Violation for Subscription to {quoted}"


def _optional_text(options: dict[str, Any], key: str) -> str | None:
    value = options.get(key)
    if value is not None and type(value) is not str:
        raise TypeError(f"{key} must be a string, got {type(value).__name__}")
    return value


def _flag(options: dict[str, Any], key: str, default: bool) -> bool:
    value = options.get(key, default)
    if type(value) is not bool:
        raise TypeError(f"{key} must be true or false, got {type(value).__name__}")
    return value


def _text(options: dict[str, Any], key: str) -> str:
    value = options.get(key, "")
    if value is None:
        return ""
    if type(value) is not str:
        raise TypeError(f"{key} must be a string, got {type(value).__name__}")
    return value
