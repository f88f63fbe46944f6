"""Several nodes joined through a real redis-server: the contract of docs/cluster.md."""

from __future__ import annotations

import gc
import itertools
import json
import os
from collections.abc import Iterator

import pytest
import trio

import broker
from broker.testing import running_broker
from broker.testing.cluster import (
    RunningCluster,
    cluster_config,
    redis_server_path,
    running_cluster,
    running_redis,
)

# coredis 6.9's unclosed anyio streams (see filterwarnings in pyproject.toml) are collected
# at the end of each test, so they are reported, if ever, here.


@pytest.fixture(autouse=True)
def _redis_server() -> Iterator[None]:
    if redis_server_path() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is missing: .ci/run installs Debian's redis-server")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    yield
    gc.collect()


def taken(sub: broker.Subscription) -> list[broker.Message]:
    """What the subscription holds now, without waiting."""
    out = []
    while sub.pending:
        out.append(sub._take())
    return [m for m in out if m is not None]


async def test_publish_reaches_every_node_once_in_order() -> None:
    async with (
        running_cluster(3) as cluster,
        cluster[0].connect(name="pub") as pub,
        cluster[1].connect() as c1,
        cluster[2].connect() as c2,
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
    async with (
        running_cluster(3) as cluster,
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
            assert sorted(itertools.chain(*got)) == list(range(300))  # each exactly once
            assert [len(g) for g in got] == [100, 100, 100]  # round-robin, cluster-wide
            for g in got:
                assert g == sorted(g)  # each member in publish order
        finally:
            for sub in subs:
                sub.unsubscribe()


async def test_request_reply_across_nodes_and_instant_no_responders() -> None:
    async with (
        running_cluster(3) as cluster,
        cluster[0].connect() as requester,
        cluster[2].connect() as responder,
    ):
        # The responder's subscription ends before the no-responders half.
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
        async with (
            running_cluster(2, redis_url=redis.url, names=["x", "y"]) as cluster,
            cluster[1].connect() as late,
            late.subscribe("config.*") as sub,
        ):
            msg = await sub.next(timeout=5)
            assert (msg.subject, msg.payload, msg.retained) == ("config.color", b"blue", True)
            with pytest.raises(TimeoutError):
                await sub.next(timeout=0.2)


async def test_a_node_without_interest_receives_nothing_from_redis() -> None:
    async with (
        running_cluster(3) as cluster,
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


async def test_a_killed_node_is_forgotten_within_node_timeout_and_the_others_carry_on() -> None:
    async with running_cluster(2) as cluster:
        config = cluster_config(cluster.redis_url, name="doomed")
        timeout = config.cluster.node_timeout + 2 * config.cluster.heartbeat_interval  # type: ignore[union-attr]
        async with trio.open_nursery() as nursery:
            # A node cancelled from outside says no goodbye: as good as killed for the others.
            killed = trio.CancelScope()

            async def doomed(task_status: trio.TaskStatus[None]) -> None:
                with killed:
                    async with (
                        running_broker(config) as node,
                        node.connect() as client,
                        client.subscribe("work.>"),
                    ):
                        await client.flush()
                        task_status.started()
                        await trio.sleep_forever()

            await nursery.start(doomed)
            with trio.fail_after(5):
                while (
                    "doomed" not in cluster.link(0).remote.nodes
                    or not cluster.link(0).subscriptions
                ):
                    await trio.sleep(0.01)
            killed.cancel()
            start = trio.current_time()
        async with cluster[0].connect() as a, cluster[1].connect() as b, b.subscribe("x") as sub:
            await b.flush()
            with trio.fail_after(5):
                while not [s for s in cluster.link(0).subscriptions if s[1] == "x"]:
                    await trio.sleep(0.01)
            with trio.fail_after(timeout + 1):
                while "doomed" in cluster.link(0).remote.nodes:
                    await a.publish("x", b"still here")
                    await sub.next(timeout=2)
                    await trio.sleep(0.02)
            assert trio.current_time() - start <= timeout + 0.5
            assert not [s for s in cluster.link(0).subscriptions if s[0] == "doomed"]
            with pytest.raises(broker.NoResponders):
                await a.request("work.item", b"", timeout=5)


async def test_redis_away_degrades_then_resumes_by_itself() -> None:
    async with running_cluster(2) as cluster:
        redis = cluster.redis
        assert redis is not None
        async with (
            cluster[0].connect() as a,
            cluster[0].connect() as local,
            cluster[1].connect() as b,
            local.subscribe("news.*") as local_sub,
            b.subscribe("news.*") as remote_sub,
        ):
            await local.flush()
            await b.flush()
            await cluster.settle()
            await redis.stop()
            with trio.fail_after(5):
                while any(link.state != "degraded" for link in cluster.links()):
                    await trio.sleep(0.01)
            assert "degraded" in cluster.link(0).status().as_dict()["state"]
            # Local clients are still served; what was meant for node1 is lost and counted.
            lost = cluster.link(0).counters["lost"]
            await a.publish("news.local", b"during")
            assert (await local_sub.next(timeout=2)).payload == b"during"
            assert cluster.link(0).counters["lost"] == lost + 1
            # Redis returns (empty: its data died with it); the nodes rejoin on their own.
            await redis.start()
            with trio.fail_after(10):
                await cluster.settle()
            await a.publish("news.remote", b"after")
            while True:
                msg = await remote_sub.next(timeout=5)
                if msg.payload == b"after":
                    break
            assert cluster.link(0).counters["reconnects"] >= 1


async def test_a_flooded_node_drops_and_counts_past_its_inbound_bound_and_harms_no_one() -> None:
    async with (
        running_cluster(3, cluster={"inbound_buffer": 2}) as cluster,
        cluster[0].connect() as pub,
        cluster[2].connect() as c2,
        c2.subscribe("ok") as ok,
    ):
        await c2.flush()
        await cluster.settle()
        import coredis

        from broker.cluster.wire import entry, pack_batch

        frame = pack_batch("flood", [entry(None, ("flood", b"x" * 100, None, None, False))])
        link = cluster.link(1)
        async with (
            coredis.Redis.from_url(cluster.redis_url) as redis,
            redis.pipeline(transaction=False) as pipe,
        ):
            for _ in range(500):
                pipe.publish(link.keys.inbox(link.node), frame)
        await pub.publish("ok", b"fine")
        assert (await ok.next(timeout=5)).payload == b"fine"
        with trio.fail_after(5):
            while link.counters["received"] + link.counters["dropped_inbound"] < 500:
                assert link._inbound_send.statistics().current_buffer_used <= 2
                await trio.sleep(0)
        assert link.state == "up"
        # A burst within one step, as coredis's reader hands over what one read parsed:
        # one goes straight to the waiting router, two fit the buffer, the other seven are
        # dropped and counted, and nothing waits.
        while link._inbound_send.statistics().current_buffer_used:
            await trio.sleep(0)
        before = dict(link.counters)
        for _ in range(10):
            link._on_batch({"type": "message", "channel": b"", "data": frame})
        assert link.counters["dropped_inbound"] - before["dropped_inbound"] == 7
        with trio.fail_after(5):
            while link.counters["received"] - before["received"] < 3:
                await trio.sleep(0.01)


async def test_the_trio_cluster_fixture_gives_three_joined_nodes(
    trio_cluster: RunningCluster,
) -> None:
    async with trio_cluster[0].connect() as a, trio_cluster[2].connect() as c:
        sub = c.subscribe("hello")
        await c.flush()
        await trio_cluster.settle()
        await a.publish("hello", b"world")
        assert (await sub.next(timeout=5)).payload == b"world"


async def test_a_node_starts_alone_when_redis_is_away_and_joins_when_it_comes() -> None:
    async with running_redis() as redis:
        await redis.stop()
        config = cluster_config(redis.url, name="early")
        async with running_broker(config) as node:
            link = node.server.cluster
            assert link is not None and link.state == "degraded"
            async with node.connect() as client, client.subscribe("local") as sub:
                await client.publish("local", b"served")  # alone, but serving
                assert (await sub.next(timeout=5)).payload == b"served"
                await redis.start()
                with trio.fail_after(10):
                    await link.up_event.wait()
                assert link.status().as_dict()["state"] == "up"


async def test_a_publish_split_into_steps_still_reaches_each_node_once() -> None:
    from broker.hub import FANOUT_STEP

    async with (
        running_cluster(2) as cluster,
        cluster[0].connect() as local,
        cluster[0].connect() as big,
        cluster[0].connect() as other,
        cluster[1].connect() as remote,
    ):
        early = remote.subscribe("big.*")  # a stand-in before the local ones on node0
        noise = remote.subscribe("other.*")
        await remote.flush()
        await cluster.settle()
        for _ in range(FANOUT_STEP + 50):
            local.subscribe("big.*")
        await local.flush()
        late = remote.subscribe("big.>")  # and one after: the publish's second step
        await remote.flush()
        await cluster.settle()

        async def noisy() -> None:
            for i in range(300):
                await other.publish("other.y", b"%d" % i)
                if i % 10 == 0:
                    await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(noisy)
            for i in range(20):
                await big.publish("big.x", b"%d" % i)
                await trio.sleep(0)
        await big.flush()
        await other.flush()
        with trio.fail_after(10):
            for sub in (early, late):
                got = [int((await sub.next()).payload) for _ in range(20)]
                assert got == list(range(20))
            assert [int((await noise.next()).payload) for _ in range(300)] == list(range(300))
        await remote.flush()
        for sub in (early, late, noise):
            with pytest.raises(TimeoutError):
                await sub.next(timeout=0.3)  # nothing twice


async def test_a_message_from_another_node_reaching_many_subscriptions_arrives_whole_in_order() -> (
    None
):
    from broker.hub import FANOUT_STEP

    count = FANOUT_STEP + 300  # more than one step of the receiving node's deliveries
    async with (
        running_cluster(2) as cluster,
        cluster[0].connect() as publisher,
        cluster[1].connect() as many,
    ):
        subs = [many.subscribe("wide.*" if n % 2 else "wide.>") for n in range(count)]
        await many.flush()
        await cluster.settle()
        for i in range(5):
            await publisher.publish("wide.x", b"%d" % i)
        await publisher.flush()
        with trio.fail_after(20):
            for sub in subs:
                assert [int((await sub.next()).payload) for _ in range(5)] == list(range(5))
        for sub in subs[:3]:
            with pytest.raises(TimeoutError):
                await sub.next(timeout=0.2)  # nothing twice


async def test_every_node_answers_sys_ping_and_monitoring_shows_the_cluster() -> None:
    async with running_cluster(3) as cluster, cluster[0].connect() as ops:
        inbox = "_INBOX.ops.ping"
        replies = ops.subscribe(inbox)
        await ops.flush()
        await cluster.settle()
        await ops.publish("$SYS.REQ.SERVER.PING", b"", reply_to=inbox)
        with trio.fail_after(5):
            ids = {json.loads((await replies.next()).payload)["server_id"] for _ in range(3)}
        assert ids == {node.server.server_id for node in cluster.nodes}
        varz = cluster[0].server.monitor.varz()["cluster"]
        assert (varz["state"], varz["nodes"]) == ("up", ["node1", "node2"])
        assert cluster[0].server.monitor.healthz() == (200, {"status": "ok"})


async def test_a_degraded_node_says_so_on_healthz_and_in_a_sys_event() -> None:
    async with running_cluster(2) as cluster:
        assert cluster.redis is not None
        node = cluster[0].server
        async with cluster[0].connect() as ops, ops.subscribe("$SYS.SERVER.*.CLUSTER") as events:
            await ops.flush()
            await cluster.redis.stop()
            event = json.loads((await events.next(timeout=5)).payload)
            assert (event["type"], event["state"], event["node"]) == (
                "cluster_state",
                "degraded",
                "node0",
            )
            status, answer = node.monitor.healthz()
            assert status == 503 and "cluster link degraded" in answer["error"]
            assert node.monitor.varz()["cluster"]["state"] == "degraded"
            await cluster.redis.start()
            event = json.loads((await events.next(timeout=10)).payload)
            assert event["state"] == "up"
            assert node.monitor.healthz()[0] == 200
