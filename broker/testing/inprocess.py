"""A broker in the test's own process: in a Trio nursery, or in a thread with its own Trio loop.

Tests of a service that talks to broker need a real broker, started and stopped per test, with a
way to break things on purpose. Two handles give the same controls:

- `running_broker` (Trio code) serves in a nursery of the caller's task and yields a
  `RunningBroker`; leaving the block shuts the broker down.
- `BrokerThread` (sync and asyncio code; Trio code too) runs `running_broker` in a background
  thread with a Trio loop of its own and calls into that loop, so each method returns once the
  broker has done it.

Both listen on 127.0.0.1 with a port the OS picks (``port=0``) unless told otherwise, and both
offer fault injection: `drop_client` (cut a named client's connection with no ERR, as a network
failure would), `stall_client` / `resume_client` (stop writing to it, so it becomes a slow
consumer under the configured policy) and `restart` (shut down gracefully, as on SIGTERM, and
serve again on the same port: the listeners set SO_REUSEADDR, so the port is free at once).
`stop_server` and `start_server` are the two halves of `restart`, for a test that needs the
broker gone for a while. A restart starts a new `broker.Server`: its statistics start from zero.
`wait_for_client` waits until a named service is (back) up, with its subscriptions if asked.

Clients made with the handles' `connect` reconnect quickly (`TEST_CLIENT_OPTIONS`), which keeps
restart and drop tests fast; any option of `broker.connect` may be passed instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

import trio

from .._checks import check_timeout
from .._concurrency import single_leaf
from .._portal import Portal, PortalClosed
from ..client import Client, connect
from ..client.deadlines import deadline
from ..config import Config, MonitoringConfig, NatsConfig, config_from_mapping, config_to_mapping
from ..server import Server
from ..stats import Statistics
from . import faults
from .capture import DEFAULT_WAIT_TIMEOUT, Capture, SyncCapture, capture

if TYPE_CHECKING:
    from ..sync import SyncClient

__all__ = [
    "CAPTURE_CLIENT_NAME",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "TEST_CLIENT_OPTIONS",
    "WAIT_POLL",
    "BrokerThread",
    "RunningBroker",
    "config_for_tests",
    "running_broker",
    "start_broker_thread",
]

log = logging.getLogger("broker.testing")

T = TypeVar("T")

#: Seconds `BrokerThread.start` waits for the broker to listen.
START_TIMEOUT: Final = 10.0
#: Seconds `BrokerThread.stop` waits for the thread beyond the configured ``shutdown_grace``.
STOP_TIMEOUT: Final = 5.0
#: Seconds between looks at the broker's connections in `RunningBroker.wait_for_client`.
WAIT_POLL: Final = 0.002
#: The name the capture helpers' own clients give in HELLO.
CAPTURE_CLIENT_NAME: Final = "broker.testing.capture"
#: Defaults for clients made by `RunningBroker.connect` and `BrokerThread.connect`: reconnect
#: within milliseconds, so drop and restart tests do not wait out the production backoff.
TEST_CLIENT_OPTIONS: Final[dict[str, Any]] = {
    "reconnect_delay": 0.01,
    "max_reconnect_delay": 0.1,
}

_CONFIG_FIELDS: Final = frozenset(field.name for field in dataclasses.fields(Config))


#: Test brokers serve monitoring on a free loopback port, so a test can assert on /varz.
_TEST_MONITORING: Final = MonitoringConfig(enabled=True, port=0)


def config_for_tests(config: Config | None = None, **overrides: Any) -> Config:
    """The config a test broker runs with: `config` (or 127.0.0.1, port 0) with `overrides`.

    Overrides name a setting either way: as the `broker.Config` field (``max_payload=1024``,
    ``slow_consumer_policy="drop_oldest"``), or as its key in a config file such as
    config/broker.toml, dotted (``**{"slow_consumer.policy": "drop_oldest"}``) or as tables
    (``toml={"slow_consumer": {"policy": "drop_oldest"}}``). File keys are read by
    `broker.config.config_from_mapping`, with its checks and messages; field names are applied
    after them.

    Args:
        config: A base config; None means the defaults with ``hosts=("127.0.0.1",)`` and
            ``port=0`` (a free port, so tests never collide), monitoring on a free loopback
            port (``monitor_url``), and the NATS listener on 127.0.0.1 and a free port too
            (``nats_url``), so nats.py clients can be tested.
        overrides: `broker.Config` fields, dotted file keys, and ``toml``.

    Raises:
        TypeError: An override names no `broker.Config` field (and has no dot), or ``toml`` is
            not a mapping of tables.
        ConfigError: An override breaks its rule, or a file key is unknown (with the nearest
            known one as a hint).
    """
    fields: dict[str, Any] = {}
    layout: dict[str, Any] = {}
    for key, value in overrides.items():
        if key == "toml":
            if not isinstance(value, Mapping):
                raise TypeError(
                    f"toml= takes the config file's tables as a dict, e.g. "
                    f'{{"slow_consumer": {{"policy": "drop_oldest"}}}}, got {value!r}'
                )
            _merge(layout, value)
        elif "." in key:
            *sections, name = key.split(".")
            table = layout
            for section in sections:
                table = table.setdefault(section, {})
            table[name] = value
        else:
            fields[key] = value
    unknown = sorted(set(fields) - _CONFIG_FIELDS)
    if unknown:
        raise TypeError(
            f"broker.Config has no field {unknown[0]!r} (overrides: {unknown}); a key of the "
            'config file is given dotted, e.g. **{"slow_consumer.policy": "drop_oldest"}'
        )
    if config is None:
        config = Config(
            hosts=("127.0.0.1",),
            port=0,
            monitoring=_TEST_MONITORING,
            nats=NatsConfig(enabled=True, host="127.0.0.1", port=0),
        )
    if layout:
        merged = config_to_mapping(config)
        _merge(merged, layout)
        config = config_from_mapping(merged, source="the test's config overrides")
    return dataclasses.replace(config, **fields) if fields else config


def _merge(into: dict[str, Any], tables: Mapping[str, Any]) -> None:
    """Merge nested `tables` into `into`, table by table; a value replaces what was there."""
    for key, value in tables.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        elif isinstance(value, Mapping):
            into[key] = {}
            _merge(into[key], value)
        else:
            into[key] = value


class _Reconnects:
    """Counts one capture client's reconnections, so `RunningBroker.restart` can wait for it."""

    __slots__ = ("_event", "closed", "count")

    def __init__(self) -> None:
        self.count = 0
        self.closed = False
        self._event = trio.Event()

    def bump(self) -> None:
        self.count += 1
        self._event.set()
        self._event = trio.Event()

    def close(self) -> None:
        self.closed = True
        self._event.set()

    async def wait_past(self, count: int) -> None:
        while self.count <= count and not self.closed:
            await self._event.wait()


