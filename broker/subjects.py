"""Subject and pattern syntax: validation and the wildcard matching rule.

A subject is a non-empty sequence of tokens joined by ``.``, such as ``orders.eu.created``.
Tokens are non-empty, contain no whitespace and no ASCII control characters, and are otherwise
any Unicode. Lengths are counted in UTF-8 bytes because that is what travels on the wire.

Patterns (what subscriptions name) may also use two wildcard tokens: ``*`` matches exactly one
token and ``>`` matches one or more trailing tokens, so it may only be the last token. A wildcard
is always a whole token: ``a*`` and ``>b`` are errors, never literals, and the characters ``*``
and ``>`` cannot appear inside any token of a subject or pattern. Refusing them outright keeps
every published subject reachable by a literal subscription.

Subjects that start with ``$`` are reserved for the broker itself: clients may subscribe to them
but not publish to them, so ``validate_subject`` refuses them unless ``allow_reserved=True``. A
wildcard in the first token (``*``, ``>``) does not match them, as MQTT's ``#`` does not match
``$SYS/...``: a wiretap on ``>`` sees the clients' traffic, not the server's own events; ask for
those by name (``$SYS.>``).

A queue group name is a name, not a subject: any non-empty text without whitespace or control
characters, no longer than a subject may be (``validate_queue``). The client checks it before
sending and the routing table again, with the same rule.

This module does no I/O and never imports trio.
"""

from __future__ import annotations

import re
from typing import Final

from ._text import brief

_SHOW_MAX = 80

__all__ = [
    "MAX_SUBJECT_LENGTH",
    "MAX_SUBJECT_TOKENS",
    "SYS_REQUEST_PREFIX",
    "SubjectError",
    "is_literal",
    "matches",
    "validate_pattern",
    "validate_queue",
    "validate_subject",
]

#: The only reserved (``$``) subjects a client may publish to: requests the server answers
#: (``$SYS.REQ.SERVER.PING.VARZ`` and the like, docs/monitoring.md).
SYS_REQUEST_PREFIX: Final = "$SYS.REQ.SERVER."

MAX_SUBJECT_LENGTH: Final = 256
"""Default limit on a subject or pattern, in UTF-8 bytes."""

MAX_SUBJECT_TOKENS: Final = 32
"""Default limit on the number of tokens in a subject or pattern."""

# \s in a str pattern is exactly str.isspace(); ASCII controls are added explicitly.
_FORBIDDEN_CHAR = re.compile(r"[\s\x00-\x1f\x7f]")

# Values in error messages are cut short: a refused subject may be a megabyte long, and the
# message may be sent back to the client that sent it.


class SubjectError(ValueError):
    """A subject, pattern or queue name breaks the syntax rules.

    The message states the rule and the offending value, so it can be sent to a client as is.
    """


def _show(value: object) -> str:
    text = brief(value)  # bounded work, however large or deep the value
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 3] + "..."


