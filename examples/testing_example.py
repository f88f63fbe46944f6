"""Test a small service against an in-process broker, with no pytest: broker.testing by hand.

The "service" answers ``price.<item>`` requests and publishes ``audit.<item>`` for each one. The
test starts a broker in a thread, captures the audit trail, drops the service's connection and
restarts the broker, and checks the service recovers each time.

    python examples/testing_example.py             # run the walk-through
    python examples/testing_example.py --startup   # time 100 broker starts and stops
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import trio

from broker import sync
from broker.testing import BrokerThread, running_broker, start_broker_thread

PRICES = {"apple": b"3", "pear": b"4"}


def serve_prices(client: sync.SyncClient, stop: threading.Event) -> None:
    """The service under test: answer price requests, audit each one."""
    with client.subscribe("price.*") as requests:
        while not stop.is_set():
            try:
                request = requests.next(timeout=0.05)
            except TimeoutError:
                continue
            item = request.subject.split(".", 1)[1]
            request.respond(PRICES.get(item, b"?"))
            client.publish(f"audit.{item}", request.payload)


def walk_through() -> None:
    stop = threading.Event()
    with (
        BrokerThread() as handle,
        handle.capture("audit.>") as audit,
        handle.connect_sync(name="prices") as service,
        handle.connect_sync(name="shop") as shop,
    ):
        worker = threading.Thread(target=serve_prices, args=(service, stop))
        worker.start()
        try:
            # Up, with its one subscription in place: a request sent now reaches it.
            handle.wait_for_client("prices", subscriptions=1)
            print("apple costs", shop.request("price.apple", b"alice", timeout=2).payload)
            print("audited:", [m.subject for m in audit.wait_for(1, timeout=2)])

            handle.drop_client("prices")  # a network failure, as far as it can tell
            handle.wait_for_client("prices", subscriptions=1)  # reconnected and resubscribed
            print("after a drop, pear costs", shop.request("price.pear", b"bob").payload)

            handle.restart()  # same port; the service and the shop reconnect
            handle.wait_for_client("prices", subscriptions=1)
            print("after a restart, apple costs", shop.request("price.apple", b"eve").payload)
            print("audited:", [m.payload for m in audit.wait_for(3, timeout=2)])
        finally:
            stop.set()
            worker.join()


def percentiles(samples: list[float]) -> str:
    samples = sorted(samples)
    p50 = statistics.median(samples) * 1000
    p99 = samples[max(0, int(len(samples) * 0.99) - 1)] * 1000
    return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"


def time_startup(runs: int = 100) -> None:
    ready, total = [], []
    for _ in range(runs):
        began = time.perf_counter()
        handle = start_broker_thread()
        ready.append(time.perf_counter() - began)
        handle.stop()
        total.append(time.perf_counter() - began)
    print(f"BrokerThread over {runs}: ready {percentiles(ready)}; start+stop {percentiles(total)}")

    async def in_nursery() -> None:
        ready, total = [], []
        for _ in range(runs):
            began = time.perf_counter()
            async with running_broker():
                ready.append(time.perf_counter() - began)
            total.append(time.perf_counter() - began)
        print(
            f"running_broker over {runs}: ready {percentiles(ready)}; "
            f"start+stop {percentiles(total)}"
        )

    trio.run(in_nursery)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--startup", action="store_true", help="time broker starts and stops")
    if parser.parse_args().startup:
        time_startup()
    else:
        walk_through()
