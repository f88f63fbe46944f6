"""The Redis key and channel names of one cluster, and the msgpack of what travels on them.

Keys and channels, all under the cluster's prefix ``P`` (docs/cluster.md explains each):

- ``P:nodes``: sorted set, node name -> the Redis time (ms) its heartbeat expires at.
- ``P:interest:NODE``: hash, `field(key)` -> count, and ``""`` -> the node's version; it
  expires with the node's heartbeat.
- ``P:retained``: hash, subject -> `pack_retained` value: the cluster's retained store.
- channel ``P:interest``: every node's interest changes (`pack_interest`), heard by all.
- channel ``P:retained:updates``: retained updates (`pack_retained_update`), heard by all.
- channel ``P:node:NODE``: the messages routed to NODE (`pack_batch`), heard by NODE only.

Whatever comes from Redis is checked for shape: a frame of the wrong shape raises
`BadFrame` (the link counts and skips it), never anything else.

Pure: no trio, anyio, coredis or socket.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, final

import msgpack

from ..message import Message
from .interest import Key

__all__ = [
    "VERSION_FIELD",
    "BadFrame",
    "Entry",
    "Keys",
    "field",
    "pack_batch",
    "pack_interest",
    "pack_retained",
    "pack_retained_update",
    "parse_field",
    "parse_hash",
    "unpack_batch",
    "unpack_interest",
    "unpack_retained",
    "unpack_retained_update",
]

#: The interest hash's field that holds the node's version.
VERSION_FIELD: Final = b""

#: One message routed to a node: the queue group the publishing node chose that node for, or
#: None for the node's plain subscriptions; then the message.
Entry: TypeAlias = "tuple[str | None, Message]"


class BadFrame(ValueError):
    """Something read from Redis is not what a node of this version writes."""


@final
@dataclass(frozen=True, slots=True)
class Keys:
    """The names one cluster (one prefix) uses in Redis."""

    prefix: str

    @property
    def nodes(self) -> str:
        return f"{self.prefix}:nodes"

    def interest(self, node: str) -> str:
        return f"{self.prefix}:interest:{node}"

    @property
    def interest_channel(self) -> str:
        return f"{self.prefix}:interest"

    @property
    def retained(self) -> str:
        return f"{self.prefix}:retained"

    @property
    def retained_channel(self) -> str:
        return f"{self.prefix}:retained:updates"

    def inbox(self, node: str) -> str:
        return f"{self.prefix}:node:{node}"


def _pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack(data: object) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BadFrame(f"expected bytes from Redis, got {type(data).__name__}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as error:  # every msgpack failure is the frame's fault
        raise BadFrame(f"not msgpack: {error}") from None


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise BadFrame(what)


def field(key: Key) -> bytes:
    """The interest hash field of a key (never empty, so never `VERSION_FIELD`)."""
    return _pack(list(key))


def parse_field(data: object) -> Key:
    value = _unpack(data)
    _check(
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and (value[1] is None or isinstance(value[1], str)),
        "an interest field must be [pattern, queue or nil]",
    )
    return value[0], value[1]


def _count(value: object) -> int:
    if not isinstance(value, int | bytes | str):
        raise BadFrame(f"not a count: {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise BadFrame(f"not a count: {value!r}") from None
    _check(number >= 0, "a count must not be negative")
    return number


def parse_hash(data: Mapping[Any, Any]) -> tuple[int | None, dict[Key, int]]:
    """A node's interest hash as read with HGETALL: its version (None if absent) and keys."""
    version = None
    fields: dict[Key, int] = {}
    for name, value in data.items():
        if name == VERSION_FIELD:
            version = _count(value)
        else:
            fields[parse_field(name)] = _count(value)
    return version, fields


# -- interest events --------------------------------------------------------------------------

CHANGE: Final = "change"
FULL: Final = "full"
BYE: Final = "bye"


def pack_interest(kind: str, node: str, version: int, changes: Mapping[Key, int]) -> bytes:
    """An interest event: `kind` is CHANGE (deltas), FULL (everything) or BYE (leaving)."""
    return _pack([kind, node, version, [[p, q, c] for (p, q), c in changes.items()]])


def unpack_interest(data: object) -> tuple[str, str, int, dict[Key, int]]:
    value = _unpack(data)
    _check(
        isinstance(value, list)
        and len(value) == 4
        and value[0] in (CHANGE, FULL, BYE)
        and isinstance(value[1], str)
        and isinstance(value[2], int)
        and isinstance(value[3], list),
        "an interest event must be [kind, node, version, changes]",
    )
    changes: dict[Key, int] = {}
    for item in value[3]:
        _check(
            isinstance(item, list)
            and len(item) == 3
            and isinstance(item[0], str)
            and (item[1] is None or isinstance(item[1], str))
            and isinstance(item[2], int)
            and item[2] >= 0,
            "an interest change must be [pattern, queue or nil, count]",
        )
        changes[(item[0], item[1])] = item[2]
    return value[0], value[1], value[2], changes


# -- messages ---------------------------------------------------------------------------------


def pack_batch(origin: str, entries: list[list[Any]]) -> bytes:
    """Messages for one node, in the order they were published: ``[origin, entries]``.

    Each entry is ``[queue, subject, payload, reply_to, headers, retain]`` (see `Entry`).
    """
    return _pack([origin, entries])


def entry(queue: str | None, message: Message) -> list[Any]:
    subject, payload, reply_to, headers, retain = message
    return [queue, subject, payload, reply_to, headers, retain]


def unpack_batch(data: object) -> tuple[str, list[Entry]]:
    value = _unpack(data)
    _check(
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], list),
        "a batch must be [origin, entries]",
    )
    entries: list[Entry] = []
    for item in value[1]:
        _check(isinstance(item, list) and len(item) == 6, "an entry has 6 fields")
        queue, subject, payload, reply_to, headers, retain = item
        _check(
            (queue is None or isinstance(queue, str))
            and isinstance(subject, str)
            and isinstance(payload, bytes)
            and (reply_to is None or isinstance(reply_to, str))
            and (headers is None or _is_headers(headers))
            and isinstance(retain, bool),
            "an entry must be [queue, subject, payload, reply_to, headers, retain]",
        )
        entries.append((queue, (subject, payload, reply_to, headers, retain)))
    return value[0], entries


def _is_headers(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


# -- retained ---------------------------------------------------------------------------------


def pack_retained(message: Message) -> bytes:
    """The value kept in the retained hash for a subject: ``[payload, headers]``."""
    return _pack([message[1], message[3]])


def unpack_retained(subject: str, data: object) -> Message:
    value = _unpack(data)
    _check(
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], bytes)
        and (value[1] is None or _is_headers(value[1])),
        "a retained value must be [payload, headers]",
    )
    return (subject, value[0], None, value[1], True)


def pack_retained_update(origin: str, message: Message) -> bytes:
    """A retained message set (or, empty, deleted) on `origin`, for every node's copy."""
    return _pack([origin, message[0], message[1], message[3]])


def unpack_retained_update(data: object) -> tuple[str, Message]:
    value = _unpack(data)
    _check(
        isinstance(value, list)
        and len(value) == 4
        and isinstance(value[0], str)
        and isinstance(value[1], str)
        and isinstance(value[2], bytes)
        and (value[3] is None or _is_headers(value[3])),
        "a retained update must be [origin, subject, payload, headers]",
    )
    return value[0], (value[1], value[2], None, value[3], True)
