"""/metrics: the broker's own counters in Prometheus's text format, made by prometheus-client.

A custom collector reads the hub's counters at scrape time, so the hot path pays nothing for
Prometheus: no client-library counter is bumped per message. Counters are counters (their
names end in ``_total``), gauges are gauges.

Served in the classic text format (0.0.4), never OpenMetrics: the `broker_connections` gauge
and the `broker_connections_total` counter are two families there, but one name in
OpenMetrics, which a scraper would refuse.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Final, final

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..hub import Hub
from ..monitoring import Connection

__all__ = ["CONTENT_TYPE", "COUNTERS", "GAUGES", "BrokerCollector", "render"]

#: The classic text format's media type (prometheus-client names it only in recent versions).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: Counter name (without ``_total``) -> (`broker.stats.Statistics` field, help).
COUNTERS: Final = {
    "broker_in_msgs": ("messages_in", "Messages published and routed (refused ones excluded)."),
    "broker_out_msgs": ("messages_out", "Messages queued for subscribers, replays included."),
    "broker_in_bytes": ("bytes_in", "Payload bytes of broker_in_msgs."),
    "broker_out_bytes": ("bytes_out", "Payload bytes of broker_out_msgs."),
    "broker_slow_consumers": ("slow_consumers", "Clients found reading too slowly."),
    "broker_connections": ("total_connections", "Client connections accepted."),
    "broker_refused_connections": (
        "refused_connections",
        "Connections refused: limits, handshake failures, shutdown.",
    ),
    "broker_dropped_msgs": ("dropped_messages", "Messages a drop policy discarded."),
    "broker_no_responders": ("no_responders", "Requests answered at once with no responders."),
    "broker_protocol_errors": ("protocol_errors", "Errors caused by clients breaking the rules."),
}
#: Gauge name -> (`broker.stats.Statistics` field, help).
GAUGES: Final = {
    "broker_connections": ("connections", "Clients connected now."),
    "broker_subscriptions": ("subscriptions", "Subscriptions held now."),
    "broker_retained_subjects": ("retained_subjects", "Subjects with a retained message."),
    "broker_retained_bytes": ("retained_bytes", "Memory the retained store holds, in bytes."),
}

_PENDING_HELP: Final = "Bytes waiting to be written to clients, at their memory cost."


@final
class BrokerCollector:
    """A prometheus-client collector over one hub's counters, read at each scrape."""

    __slots__ = ("connections", "hub")

    def __init__(self, hub: Hub, connections: Callable[[], Iterable[Connection]]) -> None:
        self.hub = hub
        self.connections = connections

    def collect(self) -> Iterator[Metric]:
        stats = self.hub.statistics().as_dict()
        for name, (field, text) in COUNTERS.items():
            yield CounterMetricFamily(name, text, value=stats[field])
        for name, (field, text) in GAUGES.items():
            yield GaugeMetricFamily(name, text, value=stats[field])
        pending = sum(conn.pending_bytes for conn in self.connections())
        yield GaugeMetricFamily("broker_pending_bytes", _PENDING_HELP, value=pending)


def render(collector: BrokerCollector) -> bytes:
    """The text a scrape gets."""
    return generate_latest(collector)
