"""A small raw-protocol client for the server tests: real sockets, the shared codec, no magic.

`wire_client` connects, says HELLO and waits for WELCOME. Events come back exactly as the server
sent them; nothing is answered automatically (a server PING is just another event), so tests see
every frame. `flush` sends PING and reads until PONG, keeping whatever arrived meanwhile for the
next `next_event`, so nothing is lost.
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeAlias, TypeVar

import msgpack
import trio

from broker.protocol import (
    CLOSED,
    NEED_DATA,
    Connection,
    Event,
    Hello,
    Msg,
    Ping,
    Pong,
    Pub,
    RemoteProtocolError,
    Role,
    Sub,
    Welcome,
    encode_frame,
)
from broker.server import Server

E = TypeVar("E")


async def read_event(receive: Callable[[int], Awaitable[bytes]], conn: Connection) -> Event | None:
    """The next event `conn` decodes from what `receive(max_bytes)` reads, None at EOF: for a
    test's own fake server (Trio's ``stream.receive_some``, asyncio's ``reader.read``)."""
    while True:
        event = conn.next_event()
        if event is CLOSED:
            return None
        if event is not NEED_DATA:
            return event
        conn.receive_data(await receive(65536))


#: The `start_server` fixture: `await start_server(**config_overrides)` -> a listening Server.
StartServer: TypeAlias = Callable[..., Awaitable[Server]]

#: Big enough for every frame the tests provoke, including ones past the server's limits.
CLIENT_MAX_FRAME = 64 * 1024 * 1024


class Closed(Exception):
    """The server closed the connection while the test still expected an event."""


def raw_frame(value: Any) -> bytes:
    """Encode any msgpack value as a frame, bypassing the codec's checks (for bad input)."""
    body = msgpack.packb(value)
    return struct.pack(">I", len(body)) + body


class WireClient:
    """One raw connection to the broker. `info` is the WELCOME info (empty before the handshake)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = Connection(Role.CLIENT, max_frame=CLIENT_MAX_FRAME)
        self.info: dict[str, Any] = {}
        self.pending: deque[Event] = deque()
        #: Set by `closed` when the server cut the connection in the middle of a frame.
        self.truncated = False

    async def send(self, *events: Event) -> None:
        """Encode events with the shared codec and send them in one write.

        No handshake bookkeeping: a test may send its HELLO raw, or send nothing but a PING.
        """
        await self.stream.send_all(b"".join(map(encode_frame, events)))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def next_event(self) -> Event:
        """The next event not consumed yet; raises `Closed` at EOF."""
        if self.pending:
            return self.pending.popleft()
        return await self._read()

    async def _read(self) -> Event:
        while True:
            event = self.conn.next_event()
            if event is CLOSED:
                raise Closed("the server closed the connection")
            if event is not NEED_DATA:
                return event
            try:
                data = await self.stream.receive_some(256 * 1024)
            except trio.BrokenResourceError:
                data = b""
            self.conn.receive_data(data)

    async def expect(self, kind: type[E]) -> E:
        """The next event, which must be a `kind`."""
        event = await self.next_event()
        assert type(event) is kind, f"expected {kind.__name__}, got {event!r}"
        return event

    async def flush(self) -> None:
        """PING, then read until the PONG; events read meanwhile stay pending for `next_event`.

        The PONG proves the server has processed everything this client sent before.
        """
        await self.send(Ping())
        while (event := await self._read()) != Pong():
            self.pending.append(event)

    async def drain(self) -> list[Event]:
        """`flush`, then take every event not consumed yet: all that arrived before the PONG."""
        await self.flush()
        return self.take_pending()

    def take_pending(self) -> list[Event]:
        """Every event already read (e.g. by `flush`) and not yet consumed."""
        events = list(self.pending)
        self.pending.clear()
        return events

    async def closed(self) -> list[Event]:
        """Read until the server closes; return every event not consumed yet (e.g. a final ERR).

        A connection reset counts as closed, and so does EOF in the middle of a frame (the server
        may cut a slow consumer off mid-write), which also sets `truncated`.
        """
        events = self.take_pending()
        while True:
            try:
                events.append(await self.next_event())
            except Closed:
                return events
            except RemoteProtocolError as error:
                if "middle of a frame" not in error.message:
                    raise
                self.truncated = True
                return events

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def connect(port: int, *, host: str = "127.0.0.1", rcvbuf: int | None = None) -> WireClient:
    """Open a TCP connection without any handshake.

    `rcvbuf` shrinks the socket's receive buffer before connecting, so a client that stops
    reading makes the server's writes block after little data.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return WireClient(trio.SocketStream(sock))


@asynccontextmanager
async def wire_client(
    port: int,
    *,
    name: str = "test",
    echo: bool = True,
    retained: bool = True,
    hello: bool = True,
    host: str = "127.0.0.1",
    rcvbuf: int | None = None,
) -> AsyncIterator[WireClient]:
    """Connect, and unless `hello=False` say HELLO and wait for WELCOME (kept in `info`)."""
    client = await connect(port, host=host, rcvbuf=rcvbuf)
    try:
        if hello:
            options = {"version": 1, "name": name, "echo": echo, "retained": retained}
            await client.send(Hello(options))
            welcome = await client.expect(Welcome)
            client.info = welcome.info
        yield client
    finally:
        await client.aclose()


class Bystanders:
    """A subscriber and a publisher that a fault test checks were unharmed by the fault."""

    def __init__(self, sub: WireClient, pub: WireClient) -> None:
        self.sub = sub
        self.pub = pub
        self.sent = 0

    async def check(self) -> None:
        """A message still goes from publisher to subscriber, and PINGs still get PONGs."""
        self.sent += 1
        payload = b"still here %d" % self.sent
        await self.pub.send(Pub("bystander.check", payload))
        await self.pub.flush()
        assert await self.sub.expect(Msg) == Msg(1, "bystander.check", payload)
        assert await self.sub.drain() == []


@asynccontextmanager
async def bystanders(port: int) -> AsyncIterator[Bystanders]:
    """A connected, subscribed bystander pair; call `check()` after the fault."""
    async with (
        wire_client(port, name="bystander-sub") as sub,
        wire_client(port, name="bystander-pub") as pub,
    ):
        await sub.send(Sub(1, "bystander.>"))
        await sub.flush()
        pair = Bystanders(sub, pub)
        await pair.check()
        yield pair


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll a condition the test cannot await (a server counter); the caller bounds the time."""
    while not predicate():
        await trio.sleep(0.005)
