"""How long the broker's event loop stalls while it cuts many stale connections at once.

An in-process broker with ``frame_timeout`` = 1 s; N raw connections each send HELLO and half a
frame in one write, then wait to be cut (all in the same instant). A task in the same loop
sleeps 1 ms at a time and records each gap: the longest gap while the cuts happen is what every
other client of that broker waited. `benchmarks/attacks.py` measures the same attack from a
bystander's process, which also waits for the attackers' own process on a shared machine.

    python benchmarks/cut_burst.py [N]      # N = 320 by default
"""

from __future__ import annotations

import sys
import time

import trio

from broker.protocol import Connection, Hello, Pub, Role, encode_frame
from broker.server import Server
from broker.testing.inprocess import config_for_tests


async def main(count: int) -> None:
    server = Server(config_for_tests(frame_timeout=1.0, max_connections=count + 64))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        gaps: list[tuple[float, float]] = []
        done = trio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await trio.sleep(0.001)
                now = time.perf_counter()
                gaps.append((now - last, now))
                last = now

        nursery.start_soon(ticker)
        hello = Connection(Role.CLIENT).send(Hello({"name": "half"}))
        half = encode_frame(Pub("slow", b"x" * 100))[:50]
        streams = []
        for _ in range(count):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            await stream.send_all(hello + half)
            streams.append(stream)
        began = time.perf_counter()

        async def until_closed(stream: trio.SocketStream) -> None:
            try:
                while await stream.receive_some():
                    pass
            except trio.BrokenResourceError:
                pass

        with trio.fail_after(30):
            async with trio.open_nursery() as waiting:
                for stream in streams:
                    waiting.start_soon(until_closed, stream)
        done.set()
        during = sorted(gap for gap, at in gaps if at > began)
        print(
            f"{count} connections cut {time.perf_counter() - began:.2f} s after their half frame;"
            f" longest stall of the loop meanwhile {during[-1] * 1e3:.0f} ms,"
            f" p99 {during[int(len(during) * 0.99)] * 1e3:.1f} ms"
        )
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 320)
