"""The classic socket-server examples (chat, fan-out relay, key-value store, time service,
uppercase echo) run as a user runs them: as subprocesses, against the test's broker.

Each process's output is read line by line as it comes, so a test waits for a readiness line
("welcome", "ready", "consuming", "watching") before it makes the next move, never for a sleep.
Every wait is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from broker.testing import BrokerThread

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: Seconds to wait for one expected line, or for a process to exit.
WAIT = 10.0


class Lines:
    """The lines of one pipe, collected by a thread as they arrive."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: list[str] = []
        self._ended = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = WAIT) -> str:
        """The first line containing `text`, once it has arrived."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                remaining = deadline - time.monotonic()
                if self._ended or remaining <= 0:
                    raise AssertionError(f"no line with {text!r} in {self.lines!r}")
                self._cond.wait(remaining)

    def join(self) -> None:
        self._thread.join(WAIT)


class Example:
    """One example script running as a subprocess, with stdin open for writing."""

    def __init__(self, script: str, args: tuple[str, ...], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self._out = Lines(self.process.stdout)
        self._err = Lines(self.process.stderr)

    @property
    def stdout(self) -> list[str]:
        return self._out.lines

    @property
    def stderr(self) -> str:
        return "\n".join(self._err.lines)

    def expect(self, text: str) -> str:
        return self._out.wait_for(text)

    def expect_error(self, text: str) -> str:
        return self._err.wait_for(text)

    def say(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self) -> int:
        """Close stdin, wait for the exit and the last output; return the exit status."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        returncode = self.process.wait(WAIT)
        self._out.join()
        self._err.join()
        return returncode

    def interrupt(self) -> int:
        """Ctrl-C, then `finish`."""
        self.process.send_signal(signal.SIGINT)
        return self.finish()


Run = Callable[..., Example]


@pytest.fixture
def run(broker_thread: BrokerThread) -> Iterator[Run]:
    """Start an example against the test's broker: ``run("kv.py", "get", "k")``."""
    started: list[Example] = []
    env = {key: value for key, value in os.environ.items() if key != "BROKER_URL"}
    # A child inherits an ignored SIGINT (pytest started with `&` from a script), and Python
    # then installs no KeyboardInterrupt handler; a handled one is reset to the default.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def start(script: str, *args: str, env_url: bool = False) -> Example:
        if env_url:  # The address from $BROKER_URL, the default when there is no --url.
            example = Example(script, args, {**env, "BROKER_URL": broker_thread.url})
        else:
            example = Example(script, ("--url", broker_thread.url, *args), env)
        started.append(example)
        return example

    yield start
    signal.signal(signal.SIGINT, previous)
    for example in started:
        if example.process.poll() is None:
            example.process.kill()
        example.process.wait(WAIT)
        for pipe in (example.process.stdin, example.process.stdout, example.process.stderr):
            if pipe is not None:
                pipe.close()


def test_chat_participants_see_each_other_but_not_themselves(run: Run) -> None:
    alice = run("chat.py", "--room", "lobby", "--nick", "alice")
    alice.expect("welcome to lobby, alice")
    carol = run("chat.py", "--room", "kitchen", "--nick", "carol")  # another room
    bob = run("chat.py", "--room", "lobby", "--nick", "bob")
    bob.expect("welcome to lobby, bob")
    carol.expect("welcome to kitchen, carol")
    alice.expect("* bob joined")
    bob.say("hi from bob")
    alice.expect("<bob> hi from bob")
    alice.say("hi from alice")
    bob.expect("<alice> hi from alice")
    bob.say("/quit")
    assert bob.finish() == 0, bob.stderr
    alice.expect("* bob left")
    assert alice.finish() == 0, alice.stderr  # end of input leaves too
    assert carol.finish() == 0, carol.stderr
    # Each one's own line was routed before the last line it saw, so an echo would show here.
    assert alice.stdout == [
        "welcome to lobby, alice! /quit leaves",
        "* bob joined",
        "<bob> hi from bob",
        "* bob left",
        "bye",
    ]
    assert bob.stdout == ["welcome to lobby, bob! /quit leaves", "<alice> hi from alice", "bye"]
    assert carol.stdout == ["welcome to kitchen, carol! /quit leaves", "bye"]


