"""``@pytest.mark.anyio`` runs a broker test under asyncio and Trio, as the plugin's docs say,
and the ``anyio_backend`` fixture they show picks one."""

from __future__ import annotations

import textwrap

import pytest
from test_plugin import _ini, _run, suite

import broker.testing.plugin

__all__ = ["suite"]  # the pytester fixture, shared with test_plugin.py

pytest_plugins = ["pytester"]

BOTH_BACKENDS = """
    import pytest

    from broker.testing import capture


    @pytest.mark.anyio
    async def test_orders(broker_thread):
        async with broker_thread.connect(name="svc") as client:
            async with capture(client, "orders.>") as cap:
                await client.publish("orders.new", b"1")
                await cap.wait_for(1)
"""

ASYNCIO_ONLY = """
    import asyncio

    import pytest


    @pytest.fixture
    def anyio_backend():
        return "asyncio"


    @pytest.mark.anyio
    async def test_orders(broker_thread):
        asyncio.get_running_loop()
        async with broker_thread.connect(name="svc") as client:
            await client.flush()
"""


def test_the_anyio_marker_runs_each_test_under_both_backends(suite: pytest.Pytester) -> None:
    _ini(suite)
    suite.makepyfile(test_both=textwrap.dedent(BOTH_BACKENDS))
    result = _run(suite)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "PASSED test_both.py::test_orders[[]asyncio[]]",
            "PASSED test_both.py::test_orders[[]trio[]]",
        ]
    )


def test_the_anyio_backend_fixture_picks_one(suite: pytest.Pytester) -> None:
    _ini(suite)
    suite.makepyfile(test_one=textwrap.dedent(ASYNCIO_ONLY))
    result = _run(suite)
    result.assert_outcomes(passed=1)


def test_the_plugin_says_so() -> None:
    doc = broker.testing.plugin.__doc__ or ""
    assert "each such test runs twice" in doc
    assert "def anyio_backend():" in doc
