"""The load shapes (`SCENARIOS`) and running one of them against one server (`run_scenario`).

A run: subscribers connect, subscribe and PING; their PONG proves the subscriptions are in the
routing table. Then the publishers are told to go, and each ends with a PING of its own. The run
ends when every subscriber has counted what it expects, when nothing has arrived for a while
after the publishers finished, or at a deadline: every wait is bounded, and missing messages are
reported rather than waited for. When the server's PID is known (always, when bench started it),
its CPU time and memory are read from /proc. The stalled scenario runs twice, with and without
the subscriber that never reads; the idle one measures RSS per connection instead of a rate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias, final

from .dialects import Kind, MiB
from .servers import RssSampler, Target, nats_varz, process_cpu_seconds, process_rss
from .workers import (
    PROGRESS_INTERVAL,
    IdleSpec,
    PublisherSpec,
    SubscriberOutcome,
    SubscriberSpec,
    Worker,
    forkserver,
    idle_main,
    publisher_main,
    pump,
    subscriber_main,
    supervised,
)

__all__ = [
    "SCENARIOS",
    "STALLED_MAX_PENDING_BYTES",
    "ProgressCallback",
    "Scenario",
    "ScenarioResult",
    "run_scenario",
    "scaled",
]

#: Called as the run goes: a label, deliveries counted so far, deliveries expected.
ProgressCallback: TypeAlias = Callable[[str, int, int], None]

#: A run ends this long after the publishers finished if no subscriber counted anything more.
QUIET_SECONDS: Final = 3.0
#: How long clients have to connect and subscribe before the run is abandoned.
SETUP_SECONDS: Final = 60.0
#: Outbox bound the stalled-subscriber scenario gives a broker it starts.
STALLED_MAX_PENDING_BYTES: Final = 8 * MiB
#: Idle connections opened by each client process in the idle scenario.
IDLE_PER_PROCESS: Final = 2_500


@final
@dataclass(frozen=True, slots=True)
class Scenario:
    """One load shape. Publisher `i` publishes `messages` to `subject` with ``{i}`` filled in.

    Subscriber `j` subscribes to ``patterns[j % len(patterns)]``; every pattern must match every
    publisher's subject, so each plain subscriber expects ``publishers * messages`` deliveries
    and a queue group expects that many in total.
    """

    name: str
    title: str
    kind: Literal["flow", "stalled", "idle"] = "flow"
    publishers: int = 1
    subscribers: int = 1
    messages: int = 100_000
    payload: int = 128
    subject: str = "bench.data"
    patterns: tuple[str, ...] = ("bench.data",)
    queue: str | None = None
    stalled: int = 0
    connections: int = 0
    #: TOML sections for a broker that bench starts for the scenario.
    broker_config: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The title with this scenario's sizes filled in, for tables."""
        return self.title.format(payload=self.payload, connections=self.connections)

    @property
    def published(self) -> int:
        return self.publishers * self.messages

    @property
    def expected(self) -> int:
        """Deliveries to healthy subscribers when every message arrives."""
        if self.kind == "idle":
            return self.connections
        if self.queue is not None:
            return self.published
        return self.published * self.subscribers


SCENARIOS: Final[tuple[Scenario, ...]] = (
    Scenario("one-to-one", "1 -> 1, {payload} B", messages=400_000),
    Scenario("fan-out-10", "1 -> 10, {payload} B", subscribers=10, messages=120_000),
    Scenario("fan-out-100", "1 -> 100, {payload} B", subscribers=100, messages=12_000),
    Scenario(
        "wildcard-10x10",
        "10 -> 10 wildcard, {payload} B",
        publishers=10,
        subscribers=10,
        messages=12_000,
        subject="bench.p{i:02d}.data",
        patterns=("bench.*.data", "bench.>"),
    ),
    Scenario("queue-4", "1 -> queue of 4, {payload} B", subscribers=4, messages=400_000, queue="q"),
    Scenario(
        "stalled",
        "1 -> 9 + 1 stalled, {payload} B",
        kind="stalled",
        subscribers=9,
        stalled=1,
        messages=150_000,
        broker_config={"limits": {"max_pending_bytes": STALLED_MAX_PENDING_BYTES}},
    ),
    Scenario("idle-10k", "{connections:,} idle, 1 sub each", kind="idle", connections=10_000),
)


