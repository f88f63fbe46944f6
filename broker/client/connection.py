"""The client's link to the broker: connect and handshake, then a reader, a writer and a pinger
per connection, and reconnection with backoff when a connection breaks.

The shape follows the server's sessions:

- **One writer per connection.** `Client.publish` encodes the frame, appends it to the client's
  write buffer and returns: it does no I/O. The writer task sends everything pending in one
  write, so a burst of publishes becomes one ``send``. A request, and a response, which are
  followed by a wait rather than more publishes, are written at once by their own task while
  the writer is idle with nothing pending (`Client._append_now`; Trio and plain TCP only):
  that saves a pass of the scheduler on each side of every request.
- **One reader per connection** decodes frames, answers server PINGs with PONG, and hands MSG
  and ERR to the client, which routes them to subscriptions and requests.
- **Keepalive.** The pinger PINGs every ``ping_interval`` (the server's, from WELCOME, unless
  given) and gives the connection up as dead (`StaleConnection`) when ``max_pings_outstanding``
  PINGs are unanswered, so a broker that vanished without a FIN is noticed.
- **Reconnection.** When a live connection breaks, the client retries with exponential backoff
  and jitter (``reconnect_delay`` doubling up to ``max_reconnect_delay``, each delay scaled by a
  random factor in [0.5, 1]), ``max_reconnect_attempts`` times (None: forever). On success the
  client re-sends every live subscription with the same sid (and ``max_msgs`` reduced by what
  was already received), then what was buffered, then a PING; ``on_reconnected`` runs once that
  PONG arrives, so the subscriptions are known to be in place.

Plain TCP under asyncio uses the client's own stream (`broker.client.streams`), which keeps
reading instead of stopping and starting the transport around every read; Trio, and TLS, use
anyio's streams.

What a connection carries and when (`Client._install`, `Client._link_lost`) is the client's
business; this module only moves frames and keeps a connection up.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, final

import anyio
import anyio.abc

from .._concurrency import running_trio
from .._version import __version__
from ..errors import (
    BrokerError,
    ConnectionClosed,
    ProtocolViolation,
    StaleConnection,
    _again,
    error_from_wire,
)
from ..protocol import (
    CLOSED,
    NEED_DATA,
    PROTOCOL_VERSION,
    Connection,
    Err,
    Event,
    Hello,
    Msg,
    Ping,
    Pong,
    RemoteProtocolError,
    Role,
    Welcome,
)
from .limits import info_float
from .options import ClientOptions, KiB
from .streams import AsyncioSocketStream, connect_tcp, trio_receive

if TYPE_CHECKING:
    from .client import Client
    from .subscription import Message

__all__ = ["READ_SIZE"]

log = logging.getLogger("broker.client")

#: Bytes asked of the socket per read.
READ_SIZE: Final = 64 * KiB
#: Added to the first connection's failure: what a new user should check.
_UNREACHABLE_HINT: Final = ". Is `broker serve` running there, and is the URL right?"
#: Doubling stops here so the backoff arithmetic stays in range; the delay is capped long before.
_MAX_BACKOFF_EXPONENT: Final = 32


class _Control(bytes):
    """A queued frame (SUB, UNSUB, PING, PONG) that only means something on its connection.

    When a connection breaks these are dropped from the write buffer: resubscribing regenerates
    what still matters. Publishes are plain `bytes` and survive into the next connection.
    """

    __slots__ = ()


class _Waiter:
    """One outcome to wait for: a PONG, or a request's reply."""

    __slots__ = ("_event", "error", "expired", "frame", "refused", "subject", "value")

    def __init__(self, subject: str = "") -> None:
        self._event = anyio.Event()
        self.subject = subject
        self.value: Message | None = None
        self.error: BrokerError | None = None
        #: For a PONG: publishes the server refused while it was awaited (`Client.flush`).
        self.refused: list[BrokerError] = []
        #: The queued PUB of a request, to tell whether it reached a connection that broke.
        self.frame: bytes | None = None
        #: A request's own limit passed first (`broker.client.timer`): `wait` returns None.
        self.expired = False

    def succeed(self, value: Message | None = None) -> None:
        if not self._event.is_set():
            self.value = value
            self._event.set()

    def fail(self, error: BrokerError) -> None:
        if not self._event.is_set():
            self.error = error
            self._event.set()

    def expire(self) -> None:
        if not self._event.is_set():
            self.expired = True
            self._event.set()

    async def wait(self) -> Message | None:
        await self._event.wait()
        if self.error is not None:
            raise _again(self.error)
        return self.value


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
        self, stream: anyio.abc.ByteStream, conn: Connection, info: dict[str, Any]
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


