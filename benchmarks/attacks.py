"""Each hostile client of the hardening issue, run against a real broker beside a bystander pair.

For every attack a fresh ``broker serve`` process is started with the bounds below, and a
bystander process (a publisher and a subscriber on their own connections, plus a newcomer that
connects, says HELLO and PINGs twice a second) runs through the whole attack. Reported per
attack:

- the bystander's delivery (every message, in order) and its worst and 99th-percentile latency,
  publish to delivery, at 500 messages a second; the newcomer's slowest HELLO-to-PONG;
- the broker's RSS before the attack, its peak during it (sampled, and VmHWM), and after the
  attackers were cut, against the bound the configuration sets for what the attack can hold;
- how the attackers were cut: the ERR codes they got, and the longest time from the start of
  the attack to their cut;
- the bytes the broker's log grew by.

Run: ``python benchmarks/attacks.py`` (about three minutes on 2 cores); ``--only NAME`` for one
attack; ``--docs`` writes the table into docs/reliability.md. Everything listens on 127.0.0.1,
and the broker and the bystander are stopped by their PIDs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from broker._memory import RELEASE_INTERVAL
from broker.bench.servers import RssSampler, process_rss, start_broker
from broker.protocol import (
    CLOSED,
    NEED_DATA,
    Connection,
    Err,
    Hello,
    Msg,
    Ping,
    Pong,
    Pub,
    Role,
    Sub,
    Unsub,
    Welcome,
    encode_frame,
)

MiB = 1024 * 1024
#: The bounds every attack runs against.
PENDING = 8 * MiB
REPLAY = 16 * MiB
RETAINED = 32 * MiB
FRAME_TIMEOUT = 5.0
WRITE_TIMEOUT = 5.0
CONFIG: dict[str, dict[str, object]] = {
    "limits": {"max_pending_bytes": PENDING, "max_connections": 4000},
    "retained": {"max_bytes": RETAINED, "max_replay_bytes": REPLAY},
    "timeouts": {"frame_timeout": FRAME_TIMEOUT, "write_timeout": WRITE_TIMEOUT},
}
#: What one connection may hold by configuration: its outbox, and one frame being read.
FRAME = MiB + 64 * 1024 + 64 * 1024  # max_frame by default, plus one read
PER_CONNECTION = PENDING + FRAME
#: What one subscription holds in the broker (its object, its trie node, the maps it sits in),
#: measured: RSS growth over 65,536 subscriptions ``{a,*}^16.z``, divided.
SUBSCRIPTION_COST = 1700
BYSTANDER_RATE = 500  # messages a second
DOCS = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
BEGIN, END = "<!-- attacks:begin -->", "<!-- attacks:end -->"


# -- a raw client ------------------------------------------------------------------------------


class Raw:
    """One connection speaking frames, with nothing of the client library's politeness."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = Connection(Role.CLIENT, max_frame=64 * MiB)
        self.closed_at: float | None = None

    @classmethod
    async def open(
        cls, port: int, *, name: str = "attacker", hello: bool = True, rcvbuf: int | None = None
    ) -> Raw:
        sock = trio.socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", port))
        raw = cls(trio.SocketStream(sock))
        if hello:
            await raw.send(Hello({"version": 1, "name": name}))
            while not isinstance(await raw.next_event(), Welcome):
                pass
        return raw

    async def send(self, *events: Any) -> None:
        await self.stream.send_all(b"".join(encode_frame(event) for event in events))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                return event
            try:
                data = await self.stream.receive_some(256 * 1024)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            self.conn.receive_data(data)

    async def errors_until_closed(self) -> list[str]:
        """Read (decoding) until the server closes; the ERR codes it sent."""
        codes: list[str] = []
        while True:
            try:
                event = await self.next_event()
            except Exception:
                break  # cut in the middle of a frame
            if event is CLOSED:
                break
            if isinstance(event, Err):
                codes.append(event.code)
        self.closed_at = time.monotonic()
        return codes

    async def discard_until_closed(self) -> None:
        """Read and throw away everything until the server closes (cheap: no decoding)."""
        try:
            while await self.stream.receive_some(1024 * 1024):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.closed_at = time.monotonic()

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