@final
@dataclass(frozen=True, slots=True)
class ScenarioResult:
    """What one scenario measured against one target.

    `rate` is deliveries per second to the healthy subscribers, from the first publisher's
    first write to the last delivery counted. CPU and memory figures are None when the server's
    PID is unknown (a server that bench did not start, and no --pid).
    """

    scenario: str
    target: Kind
    published: int
    expected: int
    delivered: int
    seconds: float
    rate: float
    #: Server CPU seconds (user + system, all threads) per delivery, over the run.
    cpu_per_delivery: float | None
    #: Peak server RSS during the run, in bytes.
    peak_rss: int | None
    subscribers: tuple[SubscriberOutcome, ...] = ()
    #: Stalled scenario: the healthy subscribers' rate without the stalled one.
    baseline_rate: float | None = None
    baseline_peak_rss: int | None = None
    #: Idle scenario: connections held, and server RSS before and after opening them.
    connections: int = 0
    rss_before: int | None = None
    rss_after: int | None = None
    #: CPU seconds used by the busiest publisher and the busiest subscriber process: a
    #: client near 100% of the run would mean the client, not the server, set the pace.
    busiest_publisher_cpu: float = 0.0
    busiest_subscriber_cpu: float = 0.0
    notes: tuple[str, ...] = ()
    failure: str | None = None
    #: The scenario's title with its sizes, for tables.
    label: str = ""

    @property
    def missing(self) -> int:
        return max(0, self.expected - self.delivered)

    @property
    def complete(self) -> bool:
        """Whether every expected message arrived and every client took part."""
        return (
            self.failure is None
            and self.delivered >= self.expected
            and not any(s.failure for s in self.subscribers)
        )

    @property
    def rss_per_connection(self) -> float | None:
        if self.rss_before is None or self.rss_after is None or not self.connections:
            return None
        return (self.rss_after - self.rss_before) / self.connections

    @property
    def healthy_ratio(self) -> float | None:
        """Stalled scenario: the healthy rate with the stalled subscriber over the rate without."""
        if not self.baseline_rate:
            return None
        return self.rate / self.baseline_rate


def _subject(scenario: Scenario, index: int) -> str:
    return scenario.subject.format(i=index)


def _default_timeout(scenario: Scenario) -> float:
    return 60 + scenario.expected / 20_000


def run_scenario(
    scenario: Scenario,
    target: Target,
    *,
    progress: ProgressCallback | None = None,
    timeout: float | None = None,
) -> ScenarioResult:
    """Run one scenario against a running server and measure it.

    Args:
        scenario: What to run (see `SCENARIOS`).
        target: The server; its `pid`, if set, is read for CPU time and memory.
        progress: Called with a label, deliveries so far and deliveries expected.
        timeout: Bound on the whole run in seconds; by default 60 s plus 50 us per delivery.

    Returns:
        The measurements. Missing messages are reported in the result, never waited for past
        the timeout, nor past `QUIET_SECONDS` of silence after the publishers finished.
    """
    timeout = timeout if timeout is not None else _default_timeout(scenario)
    label = f"{scenario.name} [{target.kind}]"
    if scenario.kind == "idle":
        result = _run_idle(scenario, target, timeout, label, progress)
    elif scenario.kind == "stalled":
        baseline = _run_flow(
            dataclasses.replace(scenario, stalled=0), target, timeout, label + " baseline", progress
        )
        stalled = _run_flow(scenario, target, timeout, label, progress)
        notes = stalled.notes + _stalled_notes(scenario, target, stalled)
        result = dataclasses.replace(
            stalled,
            baseline_rate=baseline.rate,
            baseline_peak_rss=baseline.peak_rss,
            notes=notes,
            failure=stalled.failure or baseline.failure,
        )
    else:
        result = _run_flow(scenario, target, timeout, label, progress)
    return dataclasses.replace(
        result, label=scenario.label, notes=result.notes + _client_notes(result)
    )