def test_echo_upper_answers_in_capitals_until_stopped(run: Run) -> None:
    server = run("echo_upper.py", "serve")
    server.expect("ready")
    ask = run("echo_upper.py", "ask", "hello, straße")
    assert ask.finish() == 0, ask.stderr
    assert ask.stdout == ["HELLO, STRASSE"]
    assert server.interrupt() == 0, server.stderr
    assert server.stdout == ["ready: answering echo.upper", "stopped"]
    late = run("echo_upper.py", "ask", "anyone?")
    assert late.finish() == 1
    assert "no responders" in late.stderr


def test_time_service_with_no_workers_says_so_at_once(run: Run) -> None:
    began = time.monotonic()
    ask = run("time_service.py", "ask", "--timeout", "30", env_url=True)
    assert ask.finish() == 1
    assert time.monotonic() - began < 10, "waited for the timeout instead of failing at once"
    assert "no responders on time.now" in ask.stderr
    assert ask.stdout == []


def test_time_service_spreads_requests_over_its_workers(run: Run) -> None:
    server = run("time_service.py", "serve", "--workers", "3")
    server.expect("ready: 3 workers")
    ask = run("time_service.py", "ask", "--count", "6")
    assert ask.finish() == 0, ask.stderr
    assert len(ask.stdout) == 6
    workers = [int(line.rsplit(" ", 1)[1]) for line in ask.stdout]
    assert sorted(workers) == [1, 1, 2, 2, 3, 3]  # a queue group takes turns
    assert server.interrupt() == 0, server.stderr  # drains, then exits
    assert server.stdout[-1] == "stopped"


ITEMS = 200
ALL_ITEMS = [f"item {n}" for n in range(ITEMS)]


def relaying(what: str, url: str) -> str:
    """The relay's first line: what it relays, where, and how a consumer attaches."""
    consume = f"python {EXAMPLES / 'fanout_relay.py'} --url {url} consume"
    return f"relaying {what} to feed.items on {url}; consumers attach with: {consume}"


@pytest.mark.broker_config(slow_consumer_policy="drop_oldest", max_pending_messages=50)
def test_fanout_relay_a_stalled_consumer_loses_the_oldest_and_others_get_everything(
    run: Run, broker_thread: BrokerThread
) -> None:
    fast = run("fanout_relay.py", "consume", "--name", "fast", "--count", str(ITEMS))
    stalled = run("fanout_relay.py", "consume", "--name", "stalled")
    sluggish = run(
        "fanout_relay.py", "consume", "--name", "sluggish", "--slow", "0.02", "--max-pending", "10"
    )
    for consumer in (fast, stalled, sluggish):
        consumer.expect("consuming feed.items")
    assert (
        broker_thread.stall_client("stalled") == 1
    )  # it stops reading, as far as the broker knows
    relay = run("fanout_relay.py", "relay", "--demo", str(ITEMS), "--rate", "500")
    assert relay.finish() == 0, relay.stderr
    assert relay.stdout == [
        relaying(f"{ITEMS} demo items, 500 a second,", broker_thread.url),
        f"relayed {ITEMS} items",
    ]

    assert fast.finish() == 0, fast.stderr
    assert fast.stdout[1:] == [*ALL_ITEMS, f"{ITEMS} items received, 0 lost"]

    # The broker kept its newest 50 and tells it how many went.
    broker_thread.resume_client("stalled")
    stalled.expect_error(f"the broker dropped {ITEMS - 50} items for us")
    stalled.expect(ALL_ITEMS[-1])
    assert stalled.interrupt() == 0, stalled.stderr
    assert stalled.stdout[1:] == [*ALL_ITEMS[-50:], f"50 items received, {ITEMS - 50} lost"]

    # Slow code: the client's own queue of 10 overflowed, the newest were dropped there.
    assert sluggish.interrupt() == 0, sluggish.stderr
    *items, summary = sluggish.stdout[1:]
    counts = re.fullmatch(r"(\d+) items received, (\d+) lost", summary)
    assert counts is not None, summary
    received, lost = int(counts[1]), int(counts[2])
    assert received == len(items) and lost > 0
    assert ITEMS - 10 <= received + lost <= ITEMS
    numbers = [int(item.split()[1]) for item in items]
    assert numbers == sorted(set(numbers))  # in order, none twice
    assert "dropped" not in sluggish.stderr  # the broker had nothing to drop for it


