"""`ErrorCode` carries its own classification; every table derived from it agrees (pure)."""

from __future__ import annotations

import pytest

from broker.errors import ConnectionClosed, ErrorCode, error_from_wire
from broker.protocol import FATAL_ERRORS, Err


@pytest.mark.parametrize("code", list(ErrorCode))
def test_each_code_classifies_itself_and_the_client_agrees(code: ErrorCode) -> None:
    assert isinstance(code.fatal, bool) and isinstance(code.violation, bool)
    assert (code in FATAL_ERRORS) is code.fatal
    assert Err(code.value, "m").fatal is code.fatal
    assert isinstance(error_from_wire(code.value, "m"), ConnectionClosed) is code.fatal


def test_the_violations_are_the_peer_breaking_the_contract() -> None:
    assert {code for code in ErrorCode if code.violation} == {
        ErrorCode.BAD_FRAME,
        ErrorCode.BAD_HANDSHAKE,
        ErrorCode.UNKNOWN_OP,
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.BAD_SUBJECT,
        ErrorCode.BAD_SID,
        ErrorCode.TOO_MANY_SUBSCRIPTIONS,
    }


def test_a_code_is_still_its_string() -> None:
    assert ErrorCode("slow_consumer") is ErrorCode.SLOW_CONSUMER  # type: ignore[call-arg]
    assert str(ErrorCode.SLOW_CONSUMER) == "slow_consumer"
