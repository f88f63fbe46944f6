"""A cluster in the test's own process: a redis-server of its own and N broker nodes joined by it.

- `running_redis` starts ``redis-server`` on 127.0.0.1 and a free port, with no persistence
  and no config file, and stops it by its PID; `RedisServer.stop` / `start` take it away and
  bring it back on the same port (the outage tests).
- `running_cluster` starts that Redis (or uses the one given) and N in-process brokers
  (`running_broker`) with ``[cluster]`` pointing at it, and returns once every node sees
  every other. `RunningCluster.settle` waits until every node knows every other node's
  current interest, so a test that subscribes on one node and publishes on another needs no
  sleep.

Nodes get a short heartbeat (`TEST_HEARTBEAT`) so that fault tests run in about a second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final, final

import trio

from ..cluster.link import ClusterLink
from ..config import ClusterConfig, Config
from .inprocess import WAIT_POLL, RunningBroker, config_for_tests, running_broker

__all__ = [
    "TEST_HEARTBEAT",
    "TEST_NODE_TIMEOUT",
    "RedisServer",
    "RunningCluster",
    "redis_server_path",
    "running_cluster",
    "running_redis",
]

#: Heartbeat and node timeout of test clusters: a killed node is forgotten within ~0.8 s.
TEST_HEARTBEAT: Final = 0.1
TEST_NODE_TIMEOUT: Final = 0.6
#: Seconds to wait for redis-server to accept connections, or a cluster to settle.
START_TIMEOUT: Final = 10.0


def redis_server_path() -> str | None:
    """Where ``redis-server`` is ($BROKER_REDIS_SERVER, else the PATH), or None."""
    return os.environ.get("BROKER_REDIS_SERVER") or shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@final
class RedisServer:
    """A redis-server process of the test's own, on 127.0.0.1.

    Attributes:
        port: Its port (kept across `stop` and `start`).
        url: ``redis://127.0.0.1:PORT/0``.
    """

    def __init__(self, path: str, port: int) -> None:
        self._path = path
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: trio.Process | None = None

    @property
    def running(self) -> bool:
        return self._process is not None

    async def start(self) -> None:
        """Start it (again) and wait until it accepts connections."""
        if self._process is not None:
            return
        self._process = await trio.lowlevel.open_process(
            [
                self._path,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with trio.fail_after(START_TIMEOUT):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    if self._process.poll() is not None:
                        raise RuntimeError(
                            f"redis-server exited ({self._process.returncode}) on port {self.port}"
                        ) from None
                    await trio.sleep(0.01)
                    continue
                await stream.send_all(b"PING\r\n")
                reply = await stream.receive_some(64)
                await stream.aclose()
                if reply.startswith(b"+PONG"):
                    return
                await trio.sleep(0.01)

    async def stop(self) -> None:
        """Stop it at once (SIGKILL to its PID): its data is gone, as after a crash."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


@contextlib.asynccontextmanager
async def running_redis(path: str | None = None) -> AsyncIterator[RedisServer]:
    """Run a redis-server on a free loopback port while the block runs.

    Raises:
        FileNotFoundError: No redis-server (install Debian's ``redis-server`` package, or set
            $BROKER_REDIS_SERVER).
    """
    path = path or redis_server_path()
    if path is None:
        raise FileNotFoundError(
            "redis-server not found: install it (apt-get install redis-server) or set "
            "$BROKER_REDIS_SERVER"
        )
    server = RedisServer(path, _free_port())
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


@final
class RunningCluster:
    """N in-process nodes joined through one Redis.

    Attributes:
        redis: The Redis (None when the cluster was given a URL).
        redis_url: The URL every node uses.
        nodes: The nodes, each a `RunningBroker` (its ``server.cluster`` is the link).
    """

    def __init__(self, redis: RedisServer | None, redis_url: str, nodes: list[RunningBroker]):
        self.redis = redis
        self.redis_url = redis_url
        self.nodes = nodes

    def __getitem__(self, index: int) -> RunningBroker:
        return self.nodes[index]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def link(self, index: int) -> ClusterLink:
        """The Redis link of node `index`."""
        link = self.nodes[index].server.cluster
        assert link is not None
        return link

    def links(self) -> list[ClusterLink]:
        return [link for node in self.nodes if (link := node.server.cluster) is not None]

    def settled(self) -> bool:
        """Every link is up, and knows every other live node's current interest."""
        links = self.links()
        for link in links:
            if link.state != "up" or link.local.pending or link._full:
                return False
        for link in links:
            for other in links:
                if other is link:
                    continue
                if link.remote.versions.get(other.node) != other.local.version:
                    return False
        return True

    async def settle(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until `settled`: every subscription made so far is known cluster-wide."""
        with trio.fail_after(timeout):
            while not self.settled():
                await trio.sleep(WAIT_POLL)


def cluster_config(
    redis_url: str,
    *,
    config: Config | None = None,
    name: str = "",
    cluster: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Config:
    """A test node's config: `config_for_tests` with ``[cluster]`` at `redis_url`.

    Args:
        cluster: `ClusterConfig` fields (``{"inbound_buffer": 4}``); the test timings and
            `redis_url` by default, and the base config's ``[cluster]`` if it has one.
    """
    base = config_for_tests(config, **overrides)
    fields: dict[str, Any] = {
        "heartbeat_interval": TEST_HEARTBEAT,
        "node_timeout": TEST_NODE_TIMEOUT,
    }
    if base.cluster is not None:
        fields = {f.name: getattr(base.cluster, f.name) for f in dataclasses.fields(ClusterConfig)}
    fields.update(cluster or {})
    fields.update(redis_url=redis_url, name=name)
    return config_for_tests(base, cluster=ClusterConfig(**fields))


@contextlib.asynccontextmanager
async def running_cluster(
    nodes: int = 3,
    *,
    redis_url: str | None = None,
    names: Sequence[str] | None = None,
    config: Config | None = None,
    cluster: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[RunningCluster]:
    """Run `nodes` brokers joined through Redis in the calling Trio task while the block runs.

    Example::

        async with running_cluster(3) as cluster:
            async with cluster[0].connect() as a, cluster[2].connect() as c:
                async with c.subscribe("orders.*") as sub:
                    await cluster.settle()
                    await a.publish("orders.new", b"1")
                    assert (await sub.next()).payload == b"1"

    Args:
        nodes: How many nodes.
        redis_url: A Redis to use; None starts one (`running_redis`) for the block.
        names: The nodes' names (default ``node0``, ``node1``, ...).
        config: A base config for every node; its ``[cluster]`` (if any) gives the timings.
        cluster: `ClusterConfig` fields for every node (``{"node_timeout": 2.0}``).
        overrides: `broker.Config` fields or dotted file keys, for every node.
    """
    names = list(names) if names is not None else [f"node{i}" for i in range(nodes)]
    async with contextlib.AsyncExitStack() as stack:
        redis: RedisServer | None = None
        if redis_url is None:
            redis = await stack.enter_async_context(running_redis())
            redis_url = redis.url
        running = [
            await stack.enter_async_context(
                running_broker(
                    cluster_config(
                        redis_url, config=config, name=name, cluster=cluster, **overrides
                    )
                )
            )
            for name in names[:nodes]
        ]
        joined = RunningCluster(redis, redis_url, running)
        await joined.settle()
        yield joined
