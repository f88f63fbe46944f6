"""Log lines about one peer, rate-limited per host, with a count of what was left out.

Every line the server writes about a client is bounded in length (`broker._text.brief`); this
bounds their number. A hostile host can open connections that each earn a line (a bad HELLO, a
refusal at max_connections, a slow consumer) far faster than a log can take them: unbounded,
that is megabytes of log a minute and a disk or a log pipeline to fill. So each host may cause
`lines_per_minute` lines, in bursts up to that many, and the next line written after a pause
says how many were suppressed meanwhile. Keyed by host, not host and port: an attacker's
connections come from many ports of one address.

Pure: the clock is passed in (trio's in the server), so the rule is tested with plain numbers.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final, final

__all__ = ["MAX_PEERS_TRACKED", "PeerLog", "host_of"]

#: Hosts whose recent lines are remembered; past it the longest quiet one is forgotten (its
#: suppressed count, if any, is logged as it goes), so the limiter's own memory is bounded.
MAX_PEERS_TRACKED: Final = 4096


def host_of(peer: str) -> str:
    """The host part of ``host:port`` or ``[v6]:port`` (as `format_address` writes them)."""
    host = peer.rpartition(":")[0] or peer
    return host[1:-1] if host.startswith("[") else host


@final
class _Allowance:
    __slots__ = ("last", "suppressed", "tokens")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.last = now
        self.suppressed = 0


@final
class PeerLog:
    """A logger's lines about peers, at most `lines_per_minute` per host (a token bucket)."""

    __slots__ = ("_clock", "_logger", "_max_peers", "_peers", "_rate", "burst")

    def __init__(
        self,
        logger: logging.Logger,
        *,
        lines_per_minute: int,
        clock: Callable[[], float],
        max_peers: int = MAX_PEERS_TRACKED,
    ) -> None:
        self._logger = logger
        self._clock = clock
        self._max_peers = max_peers
        self.burst = lines_per_minute
        self._rate = lines_per_minute / 60.0
        self._peers: OrderedDict[str, _Allowance] = OrderedDict()

    def log(
        self,
        level: int,
        peer: str,
        message: str,
        *args: object,
        exc_info: bool = False,
        logger: logging.Logger | None = None,
    ) -> bool:
        """Log `message % args` about `peer` (``host:port``) unless its host is over its rate.

        `logger` overrides the one given at construction: the server's modules log under their
        own names and share one allowance per host.

        Returns:
            Whether the line was written. A line written after others were suppressed carries
            their number, in the text and as the field ``suppressed``.
        """
        if logger is None:
            logger = self._logger
        if not logger.isEnabledFor(level):
            return False
        host = host_of(peer)
        now = self._clock()
        peers = self._peers
        allowance = peers.get(host)
        if allowance is None:
            if len(peers) >= self._max_peers:
                self._forget_oldest()
            allowance = peers[host] = _Allowance(float(self.burst), now)
        else:
            peers.move_to_end(host)
            allowance.tokens = min(
                float(self.burst), allowance.tokens + (now - allowance.last) * self._rate
            )
            allowance.last = now
        if allowance.tokens < 1.0:
            allowance.suppressed += 1
            return False
        allowance.tokens -= 1.0
        extra: dict[str, Any] | None = None
        if allowance.suppressed:
            suppressed, allowance.suppressed = allowance.suppressed, 0
            message += " (%d earlier lines about %s suppressed)"
            args = (*args, suppressed, host)
            extra = {"suppressed": suppressed}
        logger.log(level, message, *args, exc_info=exc_info, extra=extra)
        return True

    def _forget_oldest(self) -> None:
        host, allowance = self._peers.popitem(last=False)
        if allowance.suppressed:
            self._logger.warning(
                "%d lines about %s suppressed",
                allowance.suppressed,
                host,
                extra={"suppressed": allowance.suppressed},
            )
