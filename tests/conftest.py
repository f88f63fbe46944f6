"""Fixtures for the server tests: a broker listening on 127.0.0.1 with a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from wire import StartServer

from broker.config import Config
from broker.server import Server


@pytest.fixture
async def start_server(nursery: trio.Nursery) -> AsyncIterator[StartServer]:
    """Start a broker with `Config(port=0, **overrides)`; it is cancelled when the test ends."""

    async def start(**overrides: Any) -> Server:
        overrides.setdefault("hosts", ("127.0.0.1",))
        server: Server = await nursery.start(Server(Config(port=0, **overrides)).serve)
        return server

    yield start


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    """A broker with the default configuration."""
    return await start_server()
