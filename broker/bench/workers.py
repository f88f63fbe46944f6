"""The client processes that make the load, and the coordinator's end of them.

Every client is its own process from a `multiprocessing` forkserver (`forkserver()`), so clients
are never serialised behind one interpreter lock and each starts in milliseconds. A process runs
one `*_main` function (`subscriber_main`, `publisher_main`, `idle_main`) and talks to the
coordinator over a pipe: it sends ("ready", info), ("progress", count) and finally ("done",
report); it receives "go", "check" and "stop". On the coordinator's side a `Worker` holds one
process and its pipe, `pump` handles their messages until a condition holds or a deadline
passes, and `supervised()` stops every worker, by its PID if need be, when the run ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import multiprocessing.connection
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from typing import Any, Final, TypeVar, cast, final

from .._rlimit import raise_fd_limit
from .dialects import DIALECTS, Counter, Dialect, KiB, exchange
from .servers import Target, opening, secure_socket

__all__ = [
    "PROGRESS_INTERVAL",
    "IdleSpec",
    "PublisherSpec",
    "SubscriberOutcome",
    "SubscriberSpec",
    "Worker",
    "forkserver",
    "idle_main",
    "publisher_main",
    "pump",
    "subscriber_main",
    "supervised",
]

#: Bytes asked of the socket per read by a subscriber.
READ_SIZE: Final = 256 * KiB
#: About how many bytes a publisher hands the kernel per write.
WRITE_SIZE: Final = 256 * KiB
#: How often a subscriber reports its count to the coordinator.
PROGRESS_INTERVAL: Final = 0.1
#: Receive buffer of a stalled subscriber, so the server's writes to it block early.
STALLED_RCVBUF: Final = 4 * KiB
#: Idle connections connected before waiting for their PONGs, to stay within the listen backlog.
IDLE_BATCH: Final = 500


# ---------------------------------------------------------------------------------------------
# Client processes


def _connect(target: Target, deadline: float, *, rcvbuf: int | None = None) -> socket.socket:
    family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            # Before connect(), so the advertised window is small from the start.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.connect((target.host, target.port))
        return secure_socket(target, sock)
    except BaseException:
        sock.close()
        raise


def _answer_pings(sock: socket.socket, counter: Counter, answered: int, pong: bytes) -> int:
    if counter.pings > answered:
        sock.sendall(pong * (counter.pings - answered))
    return counter.pings


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _wait_command(pipe: Pipe, deadline: float) -> str:
    """The coordinator's next command, or "stop" at the deadline or if it went away."""
    try:
        if pipe.poll(max(0.0, deadline - time.monotonic())):
            command: str = pipe.recv()
            return command
    except (EOFError, OSError):
        pass
    return "stop"


@final
@dataclass(frozen=True, slots=True)
class SubscriberSpec:
    target: Target
    name: str
    subjects: tuple[str, ...]
    queue: str | None
    #: Deliveries after which the subscriber reports done; None: count until told to stop.
    expected: int | None
    stalled: bool
    deadline: float


@final
@dataclass(frozen=True, slots=True)
class SubscriberOutcome:
    """What one subscriber counted, and whether the server cut it off."""

    name: str
    #: What it should have received; None for a queue-group member (the group total counts).
    expected: int | None
    received: int
    stalled: bool = False
    queue: str | None = None
    closed_by_server: bool = False
    errors: tuple[str, ...] = ()
    #: Why it could not take part (connect or subscribe failed), or None.
    failure: str | None = None
    first_at: float | None = None
    last_at: float | None = None
    #: CPU seconds the subscriber process used (to show the client is not the bottleneck).
    cpu_seconds: float = 0.0


_Report = TypeVar("_Report", "SubscriberOutcome", "_PublisherReport", "_IdleReport")


