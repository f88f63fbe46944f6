"""The client commands (pub, sub, request, reply) as real processes against a real broker.

Each command runs as ``python -m broker ...``, as a user or a script would run it, so exit
codes, stdout/stderr and Ctrl-C are the real ones. The broker runs in a thread of the test
process (`broker.testing.BrokerThread`), so a test can wait on its statistics rather than sleep.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from test_sync import WAIT, wait_for
from typer.testing import CliRunner

from broker import sync
from broker.cli import (
    DEFAULT_URL,
    EXIT_INTERRUPTED,
    EXIT_NO_RESPONDERS,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    app,
)
from broker.testing import BrokerThread

pytestmark = pytest.mark.timeout(30)

#: The environment for every command: no BROKER_URL unless a test sets one.
ENV = {key: value for key, value in os.environ.items() if key != "BROKER_URL"}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "broker", *args]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run one command to completion, bounded in time (subprocess kills it on timeout)."""
    return subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
        env=ENV if env is None else env,
        check=False,
    )


@contextmanager
def started(*args: str) -> Iterator[subprocess.Popen[str]]:
    """Start a long-running command; it is killed on exit if it is still running."""
    process = subprocess.Popen(
        command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=WAIT)


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=WAIT * 2)
    return process.returncode, stdout, stderr


def wait_subscribed(broker: BrokerThread, process: subprocess.Popen[str], count: int = 1) -> None:
    """Wait until the broker holds `count` subscriptions, failing early if `process` exits."""
    deadline = time.monotonic() + WAIT * 2
    while broker.statistics().subscriptions < count:
        if process.poll() is not None:
            code, stdout, stderr = finish(process)
            pytest.fail(f"exited with {code} before subscribing: {stdout!r} {stderr!r}")
        assert time.monotonic() < deadline, "the command never subscribed"
        time.sleep(0.01)


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    """Exit `code` with one `error:` line on stderr and no traceback."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stderr.startswith(f"error: {message}"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    with BrokerThread() as thread:
        yield thread


@pytest.fixture
def unreachable() -> str:
    """The URL of a port nothing listens on: bound once for a free number, then closed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def test_pub_to_sub_round_trip(broker: BrokerThread) -> None:
    with started("sub", "orders.*", "--count", "2", "--url", broker.url) as sub:
        wait_subscribed(broker, sub)
        result = run("pub", "orders.new", "order {n}", "--count", "3", "--url", broker.url)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
        assert finish(sub) == (0, "orders.new order 1\norders.new order 2\n", "")


def test_sub_prints_json_lines(broker: BrokerThread) -> None:
    with started("sub", "data.>", "--json", "--count", "2", "--url", broker.url) as sub:
        wait_subscribed(broker, sub)
        with sync.connect(broker.url) as client:
            client.publish("data.text", "héllo".encode(), headers={"k": "v"}, reply_to="inbox.1")
            client.publish("data.binary", b"\xff\x00")
        code, stdout, stderr = finish(sub)
    assert (code, stderr) == (0, "")
    text, binary = (json.loads(line) for line in stdout.splitlines())
    assert text == {
        "subject": "data.text",
        "payload": "héllo",
        "base64": False,
        "headers": {"k": "v"},
        "reply_to": "inbox.1",
        "retained": False,
    }
    assert binary["base64"] is True
    assert base64.b64decode(binary["payload"]) == b"\xff\x00"


def test_pub_retain_then_sub_replays_it_and_empty_data_deletes(broker: BrokerThread) -> None:
    assert run("pub", "cfg.mode", "fast", "--retain", "--url", broker.url).returncode == 0
    result = run("sub", "cfg.*", "--json", "--count", "1", "--url", broker.url)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert (record["subject"], record["payload"], record["retained"]) == ("cfg.mode", "fast", True)
    assert run("pub", "cfg.mode", "--retain", "--url", broker.url).returncode == 0
    result = run("sub", "cfg.*", "--count", "1", "--timeout", "0.5", "--url", broker.url)
    assert result.returncode == EXIT_TIMEOUT, "nothing is retained any more"


def test_pub_retain_refused_by_a_full_store_exits_1_saying_why() -> None:
    with BrokerThread(max_retained_subjects=1) as small:
        assert run("pub", "cfg.a", "1", "--retain", "--url", small.url).returncode == 0
        result = run("pub", "cfg.b", "2", "--retain", "--url", small.url)
        assert result.returncode == EXIT_UNREACHABLE
        assert "max_retained_subjects" in result.stderr
        assert "Traceback" not in result.stderr


