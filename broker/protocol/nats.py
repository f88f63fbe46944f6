"""The NATS client protocol, server side: an I/O-free codec for stock NATS clients.

The text protocol of docs.nats.io ("Client Protocol"): CRLF-terminated control lines whose
operation name is case-insensitive and whose fields are separated by runs of spaces or tabs
(nats.py sends ``PUB subj  5``), each PUB or HPUB followed by its payload and a CRLF. A
`Connection` decodes what a client sends (CONNECT, PUB, HPUB, SUB, UNSUB, PING, PONG) into
events and never touches a socket; the module's functions encode what a server sends (INFO,
MSG, HMSG, PING, PONG, +OK, -ERR).

Limits are enforced before anything is buffered past them: a control line longer than
`max_control_line` and a PUB announcing more than `max_payload` bytes raise
`RemoteProtocolError` as soon as they are seen, with the code the server reports (nats-server
closes the connection for both). A payload is copied once, from the receive buffer into the
`bytes` the event carries.

Headers: a NATS header block (``NATS/1.0 503\\r\\nKey: v\\r\\n\\r\\n``) may repeat a key and
carries a status line; the hub's headers are ``dict[str, str]``. The mapping (`decode_headers`,
`encode_headers`) is chosen so a NATS message crosses the hub to a NATS subscriber unchanged:

- the status line's code and description (``"503"``, ``"408 Request Timeout"``) are the value
  of ``"status"``, the key the native wire already uses for a 503;
- a repeated key's values are joined with ``"\\r\\n"``, which no NATS header value can hold;
- a real header named ``status`` is kept as ``":status"`` (no NATS header name holds a colon);
- values lose surrounding spaces and tabs, as nats.py and HTTP parse them.

A native client's headers cross the other way by the same rules; one NATS cannot carry (an
empty key, a key with a colon, whitespace or control character, a value with a lone CR or LF)
is left out of the block.

Pure: no trio, anyio or socket.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any, Final, NamedTuple, NoReturn, TypeAlias, final

from .._text import brief
from ..errors import ErrorCode
from .errors import RemoteProtocolError

__all__ = [
    "CLOSED",
    "DEFAULT_MAX_CONTROL_LINE",
    "NEED_DATA",
    "OK",
    "PING",
    "PONG",
    "Connect",
    "Connection",
    "Event",
    "Ping",
    "Pong",
    "Pub",
    "Sub",
    "Unsub",
    "decode_headers",
    "encode_err",
    "encode_headers",
    "encode_info",
    "msg_head_sid",
    "msg_parts",
]

#: nats-server's default `max_control_line`: the longest line, CRLF excluded, a client may send.
DEFAULT_MAX_CONTROL_LINE: Final = 4096

PING: Final = b"PING\r\n"
PONG: Final = b"PONG\r\n"
OK: Final = b"+OK\r\n"
_CRLF: Final = b"\r\n"
_HEADER_LINE: Final = "NATS/1.0"
_EMPTY_BLOCK: Final = b"NATS/1.0\r\n\r\n"
_MAX_SIZE_DIGITS: Final = 12  # more than any max_payload; int() of a longer run is wasted work

Headers: TypeAlias = "dict[str, str]"


class _Sentinel(Enum):
    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"


#: `next_event()` found no complete operation; feed more bytes.
NEED_DATA: Final = _Sentinel.NEED_DATA
#: `next_event()` after the peer's EOF with nothing left to decode.
CLOSED: Final = _Sentinel.CLOSED


class Connect(NamedTuple):
    """CONNECT: the client's options, as the JSON object it sent."""

    options: dict[str, Any]


class Pub(NamedTuple):
    """PUB or HPUB; the same fields, in the same order, as the hub's `Message`."""

    subject: str
    payload: bytes
    reply_to: str | None = None
    headers: Headers | None = None
    retain: bool = False


class Sub(NamedTuple):
    """SUB: ``sid`` is the client's own name for the subscription (any text)."""

    sid: str
    subject: str
    queue: str | None = None


