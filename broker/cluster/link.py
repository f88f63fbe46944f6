"""The Redis link: one more subscriber and origin of the hub, joining this node to the others.

To the hub the link is a `Subscriber` that holds one stand-in subscription for every pattern
another node is interested in (and one per member of another node's queue group), so a local
publish that matches another node's interest is "delivered" to the link, which queues it for
that node's Redis channel. A message that comes from Redis is routed here with
`Hub.deliver_plain` / `Hub.deliver_group`, which skip the link's own stand-ins: nothing from
Redis goes back to Redis.

Three tasks per connection to Redis, one for the link's life:

- the writer sends everything queued since its last turn in one pipeline: this node's
  interest changes first, then retained updates, then one PUBLISH per destination node holding
  all of that node's messages in publish order. It is the only task that writes interest or
  messages, so Redis sees them in the order they happened.
- the heartbeat refreshes this node's entry and TTL, learns which nodes are alive (one Lua
  script, Redis's clock) and resyncs any node whose interest it has missed.
- coredis's pubsub reader hands each frame to a handler here: interest and retained updates
  are applied at once (small, never dropped: a gap is repaired by a resync); message batches
  go into a bounded channel, past which they are dropped and counted.
- (for the link's life) the router takes batches off that channel and delivers them.

When Redis goes away the link says so (log, `status`), drops what is published for other
nodes (counted as ``lost``), keeps serving local clients, and reconnects with backoff; on
return it registers its interest again, resyncs every node and reloads the retained store.
"""

from __future__ import annotations

import logging
import math
import random
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final, final

import coredis
import trio
from coredis.retry import NoRetryPolicy

from ..config import ClusterConfig
from ..hub import FANOUT_STEP, Hub, Subscription
from ..message import Message, Retained
from ..permissions import ClientPermissions
from ..subjects import SubjectError
from .interest import ClusterStatus, Diff, LocalInterest, RemoteInterest, weight
from .wire import (
    BYE,
    CHANGE,
    FULL,
    VERSION_FIELD,
    BadFrame,
    Keys,
    entry,
    field,
    pack_batch,
    pack_interest,
    pack_retained,
    pack_retained_update,
    parse_hash,
    unpack_batch,
    unpack_interest,
    unpack_retained,
    unpack_retained_update,
)

__all__ = ["ClusterLink"]

log = logging.getLogger("broker.cluster")

#: One PUBLISH carries at most about this many payload bytes; more goes in the next one.
MAX_BATCH_BYTES: Final = 1024 * 1024
#: The longest wait between two attempts to reach Redis again.
MAX_RECONNECT_DELAY: Final = 2.0

