"""What a new user meets in the first hour of `broker serve` and `broker check-config`.

`pip install trio-broker` (``broker`` on PyPI is someone else's) still gives `import broker`
and the `broker` command. A port that is taken or a host that does not resolve is one line and
exit 1, not a traceback. The statistics at shutdown are fields, ``key=value`` in text logs and
an object in JSON logs, not a Python dict inside the message. A key written above every
section header (``port = 6001``) is named with the section it belongs in. Commands run as a
user runs them, as subprocesses, each bounded by a timeout.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import trio
from wire import StartServer

from broker._version import DISTRIBUTION_NAME, __version__
from broker.config import Config, ConfigError, load_config
from broker.server.server import ListenError, Server, _listen_hint
from broker.stats import Statistics
from broker.testing import BrokerThread

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a command may take before the test gives up on it (and kills it).
WAIT = 30


def serve_refused(*args: str, env: dict[str, str] | None = None) -> str:
    """Run `broker serve ARGS`, which must fail to listen; return the one line it printed."""
    result = subprocess.run(
        [sys.executable, "-m", "broker", "serve", *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr, result.stderr
    assert "ExceptionGroup" not in result.stderr, result.stderr
    *before, line = result.stderr.splitlines()
    # The only other line allowed: the warning that the fd limit is below max_connections.
    assert all("file descriptor limit" in other for other in before), result.stderr
    return line


LISTENING = re.compile(rb"listening on 127\.0\.0\.1:\d+")
STATISTICS = [field.name for field in dataclasses.fields(Statistics)]


async def serve_until_sigterm(*args: str) -> list[str]:
    """Run `broker serve --port 0 ARGS`; once it listens, SIGTERM it; return its stderr lines.

    Also checks that it exited 0 after a clean shutdown.
    """
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "broker", "serve", "--port", "0", *args],
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stderr is not None
    log = bytearray()
    try:
        with trio.fail_after(WAIT):
            while LISTENING.search(log) is None:
                chunk = await process.stderr.receive_some()
                assert chunk, f"broker exited before listening: {log.decode()}"
                log += chunk
            process.send_signal(signal.SIGTERM)
            while chunk := await process.stderr.receive_some():
                log += chunk
            assert await process.wait() == 0, log.decode()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(5):
            await process.wait()
        await trio.aclose_forcefully(process.stderr)
    return log.decode().splitlines()


# ---- a port in use, a host that does not resolve ---------------------------------------------


def test_serve_on_a_port_in_use_says_so_in_one_line_and_exits_1(
    broker_thread: BrokerThread,
) -> None:
    """`broker serve & broker serve`: the second says what and what to do; the first serves on."""
    port = broker_thread.port
    line = serve_refused("--port", str(port))
    assert line.endswith(
        f"ERROR broker.server: cannot listen on 127.0.0.1:{port}: address already in use; "
        "is another broker running? stop it, or pick another --port"
    ), line
    with broker_thread.connect_sync(name="still-served") as client:
        client.flush()


def test_serve_on_a_host_that_does_not_resolve_says_so_in_one_line_and_exits_1() -> None:
    # attempts:0 makes glibc's resolver fail at once without sending a query, so the test
    # stays on this machine; elsewhere the variable is ignored and the name fails in DNS.
    env = {**os.environ, "RES_OPTIONS": "attempts:0"}
    line = serve_refused("--port", "0", "--host", "not-a-host.invalid", env=env)
    assert "ERROR broker.server: cannot listen on not-a-host.invalid:0: " in line
    assert "cannot resolve the host name (" in line
    assert line.endswith(
        "check the name, or give an IP address (--host 127.0.0.1 for this machine only)"
    ), line


async def test_a_port_in_use_is_a_listen_error_that_keeps_the_errno(
    start_server: StartServer,
) -> None:
    """Embedding code sees an OSError with the usual errno, and the address in its message."""
    with trio.fail_after(5):
        first = await start_server()
        second = Server(Config(hosts=("127.0.0.1",), port=first.port))
        with pytest.raises(ListenError) as caught:
            await second.serve()
    error = caught.value
    assert isinstance(error, OSError)
    assert error.errno == errno.EADDRINUSE
    assert (error.host, error.port, error.resolving) == ("127.0.0.1", first.port, False)
    assert str(error) == f"cannot listen on 127.0.0.1:{first.port}: address already in use"
    assert isinstance(error.__cause__, OSError)
    assert first.statistics().connections == 0  # the first broker was not disturbed


@pytest.mark.parametrize(
    ("code", "port", "hint"),
    [
        (errno.EADDRNOTAVAIL, 5878, "that address is not one of this machine's"),
        (errno.EACCES, 80, "ports below 1024 need privileges"),
        (errno.EACCES, 5878, "check --host and --port"),
        (errno.EAFNOSUPPORT, 5878, "this machine has no network of that kind"),
    ],
)
def test_each_listen_error_gets_a_hint(code: int, port: int, hint: str) -> None:
    error = ListenError("192.0.2.1", port, OSError(code, os.strerror(code)))
    assert _listen_hint(error).startswith(hint)
    assert str(error).startswith(f"cannot listen on 192.0.2.1:{port}: ")


# ---- the statistics when the broker stops ----------------------------------------------------


async def test_text_logs_give_the_statistics_as_key_value_pairs() -> None:
    lines = await serve_until_sigterm()
    [stopped] = [line for line in lines if " stopped " in line]
    assert "Traceback" not in "\n".join(lines)
    found = re.search(r"INFO broker\.server: broker [0-9a-f]{16} stopped \| (.*)$", stopped)
    assert found is not None, stopped
    pairs = [pair.split("=") for pair in found[1].split(" ")]
    assert [key for key, _ in pairs] == STATISTICS
    assert all(value.isdigit() for _, value in pairs), stopped


async def test_json_logs_give_the_statistics_as_an_object(tmp_path: Path) -> None:
    config = tmp_path / "json.toml"
    config.write_text('[logging]\nformat = "json"\n')
    records = [json.loads(line) for line in await serve_until_sigterm("--config", str(config))]
    [stopped] = [record for record in records if record["message"].endswith(" stopped")]
    assert re.fullmatch(r"broker [0-9a-f]{16} stopped", stopped["message"])
    assert list(stopped["stats"]) == STATISTICS
    assert all(type(value) is int for value in stopped["stats"].values()), stopped
    assert stopped["level"] == "INFO" and stopped["logger"] == "broker.server"


# ---- a key outside its section --------------------------------------------------------------

SECTIONS = (
    "[server], [limits], [slow_consumer], [retained], [timeouts], [logging], [auth], [tls],"
    " [monitoring], [nats], [cluster]"
)


def test_check_config_says_which_section_a_top_level_key_belongs_in(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    # TOML reads a key above the first header as a top-level key, not as part of [logging].
    path.write_text('port = 6001\n\n[logging]\nlevel = "debug"\n')
    result = subprocess.run(
        [sys.executable, "-m", "broker", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"error: {path}: port must be inside a section, not at the top of the file:"
        " put port = 6001 under [server], [monitoring] or [nats]\n"
    )


@pytest.mark.parametrize(
    ("written", "problem"),
    [
        (
            'hosts = ["0.0.0.0", "::"]',
            'hosts must be inside a section, not at the top of the file: put hosts = ["0.0.0.0",'
            ' "::"] under [server]',
        ),
        (
            "max_payload = 2048",
            "max_payload must be inside a section, not at the top of the file:"
            " put max_payload = 2048 under [limits]",
        ),
        (
            'policy = "drop_oldest"',
            "policy must be inside a section, not at the top of the file:"
            ' put policy = "drop_oldest" under [slow_consumer]',
        ),
        (
            "shutdown_grace = 2.5",
            "shutdown_grace must be inside a section, not at the top of the file:"
            " put shutdown_grace = 2.5 under [timeouts]",
        ),
        (
            "hosts = [" + ", ".join(['"127.0.0.1"'] * 10) + "]",
            "hosts must be inside a section, not at the top of the file:"
            " put hosts = ... under [server]",
        ),
        (
            "prot = 6001",
            "prot is not a key of any section (did you mean 'port' in [server]?); every key"
            f" belongs inside one of the sections {SECTIONS}",
        ),
        (
            "colour = true",
            f"colour is not a key of any section; every key belongs inside one of the sections"
            f" {SECTIONS}",
        ),
    ],
    ids=["list", "int", "string", "float", "elided", "misspelt", "unknown"],
)
def test_load_config_names_the_section_a_top_level_key_belongs_in(
    tmp_path: Path, written: str, problem: str
) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(f"{written}\n[server]\nport = 0\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: {problem}"
    assert caught.value.key == written.split(" = ")[0]


def test_an_unknown_table_is_still_an_unknown_section(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text("[[serve]]\nport = 0\n")
    with pytest.raises(ConfigError, match=r"\[serve\] is not a known section \(did you mean"):
        load_config(path)


# ---- the name to install under ---------------------------------------------------------------


def test_the_distribution_is_trio_broker_and_installs_broker_and_its_command() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION_NAME == "trio-broker"
    assert project["scripts"] == {"broker": "broker.cli:app"}
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION_NAME)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{DISTRIBUTION_NAME} is not installed; from a checkout: pip install -e .")
    assert dist.version == importlib.metadata.version(DISTRIBUTION_NAME) == __version__
    scripts = dist.entry_points.select(group="console_scripts")
    assert [(script.name, script.value) for script in scripts] == [("broker", "broker.cli:app")]


def test_the_installed_broker_command_prints_its_version() -> None:
    # The script pip put beside this interpreter, as a user's shell finds it.
    command = shutil.which("broker", path=os.path.dirname(sys.executable))
    assert command is not None, "no broker command beside the interpreter: pip install -e ."
    result = subprocess.run(
        [command, "--version"], capture_output=True, text=True, timeout=WAIT, check=True
    )
    assert result.stdout == f"broker {__version__}\n"