class Unsub(NamedTuple):
    """UNSUB: remove now, or once ``max_msgs`` messages in all were delivered."""

    sid: str
    max_msgs: int | None = None


class Ping(NamedTuple):
    """PING: answer with PONG."""


class Pong(NamedTuple):
    """PONG: the answer to our PING."""


Event: TypeAlias = "Connect | Pub | Sub | Unsub | Ping | Pong"

_new_tuple = tuple.__new__
_PING_EVENT: Final = Ping()
_PONG_EVENT: Final = Pong()


def _text(field: bytes) -> str:
    # Subjects, sids and queue names are UTF-8; anything else could not reach a native client.
    return field.decode()


def _size(field: bytes) -> int:
    """A size field: ASCII digits only (``int`` would also take ``+5``, `` 5`` and ``5_0``)."""
    if not field.isdigit() or len(field) > _MAX_SIZE_DIGITS:
        raise ValueError(f"a size must be decimal digits, got {brief(field[:32])}")
    return int(field)


@final
class Connection:
    """The server's end of one NATS client connection, with no I/O.

    Feed received bytes to `receive_data` (`b""` for EOF), then take every complete operation
    with `events()` (or one at a time with `next_event()`). After a `RemoteProtocolError` the
    connection is unusable: every later call raises the same error again.
    """

    def __init__(
        self, *, max_payload: int, max_control_line: int = DEFAULT_MAX_CONTROL_LINE
    ) -> None:
        if max_control_line < 32:
            raise ValueError(f"max_control_line must be at least 32 bytes, got {max_control_line}")
        self.max_payload = max_payload
        self.max_control_line = max_control_line
        self._buffer = bytearray()
        self._eof = False
        self._error: RemoteProtocolError | None = None

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes read from the peer; `b""` means the peer closed its side."""
        if data:
            if not self._eof:
                self._buffer += data
        else:
            self._eof = True

    @property
    def buffered(self) -> int:
        """Bytes received and not yet decoded: the start of an operation still arriving."""
        return len(self._buffer)

    @property
    def closed(self) -> bool:
        """Whether the peer sent EOF and every complete operation before it has been taken."""
        return self._eof and not self._buffer

    def next_event(self) -> Event | _Sentinel:
        """Decode the next complete operation; `NEED_DATA` if none, `CLOSED` after EOF."""
        found = self._decode(1)
        if found:
            return found[0]
        return CLOSED if self._eof else NEED_DATA

    def events(self) -> list[Event]:
        """Every complete operation in the buffer, decoded in one pass.

        At a bad operation the events decoded before it are returned and the error is raised
        by the next call, so the caller acts on everything the peer sent before misbehaving.
        """
        return self._decode(-1)

    def _fail(self, code: ErrorCode, message: str) -> NoReturn:
        self._error = RemoteProtocolError(code, message)
        raise self._error

    def _decode(self, limit: int) -> list[Event]:
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        out: list[Event] = []
        position = 0
        try:
            with memoryview(buffer) as view:
                position = self._decode_from(buffer, view, limit, out)
        except RemoteProtocolError:
            if out:
                return out
            raise
        finally:
            if position:
                del buffer[:position]
        if not out and self._eof and buffer:
            self._fail(
                ErrorCode.BAD_FRAME,
                f"connection closed in the middle of an operation ({len(buffer)} bytes pending)",
            )
        return out

    def _decode_from(
        self, buffer: bytearray, view: memoryview, limit: int, out: list[Event]
    ) -> int:
        """Append up to `limit` events to `out`; returns how many bytes they used."""
        available = len(buffer)
        max_line = self.max_control_line
        append = out.append
        position = 0
        while limit and position < available:
            end = buffer.find(b"\r\n", position, position + max_line + 2)
            if end < 0:
                if available - position > max_line + 1:
                    self._fail(
                        ErrorCode.FRAME_TOO_LARGE,
                        f"a control line longer than max_control_line ({max_line} bytes)",
                    )
                break
            start = end + 2
            if buffer.startswith(b"PUB ", position):
                # The hot path: a plain PUB in upper case, as every client sends it.
                pub_fields = buffer[position + 4 : end].split()
                count = len(pub_fields)
                size_field = pub_fields[-1] if count else bytearray()
                if (count == 2 or count == 3) and size_field.isdigit() and len(size_field) < 10:
                    size = int(size_field)
                    if size > self.max_payload:
                        self._fail(
                            ErrorCode.PAYLOAD_TOO_LARGE,
                            f"payload of {size} bytes exceeds max_payload "
                            f"({self.max_payload} bytes)",
                        )
                    stop = start + size
                    if stop + 2 > available:
                        break  # the payload is still arriving
                    if buffer[stop] != 13 or buffer[stop + 1] != 10:
                        self._fail(ErrorCode.BAD_FRAME, "a payload must end with CRLF")
                    try:
                        subject = pub_fields[0].decode()
                        reply_to = pub_fields[1].decode() if count == 3 else None
                    except UnicodeDecodeError as error:
                        self._fail(ErrorCode.BAD_FRAME, f"PUB: {error}")
                    append(
                        _new_tuple(Pub, (subject, bytes(view[start:stop]), reply_to, None, False))
                    )
                    position = stop + 2
                    limit -= 1
                    continue
            line = bytes(view[position:end])
            fields = line.split()
            if not fields:
                self._fail(ErrorCode.UNKNOWN_OP, "an empty control line")
            op = fields[0].upper()
            if op == b"PUB" or op == b"HPUB":
                headed = op == b"HPUB"
                try:
                    count = len(fields)
                    if headed:
                        if count not in (4, 5):
                            raise ValueError("HPUB takes subject, [reply,] hdr size, size")
                        header_size = _size(fields[-2])
                    elif count not in (3, 4):
                        raise ValueError("PUB takes subject, [reply,] size")
                    size = _size(fields[-1])
                    if headed and header_size > size:
                        raise ValueError("a header size larger than the total size")
                    subject = _text(fields[1])
                    reply_to = _text(fields[2]) if count == (5 if headed else 4) else None
                except ValueError as error:  # UnicodeDecodeError included
                    self._fail(ErrorCode.BAD_FRAME, f"{brief(line[:64])}: {error}")
                if size > self.max_payload:
                    self._fail(
                        ErrorCode.PAYLOAD_TOO_LARGE,
                        f"payload of {size} bytes exceeds max_payload ({self.max_payload} bytes)",
                    )
                stop = start + size
                if stop + 2 > available:
                    break  # the payload is still arriving
                if buffer[stop : stop + 2] != _CRLF:
                    self._fail(ErrorCode.BAD_FRAME, "a payload must end with CRLF")
                headers: Headers | None = None
                if headed:
                    headers = decode_headers(bytes(view[start : start + header_size]))
                    payload = bytes(view[start + header_size : stop])
                else:
                    payload = bytes(view[start:stop])
                append(_new_tuple(Pub, (subject, payload, reply_to, headers, False)))
                start = stop + 2
            elif op == b"SUB":
                count = len(fields)
                if count not in (3, 4):
                    self._fail(
                        ErrorCode.BAD_FRAME, f"SUB takes subject, [queue,] sid: {brief(line)}"
                    )
                try:
                    queue = _text(fields[2]) if count == 4 else None
                    append(Sub(_text(fields[-1]), _text(fields[1]), queue))
                except ValueError as error:
                    self._fail(ErrorCode.BAD_FRAME, f"{brief(line[:64])}: {error}")
            elif op == b"UNSUB":
                count = len(fields)
                try:
                    if count not in (2, 3):
                        raise ValueError("UNSUB takes sid, [max]")
                    max_msgs = _size(fields[2]) if count == 3 else None
                    append(Unsub(_text(fields[1]), max_msgs))
                except ValueError as error:
                    self._fail(ErrorCode.BAD_FRAME, f"{brief(line[:64])}: {error}")
            elif op == b"PING":
                append(_PING_EVENT)
            elif op == b"PONG":
                append(_PONG_EVENT)
            elif op == b"CONNECT":
                append(Connect(_connect_options(line, self._fail)))
            else:
                self._fail(ErrorCode.UNKNOWN_OP, f"unknown operation {brief(op[:32])}")
            position = start
            limit -= 1
        return position


def _connect_options(line: bytes, fail: Any) -> dict[str, Any]:
    """CONNECT's JSON object, whatever whitespace separates it from the name."""
    text = line[len(b"CONNECT") :].strip()
    try:
        options = json.loads(text)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        fail(ErrorCode.BAD_HANDSHAKE, f"CONNECT must carry a JSON object: {error}")
    if type(options) is not dict:
        fail(ErrorCode.BAD_HANDSHAKE, f"CONNECT must carry a JSON object, got {brief(options)}")
    return options  # type: ignore[no-any-return]


