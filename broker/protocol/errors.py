"""The two errors every codec raises: this side misused the API, or the peer broke the wire.

Each carries the `ErrorCode` that reports it, so the server can tell the client why, and the
transport treats every wire's errors alike. Any other exception out of a codec is a bug.
"""

from __future__ import annotations

from ..errors import ErrorCode

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """A violation of the wire contract, with the ERR code that reports it."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.value!r}, {self.message!r})"


class LocalProtocolError(ProtocolError):
    """This side tried to send something the contract forbids (a bug in the caller)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the contract forbids; the connection cannot be trusted further."""
