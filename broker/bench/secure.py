"""``broker bench --secure``: what authentication, permissions and TLS cost, measured in one run.

Each scenario runs against a plain broker and against one with ``[tls]`` (a throwaway CA) and
``[auth]`` (a bcrypt user whose publish and subscribe permissions allow ``bench.>`` and deny
``bench.secret``, so every publish is checked and wildcard subscriptions are filtered),
alternating which goes first round by round on the same machine, so the ratio is not skewed
by whatever else the machine was doing. The best round of each is compared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .scenarios import ProgressCallback, Scenario, ScenarioResult, run_scenario
from .servers import start_broker

__all__ = ["SECURE_SCENARIOS", "report_secure", "run_secure"]

#: Scenarios that run over TLS (the idle one's non-blocking sockets do not).
SECURE_SCENARIOS = ("one-to-one", "fan-out-10", "fan-out-100", "wildcard-10x10", "queue-4")


def run_secure(
    scenarios: Sequence[Scenario],
    *,
    repeat: int = 1,
    progress: ProgressCallback | None = None,
    timeout: float | None = None,
) -> list[tuple[ScenarioResult, ScenarioResult]]:
    """(plain, secure) results per scenario: the best of `repeat` alternating rounds each."""
    pairs: list[tuple[ScenarioResult, ScenarioResult]] = []
    for scenario in scenarios:
        runs: dict[bool, list[ScenarioResult]] = {False: [], True: []}
        for round_ in range(max(1, repeat)):
            for secure in (False, True) if round_ % 2 == 0 else (True, False):
                with start_broker(scenario.broker_config, secure=secure) as server:
                    result = run_scenario(
                        scenario, server.target, progress=progress, timeout=timeout
                    )
                runs[secure].append(result)
        best = []
        for all_runs in (runs[False], runs[True]):
            chosen = max(all_runs, key=lambda r: (r.complete, r.rate))
            rates = ", ".join(f"{r.rate:,.0f}/s" for r in all_runs)
            best.append(dataclasses.replace(chosen, notes=(*chosen.notes, f"rounds: {rates}")))
        pairs.append((best[0], best[1]))
    return pairs


def report_secure(pairs: Sequence[tuple[ScenarioResult, ScenarioResult]]) -> list[str]:
    """Markdown table rows: scenario, rate plain, rate with auth+TLS, ratio, CPU per delivery."""
    rows = [
        "| scenario | plain | auth + TLS | ratio | CPU/delivery plain | CPU/delivery auth + TLS |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for plain, secure in pairs:
        ratio = secure.rate / plain.rate if plain.rate else 0.0
        cpu = [
            "n/a" if r.cpu_per_delivery is None else f"{r.cpu_per_delivery * 1e6:.2f} us"
            for r in (plain, secure)
        ]
        complete = "" if plain.complete and secure.complete else " (incomplete)"
        rows.append(
            f"| {plain.label or plain.scenario}{complete} | {plain.rate:,.0f}/s |"
            f" {secure.rate:,.0f}/s | {ratio:.2f} | {cpu[0]} | {cpu[1]} |"
        )
    return rows
