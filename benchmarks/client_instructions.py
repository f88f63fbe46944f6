"""CPU instructions a Python client spends per message and per request, counted by callgrind.

The rates of `benchmarks/clients.py` move with whatever else the machine runs; an instruction
count does not. This runs one client process of `clients.py` under ``valgrind --tool=callgrind``
(the server and the other side run natively), twice with different message counts, and divides
the difference in instructions by the difference in messages, so start-up and the handshake
cancel out. Our clients run against `broker serve`, nats-py against nats-server. The roles:
``pub`` (per publish), ``sub`` (per delivery), ``req`` (the requester, per sequential request)
and ``rep`` (the responder, per request answered).

    python benchmarks/client_instructions.py                       # every client, pub and sub
    python benchmarks/client_instructions.py --clients trio,nats --roles pub
    python benchmarks/client_instructions.py --roles req,rep --small 1000 --large 4000

Needs valgrind on PATH, and the peers for nats (see clients.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import clients  # noqa: E402  (the sibling benchmark, whose workers this runs)

ROLES = ("pub", "sub", "req", "rep")
#: What one unit of each role is.
UNITS = {"pub": "publish", "sub": "delivery", "req": "request", "rep": "request answered"}


def _worker(kind: str, role: str, url: str, count: int, out: str | None) -> subprocess.Popen[str]:
    command = [sys.executable, str(HERE / "clients.py"), "worker", kind, role, url, str(count), "0"]
    if out is not None:
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command]
    return subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONHASHSEED="0"),
    )


def _expect(proc: subprocess.Popen[str], event: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if f'"{event}"' not in line:
        assert proc.stderr is not None
        raise RuntimeError(f"expected {event}, got {line!r}: {proc.stderr.read()[-2000:]}")


def _go(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()


def count(kind: str, role: str, url: str, messages: int) -> int:
    """Instructions of the measured process for one run of `messages` messages."""
    out = os.path.join(tempfile.mkdtemp(prefix="client-callgrind-"), "callgrind.out")
    measured = _worker(kind, role, url, messages, out)
    other: subprocess.Popen[str] | None = None
    try:
        if role == "pub":
            _expect(measured, "ready")
            _go(measured)
            _expect(measured, "done")
        elif role == "req":
            other = _worker(kind, "rep", url, 0, None)
            _expect(other, "ready")
            _expect(measured, "ready")
            _go(measured)
            _expect(measured, "done")
        elif role == "rep":
            _expect(measured, "ready")
            other = _worker(kind, "req", url, messages, None)
            _expect(other, "ready")
            _go(other)
            _expect(other, "done")
            # A responder answers until stopped: interrupted, it exits and callgrind reports.
            measured.send_signal(signal.SIGINT)
        else:
            _expect(measured, "ready")
            other = _worker(kind, "pub", url, messages, None)
            _expect(other, "ready")
            _go(other)
            _expect(other, "done")
            _expect(measured, "done")
        _, err = measured.communicate(timeout=600)
    finally:
        for proc in (measured, other):
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()
    match = re.search(r"Collected : (\d+)", err)
    if match is None:
        raise RuntimeError(f"no instruction count from callgrind: {err[-2000:]}")
    return int(match.group(1))


def main() -> None:
    from broker import bench

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default=",".join(clients.CLIENTS))
    parser.add_argument("--roles", default="pub,sub", help=f"any of {','.join(ROLES)}")
    parser.add_argument("--small", type=int, default=5_000)
    parser.add_argument("--large", type=int, default=25_000)
    args = parser.parse_args()
    kinds = [k for k in args.clients.split(",") if k]
    roles = [r for r in args.roles.split(",") if r]
    with contextlib.ExitStack() as stack:
        urls = {}
        if any(k != "nats" for k in kinds):
            server = stack.enter_context(bench.start_broker(clients.SERVER_CONFIG))
            for kind in ("trio", "asyncio", "sync"):
                urls[kind] = f"tcp://127.0.0.1:{server.target.port}"
        if "nats" in kinds:
            nats_server = stack.enter_context(bench.start_nats())
            urls["nats"] = f"nats://127.0.0.1:{nats_server.target.port}"
        for role in roles:
            for kind in kinds:
                small = count(kind, role, urls[kind], args.small)
                large = count(kind, role, urls[kind], args.large)
                per = (large - small) / (args.large - args.small)
                print(
                    f"{clients.LABELS[kind]}: {per:,.0f} instructions per {UNITS[role]}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
