from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.subjects import (
    MAX_SUBJECT_LENGTH,
    MAX_SUBJECT_TOKENS,
    SubjectError,
    is_literal,
    matches,
    validate_pattern,
    validate_queue,
    validate_subject,
)

# Every character refused inside a token: whitespace as str.isspace() sees it, ASCII controls.
FORBIDDEN = sorted(
    {chr(c) for c in range(0x110000) if chr(c).isspace()} | {chr(c) for c in range(0x20)} | {"\x7f"}
)


def test_limits_are_the_documented_defaults() -> None:
    assert MAX_SUBJECT_LENGTH == 256
    assert MAX_SUBJECT_TOKENS == 32


def test_subject_error_is_a_value_error() -> None:
    assert issubclass(SubjectError, ValueError)


# --- validate_subject: accepted ------------------------------------------------------------


@pytest.mark.parametrize(
    "subject",
    [
        "a",
        "orders.eu.created",
        "a-b_c/d:e@f#g!h%i+j=k,l;m~n|o?p'q\"r[s]t{u}v(w)x&y^z`",
        "ünïcødé.日本語.emoji🎉",
        "a.$b",  # '$' is reserved only at the start
        "zero\u200dwidth",  # a format character, not whitespace
        "c1\x80control",  # only ASCII controls are refused
        "x" * MAX_SUBJECT_LENGTH,
        ".".join(["t"] * MAX_SUBJECT_TOKENS),
    ],
)
def test_validate_subject_accepts(subject: str) -> None:
    assert validate_subject(subject) is subject


def test_validate_subject_accepts_str_subclass() -> None:
    class Name(str):
        pass

    assert validate_subject(Name("a.b")) == "a.b"


# --- validate_subject: limits at the edge -------------------------------------------------


def test_length_exactly_at_limit_accepted_one_past_refused() -> None:
    validate_subject("a" * 256)
    with pytest.raises(SubjectError, match=r"at most 256 bytes in UTF-8, got 257"):
        validate_subject("a" * 257)


def test_length_counts_utf8_bytes_not_characters() -> None:
    validate_subject("é" * 128)  # 256 bytes
    with pytest.raises(SubjectError, match=r"at most 256 bytes in UTF-8, got 257"):
        validate_subject("é" * 128 + "a")  # 129 characters, 257 bytes


def test_length_limit_is_a_keyword() -> None:
    assert validate_subject("abc.e", max_length=5) == "abc.e"
    with pytest.raises(SubjectError, match=r"at most 5 bytes in UTF-8, got 6: 'abc.ef'"):
        validate_subject("abc.ef", max_length=5)


def test_tokens_exactly_at_limit_accepted_one_past_refused() -> None:
    validate_subject(".".join("a" * 32))
    with pytest.raises(SubjectError, match=r"at most 32 tokens, got 33"):
        validate_subject(".".join("a" * 33))


def test_token_limit_is_a_keyword() -> None:
    validate_subject("a.b.c", max_tokens=3)
    validate_pattern("a.*.>", max_tokens=3)
    with pytest.raises(SubjectError, match=r"at most 3 tokens, got 4: 'a.b.c.d'"):
        validate_subject("a.b.c.d", max_tokens=3)
    with pytest.raises(SubjectError, match=r"pattern must have at most 3 tokens, got 4"):
        validate_pattern("a.*.b.>", max_tokens=3)


def test_pattern_length_limit() -> None:
    validate_pattern("a" * 252 + ".*.>")  # 256 bytes
    with pytest.raises(SubjectError, match=r"pattern must be at most 256 bytes in UTF-8, got 257"):
        validate_pattern("a" * 253 + ".*.>")


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(SubjectError) as info:
        validate_subject("a" * 100_000)
    assert len(str(info.value)) < 200
    assert "got 100000" in str(info.value)


