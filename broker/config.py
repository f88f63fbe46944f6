"""Broker configuration: one frozen dataclass, its defaults, and loading it from TOML.

Every limit the broker enforces lives here three times over: as a named constant (so code and
tests can refer to the default), as a field of `Config` (so a deployment can change it), and as a
rule checked in `Config.__post_init__` (so a bad value is refused at start-up with a message that
names the key, the rule and the value, rather than surfacing later as a strange failure under
load).

A new section is a frozen dataclass that checks its fields in ``__post_init__`` (naming keys
relative to itself), held by a `Config` field of the section's name. Reading and writing follow
the type hints (see "sections" below for the shapes: sub-tables, arrays of tables, unions,
optional sections), with hints for unknown keys and full paths (``auth.users[1].password``) in
errors. A section holding sections calls ``_check_nested(self)`` first. ``[tls]`` would be::

    @final
    @dataclass(frozen=True, slots=True, kw_only=True)
    class TlsConfig:
        cert_file: str
        key_file: str
        verify: bool = False

        def __post_init__(self) -> None:
            _require_str("cert_file", self.cert_file)
            _require_str("key_file", self.key_file)
            _require_bool("verify", self.verify)

    tls: TlsConfig | None = None  # in Config; then __all__, config/broker.toml and its tests

This module is pure: it never imports trio or socket, so it is tested with plain functions and the
command line can check a file without starting anything.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, Union, final, get_args, get_origin, get_type_hints

from .subjects import SubjectError, validate_pattern

__all__ = [
    "DEFAULT_FRAME_HEADROOM",
    "DEFAULT_FRAME_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_HOSTS",
    "DEFAULT_LOG_FORMAT",
    "DEFAULT_LOG_LEVEL",
    "DEFAULT_LOG_PEER_LINES_PER_MINUTE",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_CONTROL_LINE",
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_MAX_PENDING_BYTES",
    "DEFAULT_MAX_PENDING_MESSAGES",
    "DEFAULT_MAX_PINGS_OUTSTANDING",
    "DEFAULT_MAX_REPLAY_BYTES",
    "DEFAULT_MAX_RETAINED_BYTES",
    "DEFAULT_MAX_RETAINED_SUBJECTS",
    "DEFAULT_MAX_SUBJECT_LENGTH",
    "DEFAULT_MAX_SUBJECT_TOKENS",
    "DEFAULT_MAX_SUBSCRIPTIONS",
    "DEFAULT_MONITOR_HOST",
    "DEFAULT_MONITOR_MAX_CONNECTIONS",
    "DEFAULT_MONITOR_PORT",
    "DEFAULT_MONITOR_REQUEST_TIMEOUT",
    "DEFAULT_NATS_HOST",
    "DEFAULT_NATS_PORT",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PORT",
    "DEFAULT_SHUTDOWN_GRACE",
    "DEFAULT_SLOW_CONSUMER_POLICY",
    "DEFAULT_WRITE_TIMEOUT",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_FRAME_TIMEOUT",
    "MAX_HANDSHAKE_TIMEOUT",
    "MAX_LOG_PEER_LINES_PER_MINUTE",
    "MAX_MAX_CONTROL_LINE",
    "MAX_MAX_PAYLOAD",
    "MAX_MAX_PENDING_BYTES",
    "MAX_MAX_REPLAY_BYTES",
    "MAX_MAX_RETAINED_BYTES",
    "MAX_MAX_RETAINED_SUBJECTS",
    "MAX_MAX_SUBJECT_LENGTH",
    "MAX_MAX_SUBJECT_TOKENS",
    "MAX_MONITOR_MAX_CONNECTIONS",
    "MAX_MONITOR_REQUEST_TIMEOUT",
    "MAX_PORT",
    "MAX_SHUTDOWN_GRACE",
    "MAX_WRITE_TIMEOUT",
    "MIN_FRAME_HEADROOM",
    "MIN_MAX_CONTROL_LINE",
    "MIN_MAX_PENDING_BYTES",
    "MIN_MAX_REPLAY_BYTES",
    "MIN_MAX_SUBJECT_LENGTH",
    "SLOW_CONSUMER_POLICIES",
    "AuthConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "LogFormat",
    "MonitoringConfig",
    "NatsConfig",
    "PermissionsConfig",
    "ResponsesConfig",
    "RulesConfig",
    "SlowConsumerPolicy",
    "TlsConfig",
    "UserConfig",
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
#: Memory every replay under way may hold at once, server-wide (see `Config.max_replay_bytes`).
DEFAULT_MAX_REPLAY_BYTES: Final = 64 * MiB
MIN_MAX_REPLAY_BYTES: Final = 64 * KiB
MAX_MAX_REPLAY_BYTES: Final = 16 * GiB

# [slow_consumer]
DEFAULT_SLOW_CONSUMER_POLICY: Final[SlowConsumerPolicy] = "disconnect"

# [timeouts], in seconds
DEFAULT_HANDSHAKE_TIMEOUT: Final = 2.0
MAX_HANDSHAKE_TIMEOUT: Final = 60.0
DEFAULT_WRITE_TIMEOUT: Final = 10.0
DEFAULT_FRAME_TIMEOUT: Final = 10.0
MAX_FRAME_TIMEOUT: Final = 300.0
MAX_WRITE_TIMEOUT: Final = 10.0
DEFAULT_PING_INTERVAL: Final = 120.0
DEFAULT_MAX_PINGS_OUTSTANDING: Final = 2
DEFAULT_SHUTDOWN_GRACE: Final = 5.0
MAX_SHUTDOWN_GRACE: Final = 300.0

# [monitoring]
DEFAULT_MONITOR_HOST: Final = "127.0.0.1"
DEFAULT_MONITOR_PORT: Final = 8222
#: HTTP connections the monitoring endpoint holds at once; more are answered 503 and closed.
DEFAULT_MONITOR_MAX_CONNECTIONS: Final = 16
MAX_MONITOR_MAX_CONNECTIONS: Final = 1024
#: Seconds one monitoring request (reading it, answering it) may take.
DEFAULT_MONITOR_REQUEST_TIMEOUT: Final = 5.0
MAX_MONITOR_REQUEST_TIMEOUT: Final = 60.0
# [nats]
DEFAULT_NATS_HOST: Final = "127.0.0.1"
DEFAULT_NATS_PORT: Final = 4222
#: nats-server's default: the longest control line (CRLF excluded) a NATS client may send.
DEFAULT_MAX_CONTROL_LINE: Final = 4096
MIN_MAX_CONTROL_LINE: Final = 256
MAX_MAX_CONTROL_LINE: Final = 64 * KiB

# [cluster]
DEFAULT_CLUSTER_PREFIX: Final = "broker"
DEFAULT_HEARTBEAT_INTERVAL: Final = 1.0
DEFAULT_NODE_TIMEOUT: Final = 5.0
MAX_NODE_TIMEOUT: Final = 300.0
DEFAULT_CLUSTER_BUFFER: Final = 65_536
#: Node names and prefixes end up in Redis key and channel names: kept short and unambiguous.
_CLUSTER_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# [logging]
DEFAULT_LOG_LEVEL: Final = "info"
DEFAULT_LOG_FORMAT: Final[LogFormat] = "text"
DEFAULT_LOG_PEER_LINES_PER_MINUTE: Final = 60
MAX_LOG_PEER_LINES_PER_MINUTE: Final = 1_000_000


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
    "max_replay_bytes": _Range(MIN_MAX_REPLAY_BYTES, MAX_MAX_REPLAY_BYTES),
    "max_pings_outstanding": _Range(1),
    "log_peer_lines_per_minute": _Range(1, MAX_LOG_PEER_LINES_PER_MINUTE),
}
_FLOAT_RANGES: Final[Mapping[str, _Range]] = {
    "handshake_timeout": _Range(0, MAX_HANDSHAKE_TIMEOUT, low_exclusive=True),
    "write_timeout": _Range(0, MAX_WRITE_TIMEOUT, low_exclusive=True),
    "frame_timeout": _Range(0, MAX_FRAME_TIMEOUT, low_exclusive=True),
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


def _require_bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, {_got(value)}", key=key)
    return value


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
class MonitoringConfig:
    """``[monitoring]``: the HTTP endpoint (/varz, /connz, /subsz, /healthz, /metrics).

    Off by default: it tells whoever reaches it every client's address and name, so it is
    opened only on purpose, and on loopback unless told otherwise.
    """

    enabled: bool = False
    """Serve the endpoint (``broker serve --monitor-port`` turns it on too)."""
    host: str = DEFAULT_MONITOR_HOST
    """Address it listens on; an IP literal or host name."""
    port: int = DEFAULT_MONITOR_PORT
    """TCP port; 0 picks a free one."""
    max_connections: int = DEFAULT_MONITOR_MAX_CONNECTIONS
    """HTTP connections held at once; more are answered 503 and closed."""
    request_timeout: float = DEFAULT_MONITOR_REQUEST_TIMEOUT
    """Seconds a request may take to arrive and be answered, and an idle connection stays."""

    def __post_init__(self) -> None:
        _require_bool("enabled", self.enabled)
        _check_host("host", self.host)
        _require_int_in("port", self.port, _Range(0, MAX_PORT))
        _require_int_in(
            "max_connections", self.max_connections, _Range(1, MAX_MONITOR_MAX_CONNECTIONS)
        )
        seconds = _require_seconds_in(
            "request_timeout",
            self.request_timeout,
            _Range(0, MAX_MONITOR_REQUEST_TIMEOUT, low_exclusive=True),
        )
        object.__setattr__(self, "request_timeout", seconds)


# ---- sections: frozen dataclasses read from TOML tables and written back ----------------------
#
# The reader follows each field's type hint, so a section needs no code of its own to be read:
#   Section             a sub-table, read into that frozen dataclass
#   tuple[Section, ...] an array of tables
#   Section | X         a table is read into Section; any other value goes to __post_init__ as
#                       written, for the section to accept (``allow_responses = true``) or refuse
#   X | None            None only as the default: TOML has no null, so "absent" means "default"
#   anything else       a plain value, passed as written; __post_init__ checks and normalises it
# Errors from a section's __post_init__ name keys from that section down ("allow[0]"); the
# reader puts the path to the section in front ("auth.users[1].permissions.publish.allow[0]").
# A shorthand only the file may use is the field's `_read_toml` metadata.

_S = TypeVar("_S")

_READ: Final = "broker.config.read"


def _read_toml(read: Callable[[Any], object]) -> Mapping[str, object]:
    """Field metadata: how a value as written in TOML becomes what the field takes.

    For shorthands a file may use and Python callers may not, such as one string for a list of
    one (`_one_or_many`) or a list for the ``allow`` key of a table (``_table_of("allow")``).
    """
    return {_READ: read}


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


def _table_of(key: str) -> Callable[[object], object]:
    """A shorthand where a value that is not a table stands for ``{key = value}``."""

    def read(value: object) -> object:
        return value if isinstance(value, Mapping) else {key: value}

    return read


@dataclass(frozen=True, slots=True)
class _Field:
    """What reading, writing and checking need to know about one field of a section."""

    name: str
    required: bool
    """No default, so a table must give it."""
    section: type[Any] | None
    """The section a table here is read into; None for a plain value."""
    array: bool
    """An array of such tables, a tuple of sections in Python."""
    strict: bool
    """Only that shape is allowed; False in a union, where __post_init__ judges other values."""
    optional: bool
    """None is allowed (as the default)."""
    read: Callable[[Any], object] | None


def _is_section(hint: object) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _mentions_section(hint: object) -> bool:
    return _is_section(hint) or any(_mentions_section(arg) for arg in get_args(hint))


def _describe(cls: type[Any], field: dataclasses.Field[Any], hint: Any) -> _Field:
    union = get_origin(hint) in (Union, types.UnionType)
    choices = get_args(hint) if union else (hint,)
    alternatives = [choice for choice in choices if choice is not type(None)]
    structured = [choice for choice in alternatives if _mentions_section(choice)]
    shape = structured[0] if len(structured) == 1 else None
    array = get_origin(shape) is tuple
    section = get_args(shape)[0] if array else shape
    if structured and (
        shape is None or not _is_section(section) or (array and get_args(shape)[1:] != (...,))
    ):
        raise TypeError(
            f"{cls.__name__}.{field.name}: TOML cannot read {hint}; a section's field may hold"
            " a section, a tuple[section, ...], or a union with one of them"
        )
    return _Field(
        name=field.name,
        required=field.default is dataclasses.MISSING
        and field.default_factory is dataclasses.MISSING,
        section=section,
        array=array,
        strict=len(alternatives) == 1,
        optional=len(alternatives) < len(choices),
        read=field.metadata.get(_READ),
    )


# Filled once per class: resolving type hints (strings, under `from __future__ import
# annotations`) is too slow to repeat on every construction.
_FIELDS: Final[dict[type[Any], Mapping[str, _Field]]] = {}


def _fields(cls: type[Any]) -> Mapping[str, _Field]:
    """The fields of the section `cls` a TOML table may set, in declaration order."""
    known = _FIELDS.get(cls)
    if known is None:
        hints = get_type_hints(cls)
        fields = (field for field in dataclasses.fields(cls) if field.init)
        known = _FIELDS[cls] = {
            field.name: _describe(cls, field, hints[field.name]) for field in fields
        }
    return known


def _check_nested(section: object) -> None:
    """Refuse a sub-section of the wrong type, and store an array of them as a tuple.

    The TOML reader always builds the right types; this is for Python callers, including
    `dataclasses.replace`, who could otherwise slip a dict in where a section belongs. A union's
    other values are left to the section's own __post_init__, which knows its rule.
    """
    for field in _fields(type(section)).values():
        cls, value = field.section, getattr(section, field.name)
        if cls is None or (value is None and field.optional):
            continue
        if not field.array:
            if field.strict and not isinstance(value, cls):
                kind = f"a {cls.__name__}" + (" or None" if field.optional else "")
                raise ConfigError(f"must be {kind}, {_got(value)}", key=field.name)
            continue
        if not isinstance(value, tuple | list):
            if field.strict:
                problem = f"must be a tuple of {cls.__name__}, {_got(value)}"
                raise ConfigError(problem, key=field.name)
            continue
        for index, item in enumerate(value):
            if not isinstance(item, cls):
                problem = f"must be a {cls.__name__}, {_got(item)}"
                raise ConfigError(problem, key=f"{field.name}[{index}]")
        object.__setattr__(section, field.name, tuple(value))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _unknown(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"is not a known {kind}{hint}; known: {', '.join(known)}"


def _table(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"must be a table of keys, {_got(value)}", key=path)
    return value


def _section_from_mapping(cls: type[_S], table: Mapping[str, Any], path: str) -> _S:
    """Read the TOML table at `path` (``"auth.users[1]"``) into the section `cls`.

    Raises:
        ConfigError: An unknown or missing key, or a value the section refuses; the key is the
            full path from the top of the file.
    """
    fields = _fields(cls)
    values: dict[str, object] = {}
    for key, value in table.items():
        field = fields.get(key)
        if field is None:
            # "[auth.default_permissions]" is how the file heads that table; an array's item
            # has no header of its own, so it is named by its path.
            where = path if "[" in path else f"[{path}]"
            problem = _unknown(f"key in {where}", key, list(fields))
            raise ConfigError(problem, key=_join(path, key))
        values[key] = _read_value(field, value, _join(path, key))
    for name, field in fields.items():
        if field.required and name not in values:
            raise ConfigError("is required and has no default", key=_join(path, name))
    try:
        return cls(**values)
    except ConfigError as exc:
        key = path if exc.key is None else _join(path, exc.key)
        raise ConfigError(exc.problem, key=key, source=exc.source) from None


def _read_value(field: _Field, value: object, path: str) -> object:
    if field.read is not None:
        value = field.read(value)
    cls = field.section
    if cls is None:
        return value
    if field.array:
        if isinstance(value, list):
            paths = [f"{path}[{index}]" for index in range(len(value))]
            return tuple(
                _section_from_mapping(cls, _table(item, where), where)
                for item, where in zip(value, paths, strict=True)
            )
        if field.strict:
            raise ConfigError(f"must be an array of tables, {_got(value)}", key=path)
    elif isinstance(value, Mapping) or field.strict:
        return _section_from_mapping(cls, _table(value, path), path)
    return value


def _to_toml(value: object) -> Any:
    """A section as a table, a tuple as an array, anything else as it is; None is left out."""
    if _is_section(type(value)):
        items = ((name, getattr(value, name)) for name in _fields(type(value)))
        return {name: _to_toml(item) for name, item in items if item is not None}
    if isinstance(value, tuple):
        return [_to_toml(item) for item in value]
    return value


# A root section (Config) may also lay its own plain fields out in sections for the reader's
# sake: {section: {key in the file: field}}.
_FlatLayout = Mapping[str, Mapping[str, str]]


def _root_sections(root: type[Any], flat: _FlatLayout) -> dict[str, type[Any]]:
    """The fields of `root` that are TOML sections of their own, by name: ``[tls]``."""
    sections: dict[str, type[Any]] = {}
    for name, field in _fields(root).items():
        if field.section is None:
            continue
        if field.array or not field.strict or field.read is not None or name in flat:
            raise TypeError(
                f"{root.__name__}.{name}: a top-level section must be a plain section"
                " (optionally None) whose name no flat section uses"
            )
        sections[name] = field.section
    return sections


def _root_from_mapping(
    root: type[_S], flat: _FlatLayout, data: Mapping[str, Any], *, source: str
) -> _S:
    """Read a whole parsed file into `root`: its flat sections, then its nested ones."""
    fields = _fields(root)
    sections = _root_sections(root, flat)
    values: dict[str, object] = {}
    try:
        for name, table in data.items():
            keys = flat.get(name)
            if keys is None and name not in sections:
                if not _is_table(table):
                    raise ConfigError(_outside_sections(name, table, flat, sections), key=name)
                raise ConfigError(_unknown("section", name, [*flat, *sections]), key=f"[{name}]")
            table = _table(table, f"[{name}]")
            if keys is None:
                values[name] = _section_from_mapping(sections[name], table, name)
                continue
            for key, value in table.items():
                field = keys.get(key)
                if field is None:
                    problem = _unknown(f"key in [{name}]", key, list(keys))
                    raise ConfigError(problem, key=f"{name}.{key}")
                values[field] = _read_value(fields[field], value, f"{name}.{key}")
        for name in sections:
            if fields[name].required and name not in values:
                raise ConfigError("is a required section and has no default", key=f"[{name}]")
        try:
            return root(**values)
        except ConfigError as exc:
            raise ConfigError(exc.problem, key=_flat_key(flat, exc.key)) from None
    except ConfigError as exc:
        raise exc.relocated(source=source) from None


def _is_table(value: object) -> bool:
    """A ``[table]``, or an ``[[array of tables]]``: what a section looks like at the top."""
    if isinstance(value, list):
        return bool(value) and all(isinstance(item, Mapping) for item in value)
    return isinstance(value, Mapping)


#: Longest value `_written` repeats in an error; a longer one is elided.
_MAX_WRITTEN: Final = 60


def _written(name: str, value: object) -> str:
    """``name = value`` in TOML, to show where a key written at the top level belongs."""

    def toml(item: object) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int | float):
            return repr(item)  # inf and nan are spelt the same in TOML
        if isinstance(item, list):
            return "[" + ", ".join(toml(element) for element in item) + "]"
        if isinstance(item, str):
            return json.dumps(item, ensure_ascii=False)  # its escapes are TOML's too
        return str(item)  # dates and times

    text = toml(value)
    return f"{name} = {text if len(text) <= _MAX_WRITTEN else '...'}"


def _outside_sections(
    name: str, value: object, flat: _FlatLayout, sections: Mapping[str, type[Any]]
) -> str:
    """Why the key `name`, written above every section header, is refused, and where it goes.

    TOML puts keys written before the first header at the top level, where the file has only
    sections; ``port = 6001`` there is almost always meant for ``[server]``.
    """
    keys = {section: list(names) for section, names in flat.items()}
    keys.update((section, list(_fields(cls))) for section, cls in sections.items())
    holders = [f"[{section}]" for section, names in keys.items() if name in names]
    if holders:
        where = holders[0] if len(holders) == 1 else f"{', '.join(holders[:-1])} or {holders[-1]}"
        return (
            "must be inside a section, not at the top of the file:"
            f" put {_written(name, value)} under {where}"
        )
    pairs = [(section, key) for section, names in keys.items() for key in names]
    close = difflib.get_close_matches(name, [key for _, key in pairs], n=1)
    hint = ""
    if close:
        section = next(section for section, key in pairs if key == close[0])
        hint = f" (did you mean {close[0]!r} in [{section}]?)"
    return (
        f"is not a key of any section{hint}; every key belongs inside one of the sections"
        f" {', '.join(f'[{section}]' for section in keys)}"
    )


def _flat_key(flat: _FlatLayout, key: str | None) -> str | None:
    # "hosts[1]" from Config becomes "server.hosts[1]" in the file; a nested section's key is
    # already its path in the file.
    if key is None:
        return None
    field, bracket, rest = key.partition("[")
    for section, keys in flat.items():
        for name, target in keys.items():
            if target == field:
                return f"{section}.{name}{bracket}{rest}"
    return key


def _root_to_mapping(root: object, flat: _FlatLayout) -> dict[str, dict[str, Any]]:
    """Lay `root` out as `_root_from_mapping` reads it; None (TOML has no null) is left out."""
    layout: dict[str, dict[str, Any]] = {}
    for section, keys in flat.items():
        values = ((key, getattr(root, field)) for key, field in keys.items())
        layout[section] = {key: _to_toml(value) for key, value in values if value is not None}
    for name in _root_sections(type(root), flat):
        value = getattr(root, name)
        if value is not None:
            layout[name] = _to_toml(value)
    return layout


# ---- [auth] and [tls] ---------------------------------------------------------------------


def _require_patterns(key: str, value: object) -> tuple[str, ...]:
    """A list of subject patterns, each checked by the routing table's own rule."""
    if not isinstance(value, tuple | list):
        raise ConfigError(f"must be a list of subject patterns, {_got(value)}", key=key)
    for index, pattern in enumerate(value):
        try:
            validate_pattern(pattern, max_length=MAX_MAX_SUBJECT_LENGTH)
        except SubjectError as error:
            raise ConfigError(
                f"must be a subject pattern: {error}", key=f"{key}[{index}]"
            ) from None
    return tuple(value)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RulesConfig:
    """Allow and deny patterns for one operation (publish or subscribe).

    An empty `allow` allows every subject (``$SYS`` aside, see `broker.permissions`); `deny`
    wins over `allow`. In the file a plain list (``publish = ["a.>"]``) is the allow list.
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow", _require_patterns("allow", self.allow))
        object.__setattr__(self, "deny", _require_patterns("deny", self.deny))


#: Longest `allow_responses.expires`, in seconds: a day.
MAX_RESPONSE_EXPIRES: Final = 86_400.0


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ResponsesConfig:
    """How often, and for how long, a client may answer a request it received.

    ``max`` replies per request; ``expires`` seconds after the request arrived (0: no limit in
    time; the number of requests remembered per connection is bounded anyway).
    """

    max: int = 1
    expires: float = 0.0

    def __post_init__(self) -> None:
        _require_int_in("max", self.max, _Range(1, 1_000_000))
        seconds = _require_seconds_in("expires", self.expires, _Range(0, MAX_RESPONSE_EXPIRES))
        object.__setattr__(self, "expires", seconds)


# In the file a plain list of patterns is the allow list; in Python, RulesConfig(allow=...) is.
_ALLOW_LIST: Final = _read_toml(_table_of("allow"))


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PermissionsConfig:
    """What one user (or every client without its own) may publish and subscribe to.

    ``allow_responses``: true (one reply per request received, no time limit), false, or a
    `ResponsesConfig`; replies so allowed need no publish permission.
    """

    publish: RulesConfig = dataclasses.field(default=RulesConfig(), metadata=_ALLOW_LIST)
    subscribe: RulesConfig = dataclasses.field(default=RulesConfig(), metadata=_ALLOW_LIST)
    allow_responses: bool | ResponsesConfig = False

    def __post_init__(self) -> None:
        _check_nested(self)
        if not isinstance(self.allow_responses, bool | ResponsesConfig):
            problem = (
                f"must be true, false or a table of max and expires, {_got(self.allow_responses)}"
            )
            raise ConfigError(problem, key="allow_responses")

    @property
    def responses(self) -> ResponsesConfig | None:
        """`allow_responses` as limits (true is the defaults), or None when off."""
        value = self.allow_responses
        if value is True:
            return ResponsesConfig()
        return value or None


_BCRYPT_HASH: Final = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")


def _check_secret(key: str, value: object) -> None:
    """A password or token: non-empty text; if it starts as a bcrypt hash, a whole one."""
    text = _require_str(key, value)
    if not text:
        raise ConfigError("must not be empty", key=key)
    if text.startswith("$2") and not _BCRYPT_HASH.fullmatch(text):
        raise ConfigError(
            "looks like a bcrypt hash but is not a whole one ($2b$, two digits of cost, $, 53"
            " characters); make one with `broker passwd`",
            key=key,
        )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class UserConfig:
    """One user: its name, its password (a bcrypt hash, or plain text), its permissions.

    With no password the user can only be reached through a TLS client certificate whose
    subject CN or a SAN equals `user` (``[tls] verify = true``).
    """

    user: str
    password: str | None = None
    permissions: PermissionsConfig | None = None

    def __post_init__(self) -> None:
        _check_nested(self)
        if not _require_str("user", self.user):
            raise ConfigError("must not be empty", key="user")
        if self.password is not None:
            _check_secret("password", self.password)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    """``[auth]``: who may connect, and what each may do. Absent, the broker is open.

    Attributes:
        token: A shared token (plain text or a bcrypt hash); clients presenting it get
            `default_permissions`.
        users: Named users, each with a password and optionally its own permissions.
        default_permissions: For users without their own, and for token clients.
    """

    token: str | None = None
    users: tuple[UserConfig, ...] = ()
    default_permissions: PermissionsConfig = PermissionsConfig()

    def __post_init__(self) -> None:
        _check_nested(self)
        if self.token is not None:
            _check_secret("token", self.token)
        names = [user.user for user in self.users]
        for index, name in enumerate(names):
            if name in names[:index]:
                problem = f"must not repeat a user name, got {name!r} again"
                raise ConfigError(problem, key=f"users[{index}].user")
        if self.token is None and not self.users:
            raise ConfigError(
                "must set a token or at least one [[auth.users]]; leave [auth] out for an"
                " open broker"
            )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """``[tls]``: the native listener speaks only TLS. Paths are relative to the working
    directory of ``broker serve``.

    Attributes:
        cert_file: The server's certificate chain (PEM).
        key_file: Its private key (PEM).
        ca_file: CA certificates to verify client certificates against, or None.
        verify: Require every client to present a certificate signed by `ca_file`.
    """

    cert_file: str
    key_file: str
    ca_file: str | None = None
    verify: bool = False

    def __post_init__(self) -> None:
        for key in ("cert_file", "key_file"):
            if not _require_str(key, getattr(self, key)):
                raise ConfigError("must name a PEM file", key=key)
        if self.ca_file is not None and not _require_str("ca_file", self.ca_file):
            raise ConfigError("must name a PEM file", key="ca_file")
        if _require_bool("verify", self.verify) and self.ca_file is None:
            raise ConfigError(
                "= true needs ca_file, the CA that signs client certificates", key="verify"
            )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class NatsConfig:
    """``[nats]``: a second listener speaking the NATS client protocol on the same hub.

    Off unless asked for; its clients share every limit, timeout and counter of `Config`
    with the native listener. See docs/nats.md.
    """

    enabled: bool = False
    """Whether to open the NATS listener."""
    host: str = DEFAULT_NATS_HOST
    """The address it listens on (an IP literal or host name)."""
    port: int = DEFAULT_NATS_PORT
    """Its TCP port (4222 is NATS's); 0 picks a free one."""
    max_control_line: int = DEFAULT_MAX_CONTROL_LINE
    """Longest control line (PUB, SUB, CONNECT...) a client may send, CRLF excluded."""

    def __post_init__(self) -> None:
        _require_bool("enabled", self.enabled)
        _check_host("host", self.host)
        _require_int_in("port", self.port, _Range(0, MAX_PORT))
        _require_int_in(
            "max_control_line",
            self.max_control_line,
            _Range(MIN_MAX_CONTROL_LINE, MAX_MAX_CONTROL_LINE),
        )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    """``[cluster]``: join the nodes that share a Redis and a prefix into one broker.

    See docs/cluster.md for the Redis keys and channels and what each setting bounds.
    """

    redis_url: str
    """Where the cluster's Redis is, e.g. ``redis://127.0.0.1:6379/0``."""
    name: str = ""
    """This node's name, unique in the cluster; "" generates one at start."""
    prefix: str = DEFAULT_CLUSTER_PREFIX
    """Starts every Redis key and channel, so several clusters can share one Redis."""
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    """Seconds between a node's heartbeats (each also checks which nodes are alive)."""
    node_timeout: float = DEFAULT_NODE_TIMEOUT
    """Seconds without a heartbeat after which a node, and its interest, count as gone."""
    inbound_buffer: int = DEFAULT_CLUSTER_BUFFER
    """Batches from Redis waiting to be routed here; past it they are dropped and counted."""
    outbound_buffer: int = DEFAULT_CLUSTER_BUFFER
    """Messages waiting to go to Redis; past it (or while Redis is away) dropped and counted."""

    def __post_init__(self) -> None:
        url = _require_str("redis_url", self.redis_url)
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                f"must be a redis://, rediss:// or unix:// URL, got {url!r}", key="redis_url"
            )
        for key in ("name", "prefix"):
            value = _require_str(key, getattr(self, key))
            if (value or key == "prefix") and not _CLUSTER_NAME.fullmatch(value):
                raise ConfigError(
                    "must be 1 to 64 letters, digits, '_', '.' or '-', got " + repr(value),
                    key=key,
                )
        beat = _require_seconds_in(
            "heartbeat_interval", self.heartbeat_interval, _Range(0, 60, low_exclusive=True)
        )
        timeout = _require_seconds_in(
            "node_timeout", self.node_timeout, _Range(0, MAX_NODE_TIMEOUT, low_exclusive=True)
        )
        if timeout < 2 * beat:
            raise ConfigError(
                f"must be at least twice heartbeat_interval ({_number(2 * beat)}) so one late"
                f" heartbeat does not drop a live node, got {_number(timeout)}",
                key="node_timeout",
            )
        object.__setattr__(self, "heartbeat_interval", beat)
        object.__setattr__(self, "node_timeout", timeout)
        _require_int_in("inbound_buffer", self.inbound_buffer, _Range(1))
        _require_int_in("outbound_buffer", self.outbound_buffer, _Range(1))


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything the broker can be told at start-up, with defaults that are safe on loopback.

    Flat on purpose: the server and sessions read ``config.max_payload`` rather than walking
    sections; the TOML file groups these keys into sections only for the reader's sake (see
    `config_from_mapping` for the mapping). A section added later is one field holding its own
    frozen dataclass (see the module's docstring). Every field is validated on construction,
    including through `dataclasses.replace`, so a `Config` that exists is a valid one. Normalises
    as it validates: a list of hosts becomes a tuple, integer seconds become floats, and
    ``log_level`` is stored in lower case.

    Raises:
        ConfigError: A field has the wrong type or breaks its rule; the message names the field,
            the rule and the value.
    """

    hosts: tuple[str, ...] = dataclasses.field(
        default=DEFAULT_HOSTS, metadata=_read_toml(_one_or_many)
    )
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
    max_replay_bytes: int = DEFAULT_MAX_REPLAY_BYTES
    """Memory all replays under way may hold at once, server-wide: each replay's references to
    the store and the chunk being written. A replay past it waits for room; the SUB that asked
    for it, and that client's later frames, wait with it."""

    slow_consumer_policy: SlowConsumerPolicy = DEFAULT_SLOW_CONSUMER_POLICY
    """What to do when a client's outbox is full: disconnect it, or drop its oldest or newest."""

    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    """Seconds a new connection has to complete the handshake."""
    write_timeout: float = DEFAULT_WRITE_TIMEOUT
    """Seconds one write to a client may take before the client is treated as slow and closed."""
    frame_timeout: float = DEFAULT_FRAME_TIMEOUT
    """Seconds a frame a client has begun may take to arrive whole before the client is closed."""
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
    log_peer_lines_per_minute: int = DEFAULT_LOG_PEER_LINES_PER_MINUTE
    """Lines one client host may cause in the log per minute (in bursts up to as many); the next
    line after a pause says how many were suppressed."""

    auth: AuthConfig | None = None
    """``[auth]``: users, tokens and permissions; None (no section) is an open broker."""
    tls: TlsConfig | None = None
    """``[tls]``: the native listener's certificate; None serves plain TCP."""
    monitoring: MonitoringConfig = MonitoringConfig()
    """The HTTP monitoring endpoint, ``[monitoring]``; off unless enabled."""
    nats: NatsConfig = dataclasses.field(default_factory=NatsConfig)
    """``[nats]``: the NATS-protocol listener (`NatsConfig`)."""
    cluster: ClusterConfig | None = None
    """``[cluster]``: the Redis that joins this node to others; None runs it alone."""

    def __post_init__(self) -> None:
        _check_nested(self)
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
    "retained": {
        "max_subjects": "max_retained_subjects",
        "max_bytes": "max_retained_bytes",
        "max_replay_bytes": "max_replay_bytes",
    },
    "timeouts": {
        name: name
        for name in (
            "handshake_timeout",
            "write_timeout",
            "frame_timeout",
            "ping_interval",
            "max_pings_outstanding",
            "shutdown_grace",
        )
    },
    "logging": {
        "level": "log_level",
        "format": "log_format",
        "peer_lines_per_minute": "log_peer_lines_per_minute",
    },
}


