"""Broker configuration: one frozen dataclass, its defaults, and loading it from TOML.

Every limit the broker enforces lives here three times over: as a named constant (so code and
tests can refer to the default), as a field of `Config` (so a deployment can change it), and as a
rule checked in `Config.__post_init__` (so a bad value is refused at start-up with a message that
names the key, the rule and the value, rather than surfacing later as a strange failure under
load).

This module is pure: it never imports trio or socket, so it is tested with plain functions and the
command line can check a file without starting anything.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, final, get_args

__all__ = [
    "DEFAULT_FRAME_HEADROOM",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_HOSTS",
    "DEFAULT_LOG_FORMAT",
    "DEFAULT_LOG_LEVEL",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_MAX_PENDING_BYTES",
    "DEFAULT_MAX_PENDING_MESSAGES",
    "DEFAULT_MAX_PINGS_OUTSTANDING",
    "DEFAULT_MAX_RETAINED_BYTES",
    "DEFAULT_MAX_RETAINED_SUBJECTS",
    "DEFAULT_MAX_SUBJECT_LENGTH",
    "DEFAULT_MAX_SUBJECT_TOKENS",
    "DEFAULT_MAX_SUBSCRIPTIONS",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PORT",
    "DEFAULT_SHUTDOWN_GRACE",
    "DEFAULT_SLOW_CONSUMER_POLICY",
    "DEFAULT_WRITE_TIMEOUT",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_HANDSHAKE_TIMEOUT",
    "MAX_MAX_PAYLOAD",
    "MAX_MAX_PENDING_BYTES",
    "MAX_MAX_RETAINED_BYTES",
    "MAX_MAX_RETAINED_SUBJECTS",
    "MAX_MAX_SUBJECT_LENGTH",
    "MAX_MAX_SUBJECT_TOKENS",
    "MAX_PORT",
    "MAX_SHUTDOWN_GRACE",
    "MAX_WRITE_TIMEOUT",
    "MIN_FRAME_HEADROOM",
    "MIN_MAX_PENDING_BYTES",
    "MIN_MAX_SUBJECT_LENGTH",
    "SLOW_CONSUMER_POLICIES",
    "Config",
    "ConfigError",
    "LogFormat",
    "SlowConsumerPolicy",
    "config_from_mapping",
    "config_to_mapping",
    "load_config",
]

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB

SlowConsumerPolicy = Literal["disconnect", "drop_oldest", "drop_newest"]
LogFormat = Literal["text", "json"]

SLOW_CONSUMER_POLICIES: Final[tuple[str, ...]] = get_args(SlowConsumerPolicy)
LOG_FORMATS: Final[tuple[str, ...]] = get_args(LogFormat)
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")

# [server]
DEFAULT_HOSTS: Final[tuple[str, ...]] = ("127.0.0.1",)
DEFAULT_PORT: Final = 5878
MAX_PORT: Final = 65_535

# [limits]
DEFAULT_MAX_CONNECTIONS: Final = 10_000
DEFAULT_MAX_PAYLOAD: Final = 1 * MiB
MAX_MAX_PAYLOAD: Final = 64 * MiB
#: Frame limit beyond max_payload when max_frame is not set: room for the subject, reply subject,
#: headers and msgpack framing around a payload of the largest allowed size.
DEFAULT_FRAME_HEADROOM: Final = 64 * KiB
#: The least room an explicit max_frame must leave above max_payload for the envelope.
MIN_FRAME_HEADROOM: Final = 1 * KiB
DEFAULT_MAX_SUBSCRIPTIONS: Final = 65_536
DEFAULT_MAX_SUBJECT_LENGTH: Final = 256
MIN_MAX_SUBJECT_LENGTH: Final = 16
MAX_MAX_SUBJECT_LENGTH: Final = 65_536
DEFAULT_MAX_SUBJECT_TOKENS: Final = 32
MAX_MAX_SUBJECT_TOKENS: Final = 1024
DEFAULT_MAX_PENDING_MESSAGES: Final = 65_536
DEFAULT_MAX_PENDING_BYTES: Final = 64 * MiB
MIN_MAX_PENDING_BYTES: Final = 1 * KiB
MAX_MAX_PENDING_BYTES: Final = 1 * GiB

# [retained]
DEFAULT_MAX_RETAINED_SUBJECTS: Final = 10_000
MAX_MAX_RETAINED_SUBJECTS: Final = 10_000_000
DEFAULT_MAX_RETAINED_BYTES: Final = 64 * MiB
MAX_MAX_RETAINED_BYTES: Final = 16 * GiB

# [slow_consumer]
DEFAULT_SLOW_CONSUMER_POLICY: Final[SlowConsumerPolicy] = "disconnect"

# [timeouts], in seconds
DEFAULT_HANDSHAKE_TIMEOUT: Final = 2.0
MAX_HANDSHAKE_TIMEOUT: Final = 60.0
DEFAULT_WRITE_TIMEOUT: Final = 10.0
MAX_WRITE_TIMEOUT: Final = 10.0
DEFAULT_PING_INTERVAL: Final = 120.0
DEFAULT_MAX_PINGS_OUTSTANDING: Final = 2
DEFAULT_SHUTDOWN_GRACE: Final = 5.0
MAX_SHUTDOWN_GRACE: Final = 300.0

# [logging]
DEFAULT_LOG_LEVEL: Final = "info"
DEFAULT_LOG_FORMAT: Final[LogFormat] = "text"


class ConfigError(ValueError):
    """A configuration value, key or file was refused.

    The message says where (`source`, when the value came from a file), which key, and which rule
    was broken, with the offending value: ``config/broker.toml: limits.max_payload must be between
    1 and 67108864, got 0``. The parts are also kept as attributes so a caller can re-word the
    location (the command line names ``--port`` rather than ``port``) without parsing the text.

    Attributes:
        problem: The rule and the value, e.g. ``"must be >= 1, got 0"``.
        key: The key the problem is about, or None for problems with the whole file.
        source: Where the configuration came from (usually a file name), or None.
    """

    def __init__(self, problem: str, *, key: str | None = None, source: str | None = None) -> None:
        self.problem = problem
        self.key = key
        self.source = source
        text = problem if key is None else f"{key} {problem}"
        super().__init__(text if source is None else f"{source}: {text}")

    def relocated(self, *, source: str, key: str | None = None) -> ConfigError:
        """Return the same problem reported against another source and, optionally, key name."""
        return ConfigError(self.problem, key=self.key if key is None else key, source=source)


def _number(value: float) -> str:
    # 60.0 reads better as "60" in a rule; a fractional bound keeps its digits.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


@dataclass(frozen=True, slots=True)
class _Range:
    """An inclusive range with an optional open low end, and how to say it in an error."""

    low: float
    high: float | None = None
    low_exclusive: bool = False

    def admits(self, value: float) -> bool:
        # Written so that NaN fails every comparison and is refused.
        above = value > self.low if self.low_exclusive else value >= self.low
        return above and (self.high is None or value <= self.high)

    def rule(self) -> str:
        low, high = _number(self.low), None if self.high is None else _number(self.high)
        if high is None:
            return f"must be {'>' if self.low_exclusive else '>='} {low}"
        if self.low_exclusive:
            return f"must be > {low} and <= {high}"
        return f"must be between {low} and {high}"


# Declared in field order, so the first broken rule reported is the first in the file layout.
_INT_RANGES: Final[Mapping[str, _Range]] = {
    "port": _Range(0, MAX_PORT),
    "max_connections": _Range(1),
    "max_payload": _Range(1, MAX_MAX_PAYLOAD),
    "max_subscriptions": _Range(1),
    "max_subject_length": _Range(MIN_MAX_SUBJECT_LENGTH, MAX_MAX_SUBJECT_LENGTH),
    "max_subject_tokens": _Range(1, MAX_MAX_SUBJECT_TOKENS),
    "max_pending_messages": _Range(1),
    "max_pending_bytes": _Range(MIN_MAX_PENDING_BYTES, MAX_MAX_PENDING_BYTES),
    "max_retained_subjects": _Range(0, MAX_MAX_RETAINED_SUBJECTS),
    "max_retained_bytes": _Range(0, MAX_MAX_RETAINED_BYTES),
    "max_pings_outstanding": _Range(1),
}
_FLOAT_RANGES: Final[Mapping[str, _Range]] = {
    "handshake_timeout": _Range(0, MAX_HANDSHAKE_TIMEOUT, low_exclusive=True),
    "write_timeout": _Range(0, MAX_WRITE_TIMEOUT, low_exclusive=True),
    "ping_interval": _Range(0, low_exclusive=True),
    "shutdown_grace": _Range(0, MAX_SHUTDOWN_GRACE),
}

# RFC 1123 host names; underscores are tolerated because real resolvers and container
# networks hand them out. An IP literal is checked with ipaddress instead.
_HOSTNAME_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _got(value: object) -> str:
    return f"got {type(value).__name__} {value!r}"


def _require_int(key: str, value: object) -> int:
    # bool is an int subclass, but `max_payload = true` is a mistake, not the number 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"must be an integer, {_got(value)}", key=key)
    return value


def _require_int_in(key: str, value: object, allowed: _Range) -> int:
    number = _require_int(key, value)
    if not allowed.admits(number):
        raise ConfigError(f"{allowed.rule()}, got {number}", key=key)
    return number


def _require_float(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"must be a number of seconds, {_got(value)}", key=key)
    if not math.isfinite(value):
        raise ConfigError(f"must be a finite number of seconds, got {value!r}", key=key)
    return float(value)


def _require_seconds_in(key: str, value: object, allowed: _Range) -> float:
    seconds = _require_float(key, value)
    if not allowed.admits(seconds):
        raise ConfigError(f"{allowed.rule()}, got {_number(seconds)}", key=key)
    return seconds


def _require_str(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"must be a string, {_got(value)}", key=key)
    return value


def _require_choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    text = _require_str(key, value)
    if text not in choices:
        listed = ", ".join(repr(choice) for choice in choices)
        raise ConfigError(f"must be one of {listed}, got {text!r}", key=key)
    return text


def _check_host(key: str, host: object) -> None:
    if not isinstance(host, str):
        raise ConfigError(f"must be a string, {_got(host)}", key=key)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return
    name = host.removesuffix(".")
    if not name or len(name) > 253 or not all(map(_HOSTNAME_LABEL.fullmatch, name.split("."))):
        raise ConfigError(
            "must be an IP address (such as '127.0.0.1', '::' or '0.0.0.0') or a host name"
            f" (dot-separated labels of letters, digits, '-' and '_'), got {host!r}",
            key=key,
        )


def _check_hosts(value: object) -> tuple[str, ...]:
    if not isinstance(value, tuple | list):
        raise ConfigError(
            f"must be a list of host names or IP addresses, {_got(value)}", key="hosts"
        )
    if not value:
        raise ConfigError("must name at least one host to listen on, got none", key="hosts")
    for index, host in enumerate(value):
        _check_host(f"hosts[{index}]", host)
    # Two listeners on the same address would fail at bind time with a less helpful error.
    repeated = sorted({host for host in value if value.count(host) > 1})
    if repeated:
        raise ConfigError(
            f"must not name a host twice, got {repeated!r} more than once", key="hosts"
        )
    return tuple(value)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything the broker can be told at start-up, with defaults that are safe on loopback.

    Flat on purpose: the server and sessions read ``config.max_payload`` rather than walking
    sections; the TOML file groups keys into sections only for the reader's sake (see
    `config_from_mapping` for the mapping). Every field is validated on construction, including
    through `dataclasses.replace`, so a `Config` that exists is a valid one. Normalises as it
    validates: a list of hosts becomes a tuple, integer seconds become floats, and ``log_level``
    is stored in lower case.

    Raises:
        ConfigError: A field has the wrong type or breaks its rule; the message names the field,
            the rule and the value.
    """

    hosts: tuple[str, ...] = DEFAULT_HOSTS
    """Addresses to listen on, each an IP literal or host name; ``"::"``/``"0.0.0.0"`` = all."""
    port: int = DEFAULT_PORT
    """TCP port for every host; 0 picks a free port (the server reports the one it got)."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Clients connected at once; further connections are refused."""
    max_payload: int = DEFAULT_MAX_PAYLOAD
    """Largest message payload in bytes a client may publish."""
    max_frame: int | None = None
    """Largest frame in bytes; None means ``max_payload + DEFAULT_FRAME_HEADROOM``."""
    max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS
    """Subscriptions one connection may hold at once."""
    max_subject_length: int = DEFAULT_MAX_SUBJECT_LENGTH
    """Longest subject or pattern, in UTF-8 bytes."""
    max_subject_tokens: int = DEFAULT_MAX_SUBJECT_TOKENS
    """Most dot-separated tokens in a subject or pattern."""
    max_pending_messages: int = DEFAULT_MAX_PENDING_MESSAGES
    """Per-client outbox bound in messages; past it, `slow_consumer_policy` applies."""
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES
    """Per-client outbox bound in bytes; past it, `slow_consumer_policy` applies."""
    max_retained_subjects: int = DEFAULT_MAX_RETAINED_SUBJECTS
    """Subjects holding a retained message at once; 0 turns retained messages off."""
    max_retained_bytes: int = DEFAULT_MAX_RETAINED_BYTES
    """Memory the retained store may hold: messages as encoded, plus the store's structure."""

    slow_consumer_policy: SlowConsumerPolicy = DEFAULT_SLOW_CONSUMER_POLICY
    """What to do when a client's outbox is full: disconnect it, or drop its oldest or newest."""

    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    """Seconds a new connection has to complete the handshake."""
    write_timeout: float = DEFAULT_WRITE_TIMEOUT
    """Seconds one write to a client may take before the client is treated as slow and closed."""
    ping_interval: float = DEFAULT_PING_INTERVAL
    """Seconds between server pings to an idle client."""
    max_pings_outstanding: int = DEFAULT_MAX_PINGS_OUTSTANDING
    """Unanswered pings after which the client is considered dead and closed."""
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    """Seconds clients get to drain on shutdown before their connections are cut."""

    log_level: str = DEFAULT_LOG_LEVEL
    """One of `LOG_LEVELS`, any case; stored in lower case."""
    log_format: LogFormat = DEFAULT_LOG_FORMAT
    """``"text"`` for people, ``"json"`` (one object per line) for log collectors."""

    def __post_init__(self) -> None:
        # Fields are frozen; object.__setattr__ is how a frozen dataclass normalises itself.
        object.__setattr__(self, "hosts", _check_hosts(self.hosts))
        for name, allowed in _INT_RANGES.items():
            _require_int_in(name, getattr(self, name), allowed)
        if self.max_frame is not None:
            frame = _require_int("max_frame", self.max_frame)
            least = self.max_payload + MIN_FRAME_HEADROOM
            if frame < least:
                raise ConfigError(
                    f"must be >= max_payload + {MIN_FRAME_HEADROOM} ({least}) to leave room for"
                    f" the envelope around the largest payload, got {frame}",
                    key="max_frame",
                )
        _require_choice("slow_consumer_policy", self.slow_consumer_policy, SLOW_CONSUMER_POLICIES)
        for name, allowed in _FLOAT_RANGES.items():
            object.__setattr__(self, name, _require_seconds_in(name, getattr(self, name), allowed))
        if _require_str("log_level", self.log_level).lower() not in LOG_LEVELS:
            listed = ", ".join(LOG_LEVELS)
            problem = f"must be one of {listed} (any case), got {self.log_level!r}"
            raise ConfigError(problem, key="log_level")
        object.__setattr__(self, "log_level", self.log_level.lower())
        _require_choice("log_format", self.log_format, LOG_FORMATS)

    @property
    def frame_limit(self) -> int:
        """The largest frame the broker accepts, in bytes: `max_frame`, or its default when None.

        The default leaves `DEFAULT_FRAME_HEADROOM` above `max_payload`, so raising max_payload
        alone keeps the largest payload deliverable.
        """
        if self.max_frame is None:
            return self.max_payload + DEFAULT_FRAME_HEADROOM
        return self.max_frame


