"""A key-value store made of retained messages: the broker keeps each key's last value.

    python examples/kv.py [--url URL] set KEY VALUE
    python examples/kv.py [--url URL] get KEY          # exits 1 if KEY is not set
    python examples/kv.py [--url URL] del KEY
    python examples/kv.py [--url URL] watch PATTERN [--count N]

KEY ``user.alice`` lives on the subject ``kv.user.alice``: ``set`` publishes the value retained,
``del`` publishes an empty retained message (which deletes it). ``get`` subscribes and flushes:
the broker queues the retained value when the subscription is made, so it has arrived by the
time the PONG does; nothing pending, or an empty value (a deletion), means no value. ``watch``
prints the current values matching PATTERN (``*`` one token, ``>`` the rest), marked
``(retained)``, then every change as it happens, until Ctrl-C or ``--count`` changes. Values
live in the broker's memory: they go when it stops, and its ``[retained]`` bounds cap how many
there may be.
"""

from __future__ import annotations

import argparse
import os
import sys

import trio

import broker
from broker.cli import DEFAULT_URL
from broker.subjects import SubjectError, validate_pattern, validate_subject

PREFIX = "kv."


async def store(url: str, key: str, value: bytes) -> int:
    async with broker.connect(url, name="kv") as client:
        try:
            await client.publish(PREFIX + key, value, retain=True)
            # Stored by the PONG, or the refusal is raised here.
            await client.flush(raise_refused=True)
        except broker.RetainedLimitExceeded as refused:
            print(f"{key}: {refused}", file=sys.stderr)
            return 1
    return 0


async def get_value(url: str, key: str) -> int:
    async with broker.connect(url, name="kv") as client, client.subscribe(PREFIX + key) as sub:
        await client.flush()
        value = b""
        while sub.pending:  # The retained value, then any live change since: the last one wins.
            value = (await sub.next()).payload
    if not value:
        print(f"{key}: not found", file=sys.stderr)
        return 1
    print(value.decode("utf-8", "replace"), flush=True)
    return 0


async def watch(url: str, pattern: str, count: int | None) -> int:
    async with (
        broker.connect(url, name="kv-watch") as client,
        client.subscribe(PREFIX + pattern) as changes,
    ):
        await client.flush()
        print(f"watching {PREFIX}{pattern}", flush=True)
        seen = 0
        async for change in changes:
            key = change.subject.removeprefix(PREFIX)
            if not change.payload:
                print(f"{key} deleted", flush=True)
            else:
                retained = " (retained)" if change.retained else ""
                print(f"{key} = {change.payload.decode('utf-8', 'replace')}{retained}", flush=True)
            seen += 1
            if seen == count:
                break
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("BROKER_URL", DEFAULT_URL),
        help=f"broker address (default: $BROKER_URL, else {DEFAULT_URL})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    set_parser = commands.add_parser("set", help="set KEY to VALUE")
    set_parser.add_argument("key", metavar="KEY")
    set_parser.add_argument("value", metavar="VALUE")
    get_parser = commands.add_parser("get", help="print KEY's value")
    get_parser.add_argument("key", metavar="KEY")
    del_parser = commands.add_parser("del", help="delete KEY")
    del_parser.add_argument("key", metavar="KEY")
    watch_parser = commands.add_parser("watch", help="print values and changes")
    watch_parser.add_argument("pattern", metavar="PATTERN")
    watch_parser.add_argument("--count", type=int, metavar="N", help="stop after N changes")
    args = parser.parse_args()
    try:
        if args.command == "watch":
            validate_pattern(PREFIX + args.pattern)
        else:
            validate_subject(PREFIX + args.key)  # A key is a subject: no wildcards.
    except SubjectError as error:
        parser.error(str(error))
    if args.command == "set" and not args.value:
        parser.error("an empty value would delete the key: use `del KEY`")
    try:
        if args.command == "set":
            return trio.run(store, args.url, args.key, args.value.encode())
        if args.command == "get":
            return trio.run(get_value, args.url, args.key)
        if args.command == "del":
            return trio.run(store, args.url, args.key, b"")
        return trio.run(watch, args.url, args.pattern, args.count)
    except KeyboardInterrupt:
        return 0
    except broker.ConnectionClosed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
