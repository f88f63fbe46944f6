"""Testing helpers: an in-process broker, captures, fault injection, an asyncio service thread,
and pytest fixtures.

This module only re-exports the public names; the pytest fixtures live in
`broker.testing.plugin` (loaded through the ``pytest11`` entry point).
"""

from __future__ import annotations

from .asyncio_thread import AsyncioThread, start_asyncio_thread
from .capture import DEFAULT_WAIT_TIMEOUT, Capture, SyncCapture, capture
from .inprocess import (
    CAPTURE_CLIENT_NAME,
    TEST_CLIENT_OPTIONS,
    BrokerThread,
    RunningBroker,
    config_for_tests,
    running_broker,
    start_broker_thread,
)
from .security import TestCertificates, make_certificates

__all__ = [
    "CAPTURE_CLIENT_NAME",
    "DEFAULT_WAIT_TIMEOUT",
    "TEST_CLIENT_OPTIONS",
    "AsyncioThread",
    "BrokerThread",
    "Capture",
    "RunningBroker",
    "SyncCapture",
    "TestCertificates",
    "capture",
    "config_for_tests",
    "make_certificates",
    "running_broker",
    "start_asyncio_thread",
    "start_broker_thread",
]