class Outcome:
    """What an attack's attackers got: ERR codes, and when the last was cut."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.codes: Counter[str] = Counter()
        self.cut_after = 0.0
        self.attackers = 0

    def closed(self, raw: Raw, codes: list[str] | None = None) -> None:
        self.codes.update(codes or ["(no ERR)"])
        if raw.closed_at is not None:
            self.cut_after = max(self.cut_after, raw.closed_at - self.started)


# -- the attacks -------------------------------------------------------------------------------


async def nothing(port: int, outcome: Outcome) -> None:
    """No attack: the bystander's figures on this machine, now, for the rows below."""
    await trio.sleep(8)


async def wildcard_fan_in(port: int, outcome: Outcome, bits: int = 16) -> None:
    """2^bits subscriptions ``{a,*}^bits.z``, then a read's worth of publishes to distinct
    subjects each matching half of them; then the connection closes with all of them."""
    raw = await Raw.open(port)
    outcome.attackers = 1
    patterns = [
        ".".join("a" if bit == "0" else "*" for bit in f"{n:0{bits}b}") + ".z"
        for n in range(2**bits)
    ]
    for start in range(0, len(patterns), 4096):
        await raw.send(*(Sub(start + i, p) for i, p in enumerate(patterns[start : start + 4096])))
    await raw.send(Ping())
    while not isinstance(await raw.next_event(), Pong):
        pass
    subjects = []
    for i in range(60):
        tokens = ["a"] * bits
        tokens[i % bits] = f"q{i}"
        subjects.append(".".join(tokens) + ".z")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(raw.discard_until_closed)
        await raw.send(*(Pub(s, b"x") for s in subjects))
        await trio.sleep(8)
        await raw.aclose()
        nursery.cancel_scope.cancel()
    outcome.codes["(closed by itself after 8 s)"] += 1


async def churn(port: int, outcome: Outcome) -> None:
    """Fill the match cache with 4,096 subjects, churn SUB/UNSUB of a ``*``-first pattern
    20,000 times, then five connections holding 2,000 wildcard subscriptions each leave."""
    raw = await Raw.open(port)
    await raw.send(*(Pub(f"fill.{i}", b"x") for i in range(4096)))
    for start in range(0, 20_000, 1000):
        events: list[Any] = []
        for i in range(start, start + 1000):
            events += [Sub(i, f"*.churn.{i}"), Unsub(i)]
        await raw.send(*events)
    holders = [await Raw.open(port) for _ in range(5)]
    outcome.attackers = 6
    for holder in holders:
        await holder.send(*(Sub(i, f"*.{i}.>") for i in range(2000)))
        await holder.send(Ping())
        while not isinstance(await holder.next_event(), Pong):
            pass
    await raw.send(Ping())
    while not isinstance(await raw.next_event(), Pong):
        pass
    for conn in [*holders, raw]:
        await conn.aclose()
    outcome.codes["(closed by itself)"] += 6


async def trickle(port: int, outcome: Outcome) -> None:
    """300 connections trickle a byte of a frame every second after HELLO; 20 send half of a
    512 KB frame and stop."""

    async def trickler(raw: Raw) -> None:
        async with trio.open_nursery() as nursery:

            async def drip() -> None:
                for byte in struct.pack(">I", 1000):
                    await raw.send_raw(bytes([byte]))
                    await trio.sleep(1.0)
                await trio.sleep_forever()

            nursery.start_soon(drip)
            outcome.closed(raw, await raw.errors_until_closed())
            nursery.cancel_scope.cancel()

    async def half(raw: Raw) -> None:
        await raw.send_raw(struct.pack(">I", 512 * 1024) + b"\x00" * (256 * 1024))
        outcome.closed(raw, await raw.errors_until_closed())

    conns = [await Raw.open(port) for _ in range(320)]
    outcome.attackers = len(conns)
    outcome.started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for i, raw in enumerate(conns):
            nursery.start_soon(trickler if i < 300 else half, raw)


