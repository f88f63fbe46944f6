"""The load generators and scenarios behind ``broker bench``; see broker/bench/scenarios.py."""

from __future__ import annotations

from .scenarios import (
    SCENARIOS,
    Scenario,
    ScenarioResult,
    render_markdown,
    run_scenario,
    scaled,
    write_docs,
)
from .servers import ServerProcess, Target, find_nats_server, free_port, start_broker, start_nats
from .suite import run_and_report, run_suite
from .workers import SubscriberOutcome

__all__ = [
    "SCENARIOS",
    "Scenario",
    "ScenarioResult",
    "ServerProcess",
    "SubscriberOutcome",
    "Target",
    "find_nats_server",
    "free_port",
    "render_markdown",
    "run_and_report",
    "run_scenario",
    "run_suite",
    "scaled",
    "start_broker",
    "start_nats",
    "write_docs",
]
