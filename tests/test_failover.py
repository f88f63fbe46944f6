"""Clients given several URLs: connect to the first that answers, fail over when it dies."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import trio

import broker
from broker import sync
from broker.client.options import resolve_urls
from broker.testing import BrokerThread, running_broker


def dead_url() -> str:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def test_resolve_urls_takes_a_list_or_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_urls(["tcp://a:1", "b:2"]) == [("a", 1), ("b", 2)]
    assert resolve_urls("tcp://a:1, tcp://b:2") == [("a", 1), ("b", 2)]
    assert resolve_urls("a:1") == [("a", 1)]
    monkeypatch.setenv("BROKER_URL", "a:1,b:2")
    assert resolve_urls(None) == [("a", 1), ("b", 2)]
    with pytest.raises(ValueError, match="at least one"):
        resolve_urls([])
    with pytest.raises(ValueError, match="tcp scheme"):
        resolve_urls(["tcp://a:1", "http://b"])
    with pytest.raises(TypeError):
        resolve_urls(5)  # type: ignore[arg-type]


async def test_first_answering_url_wins_and_all_are_named_when_none_answers() -> None:
    async with running_broker() as node:
        dead = dead_url()
        async with broker.connect([dead, node.url]) as client:
            assert client.url == node.url
            await client.flush()
        with pytest.raises(broker.ConnectionClosed, match="cannot connect to any of") as info:
            async with broker.connect([dead, dead_url()], connect_timeout=1):
                pass
        assert dead in str(info.value)


async def test_client_fails_over_to_another_node_and_resubscribes() -> None:
    async with running_broker() as first, running_broker() as second:
        options = {"reconnect_delay": 0.01, "max_reconnect_delay": 0.05}
        async with (
            broker.connect([first.url, second.url], name="svc", **options) as client,
            second.connect() as publisher,
        ):
            sub = client.subscribe("news.*")
            await client.flush()
            assert client.url == first.url
            await first.stop_server()
            await second.wait_for_client("svc", subscriptions=1)
            assert client.url == second.url
            await publisher.publish("news.today", b"fresh")
            assert (await sub.next(timeout=5)).payload == b"fresh"


def test_sync_client_and_cli_take_several_urls() -> None:
    with BrokerThread() as node:
        dead = dead_url()
        with sync.connect([dead, node.url]) as client:
            assert client.url == node.url
            client.flush()
        done = subprocess.run(
            [sys.executable, "-m", "broker", "pub", "--url", f"{dead},{node.url}", "x", "hi"],
            capture_output=True,
            text=True,
            timeout=20,
            env={k: v for k, v in os.environ.items() if k != "BROKER_URL"},
            check=False,
        )
        assert done.returncode == 0, done.stderr


async def test_a_cluster_client_fails_over_between_nodes() -> None:
    from broker.testing.cluster import redis_server_path, running_cluster

    if redis_server_path() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is missing: .ci/run installs Debian's redis-server")
        pytest.skip("redis-server is not installed")
    async with running_cluster(3) as cluster:
        options = {"reconnect_delay": 0.01, "max_reconnect_delay": 0.05}
        async with (
            broker.connect([cluster[0].url, cluster[1].url], name="svc", **options) as client,
            cluster[2].connect() as publisher,
        ):
            sub = client.subscribe("news.*")
            await client.flush()
            await cluster.settle()
            await cluster[0].stop_server()
            await cluster[1].wait_for_client("svc", subscriptions=1)
            with trio.fail_after(5):
                while [s for s in cluster.link(2).subscriptions if s[1] == "news.*"] != [
                    ("node1", "news.*", None, 0)
                ]:
                    await trio.sleep(0.01)
            await publisher.publish("news.today", b"fresh")
            assert (await sub.next(timeout=5)).payload == b"fresh"
            with pytest.raises(TimeoutError):
                await sub.next(timeout=0.2)  # once, though node0 had the interest too
