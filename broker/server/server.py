"""The server: listeners, the nursery that supervises every connection, and shutdown.

`Server.serve` runs in any Trio nursery (tests start it with `await nursery.start(server.serve)`
and get the `Server` back once it listens); `run` wraps it for the command line with signal
handling. Shutdown is structured: stop accepting, tell every client, let each writer flush what
is already queued for up to `shutdown_grace`, then cancel whatever is left.
"""

from __future__ import annotations

import logging
import math
import resource
import secrets
import signal
from collections.abc import AsyncIterator
from typing import final

import trio

from .._rlimit import raise_fd_limit
from ..config import Config
from ..errors import ErrorCode
from ..hub import Hub
from ..stats import Statistics
from .native import NativeAdapter, refusal_frame
from .transport import Transport, peer_address, refuse

__all__ = ["Server", "format_address", "run", "serve"]

log = logging.getLogger("broker.server")


def format_address(host: str, port: int) -> str:
    """`host:port`, with IPv6 hosts in brackets as URLs need them."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@final
class Server:
    """One broker: its listeners, its connections and the hub they share.

    Example::

        async with trio.open_nursery() as nursery:
            server = await nursery.start(Server(Config(port=0)).serve)
            print(server.url)
            ...
            server.shutdown()
    """

    def __init__(self, config: Config | None = None) -> None:
        self.config = config if config is not None else Config()
        self.server_id = secrets.token_hex(8)
        self.hub = Hub(self.config, server_id=self.server_id)
        #: The live connections, for shutdown (and for `broker.testing.faults`).
        self.transports: set[Transport] = set()
        self._next_client_id = 1
        self.addresses: list[tuple[str, int]] = []
        self._shutdown = trio.Event()
        self._stopped = trio.Event()

    @property
    def url(self) -> str:
        """The URL of the first listening address, e.g. `tcp://127.0.0.1:5878`."""
        if not self.addresses:
            raise RuntimeError("the server is not listening yet")
        return "tcp://" + format_address(*self.addresses[0])

    @property
    def port(self) -> int:
        """The port every listener is bound to (resolved when the config asked for 0)."""
        if not self.addresses:
            raise RuntimeError("the server is not listening yet")
        return self.addresses[0][1]

    def statistics(self) -> Statistics:
        """A snapshot of the counters; see `Statistics`."""
        return self.hub.statistics()

    def shutdown(self) -> None:
        """Ask `serve` to stop gracefully; returns at once (await `wait_stopped` to follow)."""
        self._shutdown.set()

    async def wait_stopped(self) -> None:
        """Wait until `serve` has returned."""
        await self._stopped.wait()

    async def serve(
        self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until `shutdown()` or cancellation.

        Calls `task_status.started(self)` once every listener is bound, so `self.url` is valid.
        Raises OSError if a listener cannot be bound (port in use, unknown host).
        """
        listeners = await self._open_listeners()
        try:
            async with trio.open_nursery() as handlers:
                async with trio.open_nursery() as acceptors:
                    for listener in listeners:
                        acceptors.start_soon(self._accept_loop, listener, handlers)
                    log.info(
                        "broker %s listening on %s",
                        self.server_id,
                        ", ".join(format_address(*address) for address in self.addresses),
                    )
                    task_status.started(self)
                    await self._shutdown.wait()
                    acceptors.cancel_scope.cancel()
                await self._close_listeners(listeners)
                self._begin_shutdown(handlers)
        finally:
            await self._close_listeners(listeners)
            log.info("broker %s stopped: %s", self.server_id, self.statistics().as_dict())
            self._stopped.set()

    async def _open_listeners(self) -> list[trio.SocketListener]:
        listeners: list[trio.SocketListener] = []
        port = self.config.port
        try:
            for host in self.config.hosts:
                opened = await trio.open_tcp_listeners(port, host=host)
                listeners.extend(opened)
                # With port 0, every further host must share the port the first one got.
                port = opened[0].socket.getsockname()[1]
        except BaseException:
            await self._close_listeners(listeners)
            raise
        self.addresses = [
            (listener.socket.getsockname()[0], listener.socket.getsockname()[1])
            for listener in listeners
        ]
        return listeners

    @staticmethod
    async def _close_listeners(listeners: list[trio.SocketListener]) -> None:
        for listener in listeners:
            await trio.aclose_forcefully(listener)

    async def _accept_loop(self, listener: trio.SocketListener, handlers: trio.Nursery) -> None:
        await trio.serve_listeners(self._handle, [listener], handler_nursery=handlers)

    def _begin_shutdown(self, handlers: trio.Nursery) -> None:
        grace = self.config.shutdown_grace
        self.hub.closing = True
        transports = list(self.transports)
        log.info("shutting down: telling %d clients, up to %s s to flush", len(transports), grace)
        handlers.cancel_scope.deadline = trio.current_time() + grace if grace else -math.inf
        for transport in transports:
            transport.begin_shutdown()

    async def _handle(self, stream: trio.abc.Stream) -> None:
        hub = self.hub
        counters = hub.counters
        limit = self.config.max_connections
        try:
            peer = format_address(*peer_address(stream))
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        try:
            if counters.connections >= limit:
                counters.refused_connections += 1
                log.warning("refused %s: max_connections (%d) reached", peer, limit)
                message = f"the server holds max_connections ({limit}) already"
                frame = refusal_frame(ErrorCode.MAX_CONNECTIONS, message)
                await refuse(stream, frame, self.config.write_timeout)
                return
            counters.connections += 1
            counters.total_connections += 1
            transport = Transport(hub, stream, peer, self._next_client_id)
            self._next_client_id += 1
            adapter = transport.adapter = NativeAdapter(hub, transport)
            self.transports.add(transport)
            try:
                await transport.run()
            finally:
                transport.accepting = False
                self.transports.discard(transport)
                with trio.CancelScope(shield=True):
                    while hub.remove_all(adapter, limit=_TEARDOWN_BATCH):
                        await trio.lowlevel.checkpoint()
                counters.connections -= 1
                log.debug("%r closed", transport)
        except Exception:
            # A bug in one connection must never reach the listener or the other clients.
            log.exception("internal error serving %s; closing that connection", peer)
        finally:
            await trio.aclose_forcefully(stream)


