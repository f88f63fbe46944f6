"""The hub on its own: plain functions, no trio, no sockets, no wire format.

Any `Subscriber` can use the hub, not just a network session; these tests use a small
recording subscriber, which is also how a ``$SYS`` publisher or a link to other nodes plugs in.
"""

from __future__ import annotations

from typing import Any

import pytest

from broker.config import Config
from broker.errors import ErrorCode
from broker.hub import Hub, Refused, Subscription
from broker.message import NO_RESPONDERS_HEADERS, Message, Retained


class Recorder:
    """A subscriber that keeps what it is given."""

    def __init__(self, name: str = "", *, echo: bool = True, accepting: bool = True) -> None:
        self.name = name
        self.lang = self.version = ""
        self.in_msgs = self.in_bytes = self.out_msgs = self.out_bytes = 0
        self.echo = echo
        self.subscriptions: dict[Any, Subscription] = {}
        self.permissions: object | None = None
        self.accepting = accepting
        self.got: list[tuple[Any, str, bytes]] = []
        self.replayed: list[tuple[Any, str]] = []

    def deliver(self, sub: Subscription, message: Message) -> int:
        if not self.accepting:
            return 0
        self.got.append((sub.sid, message[0], message[1]))
        return 1

    def replay(self, sub: Subscription, entries: list[tuple[str, Retained]]) -> bool:
        self.replayed.extend((sub.sid, subject) for subject, _ in entries)
        return True


def make_hub(**overrides: Any) -> Hub:
    return Hub(Config(**overrides), server_id="test")


def test_a_publish_reaches_every_matching_subscription_once() -> None:
    hub = make_hub()
    a, b, origin = Recorder("a"), Recorder("b"), Recorder("origin")
    hub.subscribe(a, 1, "orders.*")
    hub.subscribe(a, 2, "orders.>")
    hub.subscribe(b, 1, "other")
    hub.publish(origin, ("orders.new", b"x", None, None, False))
    assert a.got == [(1, "orders.new", b"x"), (2, "orders.new", b"x")]
    assert b.got == []
    stats = hub.statistics()
    assert (stats.messages_in, stats.messages_out, stats.bytes_out) == (1, 2, 2)


def test_every_subscriber_of_a_publish_gets_the_same_message_object() -> None:
    hub = make_hub()
    seen: list[Message] = []

    class Keeper(Recorder):
        def deliver(self, sub: Subscription, message: Message) -> int:
            seen.append(message)
            return 1

    for index in range(5):
        hub.subscribe(Keeper(), index, "s")
    hub.publish(Recorder(), ("s", b"p", None, None, False))
    assert len(seen) == 5 and len({id(message) for message in seen}) == 1


def test_echo_off_skips_the_origin_and_a_queue_group_skips_its_members() -> None:
    hub = make_hub()
    me, other = Recorder("me", echo=False), Recorder("other")
    hub.subscribe(me, 1, "s")
    hub.subscribe(me, 2, "s", "q")
    hub.subscribe(other, 1, "s", "q")
    for _ in range(3):
        hub.publish(me, ("s", b"x", None, None, False))
    assert me.got == []
    assert other.got == [(1, "s", b"x")] * 3


def test_queue_group_members_share_the_messages_evenly() -> None:
    hub = make_hub()
    workers = [Recorder(f"w{i}") for i in range(3)]
    for worker in workers:
        hub.subscribe(worker, 1, "jobs", "workers")
    for _ in range(300):
        hub.publish(Recorder(), ("jobs", b"j", None, None, False))
    assert [len(worker.got) for worker in workers] == [100, 100, 100]


def test_a_request_nobody_serves_is_answered_with_503_on_the_requester_inbox() -> None:
    hub = make_hub()
    requester = Recorder("req")
    hub.subscribe(requester, 7, "_INBOX.abc")
    answers: list[Message] = []

    class Watcher(Recorder):
        def deliver(self, sub: Subscription, message: Message) -> int:
            answers.append(message)
            return 1

    spy = Watcher()
    hub.subscribe(spy, 1, "_INBOX.*")  # someone else's inbox subscription gets no 503
    hub.publish(requester, ("time.now", b"", "_INBOX.abc", None, False))
    assert requester.got == [(7, "_INBOX.abc", b"")]
    assert answers == []
    assert hub.statistics().no_responders == 1


