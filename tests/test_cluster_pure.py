"""The cluster's pure parts: interest bookkeeping, the Redis wire format, the [cluster] config."""

from __future__ import annotations

import tomllib

import msgpack
import pytest

from broker.cluster.interest import MAX_MEMBERS_PER_KEY, LocalInterest, RemoteInterest, weight
from broker.cluster.wire import (
    BYE,
    CHANGE,
    BadFrame,
    Keys,
    entry,
    field,
    pack_batch,
    pack_interest,
    pack_retained,
    pack_retained_update,
    parse_field,
    parse_hash,
    unpack_batch,
    unpack_interest,
    unpack_retained,
    unpack_retained_update,
)
from broker.config import ClusterConfig, ConfigError, config_from_mapping


def test_local_interest_announces_presence_for_plain_keys_and_counts_for_groups() -> None:
    local = LocalInterest(version=10)
    assert local.change("a.*", None, 1)
    assert not local.change("a.*", None, 1)  # a second plain subscriber changes nothing
    assert local.change("jobs", "w", 1)
    assert local.change("jobs", "w", 1)
    assert local.take() == (11, {("a.*", None): 1, ("jobs", "w"): 2})
    assert local.take() is None
    assert not local.change("a.*", None, -1)
    assert local.change("a.*", None, -1)
    assert local.take() == (12, {("a.*", None): 0})
    assert local.snapshot() == (13, {("jobs", "w"): 2})


def test_remote_interest_applies_in_order_and_asks_for_a_resync_on_a_gap() -> None:
    remote = RemoteInterest()
    assert remote.apply("n", 5, {("a", None): 1}) is None  # unknown node: resync
    assert remote.replace("n", 5, {("a", None): 1}) == [("n", ("a", None), 0, 1)]
    assert remote.apply("n", 5, {("b", None): 1}) == []  # stale
    assert remote.apply("n", 6, {("a", None): 0, ("q", "g"): 3}) == [
        ("n", ("a", None), 1, 0),
        ("n", ("q", "g"), 0, 3),
    ]
    assert remote.apply("n", 8, {}) is None  # 7 was missed
    assert remote.replace("n", 6, {}) == []  # older than what is applied
    assert remote.compare({"n": 9, "me": 1, "new": 1}, "me") == ([], ["n", "new"])
    assert remote.compare({"me": 1}, "me") == (["n"], [])
    assert remote.drop("n") == [("n", ("q", "g"), 3, 0)]
    assert weight(10**6, "g") == MAX_MEMBERS_PER_KEY and weight(5, None) == 1


def test_wire_round_trips() -> None:
    keys = Keys("p")
    assert (keys.nodes, keys.interest("a"), keys.inbox("a")) == (
        "p:nodes",
        "p:interest:a",
        "p:node:a",
    )
    assert parse_field(field(("a.>", "q"))) == ("a.>", "q")
    changes = {("a", None): 1, ("b", "q"): 0}
    assert unpack_interest(pack_interest(CHANGE, "n", 3, changes)) == (CHANGE, "n", 3, changes)
    assert unpack_interest(pack_interest(BYE, "n", 0, {}))[0] == BYE
    message = ("s", b"x", "r", {"k": "v"}, False)
    assert unpack_batch(pack_batch("o", [entry("q", message)])) == ("o", [("q", message)])
    assert unpack_retained("s", pack_retained(message)) == ("s", b"x", None, {"k": "v"}, True)
    assert unpack_retained_update(pack_retained_update("o", message)) == (
        "o",
        ("s", b"x", None, {"k": "v"}, True),
    )
    assert parse_hash({b"": b"7", field(("a", None)): b"1"}) == (7, {("a", None): 1})


@pytest.mark.parametrize(
    "frame",
    [
        b"\xc1",  # not msgpack
        msgpack.packb(["o"]),
        msgpack.packb(["o", [[None, "s", "not bytes", None, None, False]]]),
        msgpack.packb(["o", [[None, "s", b"x", None, {"k": 1}, False]]]),
        msgpack.packb(["o", [[1, "s", b"x", None, None, False]]]),
        "text",
    ],
)
def test_a_malformed_batch_is_a_bad_frame(frame: object) -> None:
    with pytest.raises(BadFrame):
        unpack_batch(frame)


def test_malformed_interest_is_a_bad_frame() -> None:
    with pytest.raises(BadFrame):
        unpack_interest(msgpack.packb(["what", "n", 1, []]))
    with pytest.raises(BadFrame):
        unpack_interest(msgpack.packb([CHANGE, "n", 1, [["a", None, -1]]]))
    with pytest.raises(BadFrame):
        parse_hash({b"": b"x"})


def test_cluster_section_is_read_and_checked() -> None:
    text = '[cluster]\nredis_url = "redis://127.0.0.1:6379/0"\nname = "n1"\n'
    config = config_from_mapping(tomllib.loads(text))
    assert config.cluster == ClusterConfig(redis_url="redis://127.0.0.1:6379/0", name="n1")
    assert config_from_mapping({}).cluster is None
    with pytest.raises(ConfigError, match=r"cluster\.redis_url must be a redis://"):
        config_from_mapping({"cluster": {"redis_url": "http://x"}})
    with pytest.raises(ConfigError, match=r"cluster\.name must be 1 to 64"):
        config_from_mapping({"cluster": {"redis_url": "redis://x", "name": "a b"}})
    with pytest.raises(ConfigError, match=r"cluster\.prefix must be 1 to 64"):
        config_from_mapping({"cluster": {"redis_url": "redis://x", "prefix": ""}})
    with pytest.raises(ConfigError, match="at least twice heartbeat_interval"):
        ClusterConfig(redis_url="redis://x", heartbeat_interval=1, node_timeout=1.9)
    ClusterConfig(redis_url="redis://x", heartbeat_interval=1, node_timeout=2)  # at the edge
    ClusterConfig(redis_url="redis://x", name="a" * 64)
    with pytest.raises(ConfigError, match="name must be 1 to 64"):
        ClusterConfig(redis_url="redis://x", name="a" * 65)
    with pytest.raises(ConfigError, match="inbound_buffer must be >= 1"):
        ClusterConfig(redis_url="redis://x", inbound_buffer=0)