# -- headers ----------------------------------------------------------------------------------


def decode_headers(block: bytes) -> Headers:
    """A NATS header block as the hub's headers (the mapping is in the module's docstring).

    Lenient, as nats-server is (it never parses them): a line with no colon is skipped, and
    bytes that are not UTF-8 are replaced, so a client's odd header never costs its message.
    """
    lines = block.decode(errors="replace").split("\r\n")
    headers: Headers = {}
    first = lines[0]
    if first.startswith(_HEADER_LINE):
        status = first[len(_HEADER_LINE) :].strip(" \t")
        if status:
            headers["status"] = status
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name:
            continue
        if name == "status":
            name = ":status"
        value = value.strip(" \t")
        held = headers.get(name)
        headers[name] = value if held is None else f"{held}\r\n{value}"
    return headers


def _valid_name(name: str) -> bool:
    return (
        bool(name) and ":" not in name and name.isprintable() and not any(c.isspace() for c in name)
    )


def encode_headers(headers: Headers) -> bytes:
    """The hub's headers as a NATS header block (the inverse of `decode_headers`)."""
    status = ""
    lines: list[str] = []
    for key, value in headers.items():
        if key == "status":
            if "\r" not in value and "\n" not in value:
                status = " " + value
            continue
        name = key[1:] if key[:1] == ":" else key
        if not _valid_name(name):
            continue
        for part in value.split("\r\n"):
            if "\r" in part or "\n" in part:
                continue
            lines.append(f"{name}: {part}")
    if not status and not lines:
        return _EMPTY_BLOCK
    lines.append("\r\n")
    return (_HEADER_LINE + status + "\r\n" + "\r\n".join(lines)).encode()


