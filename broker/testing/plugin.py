"""pytest fixtures for testing services that use broker: a fresh in-process broker per test.

The plugin is registered through the ``pytest11`` entry point in broker's ``pyproject.toml``::

    [project.entry-points.pytest11]
    broker = "broker.testing.plugin"

so installing broker makes the fixtures available everywhere, with no ``conftest.py``. Only
where broker is importable but not installed (a bare source checkout on ``PYTHONPATH``), load
it with ``-p broker.testing.plugin`` or ``pytest_plugins = ["broker.testing.plugin"]``; never
both ways at once, since pytest refuses one plugin registered under two names ("Plugin already
registered under a different name"). ``-p no:broker`` turns it off.

Every fixture is function-scoped: each test gets its own broker on 127.0.0.1 and a free port,
ready in a few milliseconds, stopped (gracefully) after the test.

For every kind of test (sync, asyncio, Trio):

- ``broker_thread``: a started `broker.testing.BrokerThread`: ``.url``, ``.port``,
  ``.statistics()``, ``.capture(pattern)``, ``.connect(...)`` (an async client for the test's
  own loop), fault injection (``.drop_client(name)``, ``.stall_client(name)``,
  ``.resume_client(name)``, ``.restart()``, ``.stop_server()`` / ``.start_server()``), and
  ``.wait_for_client(name, subscriptions=n)`` to know a service is (back) up.
- ``broker_url``: its URL, ``tcp://127.0.0.1:<port>``.
- ``broker_monitor_url``: its monitoring endpoint, ``http://127.0.0.1:<port>`` (on by default
  in test brokers), to assert on ``/varz``, ``/connz?cid=...`` or ``/metrics``.
- ``broker_nats_url``: its NATS listener's URL, ``nats://127.0.0.1:<port>``, for NATS clients
  such as nats.py (``await nats.connect(broker_nats_url, name="svc")``); the fault injection
  above finds them by the ``name`` they gave.
- ``broker_client_sync``: a connected `broker.sync.SyncClient` named ``"broker_client_sync"``
  (for sync and asyncio tests: a `SyncClient` cannot be called from a thread running Trio).
- ``asyncio_service``: a function, ``asyncio_service(serve, *args)``, that runs the coroutine
  function ``serve(*args)`` on an asyncio loop in a thread of its own and returns its
  `broker.testing.AsyncioThread`; each is cancelled after the test, and a service that failed
  fails the test. For sync tests of an asyncio service::

    def test_prices(broker_thread, broker_client_sync, asyncio_service):
        asyncio_service(serve_prices, broker_thread.url)
        broker_thread.wait_for_client("prices", subscriptions=1)
        assert broker_client_sync.request("price.apple", b"").payload == b"3"

asyncio tests use ``broker_thread`` and connect inside the test, e.g. under anyio's pytest
plugin (``@pytest.mark.anyio``) or ``asyncio.run``. anyio's plugin runs a ``@pytest.mark.anyio``
test once per backend installed, and broker installs Trio: each such test runs twice, as
``test_orders[asyncio]`` and ``test_orders[trio]`` (the client and `capture` work under both).
To run on asyncio only, define the ``anyio_backend`` fixture, in the module or a
``conftest.py``::

    @pytest.fixture
    def anyio_backend():
        return "asyncio"


    @pytest.mark.anyio
    async def test_orders(broker_thread):
        async with broker_thread.connect(name="svc") as client:
            async with capture(client, "orders.>") as cap:
                await client.publish("orders.new", b"1")
                await cap.wait_for(1)  # 5 s by default, or timeout=

For Trio tests (pytest-trio, with ``trio_mode = true`` or ``@pytest.mark.trio``; async fixtures
need one of the two), the broker runs in the test's own loop:

- ``trio_broker``: a `broker.testing.RunningBroker` (the same controls, ``restart`` is async,
  ``capture`` an async context manager).
- ``trio_broker_client``: a connected `broker.Client` named ``"trio_broker_client"``.
- ``trio_cluster``: three nodes joined through a redis-server of the test's own
  (`broker.testing.cluster.RunningCluster`; needs ``redis-server`` and the ``cluster`` extra).

Configuration: ``@pytest.mark.broker_config(max_payload=1024, slow_consumer_policy="drop_oldest")``
on a test (or module, via ``pytestmark``) passes `broker.Config` overrides to that test's broker.
The keys of a config file (config/broker.toml) work too, dotted or as tables::

    @pytest.mark.broker_config(**{"slow_consumer.policy": "drop_oldest", "limits.max_payload": 64})
    @pytest.mark.broker_config(toml={"slow_consumer": {"policy": "drop_oldest"}})

(see `broker.testing.config_for_tests`). With several markers the closest to the test wins.
Override the ``broker_config`` fixture to change the base for a whole directory. The marker is
registered by the plugin, so it is allowed under ``--strict-markers``.

Security: test against the rules you run in production. ``[auth]`` goes in through
``broker_config`` like any section (``toml={"auth": {...}}``, e.g. read from your own file);
``@pytest.mark.broker_client(user="orders", password="...")`` gives every client the fixtures
and the handles make (captures too) those credentials. ``@pytest.mark.broker_tls`` serves TLS
with certificates from the ``broker_certificates`` fixture (a `trustme` CA made for the test;
see `broker.testing.security`), and the fixtures' clients trust it;
``broker_tls(verify=True)`` requires client certificates, and the fixtures' clients present
the one named ``client`` (``broker_tls(verify=True, client="orders")`` for another, which
the broker maps to that user). ``broker_certificates.client_options("orders")`` gives the
options for a client of your own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..client import Client
from ..config import Config
from .asyncio_thread import AsyncioThread
from .inprocess import BrokerThread, RunningBroker, config_for_tests, running_broker
from .security import TestCertificates, make_certificates

if TYPE_CHECKING:
    from ..sync import SyncClient
    from .cluster import RunningCluster

__all__ = [
    "asyncio_service",
    "broker_certificates",
    "broker_client_options",
    "broker_client_sync",
    "broker_config",
    "broker_monitor_url",
    "broker_nats_url",
    "broker_thread",
    "broker_url",
    "pytest_configure",
    "trio_broker",
    "trio_broker_client",
]

MARKER = "broker_config"
TLS_MARKER = "broker_tls"
CLIENT_MARKER = "broker_client"


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``broker_config`` marker, so ``--strict-markers`` accepts it."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**overrides): settings for this test's in-process broker (broker_thread, "
        "trio_broker and the fixtures built on them): broker.Config fields "
        '(slow_consumer_policy="drop_oldest"), config file keys dotted '
        '(**{"slow_consumer.policy": "drop_oldest"}) or toml={"slow_consumer": {...}}',
    )
    config.addinivalue_line(
        "markers",
        f"{TLS_MARKER}(verify=False, client='client'): serve TLS with the broker_certificates "
        "fixture's files; verify=True requires client certificates, and the fixtures' clients "
        "present the one named `client`",
    )
    config.addinivalue_line(
        "markers",
        f"{CLIENT_MARKER}(**options): connect options (user, password, token, inbox_prefix, "
        "...) for every client the broker fixtures make",
    )


@pytest.fixture
def broker_config(request: pytest.FixtureRequest) -> Config:
    """The `broker.Config` for this test's broker: 127.0.0.1, a free port, and the overrides
    of every ``broker_config`` marker on the test, applied farthest first (the closest wins)."""
    config: Config | None = None
    for marker in reversed(list(request.node.iter_markers(MARKER))):
        if marker.args:
            raise TypeError(
                f"@pytest.mark.{MARKER} takes keyword arguments only (Config fields or config "
                f"file keys), got positional {marker.args!r}"
            )
        config = config_for_tests(config, **marker.kwargs)
    config = config_for_tests(config)
    tls = request.node.get_closest_marker(TLS_MARKER)
    if tls is not None:
        certificates: TestCertificates = request.getfixturevalue("broker_certificates")
        verify = tls.kwargs.get("verify", False)
        config = dataclasses.replace(config, tls=certificates.tls_config(verify=verify))
    return config


@pytest.fixture
def broker_certificates(tmp_path: Path) -> TestCertificates:
    """A test CA, a server certificate and client certificates named ``client``, ``orders``,
    ``auditor`` and ``responder`` (see `broker.testing.security`); needs `trustme`."""
    return make_certificates(
        tmp_path / "broker-certificates", clients=("client", "orders", "auditor", "responder")
    )


@pytest.fixture
def broker_client_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Connect options for the clients the broker fixtures make: TLS files when the test has
    ``broker_tls``, then the ``broker_client`` marker's options."""
    options: dict[str, Any] = {}
    tls = request.node.get_closest_marker(TLS_MARKER)
    if tls is not None:
        certificates: TestCertificates = request.getfixturevalue("broker_certificates")
        client = tls.kwargs.get("client", "client" if tls.kwargs.get("verify") else None)
        options.update(certificates.client_options(client))
    for marker in reversed(list(request.node.iter_markers(CLIENT_MARKER))):
        options.update(marker.kwargs)
    return options