# TOML layout: section -> {key in the file: Config field}. The file is grouped for people; Config
# stays flat for code. A test checks every field appears here exactly once.
_SECTIONS: Final[Mapping[str, Mapping[str, str]]] = {
    "server": {"hosts": "hosts", "port": "port"},
    "limits": {
        name: name
        for name in (
            "max_connections",
            "max_payload",
            "max_frame",
            "max_subscriptions",
            "max_subject_length",
            "max_subject_tokens",
            "max_pending_messages",
            "max_pending_bytes",
        )
    },
    "slow_consumer": {"policy": "slow_consumer_policy"},
    "retained": {"max_subjects": "max_retained_subjects", "max_bytes": "max_retained_bytes"},
    "timeouts": {
        name: name
        for name in (
            "handshake_timeout",
            "write_timeout",
            "ping_interval",
            "max_pings_outstanding",
            "shutdown_grace",
        )
    },
    "logging": {"level": "log_level", "format": "log_format"},
}
_TOML_KEYS: Final[Mapping[str, str]] = {
    field: f"{section}.{key}" for section, keys in _SECTIONS.items() for key, field in keys.items()
}


def _toml_key(key: str) -> str:
    # "hosts[1]" from Config becomes "server.hosts[1]" in the file.
    field, bracket, rest = key.partition("[")
    return _TOML_KEYS.get(field, field) + bracket + rest


