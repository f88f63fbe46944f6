"""The ``broker`` command: parse the command line, load the configuration, call the library.

No logic lives here beyond turning arguments into calls and errors into exit codes: what a value
may be is decided by `broker.config`, how the server runs by `broker.server`. Commands are grouped
by what they talk to: the ones that run or check a server come first; client commands (pub, sub,
request, reply) go in their own section below them and share the helpers at the top.

Exit codes: 0 success; 2 a usage error or a refused configuration, with a one-line message on
stderr and no traceback (the user needs the key and the rule, not our call stack); anything else
is what `broker.server.run` returned.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn

import typer

from ._version import __version__
from .config import Config, ConfigError, config_to_mapping, load_config
from .logs import configure_logging

__all__ = ["EXIT_CONFIG_ERROR", "app"]

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
) -> None:
    """Run the broker until SIGINT or SIGTERM, then drain clients and exit."""
    config = _load(
        config_path, hosts=tuple(hosts) if hosts else None, port=port, log_level=log_level
    )
    configure_logging(config.log_level, config.log_format)
    # Imported here so that check-config and the client commands neither need nor pay for the
    # server's import.
    from .server import run

    raise typer.Exit(run(config))


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
    for section, table in layout.items():
        for key, value in table.items():
            # JSON spells these scalars and string arrays the way TOML does.
            typer.echo(f"{section}.{key} = {json.dumps(value)}")


# ---- client commands (pub, sub, request, reply) go below ------------------------------------
