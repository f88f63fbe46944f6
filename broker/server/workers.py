"""``broker serve --workers N``: N broker processes on one port, joined as a cluster.

One broker process uses one core. The workers each listen on the same port with SO_REUSEPORT
(the kernel spreads new connections over them) and join one another through ``[cluster]``'s
Redis, so a client on any worker reaches subscribers on every other.

The parent only supervises: it starts the workers (spawned, each a fresh interpreter with the
parent's `Config`), restarts one that dies unasked (at most once a second), and on SIGINT or
SIGTERM passes SIGTERM on to each, waits for them to drain (``shutdown_grace`` plus a margin),
kills any left, and exits 0 (1 if a worker failed to stop in time). A second signal kills the
workers at once.

Worker i's cluster node name is ``NAME-i`` when ``[cluster] name`` is set, else each worker
generates its own.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import socket
import time
from types import FrameType
from typing import Final

import trio

from ..config import Config

__all__ = ["WorkersError", "open_reuse_port_listeners", "run_workers"]

log = logging.getLogger("broker.workers")

#: Seconds beyond ``shutdown_grace`` a worker gets to exit after SIGTERM before it is killed.
STOP_MARGIN: Final = 5.0
#: Least seconds between two restarts of the same worker.
RESTART_DELAY: Final = 1.0


class WorkersError(ValueError):
    """``--workers`` cannot run with this config (no ``[cluster]``, or port 0)."""


async def open_reuse_port_listeners(port: int, host: str) -> list[trio.SocketListener]:
    """Listeners on `host`:`port` with SO_REUSEPORT (and SO_REUSEADDR), one per address."""
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners: list[trio.SocketListener] = []
    try:
        for family, kind, proto, _name, address in infos:
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
                sock.listen(socket.SOMAXCONN)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
        raise
    return listeners


def _worker(config: Config, index: int) -> None:
    """One worker's life, in its own process: serve until SIGTERM, exit with run's code."""
    from ..logs import configure_logging
    from .server import run

    # A process group of its own, so a terminal's Ctrl-C reaches only the parent, which passes
    # one SIGTERM on (a second signal would make the worker exit without draining).
    os.setpgrp()
    _die_with_parent()
    configure_logging(config.log_level, config.log_format)
    raise SystemExit(run(config, reuse_port=True))


def _die_with_parent() -> None:
    """Ask Linux for SIGTERM when the parent dies (even by SIGKILL); elsewhere, nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


_PR_SET_PDEATHSIG: Final = 1


def _worker_config(config: Config, index: int) -> Config:
    cluster = config.cluster
    assert cluster is not None
    if not cluster.name:
        return config
    named = dataclasses.replace(cluster, name=f"{cluster.name}-{index}")
    return dataclasses.replace(config, cluster=named)


def run_workers(config: Config, count: int) -> int:
    """Run `count` workers until SIGINT or SIGTERM; returns the exit code.

    Raises:
        WorkersError: The config has no ``[cluster]`` (workers that cannot reach one another
            would be N separate brokers behind one port), or its port is 0 (each worker would
            get a different one).
    """
    if config.cluster is None:
        raise WorkersError(
            "--workers needs a [cluster] section: without Redis to join them the workers "
            "would be separate brokers sharing a port"
        )
    if config.port == 0:
        raise WorkersError("--workers needs a fixed port (not 0), shared by every worker")
    if count < 1:
        raise WorkersError(f"--workers must be >= 1, got {count}")
    context = multiprocessing.get_context("spawn")
    workers: list[multiprocessing.process.BaseProcess | None] = [None] * count
    started_at = [0.0] * count
    signals: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        signals.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def start(index: int) -> None:
        process = context.Process(
            target=_worker,
            args=(_worker_config(config, index), index),
            name=f"broker-worker-{index}",
            daemon=False,
        )
        process.start()
        workers[index] = process
        started_at[index] = time.monotonic()
        log.info("worker %d started (pid %s)", index, process.pid)

    try:
        for index in range(count):
            start(index)
        log.info("%d workers serving port %d", count, config.port)
        while not signals:
            time.sleep(0.1)
            for index, process in enumerate(workers):
                if process is None or process.is_alive() or signals:
                    continue
                log.warning(
                    "worker %d (pid %s) exited with %s; restarting it",
                    index,
                    process.pid,
                    process.exitcode,
                )
                process.close()
                workers[index] = None
                if time.monotonic() - started_at[index] < RESTART_DELAY:
                    time.sleep(RESTART_DELAY)
                start(index)
        name = signal.Signals(signals[0]).name
        log.info("received %s: stopping %d workers", name, count)
        live = [process for process in workers if process is not None]
        for process in live:
            if process.is_alive() and process.pid is not None:
                process.terminate()  # SIGTERM: each drains its clients as `broker serve` does
        deadline = time.monotonic() + config.shutdown_grace + STOP_MARGIN
        for process in live:
            while process.is_alive() and time.monotonic() < deadline and len(signals) < 2:
                process.join(0.05)
        stuck = [process for process in live if process.is_alive()]
        for process in stuck:
            log.warning("worker pid %s did not stop in time; killing it", process.pid)
            process.kill()
            process.join()
        return 1 if stuck else 0
    finally:
        for process in workers:
            if process is not None and process.is_alive():
                process.kill()
                process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