def _check(value: object, *, what: str, max_length: int, max_tokens: int, wildcards: bool) -> str:
    """Check ``value`` against every rule, in a fixed order, and return it.

    This is the authoritative (slow) path; the fast paths below only accept values that this
    function would accept too.
    """
    if not isinstance(value, str):
        raise SubjectError(f"{what} must be a str, not {type(value).__name__}: {_show(value)}")
    if not value:
        raise SubjectError(f"{what} must not be empty: {value!r}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise SubjectError(f"{what} must be valid Unicode text: {_show(value)}") from None
    if size > max_length:
        raise SubjectError(
            f"{what} must be at most {max_length} bytes in UTF-8, got {size}: {_show(value)}"
        )
    tokens = value.split(".")
    if len(tokens) > max_tokens:
        raise SubjectError(
            f"{what} must have at most {max_tokens} tokens, got {len(tokens)}: {_show(value)}"
        )
    if "" in tokens:
        raise SubjectError(f"{what} must not contain empty tokens: {_show(value)}")
    bad = _FORBIDDEN_CHAR.search(value)
    if bad is not None:
        raise SubjectError(
            f"{what} must not contain whitespace or control characters, "
            f"found {bad.group()!r} at index {bad.start()}: {_show(value)}"
        )
    last = len(tokens) - 1
    for i, token in enumerate(tokens):
        if token in ("*", ">"):
            if not wildcards:
                raise SubjectError(
                    f"{what} must not contain wildcards ('*' or '>'), "
                    f"only patterns may: {_show(value)}"
                )
            if token == ">" and i != last:
                raise SubjectError(f"'>' must be the last token of a pattern: {_show(value)}")
        elif "*" in token or ">" in token:
            raise SubjectError(
                f"'*' and '>' are only allowed as whole tokens, not in {token!r}: {_show(value)}"
            )
    return value


def validate_subject(
    subject: object,
    *,
    max_length: int = MAX_SUBJECT_LENGTH,
    max_tokens: int = MAX_SUBJECT_TOKENS,
    allow_reserved: bool = False,
) -> str:
    """Check a concrete subject (a publish subject or a reply-to) and return it.

    This runs for every published message and every reply-to, so the common case (a short
    ASCII subject) is decided by a handful of C-level string checks; anything else takes the
    full rule-by-rule path, which also builds the error message.

    Args:
        subject: The value to check; anything that is not a ``str`` is refused.
        max_length: Limit in UTF-8 bytes.
        max_tokens: Limit on the number of ``.``-separated tokens.
        allow_reserved: Accept subjects starting with ``$`` (the broker's own).

    Returns:
        ``subject``, unchanged.

    Raises:
        SubjectError: If the subject is not a str, is empty, too long, has too many tokens, an
            empty token, whitespace or a control character, a ``*`` or ``>`` anywhere, or starts
            with ``$`` while ``allow_reserved`` is false.
    """
    # For ASCII, isprintable() is exactly 0x20..0x7e and len() is the UTF-8 length.
    if (
        type(subject) is str
        and subject.isascii()
        and 0 < len(subject) <= max_length
        and subject.isprintable()
        and " " not in subject
        and "*" not in subject
        and ">" not in subject
        and ".." not in subject
        and subject[0] != "."
        and subject[-1] != "."
        and subject.count(".") < max_tokens
        and (allow_reserved or subject[0] != "$")
    ):
        return subject
    checked = _check(
        subject, what="subject", max_length=max_length, max_tokens=max_tokens, wildcards=False
    )
    if not allow_reserved and checked.startswith("$"):
        raise SubjectError(
            f"subjects starting with '$' are reserved for the broker: {_show(checked)}"
        )
    return checked


def validate_pattern(
    pattern: object,
    *,
    max_length: int = MAX_SUBJECT_LENGTH,
    max_tokens: int = MAX_SUBJECT_TOKENS,
) -> str:
    """Check a subscription pattern and return it.

    Same rules as ``validate_subject``, except that a token may be the wildcard ``*`` (exactly one
    token) or, as the last token only, ``>`` (one or more tokens). Patterns starting with ``$``
    are allowed: anyone may listen to the broker's subjects.

    Raises:
        SubjectError: If the pattern breaks a rule; ``a*``, ``>b`` and ``>.a`` are errors.
    """
    return _check(
        pattern, what="pattern", max_length=max_length, max_tokens=max_tokens, wildcards=True
    )


def validate_queue(queue: object, *, max_length: int = MAX_SUBJECT_LENGTH) -> str:
    """Check a queue group name and return it.

    Unlike a subject it has no tokens, so dots and ``*`` are plain characters in it; it obeys
    the subjects' length limit, so a client cannot make the table keep (and every match copy)
    a name of a megabyte.

    Raises:
        SubjectError: If the name is not a str, is empty, is longer than `max_length` bytes in
            UTF-8, or contains whitespace or a control character.
    """
    if not isinstance(queue, str):
        raise SubjectError(f"queue name must be a str, not {type(queue).__name__}: {_show(queue)}")
    if not queue:
        raise SubjectError(f"queue name must not be empty: {queue!r}")
    # len() first: a str of n characters holds at least n UTF-8 bytes, so most names are
    # settled without encoding them.
    if len(queue) > max_length or len(queue.encode("utf-8", "surrogatepass")) > max_length:
        size = len(queue.encode("utf-8", "surrogatepass"))
        raise SubjectError(
            f"queue name must be at most {max_length} bytes in UTF-8, got {size}: {_show(queue)}"
        )
    bad = _FORBIDDEN_CHAR.search(queue)
    if bad is not None:
        raise SubjectError(
            "queue name must not contain whitespace or control characters, "
            f"found {bad.group()!r} at index {bad.start()}: {_show(queue)}"
        )
    return queue


def is_literal(pattern: str) -> bool:
    """Return whether a valid pattern has no wildcard tokens, so it matches only itself.

    Relies on the pattern being valid: there ``*`` and ``>`` only ever occur as whole tokens.
    """
    return "*" not in pattern and ">" not in pattern


def matches(pattern: str, subject: str) -> bool:
    """Return whether a valid pattern matches a valid subject, token by token.

    ``*`` matches any one token and a final ``>`` matches one or more tokens; neither matches
    a reserved first token (``>`` does not match ``$SYS.x``; ``$SYS.>`` does).

    Example:
        >>> matches("orders.*.created", "orders.eu.created"), matches("orders.>", "orders")
        (True, False)
    """
    if pattern == subject:
        return True
    if "*" not in pattern and ">" not in pattern:
        return False
    ptokens = pattern.split(".")
    stokens = subject.split(".")
    if stokens[0][:1] == "$" and ptokens[0] in ("*", ">"):
        return False
    if ptokens[-1] == ">":
        if len(stokens) < len(ptokens):
            return False
        ptokens.pop()
    elif len(stokens) != len(ptokens):
        return False
    return all(p == "*" or p == s for p, s in zip(ptokens, stokens, strict=False))