def test_request_and_reply(broker: BrokerThread) -> None:
    with started(
        "reply", "svc.upper", "HELLO", "-H", "served-by=cli", "--count", "1", "--url", broker.url
    ) as responder:
        wait_subscribed(broker, responder)
        result = run("request", "svc.upper", "hi", "-v", "--url", broker.url)
        assert (result.returncode, result.stdout, result.stderr) == (
            0,
            "HELLO\n",
            "served-by: cli\n",
        )
        assert finish(responder) == (0, "svc.upper hi\n", "")


def test_no_responders_exits_3_at_once(broker: BrokerThread) -> None:
    started_at = time.monotonic()
    result = run("request", "nobody.home", "x", "--timeout", "20", "--url", broker.url)
    assert_clean_error(result, EXIT_NO_RESPONDERS, "no responders on nobody.home")
    assert time.monotonic() - started_at < WAIT


def test_request_timeout_exits_4(broker: BrokerThread) -> None:
    with sync.connect(broker.url) as client:
        client.subscribe("slow.service")
        client.flush()
        result = run("request", "slow.service", "x", "--timeout", "0.3", "--url", broker.url)
    assert_clean_error(result, EXIT_TIMEOUT, "no reply on slow.service within 0.3 s")


def test_sub_timeout_exits_4(broker: BrokerThread) -> None:
    result = run("sub", "quiet", "--timeout", "0.3", "--url", broker.url)
    assert_clean_error(result, EXIT_TIMEOUT, "timed out after 0.3 s waiting on quiet")


@pytest.mark.parametrize(
    "args",
    [("pub", "a", "x"), ("sub", "a"), ("request", "a", "x"), ("reply", "a", "x")],
    ids=lambda args: args[0],
)
def test_broker_down_exits_1(unreachable: str, args: tuple[str, ...]) -> None:
    result = run(*args, "--url", unreachable)
    assert_clean_error(result, EXIT_UNREACHABLE, f"cannot connect to {unreachable}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("pub", "a b", "x"), "invalid subject: subject must not contain whitespace"),
        (("pub", "a.*", "x"), "invalid subject: subject must not contain wildcards"),
        (("pub", "a", "x", "--reply", "$sys"), "invalid reply subject: subjects starting with"),
        (("sub", "a.>.b"), "invalid pattern: '>' must be the last token"),
        (("request", "", "x"), "invalid subject: subject must not be empty"),
        (("reply", "a..b", "x"), "invalid subject pattern: "),
        (("pub", "a", "x", "--url", "http://example.com"), "broker URLs use the tcp scheme"),
    ],
    ids=["space", "wildcard", "reserved-reply", "pattern", "empty", "reply-pattern", "url"],
)
def test_invalid_input_exits_2(unreachable: str, args: tuple[str, ...], message: str) -> None:
    # Refused before connecting: the answer does not depend on whether a broker is up.
    result = run(*args) if "--url" in args else run(*args, "--url", unreachable)
    assert_clean_error(result, EXIT_USAGE, message)


def test_usage_errors_exit_2_without_traceback() -> None:
    for args in (("pub", "a", "x", "-H", "novalue"), ("pub", "a", "--count", "0"), ("sub",)):
        result = run(*args)
        assert result.returncode == EXIT_USAGE, result.stderr
        assert "Traceback" not in result.stderr


def test_broker_url_environment_variable(broker: BrokerThread) -> None:
    with sync.connect(broker.url) as client:
        sub = client.subscribe("env.check")
        client.flush()
        result = run("pub", "env.check", "via env", env={**ENV, "BROKER_URL": broker.url})
        assert (result.returncode, result.stderr) == (0, "")
        assert sub.next(timeout=WAIT).payload == b"via env"
    # --url wins over the environment.
    result = run("pub", "env.check", "x", "--url", broker.url, env={**ENV, "BROKER_URL": "x:1"})
    assert result.returncode == 0, result.stderr


def test_ctrl_c_exits_130_quietly(broker: BrokerThread) -> None:
    with started("sub", "forever", "--url", broker.url) as sub:
        wait_subscribed(broker, sub)
        sub.send_signal(signal.SIGINT)
        assert finish(sub) == (EXIT_INTERRUPTED, "", "")
    wait_for(broker, lambda stats: stats.connections == 0)


def test_help_documents_exit_codes_and_default_url() -> None:
    for name in ("pub", "sub", "request", "reply"):
        result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0
        assert "3 no responders; 4 timeout" in result.stdout
        assert "BROKER_URL" in result.stdout
        assert DEFAULT_URL in result.stdout