def test_refusals_carry_their_code_and_leave_nothing_behind() -> None:
    hub = make_hub(max_payload=8, max_subscriptions=1, max_retained_subjects=1)
    origin = Recorder()
    with pytest.raises(Refused) as refused:
        hub.publish(origin, ("s", b"123456789", None, None, False))
    assert refused.value.code is ErrorCode.PAYLOAD_TOO_LARGE and refused.value.code.fatal
    with pytest.raises(Refused) as refused:
        hub.publish(origin, ("$SYS.x", b"", None, None, False))
    assert refused.value.code is ErrorCode.BAD_SUBJECT and not refused.value.code.fatal
    hub.publish(origin, ("kept", b"1", None, None, True))
    with pytest.raises(Refused) as refused:
        hub.publish(origin, ("other", b"2", None, None, True))
    assert refused.value.code is ErrorCode.RETAINED_LIMIT
    assert refused.value.details == {"subject": "other"}
    hub.subscribe(origin, 1, "a")
    with pytest.raises(Refused) as refused:
        hub.subscribe(origin, 1, "b")
    assert refused.value.code is ErrorCode.BAD_SID
    with pytest.raises(Refused) as refused:
        hub.subscribe(origin, 2, "b")
    assert refused.value.code is ErrorCode.TOO_MANY_SUBSCRIPTIONS
    assert refused.value.details == {"sid": 2}
    assert list(origin.subscriptions) == [1]
    assert hub.statistics().messages_in == 1  # only the retained publish that was accepted


def test_a_new_subscription_gets_the_retained_messages_in_the_same_step() -> None:
    hub = make_hub()
    origin, sub = Recorder(), Recorder()
    hub.publish(origin, ("t.b", b"2", None, None, True))
    hub.publish(origin, ("t.a", b"1", None, None, True))
    hub.publish(origin, ("t.c", b"", None, None, True))  # an empty payload deletes it
    subscription = hub.subscribe(sub, 1, "t.*")
    assert sub.replayed == [(1, "t.a"), (1, "t.b")]
    assert subscription.delivered == 2
    hub.subscribe(sub, 2, "t.*", "q")  # queue groups get no replay
    assert sub.replayed == [(1, "t.a"), (1, "t.b")]
    assert hub.would_replay("t.*", None) and not hub.would_replay("t.*", "q")


def test_unsubscribe_after_max_msgs_and_remove_all() -> None:
    hub = make_hub()
    owner = Recorder()
    sub = hub.subscribe(owner, 1, "s")
    hub.unsubscribe(sub, 2)
    assert 1 in owner.subscriptions
    hub.subscribe(owner, 2, ">")
    hub.remove_all(owner)
    assert owner.subscriptions == {} and len(hub.table) == 0
    hub.remove(sub)  # twice is harmless


def test_no_responders_headers_are_the_status_only() -> None:
    assert NO_RESPONDERS_HEADERS == {"status": "503"}


def test_a_leaving_owner_sheds_its_subscriptions_in_batches_queue_members_first() -> None:
    hub = make_hub()
    owner = Recorder()
    for sid in range(10):
        hub.subscribe(owner, sid, f"plain.{sid}")
    hub.subscribe(owner, 10, "jobs", "workers")
    assert hub.remove_all(owner, limit=4)  # some remain
    assert all(sub.queue is None for sub in owner.subscriptions.values())
    assert len(owner.subscriptions) == 6
    assert hub.remove_all(owner, limit=4)
    assert not hub.remove_all(owner, limit=4)
    assert owner.subscriptions == {} and len(hub.table) == 0


class _CountingHeld(dict[Any, Subscription]):
    """An owner's subscription map that counts the entries any scan of it reads."""

    read = 0

    def values(self) -> Any:
        for value in super().values():
            _CountingHeld.read += 1
            yield value


def test_shedding_in_batches_reads_each_subscription_about_twice_not_once_per_batch() -> None:
    hub = make_hub(max_subscriptions=20_000)
    owner = Recorder()
    owner.subscriptions = held = _CountingHeld()
    for sid in range(20_000):
        hub.subscribe(owner, sid, f"plain.{sid}")
    _CountingHeld.read = 0
    calls = 1
    while hub.remove_all(owner, limit=100):
        calls += 1
    assert calls == 200 and not held and len(hub.table) == 0
    # The queue-member scan happens once: 20,000 + 200 batches of 100. Per batch, it was
    # 2,010,000 reads in all.
    assert _CountingHeld.read <= 2 * 20_000


