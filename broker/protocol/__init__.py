"""The wire codecs, one I/O-free module per wire; this package re-exports the native one.

`broker.protocol.native` is broker's own wire (length-prefixed msgpack frames). Each codec has
the same shape, in the style of h11: `receive_data(bytes)`, then `events()` (or `next_event()`)
to take what decoded, and `send(event)` to turn an event into bytes. None of them imports trio,
anyio or socket, so they are tested by passing bytes between two objects.
"""

from __future__ import annotations

from .native import *  # noqa: F403  (the names are native's __all__, listed once there)
from .native import __all__ as __all__
