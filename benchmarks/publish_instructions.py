"""CPU instructions the broker spends per publish, counted by callgrind (deterministic).

Runs `broker serve` under ``valgrind --tool=callgrind`` twice per scenario, loaded by
`broker bench --url` with two message counts, and divides the difference in instructions by the
difference in messages, so start-up, the handshake and shutdown cancel out. Unlike a rate, the
count hardly depends on what else the machine runs, so it compares two versions of the code
reliably (one version against another, not against nats-server).

    python benchmarks/publish_instructions.py                 # one-to-one and fan-out-10
    python benchmarks/publish_instructions.py -s one-to-one --small 5000 --large 25000

Needs valgrind on PATH. Each run takes tens of seconds: the broker runs about 50 times slower
under callgrind.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from broker.bench.servers import free_port

SCENARIOS = ("one-to-one", "fan-out-10")
CONFIG = "[limits]\nmax_pending_bytes = 268435456\nmax_pending_messages = 100000000\n"


def count_instructions(scenario: str, messages: int) -> int:
    workdir = tempfile.mkdtemp(prefix="broker-callgrind-")
    config = Path(workdir, "broker.toml")
    config.write_text(CONFIG)
    out = os.path.join(workdir, "callgrind.out")
    port = free_port()
    server = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "broker",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--config",
            str(config),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONHASHSEED="0"),
    )
    try:
        bench = [sys.executable, "-m", "broker", "bench", "--url", f"tcp://127.0.0.1:{port}"]
        bench += ["-s", scenario, "-n", str(messages), "--timeout", "900"]
        for _ in range(600):
            probe = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    f"import socket; socket.create_connection(('127.0.0.1', {port}), 1)",
                ],
                capture_output=True,
            )
            if probe.returncode == 0:
                break
            time.sleep(0.5)
        result = subprocess.run(bench, capture_output=True, text=True, timeout=1200)
        if result.returncode != 0:
            raise RuntimeError(f"broker bench failed: {result.stdout}\n{result.stderr}")
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=300)
    match = re.search(r"Collected : (\d+)", err)
    if match is None:
        raise RuntimeError(f"no instruction count from callgrind: {err[-2000:]}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-s", "--scenario", action="append", choices=SCENARIOS)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=30_000)
    args = parser.parse_args()
    for scenario in args.scenario or SCENARIOS:
        small = count_instructions(scenario, args.small)
        large = count_instructions(scenario, args.large)
        per = (large - small) / (args.large - args.small)
        print(
            f"{scenario}: {per:,.0f} instructions per publish "
            f"({args.small:,} and {args.large:,} messages)",
            flush=True,
        )


if __name__ == "__main__":
    main()