def client_tls_context(options: ClientOptions) -> ssl.SSLContext | None:
    """The client's TLS context from its options, or None for plain TCP.

    True gives a default context (certificate and host name checked) trusting `tls_ca_file`,
    or the system's CAs without one; `tls_cert_file` adds this client's certificate.

    Raises:
        ConnectionClosed: A file cannot be loaded (the message names it).
    """
    tls = options.tls
    if tls is False:
        return None
    if isinstance(tls, ssl.SSLContext):
        return tls
    try:
        context = ssl.create_default_context(cafile=options.tls_ca_file)
        if options.tls_cert_file is not None:
            context.load_cert_chain(options.tls_cert_file, options.tls_key_file)
    except (OSError, ssl.SSLError) as error:
        raise ConnectionClosed(f"cannot load the client's TLS files: {error}") from error
    return context


@final
class _Supervisor:
    """Keeps one client connected: opens connections, serves each (reader, writer, pinger)
    until it ends, and reconnects, until the client is closed or reconnection gives up.

    It owns the address, the handshake and the tasks of each connection; the client owns what
    travels on them. Through the client it reads the write buffer (``_pending``,
    ``_take_pending``, ``_writer_signal``), queues control frames (``_queue_control``), hands
    over MSG and ERR (``_on_msg``, ``_on_err``), and reports each connection made and lost
    (``_install``, ``_link_lost``, ``_terminate``) and hooks due (``_queue_hook``).
    """

    __slots__ = (
        "_client",
        "_current",
        "_hello",
        "_options",
        "_servers",
        "_tls",
        "done",
        "scope",
    )

    def __init__(
        self,
        client: Client,
        host: str,
        port: int,
        url: str,
        options: ClientOptions,
        also: Sequence[tuple[str, int, str]] = (),
    ) -> None:
        self._client = client
        #: Every address to try, ``(host, port, url)``: the first, then `also` (other nodes
        #: of a cluster); `_current` is the one connected (or last tried).
        self._servers = [(host, port, url), *also]
        self._current = 0
        self._options = options
        self._hello: dict[str, Any] = {
            "version": PROTOCOL_VERSION,
            "echo": options.echo,
            "retained": True,  # this client takes MSG's retained flag
            # Who we are, for the server's monitoring (/connz lang and version).
            "lang": "python",
            "client_version": __version__,
        }
        if options.name is not None:
            self._hello["name"] = options.name
        for key in ("token", "user", "password"):
            value = getattr(options, key)
            if value is not None:
                self._hello[key] = value
        #: The TLS context, or None for plain TCP; made once, reused by every reconnection.
        self._tls = client_tls_context(options)
        #: Cancelled to stop at once; `supervise` runs in it.
        self.scope = anyio.CancelScope()
        #: Set once `supervise` has returned.
        self.done = anyio.Event()

    @property
    def _url(self) -> str:
        return self._servers[self._current][2]

    async def open_link(self, *, first: bool = False) -> _Link:
        """Connect and handshake to one of the servers; any failure is ConnectionClosed.

        The first connection tries them in order; a reconnection starts with the one after
        the server just lost (fail-over to another node of a cluster). Each try is bounded by
        ``connect_timeout``. With several servers the error names them all.
        """
        count = len(self._servers)
        start = 0 if first else (self._current + 1) % count
        failure: ConnectionClosed | None = None
        for step in range(count):
            index = (start + step) % count
            try:
                link = await self._open_one(index, first=first)
            except ConnectionClosed as error:
                if failure is None or count == 1:
                    failure = error
                continue
            self._current = index
            self._client._url = self._servers[index][2]
            return link
        assert failure is not None
        if count == 1:
            raise failure
        urls = ", ".join(server[2] for server in self._servers)
        raise ConnectionClosed(
            f"cannot connect to any of {urls}; first error: {failure}", code=failure.code
        ) from failure

    async def _open_one(self, index: int, *, first: bool) -> _Link:
        """Connect and handshake to server `index`, within ``connect_timeout``.

        The `first` connection's failure says what to check, since a wrong address or a
        broker not started is the usual cause then (a reconnection's is a broker gone).
        """
        host, port, url = self._servers[index]
        timeout = self._options.connect_timeout
        hint = _UNREACHABLE_HINT if first else ""
        stream: anyio.abc.ByteStream | None = None
        try:
            with anyio.move_on_after(timeout):
                if self._tls is None:
                    if running_trio():
                        stream = await anyio.connect_tcp(host, port)
                    else:
                        stream = await connect_tcp(host, port)
                else:
                    stream = await anyio.connect_tcp(
                        host,
                        port,
                        ssl_context=self._tls,
                        tls_hostname=self._options.tls_hostname or host,
                        tls_standard_compatible=False,
                    )
                conn = Connection(Role.CLIENT)
                await stream.send(conn.send(Hello(self._hello)))
                info = await _read_welcome(stream, conn)
                link = _Link(stream, conn, info)
                stream = None  # The link owns it now.
                return link
            raise ConnectionClosed(
                f"connecting to {url} took longer than connect_timeout ({timeout} s){hint}"
            )
        except OSError as error:
            raise ConnectionClosed(f"cannot connect to {url}: {error}{hint}") from error
        except (anyio.BrokenResourceError, anyio.EndOfStream) as error:
            raise ConnectionClosed(f"the connection to {url} broke during the handshake") from error
        finally:
            if stream is not None:
                await anyio.aclose_forcefully(stream)

    async def supervise(self, link: _Link) -> None:
        """Serve each connection until it ends, then reconnect, until closed or given up."""
        client = self._client
        try:
            with self.scope:
                while True:
                    reason = await self._serve_link(link)
                    client._link_lost(link, reason)
                    if client._closed is not None:
                        return
                    next_link = await self._reconnect(reason)
                    if next_link is None:
                        return
                    link = next_link
                    client._install(link, reconnected=True)
        finally:
            self.done.set()

    async def _reconnect(self, reason: ConnectionClosed) -> _Link | None:
        options = self._options
        if not options.reconnect:
            self._client._terminate(reason)
            return None
        attempts = 0
        last = reason
        while options.max_reconnect_attempts is None or attempts < options.max_reconnect_attempts:
            await anyio.sleep(self._backoff(attempts))
            attempts += 1
            try:
                link = await self.open_link()
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
        self._client._terminate(gave_up)
        return None

    def _backoff(self, attempt: int) -> float:
        options = self._options
        delay = options.reconnect_delay * 2.0 ** min(attempt, _MAX_BACKOFF_EXPONENT)
        # Jitter spreads a crowd of clients that lost the same broker over time.
        return min(delay, options.max_reconnect_delay) * random.uniform(0.5, 1.0)

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
        stream = link.stream
        if isinstance(stream, AsyncioSocketStream):
            stream.feed_to(lambda data: self._feed(link, data))
            try:
                await self._read(link)
            finally:
                stream.feed_to(None)
        else:
            await self._read(link)

    def _feed(self, link: _Link, data: bytes) -> None:
        """Under asyncio, in the transport's callback while `_read` waits for bytes: decode
        and dispatch `data` there, as `_read` would, so a reply wakes its requester (and a
        message its consumer) one pass of the loop sooner. `_read`, when it next runs, finds
        the connection's buffer as this left it (half a frame, say). What this raises, `_read`
        raises in its own task (`AsyncioSocketStream.feed_to`), as if it had decoded the bytes
        itself."""
        link.conn.receive_data(data)
        self._decode(link, eof=False)

    def _decode(self, link: _Link, *, eof: bool) -> bool:
        """Dispatch every complete frame the connection holds; False once the link has ended.

        A frame that breaks the wire contract ends the link here. With `eof` (what was fed last
        was the server's EOF), a frame cut short is not a broken contract: the server cuts off
        a slow consumer it is writing to that way, since it cannot send ERR after half a frame.
        """
        conn = link.conn
        while link.reason is None:
            try:
                events = conn.events()
            except RemoteProtocolError as error:
                if eof:
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
                return False
            if not events:
                return True
            self._dispatch(link, events)
            if not (conn.buffered or conn.failed):
                # Nothing left to decode (and no error kept for the next call): the caller
                # reads now rather than decode nothing first, once per read.
                return link.reason is None
            # Frames still buffered, or an error the codec keeps for its next call after the
            # good frames it returned: go on until nothing is left.
        return False

    async def _read(self, link: _Link) -> None:
        conn = link.conn
        receive = trio_receive(link.stream) or link.stream.receive
        eof = False
        while self._decode(link, eof=eof):
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
            eof = not data
            conn.receive_data(data)

    def _dispatch(self, link: _Link, events: list[Event]) -> None:
        client = self._client
        for event in events:
            kind = type(event)
            if kind is Msg:
                client._on_msg(event)  # type: ignore[arg-type]
            elif kind is Ping:
                client._queue_control(client._pong_frame)
            elif kind is Pong:
                link.missed = 0
                if link.pongs:
                    waiter = link.pongs.popleft()
                    if waiter is not None:
                        waiter.succeed()
            elif kind is Err:
                client._on_err(link, event)  # type: ignore[arg-type]
                if link.reason is not None:
                    return

    async def _write_loop(self, link: _Link) -> None:
        client = self._client
        stream = link.stream
        send_now: Callable[[bytes], int] | None = None
        if isinstance(stream, AsyncioSocketStream):
            # Under asyncio the raw socket is asyncio's, behind a transport with its own
            # buffer: written through that transport, in order with the writer's sends.
            send_now = stream.send_now
        elif self._tls is None and running_trio():
            raw = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
            send_now = None if raw is None else raw.send
        try:
            while True:
                # Not kept in a local: a lost connection replaces the client's buffer.
                if not client._pending:
                    if link.finish_by is not None:
                        await self._finish(link)
                        return
                    client._send_now = send_now  # idle: a request may write for us
                    try:
                        await client._writer_signal.wait()
                    finally:
                        client._send_now = None
                    continue
                await stream.send(client._take_pending())
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as error:
            link.end(ConnectionClosed(f"the connection to {self._url} broke: {error!r}"))

    async def _finish(self, link: _Link) -> None:
        """Tell the server we are done, then let the reader take what it still sends.

        Over TCP that is a half-close: the server finishes and closes, and the reader sees
        EOF. TLS cannot half-close, so a PING goes last instead: its PONG proves the server
        processed everything before it, and the link then ends.
        """
        if self._tls is None:
            await link.stream.send_eof()
            return
        waiter = _Waiter()
        link.pongs.append(waiter)
        await link.stream.send(self._client._encoder.send(Ping()))
        await waiter.wait()
        link.end(ConnectionClosed("the client was closed"))

    async def _ping_loop(self, link: _Link) -> None:
        interval = self._options.ping_interval
        if interval is None:
            interval = info_float(link.info, "ping_interval", 120.0)
        limit = self._options.max_pings_outstanding
        client = self._client
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
            client._queue_control(client._ping_frame)

    async def _announce(self, waiter: _Waiter) -> None:
        await waiter.wait()
        self._client._queue_hook(self._options.on_reconnected)


async def _read_welcome(stream: anyio.abc.ByteStream, conn: Connection) -> dict[str, Any]:
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
