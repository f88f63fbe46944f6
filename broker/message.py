"""What the hub routes: a publish as one immutable tuple, and a retained message as stored.

A publish is one `Message`, ``(subject, payload, reply_to, headers, retain)``, handed as the
same object to every subscriber it reaches. Each wire encodes the part of its delivery frame
that every subscriber shares at most once per publish (the native adapter keeps a one-entry
memo keyed on the message's identity, see `broker.server.native`), so a publish fanned out to
a thousand subscribers is encoded once and one fanned out to none is never encoded. A tuple,
not an object with a cache slot: building a Python object costs four times as much, and this
runs once per publish.

A retained message is kept as a `Retained`, which caches its replay encodings per wire, since
every new matching subscription replays it again.

Pure: no trio, anyio or socket.
"""

from __future__ import annotations

from typing import Final, TypeAlias, final

from .protocol.native import Headers, encode_retained_tail

__all__ = ["NO_RESPONDERS_HEADERS", "Message", "Retained"]

#: One publish: ``(subject, payload, reply_to, headers, retain)``. The native wire's `Pub` event
#: is one; any other origin (a ``$SYS`` publisher, a link to other nodes) builds the same tuple.
#: Immutable, headers included: a subscriber's encoding of it may be reused for the next one.
Message: TypeAlias = "tuple[str, bytes, str | None, Headers | None, bool]"

#: The headers of the empty message that answers a request nobody can serve (status 503).
NO_RESPONDERS_HEADERS: Final[Headers] = {"status": "503"}


@final
class Retained:
    """A subject's retained message, with its replay encodings cached per wire.

    A retained copy drops ``reply_to``: a replayed request would send its answers to an inbox
    that is long gone.

    Attributes:
        message: The message, with no reply subject.
        native: The native MSG fields after the sid, ending with the retained flag (true).
        nats: The NATS MSG parts (`broker.protocol.nats.msg_parts`), made by the first NATS
            subscriber it is replayed to; None until then.
        size: What the retained store charges for it: its native replay encoding's length.
    """

    __slots__ = ("message", "native", "nats", "size")

    def __init__(self, message: Message) -> None:
        subject, payload, _reply_to, headers, retain = message
        self.message: Message = (subject, payload, None, headers, retain)
        self.native = encode_retained_tail(subject, payload, None, headers)
        self.size = len(self.native)
        self.nats: tuple[bytes, bytes, bytes] | None = None

    def __repr__(self) -> str:
        return f"<Retained {self.message[0]!r} {len(self.message[1])} bytes>"

    @property
    def payload(self) -> bytes:
        return self.message[1]