def _report_back(pipe: Pipe, empty: _Report, work: Callable[[], _Report]) -> None:
    """A worker process's whole life: do `work`, then send its report (or `empty` with the
    failure), with this process's CPU time, to the coordinator."""
    report = empty
    try:
        report = work()
    except Exception as error:
        report = dataclasses.replace(report, failure=f"{type(error).__name__}: {error}")
    report = dataclasses.replace(report, cpu_seconds=_own_cpu())
    with contextlib.suppress(OSError):
        pipe.send(("done", report))
    pipe.close()


def subscriber_main(spec: SubscriberSpec, pipe: Pipe) -> None:
    empty = SubscriberOutcome(spec.name, spec.expected, 0, spec.stalled, spec.queue)
    _report_back(pipe, empty, lambda: _subscriber(spec, pipe))


def _subscriber(spec: SubscriberSpec, pipe: Pipe) -> SubscriberOutcome:
    dialect = DIALECTS[spec.target.kind]
    counter = dialect.counter()
    rcvbuf = STALLED_RCVBUF if spec.stalled else None
    sock = _connect(spec.target, spec.deadline, rcvbuf=rcvbuf)
    with sock:
        subs = b"".join(
            dialect.sub(sid, subject, spec.queue) for sid, subject in enumerate(spec.subjects, 1)
        )
        exchange(sock, counter, opening(spec.target, spec.name) + subs, spec.deadline)
        pipe.send(("ready", None))
        if spec.stalled:
            # Never read until told to stop: the server must deal with a full socket.
            _wait_command(pipe, spec.deadline)
            return _drain(spec, sock, counter, dialect.pong)
        buffer = bytearray(READ_SIZE)
        view = memoryview(buffer)
        expected = spec.expected
        first_at: float | None = None
        last_at: float | None = None
        closed = False
        answered = counter.pings
        reported = time.monotonic()
        sock.settimeout(PROGRESS_INTERVAL)
        recv_into = sock.recv_into
        feed = counter.feed
        monotonic = time.monotonic
        while expected is None or counter.messages < expected:
            now = monotonic()
            if now - reported >= PROGRESS_INTERVAL:
                reported = now
                pipe.send(("progress", counter.messages))
                if now >= spec.deadline or (pipe.poll() and pipe.recv() == "stop"):
                    break
            try:
                n = recv_into(buffer)
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
            if not n:
                closed = True
                break
            before = counter.messages
            feed(view[:n])
            if counter.messages != before:
                last_at = monotonic()
                if first_at is None:
                    first_at = last_at
            if counter.pings != answered:
                answered = _answer_pings(sock, counter, answered, dialect.pong)
        return SubscriberOutcome(
            spec.name,
            expected,
            counter.messages,
            queue=spec.queue,
            closed_by_server=closed,
            errors=tuple(counter.errors),
            first_at=first_at,
            last_at=last_at,
        )


def _drain(
    spec: SubscriberSpec, sock: socket.socket, counter: Counter, pong: bytes
) -> SubscriberOutcome:
    """Read what a stalled subscriber was sent, to learn whether the server closed it."""
    closed = False
    quiet_until = time.monotonic() + 1.0
    deadline = min(spec.deadline, time.monotonic() + 30)
    answered = counter.pings
    while time.monotonic() < min(quiet_until, deadline):
        sock.settimeout(0.2)
        try:
            data = sock.recv(READ_SIZE)
        except TimeoutError:
            continue
        except OSError:
            closed = True
            break
        if not data:
            closed = True
            break
        try:
            counter.feed(data)
        except ValueError:
            # Cut off in the middle of a frame: what follows is not frame-aligned.
            closed = True
            break
        quiet_until = time.monotonic() + 1.0
        answered = _answer_pings(sock, counter, answered, pong)
    return SubscriberOutcome(
        spec.name,
        None,
        counter.messages,
        stalled=True,
        queue=spec.queue,
        closed_by_server=closed,
        errors=tuple(counter.errors),
    )


@final
@dataclass(frozen=True, slots=True)
class PublisherSpec:
    target: Target
    name: str
    #: Published to in turn, one message each.
    subjects: tuple[str, ...]
    payload: int
    count: int
    deadline: float


