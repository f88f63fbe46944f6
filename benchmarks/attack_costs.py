"""What a hostile client's subscription traffic costs everyone else: the longest synchronous step.

Everything the hub and routing table do runs in one step of the client's reader task, during
which no other client is served; these are the steps issue 10 found taking seconds. Measured
in-process on the pure hub, so the figures are the broker's own work, free of sockets:

- SUB + UNSUB of a pattern starting with ``*`` while the match cache holds 4,096 subjects the
  pattern does not match (the attacker fills it by publishing to distinct subjects).
- Closing a connection that holds 65,536 subscriptions ``{a,*}^16.z``: the longest step of the
  teardown, and its total (the server yields between steps of `_TEARDOWN_BATCH`).
- One publish to a subject those 65,536 patterns all match, with the cache defeated: a step
  the reader cannot split, so the reader's turn budget looks at the clock every few frames.

Run: ``python benchmarks/attack_costs.py``. Results and their before/after are in
docs/reliability.md.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from broker.config import Config
from broker.hub import Hub, Subscription
from broker.message import Message, Retained
from broker.routing import RoutingTable
from broker.server.server import _TEARDOWN_BATCH


class _Owner:
    """A subscriber that counts its deliveries and keeps nothing."""

    name = "attacker"
    echo = True
    permissions = None
    lang = version = ""
    in_msgs = in_bytes = out_msgs = out_bytes = 0

    def __init__(self) -> None:
        self.subscriptions: dict[Any, Subscription] = {}
        self.delivered = 0

    def deliver(self, sub: Subscription, message: Message) -> int:
        self.delivered += 1
        return 1

    def replay(self, sub: Subscription, entries: list[tuple[str, Retained]]) -> bool:
        return True


def churn(rounds: int = 2000) -> float:
    """Seconds per wildcard SUB + UNSUB with a full cache of subjects it does not match."""
    table: RoutingTable[object] = RoutingTable(cache_size=4096)
    table.insert(object(), ">")
    for index in range(4096):
        table.match(f"s{index}.x")
    start = time.perf_counter()
    for _ in range(rounds):
        sub = object()
        table.insert(sub, "*.y")
        table.remove(sub)
    return (time.perf_counter() - start) / rounds


def _patterns(count: int) -> list[str]:
    shapes = itertools.islice(itertools.product("a*", repeat=16), count)
    return [".".join(shape) + ".z" for shape in shapes]


def teardown(count: int = 65_536) -> tuple[float, float, float]:
    """(longest step, total, one uncached publish matching all `count`) in seconds."""
    hub = Hub(Config(), server_id="bench")
    owner = _Owner()
    for sid, pattern in enumerate(_patterns(count)):
        hub.subscribe(owner, sid, pattern)
    start = time.perf_counter()
    hub.publish(_Owner(), ("a." * 16 + "z", b"x", None, None, False))
    publish = time.perf_counter() - start
    steps: list[float] = []
    more = True
    while more:
        start = time.perf_counter()
        more = hub.remove_all(owner, limit=_TEARDOWN_BATCH)
        steps.append(time.perf_counter() - start)
    return max(steps), sum(steps), publish


def main() -> None:
    per_change = churn()
    longest, total, publish = teardown()
    print(f"wildcard SUB+UNSUB, cache of 4,096 others: {per_change * 1e6:.1f} us")
    print(
        f"teardown of 65,536 subscriptions: longest step {longest * 1e3:.1f} ms, "
        f"total {total * 1e3:.0f} ms"
    )
    print(f"one uncached publish matching 65,536 patterns: {publish * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