def _client_notes(result: ScenarioResult) -> tuple[str, ...]:
    """Say so when a client, not the server, may have set the pace."""
    if result.seconds <= 0:
        return ()
    notes = []
    if result.busiest_publisher_cpu / result.seconds > 0.8:
        notes.append(
            f"the busiest publisher used {result.busiest_publisher_cpu:.2f} CPU s in a "
            f"{result.seconds:.2f} s run: the rate may be client-bound"
        )
    if result.busiest_subscriber_cpu / result.seconds > 0.8:
        notes.append(
            f"the busiest subscriber used {result.busiest_subscriber_cpu:.2f} CPU s in a "
            f"{result.seconds:.2f} s run: the rate may be client-bound"
        )
    return tuple(notes)


def _run_flow(
    scenario: Scenario,
    target: Target,
    timeout: float,
    label: str,
    progress: ProgressCallback | None,
) -> ScenarioResult:
    context = forkserver()
    deadline = time.monotonic() + timeout
    expected_each = None if scenario.queue is not None else scenario.published
    expected = scenario.expected
    patterns = scenario.patterns
    empty = ScenarioResult(
        scenario.name, target.kind, scenario.published, expected, 0, 0.0, 0.0, None, None
    )
    with supervised() as workers, RssSampler(target.pid) as rss:
        subscribers: list[Worker] = []
        for j in range(scenario.subscribers + scenario.stalled):
            stalled = j >= scenario.subscribers
            name = f"{'stalled' if stalled else 'sub'}-{j}"
            spec = SubscriberSpec(
                target,
                name,
                (patterns[j % len(patterns)],),
                scenario.queue,
                None if stalled else expected_each,
                stalled,
                deadline,
            )
            subscribers.append(Worker(context, subscriber_main, spec, name))
        workers.extend(subscribers)
        healthy = subscribers[: scenario.subscribers]
        setup = min(deadline, time.monotonic() + SETUP_SECONDS)
        if not pump(workers, lambda: all(w.ready or w.finished for w in workers), setup):
            return dataclasses.replace(empty, failure="subscribers did not subscribe in time")
        if failed := [w for w in subscribers if not w.ready]:
            return _failed(empty, failed, "subscriber")
        publishers: list[Worker] = []
        for i in range(scenario.publishers):
            pub_spec = PublisherSpec(
                target,
                f"pub-{i}",
                (_subject(scenario, i),),
                scenario.payload,
                scenario.messages,
                deadline,
            )
            publishers.append(Worker(context, publisher_main, pub_spec, f"pub-{i}"))
        workers.extend(publishers)
        if not pump(workers, lambda: all(w.ready or w.finished for w in publishers), setup):
            return dataclasses.replace(empty, failure="publishers did not connect in time")
        if failed := [w for w in publishers if not w.ready]:
            return _failed(empty, failed, "publisher")

        cpu_before = process_cpu_seconds(target.pid) if target.pid is not None else None
        for worker in publishers:
            worker.send("go")
        state = _FlowState(healthy, publishers, expected, scenario.queue is not None)
        reported = 0.0

        def finished() -> bool:
            nonlocal reported
            now = time.monotonic()
            if progress is not None and now - reported >= PROGRESS_INTERVAL:
                reported = now
                progress(label, state.delivered(), expected)
            return state.finished(now)

        pump(workers, finished, deadline)
        cpu_after = process_cpu_seconds(target.pid) if target.pid is not None else None
        for worker in subscribers:
            # Queue members, stalled ones, and any still short of their count.
            worker.send("stop")
        pump(workers, lambda: all(w.finished for w in workers), time.monotonic() + 40)
        if progress is not None:
            progress(label, state.delivered(), expected)
    outcomes = tuple(_outcome(w) for w in subscribers)
    delivered = sum(o.received for o in outcomes if not o.stalled)
    starts = [r.started_at for w in publishers if (r := w.report) and r.started_at is not None]
    ends = [o.last_at for o in outcomes if not o.stalled and o.last_at is not None]
    seconds = max(ends) - min(starts) if starts and ends else 0.0
    cpu = None
    if cpu_before is not None and cpu_after is not None and delivered:
        cpu = (cpu_after - cpu_before) / delivered
    notes = [f"{w.name}: {r.failure}" for w in publishers if (r := w.report) and r.failure]
    notes += [f"{w.name}: exited without a report" for w in workers if w.report is None]
    cut = [o for o in outcomes if not o.stalled and o.closed_by_server]
    if cut:
        errors = sorted({error for o in cut for error in o.errors}) or ["none"]
        notes.append(
            f"{len(cut)} of {scenario.subscribers} healthy subscribers were disconnected by the "
            f"server (ERRs seen: {', '.join(errors)})"
        )
    return ScenarioResult(
        scenario.name,
        target.kind,
        scenario.published,
        expected,
        delivered,
        seconds,
        delivered / seconds if seconds > 0 else 0.0,
        cpu,
        rss.peak,
        outcomes,
        busiest_publisher_cpu=max(
            (r.cpu_seconds for w in publishers if (r := w.report)), default=0.0
        ),
        busiest_subscriber_cpu=max((o.cpu_seconds for o in outcomes), default=0.0),
        notes=tuple(notes),
    )