def config_from_mapping(data: Mapping[str, Any], *, source: str = "<config>") -> Config:
    """Build a `Config` from parsed TOML laid out in sections.

    Why sections are checked key by key: a misspelt key (``max_paylaod``) would otherwise be
    silently ignored and the default used, which is the worst kind of config bug. So unknown
    sections and keys are refused, with the nearest known name as a hint, at every depth. A key
    written above every section header (``port = 6001``) is refused with the section that holds
    a key of that name (``[server]``). Keys left out take their defaults. ``server.hosts`` may
    be one string or an array of strings.

    Args:
        data: The parsed document, e.g. from `tomllib.load`.
        source: Where it came from, to start every error message with (usually the file name).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: Unknown section or key, wrong type or value out of range; the message names
            `source`, the key's full path (``section.key``, ``auth.users[1].password``), the rule
            and the value.

    Example:
        >>> config_from_mapping({"server": {"port": 0}}).port
        0
    """
    return _root_from_mapping(Config, _SECTIONS, data, source=source)


def config_to_mapping(config: Config) -> dict[str, dict[str, Any]]:
    """Lay a `Config` out in TOML sections, the inverse of `config_from_mapping`.

    Values are TOML's types (hosts as a list, a section as a table). ``limits.max_frame``, like
    an optional section, is left out when it is None, since TOML has no null and leaving it out
    is how a file says "use the default".
    """
    return _root_to_mapping(config, _SECTIONS)


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
