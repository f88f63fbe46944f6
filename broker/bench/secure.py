"""``broker bench --secure``: what authentication, permissions and TLS cost, measured in one run.

Each scenario runs against a plain broker, one with ``[auth]`` (a bcrypt user whose publish and
subscribe permissions allow ``bench.>`` and deny ``bench.secret``, so every publish is checked
and wildcard subscriptions are filtered), and one with ``[auth]`` and ``[tls]`` (a throwaway
CA), rotating which goes first round by round on the same machine, so the ratios are not
skewed by whatever else the machine was doing. The best round of each is compared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Final

from .scenarios import ProgressCallback, Scenario, ScenarioResult, run_scenario
from .servers import start_broker

__all__ = ["SECURE_SCENARIOS", "VARIANTS", "report_secure", "run_secure"]

#: Scenarios that run over TLS (the idle one's non-blocking sockets do not).
SECURE_SCENARIOS = ("one-to-one", "fan-out-10", "fan-out-100", "wildcard-10x10", "queue-4")


#: The brokers compared: name, and `start_broker`'s auth and tls flags.
VARIANTS: Final = (("plain", False, False), ("auth", True, False), ("auth + TLS", True, True))


def run_secure(
    scenarios: Sequence[Scenario],
    *,
    repeat: int = 1,
    progress: ProgressCallback | None = None,
    timeout: float | None = None,
) -> list[list[ScenarioResult]]:
    """Per scenario, one result per `VARIANTS` entry: the best of `repeat` rotating rounds."""
    table: list[list[ScenarioResult]] = []
    for scenario in scenarios:
        runs: list[list[ScenarioResult]] = [[] for _ in VARIANTS]
        for round_ in range(max(1, repeat)):
            shift = round_ % len(VARIANTS)
            for index in [*range(shift, len(VARIANTS)), *range(shift)]:
                _, auth, tls = VARIANTS[index]
                with start_broker(scenario.broker_config, auth=auth, tls=tls) as server:
                    result = run_scenario(
                        scenario, server.target, progress=progress, timeout=timeout
                    )
                runs[index].append(result)
        best = []
        for all_runs in runs:
            chosen = max(all_runs, key=lambda r: (r.complete, r.rate))
            rates = ", ".join(f"{r.rate:,.0f}/s" for r in all_runs)
            best.append(dataclasses.replace(chosen, notes=(*chosen.notes, f"rounds: {rates}")))
        table.append(best)
    return table


def report_secure(table: Sequence[Sequence[ScenarioResult]]) -> list[str]:
    """Markdown rows: each variant's deliveries/s, its ratio to plain, and CPU per delivery."""
    names = [name for name, _, _ in VARIANTS]
    head = " | ".join(f"{name} | ratio | CPU/delivery" for name in names)
    rows = [f"| scenario | {head} |", "|---" + "|---:|---:|---:" * len(names) + "|"]
    for results in table:
        plain = results[0]
        cells = []
        for result in results:
            ratio = result.rate / plain.rate if plain.rate else 0.0
            cpu = result.cpu_per_delivery
            shown = "n/a" if cpu is None else f"{cpu * 1e6:.2f} us"
            mark = "" if result.complete else " (incomplete)"
            cells.append(f"{result.rate:,.0f}/s{mark} | {ratio:.2f} | {shown}")
        rows.append(f"| {plain.label or plain.scenario} | {' | '.join(cells)} |")
    return rows
