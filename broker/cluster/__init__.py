"""Scale-out: several broker nodes joined through Redis into one broker.

- `interest` (pure): this node's interest as announced, and every other node's as learnt.
- `wire` (pure): the Redis key and channel names, and the msgpack of what travels on them.
- `link` (trio, coredis): the `ClusterLink`, one more subscriber and origin of the hub.

docs/cluster.md has the design: keys, channels, heartbeats, ordering, faults, figures.
Only `link` imports coredis, and only a server with a ``[cluster]`` section imports `link`.
"""

from __future__ import annotations

from .interest import ClusterStatus

__all__ = ["ClusterStatus"]