async def serve(
    config: Config | None = None,
    *,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a broker until cancelled; `task_status.started` gets the listening `Server`."""
    await Server(config).serve(task_status=task_status)


#: Subscriptions a closed connection sheds between two yields to the other tasks: about a
#: millisecond of work, so closing a connection with 65,536 subscriptions delays nobody.
_TEARDOWN_BATCH = 512

#: File descriptors kept for listeners, logs and the like beyond one per client.
_FD_HEADROOM = 64


def _raise_fd_limit(max_connections: int) -> None:
    """Lift the soft RLIMIT_NOFILE so `max_connections` clients fit, as far as the hard limit.

    The default soft limit (often 1024) would otherwise make accept() fail long before the
    configured connection limit; the warning says what the operator must raise instead.
    """
    wanted = max_connections + _FD_HEADROOM
    limit = raise_fd_limit(wanted)
    if limit != resource.RLIM_INFINITY and limit < wanted:
        log.warning(
            "the file descriptor limit (%d) is below max_connections (%d) plus %d; "
            "raise it (ulimit -n) or lower max_connections",
            limit,
            max_connections,
            _FD_HEADROOM,
        )


def run(config: Config | None = None) -> int:
    """Serve until SIGINT or SIGTERM, then shut down gracefully; returns the exit code.

    The first signal starts a graceful shutdown (0 when it completes); a second one exits at
    once (1). A listener that cannot be bound logs why and returns 1.
    """
    server = Server(config)
    _raise_fd_limit(server.config.max_connections)
    forced = False

    async def watch_signals(receiver: AsyncIterator[int], cancel_scope: trio.CancelScope) -> None:
        nonlocal forced
        async for signum in receiver:
            name = signal.Signals(signum).name
            if not server._shutdown.is_set():
                log.info("received %s: shutting down (send it again to exit at once)", name)
                server.shutdown()
            else:
                log.warning("received %s again: exiting at once", name)
                forced = True
                cancel_scope.cancel()

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as receiver:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_signals, receiver, nursery.cancel_scope)
                await server.serve()
                nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except OSError as error:
        log.error("cannot listen: %s", error)
        return 1
    except KeyboardInterrupt:
        return 130
    return 1 if forced else 0
