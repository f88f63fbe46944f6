"""Fuzzing the server side of the native codec: any frame a client can send decodes to an event
or raises `RemoteProtocolError`, and the ERR that reports it is small and sendable.

Values come at every field position of every operation: huge strings, bytes and integers,
wrong types, and containers nested past what `repr` survives. Pure: no trio, no sockets.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.protocol import Connection, Err, Hello, RemoteProtocolError, Role, encode_frame

_OPS = ["PUB", "SUB", "UNSUB", "PING", "PONG", "HELLO", "MSG", "WELCOME", "ERR", "pub", ""]

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=20),
    # Large, yet under what hypothesis will repr for a report (about 1 MB in all).
    st.sampled_from(["x" * 20_000, b"y" * 20_000, "a." * 5000 + "b", "q q", "\x00"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=6,
)


def _deep(depth: int, leaf: bytes) -> bytes:
    return b"\x91" * depth + leaf


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    op = draw(st.sampled_from(_OPS))
    fields: list[Any] = draw(st.lists(_values, max_size=6))
    body = msgpack.packb([op, *fields])
    if draw(st.booleans()):
        # Nest one field deep: as bytes, since Python could not build it by recursion.
        depth = draw(st.sampled_from([500, 1000, 1023, 5000]))
        position = draw(st.integers(min_value=0, max_value=len(fields)))
        head = msgpack.packb([op, *fields[:position]])
        count = 1 + len(fields[:position]) + 1
        array_head = bytes([0x90 | count]) if count < 16 else b"\xdc" + struct.pack(">H", count)
        body = array_head + head[1:] + _deep(depth, b"\xc0")
    return struct.pack(">I", len(body)) + body


@settings(max_examples=300, deadline=None)
@given(frames())
def test_any_frame_is_an_event_or_a_small_sendable_error(frame: bytes) -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(encode_frame(Hello({})) + frame)
    try:
        conn.events()
        conn.events()
    except RemoteProtocolError as error:
        assert len(error.message) < 1024, error.message[:200]
        sent = Connection(Role.SERVER).send(Err(error.code.value, error.message))
        assert len(sent) < 2048


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["version", "name", "echo", "retained", "token"]), _values))
def test_any_hello_is_accepted_or_refused_with_a_small_error(options: dict[str, Any]) -> None:
    conn = Connection(Role.SERVER)
    body = msgpack.packb(["HELLO", options])
    conn.receive_data(struct.pack(">I", len(body)) + body)
    try:
        conn.events()
    except RemoteProtocolError as error:
        assert error.code.value == "bad_handshake"
        assert len(error.message) < 1024


def test_a_nested_hello_value_is_refused_with_a_small_error() -> None:
    # Each string is cut, but eight of eight of them once made an error of 13 KB.
    nested = [{str(n): "x" * 1000 for n in range(8)} for _ in range(8)]
    conn = Connection(Role.SERVER)
    body = msgpack.packb(["HELLO", {"version": nested}])
    conn.receive_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(RemoteProtocolError) as refused:
        conn.events()
    assert refused.value.code.value == "bad_handshake"
    assert "HELLO version must be an int, got [{'0': 'xxx" in refused.value.message
    assert len(refused.value.message) < 1024
