"""How long a new subscription takes to receive its retained messages, and what the store holds.

Starts a broker in-process on a free loopback port, retains N messages (100 B payloads) on
``sensor.<i % 100>.<i>``, then for a few patterns times a fresh client from SUB to the last
replayed message. Run: ``python benchmarks/retained_replay.py --subjects 10000``.
"""

from __future__ import annotations

import argparse
import time

import trio

import broker
from broker.testing import running_broker

PATTERNS = (">", "sensor.7.*", "sensor.*.7007")


async def main(subjects: int) -> None:
    async with (
        running_broker(max_retained_subjects=subjects) as handle,
        handle.connect(name="writer") as writer,
    ):
        for i in range(subjects):
            await writer.publish(f"sensor.{i % 100}.{i}", b"x" * 100, retain=True)
        await writer.flush()
        stats = handle.statistics()
        print(
            f"{stats.retained_subjects:,} retained subjects, store counted at "
            f"{stats.retained_bytes / 1e6:.1f} MB"
        )
        for pattern in PATTERNS:
            async with broker.connect(handle.url, name="reader") as reader:
                start = time.perf_counter()
                async with reader.subscribe(pattern, max_pending=subjects + 1) as sub:
                    await reader.flush()  # the replay is queued with the SUB, before the PONG
                    count = sub.pending
                elapsed = time.perf_counter() - start
                print(f"SUB {pattern!r}: {count:,} replayed in {elapsed * 1000:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=10_000)
    trio.run(main, parser.parse_args().subjects)
