"""A second, non-Python NATS client: Node.js's ``nats`` package against the NATS listener,
beside a native Python client, publishing, subscribing and making requests both ways.

``.ci/run`` installs it (``npm ci`` in tests/node). Without node or tests/node/node_modules the
test is skipped on a developer's machine and fails in CI (``CI=true``), where it must run.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from broker.testing import BrokerThread

NODE_DIR = Path(__file__).resolve().parent / "node"
LIMIT = 20.0


def _node() -> str:
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "node is not installed"
    elif not (NODE_DIR / "node_modules" / "nats").is_dir():
        problem = f"the Node nats package is not installed: run `npm ci` in {NODE_DIR}"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    assert node is not None
    return node


def test_node_nats_client_beside_a_native_client(broker_thread: BrokerThread) -> None:
    node = _node()

    async def body() -> None:
        async with (
            broker_thread.connect(name="py") as py,
            py.subscribe("py.svc") as svc,
            py.subscribe("py.in") as inbox,
        ):
            await py.flush()
            proc = await asyncio.create_subprocess_exec(
                node,
                str(NODE_DIR / "crossing.js"),
                broker_thread.nats_url,
                cwd=NODE_DIR,
                stdout=asyncio.subprocess.PIPE,
            )
            try:
                assert proc.stdout is not None

                async def line() -> Any:
                    return json.loads(await proc.stdout.readline())  # type: ignore[union-attr]

                assert await line() == {"ready": True}
                await asyncio.to_thread(broker_thread.wait_for_client, "node", subscriptions=2)
                # Python asks, Node answers.
                reply = await py.request("node.echo", b"hi", timeout=LIMIT)
                assert reply.payload == b"node says hi"
                # Python publishes to Node: payload, reply subject and headers cross.
                await py.publish("node.in", b"to node", reply_to="r.x", headers={"K": "v"})
                assert await line() == {"got": "to node", "reply": "r.x", "header": "v"}
                # Node asks, Python answers; then Node publishes with a header.
                request = await svc.next(timeout=LIMIT)
                assert request.payload == b"from node"
                await request.respond(b"python says hi")
                assert await line() == {"answer": "python says hi"}
                message = await inbox.next(timeout=LIMIT)
                assert message.payload == b"hello python"
                assert message.headers == {"From": "node"}
                assert await proc.wait() == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    asyncio.run(asyncio.wait_for(body(), LIMIT))