@pytest.fixture
def broker_thread(
    broker_config: Config, broker_client_options: dict[str, Any]
) -> Iterator[BrokerThread]:
    """A broker in a background thread, started for this test and stopped after it."""
    with BrokerThread(broker_config, client_options=broker_client_options) as handle:
        yield handle


@pytest.fixture
def broker_url(broker_thread: BrokerThread) -> str:
    """The URL of ``broker_thread``'s broker."""
    return broker_thread.url


@pytest.fixture
def broker_monitor_url(broker_thread: BrokerThread) -> str:
    """The monitoring endpoint of ``broker_thread``'s broker, ``http://127.0.0.1:<port>``."""
    url = broker_thread.monitor_url
    if url is None:
        raise RuntimeError(
            "this test's broker has monitoring off; turn it on with "
            '@pytest.mark.broker_config(**{"monitoring.enabled": True})'
        )
    return url


@pytest.fixture
def broker_nats_url(broker_thread: BrokerThread) -> str:
    """The NATS URL of ``broker_thread``'s broker, ``nats://127.0.0.1:<port>``, for nats.py."""
    return broker_thread.nats_url


@pytest.fixture
def broker_client_sync(broker_thread: BrokerThread) -> Iterator[SyncClient]:
    """A `broker.sync.SyncClient` connected to ``broker_thread``, named ``broker_client_sync``."""
    client = broker_thread.connect_sync(name="broker_client_sync")
    with client:
        yield client


