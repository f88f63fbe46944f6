"""One client connection, whatever its wire: handshake deadline, reader and writer tasks, the
bounded outbox between them, keepalive, the slow-consumer policy, and a graceful close.

A `Transport` moves bytes; its `WireAdapter` (one per wire format) turns the bytes it reads
into hub calls and encodes what the transport must send (errors, PINGs, reports of drops).
Data flows one way: the reader hands each read to the adapter, which routes publishes through
the hub to other clients' outboxes without waiting; each transport's writer is the only task
that writes to its stream, taking everything pending in one ``send_all``. One exception, as in
nats-server's read loop: at the end of a read's turn, the reader writes at once, without
waiting, what it queued for writers that were idle (`_write_now`), so a reply leaves in the pass
that routed its request; whatever that write cannot finish goes to the writer.

Nothing here assumes a plain TCP socket: a TLS stream has no ``send_eof``, and the peer's
address is found under any wrapping stream (`peer_address`).
"""

from __future__ import annotations

import logging
import math
import os
import ssl
import time
from typing import Any, Final, Protocol, final

import trio

from .._text import brief
from ..auth import AuthFailure, Credentials, Identity
from ..errors import ErrorCode
from ..hub import Hub, Subscriber, Subscription
from ..peerlog import PeerLog
from ..permissions import ClientPermissions
from ..protocol.errors import RemoteProtocolError
from .outbox import Outbox, held_wakes
from .receive import socket_receive
from .security import AUTH_FAILED_MESSAGE, authenticate, recheck
from .tls import batched_receive, tls_handshake

__all__ = [
    "LINGER_SECONDS",
    "READ_SIZE",
    "Transport",
    "WireAdapter",
    "peer_address",
    "refuse",
]

log = logging.getLogger("broker.server.transport")

#: Bytes asked of the stream per read; one read's frames are decoded and routed in one pass.
READ_SIZE: Final = 64 * 1024
#: How long a closing connection is drained so the peer reads our final error, not a reset.
LINGER_SECONDS: Final = 0.5
#: `WireAdapter.process` stopped early: the rest waits until the writer takes a queued replay.
DEFERRED: Final = "deferred"
_INTERNAL_ERROR: Final = "internal error: the server failed handling this connection; it is closed"


class WireAdapter(Subscriber, Protocol):
    """What a transport needs of its wire: decoding into hub calls, and a few encodings.

    It is also its client's `Subscriber`, whose identity and counters monitoring shows.
    """

    credentials: Credentials
    """What the peer's opening presented; filled by `handshake`."""

    def greeting(self) -> bytes | None:
        """Bytes to send as soon as the connection opens (NATS's INFO), or None."""
        ...

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes read from the peer (``b""`` at EOF)."""
        ...

    def handshake(self) -> bool:
        """Take the peer's opening from what was received; True once it is complete.

        Raises:
            RemoteProtocolError: The opening broke the wire's contract.
        """
        ...

    def admit(self, permissions: ClientPermissions | None) -> None:
        """The handshake (and authentication, when on) passed: take `permissions` (None when
        auth is off) and queue what the wire sends on success (native: WELCOME).
        """
        ...

    def process(self) -> str | bool:
        """Act on every complete frame received; True if there was any, `DEFERRED` if the
        rest must wait for `Outbox.wait_replay_room`.

        Raises:
            RemoteProtocolError: The peer broke the wire's contract.
        """
        ...

    @property
    def closed(self) -> bool:
        """Whether the peer's EOF arrived and every frame before it was processed."""
        ...

    @property
    def buffered(self) -> int:
        """Bytes received but not yet a whole frame (a frame still arriving)."""
        ...

    @property
    def pending(self) -> bool:
        """Whether `process` may have work without another read: bytes buffered, the rest of
        a turn that ran out of time, or a fan-out still under way."""
        ...

    def error_frame(
        self, code: ErrorCode, message: str, details: dict[str, Any] | None = None
    ) -> bytes:
        """The bytes that tell the client of an error."""
        ...

    def ping_frame(self) -> bytes:
        """A keepalive PING."""
        ...

    def drops_frame(self, dropped: int, total: int, by_sid: list[tuple[Any, int]]) -> bytes | None:
        """The report of messages a drop policy discarded, or None if the wire has none."""
        ...

    def sid_of_head(self, head: bytes) -> Any:
        """The sid a queued message head is for (to attribute a message drop_oldest discards)."""
        ...


