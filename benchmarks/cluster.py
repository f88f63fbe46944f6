"""Cluster figures for docs/cluster.md: cross-node throughput and latency beside one node alone.

    python benchmarks/cluster.py                 # the whole run, a markdown table on stdout
    python benchmarks/cluster.py --messages 50000 --repeat 3

Every node is a real ``broker serve`` process with ``[cluster]`` at a redis-server this script
starts on a free loopback port; the load comes from broker.bench's client processes (raw
sockets, frames encoded once), so the clients cost far less than what they measure. Each
scenario reports messages delivered per second and the CPU seconds each node and Redis spent
per published message (from /proc), so the scaling on a machine with more cores can be worked
out from the per-message costs rather than read off a 2-core box.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import trio

import broker
from broker.bench.servers import ServerProcess, process_cpu_seconds, start_broker
from broker.bench.workers import (
    PublisherSpec,
    SubscriberSpec,
    Worker,
    forkserver,
    publisher_main,
    pump,
    subscriber_main,
    supervised,
)


@dataclass
class Redis:
    process: subprocess.Popen[bytes]
    port: int
    workdir: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextlib.contextmanager
def redis_server() -> Iterator[Redis]:
    path = shutil.which("redis-server")
    if path is None:
        raise SystemExit("redis-server is needed (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="broker-cluster-bench-")
    process = subprocess.Popen(
        [path, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield Redis(process, port, workdir)
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def nodes(count: int, redis: Redis | None, prefix: str) -> Iterator[list[ServerProcess]]:
    """`count` broker processes; joined through `redis` under `prefix`, or alone if None."""
    started: list[ServerProcess] = []
    try:
        for index in range(count):
            config: dict[str, dict[str, object]] = {
                "limits": {"max_pending_bytes": 256 * 1024 * 1024}
            }
            if redis is not None:
                config["cluster"] = {
                    "redis_url": redis.url,
                    "name": f"{prefix}-{index}",
                    "prefix": prefix,
                }
            started.append(start_broker(config))
        if redis is not None:
            time.sleep(0.5)  # every node has seen every other
        yield started
    finally:
        for server in started:
            server.stop()


@dataclass
class Result:
    name: str
    delivered: int
    seconds: float
    cpu_per_message: list[float]  # per node, then Redis (microseconds per published message)

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds else 0.0


def flow(
    name: str,
    pub_node: ServerProcess,
    sub_nodes: Sequence[ServerProcess],
    all_nodes: Sequence[ServerProcess],
    redis: Redis | None,
    messages: int,
    payload: int,
) -> Result:
    """One publisher on `pub_node`, one subscriber on each of `sub_nodes` (repeats allowed)."""
    context = forkserver()
    deadline = time.monotonic() + 300
    subject = "bench." + "".join(ch if ch.isalnum() else "_" for ch in name)
    with supervised() as workers:
        subs = [
            Worker(
                context,
                subscriber_main,
                SubscriberSpec(
                    node.target, f"sub-{i}", (subject,), None, messages, False, deadline
                ),
                f"sub-{i}",
            )
            for i, node in enumerate(sub_nodes)
        ]
        workers.extend(subs)
        pump(workers, lambda: all(w.ready or w.finished for w in workers), deadline)
        if redis is not None:
            time.sleep(0.3)  # the subscribers' interest has reached the publisher's node
        pub = Worker(
            context,
            publisher_main,
            PublisherSpec(pub_node.target, "pub", (subject,), payload, messages, deadline),
            "pub",
        )
        workers.append(pub)
        pump(workers, lambda: pub.ready or pub.finished, deadline)
        pids = [node.target.pid for node in all_nodes] + (
            [redis.process.pid] if redis is not None else []
        )
        before = [process_cpu_seconds(pid) or 0.0 for pid in pids if pid is not None]
        pub.send("go")
        pump(workers, lambda: all(w.finished for w in subs), deadline)
        after = [process_cpu_seconds(pid) or 0.0 for pid in pids if pid is not None]
    outcomes = [w.report for w in subs]
    delivered = sum(o.received for o in outcomes)
    starts = [pub.report.started_at] if pub.report and pub.report.started_at else []
    ends = [o.last_at for o in outcomes if o.last_at is not None]
    seconds = max(ends) - min(starts) if starts and ends else 0.0
    cpu = [(b - a) / messages * 1e6 for a, b in zip(before, after, strict=True)]
    return Result(name, delivered, seconds, cpu)


async def _latency(requester_url: str, responder_url: str, count: int) -> list[float]:
    async with (
        broker.connect(requester_url) as requester,
        broker.connect(responder_url) as responder,
    ):
        sub = responder.subscribe("bench.echo")
        await responder.flush()
        await trio.sleep(0.3)

        async def serve() -> None:
            async for msg in sub:
                await msg.respond(msg.payload)

        times: list[float] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            for _ in range(100):  # warm up
                await requester.request("bench.echo", b"x", timeout=5)
            for _ in range(count):
                start = time.perf_counter()
                await requester.request("bench.echo", b"x", timeout=5)
                times.append(time.perf_counter() - start)
            nursery.cancel_scope.cancel()
    return times


def latency(requester: ServerProcess, responder: ServerProcess, count: int) -> tuple[float, float]:
    url = f"tcp://127.0.0.1:{requester.target.port}"
    other = f"tcp://127.0.0.1:{responder.target.port}"
    times = sorted(trio.run(_latency, url, other, count))
    return statistics.median(times) * 1e6, times[int(len(times) * 0.99)] * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--fanout-messages", type=int, default=5_000)
    parser.add_argument("--payload", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    rows: list[str] = []

    def row(result: Result, nodes_used: int) -> None:
        node_cpu = ", ".join(f"{c:.1f}" for c in result.cpu_per_message[:nodes_used])
        redis_cpu = (
            f"{result.cpu_per_message[nodes_used]:.1f}"
            if len(result.cpu_per_message) > nodes_used
            else "-"
        )
        rows.append(
            f"| {result.name} | {result.rate:,.0f} | {result.delivered:,} | {node_cpu} |"
            f" {redis_cpu} |"
        )
        print(rows[-1], file=sys.stderr, flush=True)

    n, fan = args.messages, args.fanout_messages
    for attempt in range(args.repeat):
        # Alternate the order between repeats: the machine is shared and noisy.
        order = ["alone", "cluster"] if attempt % 2 == 0 else ["cluster", "alone"]
        for kind in order:
            if kind == "alone":
                with nodes(1, None, "alone") as (a,):
                    row(flow("1->1 one node alone", a, [a], [a], None, n, args.payload), 1)
                    row(flow("1->10 one node alone", a, [a] * 10, [a], None, n, args.payload), 1)
                    row(flow("1->100 one node alone", a, [a] * 100, [a], None, fan, 16), 1)
                    median, p99 = latency(a, a, args.requests)
                    rows.append(
                        f"| request/reply one node alone | median {median:.0f} us,"
                        f" p99 {p99:.0f} us | | | |"
                    )
                    print(rows[-1], file=sys.stderr, flush=True)
                continue
            with redis_server() as redis, nodes(4, redis, f"b{attempt}") as four:
                a, b = four[0], four[1]
                row(flow("1->1 cross-node", a, [b], four[:2], redis, n, args.payload), 2)
                row(flow("1->10 cross-node", a, [b] * 10, four[:2], redis, n, args.payload), 2)
                for spread in (1, 2, 4):
                    subs = [four[i % spread] for i in range(100)]
                    result = flow(f"1->100 over {spread} node(s)", a, subs, four, redis, fan, 16)
                    row(result, 4)
                median, p99 = latency(a, b, args.requests)
                rows.append(
                    f"| request/reply cross-node | median {median:.0f} us, p99 {p99:.0f} us | | | |"
                )
                print(rows[-1], file=sys.stderr, flush=True)
    print(
        "| scenario | msgs/s delivered | delivered | node CPU us/msg (node0, node1, ...) |"
        " Redis CPU us/msg |"
    )
    print("|---|---|---|---|---|")
    for line in rows:
        print(line)
    print(f"\n{os.cpu_count()} cores; messages {n} (fan-out {fan}), payload {args.payload} B")


if __name__ == "__main__":
    main()