@pytest.fixture
async def trio_broker(
    broker_config: Config, broker_client_options: dict[str, Any]
) -> AsyncIterator[RunningBroker]:
    """A broker serving in this Trio test's loop (pytest-trio; see the module docstring)."""
    async with running_broker(broker_config, client_options=broker_client_options) as handle:
        yield handle


@pytest.fixture
async def trio_cluster(broker_config: Config) -> AsyncIterator[RunningCluster]:
    """Three nodes joined through a redis-server of their own, in this Trio test's loop.

    A `broker.testing.cluster.RunningCluster`: ``cluster[i]`` is node i (a `RunningBroker`),
    ``await cluster.settle()`` waits until every node knows every subscription made so far.
    Needs ``redis-server`` on the PATH (or $BROKER_REDIS_SERVER) and coredis
    (``pip install trio-broker[cluster]``).
    """
    from .cluster import running_cluster

    async with running_cluster(3, config=broker_config) as cluster:
        yield cluster


@pytest.fixture
async def trio_broker_client(trio_broker: RunningBroker) -> AsyncIterator[Client]:
    """A `broker.Client` connected to ``trio_broker``, named ``trio_broker_client``."""
    async with trio_broker.connect(name="trio_broker_client") as client:
        yield client


@pytest.fixture
def asyncio_service() -> Iterator[Callable[..., AsyncioThread[Any]]]:
    """Run asyncio services in threads for this test: ``asyncio_service(serve, *args)``.

    Each call starts ``serve(*args)`` in an `AsyncioThread` and returns it. After the test they
    are stopped, last started first; the first failure of one is raised, failing the test.
    """
    started: list[AsyncioThread[Any]] = []

    def start(fn: Callable[..., Awaitable[Any]], *args: Any) -> AsyncioThread[Any]:
        name = f"asyncio-service-{len(started) + 1}"
        thread = AsyncioThread(fn, *args, name=name).start()
        started.append(thread)
        return thread

    yield start
    failures: list[BaseException] = []
    for thread in reversed(started):
        try:
            thread.stop()
        except BaseException as error:
            failures.append(error)
    if failures:
        raise failures[0]