@pytest.mark.broker_config(slow_consumer_policy="disconnect", max_pending_messages=50)
def test_fanout_relay_a_stalled_consumer_is_cut_off_and_others_carry_on(
    run: Run, broker_thread: BrokerThread
) -> None:
    fast = run("fanout_relay.py", "consume", "--name", "fast", "--count", str(ITEMS))
    stalled = run("fanout_relay.py", "consume", "--name", "stalled")
    fast.expect("consuming feed.items")
    stalled.expect("consuming feed.items")
    assert broker_thread.stall_client("stalled") == 1
    relay = run("fanout_relay.py", "relay", "--demo", str(ITEMS), "--rate", "500")
    assert relay.finish() == 0, relay.stderr
    assert fast.finish() == 0, fast.stderr
    assert fast.stdout[1:] == [*ALL_ITEMS, f"{ITEMS} items received, 0 lost"]
    stalled.expect_error("cut off: slow consumer")
    assert broker_thread.statistics().slow_consumers == 1
    assert stalled.interrupt() == 0, stalled.stderr


def test_fanout_relay_republishes_a_tcp_source(run: Run, broker_thread: BrokerThread) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        host, port = listener.getsockname()[:2]
        consumer = run("fanout_relay.py", "consume", "--count", "3")
        consumer.expect("consuming feed.items")
        relay = run("fanout_relay.py", "relay", "--source", f"{host}:{port}")
        relay.expect("relaying")  # connected to the broker before it opens the source
        listener.settimeout(WAIT)
        source, _ = listener.accept()
        with source:
            source.sendall(b"alpha\nbeta\r\n")
            consumer.expect("beta")  # the relay sends each line as it arrives
            source.sendall(b"gamma")  # the last line needs no newline: the source closes
    assert relay.finish() == 0, relay.stderr
    assert relay.stdout == [
        relaying(f"the lines of {host}:{port}", broker_thread.url),
        "relayed 3 items",
    ]
    assert consumer.finish() == 0, consumer.stderr
    assert consumer.stdout == [
        "consuming feed.items as consumer",
        "alpha",
        "beta",
        "gamma",
        "3 items received, 0 lost",
    ]


def test_kv_set_get_del_and_watch(run: Run) -> None:
    def kv(*args: str) -> Example:
        example = run("kv.py", *args)
        example.finish()
        return example

    assert kv("set", "user.alice", "admin").process.returncode == 0
    assert kv("set", "user.bob", "guest").process.returncode == 0
    assert kv("get", "user.alice").stdout == ["admin"]

    watcher = run("kv.py", "watch", "user.*", "--count", "4")
    watcher.expect("watching kv.user.*")
    assert kv("set", "user.bob", "admin").process.returncode == 0
    assert kv("del", "user.alice").process.returncode == 0
    assert watcher.finish() == 0, watcher.stderr
    assert watcher.stdout == [
        "watching kv.user.*",
        "user.alice = admin (retained)",  # the current values first, sorted by key
        "user.bob = guest (retained)",
        "user.bob = admin",  # then the changes, as they happen
        "user.alice deleted",
    ]

    deleted = kv("get", "user.alice")
    assert deleted.process.returncode == 1
    assert deleted.stdout == []
    assert "user.alice: not found" in deleted.stderr
    assert kv("get", "user.carol").process.returncode == 1
    assert kv("get", "user.bob").stdout == ["admin"]
    assert kv("get", "user.*").process.returncode == 2  # a key is not a pattern


@pytest.mark.broker_config(max_retained_subjects=1)
def test_kv_set_reports_a_full_store(run: Run) -> None:
    first = run("kv.py", "set", "a", "1")
    assert first.finish() == 0, first.stderr
    second = run("kv.py", "set", "b", "2")
    assert second.finish() == 1
    assert "max_retained_subjects" in second.stderr
    replaced = run("kv.py", "set", "a", "3")  # a full store still takes updates
    assert replaced.finish() == 0, replaced.stderr
