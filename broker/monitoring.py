"""What monitoring shows: /varz, /connz, /subsz and /healthz as plain dicts, ready for JSON.

The HTTP endpoint (`broker.server.http`) and the ``$SYS.REQ`` answers (`broker.server.sysevents`)
both serve these, so the two always agree. Field names are NATS's (``in_msgs``, ``cid``,
``pending_bytes``...), so its users and tools read ours as they read its; times are RFC 3339
strings and durations Go-style strings (``"1h2m3s"``), as NATS writes them.

Everything is read when asked: the hot path only bumps the counters these functions read.

Pure: no trio, anyio or socket (a test imports it alone); the I/O side hands in the live
objects and the clock.
"""

from __future__ import annotations

import datetime
import os
import resource
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, final

from ._version import __version__
from .hub import Hub, Subscriber
from .subjects import SubjectError

__all__ = [
    "CONNZ_DEFAULT_LIMIT",
    "CONNZ_MAX_LIMIT",
    "CONNZ_SORT_KEYS",
    "SUBS_LISTED",
    "Connection",
    "ConnzQuery",
    "CpuMeter",
    "QueryError",
    "ServerFacts",
    "connection_info",
    "connz",
    "duration",
    "healthz",
    "parse_connz_query",
    "rfc3339",
    "subsz",
    "varz",
]

#: Connections in one /connz page unless ``limit`` says otherwise (as NATS).
CONNZ_DEFAULT_LIMIT: Final = 1024
#: Most connections one /connz page may hold, whatever ``limit`` asks: the page is built in the
#: broker's own thread, so its size bounds the time a monitoring request takes from clients.
CONNZ_MAX_LIMIT: Final = 4096
#: Most subjects listed per connection with ``subs=true``; ``subscriptions`` still counts all.
SUBS_LISTED: Final = 1024
#: Characters of a client's name shown (the name itself is bounded only by the frame limit).
NAME_SHOWN: Final = 256


class QueryError(ValueError):
    """A monitoring query parameter that cannot be used; the message names it and the rule."""


class Connection(Protocol):
    """What monitoring reads of one connection (`broker.server.transport.Transport`)."""

    @property
    def client_id(self) -> int: ...

    @property
    def address(self) -> tuple[str, int]: ...

    @property
    def start(self) -> float: ...

    @property
    def last_activity(self) -> float: ...

    @property
    def pending_bytes(self) -> int: ...

    @property
    def adapter(self) -> Subscriber: ...


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ServerFacts:
    """What /varz says of the server beyond the hub's counters."""

    server_id: str
    start: float
    host: str
    port: int
    http_host: str = ""
    http_port: int = 0


def rfc3339(when: float) -> str:
    """Epoch seconds as an RFC 3339 UTC time with microseconds, as NATS writes its times."""
    moment = datetime.datetime.fromtimestamp(when, tz=datetime.UTC)
    return moment.isoformat().replace("+00:00", "Z")


def duration(seconds: float) -> str:
    """Whole seconds as NATS writes an uptime: ``"3s"``, ``"2m3s"``, ``"1h0m3s"``, ``"2d1h0m3s"``.

    Go-style, so tools written for NATS's monitoring read it.
    """
    left = max(0, int(seconds))
    days, left = divmod(left, 86400)
    hours, left = divmod(left, 3600)
    minutes, secs = divmod(left, 60)
    if days:
        return f"{days}d{hours}h{minutes}m{secs}s"
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _rss_bytes() -> int:
    """The process's resident memory: /proc on Linux, the peak RSS elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@final
class CpuMeter:
    """CPU use in percent of one core since the previous reading (since it was made for the
    first), as NATS's ``cpu``: 200 is two cores busy.

    Args:
        clock: Wall-clock seconds, as the caller reads them.
        start: When measuring starts (by the same clock).
    """

    __slots__ = ("_clock", "_last")

    def __init__(self, clock: Callable[[], float], start: float) -> None:
        self._clock = clock
        self._last = (start, _cpu_seconds())

    def percent(self) -> float:
        now, used = self._clock(), _cpu_seconds()
        then, before = self._last
        self._last = (now, used)
        elapsed = now - then
        return round(100.0 * (used - before) / elapsed, 1) if elapsed > 0 else 0.0


def varz(
    hub: Hub,
    facts: ServerFacts,
    *,
    now: float,
    cpu: float,
    mem: int | None = None,
) -> dict[str, Any]:
    """/varz: the server's identity, limits and counters (message and byte counts of payloads)."""
    config = hub.config
    stats = hub.statistics()
    return {
        "server_id": facts.server_id,
        "server_name": hub.info["server_name"],
        "version": __version__,
        "proto": hub.info["version"],
        "host": facts.host,
        "port": facts.port,
        "http_host": facts.http_host,
        "http_port": facts.http_port,
        "max_connections": config.max_connections,
        "max_payload": config.max_payload,
        "max_subscriptions": config.max_subscriptions,
        "max_pending": config.max_pending_bytes,
        "max_pending_messages": config.max_pending_messages,
        "slow_consumer_policy": config.slow_consumer_policy,
        "ping_interval": config.ping_interval,
        "write_deadline": config.write_timeout,
        "start": rfc3339(facts.start),
        "now": rfc3339(now),
        "uptime": duration(now - facts.start),
        "mem": _rss_bytes() if mem is None else mem,
        "cpu": cpu,
        "cores": os.cpu_count() or 1,
        "connections": stats.connections,
        "total_connections": stats.total_connections,
        "refused_connections": stats.refused_connections,
        "subscriptions": stats.subscriptions,
        "in_msgs": stats.messages_in,
        "out_msgs": stats.messages_out,
        "in_bytes": stats.bytes_in,
        "out_bytes": stats.bytes_out,
        "slow_consumers": stats.slow_consumers,
        "dropped_msgs": stats.dropped_messages,
        "no_responders": stats.no_responders,
        "protocol_errors": stats.protocol_errors,
        "retained_subjects": stats.retained_subjects,
        "retained_bytes": stats.retained_bytes,
    }


