"""The broker's verbs: publish, subscribe, unsubscribe, queue groups, retained messages and
replay, no-responders, and statistics.

The hub knows no wire format and no trio stream. It talks to whoever holds subscriptions
through the small `Subscriber` interface: a native session, a NATS session, a ``$SYS``
publisher or a link to other nodes can each be the origin of a publish and the owner of
subscriptions. A verb that refuses raises `Refused` with the `ErrorCode` that reports it; the
caller's wire decides how to say so, and `ErrorCode.fatal` whether the connection survives.

Everything here runs synchronously inside the calling task, with no await: a publish is routed
to every matching subscriber's outbox in one step, and a subscription's retained replay is
taken in the same step that inserts it, so nothing published in between is missed or doubled.

Pure: no trio, anyio or socket (a test imports it alone).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, final

from ._text import brief
from ._version import __version__
from .config import Config
from .errors import ErrorCode
from .message import NO_RESPONDERS_HEADERS, Message, Retained
from .permissions import ClientPermissions, Verdict
from .protocol.native import PROTOCOL_VERSION
from .retained import RetainedStore
from .routing import PENDING, Match, QueueGroup, RoutingTable, Walk
from .stats import Counters, Statistics
from .subjects import SYS_REQUEST_PREFIX, SubjectError, validate_pattern, validate_subject

if TYPE_CHECKING:
    from .auth import Authenticator

__all__ = [
    "FANOUT_STEP",
    "NODES_PER_DELIVERY",
    "REPLAY_ENTRY_COST",
    "Fanout",
    "Hub",
    "Refused",
    "ReplayMemory",
    "RunSubscriber",
    "Subscriber",
    "Subscription",
    "SystemOrigin",
]

#: Most subscriptions one step of a publish delivers to (about a millisecond); a publish that
#: matches more goes on in later turns (see `Hub.publish`), and its client's later frames wait.
FANOUT_STEP: Final = 1024
#: Trie nodes a split publish's walk visits in the time of one delivery (about as costly each).
NODES_PER_DELIVERY: Final = 2
#: How much of a client's subject an error's details repeat.
_SUBJECT_IN_DETAILS: Final = 256
#: What one message of a replay under way holds beyond the store's own copy: its
#: ``(subject, Retained)`` tuple and the list slot that refers to it.
REPLAY_ENTRY_COST: Final = sys.getsizeof((None, None)) + 8


class Subscriber(Protocol):
    """What the hub needs of an owner of subscriptions and an origin of publishes.

    Attributes:
        name: For logs and monitoring ("" if none was given).
        lang: The client library's language, as it said in its handshake ("" if it did not).
        version: The client library's version, as it said in its handshake ("" if not).
        in_msgs: Messages it published that the hub routed (refused ones are not counted).
        in_bytes: Payload bytes of those messages.
        out_msgs: Messages queued for it (its `deliver` returned 1), replays included.
        out_bytes: Payload bytes of those messages.
        echo: Whether it receives its own publishes.
        subscriptions: Its live subscriptions by sid. The hub keeps this map (it adds and
            removes); the owner reads it to find a sid.
        permissions: What it may publish and subscribe to (`broker.permissions`); None when
            authentication is off: everything is allowed, at no cost. Set it before its first
            publish, or change it later through `Hub.apply_permissions`.
    """

    name: str
    lang: str
    version: str
    in_msgs: int
    in_bytes: int
    out_msgs: int
    out_bytes: int
    echo: bool
    subscriptions: dict[Any, Subscription]
    permissions: ClientPermissions | None

    def deliver(self, sub: Subscription, message: Message) -> int:
        """Queue one message for `sub` without waiting; 1 if queued, 0 if not.

        Called from the publisher's task: it must never block. It adds one to
        ``sub.delivered``, even when a drop policy discards the message (the count is of
        messages routed to it), and calls `Hub.remove` once that reaches ``sub.max_msgs``.
        """
        ...

    def replay(self, sub: Subscription, entries: list[tuple[str, Retained]]) -> bool:
        """Queue the retained messages a new subscription matches; False if none was queued."""
        ...


class RunSubscriber(Subscriber, Protocol):
    """A `Subscriber` that can also take a run of plain messages to one subject in one call.

    Optional: `Hub.publish_run` hands a run to each subscription at once (rather than each
    message to every subscription in turn) when every owner it reaches has `deliver_run` and
    owns one of them. A wire whose adapter queues frames can then append a run's frames in one
    step, which costs a fraction of a call per message.
    """

    def deliver_run(
        self, sub: Subscription, subject: str, payloads: list[bytes]
    ) -> tuple[int, int]:
        """`deliver`, in order, each of ``(subject, payload, None, None, False)`` for `sub`.

        As `deliver` each message: it never blocks, counts each in ``sub.delivered`` (dropped
        ones too), and stops at ``sub.max_msgs``, calling `Hub.remove`. Unlike `deliver`, it
        adds what it queued to its own ``out_msgs`` and ``out_bytes`` (the hub does not), as
        it goes: a slow-consumer report made in the middle of a run sees the messages before.

        Returns:
            How many messages were queued, and their payload bytes.
        """
        ...


class SystemOrigin(Subscriber, Protocol):
    """The server's own voice on ``$SYS``: a subscriber with no connection, told of events a
    publish's delivery loop finds (a slow consumer), which it publishes later, not from inside
    that loop.
    """

    def client_connected(self, client: Any) -> None:
        """`client` (a transport, of any wire) completed its handshake."""
        ...

    def client_disconnected(self, client: Any) -> None:
        """`client`, once connected, has closed; its counters are final."""
        ...

    def slow_consumer(self, client: Any) -> None:
        """`client` was found to read too slowly."""
        ...


@final
class Subscription:
    """One subscription of one `Subscriber`; routed by identity, never compared by value.

    Attributes:
        owner: Who receives its messages.
        sid: The owner's name for it (the native wire's int, a NATS client's string).
        pattern: The subject pattern, with ``*`` and ``>`` wildcards.
        queue: The queue group, or None.
        prefix: The owner's own encoding of what precedes each message (the native wire: the
            MSG array head with the sid), made once per subscription; opaque to the hub.
        delivered: Messages routed to it so far, replays included.
        max_msgs: Remove it once `delivered` reaches this (UNSUB with a count), or None.
        guard: Its owner's permissions when each delivery must be checked (the pattern
            overlaps a deny rule) or noted (``allow_responses``); None otherwise.
        filtered: Whether each message's subject must be checked before delivery.
    """

    __slots__ = (
        "delivered",
        "filtered",
        "guard",
        "max_msgs",
        "owner",
        "pattern",
        "prefix",
        "queue",
        "sid",
    )

    def __init__(
        self, owner: Subscriber, sid: Any, pattern: str, queue: str | None, prefix: bytes
    ) -> None:
        self.owner = owner
        self.sid = sid
        self.pattern = pattern
        self.queue = queue
        self.prefix = prefix
        self.delivered = 0
        self.max_msgs: int | None = None
        self.guard: ClientPermissions | None = None
        self.filtered = False

    def __repr__(self) -> str:
        queue = "" if self.queue is None else f" queue={self.queue!r}"
        return f"<Subscription {self.sid!r} {self.pattern!r}{queue}>"


class Refused(Exception):
    """A verb refused its caller: the `ErrorCode`, a message for people, and details.

    ``code.fatal`` says whether the caller's connection must close.
    """

    def __init__(
        self, code: ErrorCode, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


@final
class Hub:
    """The routing table, the retained store and the counters, with the verbs that use them.

    Attributes:
        config: The config it was made with.
        table: Subscriptions by pattern.
        retained: Each retained subject's last message.
        counters: The live counters behind `statistics`.
        info: What a client is told in the handshake (WELCOME's map on the native wire).
        closing: Set once shutdown begins, so a connection accepted but not yet registered is
            refused instead of served until the grace period runs out.
        system: The server's own origin on ``$SYS`` (`broker.server.sysevents`), or None. It
            alone may publish to ``$`` subjects; clients only to `SYS_REQUEST_PREFIX` ones.
        auth: Checks each new client's credentials (`broker.auth`); None when ``[auth]`` is
            not configured. Replaced whole by a reload.
        auth_failure_hooks: Called as ``hook(peer, reason)`` on every failed authentication
            (after it is counted), e.g. to publish a ``$SYS`` event; see `auth_failed`.
    """

    __slots__ = (
        "_guarded",
        "_max_payload",
        "_max_subject_length",
        "_max_subject_tokens",
        "_max_subscriptions",
        "_shedding",
        "auth",
        "auth_failure_hooks",
        "closing",
        "config",
        "counters",
        "fanouts",
        "info",
        "on_retain",
        "replay_memory",
        "retained",
        "system",
        "table",
        "watch",
    )

    def __init__(self, config: Config, *, server_id: str) -> None:
        self.config = config
        self.table: RoutingTable[Subscription] = RoutingTable(
            max_subject_length=config.max_subject_length,
            max_subject_tokens=config.max_subject_tokens,
        )
        self.retained: RetainedStore[Retained] = RetainedStore(
            max_subjects=config.max_retained_subjects, max_bytes=config.max_retained_bytes
        )
        self.counters = Counters()
        #: Split publishes still under way, by origin (see `publish`'s `step`).
        self.fanouts: dict[Subscriber, Fanout] = {}
        self.replay_memory = ReplayMemory(config.max_replay_bytes)
        #: Owners being torn down in batches whose queue memberships are already gone.
        self._shedding: set[Subscriber] = set()
        self.closing = False
        #: Told of every subscription added (+1) or removed (-1) through the verbs; the cluster
        #: link uses it to announce this node's interest. None (alone): no cost.
        self.watch: Callable[[Subscription, int], None] | None = None
        #: Told of every retained message stored or deleted by a publish (not by
        #: `store_retained`), so the cluster link can share it. None (alone): no cost.
        self.on_retain: Callable[[Message], None] | None = None
        self.system: SystemOrigin | None = None
        #: Live subscriptions with a `Subscription.guard`; while 0, delivery checks nothing.
        self._guarded = 0
        self.auth: Authenticator | None = None
        if config.auth is not None:
            from .auth import Authenticator

            self.auth = Authenticator(config.auth)
        self.auth_failure_hooks: list[Callable[[str, str], None]] = []
        self._max_payload = config.max_payload
        self._max_subscriptions = config.max_subscriptions
        self._max_subject_length = config.max_subject_length
        self._max_subject_tokens = config.max_subject_tokens
        self.info: dict[str, Any] = {
            "version": PROTOCOL_VERSION,
            "server_id": server_id,
            "server_name": "broker",
            "broker_version": __version__,
            "max_payload": config.max_payload,
            "max_frame": config.frame_limit,
            "max_subscriptions": config.max_subscriptions,
            "max_subject_length": config.max_subject_length,
            "max_subject_tokens": config.max_subject_tokens,
            "ping_interval": config.ping_interval,
            "slow_consumer_policy": config.slow_consumer_policy,
            "headers": True,
            "max_retained_subjects": config.max_retained_subjects,
            "max_retained_bytes": config.max_retained_bytes,
        }

    # -- publish ------------------------------------------------------------------------------

    def publish(self, origin: Subscriber, message: Message, step: int = 0) -> int:
        """Route one message to every matching subscription, each queue group's one member.

        `message` is ``(subject, payload, reply_to, headers, retain)`` (`Message`): the native
        wire's `Pub` event is one, and any other origin builds the same tuple. The same object
        goes to every subscriber. A tuple, not keyword arguments: this runs once per publish,
        and passing one tuple costs a quarter of a call with five arguments.

        With `step`, at most that many plain subscriptions are delivered to now (queue groups
        all are); the rest wait in `fanouts` under `origin`, for the caller to continue with
        `resume` in later turns before it routes anything else of that origin's. A publish
        matching 65,536 subscriptions is otherwise one step of tens of milliseconds during which
        no other client is served. Without it (0), everything is delivered now.

        A refused publish is neither retained nor delivered: the publisher learns of one
        failure, not of a message that half happened. A request (`reply_to` set) that reaches
        nobody is answered at once with an empty 503 message on the origin's own subscriptions
        to `reply_to`, so its requester need not wait for a timeout.

        Returns:
            How many subscriptions it was delivered to: the work it cost, for a caller that
            bounds how much one client may do in a turn.

        Raises:
            Refused: ``payload_too_large`` (fatal), ``bad_subject`` (a reserved ``$`` subject,
                a bad subject or reply subject), ``permission_denied`` (outside the origin's
                publish permissions), ``retained_limit``.
        """
        subject, payload, reply_to, _headers, retain = message
        size = len(payload)
        if size > self._max_payload:
            raise Refused(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"payload of {size} bytes exceeds max_payload ({self._max_payload} bytes)",
            )
        try:
            if subject[:1] == "$" and origin is not self.system:
                _check_reserved(subject)
            table = self.table
            match = (
                table.match_within(subject, step * NODES_PER_DELIVERY)
                if step
                else table.match(subject)
            )
            if reply_to is not None:
                validate_subject(
                    reply_to,
                    max_length=self._max_subject_length,
                    max_tokens=self._max_subject_tokens,
                )
        except SubjectError as error:
            raise Refused(
                ErrorCode.BAD_SUBJECT, str(error), {"subject": subject[:_SUBJECT_IN_DETAILS]}
            ) from None
        permissions = origin.permissions
        if permissions is not None and not permissions.may_publish(subject):
            raise Refused(
                ErrorCode.PERMISSION_DENIED,
                f"permission denied: may not publish to {brief(subject)}",
                {"subject": subject[:_SUBJECT_IN_DETAILS], "op": "publish"},
            )
        if retain:
            self._retain(message)
        counters = self.counters
        counters.messages_in += 1
        counters.bytes_in += size
        origin.in_msgs += 1
        origin.in_bytes += size
        delivered = 0
        reached = False
        plain = match.plain
        if step and len(plain) > step:
            later = Fanout(self, origin, message, subs=plain, at=step)
            self.fanouts[origin] = later
            plain = plain[:step]
        else:
            later = None
        if plain or match.groups:
            deliver = self._deliver_guarded if self._guarded else self._deliver
            delivered, reached = deliver(origin, plain, match.groups, message)
        if delivered:
            counters.messages_out += delivered
            counters.bytes_out += delivered * size
            if later is not None:
                later.reached = reached
        elif match is PENDING:
            # Too many patterns to match in one step: the walk goes on in later steps.
            walk = self.table.walk
            assert walk is not None
            self.fanouts[origin] = Fanout(self, origin, message, walk=walk)
        elif later is not None:
            later.reached = reached  # no-responders waits for the last step
        elif reply_to is not None and not reached:
            self._no_responders(origin, reply_to)
        return delivered

    def resume(self, origin: Subscriber, step: int) -> int:
        """Deliver up to `step` more of `origin`'s split publish (see `publish`); the work done.

        Once every subscription has been delivered to, the publish leaves `fanouts`.
        """
        fanout = self.fanouts.get(origin)
        if fanout is None:
            return 0
        done = fanout.run(step)
        if fanout.finished:
            del self.fanouts[origin]
        return done

    def publish_run(
        self, origin: Subscriber, subject: str, payloads: list[bytes], start: int, budget: int
    ) -> tuple[int, int]:
        """Publish ``(subject, payload)`` for each of ``payloads[start:]``, as `publish` would
        one by one (no reply subject, no headers, not retained), checking the subject once.

        A run of publishes to one subject (`broker.protocol.PubRun`) then costs its subject's
        checks and match once, and a run that reaches no one costs nothing per message. It
        stops at the first message it cannot route as `publish` would with the same
        `FANOUT_STEP`: one `publish` would refuse (a reserved subject, no permission, a payload
        too large), or split into steps, or whose subject is not in the match cache, or that
        only a response allowance (``allow_responses``) lets through, which each message uses
        up. The caller publishes that one with `publish` and calls again for the rest. It also
        stops once its work reaches `budget`, counted as the native adapter counts a turn's:
        one per message, plus one per delivery.

        When every subscription it reaches is plain, unguarded and the only one of an owner
        with `RunSubscriber.deliver_run`, each takes the messages the budget leaves room for
        in one call, instead of each message going to every subscription in turn: a native
        client then gets a run's frames in one append. Each connection receives the same
        frames in the same order either way.

        Returns:
            The index of the first payload not published, and how many deliveries it made.
        """
        permissions = origin.permissions
        if (subject[:1] == "$" and origin is not self.system) or (
            permissions is not None and not permissions.may_always_publish(subject)
        ):
            return start, 0
        table = self.table
        cached_match = table.cached_match
        max_payload = self._max_payload
        guarded = self._guarded
        deliver = self._deliver_guarded if guarded else self._deliver
        counters = self.counters
        at = start
        end = len(payloads)
        messages = received = delivered = sent = 0
        checked = None
        runs: list[tuple[Subscription, Callable[..., tuple[int, int]]]] | None = None
        while at < end:
            match = cached_match(subject)
            if match is None:
                break
            plain = match.plain
            groups = match.groups
            if match is not checked:
                # A delivery to the origin itself can end its connection (its own outbox
                # overflowing), after which `publish` would not be called for the rest.
                if (groups and origin.subscriptions) or any(s.owner is origin for s in plain):
                    break
                checked = match
                runs = None
                if plain and not (groups or guarded) and len(plain) <= FANOUT_STEP:
                    runs = _run_deliverers(plain)
            if runs is not None:
                # Each subscription takes as much of the run as the budget leaves room for in
                # one call: the messages the loop below would deliver before reaching it.
                cost = 1 + len(plain)
                stop = min(end, at + max(1, -((messages + delivered - budget) // cost)))
                batch = payloads[at:stop]
                if max(map(len, batch)) > max_payload:
                    batch = list(itertools.takewhile(lambda p: len(p) <= max_payload, batch))
                    if not batch:
                        break  # `publish` refuses the next one
                for sub, deliver_run in runs:
                    count, size = deliver_run(sub, subject, batch)  # counts its own out_*
                    delivered += count
                    sent += size
                messages += len(batch)
                received += sum(map(len, batch))
                at += len(batch)
                if messages + delivered >= budget:
                    break
                continue
            if not (plain or groups):
                # Nobody to deliver to, so nothing can change the table: the rest at once, up
                # to a payload too large, if any (which `publish` then refuses).
                rest = payloads[at:] if at else payloads
                if max(map(len, rest)) > max_payload:
                    rest = list(itertools.takewhile(lambda p: len(p) <= max_payload, rest))
                messages += len(rest)
                received += sum(map(len, rest))
                at += len(rest)
                break
            if len(plain) > FANOUT_STEP:
                break
            payload = payloads[at]
            size = len(payload)
            if size > max_payload:
                break
            message: Message = (subject, payload, None, None, False)
            count, _reached = deliver(origin, plain, groups, message)
            messages += 1
            received += size
            delivered += count
            sent += count * size
            at += 1
            if messages + delivered >= budget:
                break
        table.matches += messages
        counters.messages_in += messages
        counters.bytes_in += received
        origin.in_msgs += messages
        origin.in_bytes += received
        counters.messages_out += delivered
        counters.bytes_out += sent
        return at, delivered

    def _deliver(
        self,
        origin: Subscriber,
        plain: tuple[Subscription, ...],
        groups: tuple[Any, ...],
        message: Message,
    ) -> tuple[int, bool]:
        """`publish`'s delivery loop while no subscription has a guard.

        Each subscriber's own out_* are counted here, once for every wire: an add per delivery,
        and nothing for a message its outbox refused.

        Returns:
            Deliveries, and whether any subscription was reached (for no-responders).
        """
        size = len(message[1])
        delivered = 0
        reached = False
        echo = origin.echo
        for sub in plain:
            target = sub.owner
            if target is origin and not echo:
                continue
            reached = True
            if target.deliver(sub, message):
                delivered += 1
                target.out_msgs += 1
                target.out_bytes += size
        if groups:
            skip = None if echo else _owned_by(origin)
            for group in groups:
                chosen = group.choose(skip)
                if chosen is None:
                    continue
                reached = True
                target = chosen.owner
                if target.deliver(chosen, message):
                    delivered += 1
                    target.out_msgs += 1
                    target.out_bytes += size
        return delivered, reached

    def _deliver_guarded(
        self,
        origin: Subscriber,
        plain: tuple[Subscription, ...],
        groups: tuple[Any, ...],
        message: Message,
    ) -> tuple[int, bool]:
        """`publish`'s delivery loop while some subscription has a guard: a filtered one
        skips denied subjects, and a responder notes the request's reply subject.

        Returns:
            Deliveries, and whether any subscription was reached (for no-responders).
        """
        subject = message[0]
        reply_to = message[2]
        size = len(message[1])
        delivered = 0
        reached = False
        echo = origin.echo
        for sub in plain:
            target = sub.owner
            if target is origin and not echo:
                continue
            if not _admits(sub, subject, reply_to):
                continue
            reached = True
            if target.deliver(sub, message):
                delivered += 1
                target.out_msgs += 1
                target.out_bytes += size
        if groups:

            def skip(sub: Subscription) -> bool:
                return (sub.owner is origin and not echo) or _filters_out(sub, subject)

            for group in groups:
                chosen = group.choose(skip)
                if chosen is None:
                    continue
                reached = True
                _note_request(chosen, reply_to)
                target = chosen.owner
                if target.deliver(chosen, message):
                    delivered += 1
                    target.out_msgs += 1
                    target.out_bytes += size
        return delivered, reached

    def _retain(self, message: Message) -> None:
        """Make `message` its subject's retained message (an empty payload deletes it)."""
        store = self.retained
        subject = message[0]
        if not message[1]:
            store.delete(subject)
        else:
            kept = Retained(message)
            problem = store.put(subject, kept, kept.size)
            if problem is not None:
                raise Refused(ErrorCode.RETAINED_LIMIT, problem, {"subject": subject})
        if self.on_retain is not None:
            self.on_retain(message)

    def store_retained(self, message: Message) -> str | None:
        """Store (or, with an empty payload, delete) a retained message routed elsewhere.

        For a copy of the cluster's retained store: nothing is delivered and `on_retain` is
        not told. Returns the store's refusal, or None.
        """
        subject = message[0]
        if not message[1]:
            self.retained.delete(subject)
            return None
        kept = Retained(message)
        return self.retained.put(subject, kept, kept.size)

    # -- deliveries routed by another node ----------------------------------------------------

    def deliver_plain(self, origin: Subscriber, message: Message, step: int = 0) -> int:
        """Deliver a message another node published to every plain subscription here.

        Queue groups are left out (the publishing node chose their members), and so are the
        subscriptions `origin` holds, whatever its echo flag: they stand for other nodes.
        With `step`, as `publish`: at most that much now, the rest in `fanouts` under
        `origin` for `resume`, so a client of another node costs this one's clients no more
        than a client of its own. Returns the work done.
        """
        match = self._match_remote(origin, message, step, None)
        if match is None:
            return step
        subject = message[0]
        plain = match.plain
        if step and len(plain) > step:
            self.fanouts[origin] = Fanout(self, origin, message, subs=plain, at=step, remote=True)
            plain = plain[:step]
        delivered = 0
        size = len(message[1])
        reply_to = message[2]
        guarded = self._guarded
        for sub in plain:
            target = sub.owner
            if target is origin:
                continue
            # As `_deliver_guarded`: permissions hold for messages from other nodes too.
            if guarded and not _admits(sub, subject, reply_to):
                continue
            if target.deliver(sub, message):
                delivered += 1
                target.out_msgs += 1
                target.out_bytes += size
        self._count_out(delivered, size)
        return len(plain)

    def deliver_group(self, origin: Subscriber, message: Message, queue: str, step: int = 0) -> int:
        """Deliver a message to one member here of queue group `queue`, chosen by another node.

        Members `origin` holds (other nodes') are passed over; nothing is delivered if none is
        left here. With `step`, a walk of the trie too long for one step goes on in `fanouts`,
        as `deliver_plain`. Returns the work done.
        """
        match = self._match_remote(origin, message, step, queue)
        if match is None:
            return step
        self._deliver_to_group(origin, message, queue, match.groups)
        return 1

    def _match_remote(
        self, origin: Subscriber, message: Message, step: int, queue: str | None
    ) -> Match[Subscription] | None:
        """Who here a message from another node goes to; None if the walk of the trie is too
        long for one `step`, and goes on in `fanouts` under `origin` (a remote `Fanout`)."""
        table = self.table
        if not step:
            return table.match(message[0])
        match = table.match_within(message[0], step * NODES_PER_DELIVERY)
        if match is not PENDING:
            return match
        assert table.walk is not None
        self.fanouts[origin] = Fanout(
            self, origin, message, walk=table.walk, remote=True, queue=queue
        )
        return None

    def _deliver_to_group(
        self,
        origin: Subscriber,
        message: Message,
        queue: str,
        groups: tuple[QueueGroup[Subscription], ...],
    ) -> None:
        subject = message[0]

        def skip(sub: Subscription) -> bool:
            return sub.owner is origin or _filters_out(sub, subject)

        for group in groups:
            if group.name == queue:
                chosen = group.choose(skip)
                if chosen is None:
                    return
                _note_request(chosen, message[2])
                target = chosen.owner
                if target.deliver(chosen, message):
                    size = len(message[1])
                    target.out_msgs += 1
                    target.out_bytes += size
                    self._count_out(1, size)
                return

    def _count_out(self, delivered: int, size: int) -> None:
        if delivered:
            counters = self.counters
            counters.messages_out += delivered
            counters.bytes_out += delivered * size

    def attach(self, owner: Subscriber, sid: Any, pattern: str, queue: str | None) -> Subscription:
        """Add a subscription that stands for interest elsewhere (another node's).

        No limit, no replay and no `watch`: the pattern was checked where it was made.

        Raises:
            SubjectError: The pattern or queue name is not valid here (a node with other
                subject limits); the caller skips that interest.
        """
        sub = Subscription(owner, sid, pattern, queue, b"")
        self.table.insert(sub, pattern, queue)
        owner.subscriptions[sid] = sub
        return sub

    def detach(self, sub: Subscription) -> None:
        """Remove a subscription made by `attach` (no `watch`)."""
        held = sub.owner.subscriptions
        if held.get(sub.sid) is sub:
            del held[sub.sid]
            self.table.discard(sub)

    def _no_responders(self, origin: Subscriber, reply_to: str) -> None:
        """Answer a request nobody can serve, on the requester's own reply subscriptions."""
        self.counters.no_responders += 1
        match = self.table.match(reply_to)
        mine = [sub for sub in match.plain if sub.owner is origin]
        for group in match.groups:
            mine.extend(sub for sub in group.members if sub.owner is origin)
        if mine:
            answer: Message = (reply_to, b"", None, NO_RESPONDERS_HEADERS, False)
            for sub in mine:
                origin.deliver(sub, answer)

    # -- subscribe ----------------------------------------------------------------------------

    def subscribe(
        self,
        owner: Subscriber,
        sid: Any,
        pattern: str,
        queue: str | None = None,
        *,
        prefix: bytes = b"",
    ) -> Subscription:
        """Add a subscription and replay the retained messages it matches, in one step.

        Every publish routed after this call is live, every one before it is in the replay,
        and none is in both. Queue groups get no replay (as MQTT shared subscriptions): each
        new worker would otherwise redo the group's work.

        Raises:
            Refused: ``bad_sid`` (the sid is taken), ``too_many_subscriptions``,
                ``bad_subject`` (a bad pattern or queue name), ``permission_denied`` (details
                also carry the pattern as ``subject`` and ``"op": "subscribe"``); details
                carry the sid.
        """
        details: dict[str, Any] = {"sid": sid}
        held = owner.subscriptions
        if sid in held:
            raise Refused(ErrorCode.BAD_SID, f"sid {sid} is already subscribed", details)
        limit = self._max_subscriptions
        if len(held) >= limit:
            raise Refused(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"a connection may hold at most {limit} subscriptions (max_subscriptions)",
                details,
            )
        permissions = owner.permissions
        verdict = Verdict.ALLOW
        if permissions is not None:
            try:
                validate_pattern(
                    pattern,
                    max_length=self._max_subject_length,
                    max_tokens=self._max_subject_tokens,
                )
            except SubjectError as error:
                raise Refused(ErrorCode.BAD_SUBJECT, str(error), details) from None
            verdict = permissions.subscribe_verdict(pattern)
            if verdict is Verdict.DENY:
                raise Refused(*_subscribe_denied(sid, pattern))
        sub = Subscription(owner, sid, pattern, queue, prefix)
        try:
            self.table.insert(sub, pattern, queue)
        except SubjectError as error:
            raise Refused(ErrorCode.BAD_SUBJECT, str(error), details) from None
        held[sid] = sub
        if permissions is not None:
            self._set_guard(sub, permissions, verdict)
        if self.watch is not None:
            self.watch(sub, 1)
        if queue is None and self.retained.subjects:
            entries = self.retained.matching(pattern)
            if entries and sub.filtered and permissions is not None:
                entries = [entry for entry in entries if permissions.may_receive(entry[0])]
            if entries and owner.replay(sub, entries):
                # A replay comes straight after its subscribe: no max_msgs can cut it short.
                counters = self.counters
                size = sum(len(kept.payload) for _, kept in entries)
                counters.messages_out += len(entries)
                counters.bytes_out += size
                owner.out_msgs += len(entries)
                owner.out_bytes += size
                sub.delivered += len(entries)
        return sub

    def would_replay(self, pattern: str, queue: str | None) -> bool:
        """Whether subscribing to `pattern` now would replay any retained message."""
        if queue is not None or not self.retained.subjects:
            return False
        # An invalid pattern may "match" here; subscribe then refuses it, no harm done.
        return bool(self.retained.matching(pattern))

    def unsubscribe(self, sub: Subscription, max_msgs: int | None = None) -> None:
        """Remove `sub` now, or once it has been delivered `max_msgs` messages in all."""
        if max_msgs is None or sub.delivered >= max_msgs:
            self.remove(sub)
        else:
            sub.max_msgs = max_msgs

    def remove(self, sub: Subscription) -> None:
        """Remove `sub` from the table and its owner's map; removing it twice is harmless."""
        held = sub.owner.subscriptions
        if held.get(sub.sid) is sub:
            del held[sub.sid]
            self.table.discard(sub)
            self._drop_guard(sub)
            if self.watch is not None:
                self.watch(sub, -1)

    def remove_all(self, owner: Subscriber, *, limit: int | None = None) -> bool:
        """Remove the subscriptions of `owner` (it is leaving); True while some remain.

        With `limit`, at most that many go per call, so a caller that yields between calls
        tears down 65,536 subscriptions without holding the other clients up for it. Queue
        group memberships all go in the first call, whatever the limit: a member that stays
        in its group while its connection is gone would be chosen for messages it can no
        longer take, and the group would lose them.
        """
        if owner in self.fanouts:
            # A publish it made is still reaching its subscribers: it was accepted, so it is
            # delivered to the end, in steps as large as the teardown's, before the owner goes.
            self.resume(owner, limit or 2**62)
            if owner in self.fanouts:
                return True
        table = self.table
        held = owner.subscriptions
        if limit is None or len(held) <= limit:
            watch = self.watch
            for sub in held.values():
                table.discard(sub)
                self._drop_guard(sub)
                if watch is not None:
                    watch(sub, -1)
            held.clear()
            return False
        shedding = self._shedding
        if owner not in shedding:
            # Once, not per call: a scan per batch made shedding 65,536 subscriptions cost
            # 128 scans of what was left, about a second of CPU in all.
            shedding.add(owner)
            for sub in [sub for sub in held.values() if sub.queue is not None]:
                self.remove(sub)
        for sub in list(itertools.islice(held.values(), limit)):
            self.remove(sub)
        if held:
            return True
        shedding.discard(owner)
        return False

    # -- permissions and authentication -------------------------------------------------------

    def _drop_guard(self, sub: Subscription) -> None:
        """`sub` needs no checks any more (it is gone, or its owner's rules are)."""
        if sub.guard is not None:
            sub.guard = None
            sub.filtered = False
            self._guarded -= 1

    def _set_guard(
        self, sub: Subscription, permissions: ClientPermissions, verdict: Verdict
    ) -> None:
        had = sub.guard is not None
        sub.filtered = verdict is Verdict.FILTER
        needed = sub.filtered or permissions.tracks_responses
        sub.guard = permissions if needed else None
        self._guarded += needed - had

    def apply_permissions(
        self, owner: Subscriber, permissions: ClientPermissions | None
    ) -> list[tuple[Subscription, Refused]]:
        """Give `owner` new permissions (a reload), and hold its subscriptions to them.

        Subscriptions the new rules refuse are removed; each comes back with the
        ``permission_denied`` refusal its owner's wire should report. The others are filtered
        or not as the new rules say.
        """
        owner.permissions = permissions
        removed: list[tuple[Subscription, Refused]] = []
        for sub in list(owner.subscriptions.values()):
            if permissions is None:
                self._drop_guard(sub)
                continue
            verdict = permissions.subscribe_verdict(sub.pattern)
            if verdict is Verdict.DENY:
                self.remove(sub)
                removed.append((sub, Refused(*_subscribe_denied(sub.sid, sub.pattern))))
            else:
                self._set_guard(sub, permissions, verdict)
        return removed

    def auth_failed(self, peer: str, reason: str) -> None:
        """Count one failed authentication and tell `auth_failure_hooks`.

        Every wire's handshake calls this on every failure, so it is the one place to watch
        them. `reason` is for operators (the client is only ever told ``auth_failed``).
        """
        self.counters.auth_failures += 1
        for hook in self.auth_failure_hooks:
            hook(peer, reason)

    # -- statistics ---------------------------------------------------------------------------

    def statistics(self) -> Statistics:
        """A snapshot of the counters, with the table's and the store's gauges."""
        system = self.system
        return self.counters.snapshot(
            # Clients' subscriptions: the server's own $SYS ones are not what anyone asks about.
            subscriptions=len(self.table) - (len(system.subscriptions) if system else 0),
            retained_subjects=self.retained.subjects,
            retained_bytes=self.retained.bytes,
        )


def _check_reserved(subject: str) -> None:
    """Refuse a client's publish to a ``$`` subject, unless it is a ``$SYS`` request."""
    if not subject.startswith(SYS_REQUEST_PREFIX):
        raise SubjectError(
            f"subjects starting with '$' are reserved: {brief(subject)}; clients may publish"
            f" there only requests to {SYS_REQUEST_PREFIX}..., such as $SYS.REQ.SERVER.PING.VARZ"
        )


def _subscribe_denied(sid: Any, pattern: str) -> tuple[ErrorCode, str, dict[str, Any]]:
    details = {"sid": sid, "subject": pattern[:_SUBJECT_IN_DETAILS], "op": "subscribe"}
    message = f"permission denied: may not subscribe to {brief(pattern)}"
    return ErrorCode.PERMISSION_DENIED, message, details


def _admits(sub: Subscription, subject: str, reply_to: str | None) -> bool:
    """Whether a subscription takes a message under its guard: a filtered one refuses denied
    subjects, and a responder notes the request's reply subject (`allow_responses`)."""
    guard = sub.guard
    if guard is None:
        return True
    if sub.filtered and not guard.may_receive(subject):
        return False
    if reply_to is not None:
        guard.note_request(reply_to)
    return True


def _filters_out(sub: Subscription, subject: str) -> bool:
    """Whether `sub`'s guard refuses `subject` (a queue group then passes it over)."""
    guard = sub.guard
    return guard is not None and sub.filtered and not guard.may_receive(subject)


def _note_request(sub: Subscription, reply_to: str | None) -> None:
    """Let the queue-group member chosen for a request answer it (`allow_responses`)."""
    if sub.guard is not None and reply_to is not None:
        sub.guard.note_request(reply_to)


def _run_deliverers(
    plain: tuple[Subscription, ...],
) -> list[tuple[Subscription, Callable[..., tuple[int, int]]]] | None:
    """Each subscription with its owner's `RunSubscriber.deliver_run`, or None unless every
    owner has one and owns one of them (so that each connection still receives a run's
    messages in the order `publish` would interleave them)."""
    runs = []
    owners = set()
    for sub in plain:
        owner = sub.owner
        deliver_run = getattr(owner, "deliver_run", None)
        if deliver_run is None or id(owner) in owners:
            return None
        owners.add(id(owner))
        runs.append((sub, deliver_run))
    return runs


def _owned_by(origin: Subscriber) -> Callable[[Subscription], bool]:
    def owned(sub: Subscription) -> bool:
        return sub.owner is origin

    return owned


@final
class ReplayMemory:
    """The server-wide bound on what replays under way hold (`Config.max_replay_bytes`).

    Each replay is streamed from the store (a list of references, then a chunk at a time), so
    one costs a client little; but every client may have one under way, and clients that stop
    reading hold theirs until ``write_timeout`` cuts them. This is the sum over all of them.
    A wire's adapter starts a replay only while `has_room`, and `charge` s it; whoever sends it
    `release` s it when it ends or its client is cut. Memory held therefore stays within
    `limit` plus the one replay admitted last. A caller that found no room waits with
    `when_room`.

    Pure accounting: no trio, so the hub owns it and every wire shares it.
    """

    __slots__ = ("_waiters", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: list[Callable[[], object]] = []

    @property
    def has_room(self) -> bool:
        """Whether a new replay may start now."""
        return self.used < self.limit

    def charge(self, size: int) -> None:
        """Count a replay that starts, at `size` bytes."""
        self.used += size

    def release(self, size: int) -> None:
        """A replay of `size` bytes ended, or its client was cut: wake whoever waits for room."""
        self.used -= size
        if self._waiters and self.used < self.limit:
            waiters, self._waiters = self._waiters, []
            for wake in waiters:
                wake()

    def when_room(self, wake: Callable[[], object]) -> None:
        """Call `wake` (once) as soon as `has_room` is true again."""
        if self.has_room:
            wake()
        else:
            self._waiters.append(wake)


@final
class Fanout:
    """The rest of a publish split into steps (`Hub.publish` with ``step``): the trie walk that
    finds its subscribers, if it is not done, then the plain subscriptions it has yet to reach,
    in order.

    A `remote` one carries a message another node published (`Hub.deliver_plain`,
    `Hub.deliver_group`): `origin` is the link, whose own subscriptions are always passed over,
    and queue groups get it only when the other node named one (`queue`), while plain
    subscriptions then get nothing.

    Between two steps other clients run, so a subscription may be removed meanwhile: each one is
    checked to be still its owner's before it is delivered to. One made meanwhile is not found
    (see `Walk`) and gets nothing (had the message been retained, its replay has it), so no
    subscription gets the message twice, or after it unsubscribed.
    """

    __slots__ = (
        "at",
        "finished",
        "hub",
        "message",
        "origin",
        "queue",
        "reached",
        "remote",
        "subs",
        "walk",
    )

    def __init__(
        self,
        hub: Hub,
        origin: Subscriber,
        message: Message,
        *,
        walk: Walk[Subscription] | None = None,
        subs: tuple[Subscription, ...] = (),
        at: int = 0,
        remote: bool = False,
        queue: str | None = None,
    ) -> None:
        self.hub = hub
        self.remote = remote
        self.queue = queue
        self.origin = origin
        self.message = message
        self.walk = walk
        self.subs = subs
        self.at = at
        self.reached = False
        self.finished = False

    def run(self, step: int) -> int:
        """Take the next step: `step` subscriptions' worth of the walk, or of deliveries; the
        work done, in deliveries."""
        if self.walk is not None:
            match = self.walk.step(step * NODES_PER_DELIVERY)
            if match is None:
                return step
            self.walk = None
            if not self.remote:
                self.subs = match.plain
                done = self._choose(match.groups)
            elif self.queue is None:
                self.subs = match.plain
                done = 0
            else:
                self.hub._deliver_to_group(self.origin, self.message, self.queue, match.groups)
                self.finished = True
                return 1
        else:
            done = 0
        origin = self.origin
        message = self.message
        echo = origin.echo and not self.remote
        start = self.at
        end = min(start + step, len(self.subs))
        size = len(message[1])
        delivered = 0
        guarded = self.hub._guarded
        subject = message[0]
        reply_to = message[2]
        for sub in self.subs[start:end]:
            target = sub.owner
            if target is origin and not echo:
                continue
            if target.subscriptions.get(sub.sid) is not sub:
                continue  # removed since the publish began
            if guarded and not _admits(sub, subject, reply_to):
                continue  # as `Hub._deliver_guarded`
            self.reached = True
            if target.deliver(sub, message):
                delivered += 1
                target.out_msgs += 1
                target.out_bytes += size
        self.at = end
        self._count(delivered)
        if end == len(self.subs):
            self.finished = True
            reply_to = message[2]
            if reply_to is not None and not self.reached and not self.remote:
                self.hub._no_responders(origin, reply_to)
        return done + end - start

    def _choose(self, groups: tuple[QueueGroup[Subscription], ...]) -> int:
        """Deliver to one live member of each queue group the walk found."""
        origin = self.origin
        echo = origin.echo

        message = self.message
        subject = message[0]
        reply_to = message[2]

        def skip(sub: Subscription) -> bool:
            owner = sub.owner
            if (owner is origin and not echo) or owner.subscriptions.get(sub.sid) is not sub:
                return True
            return _filters_out(sub, subject)

        size = len(message[1])
        delivered = 0
        for group in groups:
            chosen = group.choose(skip)
            if chosen is not None:
                self.reached = True
                _note_request(chosen, reply_to)
                target = chosen.owner
                if target.deliver(chosen, message):
                    delivered += 1
                    target.out_msgs += 1
                    target.out_bytes += size
        self._count(delivered)
        return len(groups)

    def _count(self, delivered: int) -> None:
        self.hub._count_out(delivered, len(self.message[1]))
