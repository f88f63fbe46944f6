"""`broker stats` and `broker top`: a running broker's monitoring endpoint, for people.

`stats` prints /varz as a table; `top` is a live view of the busiest connections, like
nats-top: /connz sorted by a key the user picks, with message and byte rates worked out from
two readings. Both only read the HTTP endpoint (`broker.server.http`), with the standard
library's client: there is nothing here a browser or curl could not do too.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, final

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = [
    "DEFAULT_MONITOR_URL",
    "MonitorUnreachable",
    "Sample",
    "fetch",
    "stats_table",
    "take_sample",
    "top_frame",
]

DEFAULT_MONITOR_URL: Final = "http://127.0.0.1:8222"
#: Seconds one request to the endpoint may take.
FETCH_TIMEOUT: Final = 5.0


class MonitorUnreachable(Exception):
    """The monitoring endpoint could not be read; the message says where and why."""


def fetch(url: str, path: str, params: Mapping[str, object] | None = None) -> dict[str, Any]:
    """GET ``url + path`` and decode its JSON.

    Raises:
        MonitorUnreachable: No answer, an HTTP error, or not JSON.
    """
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    target = url.rstrip("/") + path + query
    try:
        with urllib.request.urlopen(target, timeout=FETCH_TIMEOUT) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as error:
        detail = error.read(1024).decode("utf-8", "replace").strip()
        raise MonitorUnreachable(f"{target}: HTTP {error.code} {detail}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise MonitorUnreachable(
            f"cannot read {target}: {reason} (is the broker serving with monitoring on?"
            " broker serve --monitor-port 8222)"
        ) from None
    except ValueError:
        raise MonitorUnreachable(f"{target} did not answer JSON") from None
    if not isinstance(answer, dict):
        raise MonitorUnreachable(f"{target} did not answer a JSON object")
    return answer


def _size(count: float) -> str:
    """Bytes the way people read them: 512, 1.5K, 20.0M."""
    for unit in ("", "K", "M", "G"):
        if abs(count) < 1024 or unit == "G":
            return f"{count:.0f}" if not unit else f"{count:.1f}{unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _count(count: float) -> str:
    """Counts the way people read them: 950, 12.3k, 4.5M."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.1f}{unit}"
    return f"{count:.0f}"


_STATS_ROWS: Final = (
    ("server_id", str),
    ("version", str),
    ("uptime", str),
    ("connections", str),
    ("total_connections", str),
    ("subscriptions", str),
    ("in_msgs", _count),
    ("out_msgs", _count),
    ("in_bytes", _size),
    ("out_bytes", _size),
    ("slow_consumers", str),
    ("dropped_msgs", str),
    ("mem", _size),
    ("cpu", lambda value: f"{value}%"),
    ("max_connections", str),
    ("max_payload", _size),
)


def stats_table(varz: Mapping[str, Any]) -> Table:
    """/varz as a two-column table: the figures people look at first, then the rest."""
    table = Table(title="broker /varz", show_header=True, header_style="bold")
    table.add_column("field")
    table.add_column("value", justify="right")
    shown = set()
    for name, show in _STATS_ROWS:
        if name in varz:
            shown.add(name)
            value = varz[name]
            table.add_row(name, show(value) if isinstance(value, int | float) else str(value))
    for name, value in varz.items():
        if name not in shown:
            table.add_row(name, str(value))
    return table


@final
@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of /varz and /connz, and when it was taken (monotonic seconds)."""

    varz: dict[str, Any]
    connz: dict[str, Any]
    taken: float
    by_cid: dict[int, dict[str, Any]] = field(default_factory=dict)


def take_sample(url: str, *, sort: str, limit: int) -> Sample:
    """Read /varz and one page of /connz sorted by `sort`.

    Raises:
        MonitorUnreachable: As `fetch`.
    """
    varz = fetch(url, "/varz")
    connz = fetch(url, "/connz", {"sort": sort, "limit": limit})
    by_cid = {conn["cid"]: conn for conn in connz.get("connections", [])}
    return Sample(varz, connz, time.monotonic(), by_cid)


def _rate(now: Sample, before: Sample | None, cid: int, key: str) -> float | None:
    if before is None or cid not in before.by_cid:
        return None
    elapsed = now.taken - before.taken
    if elapsed <= 0:
        return None
    return max(0.0, float(now.by_cid[cid][key] - before.by_cid[cid][key]) / elapsed)


def _server_rate(now: Sample, before: Sample | None, key: str) -> str:
    if before is None or now.taken <= before.taken:
        return "-"
    return _count((now.varz[key] - before.varz[key]) / (now.taken - before.taken))


_Show = Callable[[float | None], str]


def _per_second(show: Callable[[float], str]) -> _Show:
    return lambda value: "-" if value is None else show(value)


def top_frame(now: Sample, before: Sample | None = None, *, sort: str) -> RenderableType:
    """One screen of `broker top`: the server's line, then its busiest connections.

    Rates (per second) need `before`, an earlier sample; without one they show ``-``.
    """
    varz = now.varz
    connz = now.connz
    header = Text.assemble(
        ("broker ", "bold"),
        f"{varz.get('server_id', '?')}  version {varz.get('version', '?')}  "
        f"uptime {varz.get('uptime', '?')}  cpu {varz.get('cpu', '?')}%  "
        f"mem {_size(varz.get('mem', 0))}\n",
        f"connections {varz.get('connections', 0)} (total {varz.get('total_connections', 0)})"
        f"  subscriptions {varz.get('subscriptions', 0)}  slow consumers "
        f"{varz.get('slow_consumers', 0)}\n",
        f"msgs in {_count(varz.get('in_msgs', 0))} ({_server_rate(now, before, 'in_msgs')}/s)"
        f"  out {_count(varz.get('out_msgs', 0))} ({_server_rate(now, before, 'out_msgs')}/s)"
        f"  bytes in {_size(varz.get('in_bytes', 0))}  out {_size(varz.get('out_bytes', 0))}",
    )
    table = Table(
        title=f"{connz.get('num_connections', 0)} of {connz.get('total', 0)} connections,"
        f" sorted by {sort}",
        header_style="bold",
        expand=False,
    )
    table.add_column("cid", justify="right")
    table.add_column("name", max_width=24, overflow="ellipsis", no_wrap=True)
    table.add_column("ip:port", min_width=15, no_wrap=True)
    for name, justify in (
        ("lang/version", "left"),
        ("subs", "right"),
        ("pending", "right"),
        ("msgs in", "right"),
        ("msgs out", "right"),
        ("in/s", "right"),
        ("out/s", "right"),
        ("bytes in/s", "right"),
        ("bytes out/s", "right"),
        ("idle", "right"),
        ("uptime", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    rate_count = _per_second(_count)
    rate_size = _per_second(_size)
    for conn in connz.get("connections", []):
        cid = conn["cid"]
        identity = "/".join(part for part in (conn.get("lang"), conn.get("version")) if part)
        table.add_row(
            str(cid),
            conn.get("name") or "",
            f"{conn.get('ip', '')}:{conn.get('port', '')}",
            identity,
            str(conn.get("subscriptions", 0)),
            _size(conn.get("pending_bytes", 0)),
            _count(conn.get("in_msgs", 0)),
            _count(conn.get("out_msgs", 0)),
            rate_count(_rate(now, before, cid, "in_msgs")),
            rate_count(_rate(now, before, cid, "out_msgs")),
            rate_size(_rate(now, before, cid, "in_bytes")),
            rate_size(_rate(now, before, cid, "out_bytes")),
            conn.get("idle", ""),
            conn.get("uptime", ""),
        )
    return Group(header, table)
