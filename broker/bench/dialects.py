"""The two wire dialects the load speaks: what a client sends, and counting what comes back.

Our protocol (length-prefixed msgpack frames) and NATS's text protocol each get a `Dialect`: the
pre-encoded bytes a client sends (opening, SUB, PUB, PING, PONG) and a counter for what it
receives. The counters count deliveries without decoding them, as the clients must cost far less
than the server they load: a run of identical records is checked a whole buffer at a time with
strided slices, so every record's header is still checked, with no Python loop per message.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, final

import msgpack

from .._version import __version__
from ..protocol import Hello, Ping, Pong, Pub, Sub, encode_frame

__all__ = [
    "DIALECTS",
    "Counter",
    "Dialect",
    "FrameCounter",
    "KiB",
    "Kind",
    "MiB",
    "NatsCounter",
    "exchange",
]

#: Which protocol a server speaks: ours or NATS's.
Kind: TypeAlias = Literal["broker", "nats"]

KiB: Final = 1024
MiB: Final = 1024 * KiB

_MSG_OP: Final = b"\xa3MSG"  # fixstr "MSG", right after a MSG frame's array head
#: After a failed whole-buffer check, this many records are walked one by one.
_COOLDOWN: Final = 8
_MAX_BLOCK: Final = 1 << 20


class Counter:
    """Counts deliveries in a byte stream; keeps PONGs, server PINGs and errors on the side.

    Subclasses walk one record at a time in `_one`, which also records the stride (record
    length) and the signature (offset, byte) pairs of the last message seen. `feed` then checks
    a run of records of that stride with one strided slice per signature byte, so a uniform
    stream costs a few C-level passes per read instead of a Python loop per message. Every
    record's header is still checked: the fast path is exact, never an estimate.
    """

    def __init__(self) -> None:
        self.messages = 0
        self.pongs = 0
        self.pings = 0
        self.errors: list[str] = []
        self._buffer = bytearray()
        self._stride = 0
        self._signature: tuple[tuple[int, int], ...] = ()
        self._block = 64
        self._cooldown = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        buf = self._buffer
        buf += data
        n = len(buf)
        pos = 0
        while pos < n:
            stride = self._stride
            if stride and not self._cooldown:
                k = min((n - pos) // stride, self._block)
                if k >= 2:
                    end = pos + k * stride
                    for offset, byte in self._signature:
                        if buf[pos + offset : end : stride].count(byte) != k:
                            self._block = max(2, self._block // 4)
                            self._cooldown = _COOLDOWN
                            break
                    else:
                        self.messages += k
                        pos = end
                        self._block = min(self._block * 4, _MAX_BLOCK)
                        continue
            end = self._one(buf, pos, n)
            if end < 0:
                break
            pos = end
            if self._cooldown:
                self._cooldown -= 1
        if pos:
            del buf[:pos]

    def _one(self, buf: bytearray, pos: int, n: int) -> int:
        """Take the record at `pos`; return where it ends, or -1 if it is incomplete."""
        raise NotImplementedError


@final
class FrameCounter(Counter):
    """Our frames: a 4-byte length, then msgpack; a MSG is recognised by its first 5 bytes."""

    def _one(self, buf: bytearray, pos: int, n: int) -> int:
        if n - pos < 4:
            return -1
        length = int.from_bytes(buf[pos : pos + 4], "big")
        end = pos + 4 + length
        if end > n:
            return -1
        # fixarray of 3 to 6 (trailing nils may be omitted), then fixstr "MSG".
        if buf[pos + 5 : pos + 9] == _MSG_OP and 0x93 <= buf[pos + 4] <= 0x96:
            self.messages += 1
            self._stride = 4 + length
            self._signature = tuple((i, buf[pos + i]) for i in range(9))
            return end
        try:
            items = msgpack.unpackb(bytes(buf[pos + 4 : end]), raw=False)
        except (ValueError, TypeError, msgpack.UnpackException) as error:
            raise ValueError(f"not a broker frame: {error}") from None
        op = items[0] if isinstance(items, list) and items else None
        if op == "PONG":
            self.pongs += 1
        elif op == "PING":
            self.pings += 1
        elif op == "ERR":
            self.errors.append(str(items[1]))
        return end


@final
class NatsCounter(Counter):
    """NATS text protocol: ``MSG <subject> <sid> [reply] <#bytes>\\r\\n<payload>\\r\\n``."""

    def _one(self, buf: bytearray, pos: int, n: int) -> int:
        newline = buf.find(b"\r\n", pos)
        if newline < 0:
            if n - pos > 64 * KiB:
                raise ValueError("a NATS protocol line longer than 64 KiB")
            return -1
        if buf.startswith(b"MSG ", pos) or buf.startswith(b"HMSG ", pos):
            space = buf.rfind(b" ", pos, newline)
            size = int(buf[space + 1 : newline])
            end = newline + 2 + size + 2
            if end > n:
                return -1
            self.messages += 1
            stride = end - pos
            self._stride = stride
            # "MSG " and everything from the space after the subject to the line end: with the
            # subject's length fixed by the stride, these decide where the record ends, as our
            # length prefix does. The subject's own bytes are not needed to count, so a stream
            # that interleaves subjects of one length still takes the fast path.
            after_subject = buf.find(b" ", pos + 4, newline) - pos
            head = (*range(4), *range(after_subject, newline + 2 - pos))
            self._signature = (
                *((i, buf[pos + i]) for i in head),
                (stride - 2, 13),
                (stride - 1, 10),
            )
            return end
        line = bytes(buf[pos:newline])
        if line == b"PONG":
            self.pongs += 1
        elif line == b"PING":
            self.pings += 1
        elif line.startswith(b"-ERR"):
            self.errors.append(line[5:].decode(errors="replace").strip(" '"))
        return newline + 2