def test_a_split_request_that_reaches_nobody_gets_no_responders_after_its_last_step() -> None:
    hub = make_hub()
    requester = Recorder(echo=False)  # its own 3,000 subscriptions do not count as responders
    for sid in range(3000):
        hub.subscribe(requester, sid, "req.>")
    hub.subscribe(requester, "inbox", "inbox.1")
    assert hub.publish(requester, ("req.x", b"?", "inbox.1", None, False), 1024) == 0
    assert requester in hub.fanouts and requester.got == []
    steps = 1
    while requester in hub.fanouts:
        hub.resume(requester, 1024)
        steps += 1
    assert steps == 3
    assert requester.got == [("inbox", "inbox.1", b"")]  # the 503, once, at the end
    assert hub.statistics().no_responders == 1


def test_without_a_step_a_publish_is_delivered_whole() -> None:
    hub = make_hub()
    owner = Recorder()
    for sid in range(3000):
        hub.subscribe(owner, sid, "fan.>")
    assert hub.publish(owner, ("fan.x", b"!", None, None, False)) == 3000
    assert not hub.fanouts


def test_a_message_from_another_node_goes_out_in_steps_too() -> None:
    # The cluster link's deliveries cost this node's clients no more than a local publish:
    # a walk of 8,191 trie nodes and 4,096 deliveries are not one step.
    hub = make_hub()
    owner, link = Recorder("owner"), Recorder("link")
    patterns = [".".join("a" if b == "0" else "*" for b in f"{n:012b}") for n in range(4096)]
    for sid, pattern in enumerate(patterns):
        hub.subscribe(owner, sid, pattern, "workers" if sid == 5 else None)
    hub.subscribe(link, "stand-in", ">")  # another node's interest: passed over
    subject = ".".join(["a"] * 12)
    message: Message = (subject, b"1", "reply.to", None, False)
    assert hub.deliver_plain(link, message, 1024) == 1024
    assert link in hub.fanouts and owner.got == []  # the walk goes on
    steps = 1
    while link in hub.fanouts:
        hub.resume(link, 1024)
        steps += 1
    assert steps > 4  # the walk, then 4,095 deliveries 1,024 at a time
    assert [sid for sid, _, _ in owner.got] == [n for n in range(4096) if n != 5]
    assert link.got == []  # and no no-responders for the link's request
    owner.got.clear()
    hub.subscribe(owner, "other", "b.*")  # a wildcard change empties the match cache
    assert hub.deliver_group(link, message, "workers", 1024) == 1024
    while link in hub.fanouts:
        hub.resume(link, 1024)
    assert [sid for sid, _, _ in owner.got] == [5]  # only the member the other node chose
    owner.got.clear()
    # The cached match is one step now, with the rest of the deliveries in later steps.
    assert hub.deliver_plain(link, message, 1024) == 1024
    assert len(owner.got) == 1024 and link in hub.fanouts


def test_a_walk_too_long_for_one_step_goes_on_in_steps_and_sees_no_one_twice_or_too_new() -> None:
    hub = make_hub()
    owner = Recorder()
    patterns = [".".join("a" if b == "0" else "*" for b in f"{n:012b}") for n in range(4096)]
    for sid, pattern in enumerate(patterns):
        hub.subscribe(owner, sid, pattern)
    subject = ".".join(["a"] * 12)  # reaches all 4,096 through 8,191 trie nodes
    assert hub.publish(owner, (subject, b"1", None, None, False), 1024) == 0
    assert owner in hub.fanouts and owner.got == []  # nothing yet: the walk goes on
    hub.unsubscribe(owner.subscriptions[0])  # removed during the walk: gets nothing
    hub.subscribe(owner, "late", subject)  # made during the walk: gets nothing of this one
    while owner in hub.fanouts:
        hub.resume(owner, 1024)
    assert [sid for sid, _, _ in owner.got] == list(range(1, 4096))
    # The table changed during that walk, so its result was not cached: the next publish
    # reaches the late subscription too.
    owner.got.clear()
    hub.publish(owner, (subject, b"2", None, None, False))
    assert len(owner.got) == 4096 and owner.got[-1][0] == "late"