# -- what a server sends ----------------------------------------------------------------------


def encode_info(info: dict[str, Any]) -> bytes:
    """INFO with its JSON object."""
    return b"INFO " + json.dumps(info, separators=(",", ":")).encode() + _CRLF


def encode_err(text: str) -> bytes:
    """``-ERR 'text'``: clients match on the text, so it is nats-server's, word for word."""
    return b"-ERR '" + text.encode() + b"'" + _CRLF


def msg_parts(
    subject: str, payload: bytes, reply_to: str | None, headers: Headers | None
) -> tuple[bytes, bytes, bytes]:
    """One delivery's MSG (or HMSG, with headers) as three parts around the sid.

    The frame is ``before + sid + after`` then ``tail``: ``MSG subject `` + sid +
    `` [reply] size\\r\\n``, then the payload and CRLF. Every subscriber of a publish shares the
    three parts, so they are made once per publish; the payload is copied once, into `tail`.
    """
    if headers is None:
        if reply_to is None:
            after = b" %d\r\n" % len(payload)
        else:
            after = b" " + reply_to.encode() + b" %d\r\n" % len(payload)
        return b"MSG " + subject.encode() + b" ", after, payload + _CRLF
    reply = "" if reply_to is None else " " + reply_to
    block = encode_headers(headers)
    size = len(block)
    return (
        b"HMSG " + subject.encode() + b" ",
        f"{reply} {size} {size + len(payload)}\r\n".encode(),
        block + payload + _CRLF,
    )


def msg_head_sid(head: bytes) -> str:
    """The sid of a MSG or HMSG head made from `msg_parts` (its third field)."""
    return head.split(b" ", 3)[2].decode()
