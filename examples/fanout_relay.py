"""Hold one upstream feed and fan it out to any number of consumers, each with a bounded queue.

    python examples/fanout_relay.py [--url URL] relay --demo 1000 [--rate 20]
    python examples/fanout_relay.py [--url URL] relay --source HOST:PORT
    python examples/fanout_relay.py [--url URL] consume [--name NAME] [--slow SECONDS] [--count N]

The relay is the only connection to the source (a line-based TCP server, or numbered items for
the demo) and publishes each line on ``feed.items``; it starts by saying so, and how consumers
attach. Consumers attach and leave at any time
without the source noticing; each prints the items, and a summary when it stops (``--count``
items, or Ctrl-C).

Each consumer has two bounded queues. At the broker, an outbox: a consumer that stops reading
(a dead network, a stopped process) overflows it, and the broker's ``[slow_consumer] policy``
applies to that consumer alone while the others carry on: ``disconnect`` cuts it off (and it
reconnects), ``drop_oldest`` / ``drop_newest`` drop items and tell it how many. In the client, its
subscription's ``max_pending``: a consumer whose own code is slow (``--slow``) loses the newest
items there. Both losses count in ``Subscription.dropped``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

import broker
from broker.cli import DEFAULT_URL

SUBJECT = "feed.items"


async def numbered(count: int, rate: float) -> AsyncIterator[bytes]:
    start = trio.current_time()
    for number in range(count):
        if rate:
            await trio.sleep_until(start + number / rate)
        yield f"item {number}".encode()


async def lines_from(address: str) -> AsyncIterator[bytes]:
    host, _, port = address.rpartition(":")
    async with await trio.open_tcp_stream(host.strip("[]"), int(port)) as stream:
        pending = b""
        while data := await stream.receive_some():
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r")
        if pending:
            yield pending


async def relay(url: str, source: str | None, demo: int, rate: float) -> None:
    if source:
        items, what = lines_from(source), f"the lines of {source}"
    else:
        pace = f"{rate:g} a second" if rate else "all at once"
        items, what = numbered(demo, rate), f"{demo} demo items, {pace},"
    async with broker.connect(url, name="fanout-relay") as client:
        # Once connected, so the line also says the broker is there; the source is opened next.
        attach = f"consumers attach with: python {sys.argv[0]} --url {url} consume"
        print(f"relaying {what} to {SUBJECT} on {url}; {attach}", flush=True)
        count = 0
        async for item in items:
            # No I/O and no waiting for consumers: the writer task sends, the broker fans out.
            await client.publish(SUBJECT, item)
            count += 1
        await client.flush()
    print(f"relayed {count} items", flush=True)


def report(error: broker.BrokerError) -> None:
    """The ``on_error`` hook: the broker's drop policy discarded items meant for us."""
    if isinstance(error, broker.MessagesDropped):
        print(f"the broker dropped {error.dropped} items for us", file=sys.stderr, flush=True)


def cut_off(error: broker.ConnectionClosed) -> None:
    """The ``on_disconnected`` hook; under the ``disconnect`` policy, `error` is `SlowConsumer`."""
    print(f"cut off: {error}; reconnecting", file=sys.stderr, flush=True)


async def consume(url: str, name: str, slow: float, max_pending: int, count: int | None) -> None:
    received = 0
    async with (
        broker.connect(url, name=name, on_error=report, on_disconnected=cut_off) as client,
        client.subscribe(SUBJECT, max_pending=max_pending) as feed,
    ):
        await client.flush()
        print(f"consuming {SUBJECT} as {name}", flush=True)
        try:
            async for item in feed:
                received += 1
                print(item.payload.decode("utf-8", "replace"), flush=True)
                if received == count:
                    break
                await trio.sleep(slow)
        finally:
            print(f"{received} items received, {feed.dropped} lost", flush=True)


async def until_interrupted(work: Callable[..., Awaitable[None]], *args: Any) -> None:
    """Run `work` until it ends or Ctrl-C. SIGINT cancels it, so it cleans up and prints its
    summary as on any cancellation; a KeyboardInterrupt could land inside Trio's own code."""
    async with trio.open_nursery() as nursery:

        async def on_ctrl_c() -> None:
            with trio.open_signal_receiver(signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

        nursery.start_soon(on_ctrl_c)
        await work(*args)
        nursery.cancel_scope.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("BROKER_URL", DEFAULT_URL),
        help=f"broker address (default: $BROKER_URL, else {DEFAULT_URL})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    relay_parser = commands.add_parser("relay", help="republish one upstream feed")
    source = relay_parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--source", metavar="HOST:PORT", help="a TCP server sending lines")
    source.add_argument("--demo", type=int, metavar="N", help="generate N numbered items")
    relay_parser.add_argument(
        "--rate", type=float, default=20.0, help="demo items per second; 0: at once (default: 20)"
    )
    consume_parser = commands.add_parser("consume", help="print the feed")
    consume_parser.add_argument("--name", default="consumer", help="client name (in the logs)")
    consume_parser.add_argument("--slow", type=float, default=0.0, help="seconds per item")
    consume_parser.add_argument("--count", type=int, metavar="N", help="stop after N items")
    consume_parser.add_argument(
        "--max-pending", type=int, default=1000, help="items queued in the client (default: 1000)"
    )
    args = parser.parse_args()
    try:
        if args.command == "relay":
            trio.run(until_interrupted, relay, args.url, args.source, args.demo, args.rate)
        else:
            trio.run(
                until_interrupted,
                consume,
                args.url,
                args.name,
                args.slow,
                args.max_pending,
                args.count,
            )
    except KeyboardInterrupt:
        pass  # before the signal receiver was in place
    except (OSError, broker.ConnectionClosed) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