@final
@dataclass(frozen=True, slots=True)
class _PublisherReport:
    name: str
    sent: int = 0
    started_at: float | None = None
    sent_at: float | None = None
    flushed_at: float | None = None
    cpu_seconds: float = 0.0
    failure: str | None = None


def publisher_main(spec: PublisherSpec, pipe: Pipe) -> None:
    _report_back(pipe, _PublisherReport(spec.name), lambda: _publisher(spec, pipe))


def _batches(dialect: Dialect, spec: PublisherSpec) -> Iterator[bytes]:
    """The publisher's frames, pre-encoded into writes of about `WRITE_SIZE` bytes."""
    payload = bytes(i % 251 for i in range(spec.payload))
    frames = [dialect.pub(subject, payload) for subject in spec.subjects]
    cycle = b"".join(frames)
    repeat = max(1, WRITE_SIZE // len(cycle))
    batch, per_batch = cycle * repeat, repeat * len(frames)
    full, rest = divmod(spec.count, per_batch)
    for _ in range(full):
        yield batch
    if rest:
        yield b"".join((frames * (rest // len(frames) + 1))[:rest])


def _publisher(spec: PublisherSpec, pipe: Pipe) -> _PublisherReport:
    dialect = DIALECTS[spec.target.kind]
    counter = dialect.counter()
    batches = list(_batches(dialect, spec)) if spec.count < 10 * WRITE_SIZE else None
    with _connect(spec.target, spec.deadline) as sock:
        exchange(sock, counter, opening(spec.target, spec.name), spec.deadline)
        pipe.send(("ready", None))
        if _wait_command(pipe, spec.deadline) != "go":
            return _PublisherReport(spec.name)
        started_at = time.monotonic()
        for batch in batches if batches is not None else _batches(dialect, spec):
            sock.settimeout(max(0.001, spec.deadline - time.monotonic()))
            sock.sendall(batch)
        sent_at = time.monotonic()
        exchange(sock, counter, b"", spec.deadline)
        return _PublisherReport(spec.name, spec.count, started_at, sent_at, time.monotonic())


@final
@dataclass(frozen=True, slots=True)
class IdleSpec:
    target: Target
    name: str
    first: int
    count: int
    deadline: float


@final
@dataclass(frozen=True, slots=True)
class _IdleReport:
    name: str
    connected: int = 0
    received: int = 0
    failure: str | None = None
    cpu_seconds: float = 0.0


def idle_main(spec: IdleSpec, pipe: Pipe) -> None:
    _report_back(pipe, _IdleReport(spec.name), lambda: _idle(spec, pipe))


def _read_all(
    selector: selectors.BaseSelector,
    pending: dict[socket.socket, Counter],
    done: Callable[[Counter], bool],
    deadline: float,
    pong: bytes,
) -> None:
    """Read the sockets in `pending` until `done(counter)` holds for each, or the deadline."""
    for sock, counter in list(pending.items()):
        if done(counter):
            del pending[sock]
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        for key, _ in selector.select(min(remaining, 1.0)):
            sock = cast(socket.socket, key.fileobj)
            counter = key.data
            try:
                data = sock.recv(64 * KiB)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                selector.unregister(sock)
                pending.pop(sock, None)
                continue
            counter.feed(data)
            if counter.pings:
                with contextlib.suppress(OSError):
                    sock.send(pong * counter.pings)
                counter.pings = 0
            if done(counter):
                pending.pop(sock, None)


def _idle(spec: IdleSpec, pipe: Pipe) -> _IdleReport:
    raise_fd_limit()
    dialect = DIALECTS[spec.target.kind]
    selector = selectors.DefaultSelector()
    counters: dict[socket.socket, Counter] = {}
    try:
        for start in range(0, spec.count, IDLE_BATCH):
            batch: dict[socket.socket, Counter] = {}
            for index in range(
                spec.first + start, spec.first + min(spec.count, start + IDLE_BATCH)
            ):
                sock = _connect(spec.target, spec.deadline)
                counter = dialect.counter()
                counters[sock] = batch[sock] = counter
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, counter)
                sock.send(
                    dialect.opening(f"{spec.name}-{index}")
                    + dialect.sub(1, f"idle.{index}", None)
                    + dialect.ping
                )
            _read_all(selector, batch, lambda c: c.pongs >= 1, spec.deadline, dialect.pong)
            if batch:
                raise ConnectionError(f"{len(batch)} connections got no PONG")
        connected = sum(1 for counter in counters.values() if not counter.errors)
        pipe.send(("ready", connected))
        received = 0
        while (command := _wait_command(pipe, spec.deadline)) == "check":
            pending = dict(counters)
            _read_all(selector, pending, lambda c: c.messages >= 1, spec.deadline, dialect.pong)
            received = sum(1 for counter in counters.values() if counter.messages >= 1)
            pipe.send(("checked", received))
        del command
        return _IdleReport(spec.name, connected, received)
    finally:
        selector.close()
        for sock in counters:
            sock.close()


# ---------------------------------------------------------------------------------------------
# The coordinator


_context_lock = threading.Lock()


def forkserver() -> multiprocessing.context.ForkServerContext:
    """The forkserver context, with broker.bench preloaded so each client starts in milliseconds."""
    with _context_lock:
        context = multiprocessing.get_context("forkserver")
        # "__main__" too: otherwise every child imports the main script again by itself.
        context.set_forkserver_preload(["__main__", "broker.bench"])
        return context


class Worker:
    """One client process and the coordinator's end of its pipe."""

    def __init__(
        self,
        context: multiprocessing.context.ForkServerContext,
        main: Callable[[Any, Pipe], None],
        spec: Any,
        name: str,
    ) -> None:
        self.name = name
        self.ready = False
        self.info: Any = None
        self.count = 0
        self.report: Any = None
        self.gone = False
        self.checked: int | None = None
        parent, child = context.Pipe()
        self.pipe = parent
        self.process = context.Process(target=main, args=(spec, child), name=name, daemon=True)
        try:
            self.process.start()
        finally:
            child.close()

    def send(self, command: str) -> None:
        if not self.gone and self.report is None:
            with contextlib.suppress(OSError):
                self.pipe.send(command)

    def take(self) -> None:
        """Handle every message waiting on the pipe."""
        try:
            while self.pipe.poll():
                kind, value = self.pipe.recv()
                if kind == "ready":
                    self.ready, self.info = True, value
                elif kind == "progress":
                    self.count = value
                elif kind == "checked":
                    self.checked = value
                elif kind == "done":
                    self.report = value
                    if isinstance(value, SubscriberOutcome):
                        self.count = value.received
        except (EOFError, OSError):
            self.gone = True

    @property
    def finished(self) -> bool:
        return self.report is not None or self.gone


def pump(workers: Sequence[Worker], until: Callable[[], bool], deadline: float) -> bool:
    """Handle messages from `workers` until `until()` holds (True) or the deadline (False)."""
    while not until():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        live = {w.pipe: w for w in workers if not w.gone}
        if not live:
            return until()
        for pipe in multiprocessing.connection.wait(list(live), min(remaining, 0.05)):
            live[pipe].take()  # type: ignore[index]
    return True


def _finish(workers: Sequence[Worker]) -> None:
    """Stop every worker: ask, wait a little for reports, then terminate by PID."""
    for worker in workers:
        worker.send("stop")
    pump(workers, lambda: all(w.finished for w in workers), time.monotonic() + 40)
    for worker in workers:
        worker.process.join(timeout=5)
        if worker.process.is_alive():
            worker.process.terminate()
            worker.process.join(timeout=5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(timeout=5)
        worker.pipe.close()
        worker.process.close()


@contextlib.contextmanager
def supervised() -> Iterator[list[Worker]]:
    """A list for the run's workers; every one in it is stopped when the block ends."""
    workers: list[Worker] = []
    try:
        yield workers
    finally:
        _finish(workers)
