"""A thin load generator for broker and, side by side, nats-server: what ``broker bench`` runs.

What it measures is the broker's own ceiling, so the clients must cost far less than the broker:
publishers encode a batch of PUB frames once and write it again and again in large writes;
subscribers count deliveries by walking length prefixes (ours) or MSG header lines (NATS) and
never decode a payload. Runs of identical frames are checked a whole buffer at a time with
strided slices, which checks every frame's header without a Python loop per frame. Every client
runs in its own process (a `multiprocessing` forkserver), so the clients are never serialised
behind one interpreter lock.

The modules, each depending only on those above it:

- `dialects`: what a client of each protocol sends, and counting what it receives.
- `servers`: starting broker and nats-server; their CPU time and memory from /proc.
- `workers`: the client processes, and the coordinator's end of them.
- `scenarios`: the load shapes, and running one against one server.
- `report`: the table, the targets, and the generated part of docs/performance.md.
- `suite`: a whole run against fresh servers, and what ``broker bench`` prints.

Only ``broker bench`` (broker/cli.py imports this package when that command runs),
benchmarks/ and the tests import it; nothing runs at import time.
"""

from __future__ import annotations

from .report import render_markdown, write_docs
from .scenarios import SCENARIOS, Scenario, ScenarioResult, run_scenario, scaled
from .servers import ServerProcess, Target, find_nats_server, start_broker, start_nats
from .suite import run_and_report
from .workers import SubscriberOutcome

__all__ = [
    "SCENARIOS",
    "Scenario",
    "ScenarioResult",
    "ServerProcess",
    "SubscriberOutcome",
    "Target",
    "find_nats_server",
    "render_markdown",
    "run_and_report",
    "run_scenario",
    "scaled",
    "start_broker",
    "start_nats",
    "write_docs",
]
