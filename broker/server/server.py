"""The server: listeners, the nursery that supervises every connection, and shutdown.

`Server.serve` runs in any Trio nursery (tests start it with `await nursery.start(server.serve)`
and get the `Server` back once it listens); `run` wraps it for the command line with signal
handling. Shutdown is structured: stop accepting, tell every client, let each writer flush what
is already queued for up to `shutdown_grace`, then cancel whatever is left.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import math
import os
import resource
import secrets
import signal
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, final

import trio

from .._memory import RELEASE_INTERVAL, release_free_memory, settle_heap
from .._rlimit import raise_fd_limit
from ..auth import Authenticator
from ..config import Config, ConfigError, load_config
from ..errors import ErrorCode
from ..hub import Hub
from ..peerlog import PeerLog
from ..stats import Statistics
from .monitor import Monitor
from .native import NativeAdapter, refusal_frame
from .nats import NatsAdapter, nats_info, nats_refusal
from .security import apply_auth
from .sysevents import SystemEvents
from .tls import server_context
from .transport import Transport, peer_address, refuse
from .transport import log as transport_log

if TYPE_CHECKING:
    from ..cluster.link import ClusterLink

__all__ = ["ListenError", "Server", "format_address", "run", "serve"]

log = logging.getLogger("broker.server")


def format_address(host: str, port: int) -> str:
    """`host:port`, with IPv6 hosts in brackets as URLs need them."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ListenError(OSError):
    """A listener could not be opened: the address asked for, and the system's reason.

    An `OSError` with the original's ``errno`` and ``strerror`` (the original is its
    ``__cause__``), so ``except OSError`` and ``error.errno == errno.EADDRINUSE`` keep working;
    what it adds is the address, which neither ``bind`` nor ``getaddrinfo`` says.

    Attributes:
        host: The host as configured (a name or an IP literal).
        port: The port tried (the one the first host got, when the config asked for 0).
        resolving: True when the host name could not be resolved, rather than bound.
    """

    def __init__(self, host: str, port: int, reason: OSError) -> None:
        super().__init__(reason.errno, reason.strerror or str(reason))
        self.host = host
        self.port = port
        self.resolving = isinstance(reason, socket.gaierror)

    def __str__(self) -> str:
        # "Address already in use" reads better mid-sentence as "address already in use".
        reason = str(self.strerror)
        if reason[:1].isupper() and reason[1:2].islower():
            reason = reason[0].lower() + reason[1:]
        if self.resolving:
            reason = f"cannot resolve the host name ({reason})"
        return f"cannot listen on {format_address(self.host, self.port)}: {reason}"


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

    def __init__(self, config: Config | None = None, *, reuse_port: bool = False) -> None:
        self.config = config if config is not None else Config()
        #: Listen with SO_REUSEPORT, so several processes share the port (``serve --workers``).
        self.reuse_port = reuse_port
        self.server_id = secrets.token_hex(8)
        #: When it was made, in seconds since the epoch (monitoring's ``start``).
        self.start = time.time()
        #: The native listener's TLS context (``[tls]``), or None for plain TCP; a reload
        #: replaces it for the connections that follow.
        self.tls_context: ssl.SSLContext | None = None
        if self.config.tls is not None:
            self.tls_context = server_context(self.config.tls)
        self.hub = Hub(self.config, server_id=self.server_id)
        _warn_plain_text(self.hub.auth)
        #: Checks /healthz runs besides shutdown: each returns why the server is unhealthy, or
        #: None (a cluster link adds one for its state).
        self.health_checks: list[Callable[[], str | None]] = []
        self.monitor = Monitor(self)
        #: The server's own origin on $SYS: events about clients, answers to $SYS.REQ.
        self.system = SystemEvents(self)
        #: Where the monitoring endpoint listens, once it does; None when it is off.
        self.monitor_address: tuple[str, int] | None = None
        #: The live connections, for shutdown (and for `broker.testing.faults`).
        self.transports: set[Transport] = set()
        #: Lines about clients, rate-limited per host across every connection.
        self.peer_log = PeerLog(
            transport_log,
            lines_per_minute=self.config.log_peer_lines_per_minute,
            clock=trio.current_time,
        )
        self._next_client_id = 1
        #: A client left since memory was last handed back (see `_release_memory`).
        self._departed = False
        self.addresses: list[tuple[str, int]] = []
        #: Where the NATS listener ([nats]) listens; empty when it is off.
        self.nats_addresses: list[tuple[str, int]] = []
        self._nats_info: dict[str, Any] = {}
        self._shutdown = trio.Event()
        self._stopped = trio.Event()
        #: The link to the other nodes when the config has ``[cluster]``, else None (and
        #: coredis is never imported).
        self.cluster: ClusterLink | None = None
        if self.config.cluster is not None:
            from ..cluster.link import ClusterLink

            link = self.cluster = ClusterLink(
                self.hub, self.config.cluster, self.config.cluster.name or self.server_id
            )
            self.health_checks.append(link.health)
            link.on_state = self.system.cluster_state
            # $SYS.REQ.SERVER.PING and this server's own requests reach it from any node.
            link.announce(self.system.subscriptions.values())

    @property
    def url(self) -> str:
        """The URL of the first listening address, e.g. `tcp://127.0.0.1:5878`
        (``tls://`` when ``[tls]`` is set).
        """
        if not self.addresses:
            raise RuntimeError("the server is not listening yet")
        scheme = "tcp" if self.tls_context is None else "tls"
        return f"{scheme}://" + format_address(*self.addresses[0])

    @property
    def nats_url(self) -> str:
        """The NATS listener's URL, e.g. `nats://127.0.0.1:4222` (the ``[nats]`` section).

        Raises:
            RuntimeError: The server is not listening yet, or ``[nats]`` is not enabled.
        """
        if not self.nats_addresses:
            raise RuntimeError("the NATS listener is not open ([nats] enabled = false?)")
        return "nats://" + format_address(*self.nats_addresses[0])

    @property
    def port(self) -> int:
        """The port every listener is bound to (resolved when the config asked for 0)."""
        if not self.addresses:
            raise RuntimeError("the server is not listening yet")
        return self.addresses[0][1]

    @property
    def monitor_url(self) -> str | None:
        """The monitoring endpoint's URL, e.g. `http://127.0.0.1:8222`; None when it is off."""
        if self.monitor_address is None:
            return None
        return "http://" + format_address(*self.monitor_address)

    def statistics(self) -> Statistics:
        """A snapshot of the counters; see `Statistics`."""
        return self.hub.statistics()

    def reload(self, config: Config) -> None:
        """Apply `config`'s ``[auth]`` and ``[tls]`` to this running server (SIGHUP).

        Nobody is dropped for the reload itself: new connections get the new rules and
        certificate; open ones get their new permissions, lose the subscriptions those refuse
        (``permission_denied``), and are closed with ``auth_failed`` only if their user, token
        or password is gone. Other settings take effect at the next restart (a warning says
        so). Nothing changes if the new certificate cannot be loaded.

        Raises:
            ConfigError: ``[tls]`` was added or removed (that needs a restart), or its files
                cannot be loaded; nothing was changed.
        """
        old = self.config
        if (config.tls is None) != (old.tls is None):
            raise ConfigError(
                "cannot be added or removed by a reload: restart the broker", key="[tls]"
            )
        tls_context = server_context(config.tls) if config.tls is not None else None
        auth = Authenticator(config.auth) if config.auth is not None else None
        unchanged = dataclasses.replace(config, auth=old.auth, tls=old.tls)
        if unchanged != old:
            log.warning("reload: only [auth] and [tls] are reloaded; other changes need a restart")
        self.config = dataclasses.replace(old, auth=config.auth, tls=config.tls)
        self.hub.config = self.config
        self.tls_context = tls_context
        self.hub.auth = auth
        _warn_plain_text(auth)
        closed, removed = apply_auth(self.hub, self.transports)
        log.info(
            "reloaded [auth] and [tls]: %d clients closed, %d subscriptions removed",
            closed,
            removed,
        )

    def reload_file(self, path: str | os.PathLike[str]) -> bool:
        """`reload` from a config file; an invalid one changes nothing and is logged.

        Returns:
            Whether the reload was applied.
        """
        try:
            self.reload(load_config(path))
        except ConfigError as error:
            log.error("reload refused, nothing changed: %s", error)
            return False
        return True

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

        Raises:
            ListenError: A listener cannot be opened (port in use, unknown host); an
                `OSError` that names the address.
        """
        listeners = await self._open_listeners()
        try:
            nats_listeners = await self._open_nats_listener()
        except BaseException:
            await self._close_listeners(listeners)
            raise
        listeners += nats_listeners
        try:
            monitoring = await self._open_monitoring()
            async with trio.open_nursery() as services:
                # Monitoring lives as long as the clients do, so /healthz says 503 while they
                # drain; it stops once they are gone.
                await services.start(self.system.run)
                if monitoring:
                    # Imported only when on: hypercorn and prometheus-client take 0.1 s to load.
                    from .http import serve_http

                    await services.start(serve_http, self, monitoring)
                    log.info("monitoring on %s", self.monitor_url)
                await self._serve_clients(listeners, nats_listeners, task_status)
                services.cancel_scope.cancel()
        finally:
            await self._close_listeners(listeners)
            # As fields, so JSON logs get them as an object ("stats") and text as key=value.
            stats = self.statistics().as_dict()
            log.info("broker %s stopped", self.server_id, extra={"stats": stats})
            self._stopped.set()

    async def _open_monitoring(self) -> list[trio.SocketListener]:
        """The monitoring endpoint's listeners, if it is enabled (`serve_http` closes them)."""
        settings = self.config.monitoring
        if not settings.enabled:
            return []
        try:
            opened = await trio.open_tcp_listeners(settings.port, host=settings.host)
        except OSError as error:
            raise ListenError(settings.host, settings.port, error) from error
        sockname = opened[0].socket.getsockname()
        self.monitor_address = (sockname[0], sockname[1])
        return opened

    async def _serve_clients(
        self,
        listeners: list[trio.SocketListener],
        nats_listeners: list[trio.SocketListener],
        task_status: trio.TaskStatus[Server],
    ) -> None:
        """Accept and serve clients until shutdown, then let them drain."""
        async with trio.open_nursery() as handlers:
            if self.cluster is not None:
                # Before accepting: a client's first subscription replays the cluster's
                # retained messages, and its first request sees the cluster's interest.
                await handlers.start(self.cluster.run)
            async with trio.open_nursery() as acceptors:
                for listener in listeners:
                    is_nats = listener in nats_listeners
                    acceptors.start_soon(self._accept_loop, listener, handlers, is_nats)
                acceptors.start_soon(self._release_memory)
                log.info(
                    "broker %s listening on %s",
                    self.server_id,
                    ", ".join(format_address(*address) for address in self.addresses),
                )
                if self.nats_addresses:
                    log.info("NATS clients: %s", self.nats_url)
                task_status.started(self)
                await self._shutdown.wait()
                acceptors.cancel_scope.cancel()
            await self._close_listeners(listeners)
            self._begin_shutdown(handlers)

    async def _open_listeners(self) -> list[trio.SocketListener]:
        listeners: list[trio.SocketListener] = []
        port = self.config.port
        try:
            for host in self.config.hosts:
                try:
                    if self.reuse_port:
                        from .workers import open_reuse_port_listeners

                        opened = await open_reuse_port_listeners(port, host)
                    else:
                        opened = await trio.open_tcp_listeners(port, host=host)
                except OSError as error:
                    raise ListenError(host, port, error) from error
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

    async def _open_nats_listener(self) -> list[trio.SocketListener]:
        section = self.config.nats
        if not section.enabled:
            return []
        try:
            opened = await trio.open_tcp_listeners(section.port, host=section.host)
        except OSError as error:
            raise ListenError(section.host, section.port, error) from error
        self.nats_addresses = [
            (listener.socket.getsockname()[0], listener.socket.getsockname()[1])
            for listener in opened
        ]
        host, port = self.nats_addresses[0]
        self._nats_info = nats_info(self.hub, host=host, port=port)
        return opened

    @staticmethod
    async def _close_listeners(listeners: list[trio.SocketListener]) -> None:
        for listener in listeners:
            await trio.aclose_forcefully(listener)

    async def _release_memory(self) -> None:
        """Every `RELEASE_INTERVAL` after clients left, hand what they freed back to the system,
        so the broker's RSS falls back once attackers (or a burst of big clients) are gone."""
        while True:
            await trio.sleep(RELEASE_INTERVAL)
            if self._departed:
                self._departed = False
                release_free_memory()

    async def _accept_loop(
        self, listener: trio.SocketListener, handlers: trio.Nursery, nats: bool
    ) -> None:
        handle = functools.partial(self._handle, nats=nats)
        await trio.serve_listeners(handle, [listener], handler_nursery=handlers)

    def _begin_shutdown(self, handlers: trio.Nursery) -> None:
        grace = self.config.shutdown_grace
        self.hub.closing = True
        transports = list(self.transports)
        log.info("shutting down: telling %d clients, up to %s s to flush", len(transports), grace)
        handlers.cancel_scope.deadline = trio.current_time() + grace if grace else -math.inf
        for transport in transports:
            transport.begin_shutdown()
        if self.cluster is not None:
            self.cluster.stop()

    async def _handle(self, stream: trio.abc.Stream, *, nats: bool = False) -> None:
        tls_context = self.tls_context
        if tls_context is not None and not nats:
            # The handshake itself runs in the transport, under the handshake deadline.
            stream = trio.SSLStream(stream, tls_context, server_side=True)
        hub = self.hub
        counters = hub.counters
        limit = self.config.max_connections
        try:
            address = peer_address(stream)
            peer = format_address(*address)
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        try:
            if counters.connections >= limit:
                counters.refused_connections += 1
                self.peer_log.log(
                    logging.WARNING,
                    peer,
                    "refused %s: max_connections (%d) reached",
                    peer,
                    limit,
                    logger=log,
                )
                message = f"the server holds max_connections ({limit}) already"
                if nats:
                    frame = nats_refusal(self._nats_info, ErrorCode.MAX_CONNECTIONS, message)
                else:
                    frame = refusal_frame(ErrorCode.MAX_CONNECTIONS, message)
                await refuse(stream, frame, self.config.write_timeout)
                return
            counters.connections += 1
            counters.total_connections += 1
            transport = Transport(
                hub, stream, peer, self._next_client_id, address=address, peer_log=self.peer_log
            )
            self._next_client_id += 1
            adapter: NativeAdapter | NatsAdapter
            if nats:
                adapter = NatsAdapter(
                    hub,
                    transport,
                    self._nats_info,
                    max_control_line=self.config.nats.max_control_line,
                    tls=tls_context,
                )
            else:
                adapter = NativeAdapter(hub, transport)
            transport.adapter = adapter
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
                self._departed = True
                log.debug("%r closed", transport)
        except Exception:
            # A bug in one connection must never reach the listener or the other clients.
            self.peer_log.log(
                logging.ERROR,
                peer,
                "internal error serving %s; closing that connection",
                peer,
                exc_info=True,
                logger=log,
            )
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