# -- /connz ------------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ConnzQuery:
    """/connz's query: a page of connections in one order, or one connection by cid."""

    offset: int = 0
    limit: int = CONNZ_DEFAULT_LIMIT
    sort: str = "cid"
    subs: bool = False
    cid: int | None = None


def _idle(conn: Connection, now: float) -> float:
    return now - conn.last_activity


#: Sort keys: each a number to sort by and whether larger comes first (NATS's order: counts
#: and idle time descending, cid and start ascending). NATS's own names are aliases.
_SORTS: Final[Mapping[str, tuple[Callable[[Connection, float], float], bool]]] = {
    "cid": (lambda c, _: c.client_id, False),
    "start": (lambda c, _: c.start, False),
    "subscriptions": (lambda c, _: len(c.adapter.subscriptions), True),
    "pending_bytes": (lambda c, _: c.pending_bytes, True),
    "out_msgs": (lambda c, _: c.adapter.out_msgs, True),
    "in_msgs": (lambda c, _: c.adapter.in_msgs, True),
    "out_bytes": (lambda c, _: c.adapter.out_bytes, True),
    "in_bytes": (lambda c, _: c.adapter.in_bytes, True),
    "last_activity": (lambda c, _: c.last_activity, True),
    "idle": (_idle, True),
    "uptime": (lambda c, now: now - c.start, True),
}
_SORT_ALIASES: Final = {
    "subs": "subscriptions",
    "pending": "pending_bytes",
    "msgs_to": "out_msgs",
    "msgs_from": "in_msgs",
    "bytes_to": "out_bytes",
    "bytes_from": "in_bytes",
    "last": "last_activity",
}
#: Every sort key /connz takes, ours and NATS's.
CONNZ_SORT_KEYS: Final = (*_SORTS, *_SORT_ALIASES)