def peer_address(stream: trio.abc.Stream) -> tuple[str, int]:
    """The peer's host and port, from the socket under any wrapping streams (TLS included).

    Raises:
        OSError: The socket is no longer connected, or there is none.
    """
    inner: object = stream
    while not isinstance(inner, trio.SocketStream):
        inner = getattr(inner, "transport_stream", None)
        if inner is None:
            raise OSError(f"no socket under {type(stream).__name__}")
    host, port = inner.socket.getpeername()[:2]
    return host, port


async def _close_gracefully(stream: trio.abc.Stream) -> None:
    """Let the peer read our last frame instead of a reset, within `LINGER_SECONDS`.

    A TCP stream is half-closed, then drained until the peer closes too. A stream that cannot
    half-close (TLS) is closed outright: its close_notify is how the peer learns we are done.
    """
    with trio.move_on_after(LINGER_SECONDS):
        try:
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
                while await stream.receive_some(READ_SIZE):
                    pass
            else:
                await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def refuse(stream: trio.abc.Stream, frame: bytes, timeout: float) -> None:
    """Send one error as the opening frame (no transport exists), then close gracefully."""
    with trio.move_on_after(min(timeout, 2.0)):
        try:
            await stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        await _close_gracefully(stream)


@final
class Transport:
    """One client: performs the handshake, then runs its reader and writer until closed.

    Attributes:
        hub: The broker it serves.
        stream: The byte stream (TCP, or TLS over it).
        peer: ``host:port`` of the client, for logs.
        client_id: Unique within this server.
        adapter: Its wire; set by the listener right after construction.
        outbox: What waits to be written to it.
        accepting: False once it is closing: deliveries to it are then discarded.
        address: The client's ``(ip, port)``, for monitoring (``("", 0)`` if unknown).
        start: When it was accepted, in seconds since the epoch.

    For monitoring, with the adapter's identity and counters (`broker.hub.Subscriber`), it
    also tells `last_activity`, `pending_bytes` and `closing_reason`: each read when asked,
    so none costs anything on the hot path.
    """

    __slots__ = (
        "_dropped_by_sid",
        "_eof",
        "_fatal",
        "_handshake_scope",
        "_held",
        "_last_ping",
        "_last_received",
        "_last_sent",
        "_opened",
        "_pings_outstanding",
        "_policy",
        "_reader_scope",
        "_session_scope",
        "_shutting_down",
        "_slow",
        "_socket",
        "_stalled",
        "_write_scope",
        "accepting",
        "adapter",
        "address",
        "admitted",
        "client_id",
        "dropped_total",
        "dropped_unreported",
        "hub",
        "identity",
        "outbox",
        "peer",
        "peer_log",
        "rest",
        "start",
        "stream",
    )

    def __init__(
        self,
        hub: Hub,
        stream: trio.abc.Stream,
        peer: str,
        client_id: int,
        *,
        address: tuple[str, int] = ("", 0),
        peer_log: PeerLog | None = None,
    ) -> None:
        config = hub.config
        self.hub = hub
        #: Where lines about this client go: rate-limited per host, shared by the server's
        #: connections (see `broker.peerlog`).
        self.peer_log = peer_log or PeerLog(
            log, lines_per_minute=config.log_peer_lines_per_minute, clock=trio.current_time
        )
        self.stream = stream
        self.peer = peer
        self.client_id = client_id
        self.address = address
        self.start = time.time()
        #: trio's clock at `start` (set by `run`), to turn trio times into wall-clock ones.
        self._opened = math.inf
        self.adapter: WireAdapter
        #: Shared by every reader and outbox of this trio run (see `_process`).
        self._held = held_wakes()
        self.outbox = Outbox(
            max_messages=config.max_pending_messages,
            max_bytes=config.max_pending_bytes,
            replay_memory=hub.replay_memory,
            held=self._held,
        )
        #: The plain TCP socket, once the handshake is done (`_write_now`).
        self._socket: trio.socket.SocketType | None = None
        self.accepting = True
        #: Who the client proved to be, when authentication is on.
        self.identity: Identity | None = None
        #: The handshake (authentication included) passed: a reload now applies to it.
        self.admitted = False
        #: Seconds the reader waits before its next turn, set by an adapter whose turn took
        #: far longer than its budget (see `NativeAdapter._dispatch`).
        self.rest = 0.0
        self.dropped_unreported = 0
        self.dropped_total = 0
        self._dropped_by_sid: dict[Any, int] = {}
        self._policy = config.slow_consumer_policy
        self._fatal: tuple[ErrorCode, str] | None = None
        self._eof = False
        self._shutting_down = False
        self._slow = False
        self._reader_scope = trio.CancelScope()
        self._session_scope = trio.CancelScope()
        self._handshake_scope = trio.CancelScope()
        self._stalled: trio.Event | None = None
        self._write_scope: trio.CancelScope | None = None
        self._last_received = 0.0
        self._last_sent = 0.0
        self._last_ping = 0.0
        self._pings_outstanding = 0

    @property
    def last_activity(self) -> float:
        """When the client last sent a whole frame or was last written to (seconds since the
        epoch; `start` if neither happened yet).

        Whole frames only, as for keepalive: trickled bytes are no sign of life. A write is
        counted per batch, when it begins: a subscriber that only receives is not idle.
        """
        latest = max(self._last_received, self._last_sent)
        return self.start + max(0.0, latest - self._opened)

    @property
    def pending_bytes(self) -> int:
        """What waits to be written to it, and the batch being written, at memory cost."""
        outbox = self.outbox
        return outbox.bytes + outbox.sending

    @property
    def closing_reason(self) -> str:
        """Why the session ended: the fatal error's code, ``shutting_down``, ``client_closed``
        (the client closed it), or ``connection_broken`` (the network or peer failed).
        """
        if self._fatal is not None:
            return self._fatal[0].value
        if self._shutting_down:
            return ErrorCode.SHUTTING_DOWN.value
        return "client_closed" if self._eof else "connection_broken"

    def __repr__(self) -> str:
        name = self.adapter.name
        label = f" {brief(name)}" if name else ""
        return f"<Connection {self.client_id}{label} {self.peer}>"

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve this client until it leaves, misbehaves, lags too far, or the server stops."""
        self._opened = trio.current_time()
        self.start = time.time()
        system = self.hub.system
        connected = False
        try:
            with self._session_scope:
                if not await self._handshake():
                    return
                log.debug("%r connected", self)
                stream = self.stream
                if type(stream) is trio.SocketStream and os.name == "posix":
                    # Not before: a TLS upgrade replaces the stream during the handshake.
                    self._socket = stream.socket
                    self.outbox.direct = self._write_now
                if system is not None:
                    system.client_connected(self)
                    connected = True
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_loop)
                    await self._write_loop()
                    self._reader_scope.cancel()
                if self._fatal is not None or self._shutting_down:
                    await _close_gracefully(self.stream)
        finally:
            if connected:
                assert system is not None
                system.client_disconnected(self)
            # Whatever is left (a replay under way, above all) frees its server-wide charge.
            self.outbox.clear()

    def begin_shutdown(self) -> None:
        """Tell the client the server is stopping; flush what is queued, then close."""
        if self._fatal is not None or self._shutting_down:
            return
        self._shutting_down = True
        self._reader_scope.cancel()
        self._handshake_scope.cancel()
        self.outbox.push_control(
            self.adapter.error_frame(ErrorCode.SHUTTING_DOWN, "the server is shutting down")
        )

    def abort(self) -> None:
        """Cut the connection at once with no error frame, as a network failure would."""
        self.accepting = False
        self._session_scope.cancel()

    def _stall(self) -> None:
        """Stop writing (for `broker.testing.faults`): the client looks as if it stopped reading.

        Deliveries keep being queued, so the slow-consumer policy applies as it would to a
        client that really stalled.
        """
        if self._stalled is None:
            self._stalled = trio.Event()

    def _resume(self) -> None:
        """Undo `_stall`."""
        if self._stalled is not None:
            self._stalled.set()
            self._stalled = None

    async def _handshake(self) -> bool:
        config = self.hub.config
        adapter = self.adapter
        if self.hub.closing:
            self._handshake_scope.cancel()
        done = False
        checked: Identity | AuthFailure | None = None
        auth = self.hub.auth
        try:
            with trio.move_on_after(config.handshake_timeout), self._handshake_scope:
                if isinstance(self.stream, trio.SSLStream) and not await tls_handshake(self):
                    return False
                greeting = adapter.greeting()
                if greeting is not None:
                    await self.stream.send_all(greeting)
                # NATS upgrades to TLS after its plaintext INFO (which says tls_required).
                upgrade: ssl.SSLContext | None = getattr(adapter, "tls_after_greeting", None)
                if upgrade is not None:
                    self.stream = trio.SSLStream(self.stream, upgrade, server_side=True)
                    if not await tls_handshake(self):
                        return False
                while not done:
                    data = await self.stream.receive_some(READ_SIZE)
                    adapter.receive_data(data)
                    done = adapter.handshake()
                    if not data and not done:
                        return False
                if auth is not None:
                    checked = await authenticate(self, auth, adapter.credentials)
        except RemoteProtocolError as error:
            await self._refuse(error.code, error.message)
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        if self._shutting_down or self.hub.closing:
            await self._refuse(ErrorCode.SHUTTING_DOWN, "the server is shutting down")
            return False
        if not done or (auth is not None and checked is None):
            await self._refuse(
                ErrorCode.HANDSHAKE_TIMEOUT,
                f"no HELLO within handshake_timeout ({config.handshake_timeout} s)",
            )
            return False
        if self.hub.auth is not auth:
            checked = recheck(self.hub.auth, checked)
        if isinstance(checked, AuthFailure):
            await self._refuse(ErrorCode.AUTH_FAILED, AUTH_FAILED_MESSAGE)
            return False
        permissions = None
        if checked is not None:
            self.identity = checked
            permissions = ClientPermissions(checked.permissions)
        adapter.admit(permissions)
        self.admitted = True
        now = trio.current_time()
        self._last_received = now
        self._last_ping = now
        return True

    async def _refuse(self, code: ErrorCode, message: str) -> None:
        """Send one fatal error before the session ever started, then close."""
        counters = self.hub.counters
        counters.protocol_errors += code.violation
        counters.refused_connections += 1
        if code is not ErrorCode.AUTH_FAILED:  # logged with its reason by the auth step
            self.peer_log.log(
                logging.INFO, self.peer, "%r refused: %s: %s", self, code.value, message
            )
        frame = self.adapter.error_frame(code, message)
        await refuse(self.stream, frame, self.hub.config.write_timeout)

    # -- reading --------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        """Read, hand each read to the adapter, repeat; only whole frames count as signs of life.

        A frame the client has begun must arrive whole within `frame_timeout`, or the client is
        closed with ERR ``stale_connection``: trickled bytes and half-sent frames would
        otherwise hold a connection slot, and up to a frame of buffer, forever.
        """
        adapter = self.adapter
        stream = self.stream
        receive = batched_receive(stream) or socket_receive(stream) or stream.receive_some
        checkpoint = trio.lowlevel.checkpoint
        frame_timeout = self.hub.config.frame_timeout
        #: When the bytes now buffered began to arrive (None: nothing is buffered). Bytes may be
        #: buffered already: the read that brought HELLO may have brought half a frame after it.
        partial_since: float | None = trio.current_time() if adapter.buffered else None
        with self._reader_scope:
            try:
                while True:
                    try:
                        found = self._process()
                        while found == DEFERRED and self._fatal is None:
                            await self.outbox.wait_replay_room()
                            found = self._process()
                    except RemoteProtocolError as error:
                        self.fail(error.code, error.message)
                        return
                    except Exception:
                        # A bug, not the client's fault: say so, once, and close only this one.
                        self.peer_log.log(
                            logging.ERROR,
                            self.peer,
                            "%r: internal error handling its frames",
                            self,
                            exc_info=True,
                        )
                        self.fail(ErrorCode.INTERNAL_ERROR, _INTERNAL_ERROR)
                        return
                    if self._fatal is not None:
                        return
                    if found:
                        now = trio.current_time()
                        self._last_received = now
                        partial_since = now if adapter.buffered else None
                        # Let the writers this batch woke send before we read again: that read
                        # usually finds nothing, and its EAGAIN and epoll registration would
                        # otherwise delay their sends. Two turns, because trio runs the tasks of
                        # one turn in random order: after the second, every writer woken above
                        # has run. A turn that left no writer anything to send (its deliveries,
                        # if any, all written here) and itself nothing to do goes straight back
                        # to reading, whose receive yields to the others in any case.
                        more = adapter.pending
                        if self._held.unsent or more:
                            await checkpoint()
                            await checkpoint()
                        rest = self.rest
                        if rest:
                            # Its last turn overran (one publish that matched tens of
                            # thousands of subscriptions cannot be split): it waits as long
                            # as it took, so every other client gets at least as much time.
                            self.rest = 0.0
                            await trio.sleep(rest)
                        if more:
                            continue
                        # Nothing left to decode: read now rather than take a turn that
                        # would find nothing (only this task adds to what the adapter holds).
                    if adapter.closed:
                        break
                    if partial_since is None:
                        data = await receive(READ_SIZE)
                    else:
                        with trio.move_on_at(partial_since + frame_timeout) as late:
                            data = await receive(READ_SIZE)
                        if late.cancelled_caught:
                            self.fail(
                                ErrorCode.STALE_CONNECTION,
                                f"a frame begun {frame_timeout} s ago is still incomplete "
                                f"({adapter.buffered} bytes of it arrived; frame_timeout)",
                            )
                            return
                    if partial_since is None and data:
                        partial_since = trio.current_time()
                    adapter.receive_data(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            self._eof = True
            self.accepting = False
            self.outbox.wake()

    def _process(self) -> str | bool:
        """One turn of the adapter, with the wakes of idle writers held until it ends.

        Then the writers' next batches go out from here (`HeldWakes.release`), without waiting:
        the turn is synchronous, so every delivery it made is this reader's.
        """
        held = self._held
        held.holding = True
        held.unsent = False
        try:
            return self.adapter.process()
        finally:
            held.release()

    def _write_now(self) -> bool:
        """Write the outbox's next batch without waiting, for an idle writer; True if all went.

        Only when the writer would send it straight away (`Outbox.take_direct`), with no drops
        to report first, and neither stalled nor closing. What the socket does not take goes
        back to the outbox, for the writer to send first under `write_timeout`; so does a batch
        whose write failed, for the writer's own send to find the broken connection.
        """
        sock = self._socket
        fd = -1 if sock is None else sock.fileno()  # -1 once closed: never a reused number
        if (
            fd < 0
            or self._stalled is not None
            or self._fatal is not None
            or self._shutting_down
            or not self.accepting
            or self.dropped_unreported
        ):
            return False
        outbox = self.outbox
        data = outbox.take_direct()
        if data is None:
            return False
        self._last_sent = trio.current_time()
        try:
            sent = os.write(fd, data)
        except OSError:  # BlockingIOError (the socket is full) or a broken connection
            sent = 0
        if sent == len(data):
            outbox.sent()
            return True
        outbox.put_back(data[sent:])
        return False

    def pong_received(self) -> None:
        """The client answered our PING: it is alive."""
        self._pings_outstanding = 0

    # -- the slow-consumer policy (called from publishers' tasks) -------------------------

    def overflow(self, sub: Subscription, head: bytes, tail: bytes) -> bool:
        """Apply the slow-consumer policy to a frame that did not fit; True if it was queued."""
        policy = self._policy
        outbox = self.outbox
        if policy == "drop_newest":
            self._dropped([sub.sid])
            return False
        if policy == "drop_oldest":
            sid_of = self.adapter.sid_of_head
            self._dropped([sid_of(old) for old in outbox.drop_oldest(len(head) + len(tail))])
            if outbox.offer(head, tail):
                return True
            self._dropped([sub.sid])
            return False
        self._mark_slow()
        self.fail(
            ErrorCode.SLOW_CONSUMER,
            f"slow consumer: outbox full ({outbox.messages} messages, {outbox.bytes} bytes "
            f"pending, {outbox.sending} bytes being written; limits {outbox.max_messages} "
            f"messages, {outbox.max_bytes} bytes)",
        )
        return False

    def _dropped(self, sids: list[Any]) -> None:
        if not sids:
            return
        count = len(sids)
        self._mark_slow()
        by_sid = self._dropped_by_sid
        for sid in sids:
            by_sid[sid] = by_sid.get(sid, 0) + 1
        self.dropped_unreported += count
        self.dropped_total += count
        self.hub.counters.dropped_messages += count
        self.outbox.wake()

    def _mark_slow(self) -> None:
        if self._slow:
            return
        self._slow = True
        self.hub.counters.slow_consumers += 1
        if self.hub.system is not None:
            self.hub.system.slow_consumer(self)
        self.peer_log.log(
            logging.WARNING,
            self.peer,
            "%r is a slow consumer (policy %s, limits %d messages / %d bytes)",
            self,
            self._policy,
            self.outbox.max_messages,
            self.outbox.max_bytes,
        )

    # -- errors -------------------------------------------------------------------------------

    def push_control(self, frame: bytes) -> None:
        """Queue a control frame (PONG, error); a client that never reads them is cut off."""
        outbox = self.outbox
        outbox.push_control(frame)
        if outbox.control_bytes > outbox.max_bytes:
            # A client that sends PINGs but never reads could grow the outbox with PONGs alone.
            self._mark_slow()
            self.fail(ErrorCode.SLOW_CONSUMER, "slow consumer: replies to this client pile up")

    def error(self, code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> None:
        """Report an error to the client: fatal ones (`ErrorCode.fatal`) close the connection."""
        if code.fatal:
            self.fail(code, message)
            return
        self.hub.counters.protocol_errors += code.violation
        log.debug("%r: %s: %s", self, code.value, message)
        self.push_control(self.adapter.error_frame(code, message, details))

    def fail(self, code: ErrorCode, message: str) -> None:
        """Close this connection after one fatal error; safe to call from any task, many times."""
        if self._fatal is not None:
            return
        self._fatal = (code, message)
        self.accepting = False
        self.hub.counters.protocol_errors += code.violation
        if code is not ErrorCode.SLOW_CONSUMER:
            self.peer_log.log(
                logging.INFO, self.peer, "%r closed: %s: %s", self, code.value, message
            )
        outbox = self.outbox
        if code is ErrorCode.SLOW_CONSUMER and outbox.mid_frame:
            # A direct write left half a frame for the writer (`_write_now`), to a client that
            # stopped reading: as below, cut it off now, and send no error after half a frame.
            outbox.clear()
            outbox.wake()
        else:
            # The rest of a frame a direct write began goes first, then the error.
            outbox.clear(keep_rest=True)
            outbox.push_control(self.adapter.error_frame(code, message))
        self._reader_scope.cancel()
        self._resume()  # a stalled writer must still send the error and close
        if code is ErrorCode.SLOW_CONSUMER and self._write_scope is not None:
            # The writer is stuck on a client that stopped reading: cut it off now rather than
            # after write_timeout. The error cannot follow a half-written frame, so none is sent.
            self._write_scope.cancel()

    # -- writing --------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        write_timeout = self.hub.config.write_timeout
        while True:
            # One scope serves every message until a deadline fires: entering and leaving a
            # scope per message cost more than the rest of the loop, and it sat between a
            # publisher waking this writer and the send.
            with trio.CancelScope() as scope:
                if await self._write_batches(scope):
                    return
            if self._write_scope is None:
                continue  # An idle deadline passed: look again under a fresh scope.
            # Part of a frame may be on the wire: this connection can never be written again.
            self._write_scope = None
            self.accepting = False
            if self._fatal is None:
                self._mark_slow()
                self.peer_log.log(
                    logging.INFO,
                    self.peer,
                    "%r closed: write_timeout (%s s) expired",
                    self,
                    write_timeout,
                )
                self._fatal = (ErrorCode.SLOW_CONSUMER, "write_timeout expired")
            return

    async def _write_batches(self, scope: trio.CancelScope) -> bool:
        """Send what is queued until the session ends (True) or `scope` must be replaced (False).

        The scope's deadline is the keepalive deadline while idle and the write deadline while
        sending (`_write_scope` is set only then). When it fires while we wait, the scope
        catches it and `_write_loop` tells the two apart; when it fired just as a delivery woke
        us, we return False before sending, so a keepalive deadline never cuts a send short.
        """
        config = self.hub.config
        outbox = self.outbox
        send_all = self.stream.send_all
        write_timeout = config.write_timeout
        ping_interval = config.ping_interval
        while True:
            if not outbox:
                if self._fatal is not None or self._eof or self._shutting_down:
                    return True
                deadline = max(self._last_received, self._last_ping) + ping_interval
                if trio.current_time() >= deadline:
                    self._keepalive()
                    continue
                scope.deadline = deadline
                await outbox.wait()
                continue
            if self._stalled is not None:
                scope.deadline = math.inf
                await self._stalled.wait()
                continue
            if scope.cancel_called:
                return False
            if self.dropped_unreported:
                self._report_drops()
            data = outbox.take_batch()
            now = trio.current_time()
            self._last_sent = now  # for monitoring; the clock is read here anyway
            scope.deadline = now + write_timeout
            self._write_scope = scope
            try:
                await send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._write_scope = None
                self.accepting = False
                return True
            self._write_scope = None
            outbox.sent()

    def _report_drops(self) -> None:
        count = self.dropped_unreported
        by_sid = sorted(self._dropped_by_sid.items())
        self.dropped_unreported = 0
        self._dropped_by_sid = {}
        frame = self.adapter.drops_frame(count, self.dropped_total, by_sid)
        if frame is not None:
            self.outbox.push_control(frame)

    def _keepalive(self) -> None:
        if self._pings_outstanding >= self.hub.config.max_pings_outstanding:
            self.fail(
                ErrorCode.STALE_CONNECTION,
                f"no answer to {self._pings_outstanding} PINGs (max_pings_outstanding)",
            )
            return
        self._pings_outstanding += 1
        self._last_ping = trio.current_time()
        self.outbox.push_control(self.adapter.ping_frame())