@final
@dataclass(frozen=True, slots=True)
class Dialect:
    """The bytes one protocol's client sends, and the counter for what it receives."""

    opening: Callable[[str], bytes]
    sub: Callable[[int, str, str | None], bytes]
    pub: Callable[[str, bytes], bytes]
    ping: bytes
    pong: bytes
    counter: Callable[[], Counter]


def _nats_connect(name: str) -> bytes:
    options = (
        '{"verbose":false,"pedantic":false,"tls_required":false,"lang":"python",'
        f'"version":"{__version__}","protocol":1,"echo":true,"name":"{name}"}}'
    )
    return f"CONNECT {options}\r\n".encode()


def _nats_sub(sid: int, subject: str, queue: str | None) -> bytes:
    middle = f"{subject} {queue}" if queue else subject
    return f"SUB {middle} {sid}\r\n".encode()


DIALECTS: Final[Mapping[Kind, Dialect]] = {
    "broker": Dialect(
        opening=lambda name: encode_frame(Hello({"version": 1, "name": name})),
        sub=lambda sid, subject, queue: encode_frame(Sub(sid, subject, queue)),
        pub=lambda subject, payload: encode_frame(Pub(subject, payload)),
        ping=encode_frame(Ping()),
        pong=encode_frame(Pong()),
        counter=FrameCounter,
    ),
    "nats": Dialect(
        opening=_nats_connect,
        sub=_nats_sub,
        pub=lambda subject, payload: (
            b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload)
        ),
        ping=b"PING\r\n",
        pong=b"PONG\r\n",
        counter=NatsCounter,
    ),
}


def exchange(sock: socket.socket, counter: Counter, data: bytes, deadline: float) -> None:
    """Send `data` and a PING, then read until the PONG; raise on an ERR, EOF or the deadline."""
    dialect = DIALECTS["broker" if isinstance(counter, FrameCounter) else "nats"]
    wanted = counter.pongs + 1
    sock.settimeout(max(0.001, deadline - time.monotonic()))
    sock.sendall(data + dialect.ping)
    while counter.pongs < wanted:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no PONG before the deadline")
        sock.settimeout(remaining)
        data = sock.recv(64 * KiB)
        if not data:
            raise ConnectionError(f"closed by the server; errors: {counter.errors}")
        counter.feed(data)
        if counter.errors:
            raise ConnectionError(f"the server answered with errors: {counter.errors}")
