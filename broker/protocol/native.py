"""The native wire: msgpack frames, their events, and an I/O-free codec for both ends.

A frame is a 4-byte unsigned big-endian length N, then N bytes holding exactly one msgpack array
whose first element is the operation name. `Connection` turns received bytes into events and
events into bytes, in the style of h11: it never touches a socket, so the server, every client and
the tests drive it the same way. See docs/protocol.md for the contract.

Events are `NamedTuple`s rather than frozen dataclasses: they are built once per message on the
hot path, where a frozen dataclass costs about three times as much. They stay immutable, typed and
usable in `match`; equality also compares the event type, so `Ping() != Pong()`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import Enum
from typing import Any, Final, NamedTuple, NoReturn, TypeAlias, final

import msgpack

from .._text import brief
from ..errors import ErrorCode
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "CLOSED",
    "DEFAULT_MAX_FRAME",
    "FATAL_ERRORS",
    "MSG_GROWTH",
    "NEED_DATA",
    "PLAIN_TAIL_END",
    "PROTOCOL_VERSION",
    "PUB_PREFIX_MEMO_SIZE",
    "PUB_TAIL_START",
    "Connection",
    "Encoder",
    "Err",
    "ErrorCode",
    "Event",
    "Forward",
    "Headers",
    "Hello",
    "LocalProtocolError",
    "Msg",
    "Ping",
    "Pong",
    "ProtocolError",
    "Pub",
    "PubRun",
    "RemoteProtocolError",
    "Role",
    "Sub",
    "Unsub",
    "Welcome",
    "encode_frame",
    "encode_msg_tail",
    "encode_retained_tail",
    "frame_too_large",
    "msg_head",
    "msg_head_sid",
    "msg_prefix",
    "plain_tail_head",
]

PROTOCOL_VERSION: Final = 1
#: Largest frame accepted when nothing else is configured: 1 MiB of payload plus envelope.
DEFAULT_MAX_FRAME: Final = 1024 * 1024 + 64 * 1024

#: How much longer than the PUB it delivers a MSG frame can be: up to 9 bytes of sid, plus the
#: 2 nils a PUB may omit. (A retained PUB carries its nils, so its replay grows by the sid alone.)
#: A receiver sizes its frame limit as WELCOME's max_frame plus this.
MSG_GROWTH: Final = 11

_HEADER = struct.Struct(">I")
_HEADER_SIZE: Final = _HEADER.size
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from
# One reusable Packer: `msgpack.packb` builds a new Packer on every call, which costs more than
# the packing itself for small frames. Sharing it across threads is safe: with no `default` hook,
# pack() runs start to end under the GIL.
_packb: Callable[[object], bytes] = msgpack.Packer().pack
#: msgpack's bin headers for payloads shorter than 256 bytes, by length (bin 8).
_BIN8_HEADERS: Final = tuple(bytes((0xC4, size)) for size in range(256))
#: Subjects whose PUB prefix an `Encoder` keeps at most; past that it starts again.
PUB_PREFIX_MEMO_SIZE: Final = 1024


#: Codes after which the server closes the connection (`ErrorCode.fatal`). The others leave it open.
FATAL_ERRORS: Final = frozenset(code for code in ErrorCode if code.fatal)


class _Sentinel(Enum):
    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"


#: `next_event()` found no complete frame; feed more bytes.
NEED_DATA: Final = _Sentinel.NEED_DATA
#: `next_event()` after the peer's EOF with nothing left to decode.
CLOSED: Final = _Sentinel.CLOSED

Headers: TypeAlias = "dict[str, str]"


class Hello(NamedTuple):
    """First frame from a client: `["HELLO", {options}]`."""

    options: dict[str, Any]


class Welcome(NamedTuple):
    """The server's answer to HELLO: `["WELCOME", {info}]`."""

    info: dict[str, Any]


class Sub(NamedTuple):
    """`["SUB", sid, subject, queue]`: subscribe `sid` (client-chosen int) to a pattern."""

    sid: int
    subject: str
    queue: str | None = None


class Unsub(NamedTuple):
    """`["UNSUB", sid, max_msgs]`: None unsubscribes now; N after N deliveries in total."""

    sid: int
    max_msgs: int | None = None


class Pub(NamedTuple):
    """`["PUB", subject, payload, reply_to, headers, retain]`; `retain` true keeps it as the
    subject's retained message (an empty payload deletes that instead).
    """

    subject: str
    payload: bytes
    reply_to: str | None = None
    headers: Headers | None = None
    retain: bool = False


class Msg(NamedTuple):
    """`["MSG", sid, subject, payload, reply_to, headers, retained]`: one delivery to one
    subscription; `retained` is true for a retained message replayed to a new subscription.
    """

    sid: int
    subject: str
    payload: bytes
    reply_to: str | None = None
    headers: Headers | None = None
    retained: bool = False


class Ping(NamedTuple):
    """`["PING"]`: the peer answers PONG once every earlier frame of ours is processed."""


class Pong(NamedTuple):
    """`["PONG"]`."""


