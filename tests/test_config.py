"""Tests for broker.config: defaults, every rule at its edge, and the TOML layout and errors."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broker.config import (
    DEFAULT_FRAME_HEADROOM,
    DEFAULT_MAX_PAYLOAD,
    MIN_FRAME_HEADROOM,
    Config,
    ConfigError,
    MonitoringConfig,
    NatsConfig,
    _check_nested,
    _got,
    _Range,
    _read_toml,
    _require_bool,
    _require_int_in,
    _require_seconds_in,
    _require_str,
    _root_from_mapping,
    _root_to_mapping,
    _section_from_mapping,
    _table_of,
    config_from_mapping,
    config_to_mapping,
    load_config,
)

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "broker.toml"
SOURCE = "conf/test.toml"
MiB = 1024 * 1024
TINY = math.nextafter(0.0, 1.0)

# The file layout, written out rather than imported, so that moving a key is a visible change.
TOML_KEY = {
    "hosts": "server.hosts",
    "port": "server.port",
    "max_connections": "limits.max_connections",
    "max_payload": "limits.max_payload",
    "max_frame": "limits.max_frame",
    "max_subscriptions": "limits.max_subscriptions",
    "max_subject_length": "limits.max_subject_length",
    "max_subject_tokens": "limits.max_subject_tokens",
    "max_pending_messages": "limits.max_pending_messages",
    "max_pending_bytes": "limits.max_pending_bytes",
    "slow_consumer_policy": "slow_consumer.policy",
    "max_retained_subjects": "retained.max_subjects",
    "max_retained_bytes": "retained.max_bytes",
    "max_replay_bytes": "retained.max_replay_bytes",
    "log_peer_lines_per_minute": "logging.peer_lines_per_minute",
    "handshake_timeout": "timeouts.handshake_timeout",
    "write_timeout": "timeouts.write_timeout",
    "frame_timeout": "timeouts.frame_timeout",
    "ping_interval": "timeouts.ping_interval",
    "max_pings_outstanding": "timeouts.max_pings_outstanding",
    "shutdown_grace": "timeouts.shutdown_grace",
    "log_level": "logging.level",
    "log_format": "logging.format",
}


def from_toml(field: str, value: object) -> Config:
    section, key = TOML_KEY[field].split(".")
    return config_from_mapping({section: {key: value}}, source=SOURCE)


def refused(field: str, value: Any) -> tuple[str, str]:
    """Refuse `value` for `field` both directly and through a TOML mapping; return both messages."""
    with pytest.raises(ConfigError) as direct:
        Config(**{field: value})
    with pytest.raises(ConfigError) as via_toml:
        from_toml(field, value)
    return str(direct.value), str(via_toml.value)


# ---- the shipped file and the layout ---------------------------------------------------------


#: The shipped file is the defaults but for two listeners it turns on: monitoring on loopback
#: (docs/monitoring.md) and NATS (docs/nats.md).
SHIPPED_CONFIG = Config(monitoring=MonitoringConfig(enabled=True), nats=NatsConfig(enabled=True))


def test_shipped_file_is_the_defaults() -> None:
    assert load_config(SHIPPED) == SHIPPED_CONFIG
    assert (
        dataclasses.replace(SHIPPED_CONFIG, monitoring=MonitoringConfig(), nats=NatsConfig())
        == Config()
    )


def test_shipped_file_spells_out_every_key() -> None:
    with SHIPPED.open("rb") as file:
        assert tomllib.load(file) == config_to_mapping(SHIPPED_CONFIG)
    # TOML has no null, so max_frame is shown commented out, with its effective default.
    (line,) = [ln for ln in SHIPPED.read_text().splitlines() if ln.startswith("# max_frame =")]
    assert tomllib.loads(line.removeprefix("# "))["max_frame"] == Config().frame_limit


#: Config fields that are sections of their own, each its own TOML table ([auth] and [tls]
#: are tested in test_security_config.py).
SECTIONS = {"auth", "tls", "monitoring", "nats", "cluster"}


def test_every_field_has_exactly_one_toml_key() -> None:
    flat = [f.name for f in dataclasses.fields(Config) if f.name not in SECTIONS]
    assert sorted(TOML_KEY) == sorted(flat)
    layout = config_to_mapping(Config(max_frame=2 * MiB))
    keys = [f"{s}.{k}" for s, table in layout.items() if s not in SECTIONS for k in table]
    assert sorted(keys) == sorted(TOML_KEY.values())


def test_mapping_round_trip() -> None:
    config = Config(
        hosts=("::", "0.0.0.0"),
        port=0,
        max_connections=5,
        max_payload=1000,
        max_frame=5000,
        max_subscriptions=6,
        max_subject_length=17,
        max_subject_tokens=3,
        max_pending_messages=8,
        max_pending_bytes=4096,
        slow_consumer_policy="drop_oldest",
        max_retained_subjects=0,
        max_retained_bytes=10,
        handshake_timeout=0.5,
        write_timeout=1.5,
        ping_interval=3.0,
        max_pings_outstanding=4,
        shutdown_grace=0.0,
        log_level="debug",
        log_format="json",
    )
    assert config_from_mapping(config_to_mapping(config)) == config


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


# ---- every numeric rule at its edge -----------------------------------------------------------

# field, accepted exactly at the limit, refused one past it, the rule the message states.
EDGES: list[tuple[str, Any, Any, str]] = [
    ("port", 0, -1, "must be between 0 and 65535"),
    ("port", 65535, 65536, "must be between 0 and 65535"),
    ("max_connections", 1, 0, "must be >= 1"),
    ("max_payload", 1, 0, "must be between 1 and 67108864"),
    ("max_payload", 64 * MiB, 64 * MiB + 1, "must be between 1 and 67108864"),
    ("max_subscriptions", 1, 0, "must be >= 1"),
    ("max_subject_length", 16, 15, "must be between 16 and 65536"),
    ("max_subject_length", 65536, 65537, "must be between 16 and 65536"),
    ("max_subject_tokens", 1, 0, "must be between 1 and 1024"),
    ("max_subject_tokens", 1024, 1025, "must be between 1 and 1024"),
    ("max_pending_messages", 1, 0, "must be >= 1"),
    ("max_pending_bytes", 1024, 1023, "must be between 1024 and 1073741824"),
    ("max_pending_bytes", 1024 * MiB, 1024 * MiB + 1, "must be between 1024 and 1073741824"),
    ("max_retained_subjects", 0, -1, "must be between 0 and 10000000"),
    ("max_retained_subjects", 10**7, 10**7 + 1, "must be between 0 and 10000000"),
    ("max_retained_bytes", 0, -1, "must be between 0 and 17179869184"),
    (
        "max_retained_bytes",
        16 * 1024 * MiB,
        16 * 1024 * MiB + 1,
        "must be between 0 and 17179869184",
    ),
    ("max_replay_bytes", 64 * 1024, 64 * 1024 - 1, "must be between 65536 and 17179869184"),
    (
        "max_replay_bytes",
        16 * 1024 * MiB,
        16 * 1024 * MiB + 1,
        "must be between 65536 and 17179869184",
    ),
    ("log_peer_lines_per_minute", 1, 0, "must be between 1 and 1000000"),
    ("log_peer_lines_per_minute", 10**6, 10**6 + 1, "must be between 1 and 1000000"),
    ("handshake_timeout", TINY, 0.0, "must be > 0 and <= 60"),
    ("handshake_timeout", 60.0, math.nextafter(60.0, math.inf), "must be > 0 and <= 60"),
    ("write_timeout", TINY, 0.0, "must be > 0 and <= 10"),
    ("write_timeout", 10.0, math.nextafter(10.0, math.inf), "must be > 0 and <= 10"),
    ("ping_interval", TINY, 0.0, "must be > 0"),
    ("max_pings_outstanding", 1, 0, "must be >= 1"),
    ("shutdown_grace", 0.0, -TINY, "must be between 0 and 300"),
    ("shutdown_grace", 300.0, math.nextafter(300.0, math.inf), "must be between 0 and 300"),
]


@pytest.mark.parametrize(("field", "at_limit", "past", "rule"), EDGES)
def test_limit_edges(field: str, at_limit: Any, past: Any, rule: str) -> None:
    assert getattr(Config(**{field: at_limit}), field) == at_limit
    assert getattr(from_toml(field, at_limit), field) == at_limit
    direct, via_toml = refused(field, past)
    assert direct.startswith(f"{field} {rule}, got ")
    assert via_toml.startswith(f"{SOURCE}: {TOML_KEY[field]} {rule}, got ")


def test_message_states_rule_and_value_exactly() -> None:
    assert refused("max_payload", 0)[1] == (
        f"{SOURCE}: limits.max_payload must be between 1 and 67108864, got 0"
    )
    assert refused("write_timeout", 10.5)[0] == "write_timeout must be > 0 and <= 10, got 10.5"


@pytest.mark.parametrize("field", ["handshake_timeout", "write_timeout", "ping_interval"])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_seconds_must_be_finite(field: str, value: float) -> None:
    for message in refused(field, value):
        assert f"{field} must be a finite number of seconds, got {value!r}" in message


# ---- max_frame and frame_limit --------------------------------------------------------------


def test_frame_limit_default_follows_max_payload() -> None:
    assert Config().frame_limit == DEFAULT_MAX_PAYLOAD + DEFAULT_FRAME_HEADROOM == 1_114_112
    assert Config(max_payload=100).frame_limit == 100 + DEFAULT_FRAME_HEADROOM


def test_frame_limit_explicit() -> None:
    assert Config(max_frame=3 * MiB).frame_limit == 3 * MiB


@pytest.mark.parametrize("max_payload", [1, DEFAULT_MAX_PAYLOAD, 64 * MiB])
def test_max_frame_edge(max_payload: int) -> None:
    least = max_payload + MIN_FRAME_HEADROOM
    assert Config(max_payload=max_payload, max_frame=least).frame_limit == least
    with pytest.raises(ConfigError) as info:
        Config(max_payload=max_payload, max_frame=least - 1)
    assert str(info.value).startswith(f"max_frame must be >= max_payload + 1024 ({least})")
    assert str(info.value).endswith(f"got {least - 1}")
    with pytest.raises(ConfigError, match=rf"^{SOURCE}: limits\.max_frame must be >= max_payload"):
        config_from_mapping(
            {"limits": {"max_payload": max_payload, "max_frame": least - 1}}, source=SOURCE
        )


# ---- types ----------------------------------------------------------------------------------

INT_FIELDS = [
    "port",
    "max_connections",
    "max_payload",
    "max_frame",
    "max_subscriptions",
    "max_subject_length",
    "max_subject_tokens",
    "max_pending_messages",
    "max_pending_bytes",
    "max_pings_outstanding",
]
FLOAT_FIELDS = ["handshake_timeout", "write_timeout", "ping_interval", "shutdown_grace"]
STRING_FIELDS = ["slow_consumer_policy", "log_level", "log_format"]


@pytest.mark.parametrize("field", INT_FIELDS)
@pytest.mark.parametrize("value", [True, False, "100", 1.0, [1]])
def test_int_fields_refuse_other_types(field: str, value: object) -> None:
    direct, via_toml = refused(field, value)
    got = f"got {type(value).__name__} {value!r}"
    assert direct == f"{field} must be an integer, {got}"
    assert via_toml == f"{SOURCE}: {TOML_KEY[field]} must be an integer, {got}"


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [True, "1.0", None])
def test_float_fields_refuse_other_types(field: str, value: object) -> None:
    direct, _ = refused(field, value)
    assert direct == f"{field} must be a number of seconds, got {type(value).__name__} {value!r}"


@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_float_fields_accept_ints_and_store_floats(field: str) -> None:
    one: dict[str, Any] = {field: 1}
    for config in (Config(**one), from_toml(field, 1)):
        value = getattr(config, field)
        assert value == 1.0
        assert type(value) is float


@pytest.mark.parametrize("field", STRING_FIELDS)
def test_string_fields_refuse_other_types(field: str) -> None:
    direct, via_toml = refused(field, 1)
    assert direct == f"{field} must be a string, got int 1"
    assert via_toml == f"{SOURCE}: {TOML_KEY[field]} must be a string, got int 1"


# ---- choices ---------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["disconnect", "drop_oldest", "drop_newest"])
def test_slow_consumer_policies(policy: str) -> None:
    assert from_toml("slow_consumer_policy", policy).slow_consumer_policy == policy


def test_unknown_slow_consumer_policy() -> None:
    assert refused("slow_consumer_policy", "drop")[1] == (
        f"{SOURCE}: slow_consumer.policy must be one of 'disconnect', 'drop_oldest',"
        " 'drop_newest', got 'drop'"
    )


@pytest.mark.parametrize("level", ["debug", "INFO", "Warning", "error", "CRITICAL"])
def test_log_level_any_case_stored_lower(level: str) -> None:
    assert Config(log_level=level).log_level == level.lower()
    assert from_toml("log_level", level).log_level == level.lower()


def test_unknown_log_level() -> None:
    assert refused("log_level", "LOUD")[1] == (
        f"{SOURCE}: logging.level must be one of debug, info, warning, error, critical"
        " (any case), got 'LOUD'"
    )


def test_log_format() -> None:
    assert from_toml("log_format", "json").log_format == "json"
    assert refused("log_format", "JSON")[1] == (
        f"{SOURCE}: logging.format must be one of 'text', 'json', got 'JSON'"
    )


# ---- hosts -----------------------------------------------------------------------------------


def test_hosts_string_or_array_in_toml() -> None:
    assert from_toml("hosts", "::1").hosts == ("::1",)
    assert from_toml("hosts", ["::", "0.0.0.0"]).hosts == ("::", "0.0.0.0")


def test_hosts_list_becomes_tuple() -> None:
    assert Config(hosts=["127.0.0.1", "localhost"]).hosts == ("127.0.0.1", "localhost")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "host",
    ["::", "0.0.0.0", "127.0.0.1", "::1", "fe80::1%eth0", "localhost", "example.com.", "my_host-1"],
)
def test_hosts_accepted(host: str) -> None:
    assert Config(hosts=(host,)).hosts == (host,)


@pytest.mark.parametrize("host", ["", "a b", "127.0.0.1:5878", "[::1]", "-bad", "a..b", "x" * 64])
def test_hosts_refused(host: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_toml("hosts", ["::1", host])
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: server.hosts[1] must be an IP address")
    assert message.endswith(f"got {host!r}")


def test_hosts_must_not_be_empty() -> None:
    assert refused("hosts", [])[1] == (
        f"{SOURCE}: server.hosts must name at least one host to listen on, got none"
    )


def test_hosts_must_be_strings() -> None:
    assert (
        refused("hosts", ["::1", 5])[1] == f"{SOURCE}: server.hosts[1] must be a string, got int 5"
    )
    assert refused("hosts", 5)[1] == (
        f"{SOURCE}: server.hosts must be a list of host names or IP addresses, got int 5"
    )


def test_hosts_must_not_repeat() -> None:
    assert refused("hosts", ["::1", "::1"])[0] == (
        "hosts must not name a host twice, got ['::1'] more than once"
    )


def test_python_str_is_not_a_list_of_hosts() -> None:
    # In Python a bare string would iterate into one-character hosts; refuse it instead.
    with pytest.raises(ConfigError, match=r"^hosts must be a list of host names"):
        Config(hosts="127.0.0.1")  # type: ignore[arg-type]


# ---- unknown sections and keys ---------------------------------------------------------------


def test_unknown_section() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"limit": {"max_payload": 1}}, source=SOURCE)
    assert str(info.value) == (
        f"{SOURCE}: [limit] is not a known section (did you mean 'limits'?);"
        " known: server, limits, slow_consumer, retained, timeouts, logging, auth, tls, monitoring,"
        " nats, cluster"
    )


def test_unknown_key() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"limits": {"max_paylaod": 1}}, source=SOURCE)
    message = str(info.value)
    assert message.startswith(
        f"{SOURCE}: limits.max_paylaod is not a known key in [limits] (did you mean 'max_payload'?)"
    )


def test_key_from_another_section_is_unknown() -> None:
    with pytest.raises(ConfigError, match=rf"^{SOURCE}: server\.max_payload is not a known key"):
        config_from_mapping({"server": {"max_payload": 1}}, source=SOURCE)


def test_flat_field_name_is_not_a_toml_key() -> None:
    with pytest.raises(ConfigError, match=r"slow_consumer\.slow_consumer_policy is not a known"):
        config_from_mapping({"slow_consumer": {"slow_consumer_policy": "disconnect"}})


def test_section_must_be_a_table() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"server": 5878}, source=SOURCE)
    assert str(info.value) == f"{SOURCE}: [server] must be a table of keys, got int 5878"


def test_default_source_name() -> None:
    with pytest.raises(ConfigError, match=r"^<config>: server\.port must be"):
        config_from_mapping({"server": {"port": -1}})


def test_empty_mapping_is_the_defaults() -> None:
    assert config_from_mapping({}) == Config()


# ---- files -----------------------------------------------------------------------------------


def test_load_config_from_str_and_path(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text('[server]\nhosts = "::1"\nport = 0\n[logging]\nlevel = "DEBUG"\n')
    for given in (path, str(path)):
        assert load_config(given) == Config(hosts=("::1",), port=0, log_level="debug")


def test_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text("[limits]\nmax_payload = 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: limits.max_payload must be between 1 and 67108864, got 0"
    assert (info.value.source, info.value.key) == (str(path), "limits.max_payload")


def test_toml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text("[server]\nport 5878\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: is not valid TOML: ")
    assert "line 2" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read config file: No such file or directory"


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file: Is a directory"):
        load_config(tmp_path)


def test_file_must_be_utf8(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_bytes(b'[logging]\nlevel = "\xff"\n')
    with pytest.raises(ConfigError, match=r"TOML files must be UTF-8"):
        load_config(path)


def test_config_error_is_a_value_error() -> None:
    error = ConfigError("must be >= 1, got 0", key="port", source="f.toml")
    assert isinstance(error, ValueError)
    assert str(error) == "f.toml: port must be >= 1, got 0"
    moved = error.relocated(source="command line", key="--port")
    assert str(moved) == "command line: --port must be >= 1, got 0"
    assert str(error.relocated(source="g.toml")) == "g.toml: port must be >= 1, got 0"


# ---- nested sections ---------------------------------------------------------------------------
#
# The mechanism coming sections ([auth], [tls], [monitoring], ...) are built on, proven on a small
# model of the [auth] and [tls] contracts rather than on Config, which has no nested section yet.


@dataclass(frozen=True, slots=True, kw_only=True)
class Rules:
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("allow", "deny"):
            subjects = getattr(self, name)
            if not isinstance(subjects, tuple | list):
                raise ConfigError(f"must be a list of subjects, {_got(subjects)}", key=name)
            for index, subject in enumerate(subjects):
                _require_str(f"{name}[{index}]", subject)
            object.__setattr__(self, name, tuple(subjects))


@dataclass(frozen=True, slots=True, kw_only=True)
class Responses:
    max: int = 1
    expires: float = 0.0

    def __post_init__(self) -> None:
        _require_int_in("max", self.max, _Range(1))
        object.__setattr__(self, "expires", _require_seconds_in("expires", self.expires, _Range(0)))


# In the file a plain list of subjects is the allow list; in Python, Rules(allow=...) is.
ALLOW_LIST = _read_toml(_table_of("allow"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Permissions:
    publish: Rules = dataclasses.field(default=Rules(), metadata=ALLOW_LIST)
    subscribe: Rules = dataclasses.field(default=Rules(), metadata=ALLOW_LIST)
    allow_responses: bool | Responses = False

    def __post_init__(self) -> None:
        _check_nested(self)
        if not isinstance(self.allow_responses, bool | Responses):
            problem = (
                f"must be true, false or a table of max and expires, {_got(self.allow_responses)}"
            )
            raise ConfigError(problem, key="allow_responses")


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    user: str
    password: str
    permissions: Permissions = Permissions()

    def __post_init__(self) -> None:
        _check_nested(self)
        _require_str("user", self.user)
        _require_str("password", self.password)


@dataclass(frozen=True, slots=True, kw_only=True)
class Auth:
    token: str | None = None
    users: tuple[User, ...] = ()
    default_permissions: Permissions = Permissions()

    def __post_init__(self) -> None:
        _check_nested(self)
        if self.token is not None:
            _require_str("token", self.token)
        names = [user.user for user in self.users]
        for index, name in enumerate(names):
            if name in names[:index]:
                problem = f"must not repeat a user name, got {name!r} again"
                raise ConfigError(problem, key=f"users[{index}].user")


@dataclass(frozen=True, slots=True, kw_only=True)
class Tls:
    cert_file: str
    key_file: str
    verify: bool = False

    def __post_init__(self) -> None:
        _require_str("cert_file", self.cert_file)
        _require_str("key_file", self.key_file)
        _require_bool("verify", self.verify)


@dataclass(frozen=True, slots=True, kw_only=True)
class Root:
    """Config in small: a flat field laid out in [server], and two nested sections."""

    port: int = 5878
    auth: Auth = Auth()
    tls: Tls | None = None

    def __post_init__(self) -> None:
        _check_nested(self)
        _require_int_in("port", self.port, _Range(0, 65535))


FLAT = {"server": {"port": "port"}}

DOCUMENT = """
[server]
port = 4000