async def ping_flood(port: int, outcome: Outcome) -> None:
    """10 connections each send 200,000 PINGs and never read a PONG."""

    async def flood(raw: Raw) -> None:
        pings = encode_frame(Ping()) * 20_000
        try:
            for _ in range(10):
                await raw.send_raw(pings)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        raw.closed_at = time.monotonic()
        outcome.closed(raw, ["(cut while flooding)"])

    conns = [await Raw.open(port, rcvbuf=4096) for _ in range(10)]
    outcome.attackers = len(conns)
    outcome.started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for raw in conns:
            nursery.start_soon(flood, raw)


async def replay_hog(port: int, outcome: Outcome) -> None:
    """Fill the retained store (320 x 100 KB), then 20 clients that never read subscribe
    ``>`` twice each."""
    pub = await Raw.open(port, name="filler")
    await pub.send(*(Pub(f"r.{i}", b"r" * 100_000, None, None, True) for i in range(300)))
    await pub.send(Ping())
    while not isinstance(await pub.next_event(), Pong):
        pass
    await pub.aclose()

    async def hog(raw: Raw) -> None:
        await raw.send(Sub(1, ">"), Sub(2, ">"))
        await trio.sleep(WRITE_TIMEOUT + 5)  # never reads: write_timeout must cut it
        with trio.move_on_after(5):
            await raw.discard_until_closed()
        if raw.closed_at is None:
            # Its replay waited for room (max_replay_bytes) while the others were cut, and it
            # then read: not cut, which is right for a client that reads.
            outcome.codes["(served after waiting for replay room)"] += 1
            await raw.aclose()
        else:
            outcome.closed(raw, ["(cut: write_timeout)"])

    conns = [await Raw.open(port, rcvbuf=4096) for _ in range(20)]
    outcome.attackers = len(conns)
    outcome.started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for raw in conns:
            nursery.start_soon(hog, raw)


async def queue_names(port: int, outcome: Outcome) -> None:
    """Three connections each SUB 100 times with a 1 MB queue-group name."""
    big = "q" * MiB

    async def one(raw: Raw) -> None:
        for i in range(100):
            await raw.send(Sub(i, "a.b", big))
        await raw.send(Ping())
        codes = []
        while not isinstance(event := await raw.next_event(), Pong):
            if isinstance(event, Err):
                codes.append(event.code)
        outcome.codes.update(codes)
        await raw.aclose()

    conns = [await Raw.open(port) for _ in range(3)]
    outcome.attackers = len(conns)
    async with trio.open_nursery() as nursery:
        for raw in conns:
            nursery.start_soon(one, raw)


async def bad_values(port: int, outcome: Outcome) -> None:
    """50 connections each open with a 1 MB value in HELLO; 50 with msgpack nested 100,000 deep."""
    import msgpack

    huge = _frame(msgpack.packb(["HELLO", {"version": "v" * MiB}]))
    deep = _frame(b"\x92\xa5HELLO" + b"\x91" * 100_000 + b"\xc0")

    async def one(frame: bytes) -> None:
        raw = await Raw.open(port, hello=False)
        # Refused before the whole of it was sent: the ERR is still there to read.
        with contextlib.suppress(trio.BrokenResourceError):
            await raw.send_raw(frame)
        outcome.closed(raw, await raw.errors_until_closed())

    outcome.attackers = 100
    async with trio.open_nursery() as nursery:
        for i in range(100):
            nursery.start_soon(one, huge if i % 2 else deep)