class Err(NamedTuple):
    """`["ERR", code, message, details]`; details is an optional map (e.g. `{"sid": 3}`)."""

    code: str
    message: str
    details: dict[str, Any] | None = None

    @property
    def fatal(self) -> bool:
        """Whether the server closes the connection after this error."""
        return self.code in FATAL_ERRORS


Event: TypeAlias = Hello | Welcome | Sub | Unsub | Pub | Msg | Ping | Pong | Err


class PubRun(NamedTuple):
    """PUBs in a row to one subject that carry only a payload, each of the same size: what
    `Connection.events_and_tails` makes of frames that repeat the PUB before them byte for byte
    up to the payload. One publisher streaming to one subject sends these; the server checks
    and routes the subject once for the run. Never sent: it stands for the PUBs it holds.
    """

    subject: str
    payloads: list[bytes]


_EVENT_TYPES: tuple[type[tuple[Any, ...]], ...] = (
    Hello,
    Welcome,
    Sub,
    Unsub,
    Pub,
    Msg,
    Ping,
    Pong,
    Err,
)


def _event_eq(self: tuple[Any, ...], other: object) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other)


def _event_ne(self: tuple[Any, ...], other: object) -> bool:
    return not _event_eq(self, other)


def _event_hash(self: tuple[Any, ...]) -> int:
    return hash((type(self).__name__, tuple(self)))


for _cls in _EVENT_TYPES:
    # Plain tuples compare by value alone, which would make Ping() == Pong() == ().
    _cls.__eq__ = _event_eq  # type: ignore[method-assign]
    _cls.__ne__ = _event_ne  # type: ignore[assignment,method-assign]
    _cls.__hash__ = _event_hash  # type: ignore[method-assign]


class Role(Enum):
    """Which end of the connection a `Connection` speaks for."""

    CLIENT = "client"
    SERVER = "server"


# ---------------------------------------------------------------------------------------------
# Field checks, shared by decoding (remote input) and sending (local input). Each returns an
# error message, or None when the value is acceptable.


def _is_int(value: object) -> bool:
    return type(value) is int


def _check_sid(value: object) -> str | None:
    if type(value) is not int or not 0 <= value < 2**63:
        return f"sid must be an int between 0 and 2**63-1, got {brief(value)}"
    return None


def _check_optional_str(name: str, value: object) -> str | None:
    if value is not None and type(value) is not str:
        return f"{name} must be a str or nil, got {type(value).__name__}"
    return None


def _check_flag(name: str, value: object) -> str | None:
    if value is not None and type(value) is not bool:
        return f"{name} must be a bool or nil, got {type(value).__name__}"
    return None


def _check_headers(value: object) -> str | None:
    if value is None:
        return None
    if type(value) is not dict:
        return f"headers must be a map of str to str or nil, got {type(value).__name__}"
    for key, item in value.items():
        if type(key) is not str or type(item) is not str:
            return f"headers must map str to str, got {brief(key)}: {brief(item)}"
    return None


def _check_subject_type(value: object) -> str | None:
    if type(value) is not str:
        return f"subject must be a str, got {type(value).__name__}"
    return None


def _check_payload(value: object) -> str | None:
    if type(value) is not bytes:
        return f"payload must be bin (bytes), got {type(value).__name__}"
    return None


def _check_options(name: str, value: object) -> str | None:
    if type(value) is not dict:
        return f"{name} must be a map, got {type(value).__name__}"
    return None


def _check_hello(options: dict[str, Any]) -> str | None:
    version = options.get("version", PROTOCOL_VERSION)
    if not _is_int(version):
        return f"HELLO version must be an int, got {brief(version)}"
    if version != PROTOCOL_VERSION:
        return (
            f"unsupported protocol version {brief(version)}; this server speaks {PROTOCOL_VERSION}"
        )
    for flag in ("echo", "retained"):
        if type(options.get(flag, True)) is not bool:
            return f"HELLO {flag} must be a bool, got {brief(options.get(flag))}"
    for key in ("name", "token", "user", "password", "lang", "client_version"):
        if (problem := _check_optional_str(f"HELLO {key}", options.get(key))) is not None:
            return problem
    return None


def _fields(op: str, items: list[Any], minimum: int, maximum: int) -> list[Any] | str:
    """Pad trailing omitted nils, or say why the arity is wrong."""
    count = len(items) - 1
    if not minimum <= count <= maximum:
        if minimum == maximum:
            return f"{op} takes {minimum} fields, got {count}"
        return f"{op} takes {minimum} to {maximum} fields, got {count}"
    return items[1:] + [None] * (maximum - count)


def _first_problem(*problems: str | None) -> str | None:
    for problem in problems:
        if problem is not None:
            return problem
    return None


_Parser: TypeAlias = "Callable[[list[Any]], Event | str]"


def _parse_hello(items: list[Any]) -> Event | str:
    fields = _fields("HELLO", items, 0, 1)
    if isinstance(fields, str):
        return fields
    options = {} if fields[0] is None else fields[0]
    problem = _check_options("HELLO options", options) or _check_hello(options)
    return problem if problem is not None else Hello(options)


