"""Per-subject permissions: allow and deny patterns, decided once per subject and cached.

The rules follow NATS's model, which pub/sub users already know:

- A rule set (`Rules`) holds ``allow`` and ``deny`` patterns for one operation. An empty
  ``allow`` allows every subject; ``deny`` wins over ``allow``.
- ``$SYS`` is the broker's own: a subject whose first token is ``$SYS`` is allowed only by an
  allow pattern whose first token is ``$SYS`` itself. So ``allow = [">"]`` (or no allow list)
  never reaches it, and nobody reads the broker's events by accident of a wildcard.
- A subscription is allowed only where every subject its pattern can match is allowed: the
  union of the allow patterns must cover it (``orders.>`` is refused to a client allowed
  ``orders.eu.>`` only). It is refused outright if the deny patterns cover it, and if it merely
  overlaps a deny pattern (``orders.>`` against a deny of ``orders.audit``), or reaches into
  ``$SYS`` through a wildcard first token, it is *filtered*: each message is checked against
  the rules before delivery, so denied subjects never reach it.
- ``allow_responses`` lets a client publish to the reply subject of a request it received,
  ``max`` times within ``expires`` seconds, with no publish permission for that subject.

Decisions are cached per subject (and per pattern for subscriptions) in bounded dicts shared
by every connection with the same rules, so a publish costs one dict lookup, not a walk over
the patterns. `ClientPermissions` is one connection's view: the shared `Permissions` plus the
reply subjects it may still answer. It is what `broker.hub.Subscriber.permissions` holds.

Pure: no trio, anyio or socket.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Final, TypeVar, final

from .config import PermissionsConfig, ResponsesConfig, RulesConfig
from .subjects import matches

__all__ = [
    "MAX_CACHED_DECISIONS",
    "MAX_PENDING_RESPONSES",
    "SYSTEM_TOKEN",
    "ClientPermissions",
    "Permissions",
    "Rules",
    "Verdict",
    "covers",
    "overlaps",
]

#: The first token of the broker's own subjects, reachable only when explicitly allowed.
SYSTEM_TOKEN: Final = "$SYS"
#: Decisions one `Permissions` caches per kind before starting afresh: a client publishing to
#: ever-new subjects costs a pattern walk each, never unbounded memory.
MAX_CACHED_DECISIONS: Final = 4096
#: Reply subjects one connection remembers for ``allow_responses``; past it the oldest is
#: forgotten (a responder with more requests in flight than this cannot answer the oldest).
MAX_PENDING_RESPONSES: Final = 65_536


class Verdict(Enum):
    """What a subscription's pattern may do under a rule set."""

    ALLOW = "allow"
    """Every subject it can match is allowed."""
    FILTER = "filter"
    """Allowed, but some subjects it matches are denied: check each message."""
    DENY = "deny"
    """Refused."""


def covers(patterns: Iterable[str], pattern: str) -> bool:
    """Whether every subject `pattern` matches is matched by at least one of `patterns`.

    Exact for the union, not only for one pattern at a time: ``a.*`` and ``a.*.>`` together
    cover ``a.>``. A wildcard token in `pattern` can only be covered by wildcards, since a
    token can take more values than any list of literals names.

    Example:
        >>> covers(["orders.>"], "orders.*.new"), covers(["orders.eu.>"], "orders.>")
        (True, False)
    """
    return _covers([p.split(".") for p in patterns], pattern.split("."), 0)


def _covers(candidates: list[list[str]], target: list[str], start: int) -> bool:
    for i in range(start, len(target)):
        if any(len(p) > i and p[i] == ">" for p in candidates):
            return True  # `target` has at least one token from i on, and ">" takes them all
        token = target[i]
        if token == ">":
            # One token here, then either the end or more tokens: both must be covered.
            wild = [p for p in candidates if len(p) > i and p[i] == "*"]
            return any(len(p) == i + 1 for p in wild) and _covers(
                wild, [*target[:i], "*", ">"], i + 1
            )
        if token == "*":
            candidates = [p for p in candidates if len(p) > i and p[i] == "*"]
        else:
            candidates = [p for p in candidates if len(p) > i and p[i] in ("*", token)]
        if not candidates:
            return False
    return any(len(p) == len(target) for p in candidates)