# --- validate_subject: refused ------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "message"),
    [
        ("", "subject must not be empty: ''"),
        ("a..b", "subject must not contain empty tokens: 'a..b'"),
        (".a", "subject must not contain empty tokens: '.a'"),
        ("a.", "subject must not contain empty tokens: 'a.'"),
        (".", "subject must not contain empty tokens: '.'"),
        ("a b", "must not contain whitespace or control characters, found ' ' at index 1: 'a b'"),
        ("a\tb", r"found '\t' at index 1"),
        ("a.b\n", r"found '\n' at index 3"),
        ("no\u00a0break", r"found '\xa0' at index 2"),
        ("ideo\u3000graphic", r"found '\u3000' at index 4"),
        ("nul\x00", r"found '\x00' at index 3"),
        ("esc\x1b", r"found '\x1b' at index 3"),
        ("del\x7f", r"found '\x7f' at index 3"),
        ("a.*", "subject must not contain wildcards ('*' or '>'), only patterns may: 'a.*'"),
        ("a.>", "subject must not contain wildcards"),
        ("*", "subject must not contain wildcards"),
        ("a*", "'*' and '>' are only allowed as whole tokens, not in 'a*': 'a*'"),
        ("b.>c", "'*' and '>' are only allowed as whole tokens, not in '>c': 'b.>c'"),
        ("$SYS.x", "subjects starting with '$' are reserved for the broker: '$SYS.x'"),
        ("$", "subjects starting with '$' are reserved for the broker"),
        ("bad\ud800", "subject must be valid Unicode text"),
    ],
)
def test_validate_subject_refuses(subject: str, message: str) -> None:
    with pytest.raises(SubjectError, match=re.escape(message)):
        validate_subject(subject)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "subject must be a str, not NoneType: None"),
        (b"a.b", "subject must be a str, not bytes: b'a.b'"),
        (42, "subject must be a str, not int: 42"),
        (["a"], "subject must be a str, not list: ['a']"),
    ],
)
def test_validate_subject_refuses_non_str(value: object, message: str) -> None:
    with pytest.raises(SubjectError, match=re.escape(message)):
        validate_subject(value)
    with pytest.raises(SubjectError, match=re.escape(message.replace("subject", "pattern"))):
        validate_pattern(value)


def test_reserved_subject_allowed_on_request() -> None:
    assert validate_subject("$SYS.stats", allow_reserved=True) == "$SYS.stats"
    # allow_reserved lifts only the '$' rule.
    with pytest.raises(SubjectError, match="empty tokens"):
        validate_subject("$SYS..stats", allow_reserved=True)


def test_every_whitespace_and_control_character_is_refused() -> None:
    assert "\x1c" in FORBIDDEN and "\u2028" in FORBIDDEN and "\x85" in FORBIDDEN
    for ch in FORBIDDEN:
        with pytest.raises(SubjectError, match="whitespace or control"):
            validate_subject(f"a{ch}b")
        with pytest.raises(SubjectError, match="whitespace or control"):
            validate_pattern(f"a.{ch}.>")


def test_every_other_character_is_allowed() -> None:
    forbidden = set(FORBIDDEN) | {".", "*", ">"}
    allowed = "".join(
        chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and chr(c) not in forbidden
    )
    assert validate_subject("a" + allowed, max_length=10**7) is not None


# --- validate_pattern ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    ["a", "*", ">", "a.*", "a.>", "*.b.>", "*.*.*", "$SYS.>", "$SYS.*.stats", "ü.*.日本"],
)
def test_validate_pattern_accepts(pattern: str) -> None:
    assert validate_pattern(pattern) is pattern


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "pattern must not be empty: ''"),
        ("a..*", "pattern must not contain empty tokens: 'a..*'"),
        ("*.", "pattern must not contain empty tokens: '*.'"),
        (".>", "pattern must not contain empty tokens: '.>'"),
        ("a *", "pattern must not contain whitespace or control characters"),
        ("a\t.>", "pattern must not contain whitespace or control characters"),
        ("a*", "'*' and '>' are only allowed as whole tokens, not in 'a*': 'a*'"),
        ("*a.b", "'*' and '>' are only allowed as whole tokens, not in '*a'"),
        (">b", "'*' and '>' are only allowed as whole tokens, not in '>b'"),
        ("a.**", "'*' and '>' are only allowed as whole tokens, not in '**'"),
        (">.a", "'>' must be the last token of a pattern: '>.a'"),
        ("a.>.>", "'>' must be the last token of a pattern: 'a.>.>'"),
        ("a.>.*", "'>' must be the last token of a pattern"),
    ],
)
def test_validate_pattern_refuses(pattern: str, message: str) -> None:
    with pytest.raises(SubjectError, match=re.escape(message)):
        validate_pattern(pattern)


# --- validators agree with a plain statement of the rules --------------------------------


