"""The rule for arguments that are a number of seconds, shared by every API that takes one.

The async client's options and the command line's ``--timeout`` check with `check_seconds`;
the ``timeout`` of every call that waits (both clients, the testing helpers) with
`check_timeout`. So they accept the same values and refuse the rest with the same message.

This module is pure: it imports neither trio, anyio nor the client.
"""

from __future__ import annotations

__all__ = ["check_seconds", "check_timeout"]


def check_seconds(
    name: str, value: object, *, allow_zero: bool = False, allow_none: bool = False
) -> None:
    """Refuse `value` unless it is a number of seconds: an int or float (not a bool), > 0.

    Args:
        name: What the caller calls it, for the message (``timeout``, ``--timeout``).
        value: The value to check; NaN is refused, infinity accepted.
        allow_zero: Also accept 0 (a timeout of 0 takes only what is already there).
        allow_none: Also accept None (no limit).

    Raises:
        ValueError: Naming `name`, the rule and `value`, e.g. ``timeout must be a number of
            seconds >= 0, or None, got -1``.
    """
    if value is None and allow_none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (value >= 0 if allow_zero else value > 0)
    ):
        bound = ">= 0" if allow_zero else "> 0"
        none = ", or None" if allow_none else ""
        raise ValueError(f"{name} must be a number of seconds {bound}{none}, got {value!r}")


def check_timeout(timeout: object, name: str = "timeout") -> None:
    """Refuse a timeout that is neither None nor a number of seconds >= 0.

    What None means is the caller's rule: wait forever in `broker.sync`, the default limit or
    the caller's cancel scope in the async client (`broker.client.deadlines`).

    Raises:
        ValueError: As `check_seconds`.
    """
    # The common values decided inline: this runs on every `Subscription.next`.
    if timeout is None or ((type(timeout) is float or type(timeout) is int) and timeout >= 0):
        return
    check_seconds(name, timeout, allow_zero=True, allow_none=True)
