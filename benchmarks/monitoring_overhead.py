"""Monitoring on vs off: `broker bench`'s 1 -> 1 and 1 -> 10 scenarios, in one run.

Three brokers per round, each a fresh ``broker serve`` process loaded by the same thin load
generator (`broker.bench`):

- ``off``: this checkout, ``[monitoring]`` off (the built-in default);
- ``on``: this checkout, monitoring on, scraped as a busy Prometheus would (/metrics, /varz and
  /connz once a second, from a thread of this process);
- ``base`` (with ``--base-python``): an interpreter with the code before monitoring installed,
  to measure what the per-connection counters cost on the hot path.

The order of the modes rotates every round, so drift on a shared, noisy machine does not
favour one. Reports the median and the range of each mode's rates, and the ratios of medians.

    python benchmarks/monitoring_overhead.py --rounds 6 --scale 0.5 \\
        --base-python /tmp/main-venv/bin/python
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from broker.bench.scenarios import SCENARIOS, run_scenario, scaled
from broker.bench.servers import free_port, start_broker

SCRAPED = ("/metrics", "/varz", "/connz")


@contextmanager
def scraping(url: str, interval: float = 1.0) -> Iterator[list[int]]:
    """GET each of `SCRAPED` every `interval` seconds until the block ends; yields the count."""
    done = threading.Event()
    count = [0]

    def scrape() -> None:
        while not done.wait(interval):
            for path in SCRAPED:
                with urllib.request.urlopen(url + path, timeout=5) as response:
                    response.read()
                count[0] += 1

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    try:
        yield count
    finally:
        done.set()
        thread.join(10)


def run(mode: str, name: str, scale: float, base_python: str | None) -> tuple[float, float]:
    """One run of scenario `name` against a fresh broker in `mode`: (deliveries/s, CPU us)."""
    (scenario,) = [scaled(s, scale=scale) for s in SCENARIOS if s.name == name]
    config = {k: dict(v) for k, v in (scenario.broker_config or {}).items()}
    python = sys.executable
    port = 0
    if mode == "on":
        port = free_port()
        config["monitoring"] = {"enabled": True, "port": port}
    elif mode == "base":
        assert base_python is not None
        python = base_python
    with start_broker(config or None, python=python) as server:
        if mode == "on":
            with scraping(f"http://127.0.0.1:{port}") as scrapes:
                result = run_scenario(scenario, server.target)
            assert scrapes[0] > 0 or result.rate > 0
        else:
            result = run_scenario(scenario, server.target)
    if not result.complete:
        print(f"  {mode} {name}: INCOMPLETE {result.notes}", flush=True)
    cpu = (result.cpu_per_delivery or 0.0) * 1e6
    return result.rate, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--base-python", default=None)
    args = parser.parse_args()
    modes = ["off", "on"] + (["base"] if args.base_python else [])
    names = ("one-to-one", "fan-out-10")
    rates: dict[tuple[str, str], list[float]] = {(m, n): [] for m in modes for n in names}
    cpus: dict[tuple[str, str], list[float]] = {(m, n): [] for m in modes for n in names}
    for round_ in range(args.rounds):
        order = modes[round_ % len(modes) :] + modes[: round_ % len(modes)]
        for name in names:
            for mode in order:
                rate, cpu = run(mode, name, args.scale, args.base_python)
                rates[mode, name].append(rate)
                cpus[mode, name].append(cpu)
                print(
                    f"round {round_ + 1} {name:10} {mode:4} {rate:>10,.0f}/s {cpu:6.2f} us",
                    flush=True,
                )
    print()
    print("| scenario | mode | median deliveries/s | range | median CPU us/delivery | vs off |")
    print("|---|---|---|---|---|---|")
    for name in names:
        off = statistics.median(rates["off", name])
        for mode in modes:
            got = rates[mode, name]
            median = statistics.median(got)
            print(
                f"| {name} | {mode} | {median:,.0f} | {min(got):,.0f} - {max(got):,.0f} |"
                f" {statistics.median(cpus[mode, name]):.2f} | {median / off:.2f} |"
            )


if __name__ == "__main__":
    main()
