"""Several nodes joined through a real redis-server: the contract of docs/cluster.md."""

from __future__ import annotations

import os

import pytest
import trio

import broker
from broker.testing.cluster import redis_server_path, running_cluster, running_redis


@pytest.fixture(autouse=True)
def _redis_server() -> None:
    if redis_server_path() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is missing: .ci/run installs Debian's redis-server")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")


def taken(sub: broker.Subscription) -> list[broker.Message]:
    """What the subscription holds now, without waiting."""
    out = []
    while sub.pending:
        out.append(sub._take())
    return [m for m in out if m is not None]


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


async def test_queue_group_members_on_several_nodes_get_each_message_once_evenly() -> None:
    async with running_cluster(3) as cluster:
        async with (
            cluster[0].connect() as pub,
            cluster[0].connect() as w0,
            cluster[1].connect() as w1,
            cluster[2].connect() as w2,
        ):
            subs = [w.subscribe("jobs.*", queue="workers") for w in (w0, w1, w2)]
            try:
                for w in (w0, w1, w2):
                    await w.flush()
                await cluster.settle()
                for i in range(300):
                    await pub.publish("jobs.run", b"%d" % i)
                got: list[list[int]] = [[], [], []]
                with trio.fail_after(5):
                    while sum(map(len, got)) < 300:
                        for index, sub in enumerate(subs):
                            got[index].extend(int(m.payload) for m in taken(sub))
                        await trio.sleep(0.01)
                for w in (w0, w1, w2):
                    await w.flush()
                await trio.sleep(0.1)
                assert sorted(sum(got, [])) == list(range(300))  # each exactly once
                assert [len(g) for g in got] == [100, 100, 100]  # round-robin, cluster-wide
                for g in got:
                    assert g == sorted(g)  # each member in publish order
            finally:
                for sub in subs:
                    sub.unsubscribe()


async def test_request_reply_across_nodes_and_instant_no_responders() -> None:
    async with running_cluster(3) as cluster:
        async with cluster[0].connect() as requester, cluster[2].connect() as responder:
            async with responder.subscribe("time.now") as service:
                await responder.flush()
                await cluster.settle()

                async def serve() -> None:
                    async for msg in service:
                        await msg.respond(b"noon:" + msg.payload)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(serve)
                    with trio.fail_after(5):
                        for i in range(20):
                            reply = await requester.request("time.now", b"%d" % i, timeout=5)
                            assert reply.payload == b"noon:%d" % i
                    nursery.cancel_scope.cancel()
            # No node has a matching subscription any more: "no responders" at once.
            await responder.flush()
            await cluster.settle()
            with trio.fail_after(1):
                with pytest.raises(broker.NoResponders):
                    await requester.request("time.now", b"", timeout=5)
                with pytest.raises(broker.NoResponders):
                    await requester.request("nobody.anywhere", b"", timeout=5)


async def test_retained_messages_live_in_redis_and_survive_every_node_restarting() -> None:
    async with running_redis() as redis:
        async with running_cluster(3, redis_url=redis.url) as cluster:
            async with cluster[0].connect() as pub:
                await pub.publish("config.color", b"blue", retain=True)
                await pub.publish("config.size", b"L", retain=True)
                await pub.publish("config.size", b"", retain=True)  # deleted
                await pub.flush()
            async with cluster[2].connect() as late:
                with trio.fail_after(5):
                    while cluster.nodes[2].server.hub.retained.subjects < 1:
                        await trio.sleep(0.01)
                    async with late.subscribe("config.*") as sub:
                        msg = await sub.next()
                        assert (msg.subject, msg.payload, msg.retained) == (
                            "config.color",
                            b"blue",
                            True,
                        )
        # Every node stopped; a new cluster on the same Redis replays what it kept.
        async with running_cluster(2, redis_url=redis.url, names=["x", "y"]) as cluster:
            async with cluster[1].connect() as late, late.subscribe("config.*") as sub:
                msg = await sub.next(timeout=5)
                assert (msg.subject, msg.payload, msg.retained) == ("config.color", b"blue", True)
                with pytest.raises(TimeoutError):
                    await sub.next(timeout=0.2)


async def test_a_node_without_interest_receives_nothing_from_redis() -> None:
    async with running_cluster(3) as cluster:
        async with (
            cluster[0].connect() as pub,
            cluster[1].connect() as c1,
            c1.subscribe("metrics.>") as sub,
        ):
            await c1.flush()
            await cluster.settle()
            for i in range(100):
                await pub.publish("metrics.cpu", b"%d" % i)
                await pub.publish("logs.debug", b"%d" % i)  # nobody anywhere
            await pub.flush()
            for _ in range(100):
                await sub.next(timeout=5)
            a, b, c = (cluster.link(i).counters for i in range(3))
            assert a["sent"] == 100  # only metrics.cpu, only to node1
            assert b["received"] == 100
            assert c["received"] == 0 and c["dropped_inbound"] == 0
            # Each node listens on its own inbox channel only (plus the two broadcast ones).
            import coredis

            async with coredis.Redis.from_url(cluster.redis_url) as redis:
                numsub = await redis.pubsub_numsub(
                    *(link.keys.inbox(link.node) for link in cluster.links())
                )
                assert list(numsub.values()) == [1, 1, 1]
                assert await redis.pubsub_numpat() == 0