@final
class RunningBroker:
    """A broker serving in a Trio nursery; made by `running_broker`.

    Every method runs in the broker's own Trio loop: call them from Trio code in that loop.
    """

    __slots__ = ("_captures", "_nursery", "_server", "_watched", "client_options")

    def __init__(
        self,
        server: Server,
        nursery: trio.Nursery,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._server = server
        self._nursery = nursery
        #: Options every client it makes gets (`connect`, captures): credentials, TLS files.
        self.client_options: dict[str, Any] = dict(client_options or {})
        self._captures: set[_Reconnects] = set()
        #: Set by `stop_server`: each capture's reconnection count then, for `start_server`.
        self._watched: list[tuple[_Reconnects, int]] | None = None

    def __repr__(self) -> str:
        return f"<RunningBroker {self.url}>"

    @property
    def server(self) -> Server:
        """The `broker.Server` serving now (a new one after each `restart`)."""
        return self._server

    @property
    def config(self) -> Config:
        """The config it serves with; after a restart, with the port it got fixed."""
        return self._server.config

    @property
    def url(self) -> str:
        """``tcp://127.0.0.1:<port>``; the same across restarts."""
        return self._server.url

    @property
    def port(self) -> int:
        """The port it listens on; the same across restarts."""
        return self._server.port

    @property
    def monitor_url(self) -> str | None:
        """``http://127.0.0.1:<port>``, its monitoring endpoint (/varz, /connz, /metrics...),
        or None if the config turned it off; the same across restarts."""
        return self._server.monitor_url

    @property
    def nats_url(self) -> str:
        """``nats://127.0.0.1:<port>``, for NATS clients (nats.py); the same across restarts.

        Raises:
            RuntimeError: Its config turned the NATS listener off.
        """
        return self._server.nats_url

    def statistics(self) -> Statistics:
        """A snapshot of the current server's counters (reset by `restart`)."""
        return self._server.statistics()

    def client_names(self) -> list[str]:
        """The names (from HELLO; "" if none) of the live connections, oldest first."""
        return [transport.adapter.name for transport in faults.connections(self._server)]

    def drop_client(self, name: str) -> int:
        """Cut every connection named `name` with no ERR; returns how many (`faults`).

        Raises:
            LookupError: No live connection is named `name`; the message lists those there are.
        """
        return faults.drop_client(self._server, name)

    def stall_client(self, name: str) -> int:
        """Stop writing to every client named `name` (a slow consumer); returns how many.

        Raises:
            LookupError: As `drop_client`.
        """
        return faults.stall_client(self._server, name)

    def resume_client(self, name: str) -> int:
        """Undo `stall_client`; returns how many connections were resumed.

        Raises:
            LookupError: As `drop_client`.
        """
        return faults.resume_client(self._server, name)

    async def wait_for_client(
        self,
        name: str,
        count: int = 1,
        *,
        subscriptions: int = 0,
        timeout: float | None = None,
    ) -> None:
        """Wait until `count` live connections are named `name`: a service is (back) up.

        For after `drop_client` or `restart`, or a service started in the background: the
        connections counted are those whose handshake gave `name` and that are not closing
        (so the one just cut does not count). A client resubscribes right after its
        handshake, so to know that a message published next reaches the service, also ask for
        its subscriptions: each of the `count` connections must hold at least `subscriptions`
        (a client that made a request holds one more, its reply inbox). The broker is looked
        at every `WAIT_POLL` seconds.

        Args:
            name: The name the client gave (``connect(name=...)``).
            count: How many such connections to wait for (a queue group of workers).
            subscriptions: Subscriptions each must hold; 0 waits for the handshake only.
            timeout: Seconds to wait (``math.inf``: no limit of its own). None, the default,
                leaves the bound to the caller's cancel scope if it has a deadline, else waits
                `DEFAULT_WAIT_TIMEOUT` (5 s).

        Raises:
            TimeoutError: They did not come in time; the message lists the live clients.
            ValueError: `count` is not an int >= 1 or `subscriptions` not an int >= 0.
        """
        if type(count) is not int or count < 1:
            raise ValueError(f"count must be an int >= 1, got {count!r}")
        if type(subscriptions) is not int or subscriptions < 0:
            raise ValueError(f"subscriptions must be an int >= 0, got {subscriptions!r}")
        holding = f" holding {subscriptions} subscriptions" if subscriptions else ""

        def missed() -> str:
            names = ", ".join(repr(n) for n in dict.fromkeys(self.client_names())) or "none"
            return f"{count} live client(s) named {name!r}{holding} did not come (now: {names})"

        with deadline(timeout, DEFAULT_WAIT_TIMEOUT, missed):
            while self._ready_count(name, subscriptions) < count:
                await trio.sleep(WAIT_POLL)

    def _ready_count(self, name: str, subscriptions: int) -> int:
        ready = 0
        for transport in faults.connections(self._server, name):
            held = getattr(transport.adapter, "subscriptions", ())
            if transport.accepting and len(held) >= subscriptions:
                ready += 1
        return ready

    async def restart(self, timeout: float | None = None) -> None:
        """Shut the broker down gracefully and serve again on the same port.

        Clients get ERR ``shutting_down`` as on SIGTERM, then reconnect (if they do) to a new
        `broker.Server` with the same config; its statistics start from zero. Returns once the
        new server listens and every open capture has resubscribed to it, so whatever is
        published to the new server is captured. To wait for a service to be back, follow it
        with `wait_for_client`.

        Args:
            timeout: Seconds the whole restart may take (``math.inf``: no limit of its own).
                None, the default, leaves the bound to the caller's cancel scope if it has a
                deadline, else allows ``shutdown_grace`` plus `START_TIMEOUT`.

        Raises:
            TimeoutError: It took longer.
            OSError: The port could not be bound again.
        """
        with self._deadline(timeout, "restart"):
            await self.stop_server(math.inf)
            await self.start_server(math.inf)

    async def stop_server(self, timeout: float | None = None) -> None:
        """Shut the broker down gracefully, as `restart` does, and wait until it has stopped.

        Until `start_server`, clients find nothing listening (and, if they reconnect, keep
        trying). Does nothing if it is stopped already.

        Raises:
            TimeoutError: It took longer than ``timeout``, as in `restart`.
        """
        if self._watched is not None:
            return
        with self._deadline(timeout, "stop"):
            self._watched = [(reconnects, reconnects.count) for reconnects in self._captures]
            self._stop_server()
            await self._server.wait_stopped()

    async def start_server(self, timeout: float | None = None) -> None:
        """Serve again on the same port after `stop_server`, as `restart` does.

        Returns once the new server listens and every open capture has resubscribed.

        Raises:
            TimeoutError: It took longer than ``timeout``, as in `restart`.
            RuntimeError: The broker is not stopped.
            OSError: The port could not be bound again.
        """
        watched = self._watched
        if watched is None:
            raise RuntimeError(f"the broker on {self.url} is serving; call stop_server() first")
        with self._deadline(timeout, "start"):
            old = self._server
            config = dataclasses.replace(old.config, port=old.port)
            if old.monitor_address is not None:
                monitoring = dataclasses.replace(config.monitoring, port=old.monitor_address[1])
                config = dataclasses.replace(config, monitoring=monitoring)
            if old.nats_addresses:
                nats = dataclasses.replace(config.nats, port=old.nats_addresses[0][1])
                config = dataclasses.replace(config, nats=nats)
            self._server = await self._nursery.start(Server(config).serve)
            self._watched = None
            for reconnects, count in watched:
                await reconnects.wait_past(count)

    def _deadline(self, timeout: float | None, what: str) -> AbstractContextManager[None]:
        default = self._server.config.shutdown_grace + START_TIMEOUT
        return deadline(timeout, default, lambda: f"the broker on {self.url} did not {what}")

    def connect(self, **options: Any) -> AbstractAsyncContextManager[Client]:
        """``broker.connect(self.url, **options)``, with `TEST_CLIENT_OPTIONS` and
        `client_options` as defaults."""
        return connect(self.url, **{**TEST_CLIENT_OPTIONS, **self.client_options, **options})

    @asynccontextmanager
    async def capture(self, pattern: str) -> AsyncIterator[Capture]:
        """Capture `pattern` with a client of its own (see `broker.testing.capture`).

        The client is named `CAPTURE_CLIENT_NAME` and reconnects after a `restart`.
        """
        reconnects = _Reconnects()
        self._captures.add(reconnects)
        try:
            async with (
                self.connect(name=CAPTURE_CLIENT_NAME, on_reconnected=reconnects.bump) as client,
                capture(client, pattern) as cap,
            ):
                yield cap
        finally:
            self._captures.discard(reconnects)
            reconnects.close()

    def _stop_server(self) -> None:
        server = self._server
        # A stalled client would hold the graceful shutdown for all of shutdown_grace.
        faults.resume_client(server, None)
        server.shutdown()


@asynccontextmanager
async def running_broker(
    config: Config | None = None,
    *,
    client_options: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[RunningBroker]:
    """Serve a broker in a nursery of the calling Trio task while the block runs.

    Entering returns once it listens; leaving shuts it down gracefully (clients get ERR
    ``shutting_down``) and waits until it stopped, or cancels it if the block raised.

    Example::

        async with running_broker(max_payload=1024) as broker_:
            async with broker_.connect(name="svc") as client:
                ...
            broker_.drop_client("svc")

    Args:
        config: A base config; see `config_for_tests`.
        client_options: Connect options for every client the handle makes (`connect`,
            captures): a user and password for a broker with ``[auth]``, TLS files for one
            with ``[tls]`` (see `broker.testing.security`).
        overrides: `broker.Config` fields.

    Raises:
        OSError: The listener could not be bound.
        TypeError, ConfigError: A bad override.
    """
    config = config_for_tests(config, **overrides)
    failure: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(Server(config).serve)
            handle = RunningBroker(server, nursery, client_options)
            try:
                yield handle
            finally:
                handle._stop_server()
    except BaseExceptionGroup as group:
        failure = single_leaf(group)
        if failure is None:
            raise
    if failure is not None:
        # Raised outside the except block, so the group does not become its __context__.
        raise failure


@final
class BrokerThread:
    """A broker in a background thread with its own Trio loop, for sync, asyncio and Trio tests.

    Every method may be called from any thread but the broker's own, including one running an
    event loop; each returns once the broker has done it. `restart` and `stop` block until the
    graceful shutdown is over, which needs the clients to read their ERR ``shutting_down``:
    from async code run them in a worker thread (``await asyncio.to_thread(handle.restart)``,
    ``await trio.to_thread.run_sync(handle.restart)``) so the test's own clients keep being
    served meanwhile; blocking the loop instead costs up to half a second per restart.

    Example::

        with BrokerThread(max_payload=1024) as handle:
            with handle.capture("orders.>") as cap:
                publish_an_order(handle.url)
                [message] = cap.wait_for(1, timeout=2)

    Args:
        config: A base config; see `config_for_tests`.
        overrides: `broker.Config` fields.

    Raises:
        TypeError, ConfigError: A bad override (at once, before any thread starts).
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        client_options: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        self._config = config_for_tests(config, **overrides)
        #: Options every client it makes gets (as `running_broker`'s `client_options`).
        self.client_options: dict[str, Any] = dict(client_options or {})
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        #: Set when `start` gave up waiting: a broker that comes up later shuts itself down.
        self._abandoned = threading.Event()
        self._failure: BaseException | None = None
        self._stopped = False
        # Set in the broker thread before _ready, read-only afterwards.
        self._portal: Portal | None = None
        self._broker: RunningBroker | None = None
        self._helpers: trio.Nursery | None = None
        self._stop_event: trio.Event | None = None
        self._url = ""
        self._nats_url = ""
        self._port = 0
        self._monitor_url: str | None = None

    def __repr__(self) -> str:
        if self._thread is None:
            state = "not started"
        elif self._thread.is_alive():
            state = self._url
        else:
            state = "stopped"
        return f"<BrokerThread {state}>"

    # -- lifetime --------------------------------------------------------------------------------

    def start(self) -> BrokerThread:
        """Start the thread and return once the broker listens; returns `self`.

        Raises:
            OSError: The listener could not be bound (e.g. a fixed port in use).
            RuntimeError: Already started, or the broker did not listen within `START_TIMEOUT`.
        """
        if self._thread is not None:
            raise RuntimeError(f"{self!r} was started already; make a new BrokerThread")
        self._thread = threading.Thread(
            target=self._thread_main, name="broker-testing", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            self._abandon()
            raise RuntimeError(f"the broker thread did not listen within {START_TIMEOUT} s")
        if self._failure is not None:
            self._thread.join(STOP_TIMEOUT)
            self._stopped = True
            raise self._failure
        return self

    def _abandon(self) -> None:
        """After a start that took too long: make the thread stop whenever it gets going."""
        self._abandoned.set()
        self._stopped = True
        # `_main` checks `_abandoned` after publishing its portal: either it sees the flag and
        # stops, or it is past the check and the portal below is already there to stop it.
        portal, stop_event = self._portal, self._stop_event
        if portal is not None and stop_event is not None:
            with contextlib.suppress(PortalClosed):
                portal.run_sync(stop_event.set)
        assert self._thread is not None
        self._thread.join(self._config.shutdown_grace + STOP_TIMEOUT)

    def stop(self) -> None:
        """Close open captures, shut the broker down gracefully and join the thread.

        Idempotent. Close your clients first: the graceful shutdown waits (up to
        ``shutdown_grace``) for each connected client to read its ERR ``shutting_down``.

        Raises:
            RuntimeError: The thread did not stop in time.
            BaseException: Whatever made the broker thread fail, if it did.
        """
        thread = self._thread
        if thread is None or self._stopped:
            return
        self._stopped = True
        portal, stop_event = self._portal, self._stop_event
        if portal is not None and stop_event is not None:
            # If it stopped by itself, _failure says why.
            with contextlib.suppress(PortalClosed):
                portal.run_sync(stop_event.set)
        thread.join(self._config.shutdown_grace + STOP_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError(f"the broker thread on {self._url} did not stop in time")
        if self._failure is not None:
            raise self._failure

    def __enter__(self) -> BrokerThread:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what tests read -------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        """The config the broker serves with (after `start`, with the port it got)."""
        if self._port and self._config.port != self._port:
            self._config = dataclasses.replace(self._config, port=self._port)
        return self._config

    @property
    def url(self) -> str:
        """``tcp://127.0.0.1:<port>``; the same across restarts."""
        self._require_started()
        return self._url

    @property
    def port(self) -> int:
        """The port it listens on; the same across restarts."""
        self._require_started()
        return self._port

    @property
    def monitor_url(self) -> str | None:
        """``http://127.0.0.1:<port>``, its monitoring endpoint (None if turned off); the same
        across restarts."""
        self._require_started()
        return self._monitor_url

    @property
    def nats_url(self) -> str:
        """``nats://127.0.0.1:<port>``, for NATS clients (nats.py); the same across restarts.

        Raises:
            RuntimeError: Not started, or its config turned the NATS listener off.
        """
        self._require_started()
        if not self._nats_url:
            raise RuntimeError("the NATS listener is off in this broker's config ([nats])")
        return self._nats_url

    def statistics(self) -> Statistics:
        """A snapshot of the current server's counters (reset by `restart`)."""
        return self._call(lambda: self._live().statistics())

    def client_names(self) -> list[str]:
        """The names (from HELLO; "" if none) of the live connections, oldest first."""
        return self._call(lambda: self._live().client_names())

    # -- fault injection -------------------------------------------------------------------------

    def drop_client(self, name: str) -> int:
        """Cut every connection named `name` with no ERR; returns how many were cut.

        Raises:
            LookupError: No live connection is named `name`; the message lists those there are.
        """
        return self._call(lambda: self._live().drop_client(name))

    def stall_client(self, name: str) -> int:
        """Stop writing to every client named `name`, so it becomes a slow consumer.

        The configured ``slow_consumer_policy`` then applies once its outbox overflows
        (``max_pending_messages``, ``max_pending_bytes``). Returns how many were stalled.

        Raises:
            LookupError: As `drop_client`.
        """
        return self._call(lambda: self._live().stall_client(name))

    def resume_client(self, name: str) -> int:
        """Undo `stall_client`; returns how many connections were resumed.

        Raises:
            LookupError: As `drop_client`.
        """
        return self._call(lambda: self._live().resume_client(name))

    def wait_for_client(
        self,
        name: str,
        count: int = 1,
        *,
        subscriptions: int = 0,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
    ) -> None:
        """Wait up to `timeout` seconds until `count` live connections are named `name`.

        See `RunningBroker.wait_for_client`; here None waits forever, as in `broker.sync`.

        Raises:
            TimeoutError: They did not come in time; the message lists the live clients.
            ValueError: A bad `count`, `subscriptions` or `timeout`.
        """
        check_timeout(timeout)
        limit = math.inf if timeout is None else timeout
        broker = self._live()
        self._require_portal().run(
            lambda: broker.wait_for_client(name, count, subscriptions=subscriptions, timeout=limit)
        )

    def restart(self) -> None:
        """Shut the broker down gracefully and serve again on the same port.

        Returns once the new server listens and every open capture has resubscribed; see
        `RunningBroker.restart`.

        Raises:
            TimeoutError: That took longer than ``shutdown_grace`` plus `START_TIMEOUT`.
            OSError: The port could not be bound again.
        """
        self._run_bounded(self._live().restart, "restart")

    def stop_server(self) -> None:
        """Shut the broker down gracefully and wait until it has stopped; see `restart`.

        Raises:
            TimeoutError: That took longer than ``shutdown_grace`` plus `START_TIMEOUT`.
        """
        self._run_bounded(self._live().stop_server, "stop")

    def start_server(self) -> None:
        """Serve again on the same port after `stop_server`; see `restart`.

        Raises:
            TimeoutError: That took longer than ``shutdown_grace`` plus `START_TIMEOUT`.
            RuntimeError: The broker is not stopped.
            OSError: The port could not be bound again.
        """
        self._run_bounded(self._live().start_server, "start")

    def _run_bounded(self, step: Callable[[], Awaitable[None]], what: str) -> None:
        """Await `step()` in the broker's loop, within ``shutdown_grace`` + `START_TIMEOUT`."""
        limit = self._config.shutdown_grace + START_TIMEOUT

        async def bounded() -> None:
            with trio.move_on_after(limit):
                await step()
                return
            raise TimeoutError(f"the broker on {self._url} did not {what} within {limit} s")

        self._require_portal().run(bounded)

    # -- clients and captures --------------------------------------------------------------------

    def connect(self, **options: Any) -> AbstractAsyncContextManager[Client]:
        """``broker.connect(self.url, **options)`` with `TEST_CLIENT_OPTIONS` as defaults.

        The client runs in the caller's event loop (asyncio or Trio), not the broker's.
        """
        return connect(self.url, **{**TEST_CLIENT_OPTIONS, **self.client_options, **options})

    def connect_sync(self, **options: Any) -> SyncClient:
        """``broker.sync.connect(self.url, **options)`` with `TEST_CLIENT_OPTIONS` as defaults."""
        from .. import sync

        return sync.connect(self.url, **{**TEST_CLIENT_OPTIONS, **self.client_options, **options})

    def capture(self, pattern: str) -> SyncCapture:
        """Capture every message published on `pattern` from now on; see `SyncCapture`.

        Returns once the subscription is live at the broker. Use the result as a context
        manager (or `close` it); `stop` closes captures left open.

        Raises:
            BadSubject: The pattern is invalid.
        """
        portal = self._require_portal()
        cap = SyncCapture(pattern)
        portal.run(lambda: self._start_capture(cap))
        return cap

    # -- in the broker thread --------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as error:
            if self._ready.is_set():
                log.exception("the broker thread on %s failed", self._url)
            self._failure = error
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._stop_event = stop_event = trio.Event()
        async with running_broker(self._config, client_options=self.client_options) as broker:
            self._broker = broker
            self._url = broker.url
            self._port = broker.port
            self._monitor_url = broker.monitor_url
            self._nats_url = broker.server.nats_url if broker.server.nats_addresses else ""
            async with trio.open_nursery() as helpers:
                self._helpers = helpers
                self._portal = Portal(helpers, f"the broker thread on {self._url} is not running")
                if self._abandoned.is_set():
                    return
                self._ready.set()
                await stop_event.wait()
                helpers.cancel_scope.cancel()

    async def _start_capture(self, cap: SyncCapture) -> None:
        assert self._helpers is not None and self._portal is not None
        await self._helpers.start(self._run_capture, cap, self._portal)

    async def _run_capture(
        self,
        cap: SyncCapture,
        portal: Portal,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        done = trio.Event()
        try:
            with trio.CancelScope() as scope:
                async with self._live().capture(cap.pattern) as live:
                    cap._attach(portal, scope, done, live)
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            cap._detach()
            done.set()

    # -- helpers ---------------------------------------------------------------------------------

    def _live(self) -> RunningBroker:
        broker = self._broker
        if broker is None:
            raise RuntimeError("the broker is not running")
        return broker

    def _require_started(self) -> None:
        if self._thread is None or self._broker is None:
            raise RuntimeError("the broker thread is not started; call start() first")

    def _require_portal(self) -> Portal:
        self._require_started()
        assert self._portal is not None
        return self._portal

    def _call(self, fn: Callable[[], T]) -> T:
        """Run `fn` in the broker's loop and return what it returns."""
        return self._require_portal().run_sync(fn)


def start_broker_thread(config: Config | None = None, **overrides: Any) -> BrokerThread:
    """Start a `BrokerThread` and return it once it listens; `stop` it when done.

    Raises:
        OSError, TypeError, ConfigError: As `BrokerThread` and `BrokerThread.start`.
    """
    return BrokerThread(config, **overrides).start()