async def mix(port: int, outcome: Outcome) -> None:
    """Every attack above at once."""
    parts = [Outcome() for _ in ATTACKS_ALONE]
    async with trio.open_nursery() as nursery:
        for (_name, attack), part in zip(ATTACKS_ALONE, parts, strict=True):
            nursery.start_soon(attack, port, part)
    for part in parts:
        outcome.codes.update(part.codes)
        outcome.cut_after = max(outcome.cut_after, part.cut_after)
        outcome.attackers += part.attackers


async def wildcard_fan_in_4k(port: int, outcome: Outcome) -> None:
    """The same with 4,096 subscriptions."""
    await wildcard_fan_in(port, outcome, bits=12)


async def wildcard_fan_in_16k(port: int, outcome: Outcome) -> None:
    """The same with 16,384 subscriptions."""
    await wildcard_fan_in(port, outcome, bits=14)


ATTACKS_ALONE: list[tuple[str, Callable[[int, Outcome], Awaitable[None]]]] = [
    ("wildcard fan-in (65,536 subscriptions)", wildcard_fan_in),
    ("SUB/UNSUB churn with a full cache", churn),
    ("trickled and half-sent frames (320 connections)", trickle),
    ("PING flood, PONGs never read (10 connections)", ping_flood),
    ("retained store replayed to 20 clients that never read", replay_hog),
    ("1 MB queue-group names (300 SUBs)", queue_names),
    ("1 MB and 100,000-deep bad values (100 connections)", bad_values),
]
ATTACKS = [
    ("none (the bystander alone, for comparison)", nothing),
    ("wildcard fan-in (4,096 subscriptions)", wildcard_fan_in_4k),
    ("wildcard fan-in (16,384 subscriptions)", wildcard_fan_in_16k),
    *ATTACKS_ALONE,
    ("all of the above at once", mix),
]


def _bound(name: str, attackers: int, baseline: int) -> int:
    """The RSS the configuration allows this attack to cause: its connections' bounds, and the
    retained store and server-wide replay memory where it uses them."""
    bound = baseline + attackers * PER_CONNECTION
    if "fan-in" in name or "all" in name:
        bound += 65_536 * SUBSCRIPTION_COST  # max_subscriptions, at what each holds
    if "retained" in name or "all" in name:
        bound += RETAINED + REPLAY
    return bound


# -- the bystander (its own process) ------------------------------------------------------------