class _FlowState:
    """When a run is over: every healthy subscriber done, silence, or the deadline."""

    def __init__(
        self, healthy: list[Worker], publishers: list[Worker], expected: int, grouped: bool
    ) -> None:
        self.healthy = healthy
        self.publishers = publishers
        self.expected = expected
        self.grouped = grouped
        self._last_total = -1
        self._last_change = time.monotonic()

    def delivered(self) -> int:
        return sum(w.count for w in self.healthy)

    def finished(self, now: float) -> bool:
        total = self.delivered()
        if self.grouped:
            if total >= self.expected:
                return True
        elif all(w.finished for w in self.healthy):
            return True
        if total != self._last_total:
            self._last_total, self._last_change = total, now
            return False
        publishing = not all(w.finished for w in self.publishers)
        return not publishing and now - self._last_change >= QUIET_SECONDS


def _outcome(worker: Worker) -> SubscriberOutcome:
    report = worker.report
    if isinstance(report, SubscriberOutcome):
        return report
    return SubscriberOutcome(worker.name, None, worker.count, failure="exited without a report")


def _failed(empty: ScenarioResult, failed: list[Worker], role: str) -> ScenarioResult:
    reasons = []
    for worker in failed[:3]:
        report = worker.report
        reason = getattr(report, "failure", None) or "exited without a report"
        reasons.append(f"{worker.name}: {reason}")
    more = f" (and {len(failed) - 3} more)" if len(failed) > 3 else ""
    text = f"{len(failed)} {role}(s) could not start: " + "; ".join(reasons) + more
    return dataclasses.replace(empty, failure=text)


def _stalled_notes(scenario: Scenario, target: Target, result: ScenarioResult) -> tuple[str, ...]:
    notes: list[str] = []
    for outcome in result.subscribers:
        if not outcome.stalled:
            continue
        if outcome.failure:
            notes.append(f"stalled subscriber failed: {outcome.failure}")
        elif outcome.closed_by_server:
            how = (
                f"with ERR {', '.join(outcome.errors)}"
                if outcome.errors
                else "without an ERR, as it was cut off mid-frame"
            )
            notes.append(
                f"stalled subscriber disconnected by the server {how}; "
                f"{outcome.received} of {scenario.published} messages had reached its socket"
            )
        else:
            notes.append(
                f"stalled subscriber still connected; it read {outcome.received} of "
                f"{scenario.published} messages once it resumed"
            )
    if target.kind == "broker":
        limits = scenario.broker_config.get("limits", {})
        if limits:
            notes.append(
                "policy: disconnect (default); "
                + ", ".join(f"{key} {value}" for key, value in limits.items())
            )
        if target.log_path is not None:
            with contextlib.suppress(OSError):
                lines = Path(target.log_path).read_text(errors="replace").splitlines()
                slow = [line for line in lines if "slow consumer" in line]
                if slow:
                    notes.append(f"broker log: {slow[-1].split(': ', 1)[-1][:200]}")
    elif target.monitor_port is not None:
        varz = nats_varz(target)
        if varz is not None:
            notes.append(
                f"nats-server: slow_consumers {varz.get('slow_consumers')}, max_pending "
                f"{varz.get('max_pending')}, write_deadline {varz.get('write_deadline')} ns"
            )
    return tuple(notes)