def _int_param(name: str, value: str, least: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise QueryError(f"{name} must be an integer, got {value[:64]!r}") from None
    if number < least:
        raise QueryError(f"{name} must be >= {least}, got {number}")
    return number


def _bool_param(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "detail"):
        return True
    if lowered in ("", "0", "false", "no"):
        return False
    raise QueryError(f"{name} must be true or false, got {value[:64]!r}")


def parse_connz_query(params: Mapping[str, str]) -> ConnzQuery:
    """Read /connz's query parameters; unknown ones are ignored, as NATS does.

    ``limit`` above `CONNZ_MAX_LIMIT` is lowered to it (the answer's ``limit`` says so).

    Raises:
        QueryError: A parameter has the wrong form or an unknown sort key.
    """
    offset = _int_param("offset", params["offset"], 0) if "offset" in params else 0
    limit = CONNZ_DEFAULT_LIMIT
    if "limit" in params:
        limit = min(_int_param("limit", params["limit"], 0), CONNZ_MAX_LIMIT)
    sort = params.get("sort", "cid") or "cid"
    sort = _SORT_ALIASES.get(sort, sort)
    if sort not in _SORTS:
        known = ", ".join(CONNZ_SORT_KEYS)
        raise QueryError(f"sort must be one of {known}; got {sort[:64]!r}")
    subs = _bool_param("subs", params["subs"]) if "subs" in params else False
    cid = _int_param("cid", params["cid"], 1) if "cid" in params else None
    return ConnzQuery(offset=offset, limit=limit, sort=sort, subs=subs, cid=cid)


def connection_info(conn: Connection, now: float, *, subs: bool = False) -> dict[str, Any]:
    """One connection as /connz shows it."""
    client = conn.adapter
    ip, port = conn.address
    last = conn.last_activity
    held = client.subscriptions
    info: dict[str, Any] = {
        "cid": conn.client_id,
        "name": client.name[:NAME_SHOWN],
        "lang": client.lang,
        "version": client.version,
        "ip": ip,
        "port": port,
        "start": rfc3339(conn.start),
        "last_activity": rfc3339(last),
        "uptime": duration(now - conn.start),
        "idle": duration(now - last),
        "pending_bytes": conn.pending_bytes,
        "in_msgs": client.in_msgs,
        "out_msgs": client.out_msgs,
        "in_bytes": client.in_bytes,
        "out_bytes": client.out_bytes,
        "subscriptions": len(held),
    }
    if subs:
        listed: list[str] = []
        for sub in held.values():
            if len(listed) >= SUBS_LISTED:
                info["subscriptions_list_truncated"] = True
                break
            listed.append(sub.pattern)
        info["subscriptions_list"] = listed
    return info


def connz(connections: Iterable[Connection], query: ConnzQuery, *, now: float) -> dict[str, Any]:
    """/connz: one page of connections, sorted, and how many there are in all.

    Only the page is formatted: sorting costs one number per connection, so a server with
    many connections answers a small page in little time.
    """
    if query.cid is not None:
        chosen = [conn for conn in connections if conn.client_id == query.cid]
        total = len(chosen)
        page = chosen[:1]
    else:
        key, descending = _SORTS[query.sort]
        everyone = list(connections)
        total = len(everyone)
        everyone.sort(key=lambda conn: (key(conn, now), conn.client_id), reverse=descending)
        page = everyone[query.offset : query.offset + query.limit]
    listed = [connection_info(conn, now, subs=query.subs) for conn in page]
    return {
        "now": rfc3339(now),
        "num_connections": len(listed),
        "total": total,
        "offset": query.offset,
        "limit": query.limit,
        "sort": query.sort,
        "connections": listed,
    }


# -- /subsz and /healthz ----------------------------------------------------------------------


def subsz(hub: Hub, *, test: str | None = None) -> dict[str, Any]:
    """/subsz: the routing table and its match cache; with `test`, who a subject would reach.

    Raises:
        QueryError: `test` is not a valid subject.
    """
    table = hub.table
    cached = table.cached()
    fanouts = [len(match.plain) + len(match.groups) for match in cached]
    matches = table.matches
    answer: dict[str, Any] = {
        "num_subscriptions": len(table),
        "num_cache": len(cached),
        "num_inserts": table.inserts,
        "num_removes": table.removes,
        "num_matches": matches,
        "cache_hit_rate": round((matches - table.misses) / matches, 4) if matches else 0.0,
        "max_fanout": max(fanouts, default=0),
        "avg_fanout": round(sum(fanouts) / len(fanouts), 2) if fanouts else 0.0,
    }
    if test is not None:
        try:
            match = table.peek(test)
        except SubjectError as error:
            raise QueryError(f"test: {error}") from None
        answer["test"] = test
        # A queue group gets one copy, whatever its size: it counts once, as one receiver.
        answer["num_matches_test"] = len(match.plain) + len(match.groups)
        answer["subscriptions_list"] = [sub.pattern for sub in match.plain[:SUBS_LISTED]] + [
            f"{group.members[0].pattern} (queue {group.name})"
            for group in match.groups[:SUBS_LISTED]
        ]
    return answer


def healthz(
    hub: Hub, problems: Iterable[Callable[[], str | None]] = ()
) -> tuple[int, dict[str, Any]]:
    """/healthz: 200 ``{"status": "ok"}``, or 503 with the first reason it is not.

    Args:
        hub: Its ``closing`` flag means the server is shutting down.
        problems: Further checks (a cluster link's state, say): each returns a reason or None.
    """
    if hub.closing:
        return 503, {"status": "unavailable", "error": "the server is shutting down"}
    for check in problems:
        reason = check()
        if reason:
            return 503, {"status": "unavailable", "error": reason}
    return 200, {"status": "ok"}