def _listen_hint(error: ListenError) -> str:
    """What the person who ran `broker serve` can do about `error`, for the end of its line."""
    if error.resolving:
        return "check the name, or give an IP address (--host 127.0.0.1 for this machine only)"
    if error.errno == errno.EADDRINUSE:
        return "is another broker running? stop it, or pick another --port"
    if error.errno == errno.EADDRNOTAVAIL:
        return (
            "that address is not one of this machine's; pick another --host"
            " (127.0.0.1 for this machine only, 0.0.0.0 or :: for every interface)"
        )
    if error.errno in (errno.EACCES, errno.EPERM) and 0 < error.port < 1024:
        return "ports below 1024 need privileges; pick a --port of 1024 or above"
    if error.errno == errno.EAFNOSUPPORT:
        return "this machine has no network of that kind (IPv4 or IPv6); drop that --host"
    return "check --host and --port (or [server] in the config file)"


def _warn_plain_text(auth: Authenticator | None) -> None:
    if auth is not None:
        for where in auth.plain_text_secrets():
            log.warning("%s is in plain text: store a bcrypt hash (`broker passwd`)", where)


def run(
    config: Config | None = None,
    *,
    config_path: str | os.PathLike[str] | None = None,
    reuse_port: bool = False,
) -> int:
    """Serve until SIGINT or SIGTERM, then shut down gracefully; returns the exit code.

    The first signal starts a graceful shutdown (0 when it completes); a second one exits at
    once (1). SIGHUP reloads ``[auth]`` and ``[tls]`` from `config_path` (`Server.reload`;
    without a path it is logged and ignored). A listener that cannot be opened is one logged
    line, what failed and what to do, and returns 1: no traceback, since nothing in it would
    help whoever ran the command.
    """
    try:
        server = Server(config, reuse_port=reuse_port)
    except ConfigError as error:
        log.error("%s", error)
        return 2
    _raise_fd_limit(server.config.max_connections)
    forced = False
    failed: ListenError | None = None

    async def watch_signals(receiver: AsyncIterator[int], cancel_scope: trio.CancelScope) -> None:
        nonlocal forced
        async for signum in receiver:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                if config_path is None:
                    log.warning("received SIGHUP: no config file to reload (--config)")
                else:
                    log.info("received SIGHUP: reloading [auth] and [tls] from %s", config_path)
                    server.reload_file(config_path)
                continue
            if not server._shutdown.is_set():
                log.info("received %s: shutting down (send it again to exit at once)", name)
                server.shutdown()
            else:
                log.warning("received %s again: exiting at once", name)
                forced = True
                cancel_scope.cancel()

    async def main() -> None:
        nonlocal failed
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        with trio.open_signal_receiver(*signals) as receiver:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_signals, receiver, nursery.cancel_scope)
                # Caught here, inside the nursery: past it, trio wraps the error in an
                # ExceptionGroup. start() raises what serve() raised before listening.
                try:
                    await nursery.start(serve_then_stop, nursery.cancel_scope)
                except ListenError as error:
                    failed = error
                    nursery.cancel_scope.cancel()
                    return
                frozen = settle_heap()
                log.debug("start-up made %d objects, now out of the collector's way", frozen)

    async def serve_then_stop(
        cancel_scope: trio.CancelScope, task_status: trio.TaskStatus[Server]
    ) -> None:
        await server.serve(task_status=task_status)
        cancel_scope.cancel()

    try:
        trio.run(main)
    except KeyboardInterrupt:
        return 130
    if failed is not None:
        log.error("%s; %s", failed, _listen_hint(failed))
        return 1
    return 1 if forced else 0
