"""Server-wide counters, bumped in place on the hot path and read as frozen snapshots."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, final

__all__ = ["Counters", "Statistics"]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Statistics:
    """A consistent copy of the server's counters at one instant.

    Message and byte counts are of payloads: `messages_out` counts deliveries, so one publish
    to ten subscribers adds 1 to `messages_in` and 10 to `messages_out`. A delivery is counted
    when it is queued for its subscriber; `dropped_messages` counts those a drop policy later
    discarded (drop_oldest) or never queued (drop_newest). `messages_in` counts only publishes
    that were routed, not those refused for a bad subject or a full retained store. Replays of
    retained messages count in `messages_out`; `retained_subjects` and `retained_bytes` are
    what the retained store holds now.
    """

    connections: int
    total_connections: int
    refused_connections: int
    subscriptions: int
    messages_in: int
    bytes_in: int
    messages_out: int
    bytes_out: int
    slow_consumers: int
    dropped_messages: int
    no_responders: int
    protocol_errors: int
    retained_subjects: int
    retained_bytes: int
    auth_failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict, for logs and JSON."""
        return asdict(self)


@final
class Counters:
    """The live, mutable counters; only the server's own tasks touch them."""

    __slots__ = (
        "auth_failures",
        "bytes_in",
        "bytes_out",
        "connections",
        "dropped_messages",
        "messages_in",
        "messages_out",
        "no_responders",
        "protocol_errors",
        "refused_connections",
        "slow_consumers",
        "total_connections",
    )

    def __init__(self) -> None:
        self.connections = 0
        self.total_connections = 0
        self.refused_connections = 0
        self.messages_in = 0
        self.bytes_in = 0
        self.messages_out = 0
        self.bytes_out = 0
        self.slow_consumers = 0
        self.dropped_messages = 0
        self.no_responders = 0
        self.protocol_errors = 0
        self.auth_failures = 0

    def snapshot(
        self, *, subscriptions: int, retained_subjects: int, retained_bytes: int
    ) -> Statistics:
        """Freeze the counters, adding the gauges read from the routing table and the store."""
        return Statistics(
            connections=self.connections,
            total_connections=self.total_connections,
            refused_connections=self.refused_connections,
            subscriptions=subscriptions,
            messages_in=self.messages_in,
            bytes_in=self.bytes_in,
            messages_out=self.messages_out,
            bytes_out=self.bytes_out,
            slow_consumers=self.slow_consumers,
            dropped_messages=self.dropped_messages,
            no_responders=self.no_responders,
            protocol_errors=self.protocol_errors,
            retained_subjects=retained_subjects,
            retained_bytes=retained_bytes,
            auth_failures=self.auth_failures,
        )
