"""Who wants what, cluster-wide: this node's interest and every other node's.

Interest is kept per key ``(pattern, queue)``. A plain key is announced as present (1) or
absent, however many local clients hold it; a queue group key as its member count, so that the
publishing node can weigh every node's members and spread a group's messages evenly.

Another node's interest is known by version: each node numbers its announcements, a change
event carries its number, and a reader applies one only if it is the next; a gap (an event
lost while Redis was away, or a missed batch) asks for a resync, a full read of that node's
hash. Versions start from the clock at start-up, so a node restarted under the same name
continues above its old numbers.

Pure: no trio, anyio, coredis or socket.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, TypeAlias, final

__all__ = [
    "MAX_MEMBERS_PER_KEY",
    "ClusterStatus",
    "Diff",
    "Key",
    "LocalInterest",
    "RemoteInterest",
    "weight",
]

#: ``(pattern, queue)``: queue is None for a plain subscription.
Key: TypeAlias = tuple[str, "str | None"]
#: ``(node, key, old count, new count)``: one change to apply to the routing table.
Diff: TypeAlias = tuple[str, Key, int, int]

#: The most members of one queue group key one node is weighed with. Past it the node gets
#: this share, not more: the link holds one stand-in subscription per member.
MAX_MEMBERS_PER_KEY: Final = 1024


def announced(count: int, queue: str | None) -> int:
    """What the rest of the cluster is told of `count` local subscriptions on one key."""
    if queue is None:
        return 1 if count > 0 else 0
    return max(count, 0)


def weight(count: int, queue: str | None) -> int:
    """How many stand-in subscriptions another node's `count` on a key is routed as."""
    if queue is None:
        return 1 if count > 0 else 0
    return min(max(count, 0), MAX_MEMBERS_PER_KEY)


@final
class LocalInterest:
    """This node's subscriptions counted per key, and the announcements still to send.

    `change` is called for every local subscribe and unsubscribe; only a change in what is
    announced is queued, and several changes to a key before a flush coalesce into one.
    """

    __slots__ = ("counts", "pending", "version")

    def __init__(self, version: int) -> None:
        self.counts: dict[Key, int] = {}
        self.pending: dict[Key, int] = {}
        self.version = version

    def change(self, pattern: str, queue: str | None, delta: int) -> bool:
        """Count one subscription in or out; True if an announcement is now pending."""
        key = (pattern, queue)
        old = self.counts.get(key, 0)
        new = old + delta
        if new > 0:
            self.counts[key] = new
        else:
            self.counts.pop(key, None)
        if announced(old, queue) == announced(new, queue):
            return False
        self.pending[key] = announced(new, queue)
        return True

    def take(self) -> tuple[int, dict[Key, int]] | None:
        """The pending changes under the next version (None when there are none)."""
        if not self.pending:
            return None
        changes, self.pending = self.pending, {}
        self.version += 1
        return self.version, changes

    def snapshot(self) -> tuple[int, dict[Key, int]]:
        """Everything, under the next version, for a full registration; clears what is pending."""
        self.pending = {}
        self.version += 1
        return self.version, {key: announced(count, key[1]) for key, count in self.counts.items()}


@final
class RemoteInterest:
    """What every other node has announced, and which version of it was applied."""

    __slots__ = ("nodes", "versions")

    def __init__(self) -> None:
        self.nodes: dict[str, dict[Key, int]] = {}
        self.versions: dict[str, int] = {}

    def apply(self, node: str, version: int, changes: Mapping[Key, int]) -> list[Diff] | None:
        """Apply one change event; None if a resync of `node` is needed instead.

        An event at or below the applied version is stale (a resync already covered it).
        """
        known = self.versions.get(node)
        if known is None or version > known + 1:
            return None
        if version <= known:
            return []
        self.versions[node] = version
        held = self.nodes[node]
        diffs: list[Diff] = []
        for key, count in changes.items():
            old = held.get(key, 0)
            if count > 0:
                held[key] = count
            else:
                held.pop(key, None)
            if old != count:
                diffs.append((node, key, old, count))
        return diffs

    def replace(self, node: str, version: int, fields: Mapping[Key, int]) -> list[Diff]:
        """Take a node's whole interest, read from Redis or announced in full.

        Ignored when an equal or newer version is applied already.
        """
        known = self.versions.get(node)
        if known is not None and version <= known:
            return []
        self.versions[node] = version
        old = self.nodes.get(node, {})
        new = {key: count for key, count in fields.items() if count > 0}
        self.nodes[node] = new
        diffs: list[Diff] = [(node, key, count, 0) for key, count in old.items() if key not in new]
        diffs.extend(
            (node, key, old.get(key, 0), count)
            for key, count in new.items()
            if old.get(key, 0) != count
        )
        return diffs

    def drop(self, node: str) -> list[Diff]:
        """Forget a node that left or stopped heartbeating."""
        self.versions.pop(node, None)
        held = self.nodes.pop(node, {})
        return [(node, key, count, 0) for key, count in held.items()]

    def compare(self, live: Mapping[str, int | None], me: str) -> tuple[list[str], list[str]]:
        """Which known nodes are gone, and which live ones need a resync.

        Args:
            live: Each live node's version in Redis (None if its hash is gone).
            me: This node, left out.
        """
        gone = [node for node in self.nodes if node not in live]
        stale = [
            node
            for node, version in live.items()
            if node != me
            and (
                node not in self.versions or (version is not None and version > self.versions[node])
            )
        ]
        return gone, stale

    def keys(self) -> Iterable[str]:
        return self.nodes.keys()


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterStatus:
    """The Redis link's state as monitoring shows it.

    Attributes:
        node: This node's name.
        state: ``"connecting"`` (never reached Redis yet), ``"up"``, ``"degraded"`` (Redis is
            away; local clients are served, cross-node messages are lost and counted) or
            ``"stopped"``.
        redis: The Redis URL, without any password.
        nodes: The other nodes seen alive, by name.
        last_error: Why the link is degraded ("" when up).
        counters: ``sent`` / ``received`` (messages to and from other nodes), ``publishes``
            (Redis PUBLISH commands of messages), ``lost`` (published for another node while
            Redis was away), ``dropped_outbound`` / ``dropped_inbound`` (a full buffer; inbound
            counts batches), ``bad_frames``, ``resyncs``, ``reconnects``.
    """

    node: str
    state: str
    redis: str
    nodes: tuple[str, ...]
    last_error: str = ""
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def degraded(self) -> bool:
        return self.state != "up"

    def as_dict(self) -> dict[str, object]:
        return {
            "node": self.node,
            "state": self.state,
            "redis": self.redis,
            "nodes": list(self.nodes),
            "last_error": self.last_error,
            **self.counters,
        }
