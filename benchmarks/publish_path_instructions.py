"""CPU instructions of the broker's publish path, in process, counted by callgrind.

One publisher's NativeAdapter is fed reads of 400 PUB frames (128-byte payloads) and turns them
into hub calls and MSG frames queued in 0, 1 or 10 subscribers' outboxes, with no sockets and no
writer: decoding, routing, encoding and queueing, which is what a publish costs the broker
beyond its I/O. Run under callgrind with two message counts by `--measure`; the difference
divided by the difference in messages is the count per publish.

    python benchmarks/publish_path_instructions.py --measure          # 1 -> 0, 1 -> 1, 1 -> 10
    python benchmarks/publish_path_instructions.py run 1 4000          # one run, no valgrind

Needs valgrind on PATH for --measure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

BATCH = 400


def run(subscribers: int, messages: int) -> None:
    import trio.testing

    from broker.protocol import Hello, Pub, Sub, encode_frame
    from broker.server import Server
    from broker.server.native import NativeAdapter
    from broker.server.transport import Transport
    from broker.testing.inprocess import config_for_tests

    hub = Server(config_for_tests(max_pending_messages=10**7, max_pending_bytes=2**30)).hub

    def connected(client_id: int) -> NativeAdapter:
        transport = Transport(hub, trio.testing.MemorySendStream(), "peer", client_id)
        adapter = transport.adapter = NativeAdapter(hub, transport)
        adapter.receive_data(encode_frame(Hello({})))
        assert adapter.handshake()
        transport.outbox.take_batch()
        transport.outbox.sent()
        return adapter

    publisher = connected(0)
    subs = [connected(n + 1) for n in range(subscribers)]
    for sub in subs:
        sub.receive_data(encode_frame(Sub(1, "bench.data")))
        while sub.process():
            pass
    read = encode_frame(Pub("bench.data", b"x" * 128)) * BATCH
    for _ in range(messages // BATCH):
        publisher.receive_data(read)
        while publisher.process():
            pass
        for sub in subs:
            outbox = sub.transport.outbox
            while outbox.messages:
                outbox.take_batch()
                outbox.sent()


def measure(subscribers: int, small: int = 4_000, large: int = 24_000) -> float:
    counts = []
    for messages in (small, large):
        result = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                sys.executable,
                __file__,
                "run",
                str(subscribers),
                str(messages),
            ],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONHASHSEED="0"),
        )
        match = re.search(r"Collected : (\d+)", result.stderr)
        if result.returncode != 0 or match is None:
            raise RuntimeError(f"the run failed: {result.stderr[-3000:]}")
        counts.append(int(match.group(1)))
    return (counts[1] - counts[0]) / (large - small)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "run":
        run(int(sys.argv[2]), int(sys.argv[3]))
        return
    for subscribers in (0, 1, 10):
        print(
            f"1 -> {subscribers}: {measure(subscribers):,.0f} instructions per publish", flush=True
        )


if __name__ == "__main__":
    main()
