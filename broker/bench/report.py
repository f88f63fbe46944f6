"""What a run found, for people: the terminal table, the targets, and docs/performance.md.

`table_rows` lays results out as rows of ours beside nats-server's, with their ratio;
`target_checks` compares them with the redesign issue's targets; `render_markdown` adds the
command, date, machine and versions for the generated part of docs/performance.md, and
`write_docs` replaces that part between its markers, keeping the hand-written text around it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import msgpack

from .._version import __version__
from .dialects import KiB, MiB
from .scenarios import STALLED_MAX_PENDING_BYTES, ScenarioResult
from .servers import nats_server_version

__all__ = [
    "MARKDOWN_HEADER",
    "TABLE_HEADER",
    "machine_info",
    "render_markdown",
    "si",
    "table_rows",
    "target_checks",
    "versions",
    "write_docs",
]


def si(value: float | None, unit: str = "") -> str:
    """`value` to three figures with a k, M or G prefix and `unit`; "n/a" for None."""
    if value is None:
        return "n/a"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}{unit}"
    return f"{value:.3g}{unit}"


def _us(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e6:.2f} us"


def _mb(size: float | None) -> str:
    return "n/a" if size is None else f"{size / MiB:.1f} MiB"


def _kb(size: float | None) -> str:
    return "n/a" if size is None else f"{size / KiB:.1f} KiB"


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or not theirs:
        return ""
    return f"{ours / theirs:.2f}"


def _arrived(result: ScenarioResult | None) -> str:
    if result is None:
        return ""
    if result.failure:
        return "FAILED"
    if result.complete:
        return "all"
    return f"{result.missing} missing"


#: Column heads for the terminal, and the wider ones for Markdown.
TABLE_HEADER: Final = ("scenario", "metric", "broker", "nats", "ratio", "arrived")
MARKDOWN_HEADER: Final = (
    "scenario",
    "metric",
    "broker",
    "nats-server",
    "broker / nats",
    "all arrived (broker / nats)",
)


class _RowMaker:
    """Appends table rows for one scenario: a metric of ours, of nats-server's, and the ratio."""

    def __init__(
        self,
        rows: list[tuple[str, ...]],
        ours: ScenarioResult | None,
        nats: ScenarioResult | None,
    ) -> None:
        self.rows = rows
        self.ours = ours
        self.nats = nats
        self.arrived = f"{_arrived(ours) or '-'} / {_arrived(nats) or '-'}"

    def __call__(
        self,
        metric: str,
        get: Callable[[ScenarioResult], float | None],
        show: Callable[[float | None], str],
        *,
        label: str = "",
        ratio: bool = True,
    ) -> None:
        ours, nats = self.ours, self.nats
        a = get(ours) if ours else None
        b = get(nats) if nats else None
        self.rows.append(
            (
                label,
                metric,
                show(a) if ours else "-",
                show(b) if nats else "-",
                _ratio(a, b) if ratio else "",
                self.arrived if label else "",
            )
        )


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _count(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def table_rows(results: Sequence[ScenarioResult]) -> list[tuple[str, ...]]:
    """The comparison table: a few rows per scenario, ours beside nats-server's."""
    by_scenario: dict[str, dict[str, ScenarioResult]] = {}
    for result in results:
        by_scenario.setdefault(result.scenario, {})[result.target] = result
    rows: list[tuple[str, ...]] = []
    for pair in by_scenario.values():
        ours, nats = pair.get("broker"), pair.get("nats")
        first = ours or nats
        assert first is not None
        title = first.label or first.scenario
        row = _RowMaker(rows, ours, nats)
        if first.connections or first.rss_before is not None:
            row("RSS per connection", lambda r: r.rss_per_connection, _kb, label=title)
            row("RSS, all connected", lambda r: _float(r.rss_after), _mb)
            row("connections held", lambda r: float(r.connections), _count, ratio=False)
            continue
        row("deliveries/s", lambda r: r.rate, lambda v: si(v, "/s"), label=title)
        if first.baseline_rate is not None:
            row("without the stalled", lambda r: r.baseline_rate, lambda v: si(v, "/s"))
            row("healthy rate kept", lambda r: r.healthy_ratio, _percent, ratio=False)
        row("CPU per delivery", lambda r: r.cpu_per_delivery, _us)
        row("peak RSS", lambda r: _float(r.peak_rss), _mb)
    return rows


def _float(value: int | None) -> float | None:
    return None if value is None else float(value)


def target_checks(results: Sequence[ScenarioResult]) -> list[tuple[str, str, bool | None]]:
    """The issue's targets: (target, measured, met); met is None when it could not be measured."""
    pair: dict[tuple[str, str], ScenarioResult] = {(r.scenario, r.target): r for r in results}
    checks: list[tuple[str, str, bool | None]] = []

    def get(scenario: str, kind: str) -> ScenarioResult | None:
        return pair.get((scenario, kind))

    def check(text: str, value: float | None, shown: str, ok: Callable[[float], bool]) -> None:
        checks.append((text, shown, None if value is None else ok(value)))

    one, one_nats = get("one-to-one", "broker"), get("one-to-one", "nats")
    if one is not None:
        check(">= 400k msg/s, 1 -> 1", one.rate, si(one.rate, "/s"), lambda v: v >= 400_000)
        if one_nats is not None and one_nats.rate:
            ratio = one.rate / one_nats.rate
            check(">= 0.5 x nats-server, 1 -> 1", ratio, f"{ratio:.2f} x", lambda v: v >= 0.5)
        check(
            "CPU <= 2.5 us per delivery, 1 -> 1",
            one.cpu_per_delivery,
            _us(one.cpu_per_delivery),
            lambda v: v <= 2.5e-6,
        )
    ten, ten_nats = get("fan-out-10", "broker"), get("fan-out-10", "nats")
    if ten is not None:
        check(">= 1M deliveries/s, 1 -> 10", ten.rate, si(ten.rate, "/s"), lambda v: v >= 1_000_000)
        if ten_nats is not None and ten_nats.rate:
            ratio = ten.rate / ten_nats.rate
            check(">= 0.75 x nats-server, 1 -> 10", ratio, f"{ratio:.2f} x", lambda v: v >= 0.75)
    for name in ("fan-out-10", "fan-out-100", "wildcard-10x10"):
        fan = get(name, "broker")
        if fan is not None:
            check(
                f"CPU <= 1.5 us per delivery, {name}",
                fan.cpu_per_delivery,
                _us(fan.cpu_per_delivery),
                lambda v: v <= 1.5e-6,
            )
    idle = get("idle-10k", "broker")
    if idle is not None:
        check(
            "<= 8 KiB RSS per idle subscribed connection",
            idle.rss_per_connection,
            _kb(idle.rss_per_connection),
            lambda v: v <= 8 * KiB,
        )
        check(
            f"{idle.connections:,} idle connections held under 150 MB (143 MiB)",
            None if idle.rss_after is None else float(idle.rss_after),
            _mb(idle.rss_after),
            lambda v: v < 150e6,
        )
    stalled = get("stalled", "broker")
    if stalled is not None:
        kept = stalled.healthy_ratio
        check(
            "stalled: healthy subscribers keep >= 90% of their rate",
            kept,
            "n/a" if kept is None else f"{kept:.0%}",
            lambda v: v >= 0.9,
        )
        if stalled.peak_rss is not None and stalled.baseline_peak_rss is not None:
            growth = stalled.peak_rss - stalled.baseline_peak_rss
            # The bound counts queued frame bytes; RSS also holds each frame's object header,
            # so the growth is compared with the bound as configured, without any allowance.
            check(
                "stalled: peak RSS growth over the baseline run within max_pending_bytes "
                f"({STALLED_MAX_PENDING_BYTES // MiB} MiB)",
                float(growth),
                _mb(growth),
                lambda v: v <= STALLED_MAX_PENDING_BYTES,
            )
    return checks


def machine_info() -> dict[str, str]:
    """CPU count and model, memory, kernel: what a reader needs to weigh the figures."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / MiB:.1f} GiB"
                break
    return {
        "CPUs": str(len(os.sched_getaffinity(0))),
        "CPU model": model,
        "memory": memory,
        "kernel": f"{platform.system()} {platform.release()}",
    }


def versions() -> dict[str, str]:
    """Versions of everything in the measurement."""
    import trio

    return {
        "broker": __version__,
        "Python": platform.python_version(),
        "trio": trio.__version__,
        "msgpack": ".".join(map(str, msgpack.version)),
        "nats-server": nats_server_version() or "not installed",
    }


_BEGIN: Final = "<!-- bench:begin (generated by broker bench --write-docs; edits here are lost) -->"
_END: Final = "<!-- bench:end -->"


def render_markdown(
    results: Sequence[ScenarioResult],
    *,
    command: str,
    date: datetime.datetime | None = None,
) -> str:
    """The generated part of docs/performance.md: table, targets, notes, command and setup."""
    date = date or datetime.datetime.now(datetime.UTC)
    out: list[str] = [_BEGIN, ""]
    out.append(f"Measured {date:%Y-%m-%d %H:%M} UTC with:")
    out.append("")
    out.append(f"```sh\n{command}\n```")
    out.append("")
    machine = ", ".join(f"{k} {v}" for k, v in machine_info().items())
    out.append(f"Machine: {machine}.  ")
    out.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".")
    out.append("")
    out.append("| " + " | ".join(MARKDOWN_HEADER) + " |")
    out.append("|" + "---|" * len(MARKDOWN_HEADER))
    for row in table_rows(results):
        out.append("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    out.append("")
    checks = target_checks(results)
    if checks:
        out.append("| target | measured | met |")
        out.append("|---|---|---|")
        for text, shown, met in checks:
            verdict = "n/a" if met is None else ("yes" if met else "**no**")
            out.append(f"| {text} | {shown} | {verdict} |")
        out.append("")
    notes = [
        f"- {r.scenario} [{r.target}]: {note}"
        for r in results
        for note in ((r.failure,) if r.failure else ()) + r.notes
    ]
    if notes:
        out.append("Notes from the run:")
        out.append("")
        out.extend(notes)
        out.append("")
    out.append(_END)
    return "\n".join(out) + "\n"


def write_docs(path: Path, generated: str) -> None:
    """Put `generated` between the markers in `path`, keeping what is written around them."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    start, end = text.find(_BEGIN), text.find(_END)
    if start >= 0 and end > start:
        text = text[:start] + generated.rstrip("\n") + text[end + len(_END) :]
    else:
        head = text if text else "# Performance\n\n"
        text = head.rstrip("\n") + "\n\n" + generated
    path.write_text(text if text.endswith("\n") else text + "\n")
