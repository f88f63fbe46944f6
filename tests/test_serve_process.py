"""`broker serve` as a real process: it listens, shuts down on SIGTERM/SIGINT and exits cleanly."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from broker.protocol import Connection, Err, Hello, Ping, Pong, Pub, Role, Sub

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(rb"listening on 127\.0\.0\.1:(\d+)")
FROZEN = re.compile(rb"start-up made (\d+) objects, now out of the collector's way")


@asynccontextmanager
async def broker_process(*args: str) -> AsyncIterator[tuple[trio.Process, int, bytearray]]:
    """Start `python -m broker serve ARGS` on a free port; yield it, its port and its stderr."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "broker", "serve", "--port", "0", *args],
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stderr is not None
    log = bytearray()
    try:
        with trio.fail_after(10):
            while (found := LISTENING.search(log)) is None:
                chunk = await process.stderr.receive_some()
                assert chunk, f"broker exited before listening: {log.decode()}"
                log += chunk
        async with trio.open_nursery() as nursery:

            async def collect() -> None:
                assert process.stderr is not None
                while chunk := await process.stderr.receive_some():
                    log.extend(chunk)

            nursery.start_soon(collect)
            yield process, int(found.group(1)), log
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(5):
            await process.wait()


async def hello(port: int) -> tuple[trio.SocketStream, Connection]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = Connection(Role.CLIENT)
    await stream.send_all(conn.send(Hello({"name": "process-test"})))
    return stream, conn


async def read_until_closed(stream: trio.SocketStream, conn: Connection) -> list[object]:
    events: list[object] = []
    while data := await stream.receive_some():
        conn.receive_data(data)
        events.extend(conn.events())
    return events


async def test_sigterm_tells_clients_and_exits_zero() -> None:
    with trio.fail_after(20):
        async with broker_process("--config", "config/broker.toml") as (process, port, log):
            stream, conn = await hello(port)
            await stream.send_all(conn.send(Sub(1, "jobs.>")) + conn.send(Ping()))
            events: list[object] = []
            while Pong() not in events:
                conn.receive_data(await stream.receive_some())
                events.extend(conn.events())
            # A message routed before the signal must reach the client before the ERR.
            await stream.send_all(conn.send(Pub("jobs.1", b"before")) + conn.send(Ping()))
            while events.count(Pong()) < 2:
                conn.receive_data(await stream.receive_some())
                events.extend(conn.events())
            process.send_signal(signal.SIGTERM)
            rest = await read_until_closed(stream, conn)
            await stream.aclose()
            assert await process.wait() == 0
        assert [type(event).__name__ for event in events].count("Msg") == 1
        assert rest[-1] == Err("shutting_down", "the server is shutting down")
        assert b"shutting down" in log
        assert b"stopped" in log and b"Traceback" not in log


async def test_sigint_with_no_clients_exits_zero() -> None:
    with trio.fail_after(20):
        async with broker_process() as (process, _port, _log):
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0


async def test_serve_leaves_its_start_up_heap_out_of_collections() -> None:
    with trio.fail_after(20):
        async with broker_process("--log-level", "debug") as (process, _port, log):
            while (found := FROZEN.search(log)) is None:
                await trio.sleep(0.01)
            assert int(found.group(1)) > 10_000
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0


async def test_second_signal_exits_at_once() -> None:
    """A client that stopped reading holds the graceful shutdown; a second SIGINT cuts it."""
    with trio.fail_after(30):
        async with broker_process() as (process, port, _log):
            reader, reader_conn = await hello(port)
            writer, writer_conn = await hello(port)
            async with reader, writer:
                await flood_and_interrupt_twice(process, reader, reader_conn, writer, writer_conn)


async def flood_and_interrupt_twice(
    process: trio.Process,
    reader: trio.SocketStream,
    reader_conn: Connection,
    writer: trio.SocketStream,
    writer_conn: Connection,
) -> None:
    """Fill the non-reading client's socket, then SIGINT twice: the second must not wait."""
    await reader.send_all(reader_conn.send(Sub(1, "flood")) + reader_conn.send(Ping()))
    got = b""
    while b"PONG" not in got:
        got += await reader.receive_some()
    payload = b"x" * 60_000
    batch = b"".join(writer_conn.send(Pub("flood", payload)) for _ in range(50))
    # 15 MB for a reader that never reads: the server's writer blocks on a full socket.
    for _ in range(5):
        await writer.send_all(batch)
    await writer.send_all(writer_conn.send(Ping()))
    while b"PONG" not in await writer.receive_some():
        pass
    process.send_signal(signal.SIGINT)
    with trio.move_on_after(1):
        await process.wait()
    assert process.returncode is None, "graceful shutdown should still be flushing"
    process.send_signal(signal.SIGINT)
    with trio.fail_after(3):
        assert await process.wait() == 1


def test_serve_raises_its_soft_fd_limit_to_fit_max_connections() -> None:
    script = (
        "import resource\n"
        "from broker.server.server import _raise_fd_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "_raise_fd_limit(1000)\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert int(result.stdout) >= 1000 + 64 or "file descriptor limit" in result.stderr
