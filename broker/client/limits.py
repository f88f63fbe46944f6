"""What the server accepts, as its WELCOME announced it, and the checks a publish must pass.

Both clients check a message before it is queued, with the same errors: the async client in
`Client.publish`, `broker.sync` in the caller's thread (so its publisher hears of a bad message
at once, not through a hook). Both call `ServerLimits.check_publish` on the limits of the
current connection, and `check_headers` when there are headers.

This module is pure: it imports neither trio, anyio nor the rest of the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias, final

from ..config import DEFAULT_MAX_PAYLOAD
from ..errors import BadSubject, PayloadTooLarge, RetainedLimitExceeded
from ..subjects import (
    MAX_SUBJECT_LENGTH,
    MAX_SUBJECT_TOKENS,
    SYS_REQUEST_PREFIX,
    SubjectError,
    validate_subject,
)

__all__ = ["Payload", "ServerLimits", "check_headers", "info_float", "info_int"]

#: What a payload may be given as; it is sent (and delivered) as bytes.
Payload: TypeAlias = bytes | bytearray | memoryview

#: Subjects remembered as valid per connection's limits: a service publishes to a handful of
#: subjects, and checking one again costs more than the rest of a publish. Past this many the
#: memory starts afresh (replies to requests each go to a subject of their own).
SUBJECT_MEMO_SIZE: Final = 1024


@final
@dataclass(frozen=True, slots=True)
class ServerLimits:
    """One server's limits on what a client sends; replaced whole on each connection.

    Immutable, so `broker.sync`'s callers' threads read a consistent set without a lock.

    Attributes:
        server: How messages name the server (``the server at tcp://...``).
        max_payload: The largest payload it takes.
        max_subject_length: Its limit on a subject or pattern, in UTF-8 bytes.
        max_subject_tokens: Its limit on their number of tokens.
        max_retained_subjects: As announced: 0 retains nothing, absent (None) predates
            retained messages; anything else is shown as it came.
    """

    server: str = "the server"
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_subject_length: int = MAX_SUBJECT_LENGTH
    max_subject_tokens: int = MAX_SUBJECT_TOKENS
    max_retained_subjects: object = None
    #: Subjects already checked against these limits (`SUBJECT_MEMO_SIZE`); set and cleared
    #: whole by any thread, which the GIL makes safe for a dict.
    _valid: dict[str, None] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_welcome(cls, info: Mapping[str, Any], server: str) -> ServerLimits:
        """The limits a WELCOME's info announces; a missing or bad value means the default."""
        return cls(
            server=server,
            max_payload=info_int(info, "max_payload", DEFAULT_MAX_PAYLOAD),
            max_subject_length=info_int(info, "max_subject_length", MAX_SUBJECT_LENGTH),
            max_subject_tokens=info_int(info, "max_subject_tokens", MAX_SUBJECT_TOKENS),
            max_retained_subjects=info.get("max_retained_subjects"),
        )

    def _is_sys_request(self, subject: str) -> bool:
        """A valid ``$SYS.REQ.SERVER`` request: the one reserved subject a client may publish."""
        if not subject.startswith(SYS_REQUEST_PREFIX):
            return False
        try:
            validate_subject(
                subject,
                max_length=self.max_subject_length,
                max_tokens=self.max_subject_tokens,
                allow_reserved=True,
            )
        except SubjectError:
            return False
        return True

    def check_publish(
        self, subject: str, payload: Payload, reply_to: str | None, retain: bool
    ) -> bytes:
        """Check one message against these limits; return its payload as bytes to send.

        A bytearray or memoryview is copied, so the caller may change it once publishing
        returns. The headers go through `check_headers`, only when there are any: publishing
        is the hot path, so this returns one value rather than a pair to unpack.

        Raises:
            BadSubject: ``subject`` or ``reply_to`` is not a valid concrete subject.
            TypeError: ``payload`` is not bytes-like.
            PayloadTooLarge: ``payload`` is longer than ``max_payload``.
            RetainedLimitExceeded: ``retain`` is set and the server would not retain it.
        """
        valid = self._valid
        if type(subject) is not str or subject not in valid:
            try:
                validate_subject(
                    subject, max_length=self.max_subject_length, max_tokens=self.max_subject_tokens
                )
            except SubjectError as error:
                if not self._is_sys_request(subject):
                    raise BadSubject(f"subject: {error}") from None
            if len(valid) >= SUBJECT_MEMO_SIZE:
                valid.clear()
            valid[subject] = None
        if reply_to is not None:
            try:
                validate_subject(
                    reply_to, max_length=self.max_subject_length, max_tokens=self.max_subject_tokens
                )
            except SubjectError as error:
                raise BadSubject(f"reply_to: {error}") from None
        if type(payload) is not bytes:
            if not isinstance(payload, bytearray | memoryview):
                raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
            payload = bytes(payload)
        if len(payload) > self.max_payload:
            raise PayloadTooLarge(
                f"payload of {len(payload)} bytes exceeds the server's max_payload "
                f"({self.max_payload} bytes)"
            )
        if retain:
            self._check_retain(payload)
        return payload

    def _check_retain(self, payload: bytes) -> None:
        # A server that does not announce the limit predates retained messages and would take
        # the extra PUB field as a broken frame; one that announces 0 refuses all but deletions.
        limit = self.max_retained_subjects
        if type(limit) is int and (limit > 0 or not payload):
            return
        shown = "not announced" if limit is None else limit
        raise RetainedLimitExceeded(
            f"{self.server} does not retain messages (its max_retained_subjects is {shown})"
        )


def check_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of a message's headers to send, checked: str keys to str values.

    A copy, so the caller may change the mapping once publishing returns.

    Raises:
        TypeError: A key or value is not a str.
    """
    wire = dict(headers)
    for key, value in wire.items():
        if type(key) is not str or type(value) is not str:
            raise TypeError(f"headers must map str to str, got {key!r}: {value!r}")
    return wire


def info_int(info: Mapping[str, Any], key: str, default: int) -> int:
    """WELCOME's positive int at `key`, or `default` when it is missing or not one."""
    value = info.get(key)
    return value if type(value) is int and value > 0 else default


def info_float(info: Mapping[str, Any], key: str, default: float) -> float:
    """WELCOME's positive number at `key` as a float, or `default`."""
    value = info.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return default
