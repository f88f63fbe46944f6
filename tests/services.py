"""Services made of the async client, for tests that need something answering requests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from broker.client import Client


@asynccontextmanager
async def echo_service(client: Client, prefix: bytes = b"") -> AsyncIterator[None]:
    """While the block runs, `client` answers each request on "echo" with `prefix` and the
    request's payload; its subscription has reached the broker when the block begins."""

    async def respond() -> None:
        async with client.subscribe("echo") as sub:
            async for msg in sub:
                await msg.respond(prefix + msg.payload)

    async with trio.open_nursery() as tasks:
        tasks.start_soon(respond)
        await trio.testing.wait_all_tasks_blocked()
        await client.flush()
        yield
        tasks.cancel_scope.cancel()
