"""The retained store and the retain/retained flags of the codec: pure, no sockets."""

from __future__ import annotations

import ast
from pathlib import Path

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
from broker.retained import RetainedStore
from broker.subjects import matches


def store(subjects: int = 10, size: int = 1000) -> RetainedStore[str]:
    return RetainedStore(max_subjects=subjects, max_bytes=size)


def test_put_get_replace_delete_keep_the_books() -> None:
    kept = store()
    assert kept.put("a.b", "one", 10) is None
    assert kept.put("a.c", "two", 20) is None
    assert (kept.subjects, kept.bytes, kept.get("a.b")) == (2, 30, "one")
    assert kept.put("a.b", "three", 5) is None  # a replacement counts the difference
    assert (kept.subjects, kept.bytes, kept.get("a.b")) == (2, 25, "three")
    assert kept.delete("a.b") is True
    assert kept.delete("a.b") is False
    assert kept.delete("nothing.here") is False
    assert (kept.subjects, kept.bytes, kept.get("a.b"), kept.get("a.c")) == (1, 20, None, "two")
    assert kept.delete("a.c") is True
    assert (kept.subjects, kept.bytes, len(kept)) == (0, 0, 0)
    assert kept._root.children == {}, "empty branches are pruned"


def test_a_subject_and_its_parent_are_separate_entries() -> None:
    kept = store()
    kept.put("a", "parent", 1)
    kept.put("a.b", "child", 1)
    kept.delete("a")
    assert kept.get("a.b") == "child"
    assert kept.matching(">") == [("a.b", "child")]


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
    kept = store(size=100)
    assert kept.put("a", "x", 60) is None
    assert kept.put("b", "x", 40) is None
    assert kept.bytes == 100
    problem = kept.put("c", "x", 1)
    assert problem is not None and "more than max_retained_bytes (100)" in problem
    problem = kept.put("a", "x", 61)
    assert problem is not None and "101 bytes" in problem
    assert kept.get("a") == "x" and kept.bytes == 100, "a refused put changes nothing"
    assert kept.put("a", "smaller", 10) is None
    assert kept.bytes == 50


def test_zero_subjects_turns_retention_off() -> None:
    kept = store(subjects=0)
    problem = kept.put("a", "x", 1)
    assert problem == "retained messages are turned off (max_retained_subjects is 0)"


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


def test_deep_subjects_need_no_recursion() -> None:
    kept = store()
    deep = ".".join(["t"] * 1024)
    kept.put(deep, "deep", 1)
    assert kept.matching(">") == [(deep, "deep")]
    assert kept.matching(".".join(["*"] * 1024)) == [(deep, "deep")]
    assert kept.delete(deep)


tokens = st.sampled_from(["a", "b", "c"])
subjects = st.lists(tokens, min_size=1, max_size=4).map(".".join)
patterns = st.lists(st.sampled_from(["a", "b", "c", "*"]), min_size=1, max_size=4).map(
    lambda parts: ".".join(parts)
) | st.lists(st.sampled_from(["a", "b", "*"]), min_size=0, max_size=3).map(
    lambda parts: ".".join([*parts, ">"])
)


@given(st.lists(st.tuples(subjects, st.booleans()), max_size=30), patterns)
def test_matching_agrees_with_the_subject_rules(ops: list[tuple[str, bool]], pattern: str) -> None:
    kept = store(subjects=1000, size=10**6)
    reference: dict[str, str] = {}
    for subject, keep in ops:
        if keep:
            kept.put(subject, subject, 1)
            reference[subject] = subject
        else:
            kept.delete(subject)
            reference.pop(subject, None)
    assert (kept.subjects, kept.bytes) == (len(reference), len(reference))
    expected = sorted((s, v) for s, v in reference.items() if matches(pattern, s))
    assert kept.matching(pattern) == expected


def test_retained_module_is_pure() -> None:
    source = Path(__file__).resolve().parent.parent.joinpath("broker/retained.py").read_text()
    imported = {
        node.module or ""
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom)
    } | {
        alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not {name.split(".")[0] for name in imported} & {"trio", "socket", "anyio"}


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