def _unknown(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"is not a known {kind}{hint}; known: {', '.join(known)}"


def config_from_mapping(data: Mapping[str, Any], *, source: str = "<config>") -> Config:
    """Build a `Config` from parsed TOML laid out in sections.

    Why sections are checked key by key: a misspelt key (``max_paylaod``) would otherwise be
    silently ignored and the default used, which is the worst kind of config bug. So unknown
    sections and keys are refused, with the nearest known name as a hint. Keys left out take their
    defaults. ``server.hosts`` may be one string or an array of strings.

    Args:
        data: The parsed document, e.g. from `tomllib.load`.
        source: Where it came from, to start every error message with (usually the file name).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: Unknown section or key, wrong type or value out of range; the message names
            `source`, the key as ``section.key``, the rule and the value.

    Example:
        >>> config_from_mapping({"server": {"port": 0}}).port
        0
    """
    values: dict[str, Any] = {}
    for section, table in data.items():
        keys = _SECTIONS.get(section)
        if keys is None:
            problem = _unknown("section", section, list(_SECTIONS))
            raise ConfigError(problem, key=f"[{section}]", source=source)
        if not isinstance(table, Mapping):
            problem = f"must be a table of keys, {_got(table)}"
            raise ConfigError(problem, key=f"[{section}]", source=source)
        for key, value in table.items():
            field = keys.get(key)
            if field is None:
                problem = _unknown(f"key in [{section}]", key, list(keys))
                raise ConfigError(problem, key=f"{section}.{key}", source=source)
            values[field] = (value,) if field == "hosts" and isinstance(value, str) else value
    try:
        return Config(**values)
    except ConfigError as exc:
        key = None if exc.key is None else _toml_key(exc.key)
        raise exc.relocated(source=source, key=key) from None


def config_to_mapping(config: Config) -> dict[str, dict[str, Any]]:
    """Lay a `Config` out in TOML sections, the inverse of `config_from_mapping`.

    Values are TOML's types (hosts as a list). ``limits.max_frame`` is left out when it is None,
    since TOML has no null and leaving it out is how a file says "use the default".
    """
    layout: dict[str, dict[str, Any]] = {}
    for section, keys in _SECTIONS.items():
        table = layout[section] = {}
        for key, field in keys.items():
            value = getattr(config, field)
            if value is not None:
                table[key] = list(value) if isinstance(value, tuple) else value
    return layout


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate a TOML configuration file.

    Args:
        path: The file to read; it is named in every error message as given.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: The file cannot be read, is not valid UTF-8 TOML, or any key in it is
            unknown, of the wrong type or out of range (see `config_from_mapping`).
    """
    source = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(
            f"cannot read config file: {exc.strerror or exc}", source=source
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"TOML files must be UTF-8: {exc}", source=source) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"is not valid TOML: {exc}", source=source) from None
    return config_from_mapping(data, source=source)