def _parse_welcome(items: list[Any]) -> Event | str:
    fields = _fields("WELCOME", items, 1, 1)
    if isinstance(fields, str):
        return fields
    problem = _check_options("WELCOME info", fields[0])
    return problem if problem is not None else Welcome(fields[0])


def _parse_sub(items: list[Any]) -> Event | str:
    fields = _fields("SUB", items, 2, 3)
    if isinstance(fields, str):
        return fields
    sid, subject, queue = fields
    problem = _first_problem(
        _check_sid(sid), _check_subject_type(subject), _check_optional_str("queue", queue)
    )
    return problem if problem is not None else Sub(sid, subject, queue)


def _parse_unsub(items: list[Any]) -> Event | str:
    fields = _fields("UNSUB", items, 1, 2)
    if isinstance(fields, str):
        return fields
    sid, max_msgs = fields
    if (problem := _check_sid(sid)) is not None:
        return problem
    if max_msgs is not None and (not _is_int(max_msgs) or max_msgs < 0):
        return f"UNSUB max_msgs must be a non-negative int or nil, got {brief(max_msgs)}"
    return Unsub(sid, max_msgs)


def _parse_pub(items: list[Any]) -> Event | str:
    count = len(items)
    if count == 3:
        # The common case (no reply, no headers), checked inline: it is the hot path.
        subject = items[1]
        payload = items[2]
        if type(subject) is str and type(payload) is bytes:
            return Pub(subject, payload)
    fields = _fields("PUB", items, 2, 5)
    if isinstance(fields, str):
        return fields
    subject, payload, reply_to, headers, retain = fields
    problem = _first_problem(
        _check_subject_type(subject),
        _check_payload(payload),
        _check_optional_str("reply_to", reply_to),
        _check_headers(headers),
        _check_flag("retain", retain),
    )
    if problem is not None:
        return problem
    return Pub(subject, payload, reply_to, headers, retain is True)


def _parse_msg(items: list[Any]) -> Event | str:
    fields = _fields("MSG", items, 3, 6)
    if isinstance(fields, str):
        return fields
    sid, subject, payload, reply_to, headers, retained = fields
    problem = _first_problem(
        _check_sid(sid),
        _check_subject_type(subject),
        _check_payload(payload),
        _check_optional_str("reply_to", reply_to),
        _check_headers(headers),
        _check_flag("retained", retained),
    )
    if problem is not None:
        return problem
    return Msg(sid, subject, payload, reply_to, headers, retained is True)


#: Where a PUB's own encoding of the MSG fields after the sid lies: ``(pub, body, stop, pad)``;
#: the MSG tail is ``body[PUB_TAIL_START:stop] + pad`` (see `Connection.events_and_tails`).
Forward: TypeAlias = "tuple[Pub, bytes, int, bytes]"
#: How a PUB frame of N elements (3 to 6) starts when encoded the shortest way.
_PUB_STARTS: Final = {count: bytes([0x90 + count]) + b"\xa3PUB" for count in range(3, 7)}
#: Where the fields start in such a frame: after the array byte and the op name.
PUB_TAIL_START: Final = 5
#: The nils that complete the four MSG fields a PUB of N elements left out (its omitted
#: reply_to and headers), so that every tail joins the same `msg_prefix`.
_PADDING: Final = {3: b"\xc0\xc0", 4: b"\xc0", 5: b"", 6: b""}
_PLAIN_PUB_START: Final = _PUB_STARTS[3]
#: `Connection._run` outside a run, and before any PUB.
_NO_RUN: Final[tuple[bytes, str, int]] = (b"", "", -1)
#: `Connection._msg_run` likewise.
_NO_MSG_RUN: Final[tuple[bytes, int, str, int]] = (b"", -1, "", -1)
_PLAIN_PADDING: Final = _PADDING[3]


def _forward(pub: Pub, body: bytes) -> Forward | None:
    """Where the MSG tail lies in a PUB's frame `body`, or None if it is not encoded plainly.

    A PUB of N elements carries N - 1 fields; a MSG's tail has four, so the omitted ones are
    padded with nils, and a retain flag (always one byte, the frame's last) is left out: a
    live delivery's 7th MSG element would say "replayed".
    """
    count = body[0] - 0x90
    if not 3 <= count <= 6 or not body.startswith(_PUB_STARTS[count]):
        return None  # a longer encoding of the array or op name: re-encode instead
    return pub, body, len(body) - 1 if count == 6 else len(body), _PADDING[count]


def _fast_request(items: list[Any]) -> Pub | None:
    """A PUB of four elements (a reply subject, no headers), checked inline as `_parse_pub`
    would; None sends it down the full path. A request's hot path, beside the plain PUB's."""
    subject = items[1]
    payload = items[2]
    reply_to = items[3]
    if (
        type(subject) is str
        and type(payload) is bytes
        and (reply_to is None or type(reply_to) is str)
    ):
        return _new_tuple(Pub, (subject, payload, reply_to, None, False))
    return None


