"""Tests for broker.config: defaults, every rule at its edge, and the TOML layout and errors."""

from __future__ import annotations

import ast
import dataclasses
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest

from broker.config import (
    DEFAULT_FRAME_HEADROOM,
    DEFAULT_MAX_PAYLOAD,
    MIN_FRAME_HEADROOM,
    Config,
    ConfigError,
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
    "handshake_timeout": "timeouts.handshake_timeout",
    "write_timeout": "timeouts.write_timeout",
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


def test_shipped_file_is_the_defaults() -> None:
    assert load_config(SHIPPED) == Config()


def test_shipped_file_spells_out_every_key() -> None:
    with SHIPPED.open("rb") as file:
        assert tomllib.load(file) == config_to_mapping(Config())
    # TOML has no null, so max_frame is shown commented out, with its effective default.
    (line,) = [ln for ln in SHIPPED.read_text().splitlines() if ln.startswith("# max_frame =")]
    assert tomllib.loads(line.removeprefix("# "))["max_frame"] == Config().frame_limit


def test_every_field_has_exactly_one_toml_key() -> None:
    assert sorted(TOML_KEY) == sorted(f.name for f in dataclasses.fields(Config))
    layout = config_to_mapping(Config(max_frame=2 * MiB))
    assert sorted(f"{s}.{k}" for s, table in layout.items() for k in table) == sorted(
        TOML_KEY.values()
    )


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


def test_config_module_is_pure() -> None:
    tree = ast.parse(
        Path(__file__).resolve().parent.parent.joinpath("broker/config.py").read_text()
    )
    imported = {
        alias.name.split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.Import)
        for alias in n.names
    }
    imported |= {
        n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
    }
    assert not imported & {"trio", "socket", "broker"}


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
        " known: server, limits, slow_consumer, retained, timeouts, logging"
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
