"""Several nodes joined through a real redis-server: the contract of docs/cluster.md."""

from __future__ import annotations

import os

import pytest
import trio

import broker
from broker.testing.cluster import redis_server_path, running_cluster


@pytest.fixture(autouse=True)
def _redis_server() -> None:
    if redis_server_path() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is missing: .ci/run installs Debian's redis-server")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")


async def test_publish_reaches_every_node_once_in_order() -> None:
    async with running_cluster(3) as cluster:
        async with (
            cluster[0].connect(name="pub") as pub,
            cluster[1].connect() as c1,
            cluster[2].connect() as c2,
        ):
            async with (
                c1.subscribe("orders.*") as s1,
                c1.subscribe("orders.>") as s1b,
                c2.subscribe("orders.new") as s2,
            ):
                await c1.flush()
                await c2.flush()
                await cluster.settle()
                for i in range(200):
                    await pub.publish("orders.new", b"%d" % i)
                with trio.fail_after(5):
                    for sub in (s1, s1b, s2):
                        got = [int((await sub.next()).payload) for _ in range(200)]
                        assert got == list(range(200))
                await pub.flush()
                await c1.flush()
                await c2.flush()
                # Exactly once: nothing more arrives.
                for sub in (s1, s1b, s2):
                    with pytest.raises(TimeoutError):
                        await sub.next(timeout=0.2)