def reference_problem(value: str, *, max_length: int, max_tokens: int, pattern: bool) -> bool:
    """The rules, written as plainly as possible; True if ``value`` breaks one."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return True
    tokens = value.split(".")
    if not value or size > max_length or len(tokens) > max_tokens or "" in tokens:
        return True
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return True
    for i, token in enumerate(tokens):
        wildcard = token == "*" or (token == ">" and i == len(tokens) - 1)
        if ("*" in token or ">" in token) and not (pattern and wildcard):
            return True
    return False


# Mostly subject-like text, with every kind of trouble mixed in at a low rate.
text = st.text(
    alphabet=st.sampled_from(
        ["a", "b", "é", "日", ".", ".", "*", ">", "$", " ", "\t", "\x00", "\x7f", "\ud800"]
    ),
    max_size=12,
)


@settings(max_examples=500, deadline=None)
@given(text, st.integers(1, 12), st.integers(1, 6), st.booleans())
def test_validate_subject_agrees_with_reference(
    value: str, max_length: int, max_tokens: int, allow_reserved: bool
) -> None:
    bad = reference_problem(value, max_length=max_length, max_tokens=max_tokens, pattern=False)
    bad = bad or (not allow_reserved and value.startswith("$"))
    try:
        validate_subject(
            value, max_length=max_length, max_tokens=max_tokens, allow_reserved=allow_reserved
        )
    except SubjectError:
        assert bad
    else:
        assert not bad


@settings(max_examples=500, deadline=None)
@given(text, st.integers(1, 12), st.integers(1, 6))
def test_validate_pattern_agrees_with_reference(
    value: str, max_length: int, max_tokens: int
) -> None:
    bad = reference_problem(value, max_length=max_length, max_tokens=max_tokens, pattern=True)
    try:
        validate_pattern(value, max_length=max_length, max_tokens=max_tokens)
    except SubjectError:
        assert bad
    else:
        assert not bad


# --- matches and is_literal ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.b", "a.b.c", False),
        ("a", "a.b", False),
        ("*", "a", True),
        ("*", "a.b", False),
        ("a.*", "a.b", True),
        ("a.*", "a", False),
        ("a.*", "a.b.c", False),
        ("*.b.*", "a.b.c", True),
        ("*.b.*", "a.c.c", False),
        (">", "a", True),
        (">", "a.b.c", True),
        ("a.>", "a", False),  # '>' needs at least one token
        ("a.>", "a.b", True),
        ("a.>", "a.b.c", True),
        ("a.>", "b.c", False),
        ("*.>", "a.b", True),
        ("*.>", "a", False),
        ("a.*.>", "a.b", False),
        (">", "$SYS.x", False),  # a leading wildcard never matches a reserved subject
        ("*.x", "$SYS.x", False),
        ("$SYS.>", "$SYS.x", True),
        ("$SYS.*", "$SYS.x", True),
    ],
)
def test_matches(pattern: str, subject: str, expected: bool) -> None:
    assert matches(pattern, subject) is expected


def reference_matches(pattern: str, subject: str) -> bool:
    regex = r"\.".join(
        "[^.]+" if t == "*" else ".+" if t == ">" else re.escape(t) for t in pattern.split(".")
    )
    return re.fullmatch(regex, subject) is not None


tokens = st.sampled_from(["a", "b", "c"])
subject_strategy = st.lists(tokens, min_size=1, max_size=4).map(".".join)
pattern_strategy = st.builds(
    lambda body, tail: ".".join(body + tail),
    st.lists(st.sampled_from(["a", "b", "*"]), min_size=0, max_size=3),
    st.sampled_from([[], [">"]]),
).filter(bool)


@settings(max_examples=300, deadline=None)
@given(pattern_strategy, subject_strategy)
def test_matches_agrees_with_reference(pattern: str, subject: str) -> None:
    assert matches(pattern, subject) == reference_matches(pattern, subject)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [("a", True), ("a.b.$c", True), ("*", False), (">", False), ("a.*.b", False), ("a.>", False)],
)
def test_is_literal(pattern: str, expected: bool) -> None:
    assert is_literal(pattern) is expected


@pytest.mark.parametrize("queue", ["workers", "a.b", "*", ">", "日本", "$q", "x" * 256])
def test_a_queue_name_is_free_form_text(queue: str) -> None:
    assert validate_queue(queue) is queue


def test_a_queue_name_refuses_every_character_a_subject_refuses() -> None:
    for char in FORBIDDEN:
        with pytest.raises(SubjectError, match="queue name must not contain whitespace or control"):
            validate_queue(f"q{char}")


@pytest.mark.parametrize(
    ("queue", "message"),
    [(3, "queue name must be a str, not int: 3"), ("", "queue name must not be empty: ''")],
)
def test_a_queue_name_is_a_non_empty_str(queue: object, message: str) -> None:
    with pytest.raises(SubjectError, match=re.escape(message)):
        validate_queue(queue)


def test_a_queue_name_has_the_subject_length_limit_at_the_edge() -> None:
    assert validate_queue("q" * 256) == "q" * 256
    with pytest.raises(SubjectError, match=r"at most 256 bytes in UTF-8, got 257"):
        validate_queue("q" * 257)
    assert validate_queue("é" * 128) == "é" * 128  # 256 bytes
    with pytest.raises(SubjectError, match=r"got 258"):
        validate_queue("é" * 129)
    assert validate_queue("q" * 17, max_length=17) and validate_queue("q" * 16, max_length=17)
    with pytest.raises(SubjectError) as info:
        validate_queue("q" * 1_000_000)
    assert len(str(info.value)) < 200