#: Refresh this node's heartbeat and interest TTL, drop expired nodes, and return every live
#: node with its interest version (nil if its hash is gone), on Redis's clock.
_HEARTBEAT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local out = {}
for _, node in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  out[#out + 1] = node
  out[#out + 1] = redis.call('HGET', ARGV[3] .. node, '')
end
return out
"""

_COUNTERS: Final = (
    "sent",
    "received",
    "publishes",
    "lost",
    "dropped_outbound",
    "dropped_inbound",
    "bad_frames",
    "resyncs",
    "reconnects",
)


def _public_url(url: str) -> str:
    """The URL without its password, for logs and monitoring."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@final
class ClusterLink:
    """This node's link to the others through Redis; see the module docstring.

    Attributes:
        node: This node's name in the cluster.
        state: ``connecting``, ``up``, ``degraded`` or ``stopped`` (see `ClusterStatus`).
        counters: The counters `status` reports.
    """

    def __init__(self, hub: Hub, config: ClusterConfig, node: str) -> None:
        self.name = f"cluster:{node}"
        self.lang = ""
        self.version = ""
        # What monitoring counts per subscriber: for the link, messages from and to Redis.
        self.in_msgs = self.in_bytes = self.out_msgs = self.out_bytes = 0
        self.echo = False
        self.subscriptions: dict[Any, Subscription] = {}
        self.permissions: ClientPermissions | None = None
        self.node = node
        self.hub = hub
        self.config = config
        self.keys = Keys(config.prefix)
        # Microseconds since the epoch: a node restarted under the same name numbers on above
        # what it announced before.
        self.local = LocalInterest(version=time.time_ns() // 1000)
        self.remote = RemoteInterest()
        self.state = "connecting"
        self.last_error = ""
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._ttl_ms = math.ceil(config.node_timeout * 1000)
        self._outbox: deque[tuple[str | None, str | None, Message]] = deque()
        self._wake = trio.Event()
        self._memo: Message | None = None
        self._memo_nodes: set[str] = set()
        #: Memos of split publishes under way (see `_switch`), by the message's id.
        self._split: dict[int, tuple[Message, set[str]]] = {}
        self._inbound_send, self._inbound_receive = trio.open_memory_channel[bytes](
            config.inbound_buffer
        )
        self._resync: set[str] = set()
        self._resync_wake = trio.Event()
        self._full = False
        self._stop = trio.Event()
        self._attempted = trio.Event()
        #: Set each time the link comes up (tests and the `up` property wait on it).
        self.up_event = trio.Event()
        #: Told of each change to ``up`` or ``degraded`` with `status` as a dict.
        self.on_state: Callable[[dict[str, object]], None] | None = None
        self._inbox = self.keys.inbox(node).encode()
        hub.watch = self._watch
        hub.on_retain = self._on_local_retain

    # -- the hub's side: synchronous, never waits ----------------------------------------------

    def deliver(self, sub: Subscription, message: Message) -> int:
        """Queue `message` for the node `sub` stands for (once per node for plain interest)."""
        sub.delivered += 1
        node, _pattern, queue, _index = sub.sid
        if queue is None:
            if self._memo is not message:
                self._switch(message)
            if node in self._memo_nodes:
                return 0
            self._memo_nodes.add(node)
        return self._queue(node, queue, message)

    def _switch(self, message: Message) -> None:
        """Make `message` the memo's: which nodes it was queued for, so each gets it once.

        Every delivery of a publish happens in one step, except a publish the hub splits into
        steps (`Hub.fanouts`), between which other publishes run: the memo of such a publish is
        put aside while it is under way, and taken back when its next step comes.
        """
        fanouts = self.hub.fanouts
        if not fanouts and not self._split:
            self._memo, self._memo_nodes = message, set()
            return
        live = {id(fanout.message): fanout.message for fanout in fanouts.values()}
        old = self._memo
        if old is not None and live.get(id(old)) is old:
            self._split[id(old)] = (old, self._memo_nodes)
        self._split = {key: kept for key, kept in self._split.items() if live.get(key) is kept[0]}
        kept = self._split.pop(id(message), None)
        if kept is not None and kept[0] is message:
            self._memo, self._memo_nodes = message, kept[1]
        else:
            self._memo, self._memo_nodes = message, set()

    def replay(self, sub: Subscription, entries: list[tuple[str, Retained]]) -> bool:
        """Never: each node replays the retained messages from its own copy."""
        return False

    def _queue(self, node: str | None, queue: str | None, message: Message) -> int:
        if self.state != "up":
            self.counters["lost"] += 1
            return 0
        if len(self._outbox) >= self.config.outbound_buffer:
            self.counters["dropped_outbound"] += 1
            return 0
        self._outbox.append((node, queue, message))
        self._wake.set()
        return 1

    def _watch(self, sub: Subscription, delta: int) -> None:
        if sub.owner is not self and self.local.change(sub.pattern, sub.queue, delta):
            self._wake.set()

    def _on_local_retain(self, message: Message) -> None:
        self._queue(None, None, message)

    # -- status ----------------------------------------------------------------------------------

    def status(self) -> ClusterStatus:
        """A snapshot for monitoring (`ClusterStatus`)."""
        return ClusterStatus(
            node=self.node,
            state=self.state,
            redis=_public_url(self.config.redis_url),
            nodes=tuple(sorted(self.remote.keys())),
            last_error=self.last_error,
            counters=dict(self.counters),
        )

    def announce(self, subs: Iterable[Subscription]) -> None:
        """Count in this node's interest subscriptions made outside the hub's verbs (the
        server's own ``$SYS.REQ`` ones go straight into the table)."""
        for sub in subs:
            self.local.change(sub.pattern, sub.queue, 1)

    def health(self) -> str | None:
        """Why /healthz should say this node is not well (the link is not up), or None."""
        if self.state == "up":
            return None
        reason = f": {self.last_error}" if self.last_error else ""
        return f"cluster link {self.state}{reason}; serving local clients only"

    def _set_state(self, state: str) -> None:
        """Change state and tell `on_state` (the server's $SYS events) of real changes."""
        if state == self.state:
            return
        self.state = state
        if self.on_state is not None and state in ("up", "degraded"):
            self.on_state(self.status().as_dict())

    def stop(self) -> None:
        """Ask `run` to say goodbye to the cluster and return; returns at once."""
        self._stop.set()

    # -- the link's life -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the link to Redis until `stop` (or cancellation).

        `task_status.started()` comes once the first attempt to reach Redis has succeeded or
        failed (or after `node_timeout`), so a server starts serving either way: alone, and
        degraded, if Redis is not there yet.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._route_inbound)
            nursery.start_soon(self._maintain, nursery.cancel_scope)
            with trio.move_on_after(self.config.node_timeout):
                await self._attempted.wait()
            task_status.started()

    async def _maintain(self, scope: trio.CancelScope) -> None:
        delay = 0.1
        down_since: float | None = None
        try:
            while not self._stop.is_set():
                try:
                    await self._session()
                except Exception as error:  # whatever ended the session, Redis's or ours
                    if self.state == "up":  # a new outage: a fresh clock and backoff
                        down_since, delay = None, 0.1
                    down_since = self._degrade(error, down_since)
                self._attempted.set()
                if self._stop.is_set():
                    break
                with trio.move_on_after(delay * random.uniform(0.5, 1.0)):
                    await self._stop.wait()
                delay = min(delay * 2, MAX_RECONNECT_DELAY)
                if down_since is not None and time.monotonic() - down_since > (
                    self.config.node_timeout
                ):
                    # No heartbeat can be read: the other nodes may be gone too. Forget them,
                    # so requests get "no responders" at once rather than time out.
                    for node in list(self.remote.keys()):
                        self._apply(self.remote.drop(node))
        finally:
            self.state = "stopped"
            scope.cancel()

    def _degrade(self, error: BaseException, down_since: float | None) -> float:
        reason = _reason(error)
        if self.state != "degraded" or reason != self.last_error:
            log.warning(
                "cluster link to %s degraded: %s; serving local clients only, reconnecting",
                _public_url(self.config.redis_url),
                reason,
            )
        if self.state == "up":
            self.counters["reconnects"] += 1
        self.last_error = reason
        self._set_state("degraded")
        self.up_event = trio.Event()
        # What was queued for other nodes will not reach them.
        self.counters["lost"] += sum(1 for item in self._outbox if item[0] is not None)
        self._outbox.clear()
        return time.monotonic() if down_since is None else down_since

    async def _session(self) -> None:
        config = self.config
        redis: coredis.Redis[bytes] = coredis.Redis.from_url(
            config.redis_url,
            decode_responses=False,
            connect_timeout=min(config.node_timeout, 5.0),
            stream_timeout=config.node_timeout,
            retry_policy=NoRetryPolicy(),
        )
        keys = self.keys
        async with redis:
            pubsub = redis.pubsub(
                channel_handlers={
                    self._inbox: self._on_batch,
                    keys.interest_channel: self._on_interest,
                    keys.retained_channel: self._on_retained_update,
                },
                ignore_subscribe_messages=True,
                retry_policy=NoRetryPolicy(),
                max_idle_seconds=max(config.heartbeat_interval, 1.0),
            )
            async with pubsub, trio.open_nursery() as nursery:
                # Subscribed first, so nothing announced from here on is missed; then this
                # node's interest, then everyone else's, then the retained store.
                await self._register(redis)
                await self._beat(redis, every=True)
                await self._load_retained(redis)
                self.last_error = ""
                self._set_state("up")
                self.up_event.set()
                self._attempted.set()
                log.info(
                    "cluster node %s joined through %s; %d other nodes",
                    self.node,
                    _public_url(config.redis_url),
                    len(self.remote.nodes),
                )
                nursery.start_soon(self._write_loop, redis)
                nursery.start_soon(self._heartbeat_loop, redis)
                await self._stop.wait()
                await self._flush(redis)
                await self._goodbye(redis)
                nursery.cancel_scope.cancel()

    async def _register(self, redis: coredis.Redis[bytes]) -> None:
        self._full = True
        await self._flush(redis)

    async def _goodbye(self, redis: coredis.Redis[bytes]) -> None:
        keys = self.keys
        with trio.move_on_after(1):
            async with redis.pipeline(transaction=False) as pipe:
                pipe.delete([keys.interest(self.node)])
                pipe.zrem(keys.nodes, [self.node])
                pipe.publish(keys.interest_channel, pack_interest(BYE, self.node, 0, {}))
        log.info("cluster node %s left", self.node)

    # -- writing -------------------------------------------------------------------------------

    async def _write_loop(self, redis: coredis.Redis[bytes]) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await self._flush(redis)

    async def _flush(self, redis: coredis.Redis[bytes]) -> None:
        """Send what is pending in one pipeline: interest, retained, then messages per node."""
        items = list(self._outbox)
        self._outbox.clear()
        try:
            await self._send(redis, items)
        except BaseException:
            # Redis went away mid-flush: what this flush carried for other nodes is lost.
            self.counters["lost"] += sum(1 for item in items if item[0] is not None)
            raise

    async def _send(
        self, redis: coredis.Redis[bytes], items: list[tuple[str | None, str | None, Message]]
    ) -> None:
        keys = self.keys
        me = self.node
        interest_key = keys.interest(me)
        messages = 0
        async with redis.pipeline(transaction=False) as pipe:
            if self._full:
                self._full = False
                version, fields = self.local.snapshot()
                pipe.delete([interest_key])
                pipe.hset(
                    interest_key,
                    {VERSION_FIELD: version, **{field(key): n for key, n in fields.items()}},
                )
                pipe.pexpire(interest_key, self._ttl_ms)
                pipe.publish(keys.interest_channel, pack_interest(FULL, me, version, fields))
            elif (taken := self.local.take()) is not None:
                version, changes = taken
                gone = [field(key) for key, n in changes.items() if n == 0]
                if gone:
                    pipe.hdel(interest_key, gone)
                pipe.hset(
                    interest_key,
                    {VERSION_FIELD: version, **{field(k): n for k, n in changes.items() if n}},
                )
                pipe.pexpire(interest_key, self._ttl_ms)
                pipe.publish(keys.interest_channel, pack_interest(CHANGE, me, version, changes))
            batches: dict[str, list[list[Any]]] = {}
            for node, queue, message in items:
                if node is None:
                    subject = message[0]
                    if message[1]:
                        pipe.hset(keys.retained, {subject: pack_retained(message)})
                    else:
                        pipe.hdel(keys.retained, [subject])
                    pipe.publish(keys.retained_channel, pack_retained_update(me, message))
                    continue
                batches.setdefault(node, []).append(entry(queue, message))
                messages += 1
            publishes = 0
            for node, entries in batches.items():
                channel = keys.inbox(node)
                start = size = 0
                for index, item in enumerate(entries):
                    size += len(item[2]) + 64
                    if size >= MAX_BATCH_BYTES:
                        pipe.publish(channel, pack_batch(me, entries[start : index + 1]))
                        publishes += 1
                        start, size = index + 1, 0
                if start < len(entries):
                    pipe.publish(channel, pack_batch(me, entries[start:]))
                    publishes += 1
        self.counters["sent"] += messages
        self.counters["publishes"] += publishes

    # -- heartbeats and resyncs ------------------------------------------------------------------

    async def _heartbeat_loop(self, redis: coredis.Redis[bytes]) -> None:
        while True:
            with trio.move_on_after(self.config.heartbeat_interval):
                await self._resync_wake.wait()
            self._resync_wake = trio.Event()
            await self._beat(redis)

    async def _beat(self, redis: coredis.Redis[bytes], *, every: bool = False) -> None:
        keys = self.keys
        reply = await redis.eval(
            _HEARTBEAT,
            keys=[keys.nodes, keys.interest(self.node)],
            args=[self.node, self._ttl_ms, keys.interest("")],
        )
        if not isinstance(reply, list) or len(reply) % 2:
            raise BadFrame(f"unexpected heartbeat reply: {reply!r}")
        live: dict[str, int | None] = {}
        for name, version in zip(reply[::2], reply[1::2], strict=True):
            node = bytes(name).decode()
            live[node] = None if version is None else int(version)
        if live.get(self.node) is None:
            # Redis lost this node's interest (restarted, or flushed): announce it again.
            log.warning("cluster: Redis lost node %s's interest; registering it again", self.node)
            self._full = True
            self._wake.set()
        gone, stale = self.remote.compare(live, self.node)
        for node in gone:
            log.info("cluster node %s is gone (left, or no heartbeat for node_timeout)", node)
            self._apply(self.remote.drop(node))
        todo = set(stale) | self._resync
        if every:
            todo |= {node for node in live if node != self.node}
        self._resync = set()
        for node in todo:
            if node in live:
                await self._resync_node(redis, node)

    async def _resync_node(self, redis: coredis.Redis[bytes], node: str) -> None:
        data = await redis.hgetall(self.keys.interest(node))
        self.counters["resyncs"] += 1
        try:
            version, fields = parse_hash(data)
        except BadFrame as error:
            self._bad("interest hash", error)
            return
        if version is None:
            self._apply(self.remote.drop(node))
            return
        if node not in self.remote.nodes:
            log.info("cluster node %s seen", node)
        self._apply(self.remote.replace(node, version, fields))

    def _apply(self, diffs: list[Diff]) -> None:
        """Add or remove the stand-in subscriptions for other nodes' interest."""
        hub = self.hub
        held = self.subscriptions
        for node, (pattern, queue), old, new in diffs:
            before, after = weight(old, queue), weight(new, queue)
            for index in range(after, before):
                sub = held.get((node, pattern, queue, index))
                if sub is not None:
                    hub.detach(sub)
            for index in range(before, after):
                try:
                    hub.attach(self, (node, pattern, queue, index), pattern, queue)
                except SubjectError as error:
                    log.warning("cluster: node %s's interest %r skipped: %s", node, pattern, error)
                    break

    # -- reading -------------------------------------------------------------------------------

    def _on_batch(self, frame: Any) -> None:
        try:
            self._inbound_send.send_nowait(frame["data"])
        except trio.WouldBlock:
            self.counters["dropped_inbound"] += 1

    def _on_interest(self, frame: Any) -> None:
        try:
            kind, node, version, changes = unpack_interest(frame["data"])
        except BadFrame as error:
            self._bad("interest event", error)
            return
        if node == self.node:
            return
        if kind == BYE:
            log.info("cluster node %s left", node)
            self._apply(self.remote.drop(node))
        elif kind == FULL:
            if node not in self.remote.nodes:
                log.info("cluster node %s joined", node)
            self._apply(self.remote.replace(node, version, changes))
        else:
            diffs = self.remote.apply(node, version, changes)
            if diffs is None:
                self._resync.add(node)
                self._resync_wake.set()
            else:
                self._apply(diffs)

    def _on_retained_update(self, frame: Any) -> None:
        try:
            origin, message = unpack_retained_update(frame["data"])
        except BadFrame as error:
            self._bad("retained update", error)
            return
        if origin != self.node:
            self._store(message)

    async def _load_retained(self, redis: coredis.Redis[bytes]) -> None:
        stored = await redis.hgetall(self.keys.retained)
        for name, value in stored.items():
            try:
                message = unpack_retained(bytes(name).decode(), value)
            except (BadFrame, UnicodeDecodeError) as error:
                self._bad("retained value", error)
                continue
            self._store(message)

    def _store(self, message: Message) -> None:
        problem = self.hub.store_retained(message)
        if problem is not None:
            log.warning("cluster: retained %r not kept on this node: %s", message[0], problem)

    async def _route_inbound(self) -> None:
        hub = self.hub
        fanouts = hub.fanouts
        counters = self.counters
        work = 0
        async for data in self._inbound_receive:
            try:
                _origin, entries = unpack_batch(data)
            except BadFrame as error:
                self._bad("message batch", error)
                continue
            for queue, message in entries:
                self.in_msgs += 1
                self.in_bytes += len(message[1])
                if queue is None:
                    work += hub.deliver_plain(self, message, FANOUT_STEP)
                else:
                    work += hub.deliver_group(self, message, queue, FANOUT_STEP)
                # As a client's reader: a bounded amount of routing between two yields, and a
                # message reaching tens of thousands of subscriptions goes out in steps.
                while work >= FANOUT_STEP or self in fanouts:
                    await trio.lowlevel.checkpoint()
                    work = hub.resume(self, FANOUT_STEP)
            counters["received"] += len(entries)

    def _bad(self, what: str, error: Exception) -> None:
        self.counters["bad_frames"] += 1
        log.warning("cluster: skipped a malformed %s from Redis: %s", what, error)


def _reason(error: BaseException) -> str:
    """The first leaf of a (possibly grouped) failure, as one line."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
