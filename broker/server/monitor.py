"""The live server as monitoring sees it: /varz, /connz, /subsz and /healthz for one `Server`.

The HTTP endpoint (`broker.server.http`), the Prometheus collector (`broker.server.metrics`)
and the ``$SYS.REQ`` answers (`broker.server.sysevents`) all read through one `Monitor`, so
they agree. The views themselves are pure (`broker.monitoring`); this adds the clock and the
process's CPU and memory.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, final

from ..monitoring import (
    CpuMeter,
    ServerFacts,
    connz,
    healthz,
    parse_connz_query,
    subsz,
    varz,
)

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Monitor"]


@final
class Monitor:
    """Monitoring's views of one server, each built when asked."""

    __slots__ = ("_cpu", "server")

    def __init__(self, server: Server) -> None:
        self.server = server
        self._cpu = CpuMeter(time.time, server.start)

    def facts(self) -> ServerFacts:
        server = self.server
        host, port = server.addresses[0] if server.addresses else ("", 0)
        http_host, http_port = server.monitor_address or ("", 0)
        return ServerFacts(
            server_id=server.server_id,
            start=server.start,
            host=host,
            port=port,
            http_host=http_host,
            http_port=http_port,
        )

    def varz(self) -> dict[str, Any]:
        answer = varz(self.server.hub, self.facts(), now=time.time(), cpu=self._cpu.percent())
        if self.server.cluster is not None:
            # The Redis link's state, the nodes seen, and its counters (docs/cluster.md).
            answer["cluster"] = self.server.cluster.status().as_dict()
        return answer

    def connz(self, params: Mapping[str, str]) -> dict[str, Any]:
        """Raises `broker.monitoring.QueryError` for a bad parameter."""
        query = parse_connz_query(params)
        return connz(self.server.transports, query, now=time.time())

    def subsz(self, params: Mapping[str, str]) -> dict[str, Any]:
        """Raises `broker.monitoring.QueryError` for a bad ``test`` subject."""
        return subsz(self.server.hub, test=params.get("test") or None)

    def healthz(self) -> tuple[int, dict[str, Any]]:
        return healthz(self.server.hub, self.server.health_checks)