def _fast_msg(items: list[Any]) -> Msg | None:
    """A MSG without headers, checked inline; None sends it down `_parse_msg`'s full path.

    The client's hot path: the same checks as `_parse_msg`, without padding a list and
    building a problem list per frame.
    """
    count = len(items)
    if count < 4 or count > 7:
        return None
    sid = items[1]
    subject = items[2]
    payload = items[3]
    reply_to = items[4] if count > 4 else None
    if count > 5 and items[5] is not None:
        return None
    retained = items[6] if count > 6 else False
    if (
        type(sid) is int
        and 0 <= sid < 2**63
        and type(subject) is str
        and type(payload) is bytes
        and (reply_to is None or type(reply_to) is str)
        and (retained is None or type(retained) is bool)
    ):
        return _new_tuple(Msg, (sid, subject, payload, reply_to, None, retained is True))
    return None


def _parse_ping(items: list[Any]) -> Event | str:
    fields = _fields("PING", items, 0, 0)
    return fields if isinstance(fields, str) else _PING


def _parse_pong(items: list[Any]) -> Event | str:
    fields = _fields("PONG", items, 0, 0)
    return fields if isinstance(fields, str) else _PONG


def _parse_err(items: list[Any]) -> Event | str:
    fields = _fields("ERR", items, 2, 3)
    if isinstance(fields, str):
        return fields
    code, message, details = fields
    if type(code) is not str or type(message) is not str:
        return f"ERR code and message must be str, got {brief(code)}, {brief(message)}"
    if details is not None and type(details) is not dict:
        return f"ERR details must be a map or nil, got {type(details).__name__}"
    return Err(code, message, details)


_PING: Final = Ping()
_PONG: Final = Pong()

#: What each role may receive, by operation name.
_PARSERS: Final[dict[Role, dict[str, _Parser]]] = {
    Role.SERVER: {
        "PUB": _parse_pub,
        "SUB": _parse_sub,
        "UNSUB": _parse_unsub,
        "PING": _parse_ping,
        "PONG": _parse_pong,
        "HELLO": _parse_hello,
    },
    Role.CLIENT: {
        "MSG": _parse_msg,
        "PING": _parse_ping,
        "PONG": _parse_pong,
        "ERR": _parse_err,
        "WELCOME": _parse_welcome,
    },
}

#: The handshake frame each role must see first, and what else may stand in for it.
_OPENING: Final = {Role.SERVER: (Hello,), Role.CLIENT: (Welcome, Err)}

