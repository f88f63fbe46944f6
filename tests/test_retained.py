"""The retained store and the retain/retained flags of the codec: pure, no sockets."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given

from broker.protocol import (
    MSG_GROWTH,
    Connection,
    Encoder,
    Hello,
    Msg,
    Pub,
    Role,
    Welcome,
    encode_retained_tail,
    msg_head,
    msg_prefix,
)
from broker.retained import CHILDREN_COST, ENTRY_COST, NODE_COST, RetainedStore
from broker.subjects import matches


def store(subjects: int = 10, size: int = 10_000) -> RetainedStore[str]:
    return RetainedStore(max_subjects=subjects, max_bytes=size)


def entry(subject: str, size: int) -> int:
    """What an entry is charged beyond its trie nodes."""
    return size + ENTRY_COST + len(subject)


def model_bytes(sizes: dict[str, int]) -> int:
    """`bytes` recomputed from scratch: entries, plus a node per distinct prefix, plus a
    children dict per node (the root included) that has one below it."""
    nodes = {
        tuple(tokens[:depth])
        for tokens in (subject.split(".") for subject in sizes)
        for depth in range(1, len(tokens) + 1)
    }
    with_children = {node[:-1] for node in nodes}
    charged = sum(entry(subject, size) for subject, size in sizes.items())
    return charged + len(nodes) * NODE_COST + len(with_children) * CHILDREN_COST


def test_put_get_replace_delete_keep_the_books() -> None:
    kept = store()
    assert kept.put("a.b", "one", 10) is None
    # nodes a and b; the root and a get children dicts
    assert kept.bytes == 2 * NODE_COST + 2 * CHILDREN_COST + entry("a.b", 10)
    assert kept.put("a.c", "two", 20) is None  # only c is new
    books = 3 * NODE_COST + 2 * CHILDREN_COST + entry("a.b", 10) + entry("a.c", 20)
    assert (kept.subjects, kept.bytes, kept.get("a.b"), kept.get("a")) == (2, books, "one", None)
    assert kept.put("a.b", "three", 5) is None  # a replacement counts the difference
    assert (kept.subjects, kept.bytes, kept.get("a.b")) == (2, books - 5, "three")
    assert kept.delete("a.b") is True
    assert kept.delete("a.b") is False
    assert kept.delete("nothing.here") is False
    assert kept.delete("a") is False, "a node on the way to an entry is not an entry"
    books = 2 * NODE_COST + 2 * CHILDREN_COST + entry("a.c", 20)
    assert (kept.subjects, kept.bytes, kept.get("a.b"), kept.get("a.c")) == (1, books, None, "two")
    assert kept.delete("a.c") is True
    assert (kept.subjects, kept.bytes, len(kept)) == (0, 0, 0)
    assert kept._root.children is None, "empty branches are pruned"


def test_a_subject_and_its_parent_are_separate_entries() -> None:
    kept = store()
    kept.put("a", "parent", 1)
    kept.put("a.b", "child", 1)
    kept.delete("a")
    assert kept.get("a.b") == "child"
    assert kept.matching(">") == [("a.b", "child")]
    assert kept.bytes == 2 * NODE_COST + 2 * CHILDREN_COST + entry("a.b", 1)


def test_deleting_everything_prunes_and_refunds() -> None:
    kept = store(subjects=100)
    subjects = ["a", "a.b", "a.b.c", "a.b.d", "a.x", "b", "b.c.d.e", "long.token.names.here"]
    for size, subject in enumerate(subjects):
        assert kept.put(subject, subject, size) is None
    assert kept.bytes == model_bytes({subject: size for size, subject in enumerate(subjects)})
    kept.delete("a.b.c")
    kept.delete("a.b.d")  # b is an entry, so it stays, but its emptied dict is let go
    root = kept._root.children
    assert root is not None
    below_a = root["a"].children
    assert below_a is not None and below_a["b"].children is None
    remaining = {"a": 0, "a.b": 1, "a.x": 4, "b": 5, "b.c.d.e": 6, "long.token.names.here": 7}
    assert kept.bytes == model_bytes(remaining)
    for subject in ["b.c.d.e", "a", "long.token.names.here", "a.b", "b", "a.x"]:
        assert kept.delete(subject) is True
        del remaining[subject]
        assert kept.bytes == model_bytes(remaining)
    assert (kept.subjects, kept.bytes, kept._root.children) == (0, 0, None)


def test_subject_bound_exactly_at_the_limit_and_one_past() -> None:
    kept = store(subjects=2)
    assert kept.put("s.1", "x", 1) is None
    assert kept.put("s.2", "x", 1) is None
    problem = kept.put("s.3", "x", 1)
    assert problem is not None and "at most 2 subjects (max_retained_subjects)" in problem
    assert kept.get("s.3") is None and kept.subjects == 2
    assert kept.put("s.2", "y", 1) is None, "a full store still takes replacements"
    kept.delete("s.1")
    assert kept.put("s.3", "x", 1) is None


def test_byte_bound_exactly_at_the_limit_and_one_past() -> None:
    a = NODE_COST + CHILDREN_COST + entry("a", 60)  # the root gets its children dict with a
    b = NODE_COST + entry("b", 40)
    kept = store(size=a + b)
    assert kept.put("a", "x", 60) is None
    assert kept.put("b", "x", 40) is None
    assert kept.bytes == a + b
    problem = kept.put("c", "x", 0)  # even an empty value costs a node and an entry
    assert problem == (
        f"retaining 0 bytes on 'c' would hold {a + b + NODE_COST + entry('c', 0)} bytes with "
        f"the store's own structure, more than max_retained_bytes ({a + b})"
    )
    problem = kept.put("a", "x", 61)
    assert problem is not None and f"retaining 61 bytes on 'a' would hold {a + b + 1} " in problem
    assert kept.get("a") == "x" and kept.bytes == a + b, "a refused put changes nothing"
    assert kept.put("a", "smaller", 10) is None
    assert kept.bytes == a + b - 50


def test_only_the_tokens_a_subject_adds_are_charged_at_the_limit_and_one_past() -> None:
    deep = 3 * NODE_COST + 3 * CHILDREN_COST + entry("x.y.z", 10)  # root, x and y get dicts
    problem = store(size=deep - 1).put("x.y.z", "v", 10)
    assert problem is not None and f"would hold {deep} bytes" in problem
    sibling = NODE_COST + entry("x.y.w", 10)  # y has its dict already
    below = NODE_COST + CHILDREN_COST + entry("x.y.z.q", 10)  # the leaf z gets one
    kept = store(size=deep + sibling + below)
    assert kept.put("x.y.z", "v", 10) is None
    assert kept.bytes == deep
    assert kept.put("x.y.w", "v", 10) is None
    assert kept.bytes == deep + sibling
    assert kept.put("x.y.z.q", "v", 10) is None
    assert kept.bytes == deep + sibling + below == kept.max_bytes
    assert kept.delete("x.y.z.q") is True
    kept.max_bytes -= 1
    problem = kept.refusal("x.y.z.q", 10)
    assert problem is not None and f"would hold {deep + sibling + below} bytes" in problem


def test_a_refused_put_leaves_the_books_unchanged() -> None:
    kept = store(subjects=2, size=2 * NODE_COST + 2 * CHILDREN_COST + entry("a.b", 10))
    assert kept.put("a.b", "v", 10) is None
    before = (kept.subjects, kept.bytes, kept.matching(">"))
    assert kept.put("a.c", "v", 0) is not None  # too many bytes, though it adds only c
    assert kept.put("a.b.c.d", "v", 0) is not None  # too many bytes, half-way down a branch
    assert kept.put("a.b", "v", 11) is not None  # a replacement one byte too big
    assert (kept.subjects, kept.bytes, kept.matching(">")) == before
    kept.max_bytes = 10**6
    assert kept.put("z", "v", 0) is None
    before = (kept.subjects, kept.bytes, kept.matching(">"))
    assert kept.put("q.r", "v", 0) is not None  # too many subjects
    assert (kept.subjects, kept.bytes, kept.matching(">")) == before
    assert kept._root.children is not None and sorted(kept._root.children) == ["a", "z"]
    assert kept._root.children["a"].children is not None
    assert kept._root.children["a"].children["b"].children is None, "no node was left behind"


def test_zero_subjects_turns_retention_off() -> None:
    kept = store(subjects=0)
    problem = kept.put("a", "x", 1)
    assert problem == "retained messages are turned off (max_retained_subjects is 0)"
    assert kept.bytes == 0


def test_matching_follows_wildcards_sorted() -> None:
    kept = store(subjects=100)
    for subject in ("a.b.c", "a.x.c", "a.b", "a", "b.b.c", "a.b.c.d"):
        kept.put(subject, subject.upper(), 1)
    assert [s for s, _ in kept.matching("a.*.c")] == ["a.b.c", "a.x.c"]
    assert [s for s, _ in kept.matching("a.>")] == ["a.b", "a.b.c", "a.b.c.d", "a.x.c"]
    assert [s for s, _ in kept.matching("*.b.c")] == ["a.b.c", "b.b.c"]
    assert kept.matching("a") == [("a", "A")]
    assert kept.matching("a.b.c") == [("a.b.c", "A.B.C")]
    assert kept.matching("nope.>") == []
    assert kept.matching("*") == [("a", "A")]
    assert kept.matching("a.b.c.d.>") == [], "a leaf has no children to visit"
    assert store().matching(">") == []


def test_deep_subjects_need_no_recursion() -> None:
    kept = store(size=10**6)
    deep = ".".join(["t"] * 1024)
    assert kept.put(deep, "deep", 1) is None
    assert kept.bytes == 1024 * (NODE_COST + CHILDREN_COST) + entry(deep, 1)
    assert kept.matching(">") == [(deep, "deep")]
    assert kept.matching(".".join(["*"] * 1024)) == [(deep, "deep")]
    assert kept.delete(deep)
    assert kept.bytes == 0


tokens = st.sampled_from(["a", "b", "c"])
subjects = st.lists(tokens, min_size=1, max_size=4).map(".".join)
patterns = st.lists(st.sampled_from(["a", "b", "c", "*"]), min_size=1, max_size=4).map(
    lambda parts: ".".join(parts)
) | st.lists(st.sampled_from(["a", "b", "*"]), min_size=0, max_size=3).map(
    lambda parts: ".".join([*parts, ">"])
)
# A size to put, or None to delete.
operations = st.lists(st.tuples(subjects, st.none() | st.integers(0, 50)), max_size=30)


@given(operations, patterns)
def test_matching_agrees_with_the_subject_rules(
    ops: list[tuple[str, int | None]], pattern: str
) -> None:
    kept = store(subjects=1000, size=10**6)
    reference: dict[str, int] = {}
    for subject, size in ops:
        if size is not None:
            assert kept.put(subject, subject, size) is None
            reference[subject] = size
        else:
            assert kept.delete(subject) is (reference.pop(subject, None) is not None)
    assert (kept.subjects, kept.bytes) == (len(reference), model_bytes(reference))
    expected = sorted((s, s) for s in reference if matches(pattern, s))
    assert kept.matching(pattern) == expected


@given(operations, st.integers(0, 3000))
def test_the_byte_bound_agrees_with_a_model(ops: list[tuple[str, int | None]], limit: int) -> None:
    kept = store(subjects=1000, size=limit)
    reference: dict[str, int] = {}
    for subject, size in ops:
        if size is None:
            kept.delete(subject)
            reference.pop(subject, None)
            continue
        wanted = model_bytes({**reference, subject: size})
        problem = kept.put(subject, subject, size)
        if wanted > limit:
            assert problem is not None and f"would hold {wanted} bytes" in problem
        else:
            assert problem is None
            reference[subject] = size
        assert kept.bytes == model_bytes(reference) <= limit


# -- the codec's flags -----------------------------------------------------------------------


def test_retain_flag_round_trips_and_is_omitted_when_false() -> None:
    encoder = Encoder(Role.CLIENT)
    plain = encoder.send(Pub("a", b"x"))
    assert encoder.send(Pub("a", b"x", retain=False)) == plain
    kept = encoder.send(Pub("a", b"x", retain=True))
    assert len(kept) == len(plain) + 3  # two nils and true
    server = Connection(Role.SERVER)
    server.receive_data(Encoder(Role.CLIENT).send(Hello({"version": 1})) + kept + plain)
    assert server.events() == [
        Hello({"version": 1}),
        Pub("a", b"x", None, None, True),
        Pub("a", b"x"),
    ]


def test_retained_msg_from_the_server_fan_out_parts_decodes_as_retained() -> None:
    tail = encode_retained_tail("k.v", b"value", None, {"h": "1"})
    frame = msg_head(msg_prefix(7, retained=True), len(tail)) + tail
    client = Connection(Role.CLIENT)
    client.receive_data(Encoder(Role.SERVER).send(Welcome({})) + frame)
    assert client.next_event() == Welcome({})
    assert client.next_event() == Msg(7, "k.v", b"value", None, {"h": "1"}, True)


def test_a_retained_replay_grows_no_more_than_msg_growth() -> None:
    pub = Encoder(Role.CLIENT).send(Pub("s", b"p", retain=True))
    tail = encode_retained_tail("s", b"p", None, None)
    replay = msg_head(msg_prefix(2**63 - 1, retained=True), len(tail)) + tail
    assert len(replay) - len(pub) <= MSG_GROWTH
