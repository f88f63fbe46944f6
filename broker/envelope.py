"""What the hub routes: one published message, wire-neutral, encoded at most once per wire.

A publish becomes one `Envelope`, handed to every subscriber it reaches. Each wire's adapter
encodes the part of its delivery frame that all subscribers share (for the native wire, the MSG
fields after the sid) the first time it needs it and caches it on the envelope, so a publish
fanned out to a thousand native subscribers is encoded once, and one fanned out to none is never
encoded. Retained messages are stored as envelopes, so a replay reuses the same encodings.

Pure: no trio, anyio or socket.
"""

from __future__ import annotations

from typing import Final, final

from .protocol.native import Headers, encode_msg_tail, encode_retained_tail

__all__ = ["NO_RESPONDERS_HEADERS", "Envelope"]

#: The headers of the empty message that answers a request nobody can serve (status 503).
NO_RESPONDERS_HEADERS: Final[Headers] = {"status": "503"}


@final
class Envelope:
    """One published message: subject, payload, reply subject, headers, and cached encodings.

    Immutable by convention (fields are read, never written, after construction); the cache
    slots are the only state that changes, and only from None to the encoding.

    Attributes:
        native: The native MSG tail, once `encode_native` made it; read it first, as the hot
            path does (``tail = envelope.native or envelope.encode_native()``).
    """

    __slots__ = ("_native_retained", "headers", "native", "payload", "reply_to", "subject")

    def __init__(
        self,
        subject: str,
        payload: bytes,
        reply_to: str | None = None,
        headers: Headers | None = None,
    ) -> None:
        self.subject = subject
        self.payload = payload
        self.reply_to = reply_to
        self.headers = headers
        self.native: bytes | None = None
        self._native_retained: bytes | None = None

    def __repr__(self) -> str:
        return f"<Envelope {self.subject!r} {len(self.payload)} bytes>"

    def encode_native(self) -> bytes:
        """The native MSG fields after the sid, shared by every native subscriber; cached."""
        tail = self.native
        if tail is None:
            tail = self.native = encode_msg_tail(
                self.subject, self.payload, self.reply_to, self.headers
            )
        return tail

    def encode_native_retained(self) -> bytes:
        """The same for a replay: without the reply subject, ending with the retained flag.

        A retained copy drops ``reply_to``: a replayed request would send its answers to an
        inbox that is long gone. Its length is also what the retained store charges the
        message (see `broker.retained`).
        """
        tail = self._native_retained
        if tail is None:
            tail = self._native_retained = encode_retained_tail(
                self.subject, self.payload, None, self.headers
            )
        return tail
