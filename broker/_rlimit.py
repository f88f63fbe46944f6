"""Lifting this process's soft limit on open files, for the server and the benchmark clients.

The default soft RLIMIT_NOFILE (often 1024) is far below what a broker with thousands of clients,
or a benchmark process holding thousands of idle connections, needs; an unprivileged process may
raise it as far as the hard limit. This module only moves the limit: what to say when it stays
too low is the caller's business.
"""

from __future__ import annotations

import contextlib
import resource
from typing import Final

__all__ = ["UNLIMITED_TARGET", "raise_fd_limit"]

#: Where the soft limit goes when the hard limit is unlimited and no number is asked for: Linux's
#: default fs.nr_open, past which setrlimit fails.
UNLIMITED_TARGET: Final = 1 << 20


def raise_fd_limit(wanted: int | None = None) -> int:
    """Lift the soft RLIMIT_NOFILE towards `wanted`, as far as the hard limit allows.

    The limit is never lowered. A refusal by the system (some kernels cap the limit below the hard
    limit) leaves it where it was: the return value says what was reached.

    Args:
        wanted: The soft limit to reach; None means the hard limit (`UNLIMITED_TARGET` when the
            hard limit is unlimited).

    Returns:
        The soft limit now in force; `resource.RLIM_INFINITY` if it is unlimited.

    Example::

        wanted = max_connections + 64
        if (limit := raise_fd_limit(wanted)) != resource.RLIM_INFINITY and limit < wanted:
            log.warning("the file descriptor limit (%d) is below %d", limit, wanted)
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft
    if wanted is None:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, UNLIMITED_TARGET)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
