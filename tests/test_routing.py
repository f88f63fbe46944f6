from __future__ import annotations

import gc
import itertools
import re
from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from broker.routing import Match, QueueGroup, RoutingTable
from broker.subjects import SubjectError, matches


class Sub:
    """A stand-in for the server's subscriptions: identity-hashed, named for readable failures."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Sub({self.name!r})"


def subs(*names: str) -> list[Sub]:
    return [Sub(name) for name in names]


# --- matching -----------------------------------------------------------------------------


def test_literal_star_and_tail_patterns() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    exact, star, tail, all_, other = subs("exact", "star", "tail", "all", "other")
    table.insert(exact, "a.b")
    table.insert(star, "a.*")
    table.insert(tail, "a.>")
    table.insert(all_, ">")
    table.insert(other, "x.y")
    assert table.match("a.b").plain == (exact, star, tail, all_)
    assert table.match("a.c").plain == (star, tail, all_)
    assert table.match("a.b.c").plain == (tail, all_)
    assert table.match("a").plain == (all_,)  # 'a.>' needs at least one more token
    assert table.match("x.y").plain == (all_, other)
    assert table.match("x.y.z").plain == (all_,)


def test_plain_subscribers_come_in_subscription_order_whatever_the_trie_path() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    order = subs("1", "2", "3", "4", "5")
    for sub, pattern in zip(order, ["*.*", "a.>", "a.b", ">", "*.b"], strict=True):
        table.insert(sub, pattern)
    assert table.match("a.b").plain == tuple(order)


def test_no_match_is_falsy() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    (sub,) = subs("s")
    table.insert(sub, "a.b")
    nobody = table.match("a.c")
    assert not nobody
    assert nobody.plain == () and nobody.groups == ()
    assert table.match("a.b")


def test_queue_only_match_is_truthy() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    (worker,) = subs("w")
    table.insert(worker, "svc", queue="workers")
    found = table.match("svc")
    assert found and found.plain == ()


def test_reserved_subjects_are_matched_by_name_not_by_a_leading_wildcard() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    sys_sub, sys_all, everything, star = subs("sys", "sys_all", "everything", "star")
    table.insert(sys_sub, "$SYS.*")
    table.insert(sys_all, "$SYS.>")
    table.insert(everything, ">")
    table.insert(star, "*.stats")
    assert table.match("$SYS.stats").plain == (sys_sub, sys_all)
    assert table.peek("$SYS.stats").plain == (sys_sub, sys_all)
    assert table.match("app.stats").plain == (everything, star)
    assert table.match("$OTHER.stats").plain == ()
    for pattern, subject, expected in [
        (">", "$SYS.stats", False),
        ("*.stats", "$SYS.stats", False),
        ("$SYS.>", "$SYS.stats", True),
        ("$SYS.*", "$SYS.stats", True),
        (">", "a.$b", True),
    ]:
        assert matches(pattern, subject) is expected, (pattern, subject)


@pytest.mark.parametrize("subject", ["", "a..b", "a.*", "a.>", "a b", "a\tb", "a*"])
def test_match_refuses_invalid_subjects(subject: str) -> None:
    table: RoutingTable[Sub] = RoutingTable()
    table.insert(Sub("all"), ">")
    with pytest.raises(SubjectError):
        table.match(subject)
    # Refused subjects are never cached: they are refused every time.
    with pytest.raises(SubjectError):
        table.match(subject)


@pytest.mark.parametrize("subject", [None, 1, b"a", ["a"]])
def test_match_refuses_non_str(subject: object) -> None:
    table: RoutingTable[Sub] = RoutingTable()
    with pytest.raises(SubjectError, match="subject must be a str"):
        table.match(subject)  # type: ignore[arg-type]


def test_match_uses_the_table_limits() -> None:
    table: RoutingTable[Sub] = RoutingTable(max_subject_length=8, max_subject_tokens=3)
    table.match("a.b.cdef")
    with pytest.raises(SubjectError, match="at most 8 bytes in UTF-8, got 9"):
        table.match("a.b.cdefg")
    with pytest.raises(SubjectError, match="at most 3 tokens, got 4"):
        table.match("a.b.c.d")


# --- insert, remove, discard --------------------------------------------------------------


def test_len_and_contains() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    a, b = subs("a", "b")
    assert len(table) == 0 and a not in table
    table.insert(a, "x")
    table.insert(b, "x", queue="q")
    assert len(table) == 2 and a in table and b in table
    table.remove(a)
    assert len(table) == 1 and a not in table and b in table
    assert "x" not in table


def test_insert_twice_is_refused() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    (a,) = subs("a")
    table.insert(a, "x")
    with pytest.raises(ValueError, match="already in the routing table"):
        table.insert(a, "y")
    assert table.match("x").plain == (a,)
    assert not table.match("y")


@pytest.mark.parametrize("pattern", ["", "a..b", "a*", ">.a", "a b", "a\t"])
def test_insert_refuses_invalid_patterns(pattern: str) -> None:
    table: RoutingTable[Sub] = RoutingTable()
    (a,) = subs("a")
    with pytest.raises(SubjectError):
        table.insert(a, pattern)
    assert a not in table and len(table) == 0


def test_insert_uses_the_table_limits() -> None:
    table: RoutingTable[Sub] = RoutingTable(max_subject_length=7, max_subject_tokens=3)
    table.insert(Sub("ok"), "abc.*.>")
    with pytest.raises(SubjectError, match="at most 7 bytes in UTF-8, got 8"):
        table.insert(Sub("long"), "abcd.*.>")
    with pytest.raises(SubjectError, match="at most 3 tokens"):
        table.insert(Sub("deep"), "a.*.*.>")


@pytest.mark.parametrize(
    ("queue", "message"),
    [
        ("", "queue name must not be empty: ''"),
        ("a b", "queue name must not contain whitespace or control characters, found ' '"),
        ("a\tb", "queue name must not contain whitespace or control characters, found '\\t'"),
        ("q\x00", "queue name must not contain whitespace or control characters"),
        ("q\u3000", "queue name must not contain whitespace or control characters"),
        (3, "queue name must be a str, not int: 3"),
    ],
)
def test_insert_refuses_invalid_queue_names(queue: object, message: str) -> None:
    table: RoutingTable[Sub] = RoutingTable()
    (a,) = subs("a")
    with pytest.raises(SubjectError, match=re.escape(message)):
        table.insert(a, "x", queue=queue)  # type: ignore[arg-type]
    assert a not in table


@pytest.mark.parametrize("queue", ["workers", "a.b", "*", "日本", "$q"])
def test_queue_names_are_free_form_without_whitespace(queue: str) -> None:
    table: RoutingTable[Sub] = RoutingTable()
    table.insert(Sub("a"), "x", queue=queue)
    assert table.match("x").groups[0].name == queue


def test_remove_unknown_raises_and_discard_does_not() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    a, b = subs("a", "b")
    table.insert(a, "x")
    with pytest.raises(KeyError):
        table.remove(b)
    table.discard(b)
    table.discard(a)
    assert a not in table
    table.discard(a)
    with pytest.raises(KeyError):
        table.remove(a)


def test_a_removed_subscriber_may_be_inserted_again() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    (a,) = subs("a")
    table.insert(a, "x")
    table.remove(a)
    table.insert(a, "y", queue="q")
    assert not table.match("x")
    assert table.match("y").groups[0].members == (a,)


def test_remove_prunes_empty_nodes() -> None:
    # Pruning is only visible as memory, so this looks at the trie's dicts.
    table: RoutingTable[Sub] = RoutingTable()
    patterns = ["a", "a.b.c", "a.*.c", "*.>", ">", "a.b.>", "*", "a.b.c"]
    members = [Sub(p) for p in patterns]
    for sub, pattern in zip(members, patterns, strict=True):
        table.insert(sub, pattern, queue="q" if len(pattern) % 2 else None)
    for sub in reversed(members[::2]):
        table.remove(sub)
    for sub in members[1::2]:
        table.remove(sub)
    assert (table._children, table._subs, table._tail) == ({}, {}, {})
    assert (table._subscriber, table._pattern, table._queue, table._served) == ({}, {}, {}, {})


def test_wildcard_subscriptions_add_no_objects_the_garbage_collector_walks() -> None:
    # Each full collection walks every tracked object: a trie of node objects made 4,096
    # subscriptions {a,*}^12.z some 30,000 of them, and 65,536 made 460,000 (280 ms a pass).
    table: RoutingTable[Sub] = RoutingTable()
    members = [Sub(str(n)) for n in range(4096)]
    patterns = [".".join(bits) + ".z" for bits in itertools.product("a*", repeat=12)]
    gc.collect()
    before = len(gc.get_objects())
    for sub, pattern in zip(members, patterns, strict=True):
        table.insert(sub, pattern, queue="q" if sub.name.endswith("7") else None)
    found = table.match("a.a.a.a.a.a.a.a.a.a.a.a.z")
    assert len(found.plain) + len(found.groups[0].members) == 4096
    gc.collect()
    assert len(gc.get_objects()) - before < 50


def test_a_group_held_across_a_removal_passes_over_the_member_that_left() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    a, b, c = subs("a", "b", "c")
    for sub in (a, b, c):
        table.insert(sub, "q", queue="g")
    (group,) = table.match("q").groups
    assert [group.choose() for _ in range(3)] == [a, b, c]
    table.remove(a)
    assert [group.choose() for _ in range(4)] == [b, c, b, c]
    table.remove(b)
    table.remove(c)
    assert group.choose() is None


def test_constructor_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="cache_size must be an int >= 0: -1"):
        RoutingTable(cache_size=-1)
    with pytest.raises(ValueError, match="max_subject_length must be an int >= 1: 0"):
        RoutingTable(max_subject_length=0)
    with pytest.raises(ValueError, match="max_subject_tokens must be an int >= 1: 0"):
        RoutingTable(max_subject_tokens=0)


# --- queue groups -------------------------------------------------------------------------


def test_each_group_gets_exactly_one_copy_and_plain_subscribers_get_all() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    w1, w2, w3, l1, l2, p1, p2 = subs("w1", "w2", "w3", "l1", "l2", "p1", "p2")
    for sub in (w1, w2, w3):
        table.insert(sub, "orders.created", queue="workers")
    table.insert(l1, "orders.*", queue="loggers")
    table.insert(p1, "orders.created")
    table.insert(l2, "orders.>", queue="loggers")
    table.insert(p2, ">")
    received: Counter[Sub] = Counter()
    for _ in range(60):
        found = table.match("orders.created")
        assert found.plain == (p1, p2)
        assert [g.name for g in found.groups] == ["workers", "loggers"]
        received.update(found.plain)
        for group in found.groups:
            chosen = group.choose()
            assert chosen in group.members
            received[chosen] += 1
    assert received == {p1: 60, p2: 60, w1: 20, w2: 20, w3: 20, l1: 30, l2: 30}


def test_round_robin_spreads_exactly_evenly_in_subscription_order() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    members = subs("a", "b", "c")
    for sub in members:
        table.insert(sub, "svc", queue="q")
    (group,) = table.match("svc").groups
    assert group.members == tuple(members)
    chosen = [group.choose() for _ in range(300)]
    assert chosen[:6] == members + members
    assert Counter(chosen) == dict.fromkeys(members, 100)


def test_skip_passes_over_members_without_charging_them() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    a, b, c = subs("a", "b", "c")
    for sub in (a, b, c):
        table.insert(sub, "svc", queue="q")
    (group,) = table.match("svc").groups
    busy = {b}
    chosen = [group.choose(busy.__contains__) for _ in range(300)]
    assert Counter(chosen) == {a: 150, c: 150}
    # b was never charged, so once it is free it is first in line, then rotation resumes.
    assert [group.choose() for _ in range(4)] == [b, a, c, b]


def test_skip_everyone_returns_none_and_charges_nobody() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    a, b = subs("a", "b")
    table.insert(a, "svc", queue="q")
    table.insert(b, "svc", queue="q")
    (group,) = table.match("svc").groups
    assert group.choose() is a
    seen: list[Sub] = []

    def refuse(member: Sub) -> bool:
        seen.append(member)
        return True

    assert group.choose(refuse) is None
    assert seen == [b, a]  # least recently chosen first, each asked once
    assert group.choose() is b


def test_round_robin_survives_cache_invalidation() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    a, b, c = subs("a", "b", "c")
    for sub in (a, b, c):
        table.insert(sub, "svc", queue="q")
    before = table.match("svc")
    assert before.groups[0].choose() is a
    table.insert(Sub("plain"), "svc")  # invalidates the cached match for "svc"
    after = table.match("svc")
    assert after is not before
    assert [after.groups[0].choose() for _ in range(3)] == [b, c, a]
    # A stale Match (held by a publisher mid fan-out) shares the same record.
    assert before.groups[0].choose() is b


def test_new_member_is_served_next_then_joins_the_rotation() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    a, b, c = subs("a", "b", "c")
    table.insert(a, "svc", queue="q")
    table.insert(b, "svc", queue="q")
    assert [table.match("svc").groups[0].choose() for _ in range(3)] == [a, b, a]
    table.insert(c, "svc", queue="q")
    assert [table.match("svc").groups[0].choose() for _ in range(6)] == [c, b, a, c, b, a]


def test_removed_member_is_no_longer_chosen() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    a, b, c = subs("a", "b", "c")
    for sub in (a, b, c):
        table.insert(sub, "svc", queue="q")
    table.remove(b)
    (group,) = table.match("svc").groups
    assert group.members == (a, c)
    assert Counter(group.choose() for _ in range(10)) == {a: 5, c: 5}
    table.remove(a)
    table.remove(c)
    assert not table.match("svc")


def test_group_with_members_on_different_patterns() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    star, exact, tail, elsewhere = subs("star", "exact", "tail", "elsewhere")
    table.insert(star, "a.*", queue="q")
    table.insert(exact, "a.b", queue="q")
    table.insert(tail, "a.>", queue="q")
    table.insert(elsewhere, "z", queue="q")
    (ab,) = table.match("a.b").groups
    (ac,) = table.match("a.c").groups
    (abc,) = table.match("a.b.c").groups
    assert ab.members == (star, exact, tail)
    assert ac.members == (star, tail)
    assert abc.members == (tail,)
    assert Counter(ab.choose() for _ in range(300)) == {star: 100, exact: 100, tail: 100}


def test_members_shared_by_several_subjects_are_not_overloaded() -> None:
    # The record is per member, not per subject: a member that gets every "a.c" message is
    # behind in line for "a.b", so each member ends up with the same share of the traffic.
    table: RoutingTable[Sub] = RoutingTable()
    star, exact = subs("star", "exact")
    table.insert(star, "a.*", queue="q")
    table.insert(exact, "a.b", queue="q")
    received: Counter[Sub | None] = Counter()
    for _ in range(100):
        for subject in ("a.b", "a.c"):
            (group,) = table.match(subject).groups
            received[group.choose()] += 1
    assert received == {star: 101, exact: 99}


def test_groups_with_the_same_name_on_different_subjects_are_one_group() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    a, b, c = subs("a", "b", "c")
    table.insert(a, "x.*", queue="q")
    table.insert(b, "x.y", queue="other")
    table.insert(c, "x.y", queue="q")
    groups = table.match("x.y").groups
    assert [(g.name, g.members) for g in groups] == [("q", (a, c)), ("other", (b,))]


# --- the cache ----------------------------------------------------------------------------


def test_cache_hit_returns_the_identical_match() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    table.insert(Sub("a"), "x.*", queue="q")
    first = table.match("x.y")
    assert table.match("x.y") is first
    assert table.match("x.y").groups[0] is first.groups[0]


def test_match_objects_are_immutable() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    table.insert(Sub("a"), "x", queue="q")
    found = table.match("x")
    with pytest.raises(AttributeError):
        found.plain = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        found.groups[0].members = ()  # type: ignore[misc]
    assert isinstance(found, Match) and isinstance(found.groups[0], QueueGroup)


@pytest.mark.parametrize("pattern", ["x.y", "x.*", "*.y", "*.*", "x.>", ">", "*.>"])
def test_subscription_added_after_caching_is_seen_and_removal_too(pattern: str) -> None:
    table: RoutingTable[Sub] = RoutingTable()
    old, new = subs("old", "new")
    table.insert(old, "x.y")
    assert table.match("x.y").plain == (old,)
    table.insert(new, pattern)
    assert table.match("x.y").plain == (old, new)
    table.remove(old)
    assert table.match("x.y").plain == (new,)
    table.remove(new)
    assert not table.match("x.y")


def test_queue_member_added_after_caching_is_seen() -> None:
    table: RoutingTable[Sub] = RoutingTable()
    a, b = subs("a", "b")
    table.insert(a, "svc.*", queue="q")
    assert table.match("svc.x").groups[0].members == (a,)
    table.insert(b, "svc.>", queue="q")
    assert table.match("svc.x").groups[0].members == (a, b)


_CACHED = ["a.b", "a.c", "a.b.c", "x.b", "x.y", "$SYS.x"]


@pytest.mark.parametrize(
    ("pattern", "dropped"),
    [
        ("a.b", {"a.b"}),
        ("q.r", set()),
        # A wildcard change empties the cache rather than searching it: the search cost the
        # whole cache on every SUB and UNSUB, which any client could repeat at will.
        ("a.*", set(_CACHED)),
        ("a.>", set(_CACHED)),
        ("*.b", set(_CACHED)),
        ("*.*.c", set(_CACHED)),
        (">", set(_CACHED)),
        ("$SYS.*", set(_CACHED)),
    ],
)
def test_a_literal_change_drops_its_subject_and_a_wildcard_change_empties_the_cache(
    pattern: str, dropped: set[str]
) -> None:
    table: RoutingTable[Sub] = RoutingTable()
    table.insert(Sub("everything"), ">")
    table.insert(Sub("system"), "$SYS.>")  # ">" does not match reserved subjects
    cached = _CACHED

    def snapshot() -> dict[str, Match[Sub]]:
        return {subject: table.match(subject) for subject in cached}

    def dropped_by(before: dict[str, Match[Sub]]) -> set[str]:
        after = snapshot()
        return {s for s in cached if after[s] is not before[s]}

    sub = Sub("changing")
    before = snapshot()
    table.insert(sub, pattern)
    assert dropped_by(before) == dropped
    before = snapshot()
    table.remove(sub)
    assert dropped_by(before) == dropped


def test_cache_is_bounded_and_evicts_the_oldest() -> None:
    table: RoutingTable[Sub] = RoutingTable(cache_size=4)
    table.insert(Sub("all"), ">")
    subjects = [f"s.{i}" for i in range(100)]
    first = {s: table.match(s) for s in subjects}
    # Hits change nothing, so the newest four can all be checked first.
    for s in subjects[-4:]:
        assert table.match(s) is first[s]
    # A retained entry would come back identical; every older one was evicted.
    for s in subjects[:-4]:
        assert table.match(s) is not first[s]


def test_cache_evicts_in_insertion_order() -> None:
    table: RoutingTable[Sub] = RoutingTable(cache_size=2)
    table.insert(Sub("all"), ">")
    a = table.match("a")
    b = table.match("b")
    assert table.match("a") is a  # a hit does not refresh "a"
    table.match("c")  # evicts "a", the oldest
    assert table.match("b") is b
    assert table.match("a") is not a


def test_cache_can_be_disabled() -> None:
    table: RoutingTable[Sub] = RoutingTable(cache_size=0)
    (a,) = subs("a")
    table.insert(a, "x")
    assert table.match("x") is not table.match("x")
    assert table.match("x").plain == (a,)


# --- the trie against a plain reference matcher -------------------------------------------


def reference_matches(pattern: str, subject: str) -> bool:
    regex = r"\.".join(
        "[^.]+" if t == "*" else ".+" if t == ">" else re.escape(t) for t in pattern.split(".")
    )
    return re.fullmatch(regex, subject) is not None


subject_tokens = st.sampled_from(["a", "b", "c"])
subject_strategy = st.lists(subject_tokens, min_size=1, max_size=4).map(".".join)
pattern_strategy = st.builds(
    lambda body, tail: ".".join(body + tail),
    st.lists(st.sampled_from(["a", "b", "*"]), min_size=0, max_size=3),
    st.sampled_from([[], [">"]]),
).filter(bool)
queue_strategy = st.sampled_from([None, None, "q1", "q2"])
SMALL_SUBJECTS = [".".join(t) for n in (1, 2, 3) for t in itertools.product("ab", repeat=n)]


class RoutingMachine(RuleBasedStateMachine):
    """Random inserts, removes and matches, checked against a list of live subscriptions."""

    subscriptions = Bundle("subscriptions")

    def __init__(self) -> None:
        super().__init__()
        self.table: RoutingTable[Sub] = RoutingTable()
        self.live: dict[Sub, tuple[str, str | None]] = {}  # in subscription order
        self.count = 0

    @initialize(cache_size=st.sampled_from([0, 3, 4096]))
    def make_table(self, cache_size: int) -> None:
        self.table = RoutingTable(cache_size=cache_size)

    @rule(target=subscriptions, pattern=pattern_strategy, queue=queue_strategy)
    def insert(self, pattern: str, queue: str | None) -> Sub:
        self.count += 1
        sub = Sub(f"{self.count}:{pattern}:{queue}")
        self.table.insert(sub, pattern, queue)
        self.live[sub] = (pattern, queue)
        return sub

    @rule(sub=consumes(subscriptions))
    def remove(self, sub: Sub) -> None:
        self.table.remove(sub)
        del self.live[sub]

    @rule(subject=subject_strategy)
    def match(self, subject: str) -> None:
        self.check(subject)

    @rule()
    def match_small_subjects(self) -> None:
        # Matching every small subject caches them all, so the next insert or remove must
        # invalidate exactly the right ones for the following check to pass.
        for subject in SMALL_SUBJECTS:
            self.check(subject)

    def check(self, subject: str) -> None:
        found = self.table.match(subject)
        hits = [(s, q) for s, (p, q) in self.live.items() if reference_matches(p, subject)]
        assert found.plain == tuple(s for s, q in hits if q is None)
        expected: dict[str, list[Sub]] = {}
        for s, q in hits:
            if q is not None:
                expected.setdefault(q, []).append(s)
        assert [(g.name, list(g.members)) for g in found.groups] == list(expected.items())
        assert bool(found) == bool(hits)
        for group in found.groups:
            assert group.choose() in group.members

    @invariant()
    def sizes_agree(self) -> None:
        assert len(self.table) == len(self.live)
        if not self.live:
            assert (self.table._children, self.table._subs, self.table._tail) == ({}, {}, {})


RoutingMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_routing_table_agrees_with_reference = RoutingMachine.TestCase


def test_a_wildcard_change_costs_no_search_of_a_full_cache() -> None:
    table: RoutingTable[Sub] = RoutingTable(cache_size=4096)
    everything, star = subs("all", "star")
    table.insert(everything, ">")
    for index in range(4096):
        table.match(f"s.{index}")
    assert len(table._cache) == 4096
    table.insert(star, "*.7")  # one step, whatever the cache holds
    assert len(table._cache) == 0
    assert table.match("s.7").plain == (everything, star)
    table.remove(star)
    assert table.match("s.7").plain == (everything,)
