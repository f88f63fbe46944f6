"""``broker serve --workers N``: N processes on one port, joined through Redis."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import broker
from broker.testing.cluster import redis_server_path, running_redis

pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_workers_need_a_cluster_section(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "broker", "serve", "--workers", "2", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "--workers needs a [cluster] section" in done.stderr


async def test_workers_share_one_port_and_act_as_one_broker(tmp_path: Path) -> None:
    if redis_server_path() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is missing: .ci/run installs Debian's redis-server")
        pytest.skip("redis-server is not installed")
    async with running_redis() as redis:
        port = free_port()
        config = tmp_path / "broker.toml"
        config.write_text(
            f"[server]\nport = {port}\n[timeouts]\nshutdown_grace = 1.0\n"
            f'[cluster]\nredis_url = "{redis.url}"\nname = "w"\nheartbeat_interval = 0.2\n'
        )
        url = f"tcp://127.0.0.1:{port}"
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "broker", "serve", "--config", str(config), "--workers", "2"],
            stderr=subprocess.DEVNULL,
        )
        try:
            with trio.fail_after(30):
                # Both workers up and joined: node w-0 and w-1 registered in Redis.
                import coredis

                async with coredis.Redis.from_url(redis.url) as client:
                    while len(await client.zrange("broker:nodes", 0, -1)) < 2:
                        await trio.sleep(0.05)
                # The kernel spreads connections over the workers.
                by_server: dict[str, broker.Client] = {}
                async with contextlib.AsyncExitStack() as stack:
                    for _ in range(24):
                        client = await stack.enter_async_context(broker.connect(url))
                        by_server.setdefault(client.server_info["server_id"], client)
                    assert len(by_server) == 2
                    a, b = by_server.values()
                    sub = b.subscribe("cross.*")
                    await b.flush()
                    while True:  # until b's interest has reached a's worker
                        await a.publish("cross.worker", b"hi")
                        try:
                            msg = await sub.next(timeout=0.2)
                        except TimeoutError:
                            continue
                        assert msg.payload == b"hi"
                        break
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                assert await process.wait() == 0
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", port)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