[auth]
token = "s3cret"

[[auth.users]]
user = "orders"
password = "$2b$12$abc"
permissions.publish = { allow = ["orders.>"], deny = ["orders.audit"] }
permissions.subscribe = ["orders.>", "_INBOX.orders.>"]
permissions.allow_responses = { max = 1, expires = 5 }

[[auth.users]]
user = "billing"
password = "$2b$12$def"
permissions.allow_responses = true

[auth.default_permissions]
subscribe = { deny = [">"] }

[tls]
cert_file = "server.pem"
key_file = "server-key.pem"
"""


def read(data: Mapping[str, Any]) -> Root:
    return _root_from_mapping(Root, FLAT, data, source=SOURCE)


def read_refused(data: Mapping[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        read(data)
    assert info.value.source == SOURCE
    return str(info.value)


def with_users(*users: Mapping[str, Any]) -> dict[str, Any]:
    return {"auth": {"users": list(users)}}


ORDERS = {"user": "orders", "password": "x"}


def test_nested_document_is_read_into_sections() -> None:
    assert read(tomllib.loads(DOCUMENT)) == Root(
        port=4000,
        auth=Auth(
            token="s3cret",
            users=(
                User(
                    user="orders",
                    password="$2b$12$abc",
                    permissions=Permissions(
                        publish=Rules(allow=("orders.>",), deny=("orders.audit",)),
                        subscribe=Rules(allow=("orders.>", "_INBOX.orders.>")),
                        allow_responses=Responses(max=1, expires=5.0),
                    ),
                ),
                User(
                    user="billing",
                    password="$2b$12$def",
                    permissions=Permissions(allow_responses=True),
                ),
            ),
            default_permissions=Permissions(subscribe=Rules(deny=(">",))),
        ),
        tls=Tls(cert_file="server.pem", key_file="server-key.pem"),
    )


def test_nested_absent_optional_section_is_none() -> None:
    assert read({}) == Root()
    assert read({}).tls is None
    assert read({"auth": {}}).auth == Auth()
    # TOML has no null: an absent optional section is left out, as max_frame is.
    assert _root_to_mapping(Root(), FLAT) == {
        "server": {"port": 5878},
        "auth": {
            "users": [],
            "default_permissions": {
                "publish": {"allow": [], "deny": []},
                "subscribe": {"allow": [], "deny": []},
                "allow_responses": False,
            },
        },
    }


def test_nested_round_trip() -> None:
    root = read(tomllib.loads(DOCUMENT))
    layout = _root_to_mapping(root, FLAT)
    # Written out in full: the shorthand list comes back as a table, seconds as floats.
    orders = layout["auth"]["users"][0]["permissions"]
    assert orders["subscribe"] == {"allow": ["orders.>", "_INBOX.orders.>"], "deny": []}
    assert orders["allow_responses"] == {"max": 1, "expires": 5.0}
    assert layout["tls"] == {
        "cert_file": "server.pem",
        "key_file": "server-key.pem",
        "verify": False,
    }
    assert read(layout) == root
    assert read(_root_to_mapping(Root(), FLAT)) == Root()


def test_nested_unknown_section_hint() -> None:
    assert read_refused({"tsl": {}}) == (
        f"{SOURCE}: [tsl] is not a known section (did you mean 'tls'?); known: server, auth, tls"
    )


def test_nested_top_level_key_is_sent_to_its_section() -> None:
    assert read_refused({"verify": True}) == (
        f"{SOURCE}: verify must be inside a section, not at the top of the file:"
        " put verify = true under [tls]"
    )
    assert read_refused({"token": "s3cret"}).endswith('put token = "s3cret" under [auth]')
    assert read_refused({"port": 1}).endswith("put port = 1 under [server]")


def test_nested_unknown_key_at_depth_2() -> None:
    tls = {"cert_file": "a", "key_file": "b", "verfy": True}
    assert read_refused({"tls": tls}) == (
        f"{SOURCE}: tls.verfy is not a known key in [tls] (did you mean 'verify'?);"
        " known: cert_file, key_file, verify"
    )


def test_nested_unknown_key_at_depth_3() -> None:
    message = read_refused({"auth": {"default_permissions": {"publsh": ["a"]}}})
    assert message == (
        f"{SOURCE}: auth.default_permissions.publsh is not a known key in"
        " [auth.default_permissions] (did you mean 'publish'?);"
        " known: publish, subscribe, allow_responses"
    )


def test_nested_unknown_key_in_array_of_tables() -> None:
    billing = {"user": "billing", "password": "y", "permissions": {"subscribe": {"alow": []}}}
    assert read_refused(with_users(ORDERS, billing)) == (
        f"{SOURCE}: auth.users[1].permissions.subscribe.alow is not a known key in"
        " auth.users[1].permissions.subscribe (did you mean 'allow'?); known: allow, deny"
    )
    assert read_refused(with_users({**ORDERS, "pasword": "x"})).startswith(
        f"{SOURCE}: auth.users[0].pasword is not a known key in auth.users[0]"
        " (did you mean 'password'?)"
    )


def test_nested_wrong_type_in_array_of_tables() -> None:
    billing = {"user": "billing", "password": 5}
    assert read_refused(with_users(ORDERS, billing)) == (
        f"{SOURCE}: auth.users[1].password must be a string, got int 5"
    )
    deep = {**ORDERS, "permissions": {"publish": {"allow": [5]}}}
    assert read_refused(with_users(ORDERS | {"user": "a"}, deep)) == (
        f"{SOURCE}: auth.users[1].permissions.publish.allow[0] must be a string, got int 5"
    )
    assert read_refused(with_users(ORDERS, 5)) == (  # type: ignore[arg-type]
        f"{SOURCE}: auth.users[1] must be a table of keys, got int 5"
    )
    assert read_refused({"auth": {"users": ORDERS}}) == (
        f"{SOURCE}: auth.users must be an array of tables, got dict {ORDERS!r}"
    )


def test_nested_sub_table_must_be_a_table() -> None:
    assert read_refused({"tls": 5}) == f"{SOURCE}: [tls] must be a table of keys, got int 5"
    assert read_refused({"auth": {"default_permissions": "all"}}) == (
        f"{SOURCE}: auth.default_permissions must be a table of keys, got str 'all'"
    )


def test_nested_required_key() -> None:
    assert read_refused({"tls": {"cert_file": "a"}}) == (
        f"{SOURCE}: tls.key_file is required and has no default"
    )
    assert read_refused(with_users({"user": "orders"})) == (
        f"{SOURCE}: auth.users[0].password is required and has no default"
    )


def test_nested_error_from_a_parents_rule_names_the_full_path() -> None:
    # Auth checks its users together; the key it names is relative to itself.
    assert read_refused(with_users(ORDERS, ORDERS)) == (
        f"{SOURCE}: auth.users[1].user must not repeat a user name, got 'orders' again"
    )


def test_nested_flat_field_beside_sections() -> None:
    assert read_refused({"server": {"port": -1}}) == (
        f"{SOURCE}: server.port must be between 0 and 65535, got -1"
    )


def default_permissions(value: object) -> Permissions:
    return read(
        {"auth": {"default_permissions": {"allow_responses": value}}}
    ).auth.default_permissions


def test_nested_union_bool_or_table() -> None:
    assert default_permissions(True).allow_responses is True
    assert default_permissions(False).allow_responses is False
    assert default_permissions({}).allow_responses == Responses()
    assert default_permissions({"max": 3, "expires": 2}).allow_responses == Responses(
        max=3, expires=2.0
    )
    key = f"{SOURCE}: auth.default_permissions.allow_responses"
    with pytest.raises(ConfigError) as info:
        default_permissions(5)
    assert str(info.value) == f"{key} must be true, false or a table of max and expires, got int 5"
    with pytest.raises(ConfigError) as info:
        default_permissions({"max": 0})
    assert str(info.value) == f"{key}.max must be >= 1, got 0"
    with pytest.raises(ConfigError) as info:
        default_permissions({"expire": 5})
    assert str(info.value).startswith(
        f"{key}.expire is not a known key in [auth.default_permissions.allow_responses]"
        " (did you mean 'expires'?)"
    )


def test_nested_plain_list_is_an_allow_list() -> None:
    permissions = {"publish": ["a.>"], "subscribe": {"allow": ["b"], "deny": ["b.c"]}}
    assert read({"auth": {"default_permissions": permissions}}).auth.default_permissions == (
        Permissions(publish=Rules(allow=("a.>",)), subscribe=Rules(allow=("b",), deny=("b.c",)))
    )
    assert read_refused({"auth": {"default_permissions": {"publish": ["a", 5]}}}) == (
        f"{SOURCE}: auth.default_permissions.publish.allow[1] must be a string, got int 5"
    )


def test_nested_replace_validates() -> None:
    user = User(user="orders", password="x")
    with pytest.raises(ConfigError, match=r"^password must be a string, got int 5$"):
        dataclasses.replace(user, password=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^max must be >= 1, got 0$"):
        dataclasses.replace(Responses(), max=0)
    with pytest.raises(ConfigError) as info:
        dataclasses.replace(Root(), tls={"cert_file": "a"})  # type: ignore[arg-type]
    assert str(info.value) == "tls must be a Tls or None, got dict {'cert_file': 'a'}"
    # The file's shorthand is for the file; Python says Rules(allow=...).
    with pytest.raises(ConfigError, match=r"^publish must be a Rules, got list \['a'\]$"):
        dataclasses.replace(Permissions(), publish=["a"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^users\[1\] must be a User, got str 'bob'$"):
        dataclasses.replace(Auth(), users=(user, "bob"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^users must be a tuple of User, got User "):
        dataclasses.replace(Auth(), users=user)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^users\[1\]\.user must not repeat a user name"):
        dataclasses.replace(Auth(), users=(user, user))
    # A list of sections is stored as a tuple, so the section stays hashable.
    auth = dataclasses.replace(Auth(), users=[user])  # type: ignore[arg-type]
    assert auth.users == (user,)
    assert {auth: "hashable"}[auth] == "hashable"


@dataclass(frozen=True, slots=True, kw_only=True)
class ListOfSections:
    rules: list[Rules] = dataclasses.field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class TwoSections:
    rules: Rules | Responses = Rules()


@dataclass(frozen=True, slots=True, kw_only=True)
class ArrayAtTop:
    tls: tuple[Tls, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RequiredSection:
    tls: Tls


def test_nested_layouts_toml_cannot_read_are_refused() -> None:
    with pytest.raises(TypeError, match=r"^ListOfSections\.rules: TOML cannot read list\["):
        _section_from_mapping(ListOfSections, {}, "x")
    with pytest.raises(TypeError, match=r"^TwoSections\.rules: TOML cannot read"):
        _section_from_mapping(TwoSections, {}, "x")
    with pytest.raises(TypeError, match=r"^ArrayAtTop\.tls: a top-level section must be"):
        _root_from_mapping(ArrayAtTop, {}, {}, source=SOURCE)


def test_nested_required_section() -> None:
    with pytest.raises(ConfigError) as info:
        _root_from_mapping(RequiredSection, {}, {}, source=SOURCE)
    assert str(info.value) == f"{SOURCE}: [tls] is a required section and has no default"
    tls = {"cert_file": "a", "key_file": "b"}
    root = _root_from_mapping(RequiredSection, {}, {"tls": tls}, source=SOURCE)
    assert root.tls == Tls(cert_file="a", key_file="b")
