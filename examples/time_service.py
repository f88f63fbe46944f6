"""A "what time is it" service: a queue group of workers answers requests, a caller asks.

    python examples/time_service.py [--url URL] serve [--workers 3]
    python examples/time_service.py [--url URL] ask [--count 1] [--timeout 2]

Each request on ``time.now`` goes to exactly one worker of the group ``time-workers``, taken in
turn, and the answer is JSON: ``{"time": "...", "worker": 2}``. Ctrl-C or SIGTERM drains the
service: no new requests are taken, those already taken are answered, then it exits.

With no worker running, ``ask`` prints "no responders" and exits 1 at once: the broker tells a
requester that nobody subscribes, so it never waits out its timeout to learn that.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from datetime import UTC, datetime

import trio

import broker
from broker.cli import DEFAULT_URL

SUBJECT = "time.now"
QUEUE = "time-workers"


async def work(number: int, requests: broker.Subscription) -> None:
    async for request in requests:  # Ends when the client drains.
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        await request.respond(json.dumps({"time": now, "worker": number}).encode())


async def serve(url: str, workers: int) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with (
            broker.connect(url, name="time-service") as client,
            trio.open_nursery() as nursery,
        ):
            for number in range(1, workers + 1):
                nursery.start_soon(work, number, client.subscribe(SUBJECT, queue=QUEUE))
            await client.flush()  # Every worker is in the group before we say we are ready.
            print(f"ready: {workers} workers on {SUBJECT}", flush=True)
            async for _ in signals:
                break
            await client.drain()  # Take no new requests, answer those taken, then close.
    print("stopped", flush=True)


async def ask(url: str, count: int, timeout: float) -> int:
    async with broker.connect(url, name="time-ask") as client:
        for _ in range(count):
            try:
                with trio.fail_after(timeout):  # A timeout is the caller's cancel scope.
                    reply = await client.request(SUBJECT, b"")
            except broker.NoResponders:
                print(
                    f"no responders on {SUBJECT}: is `time_service.py serve` running?",
                    file=sys.stderr,
                )
                return 1
            except trio.TooSlowError:
                print(f"no reply on {SUBJECT} within {timeout} s", file=sys.stderr)
                return 1
            answer = json.loads(reply.payload)
            print(f"{answer['time']} from worker {answer['worker']}", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("BROKER_URL", DEFAULT_URL),
        help=f"broker address (default: $BROKER_URL, else {DEFAULT_URL})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run a queue group of workers")
    serve_parser.add_argument("--workers", type=int, default=3, help="default: %(default)s")
    ask_parser = commands.add_parser("ask", help="ask the time, print the answers")
    ask_parser.add_argument("--count", type=int, default=1, help="requests (default: 1)")
    ask_parser.add_argument("--timeout", type=float, default=2.0, help="seconds (default: 2)")
    args = parser.parse_args()
    try:
        if args.command == "serve":
            trio.run(serve, args.url, args.workers)
            return 0
        return trio.run(ask, args.url, args.count, args.timeout)
    except broker.ConnectionClosed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
