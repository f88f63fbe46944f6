"""How a wait ends: a ``timeout`` keyword with a bounded default that defers to cancel scopes.

Every call of the async client and of `broker.testing` that waits for the server or for another
task takes ``timeout``, so none waits forever by default:

- **A number of seconds** (0 allowed; ``math.inf`` for no limit of the call's own): the call
  raises the builtin `TimeoutError` once they pass, as nats.py's calls, ``anyio.fail_after``
  and `broker.sync` do. Any cancel scope around the call still applies too: the first to expire
  wins.
- **None, the default**: if the caller is inside a cancel scope with a deadline
  (``trio.fail_after``, ``trio.move_on_after``, ``anyio.fail_after``, ...), that scope alone
  bounds the call, exactly as before there was a ``timeout`` keyword; a longer scope is never
  cut short by a default. Otherwise the call's default applies (`DEFAULT_REQUEST_TIMEOUT` for
  ``request`` and the others in `broker.client.options`).

A scope's own expiry raises what it always raises (`trio.TooSlowError` from ``trio.fail_after``,
`TimeoutError` from ``anyio.fail_after``, nothing from ``move_on_after``). asyncio's own
``asyncio.timeout()`` is invisible to anyio, hence to this rule: under asyncio pass ``timeout=``
(or use ``anyio.fail_after``) to allow longer than the default.

`broker.sync` keeps its own rule, fit for threads: its ``timeout`` defaults to a number and None
there waits forever. This module is the async side's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

import anyio

from .._checks import check_timeout
from .._concurrency import trio_if_running

__all__ = ["deadline", "expired", "own_limit"]


def own_limit(timeout: float | None, default: float) -> float:
    """The seconds a call may wait on its own account: `timeout`, else the default rule.

    Returns ``math.inf`` when `timeout` is None and the caller's cancel scopes have a deadline
    (they bound the call), `default` when they have none.

    Raises:
        ValueError: `timeout` is neither None nor a number of seconds >= 0.
    """
    return _own_limit(timeout, default, trio_if_running())


def _own_limit(timeout: float | None, default: float, trio: ModuleType | None) -> float:
    """`own_limit`, with the `trio` module if the caller runs under Trio (else None)."""
    check_timeout(timeout)
    if timeout is None:
        if trio is None:
            effective = anyio.current_effective_deadline()
        else:
            effective = trio.current_effective_deadline()
        return default if effective == math.inf else math.inf
    return float(timeout)


@contextmanager
def deadline(timeout: float | None, default: float, missed: Callable[[], str]) -> Iterator[None]:
    """Bound the block by `own_limit`; raise `TimeoutError` if it runs out.

    Args:
        timeout: The caller's ``timeout`` argument.
        default: The call's default limit, for when neither `timeout` nor a scope bounds it.
        missed: What did not happen, for the message, called only on expiry (``no reply to a
            request on 'x'``; the limit follows).

    Raises:
        TimeoutError: The limit passed first; the message says which limit, and how to allow
            longer when it was the default.
        ValueError: As `own_limit`.
    """
    defaulted = timeout is None
    trio = trio_if_running()
    limit = _own_limit(timeout, default, trio)
    if limit == math.inf:
        yield
        return
    # Under Trio, Trio's own scope (the client does not import Trio itself): anyio's wraps one
    # and finds the backend on every call, which made a request's bound cost twice as much,
    # all of it latency (it is entered before the request goes out, left after the reply).
    scope = anyio.move_on_after(limit) if trio is None else trio.move_on_after(limit)
    with scope:
        yield
    if scope.cancelled_caught:
        raise TimeoutError(expired(missed(), limit, defaulted=defaulted)) from None


def expired(missed: str, limit: float, *, defaulted: bool) -> str:
    """The message of a `TimeoutError`: what did not happen, within which limit."""
    if defaulted:
        return (
            f"{missed} within {limit} s, the default timeout; to wait longer pass timeout= "
            "(seconds, math.inf for no limit) or call it inside a cancel scope with a deadline"
        )
    return f"{missed} within timeout ({limit} s)"
