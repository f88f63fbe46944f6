"""The routing table: which subscribers a published subject goes to.

Subscriptions live in a trie keyed by pattern token. Each node has children by literal token, one
child for ``*``, the subscribers whose pattern ends at the node, and those whose pattern ends
with ``>`` after it. Matching a subject walks only the branches its tokens can reach, so its
cost depends on the subject's depth and the wildcards along it, not on the number of
subscriptions.

Publishers tend to repeat a small set of subjects, so results are cached per subject: a hit is
one dict lookup and returns the same immutable ``Match`` object. The cache is bounded (the oldest
entry goes first). A change to a literal subscription drops only its own subject (request
inboxes come and go without touching the rest); a change to a wildcard subscription empties the
cache, since finding the subjects it matches would cost the whole cache on every change.

The trie is flat: a node is an int, and each kind of link is one dict keyed by node (children
by token, ``*`` among them, since no subject has that token; the subscriptions ending there).
Subscriptions are numbered too (in order of arrival), with their subscriber, pattern and queue
in dicts keyed by number. The cyclic garbage collector does not track a dict holding only ints
and strs at all, while it tracks every node object: 65,536 wildcard subscriptions made some
460,000 tracked objects, and every full collection walked them all (280 ms each, over and over
while they were being made). Flat, the same table adds none.

Queue groups pick one member per message. The state that makes the choice fair (when each
member was last chosen) lives in the table, keyed by the member's number, not in the cached
``Match``: cached results are thrown away whenever a subscription changes, and a counter kept
there would restart at the first member each time, loading it more than the others. It is
per member rather than per subject, so a member that several subjects route to (members of
one group may subscribe with different patterns) is not chosen more often than the rest.

This module does no I/O and never imports trio.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, final

from broker.subjects import (
    MAX_SUBJECT_LENGTH,
    MAX_SUBJECT_TOKENS,
    is_literal,
    validate_pattern,
    validate_queue,
    validate_subject,
)

__all__ = ["PENDING", "Match", "QueueGroup", "RoutingTable", "Walk"]

S = TypeVar("S", bound=Hashable)


#: The root node; nodes are ints handed out in order and never reused (see `Walk`).
_ROOT = 0


@final
@dataclass(frozen=True, slots=True, eq=False)
class QueueGroup(Generic[S]):
    """The members of one queue group that match a subject; each message goes to one of them.

    Attributes:
        name: The queue name the members subscribed with.
        members: The matching members, in subscription order.
    """

    name: str
    members: tuple[S, ...]
    #: The members' subscription numbers, in the same order.
    _seqs: tuple[int, ...] = field(repr=False)
    #: The table's record of when each member was last chosen (a tick of `_clock`).
    _served: dict[int, int] = field(repr=False)
    _tick: Callable[[int], int] = field(repr=False)  # _served.__getitem__, made once
    _clock: itertools.count[int] = field(repr=False)

    def choose(self, skip: Callable[[S], bool] | None = None) -> S | None:
        """Pick the member to deliver the next message to, and record the choice.

        The member chosen least recently (over every subject, not just this one) goes first;
        ties go to the earliest subscriber. With a fixed set of members this is plain
        round-robin: three members and 300 messages give exactly 100 each. The record lives in
        the routing table, so it survives cache invalidation.

        Args:
            skip: Called with candidates in turn; a member for which it returns true is passed
                over and not charged (e.g. a slow consumer with a full outbox).

        Returns:
            The chosen member, or ``None`` if ``skip`` refused every member.
        """
        served = self._served
        seqs = self._seqs
        try:
            best = min(seqs, key=self._tick)
        except KeyError:
            # A member left after this group was matched (its holder kept it across a change).
            return self._choose_carefully(skip, None)
        member = self.members[seqs.index(best)]
        if skip is not None and skip(member):
            return self._choose_carefully(skip, member)
        served[best] = next(self._clock)
        return member

    def _choose_carefully(self, skip: Callable[[S], bool] | None, skipped: S | None) -> S | None:
        """`choose`, passing over `skipped`, whom `skip` refuses (asking each once), and members
        that left the table since this group was matched."""
        served = self._served
        seqs = self._seqs
        live = [index for index in range(len(seqs)) if seqs[index] in served]
        # sorted() is stable, so ties keep subscription order, as min() does.
        for index in sorted(live, key=lambda i: served[seqs[i]]):
            member = self.members[index]
            if member is not skipped and (skip is None or not skip(member)):
                served[seqs[index]] = next(self._clock)
                return member
        return None


@final
@dataclass(frozen=True, slots=True, eq=False)
class Match(Generic[S]):
    """Everyone a subject is routed to. Immutable, and shared between cache hits.

    Attributes:
        plain: Every matching subscriber outside a queue group, in subscription order; each
            gets every message.
        groups: One ``QueueGroup`` per queue name with a matching member, ordered by their
            first member's subscription; each gets one copy of every message.
    """

    plain: tuple[S, ...]
    groups: tuple[QueueGroup[S], ...]

    def __bool__(self) -> bool:
        """False when nobody matches, which is what a "no responders" reply needs."""
        return bool(self.plain or self.groups)


_NO_MATCH: Match[Any] = Match((), ())
#: What `RoutingTable.match_within` returns for a walk it did not finish (see `walk`).
PENDING: Match[Any] = Match((), ())


@final
class RoutingTable(Generic[S]):
    """Subscriptions by pattern, and the subscribers each published subject goes to.

    Subscribers are opaque, compared by hash and equality (the server's are identity-hashed),
    and each may be inserted once, with one pattern and at most one queue name.

    Args:
        max_subject_length: Limit in UTF-8 bytes for patterns and matched subjects.
        max_subject_tokens: Limit on their number of tokens.
        cache_size: How many subjects' matches to keep; 0 disables the cache.

    Raises:
        ValueError: If a limit is not a positive int (``cache_size`` may be 0).
    """

    def __init__(
        self,
        *,
        max_subject_length: int = MAX_SUBJECT_LENGTH,
        max_subject_tokens: int = MAX_SUBJECT_TOKENS,
        cache_size: int = 4096,
    ) -> None:
        for name, value, least in (
            ("max_subject_length", max_subject_length, 1),
            ("max_subject_tokens", max_subject_tokens, 1),
            ("cache_size", cache_size, 0),
        ):
            if type(value) is not int or value < least:
                raise ValueError(f"{name} must be an int >= {least}: {value!r}")
        self._max_length = max_subject_length
        self._max_tokens = max_subject_tokens
        self._cache_size = cache_size
        # The trie: node -> {token or '*': child}, and node -> the subscriptions ending at it,
        # or ending with '>' after it (dicts as ordered sets).
        self._children: dict[int, dict[str, int]] = {}
        self._subs: dict[int, dict[int, None]] = {}
        self._tail: dict[int, dict[int, None]] = {}
        self._nodes = itertools.count(_ROOT + 1)
        # Subscriptions by number (their order of arrival, which orders every match).
        self._seq_of: dict[S, int] = {}
        self._subscriber: dict[int, S] = {}
        self._pattern: dict[int, str] = {}
        self._queue: dict[int, str] = {}  # queue members only
        # When each queue member was last chosen (a tick of `_clock`); 0 = never.
        self._served: dict[int, int] = {}
        self._tick = self._served.__getitem__
        # Not a plain dict: evicting a dict's first key over and over leaves a run of deleted
        # slots that every later eviction scans (measured 4 us per miss at 4096 entries);
        # OrderedDict pops its oldest in O(1), and a hit is the same dict lookup.
        self._cache: OrderedDict[str, Match[S]] = OrderedDict()
        self._seq = itertools.count()
        #: Changes so far; a `Walk` that saw none in between may cache what it found.
        self._generation = 0
        #: The walk `match_within` left unfinished last, for its caller to take at once.
        self.walk: Walk[S] | None = None
        #: For monitoring (/subsz): lookups, lookups the cache missed, inserts and removes.
        #: One add per lookup; the rest are counted off the hot path.
        self.matches = 0
        self.misses = 0
        self.inserts = 0
        self.removes = 0
        # Shared with every QueueGroup this table hands out; starts at 1 so 0 means "never".
        self._clock = itertools.count(1)

    def __len__(self) -> int:
        """The number of subscriptions."""
        return len(self._seq_of)

    def __contains__(self, sub: object) -> bool:
        return sub in self._seq_of

    def insert(self, sub: S, pattern: str, queue: str | None = None) -> None:
        """Subscribe ``sub`` to ``pattern``, optionally as a member of queue group ``queue``.

        Raises:
            SubjectError: If the pattern is invalid, or the queue name is not a non-empty str
                without whitespace or control characters.
            ValueError: If ``sub`` is already in the table.
        """
        validate_pattern(pattern, max_length=self._max_length, max_tokens=self._max_tokens)
        if queue is not None:
            validate_queue(queue, max_length=self._max_length)
        if sub in self._seq_of:
            raise ValueError(f"subscriber is already in the routing table: {sub!r}")
        seq = next(self._seq)
        tokens = pattern.split(".")
        tail = tokens[-1] == ">"
        if tail:
            tokens.pop()
        children = self._children
        node = _ROOT
        for token in tokens:
            links = children.get(node)
            if links is None:
                links = children[node] = {}
            child = links.get(token)
            if child is None:
                child = links[token] = next(self._nodes)
            node = child
        (self._tail if tail else self._subs).setdefault(node, {})[seq] = None
        self._seq_of[sub] = seq
        self._subscriber[seq] = sub
        self._pattern[seq] = pattern
        if queue is not None:
            self._queue[seq] = queue
            self._served[seq] = 0
        self.inserts += 1
        self._invalidate(pattern)

    def remove(self, sub: S) -> None:
        """Unsubscribe ``sub``, pruning trie nodes it leaves empty.

        Raises:
            KeyError: If ``sub`` is not in the table.
        """
        seq = self._seq_of.pop(sub)
        del self._subscriber[seq]
        pattern = self._pattern.pop(seq)
        if self._queue.pop(seq, None) is not None:
            del self._served[seq]
        tokens = pattern.split(".")
        tail = tokens[-1] == ">"
        if tail:
            tokens.pop()
        children = self._children
        # The subscription is known, so its path exists.
        path = [_ROOT]
        for token in tokens:
            path.append(children[path[-1]][token])
        ends = self._tail if tail else self._subs
        here = ends[path[-1]]
        del here[seq]
        if not here:
            del ends[path[-1]]
        subs = self._subs
        tails = self._tail
        for depth in range(len(tokens), 0, -1):
            node = path[depth]
            if node in children or node in subs or node in tails:
                break
            links = children[path[depth - 1]]
            del links[tokens[depth - 1]]
            if not links:
                del children[path[depth - 1]]
        self.removes += 1
        self._invalidate(pattern)

    def discard(self, sub: S) -> None:
        """Unsubscribe ``sub`` if it is in the table; do nothing otherwise."""
        if sub in self._seq_of:
            self.remove(sub)

    def match(self, subject: str) -> Match[S]:
        """Return everyone ``subject`` is routed to.

        Reserved ``$`` subjects are matched like any other but for one rule (`subjects`): a
        wildcard first token does not match them. Refusing client publishes to them is the
        caller's rule, since the broker publishes there itself. The subject is validated
        only when it is not cached, because only valid subjects ever enter the cache.

        Raises:
            SubjectError: If the subject is invalid.
        """
        self.matches += 1
        try:
            return self._cache[subject]
        except (KeyError, TypeError):  # TypeError: unhashable, so not a str; validation says so
            self.misses += 1
            return self._match_uncached(subject)

    def cached_match(self, subject: str) -> Match[S] | None:
        """`match` if the subject is in the cache, else None; never raises, counts nothing.

        For a caller that routes one subject many times in a row, and goes the long way only
        when it must: a cached match is current, since every change empties the cache. It adds
        the hits it routes by to `matches` itself.
        """
        return self._cache.get(subject)

    def peek(self, subject: str) -> Match[S]:
        """`match`, leaving the cache and the counters as they were (for monitoring's questions).

        Raises:
            SubjectError: If the subject is invalid.
        """
        cached = self._cache.get(subject) if type(subject) is str else None
        return cached if cached is not None else self._match_uncached(subject, store=False)

    def cached(self) -> list[Match[S]]:
        """The matches the cache holds now (for fan-out statistics)."""
        return list(self._cache.values())

    def _match_uncached(self, subject: str, *, store: bool = True) -> Match[S]:
        validate_subject(
            subject, max_length=self._max_length, max_tokens=self._max_tokens, allow_reserved=True
        )
        result = Walk(self, subject, store=store).step(_WHOLE)
        assert result is not None
        return result

    def match_within(self, subject: str, nodes: int) -> Match[S]:
        """`match`, or, if the walk would visit more than `nodes` trie nodes, `PENDING`.

        `PENDING` matches no one; the walk so far is then in `walk`, and the caller goes on
        with `Walk.step` in later turns: a subject that reaches tens of
        thousands of wildcard patterns (``{a,*}^16``) costs a walk of as many nodes, a
        hundred milliseconds in one step otherwise.

        Raises:
            SubjectError: If the subject is invalid.
        """
        self.matches += 1
        try:
            return self._cache[subject]
        except (KeyError, TypeError):
            self.misses += 1
        validate_subject(
            subject, max_length=self._max_length, max_tokens=self._max_tokens, allow_reserved=True
        )
        walk = Walk(self, subject)
        result = walk.step(nodes)
        if result is None:
            self.walk = walk
            return PENDING
        return result

    def _store(self, subject: str, result: Match[S]) -> None:
        cache = self._cache
        if self._cache_size:
            if len(cache) >= self._cache_size:
                cache.popitem(last=False)
            cache[subject] = result

    def _build(self, found: list[int]) -> Match[S]:
        """The `Match` for the live subscriptions numbered in `found`."""
        found.sort()
        subscriber = self._subscriber
        queue_of = self._queue
        if not (queue_of and queue_of.keys() & found):
            return Match(tuple(map(subscriber.__getitem__, found)), ())
        plain: list[S] = []
        queues: dict[str, list[int]] = {}
        for seq in found:
            sub = subscriber[seq]
            queue = queue_of.get(seq)
            if queue is None:
                plain.append(sub)
            else:
                queues.setdefault(queue, []).append(seq)
        groups = tuple(
            QueueGroup(
                name,
                tuple(subscriber[seq] for seq in seqs),
                tuple(seqs),
                self._served,
                self._tick,
                self._clock,
            )
            for name, seqs in queues.items()
        )
        return Match(tuple(plain), groups) if plain or groups else _NO_MATCH

    def _invalidate(self, pattern: str) -> None:
        """Drop the cached matches `pattern` may change, in time independent of the cache's size.

        A literal pattern matches one subject: only that entry goes. A wildcard pattern empties
        the cache instead of searching it for the subjects it matches: a search costs the whole
        cache on every SUB and UNSUB, which a client can repeat at will, while emptying costs
        at most what filling it did (each entry is freed once), and refilling it costs the
        misses that publishers would pay anyway.
        """
        self._generation += 1
        cache = self._cache
        if not cache:
            return
        if is_literal(pattern):
            cache.pop(pattern, None)
        else:
            cache.clear()


#: A step bound no walk reaches.
_WHOLE = 2**62


@final
class Walk(Generic[S]):
    """Matching one subject a step at a time (`RoutingTable.match_within`).

    Between two steps the table may change. A node number is never reused, so a node removed
    meanwhile reads as empty, and a subject reaches each node at most once, so no
    subscription is found twice. Subscriptions made after the walk began are left out, so a
    subscription never gets a message published before it existed; those removed meanwhile
    are left out too, and whoever delivers still checks each one is live (it may leave later).
    The result is cached only if the table did not change during the walk.
    """

    __slots__ = (
        "_found",
        "_generation",
        "_last",
        "_newest",
        "_stack",
        "_store",
        "_table",
        "_tokens",
        "subject",
    )

    def __init__(self, table: RoutingTable[S], subject: str, *, store: bool = True) -> None:
        self._table = table
        self.subject = subject
        self._tokens = tokens = subject.split(".")
        self._last = len(tokens)
        self._found: list[int] = []
        if subject[:1] == "$":
            # A wildcard first token ("*", ">") never matches a reserved subject.
            child = table._children.get(_ROOT, {}).get(tokens[0])
            self._stack: list[tuple[int, int]] = [(child, 1)] if child is not None else []
        else:
            self._stack = [(_ROOT, 0)]
        #: Whether the result goes into the table's cache (not for monitoring's questions).
        self._store = store
        self._generation = table._generation
        #: Every entry made from now on has a higher seq.
        self._newest = next(table._seq)

    def step(self, nodes: int) -> Match[S] | None:
        """Visit up to `nodes` more trie nodes; the `Match` once the walk is done, else None."""
        tokens = self._tokens
        last = self._last
        found = self._found
        stack = self._stack
        pop = stack.pop
        push = stack.append
        table = self._table
        children = table._children
        subs = table._subs
        tails = table._tail
        while stack:
            if nodes <= 0:
                return None
            nodes -= 1
            node, depth = pop()
            if depth == last:
                here = subs.get(node)
                if here:
                    found.extend(here)
                continue
            if tails:
                here = tails.get(node)
                if here:
                    found.extend(here)
            links = children.get(node)
            if links is not None:
                child = links.get(tokens[depth])
                if child is not None:
                    push((child, depth + 1))
                child = links.get("*")
                if child is not None:
                    push((child, depth + 1))
        if table._generation != self._generation:
            # Leave out what was made after the walk began, or removed since.
            newest = self._newest
            live = table._subscriber
            found = [seq for seq in found if seq < newest and seq in live]
            return table._build(found) if found else _NO_MATCH
        result = table._build(found) if found else _NO_MATCH
        if self._store:
            table._store(self.subject, result)
        return result