async def bystander(port: int) -> dict[str, Any]:
    """Publish at `BYSTANDER_RATE` to a subscriber until stdin closes; then report."""
    sub = await Raw.open(port, name="bystander-sub")
    pub = await Raw.open(port, name="bystander-pub")
    await sub.send(Sub(1, "bystander.>"), Ping())
    while not isinstance(await sub.next_event(), Pong):
        pass
    latencies: list[float] = []
    newcomer: list[float] = []
    state = {"sent": 0, "in_order": True, "expected": 0}
    stop = trio.Event()

    async def publish() -> None:
        interval = 1 / BYSTANDER_RATE
        next_at = time.monotonic()
        while not stop.is_set():
            payload = struct.pack(">dI", time.monotonic(), state["sent"])
            await pub.send(Pub("bystander.tick", payload))
            state["sent"] += 1
            next_at += interval
            await trio.sleep(max(0.0, next_at - time.monotonic()))

    async def receive() -> None:
        while True:
            event = await sub.next_event()
            if isinstance(event, Msg):
                sent_at, seq = struct.unpack(">dI", event.payload)
                latencies.append(time.monotonic() - sent_at)
                if seq != state["expected"]:
                    state["in_order"] = False
                state["expected"] = seq + 1
            elif not isinstance(event, Pong | Ping):
                return

    async def newcomers() -> None:
        while not stop.is_set():
            began = time.monotonic()
            raw = await Raw.open(port, name="newcomer")
            await raw.send(Ping())
            while not isinstance(await raw.next_event(), Pong):
                pass
            newcomer.append(time.monotonic() - began)
            await raw.aclose()
            await trio.sleep(0.5)

    async def wait_stdin() -> None:
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        nursery.start_soon(newcomers)
        nursery.start_soon(wait_stdin)
        await publish()
        with trio.move_on_after(10):
            while len(latencies) < state["sent"]:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    ordered = sorted(latencies)
    return {
        "sent": state["sent"],
        "received": len(latencies),
        "in_order": state["in_order"],
        "worst": ordered[-1] if ordered else None,
        "p50": ordered[len(ordered) // 2] if ordered else None,
        "p99": ordered[int(len(ordered) * 0.99)] if ordered else None,
        "newcomer_worst": max(newcomer) if newcomer else None,
        "newcomers": len(newcomer),
    }


# -- one run -----------------------------------------------------------------------------------


def run_attack(name: str, attack: Callable[[int, Outcome], Awaitable[None]]) -> dict[str, Any]:
    with start_broker(CONFIG) as server:
        port = server.target.port
        log_path = Path(server.target.log_path or os.devnull)
        watcher = subprocess.Popen(
            [sys.executable, __file__, "--bystander", str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            time.sleep(1.0)  # the bystander connects and warms up
            baseline = process_rss(server.pid) or 0
            log_before = log_path.stat().st_size
            outcome = Outcome()
            with RssSampler(server.pid) as rss:
                trio.run(attack, port, outcome)
                time.sleep(1.0)
            time.sleep(RELEASE_INTERVAL)  # the broker hands freed memory back meanwhile
            after = process_rss(server.pid) or 0
        finally:
            out, _ = watcher.communicate(b"", timeout=30)
        seen = json.loads(out)
        return {
            "attack": name,
            **seen,
            "rss_before": baseline,
            "rss_peak": rss.peak,
            "rss_after": after,
            "rss_bound": _bound(name, outcome.attackers, baseline),
            "codes": dict(outcome.codes),
            "cut_after": outcome.cut_after,
            "log_bytes": log_path.stat().st_size - log_before,
        }


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / MiB:.0f}"


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| attack | bystander delivered, in order | bystander worst / p99 / p50 | newcomer worst "
        "| RSS MB before / peak / after (bound) | attackers cut | log |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        delivered = f"{r['received']:,} of {r['sent']:,}" + (
            ", in order" if r["in_order"] else ", OUT OF ORDER"
        )
        codes = ", ".join(f"{code} x{n}" for code, n in sorted(r["codes"].items()))
        cut = f"{codes}; last after {r['cut_after']:.1f} s" if r["cut_after"] else codes
        rss = " / ".join(_mb(r[key]) for key in ("rss_before", "rss_peak", "rss_after"))
        rss += f" ({_mb(r['rss_bound'])})"
        latency = " / ".join(_ms(r[key]) for key in ("worst", "p99", "p50"))
        lines.append(
            f"| {r['attack']} | {delivered} | {latency} "
            f"| {_ms(r['newcomer_worst'])} | {rss} | {cut} | {r['log_bytes']:,} B |"
        )
    return "\n".join(lines)


def write_docs(text: str) -> None:
    doc = DOCS.read_text()
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOCS.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bystander", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--only", action="append", help="run attacks whose name contains this")
    parser.add_argument("--docs", action="store_true", help="write the table into docs/")
    args = parser.parse_args()
    if args.bystander:
        print(json.dumps(trio.run(bystander, args.bystander)))
        return
    random.seed(1)
    results = []
    for name, attack in ATTACKS:
        if args.only and not any(part in name for part in args.only):
            continue
        result = run_attack(name, attack)
        print(json.dumps(result), flush=True)
        results.append(result)
    text = table(results)
    print(text)
    if args.docs:
        generated = (
            f"{text}\n\nGenerated by `python benchmarks/attacks.py --docs` on "
            f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores."
        )
        write_docs(generated)


if __name__ == "__main__":
    main()