#: Called with no options: keyword arguments cost 230 of its 3,000 instructions a frame, and the
#: defaults since msgpack 1.0 (str as str, map keys only str or bytes) are what the codec needs.
_unpackb: Callable[..., Any] = msgpack.unpackb
_new_tuple = tuple.__new__
_EMPTY_FRAME: Final = "empty frame: a frame holds one msgpack array"
#: An HTTP request's first four bytes, read as a frame length: a health checker, curl or a
#: browser pointed at this port. Told so, instead of "frame of 1195725856 bytes".
_HTTP_METHODS: Final = frozenset(
    _unpack_header(method.ljust(4)[:4])[0]
    for method in (b"GET ", b"HEAD", b"POST", b"PUT ", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT")
)
_NOT_HTTP: Final = (
    "this is broker's native port (length-prefixed msgpack frames), not HTTP: point HTTP "
    "clients and health checks at the monitoring port, and broker clients at this one"
)
_NOT_MSGPACK: Final = "frame is not one valid msgpack value"

_MSGPACK_ERRORS: Final = (
    msgpack.UnpackException,
    ValueError,
    TypeError,
    UnicodeDecodeError,
    OverflowError,
    RecursionError,
)


def _event_items(event: Event) -> list[Any]:
    """The wire array for an event, with trailing nils (and a false retain flag) omitted."""
    kind = type(event)
    op = _OP_NAMES[kind]
    items: list[Any] = [op, *event]
    if (kind is Pub or kind is Msg) and items[-1] is False:
        items.pop()
    while len(items) > 1 and items[-1] is None:
        items.pop()
    return items


_OP_NAMES: Final[dict[type[Any], str]] = {
    Hello: "HELLO",
    Welcome: "WELCOME",
    Sub: "SUB",
    Unsub: "UNSUB",
    Pub: "PUB",
    Msg: "MSG",
    Ping: "PING",
    Pong: "PONG",
    Err: "ERR",
}

#: What each role may send.
_SENDABLE: Final[dict[Role, frozenset[type[Any]]]] = {
    Role.CLIENT: frozenset({Hello, Sub, Unsub, Pub, Ping, Pong}),
    Role.SERVER: frozenset({Welcome, Msg, Ping, Pong, Err}),
}


def _encode(items: list[Any]) -> bytes:
    body = _packb(items)
    return _pack_header(len(body)) + body


# ---------------------------------------------------------------------------------------------
# Fan-out encoding: a MSG frame differs between subscribers only in its sid, so the server
# encodes the rest once per publish and joins a per-subscription prefix onto it.

_MSG_ARRAY_HEAD: Final = b"\x96\xa3MSG"  # fixarray of 6, fixstr "MSG"
_RETAINED_MSG_ARRAY_HEAD: Final = b"\x97\xa3MSG"  # fixarray of 7: the retained flag follows


def encode_msg_tail(
    subject: str, payload: bytes, reply_to: str | None, headers: Headers | None
) -> bytes:
    """Encode the part of a MSG frame after the sid, shared by every subscriber of a publish."""
    # Packing the four fields as one fixarray and dropping its 1-byte head is one C call.
    return _packb((subject, payload, reply_to, headers))[1:]


#: How every plain MSG tail (no reply subject, no headers) ends: its two nils.
PLAIN_TAIL_END: Final = b"\xc0\xc0"


def plain_tail_head(subject: str, size: int) -> bytes:
    """What a plain MSG tail holds before its payload, for any payload of `size` bytes.

    ``plain_tail_head(subject, len(payload)) + payload + PLAIN_TAIL_END`` equals
    `encode_msg_tail` ``(subject, payload, None, None)``: a server that delivers a run of
    publishes to one subject, of one size, encodes this once for the run.
    """
    if size < 0x100:
        length = b"\xc4" + size.to_bytes(1, "big")
    elif size < 0x10000:
        length = b"\xc5" + size.to_bytes(2, "big")
    else:
        length = b"\xc6" + size.to_bytes(4, "big")
    return _packb(subject) + length


def encode_retained_tail(
    subject: str, payload: bytes, reply_to: str | None, headers: Headers | None
) -> bytes:
    """Like `encode_msg_tail`, for a retained message's replay: it ends with the flag set.

    Joined onto a `msg_prefix(sid, retained=True)`; the server stores this with the message.
    """
    return _packb((subject, payload, reply_to, headers, True))[1:]


def msg_prefix(sid: int, *, retained: bool = False) -> bytes:
    """Encode the array head, op name and sid of a MSG; a subscription computes this once."""
    return (_RETAINED_MSG_ARRAY_HEAD if retained else _MSG_ARRAY_HEAD) + _packb(sid)


def msg_head_sid(head: bytes) -> int:
    """The sid inside a `msg_head` (for the rare path that must attribute a dropped message)."""
    sid: int = msgpack.unpackb(head[_HEADER_SIZE + len(_MSG_ARRAY_HEAD) :])
    return sid


def msg_head(prefix: bytes, tail_length: int) -> bytes:
    """The bytes before a MSG's tail: the frame length and the subscription's `msg_prefix`.

    `msg_head(prefix, len(tail)) + tail` is the whole frame; the server queues the two parts
    separately so that every subscriber of one publish shares the same tail object.
    """
    return _pack_header(len(prefix) + tail_length) + prefix


def _encode_checked(event: Event, role: Role, max_frame: int) -> bytes:
    kind = type(event)
    if kind not in _SENDABLE[role]:
        raise LocalProtocolError(ErrorCode.BAD_FRAME, f"a {role.value} cannot send {kind.__name__}")
    items = _event_items(event)
    their_role = Role.CLIENT if role is Role.SERVER else Role.SERVER
    problem = _PARSERS[their_role][items[0]](list(items))
    if type(problem) is str:
        raise LocalProtocolError(ErrorCode.BAD_FRAME, problem)
    data = _encode(items)
    if len(data) - _HEADER_SIZE > max_frame:
        raise frame_too_large(len(data) - _HEADER_SIZE, max_frame)
    return data


def frame_too_large(length: int, max_frame: int) -> LocalProtocolError:
    """The error for sending a frame of `length` bytes past `max_frame`, in one wording for
    every encoder (and for `broker.sync`, which finds it after encoding)."""
    return LocalProtocolError(
        ErrorCode.FRAME_TOO_LARGE,
        f"frame of {length} bytes exceeds the limit of {max_frame} bytes",
    )


@final
class Encoder:
    """Checks and encodes events one role sends, with no handshake state.

    For a client that keeps one encoder across reconnections and frames its messages before it
    knows which connection will carry them; `Connection.send` does the same checks plus the
    handshake order.
    """

    def __init__(self, role: Role, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.role = role
        self.max_frame = max_frame
        #: A plain PUB's encoding up to its payload, by subject (`PUB_PREFIX_MEMO_SIZE`).
        self._pub_prefixes: dict[str, bytes] = {}

    def send(self, event: Event) -> bytes:
        """Encode one event as a frame; `LocalProtocolError` if it breaks the contract."""
        return _encode_checked(event, self.role, self.max_frame)

    def pub(
        self,
        subject: str,
        payload: bytes,
        reply_to: str | None = None,
        headers: Headers | None = None,
        retain: bool = False,
        *,
        once: bool = False,
    ) -> bytes:
        """Encode a PUB whose fields the caller has already type-checked, as one frame.

        The publish hot path: `send(Pub(...))` builds the event, its item list and re-parses
        it, which cost more than the packing. The caller guarantees the types `send` would
        check (the clients do, in `ServerLimits.check_publish` and `check_headers`); the frame
        limit is still enforced here. With `once` (a reply, to an inbox subject used once) the
        subject's prefix is not kept for later publishes.

        Raises:
            LocalProtocolError: A client-only call made by a server encoder (``bad_frame``), or
                the frame is over ``max_frame`` (``frame_too_large``).
        """
        if self.role is not Role.CLIENT:
            raise LocalProtocolError(ErrorCode.BAD_FRAME, "a server cannot send Pub")
        if reply_to is None and headers is None and not retain and not once:
            # A plain publish, the commonest frame: the array's head, "PUB" and the subject are
            # the same for every publish to a subject, so they are packed once and kept, and
            # the frame is joined from parts, the payload copied once (msgpack's output is
            # the same bytes: `tests/test_protocol.py`).
            prefix = self._pub_prefixes.get(subject)
            if prefix is None:
                prefix = self._pub_prefix(subject)
            size = len(payload)
            if size < 256:
                length = len(prefix) + 2 + size
                bin_header = _BIN8_HEADERS[size]
            elif size < 0x10000:
                length = len(prefix) + 3 + size
                bin_header = b"\xc5" + size.to_bytes(2, "big")
            else:
                length = len(prefix) + 5 + size
                bin_header = b"\xc6" + size.to_bytes(4, "big")
            if length > self.max_frame:
                raise frame_too_large(length, self.max_frame)
            return b"".join((_pack_header(length), prefix, bin_header, payload))
        if retain:
            body = _packb(("PUB", subject, payload, reply_to, headers, True))
        elif headers is not None:
            body = _packb(("PUB", subject, payload, reply_to, headers))
        elif reply_to is not None:
            body = _packb(("PUB", subject, payload, reply_to))
        else:
            body = _packb(("PUB", subject, payload))
        if len(body) > self.max_frame:
            raise frame_too_large(len(body), self.max_frame)
        return _pack_header(len(body)) + body

    def _pub_prefix(self, subject: str) -> bytes:
        """A plain PUB's bytes before its payload's, kept for the next publish to `subject`."""
        prefixes = self._pub_prefixes
        if len(prefixes) >= PUB_PREFIX_MEMO_SIZE:
            prefixes.clear()
        # A 3-item array's head, then "PUB" and the subject as msgpack packs them in a pair.
        prefix = prefixes[subject] = b"\x93" + _packb(("PUB", subject))[1:]
        return prefix


# ---------------------------------------------------------------------------------------------


@final
class Connection:
    """One end of a broker connection, with no I/O: bytes in, events out, and back.

    Feed received bytes to `receive_data` (`b""` for EOF), then call `next_event` until it
    returns `NEED_DATA`, or take every complete event at once with `events()`: the server does
    that so one read's frames are handled in one pass. `send` turns an event into the bytes to
    write. A frame whose length header exceeds `max_frame` is refused before its body is read.

    After a `RemoteProtocolError` the connection is unusable: the peer can no longer be trusted
    to be frame-aligned, so every later call raises the same error again.
    """

    def __init__(self, our_role: Role, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 16:
            raise ValueError(f"max_frame must be at least 16 bytes, got {max_frame}")
        self.our_role = our_role
        self.their_role = Role.CLIENT if our_role is Role.SERVER else Role.SERVER
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self._parsers = _PARSERS[our_role]
        self._sendable = _SENDABLE[our_role]
        self._their_opening: tuple[type[Any], ...] | None = _OPENING[our_role]
        #: ``(head, subject, length)``: the last plain PUB's subject and body length, and, if
        #: the one before it was alike, its frame up to the payload (length header, array, op,
        #: subject, bin header). A frame that starts with those bytes is a PUB to the same
        #: subject with a payload of the same size (see `_decode`).
        self._run: tuple[bytes, str, int] = _NO_RUN
        #: The same for a client and MSGs, ``(head, sid, subject, length)``, whose next MSG of
        #: that subscription and size repeats the head.
        self._msg_run: tuple[bytes, int, str, int] = _NO_MSG_RUN
        self._our_opening: tuple[type[Any], ...] | None = _OPENING[self.their_role]

    @property
    def handshake_received(self) -> bool:
        """Whether the peer's opening frame (HELLO, or WELCOME/ERR for a client) has arrived."""
        return self._their_opening is None

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes read from the peer; `b""` means the peer closed its side."""
        if self._eof and data:
            raise LocalProtocolError(ErrorCode.BAD_FRAME, "received data after EOF")
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> Event | _Sentinel:
        """Decode the next complete frame; `NEED_DATA` if there is none, `CLOSED` after EOF."""
        found = self._decode(1, None)
        if found:
            return found[0]
        return CLOSED if self._eof else NEED_DATA

    def events(self, limit: int = -1) -> list[Event]:
        """Every complete event in the buffer (at most `limit` of them, if given), decoded in
        one pass (the server's batch read).

        At a bad frame the events decoded before it are returned, and the error is raised by
        the next call, so a caller acts on everything the peer sent before misbehaving.
        """
        return self._decode(limit, None)

    def events_and_tails(
        self, limit: int = -1
    ) -> tuple[list[Event | PubRun], list[Forward | None]]:
        """`events()`, with each PUB's own encoding of its fields, for a server to forward, and
        runs of PUBs that differ only in their payloads as one `PubRun` (its frames count one
        each towards `limit`).

        The second list runs parallel to the first: for a PUB encoded the usual (shortest) way,
        a `Forward` ``(pub, body, stop, pad)``: ``body[PUB_TAIL_START:stop] + pad`` is the MSG
        tail that `encode_msg_tail` would make: the frame's bytes after the op name (a retain
        flag left out), and nils for the fields it omitted. So a server delivers the PUB
        without encoding it again, and slices the tail only if some subscriber gets it; for
        every other event (a `PubRun` too) the entry is None.
        """
        forwards: list[Forward | None] = []
        return self._decode(limit, forwards), forwards  # type: ignore[return-value]

    def _decode(self, limit: int, forwards: list[Forward | None] | None) -> list[Event]:
        """Decode up to `limit` complete frames (all of them when negative): the one decode loop.

        With `forwards`, also fill it as `events_and_tails` says, runs included.
        """
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        available = len(buffer)
        position = 0
        out: list[Event] = []
        append = out.append
        forward = None if forwards is None else forwards.append
        max_frame = self.max_frame
        event_from = self._event_from
        # Publishes are most of a server's traffic, deliveries most of a client's: the plain
        # ones skip the general dispatch (the checks are the parsers', inlined).
        handshaken = self._their_opening is None
        fast_pub = handshaken and self.our_role is Role.SERVER
        fast_msg = handshaken and self.our_role is Role.CLIENT
        # One immutable copy of what was read, so that each frame's body is a `bytes` slice
        # of it, and a PUB's tail a slice of that. Made only once a frame is complete, so a
        # large frame arriving in many reads is not copied at each of them.
        data = b""
        if available >= _HEADER_SIZE:
            (first,) = _unpack_header(buffer, 0)
            if _HEADER_SIZE + first <= available:
                data = bytes(buffer)
        # Runs (see `PubRun`): the last plain PUB's subject and frame size, and once a second
        # PUB like it came, its frame up to the payload, which the next frames may repeat; the
        # payloads of the run being collected, if it is `out`'s last. A client keeps the same
        # of the last plain MSG. Looked for only after two alike, so that traffic whose
        # subjects or sizes keep changing costs two comparisons a frame, not a slice.
        run_head, run_subject, run_length = self._run if forward else _NO_RUN
        run: list[bytes] | None = None
        msg_run_head, msg_run_sid, msg_run_subject, msg_run_length = self._msg_run
        try:
            while limit and available - position >= _HEADER_SIZE:
                if msg_run_head:
                    if data.startswith(msg_run_head, position):
                        # Equal to the last plain MSG up to its payload: if it also ends with
                        # the same two nils, it decodes to the same but for the payload.
                        end = position + _HEADER_SIZE + msg_run_length
                        if end > available:
                            break
                        if data[end - 2 : end] == PLAIN_TAIL_END:
                            payload = data[position + len(msg_run_head) : end - 2]
                            append(
                                _new_tuple(
                                    Msg, (msg_run_sid, msg_run_subject, payload, None, None, False)
                                )
                            )
                            position = end
                            limit -= 1
                            continue
                    msg_run_head = b""
                if run_head:
                    if data.startswith(run_head, position):
                        # The bytes before the payload are those of a frame that decoded to a
                        # plain PUB, so this one decodes to the same but for its payload:
                        # msgpack is not called, and no event is made for it.
                        end = position + _HEADER_SIZE + run_length
                        if end > available:
                            break
                        if run is None:
                            run = []
                            append(_new_tuple(PubRun, (run_subject, run)))  # type: ignore[arg-type]
                            forward(None)  # type: ignore[misc]
                        run.append(data[position + len(run_head) : end])
                        position = end
                        limit -= 1
                        continue
                    run_head = b""
                run = None
                (length,) = _unpack_header(buffer, position)
                if length > max_frame:
                    if self._their_opening is not None and length in _HTTP_METHODS:
                        self._fail(ErrorCode.BAD_HANDSHAKE, _NOT_HTTP)
                    self._fail(
                        ErrorCode.FRAME_TOO_LARGE,
                        f"frame of {length} bytes exceeds the limit of {max_frame} bytes",
                    )
                end = position + _HEADER_SIZE + length
                if end > available:
                    break
                if not length:
                    self._fail(ErrorCode.BAD_FRAME, _EMPTY_FRAME)
                body = data[position + _HEADER_SIZE : end]
                try:
                    items = _unpackb(body)  # raw=False, strict_map_key=True: msgpack 1.x's defaults
                except _MSGPACK_ERRORS as error:
                    self._fail(ErrorCode.BAD_FRAME, f"{_NOT_MSGPACK}: {error}")
                position = end
                limit -= 1
                if fast_pub and type(items) is list:
                    count = len(items)
                    if count == 3 and items[0] == "PUB":
                        subject = items[1]
                        payload = items[2]
                        if type(subject) is str and type(payload) is bytes:
                            pub = _new_tuple(Pub, (subject, payload, None, None, False))
                            append(pub)
                            if forward is not None:
                                if body.startswith(_PLAIN_PUB_START):
                                    forward((pub, body, length, _PLAIN_PADDING))
                                    if length != run_length or subject != run_subject:
                                        run_length = length
                                        run_subject = subject
                                    else:
                                        # A second alike: the next may repeat it but the payload.
                                        start = end - _HEADER_SIZE - length
                                        run_head = data[start : end - len(payload)]
                                else:
                                    forward(None)
                            continue
                    elif count == 4 and items[0] == "PUB":
                        request = _fast_request(items)
                        if request is not None:
                            append(request)
                            if forward is not None:
                                forward(_forward(request, body))
                            continue
                elif fast_msg and type(items) is list and len(items) >= 4 and items[0] == "MSG":
                    msg = _fast_msg(items)
                    if msg is not None:
                        append(msg)
                        if len(items) == 6 and items[4] is None:
                            # [MSG, sid, subject, payload, nil, nil]: the next MSGs for this
                            # subscription may repeat all of it but the payload.
                            sid, subject = msg[0], msg[1]
                            if (
                                length != msg_run_length
                                or sid != msg_run_sid
                                or subject != msg_run_subject
                            ):
                                msg_run_length = length
                                msg_run_sid = sid
                                msg_run_subject = subject
                            else:
                                start = end - _HEADER_SIZE - length
                                msg_run_head = data[start : end - 2 - len(msg[2])]
                        continue
                event = event_from(items)
                append(event)
                if forward is not None:
                    forward(_forward(event, body) if type(event) is Pub else None)
        except RemoteProtocolError:
            # Hand back what decoded cleanly; the stored error is raised by the next call.
            self._run = _NO_RUN
            self._msg_run = _NO_MSG_RUN
            if position:
                del buffer[:position]
            if out:
                return out
            raise
        if forward is not None:
            self._run = (run_head, run_subject, run_length)
        elif fast_msg:
            self._msg_run = (msg_run_head, msg_run_sid, msg_run_subject, msg_run_length)
        if position:
            del buffer[:position]
        if not out and self._eof and buffer:
            self._fail(
                ErrorCode.BAD_FRAME,
                f"connection closed in the middle of a frame ({len(buffer)} bytes pending)",
            )
        return out

    @property
    def buffered(self) -> int:
        """Bytes received and not yet decoded: the start of a frame still arriving, if any."""
        return len(self._buffer)

    @property
    def closed(self) -> bool:
        """Whether the peer sent EOF and every complete frame before it has been taken."""
        return self._eof and not self._buffer

    @property
    def failed(self) -> bool:
        """Whether the peer broke the protocol: the next `events` call raises it.

        A call that decoded good frames before a bad one returns them and keeps the error for
        the next, so a reader must call again even when nothing is buffered.
        """
        return self._error is not None

    def _fail(self, code: ErrorCode, message: str) -> NoReturn:
        self._error = RemoteProtocolError(code, message)
        raise self._error

    def _event_from(self, items: Any) -> Event:
        """Validate one unpacked frame and build its event, enforcing the handshake order."""
        if type(items) is not list or not items or type(items[0]) is not str:
            self._fail(
                ErrorCode.BAD_FRAME,
                "a frame must hold an array whose first element is the operation name, "
                f"got {brief(items)}",
            )
        op = items[0]
        parser = self._parsers.get(op)
        if parser is None:
            self._fail(
                ErrorCode.UNKNOWN_OP,
                f"unknown operation {brief(op[:32])} from the {self.their_role.value}",
            )
        result = parser(items)
        if type(result) is str:
            self._fail(ErrorCode.BAD_HANDSHAKE if op == "HELLO" else ErrorCode.BAD_FRAME, result)
        event: Event = result  # type: ignore[assignment]
        opening = self._their_opening
        if opening is not None:
            if not isinstance(event, opening):
                self._fail(
                    ErrorCode.BAD_HANDSHAKE,
                    f"first frame from the {self.their_role.value} must be "
                    f"{_OP_NAMES[opening[0]]}, got {op}",
                )
            self._their_opening = None
        elif type(event) is Hello:
            self._fail(ErrorCode.BAD_HANDSHAKE, "HELLO may only be sent once")
        return event

    def send(self, event: Event) -> bytes:
        """Encode one event as a frame; `LocalProtocolError` if this role may not send it."""
        kind = type(event)
        opening = self._our_opening
        if opening is not None and kind in self._sendable:
            if kind not in opening:
                raise LocalProtocolError(
                    ErrorCode.BAD_HANDSHAKE,
                    f"the first frame a {self.our_role.value} sends must be "
                    f"{_OP_NAMES[opening[0]]}, not {_OP_NAMES[kind]}",
                )
            self._our_opening = None
        return _encode_checked(event, self.our_role, self.max_frame)


def encode_frame(event: Event) -> bytes:
    """Encode one event without handshake bookkeeping (tests and load generators)."""
    return _encode(_event_items(event))