def _run_idle(
    scenario: Scenario,
    target: Target,
    timeout: float,
    label: str,
    progress: ProgressCallback | None,
) -> ScenarioResult:
    context = forkserver()
    deadline = time.monotonic() + timeout
    total = scenario.connections
    empty = ScenarioResult(scenario.name, target.kind, total, total, 0, 0.0, 0.0, None, None)
    pid = target.pid
    with supervised() as workers, RssSampler(pid) as rss:
        rss_before = process_rss(pid) if pid is not None else None
        started = time.monotonic()
        for first in range(0, total, IDLE_PER_PROCESS):
            count = min(IDLE_PER_PROCESS, total - first)
            name = f"idle-{first // IDLE_PER_PROCESS}"
            workers.append(
                Worker(context, idle_main, IdleSpec(target, name, first, count, deadline), name)
            )

        def all_ready() -> bool:
            if progress is not None:
                connected = sum(w.info or 0 for w in workers)
                progress(label + " connect", connected, total)
            return all(w.ready or w.finished for w in workers)

        pump(workers, all_ready, deadline)
        seconds = time.monotonic() - started
        if failed := [w for w in workers if not w.ready]:
            return _failed(empty, failed, "idle client")
        connected = sum(w.info for w in workers)
        # Let the server settle (freed handshake buffers, finished tasks) before measuring.
        time.sleep(1.0)
        rss_after = process_rss(pid) if pid is not None else None
        # Check every connection is alive and subscribed: one message to each subject.
        publisher = Worker(
            context,
            publisher_main,
            PublisherSpec(
                target,
                "idle-check",
                tuple(f"idle.{i}" for i in range(total)),
                scenario.payload,
                total,
                deadline,
            ),
            "idle-check",
        )
        workers.append(publisher)
        pump(workers, lambda: publisher.ready or publisher.finished, deadline)
        publisher.send("go")
        for worker in workers[:-1]:
            worker.send("check")
        idle = workers[:-1]
        pump(workers, lambda: all(w.checked is not None or w.finished for w in idle), deadline)
        received = sum(w.checked or 0 for w in idle)
        if progress is not None:
            progress(label + " connect", connected, total)
    notes = []
    if connected < total:
        notes.append(f"only {connected} of {total} connections were accepted")
    return ScenarioResult(
        scenario.name,
        target.kind,
        total,
        total,
        received,
        seconds,
        connected / seconds if seconds else 0.0,
        None,
        rss.peak,
        connections=connected,
        rss_before=rss_before,
        rss_after=rss_after,
        notes=tuple(notes),
    )


def scaled(
    scenario: Scenario,
    *,
    messages: int | None = None,
    payload: int | None = None,
    connections: int | None = None,
    scale: float = 1.0,
) -> Scenario:
    """The scenario with its sizes overridden: `messages` is the total published, split among
    the publishers; `scale` multiplies the default message and connection counts."""
    changes: dict[str, Any] = {}
    if scenario.kind == "idle":
        count = connections if connections is not None else round(scenario.connections * scale)
        changes["connections"] = max(1, count)
        if payload is not None:
            changes["payload"] = payload
    else:
        if messages is not None:
            changes["messages"] = max(1, messages // scenario.publishers)
        else:
            changes["messages"] = max(1, round(scenario.messages * scale))
        if payload is not None:
            changes["payload"] = payload
    if scenario.kind == "idle":
        # Room for the idle connections plus the measuring ones.
        changes["broker_config"] = {"limits": {"max_connections": changes["connections"] + 1_000}}
    return dataclasses.replace(scenario, **changes)
