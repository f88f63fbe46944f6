"""Permission rules as plain functions: patterns, deny wins, coverage, $SYS, responses, caches,
and the hub enforcing them for any subscriber (no trio, no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from broker.config import Config, PermissionsConfig, ResponsesConfig, RulesConfig
from broker.errors import ErrorCode
from broker.hub import Hub, Refused, Subscription
from broker.message import Message, Retained
from broker.permissions import (
    MAX_CACHED_DECISIONS,
    MAX_PENDING_RESPONSES,
    ClientPermissions,
    Permissions,
    Rules,
    Verdict,
    covers,
    overlaps,
)


@pytest.mark.parametrize(
    ("patterns", "pattern", "expected"),
    [
        (["a.>"], "a.b", True),
        (["a.>"], "a", False),
        (["a.>"], "a.*.c", True),
        (["a.eu.>"], "a.>", False),
        (["a.*"], "a.>", False),
        (["a.*", "a.*.>"], "a.>", True),  # the union covers what neither does alone
        (["a.b"], "a.*", False),  # literals never cover a wildcard token
        (["*.b"], "a.b", True),
        ([">"], "x.y.z", True),
        ([], "a", False),
        (["a.*.c"], "a.>", False),
        (["a.*", "a.*.*"], "a.>", False),  # a.x.y.z is left out
    ],
)
def test_covers(patterns: list[str], pattern: str, expected: bool) -> None:
    assert covers(patterns, pattern) is expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("orders.>", "orders.audit", True),
        ("orders.>", "orders", False),
        ("*.audit", "orders.*", True),
        ("a.b", "a.c", False),
        ("a.*", "a.b.c", False),
        (">", "$SYS.x", True),
    ],
)
def test_overlaps(a: str, b: str, expected: bool) -> None:
    assert overlaps(a, b) is expected and overlaps(b, a) is expected


def test_deny_wins_and_empty_allow_allows_all() -> None:
    rules = Rules(allow=["orders.>"], deny=["orders.audit"])
    assert rules.allows("orders.new")
    assert not rules.allows("orders.audit")
    assert not rules.allows("billing.new")
    assert Rules().allows("anything.at.all")
    assert not Rules(deny=["a.*"]).allows("a.b")


def test_sys_is_reachable_only_when_explicitly_allowed() -> None:
    assert not Rules().allows("$SYS.SERVER.x")
    assert not Rules(allow=[">"]).allows("$SYS.SERVER.x")
    assert Rules().verdict("$SYS.>") is Verdict.DENY
    assert Rules(allow=[">"]).verdict("$SYS.>") is Verdict.DENY
    # A wildcard first token still works for everything else, filtered of $SYS.
    assert Rules().verdict(">") is Verdict.FILTER
    allowed = Rules(allow=["$SYS.SERVER.>"])
    assert allowed.allows("$SYS.SERVER.x")
    assert not allowed.allows("$SYS.ACCOUNT.x")
    assert not allowed.allows("orders.new")  # an allow list was given
    assert allowed.verdict("$SYS.SERVER.*") is Verdict.ALLOW
    assert allowed.verdict("$SYS.>") is Verdict.DENY


def test_subscription_verdicts() -> None:
    rules = Rules(allow=["orders.>", "_INBOX.orders.>"], deny=["orders.audit"])
    assert rules.verdict("orders.new") is Verdict.ALLOW
    assert rules.verdict("orders.*.eu") is Verdict.ALLOW
    assert rules.verdict("orders.>") is Verdict.FILTER  # overlaps the deny
    assert rules.verdict("orders.*") is Verdict.FILTER
    assert rules.verdict("orders.audit") is Verdict.DENY
    assert rules.verdict("_INBOX.>") is Verdict.DENY  # wider than _INBOX.orders.>
    assert rules.verdict("_INBOX.orders.>") is Verdict.ALLOW
    assert rules.verdict("billing.>") is Verdict.DENY


def test_decisions_are_cached_and_the_cache_is_bounded() -> None:
    permissions = Permissions(publish=Rules(allow=["a.>"]))
    for index in range(MAX_CACHED_DECISIONS + 10):
        assert permissions.may_publish(f"a.{index}")
    assert 0 < len(permissions.published) <= MAX_CACHED_DECISIONS
    assert permissions.published["a.4105"] is True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_allow_responses_once_by_default() -> None:
    rules = Permissions(publish=Rules(deny=[">"]), responses=ResponsesConfig())
    client = ClientPermissions(rules)
    assert not client.may_publish("_INBOX.x.1")
    client.note_request("_INBOX.x.1")
    assert client.may_publish("_INBOX.x.1")
    assert not client.may_publish("_INBOX.x.1")  # once


def test_allow_responses_max_and_expires() -> None:
    clock = Clock()
    rules = Permissions(publish=Rules(deny=[">"]), responses=ResponsesConfig(max=2, expires=5))
    client = ClientPermissions(rules, clock=clock)
    client.note_request("r.1")
    client.note_request("r.2")
    assert client.may_publish("r.1") and client.may_publish("r.1")
    assert not client.may_publish("r.1")  # max = 2, and one past it
    clock.now += 5.0
    assert client.may_publish("r.2")  # exactly at the edge
    client.note_request("r.3")
    clock.now += 5.001
    assert not client.may_publish("r.3")  # just past it
    assert client.pending_responses == 1  # r.2 has one reply left


def test_pending_responses_are_bounded() -> None:
    client = ClientPermissions(Permissions(publish=Rules(deny=[">"]), responses=ResponsesConfig()))
    for index in range(MAX_PENDING_RESPONSES + 1):
        client.note_request(f"r.{index}")
    assert client.pending_responses == MAX_PENDING_RESPONSES
    assert not client.may_publish("r.0")  # the oldest was forgotten
    assert client.may_publish(f"r.{MAX_PENDING_RESPONSES}")


def test_without_allow_responses_nothing_is_noted() -> None:
    client = ClientPermissions(Permissions(publish=Rules(deny=[">"])))
    client.note_request("r.1")
    assert client.pending_responses == 0 and not client.may_publish("r.1")


def test_from_config() -> None:
    config = PermissionsConfig(publish=RulesConfig(allow=("a.>",)), allow_responses=True)
    permissions = Permissions.from_config(config)
    assert permissions.may_publish("a.b") and not permissions.may_publish("b")
    assert permissions.responses == ResponsesConfig(max=1, expires=0.0)


# ---- the hub enforcing them ---------------------------------------------------------------


class Recorder:
    def __init__(self, permissions: ClientPermissions | None = None) -> None:
        self.name = ""
        self.lang = self.version = ""
        self.echo = True
        self.in_msgs = self.in_bytes = self.out_msgs = self.out_bytes = 0
        self.subscriptions: dict[Any, Subscription] = {}
        self.permissions = permissions
        self.got: list[tuple[Any, str]] = []
        self.replayed: list[tuple[Any, str]] = []

    def deliver(self, sub: Subscription, message: Message) -> int:
        self.got.append((sub.sid, message[0]))
        return 1

    def replay(self, sub: Subscription, entries: list[tuple[str, Retained]]) -> bool:
        self.replayed.extend((sub.sid, subject) for subject, _ in entries)
        return True


def confined(**rules: Any) -> ClientPermissions:
    return ClientPermissions(Permissions(**rules))


def refused(call: Any, *args: Any) -> Refused:
    with pytest.raises(Refused) as info:
        call(*args)
    return info.value


def test_hub_refuses_a_publish_outside_the_rules_and_delivers_nothing() -> None:
    hub = Hub(Config(), server_id="t")
    reader = Recorder()
    hub.subscribe(reader, 1, ">")
    writer = Recorder(confined(publish=Rules(allow=["orders.>"], deny=["orders.audit"])))
    error = refused(hub.publish, writer, ("orders.audit", b"x", None, None, True))
    assert error.code is ErrorCode.PERMISSION_DENIED and not error.code.fatal
    assert error.details == {"subject": "orders.audit", "op": "publish"}
    assert reader.got == [] and hub.retained.subjects == 0
    hub.publish(writer, ("orders.new", b"x", None, None, False))
    assert reader.got == [(1, "orders.new")]


def test_hub_refuses_a_subscription_outside_the_rules() -> None:
    hub = Hub(Config(), server_id="t")
    client = Recorder(confined(subscribe=Rules(allow=["orders.>"])))
    error = refused(hub.subscribe, client, 7, "billing.*")
    assert error.code is ErrorCode.PERMISSION_DENIED
    assert error.details == {"sid": 7, "subject": "billing.*", "op": "subscribe"}
    assert client.subscriptions == {} and len(hub.table) == 0
    assert refused(hub.subscribe, client, 8, "a..b").code is ErrorCode.BAD_SUBJECT


def test_wildcard_overlapping_a_deny_never_gets_denied_subjects() -> None:
    hub = Hub(Config(), server_id="t")
    origin = Recorder()
    hub.publish(origin, ("orders.audit", b"old", None, None, True))
    hub.publish(origin, ("orders.old", b"old", None, None, True))
    client = Recorder(confined(subscribe=Rules(allow=["orders.>"], deny=["orders.audit"])))
    group = Recorder(confined(subscribe=Rules(deny=["orders.audit"])))
    sub = hub.subscribe(client, 1, "orders.>")
    hub.subscribe(group, 1, "orders.*", "workers")
    assert sub.filtered and client.replayed == [(1, "orders.old")]
    for subject in ("orders.audit", "orders.new"):
        hub.publish(origin, (subject, b"x", None, None, False))
    assert client.got == [(1, "orders.new")]
    assert group.got == [(1, "orders.new")]


def test_unconfined_clients_pay_no_guard() -> None:
    hub = Hub(Config(), server_id="t")
    sub = hub.subscribe(Recorder(), 1, ">")
    assert sub.guard is None and hub._guarded == 0
    guarded = hub.subscribe(Recorder(confined()), 1, ">")  # filtered of $SYS
    assert guarded.guard is not None and hub._guarded == 1
    hub.remove(guarded)
    assert hub._guarded == 0


def test_responder_may_answer_only_requests_it_received() -> None:
    hub = Hub(Config(), server_id="t")
    responder = Recorder(
        confined(
            publish=Rules(allow=["none"]),
            subscribe=Rules(allow=["svc"]),
            responses=ResponsesConfig(),
        )
    )
    requester = Recorder()
    hub.subscribe(responder, 1, "svc", "q")
    hub.subscribe(requester, 1, "_INBOX.r.>")
    error = refused(hub.publish, responder, ("_INBOX.r.1", b"x", None, None, False))
    assert error.code is ErrorCode.PERMISSION_DENIED
    hub.publish(requester, ("svc", b"q", "_INBOX.r.1", None, False))
    hub.publish(responder, ("_INBOX.r.1", b"answer", None, None, False))
    assert requester.got == [(1, "_INBOX.r.1")]
    assert refused(hub.publish, responder, ("_INBOX.r.1", b"x", None, None, False))


def test_apply_permissions_removes_what_is_no_longer_allowed() -> None:
    hub = Hub(Config(), server_id="t")
    client = Recorder(confined())
    hub.subscribe(client, 1, "orders.>")
    hub.subscribe(client, 2, "billing.>")
    new = confined(subscribe=Rules(allow=["orders.>"], deny=["orders.audit"]))
    removed = hub.apply_permissions(client, new)
    assert [(sub.sid, error.details) for sub, error in removed] == [
        (2, {"sid": 2, "subject": "billing.>", "op": "subscribe"})
    ]
    assert list(client.subscriptions) == [1] and client.subscriptions[1].filtered
    assert hub.apply_permissions(client, None) == []
    assert hub._guarded == 0 and not client.subscriptions[1].filtered


def test_a_split_fanout_filters_and_notes_as_a_whole_one_does() -> None:
    hub = Hub(Config(), server_id="t")
    readers = [
        Recorder(
            confined(
                publish=Rules(deny=[">"]),
                subscribe=Rules(deny=["a.secret"]),
                responses=ResponsesConfig(),
            )
        )
        for _ in range(4)
    ]
    for reader in readers:
        hub.subscribe(reader, 1, "a.*")
    origin = Recorder()
    hub.publish(origin, ("a.secret", b"x", "_INBOX.r.1", None, False), step=1)
    while hub.resume(origin, 1):
        pass
    hub.publish(origin, ("a.open", b"x", "_INBOX.r.2", None, False), step=1)
    while hub.resume(origin, 1):
        pass
    assert [reader.got for reader in readers] == [[(1, "a.open")]] * 4
    assert all(reader.permissions is not None for reader in readers)
    for reader in readers:
        assert reader.permissions is not None
        assert reader.permissions.may_publish("_INBOX.r.2")
        assert not reader.permissions.may_publish("_INBOX.r.1")