def overlaps(first: str, second: str) -> bool:
    """Whether some subject is matched by both patterns.

    Example:
        >>> overlaps("orders.>", "*.audit"), overlaps("orders.>", "orders")
        (True, False)
    """
    a, b = first.split("."), second.split(".")
    for x, y in zip(a, b, strict=False):
        if x == ">" or y == ">":
            return True
        if x != y and x != "*" and y != "*":
            return False
    return len(a) == len(b)


def _is_system(pattern: str) -> bool:
    return pattern.split(".", 1)[0] == SYSTEM_TOKEN


@final
class Rules:
    """One operation's allow and deny patterns, with the `$SYS` rule applied.

    Attributes:
        allow: Patterns outside ``$SYS`` that are allowed; empty with `allow_all`.
        system_allow: Allow patterns whose first token is ``$SYS``.
        deny: Denied patterns (a deny of ``>`` covers ``$SYS`` too).
        allow_all: No allow list was given: everything outside ``$SYS`` is allowed.
    """

    __slots__ = ("allow", "allow_all", "deny", "system_allow")

    def __init__(self, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        allowed = list(allow)
        self.allow_all = not allowed
        self.allow = tuple(p for p in allowed if not _is_system(p))
        self.system_allow = tuple(p for p in allowed if _is_system(p))
        self.deny = tuple(deny)

    @classmethod
    def from_config(cls, config: RulesConfig) -> Rules:
        return cls(config.allow, config.deny)

    def allows(self, subject: str) -> bool:
        """Whether a concrete subject is allowed (uncached; see `Permissions`)."""
        if _is_system(subject):
            allowed = any(matches(p, subject) for p in self.system_allow)
        else:
            allowed = self.allow_all or any(matches(p, subject) for p in self.allow)
        return allowed and not any(matches(p, subject) for p in self.deny)

    def verdict(self, pattern: str) -> Verdict:
        """Whether a subscription to a valid `pattern` is allowed, filtered or refused."""
        first = pattern.split(".", 1)[0]
        if first == SYSTEM_TOKEN:
            allowed = covers(self.system_allow, pattern)
        else:
            allowed = self.allow_all or covers(self.allow, pattern)
        if not allowed or covers(self.deny, pattern):
            return Verdict.DENY
        if first in ("*", ">") or any(overlaps(p, pattern) for p in self.deny):
            # A wildcard first token also matches $SYS subjects, which only explicit $SYS
            # allows reach: filter rather than refuse, so `>` still works for everything else.
            return Verdict.FILTER
        return Verdict.ALLOW


@final
class Permissions:
    """One user's (or the default) rules, with the caches every connection of it shares.

    Attributes:
        publish: What it may publish.
        subscribe: What it may subscribe to, and receive through a filtered subscription.
        responses: The ``allow_responses`` limits, or None when off.
    """

    __slots__ = ("_received", "_subscribed", "publish", "published", "responses", "subscribe")

    def __init__(
        self,
        publish: Rules | None = None,
        subscribe: Rules | None = None,
        responses: ResponsesConfig | None = None,
    ) -> None:
        self.publish = publish if publish is not None else Rules()
        self.subscribe = subscribe if subscribe is not None else Rules()
        self.responses = responses
        #: subject -> may publish; read directly by `ClientPermissions.may_publish`.
        self.published: dict[str, bool] = {}
        self._received: dict[str, bool] = {}
        self._subscribed: dict[str, Verdict] = {}

    @classmethod
    def from_config(cls, config: PermissionsConfig) -> Permissions:
        return cls(
            Rules.from_config(config.publish),
            Rules.from_config(config.subscribe),
            config.responses,
        )

    def may_publish(self, subject: str) -> bool:
        """Whether publishing to a valid subject is allowed by the publish rules."""
        allowed = self.published.get(subject)
        if allowed is None:
            allowed = _decide(self.published, subject, self.publish.allows)
        return allowed

    def may_receive(self, subject: str) -> bool:
        """Whether a message on `subject` may reach a (filtered) subscription."""
        allowed = self._received.get(subject)
        if allowed is None:
            allowed = _decide(self._received, subject, self.subscribe.allows)
        return allowed

    def subscribe_verdict(self, pattern: str) -> Verdict:
        """Whether a subscription to a valid `pattern` is allowed, filtered or refused."""
        verdict = self._subscribed.get(pattern)
        if verdict is None:
            verdict = _decide(self._subscribed, pattern, self.subscribe.verdict)
        return verdict


_D = TypeVar("_D")


def _decide(cache: dict[str, _D], key: str, decide: Callable[[str], _D]) -> _D:
    """A decision the cache missed: made, and kept (the cache emptied first when full)."""
    decision = decide(key)
    if len(cache) >= MAX_CACHED_DECISIONS:
        cache.clear()
    cache[key] = decision
    return decision


@final
class ClientPermissions:
    """One connection's permissions: its shared `Permissions` and the replies it may send.

    The hub calls `may_publish` for each publish, `subscribe_verdict` for each subscription,
    and, on each delivery to a subscription it guards, `admit` (filter and note the request's
    reply subject for ``allow_responses``).
    """

    __slots__ = ("_clock", "_pending", "_published", "rules")

    def __init__(self, rules: Permissions, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = rules
        self._published = rules.published
        self._clock = clock
        #: reply subject -> [replies left, deadline or 0.0]; insertion-ordered for eviction.
        self._pending: dict[str, list[float]] = {}

    def replace(self, rules: Permissions) -> None:
        """Take new rules (a reload); replies allowed so far stay allowed if responses are."""
        self.rules = rules
        self._published = rules.published
        if rules.responses is None:
            self._pending.clear()

    @property
    def tracks_responses(self) -> bool:
        """Whether deliveries must note reply subjects (``allow_responses`` is on)."""
        return self.rules.responses is not None

    @property
    def pending_responses(self) -> int:
        """Reply subjects it may still answer (expired ones included until looked at)."""
        return len(self._pending)

    def may_publish(self, subject: str) -> bool:
        """Whether this connection may publish to `subject` now; answering a request it
        received uses up one of that request's allowed responses.
        """
        allowed = self._published.get(subject)
        if allowed is None:
            allowed = self.rules.may_publish(subject)
        return allowed or (bool(self._pending) and self._take_response(subject))

    def may_always_publish(self, subject: str) -> bool:
        """Whether the publish rules alone allow `subject`: then every message to it is
        allowed, and none uses up a response (`may_publish` would answer true each time)."""
        allowed = self._published.get(subject)
        return self.rules.may_publish(subject) if allowed is None else allowed

    def subscribe_verdict(self, pattern: str) -> Verdict:
        return self.rules.subscribe_verdict(pattern)

    def may_receive(self, subject: str) -> bool:
        return self.rules.may_receive(subject)

    def note_request(self, reply_to: str) -> None:
        """A request with this reply subject was delivered: it may be answered."""
        responses = self.rules.responses
        if responses is None:
            return
        pending = self._pending
        expires = responses.expires
        pending[reply_to] = [responses.max, self._clock() + expires if expires else 0.0]
        if len(pending) > MAX_PENDING_RESPONSES:
            del pending[next(iter(pending))]

    def _take_response(self, subject: str) -> bool:
        pending = self._pending
        entry = pending.get(subject)
        if entry is None:
            return False
        if entry[1] and self._clock() > entry[1]:
            del pending[subject]
            return False
        entry[0] -= 1
        if entry[0] <= 0:
            del pending[subject]
        return True
