"""The per-host rate limit on log lines about clients (pure: a list stands for the clock)."""

from __future__ import annotations

import logging

import pytest

from broker.peerlog import PeerLog, host_of


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_a_host_gets_its_burst_then_the_next_line_after_a_pause_counts_the_rest(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    caplog.set_level(logging.INFO, logger="test.peerlog")
    peers = PeerLog(logging.getLogger("test.peerlog"), lines_per_minute=3, clock=clock)
    written = [peers.log(logging.INFO, f"10.0.0.1:{port}", "line %d", port) for port in range(10)]
    assert written == [True] * 3 + [False] * 7  # at the bound, and past it
    clock.now = 20.0  # a third of a minute: one line's worth
    assert peers.log(logging.INFO, "10.0.0.1:99", "after the pause")
    assert not peers.log(logging.INFO, "10.0.0.1:99", "and no more yet")
    assert _lines(caplog) == [
        "line 0",
        "line 1",
        "line 2",
        "after the pause (7 earlier lines about 10.0.0.1 suppressed)",
    ]
    assert caplog.records[-1].suppressed == 8 - 1  # type: ignore[attr-defined]


def test_hosts_are_limited_apart_and_a_disabled_level_costs_no_allowance(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    caplog.set_level(logging.INFO, logger="test.peerlog")
    peers = PeerLog(logging.getLogger("test.peerlog"), lines_per_minute=1, clock=clock)
    assert not peers.log(logging.DEBUG, "10.0.0.1:1", "debug is off")
    assert peers.log(logging.INFO, "10.0.0.1:1", "a")
    assert peers.log(logging.INFO, "[::1]:2", "b")
    assert not peers.log(logging.INFO, "10.0.0.1:3", "c")
    assert _lines(caplog) == ["a", "b"]


def test_the_hosts_remembered_are_bounded_and_a_forgotten_count_is_logged(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    caplog.set_level(logging.INFO, logger="test.peerlog")
    peers = PeerLog(logging.getLogger("test.peerlog"), lines_per_minute=1, clock=clock, max_peers=2)
    for host in ("10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.3"):
        peers.log(logging.INFO, f"{host}:1", "about %s", host)
    assert _lines(caplog) == [
        "about 10.0.0.1",
        "about 10.0.0.2",
        "1 lines about 10.0.0.1 suppressed",
        "about 10.0.0.3",
    ]
    assert len(peers._peers) == 2


@pytest.mark.parametrize(
    ("peer", "host"),
    [("10.0.0.1:5878", "10.0.0.1"), ("[::1]:5878", "::1"), ("example:1", "example")],
)
def test_host_of(peer: str, host: str) -> None:
    assert host_of(peer) == host
