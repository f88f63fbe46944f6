"""Tests for the ``broker`` command line (without a running server) and its logging set-up."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from broker import __version__
from broker.cli import EXIT_CONFIG_ERROR, app
from broker.logs import configure_logging

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "broker.toml"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def assert_refused(result: Result, message: str) -> None:
    """Exit 2 with the message alone on stderr: no traceback, nothing on stdout."""
    assert result.exit_code == EXIT_CONFIG_ERROR == 2, result.output
    assert result.stderr == f"error: {message}\n"
    assert result.stdout == ""
    assert "Traceback" not in result.output


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text("[limits]\nmax_payload = 0\n")
    return path


BAD_MESSAGE = "limits.max_payload must be between 1 and 67108864, got 0"


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"broker {__version__}\n"


def test_check_config_ok() -> None:
    result = invoke("check-config", str(SHIPPED))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"ok: {SHIPPED}"
    assert 'server.hosts = ["127.0.0.1"]' in lines
    assert "limits.max_payload = 1048576" in lines
    # Unset in the file, so the effective limit is shown.
    assert "limits.max_frame = 1114112" in lines
    assert 'slow_consumer.policy = "disconnect"' in lines
    assert "timeouts.write_timeout = 10.0" in lines


def test_check_config_bad(bad_config: Path) -> None:
    assert_refused(invoke("check-config", str(bad_config)), f"{bad_config}: {BAD_MESSAGE}")


def test_check_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    assert_refused(
        invoke("check-config", str(path)),
        f"{path}: cannot read config file: No such file or directory",
    )


def test_check_config_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[server\n")
    result = invoke("check-config", str(path))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path}: is not valid TOML: ")
    assert "Traceback" not in result.output


def test_serve_bad_config(bad_config: Path) -> None:
    assert_refused(invoke("serve", "--config", str(bad_config)), f"{bad_config}: {BAD_MESSAGE}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "65536"], "--port must be between 0 and 65535, got 65536"),
        (["--host", "::1", "--host", "a b"], "--host must be an IP address"),
        (["--host", "::1", "--host", "::1"], "--host must not name a host twice"),
        (["--log-level", "loud"], "--log-level must be one of debug, info"),
    ],
)
def test_serve_bad_override(args: list[str], message: str) -> None:
    # Overrides obey the same rules as the file, and are reported against the option.
    result = invoke("serve", "--config", str(SHIPPED), *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: command line: {message}")
    assert "Traceback" not in result.output


def test_serve_override_cannot_rescue_bad_file(bad_config: Path) -> None:
    assert_refused(
        invoke("serve", "--config", str(bad_config), "--port", "0"), f"{bad_config}: {BAD_MESSAGE}"
    )


# ---- logging as the program sets it up ------------------------------------------------------


@pytest.fixture
def broker_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("broker")
    handlers, level = logger.handlers[:], logger.level
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_text_logging(broker_logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("WARNING", "text")
    logging.getLogger("broker.server").info("not shown")
    logging.getLogger("broker.server").warning("listening on %s", "127.0.0.1:5878")
    err = capsys.readouterr().err
    timestamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(
        rf"{timestamp} WARNING broker\.server: listening on 127\.0\.0\.1:5878\n", err
    )


def test_json_logging(broker_logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("debug", "json")
    log = logging.getLogger("broker.session")
    log.debug("client %d gone", 7, extra={"client_id": 7, "level": "overridden?"})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", first.pop("time"))
    # An extra field never overwrites a fixed key.
    assert first == {
        "level": "DEBUG",
        "logger": "broker.session",
        "message": "client 7 gone",
        "client_id": 7,
    }
    assert second["level"] == "ERROR"
    assert second["exc_info"].endswith("RuntimeError: boom")


def test_configure_logging_is_idempotent(
    broker_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", "text")
    count = len(broker_logger.handlers)
    configure_logging("info", "json")
    assert len(broker_logger.handlers) == count
    logging.getLogger("broker.server").info("once")
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["message"] == "once"


def test_configure_logging_refuses_unknown_level(broker_logger: logging.Logger) -> None:
    with pytest.raises(ValueError, match=r"^log level must be one of debug, .*, got 'loud'$"):
        configure_logging("loud", "text")


def test_bench_command_is_registered() -> None:
    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    assert "--scenario" in result.output and "--against-nats" in result.output
