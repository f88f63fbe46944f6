"""The NATS codec (server side): parsing what clients send, limits at the edge and one past
it, the header mapping, and a hypothesis fuzz that finds only `RemoteProtocolError`.

Pure: no trio, no sockets.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.errors import ErrorCode
from broker.protocol.errors import RemoteProtocolError
from broker.protocol.nats import (
    CLOSED,
    NEED_DATA,
    Connect,
    Connection,
    Ping,
    Pong,
    Pub,
    Sub,
    Unsub,
    decode_headers,
    encode_err,
    encode_headers,
    msg_head_sid,
    msg_parts,
)


def decode(data: bytes, *, max_payload: int = 1024, max_control_line: int = 4096) -> list[object]:
    conn = Connection(max_payload=max_payload, max_control_line=max_control_line)
    conn.receive_data(data)
    return list(conn.events())


def test_every_client_operation() -> None:
    events = decode(
        b'CONNECT {"verbose":false,"name":"n"}\r\n'
        b"PUB a.b 5\r\nhello\r\n"
        b"PUB a.b _INBOX.1 0\r\n\r\n"
        b"HPUB h 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"
        b"SUB a.* 1\r\nSUB a.> workers 2\r\nUNSUB 1\r\nUNSUB 2 10\r\nPING\r\nPONG\r\n"
    )
    assert events == [
        Connect({"verbose": False, "name": "n"}),
        Pub("a.b", b"hello"),
        Pub("a.b", b"", "_INBOX.1"),
        Pub("h", b"hi", None, {}),
        Sub("1", "a.*"),
        Sub("2", "a.>", "workers"),
        Unsub("1"),
        Unsub("2", 10),
        Ping(),
        Pong(),
    ]


def test_op_names_are_case_insensitive_and_fields_split_on_runs_of_blanks() -> None:
    events = decode(b"pub a.b  5\r\nhello\r\nSuB\ta \t 1\r\nping\r\n")
    assert events == [Pub("a.b", b"hello"), Sub("1", "a"), Ping()]


def test_a_payload_arriving_in_pieces_waits_whole() -> None:
    conn = Connection(max_payload=1024)
    for piece in (b"PUB a 10\r\n01234", b"5678", b"9\r", b"\n"):
        assert conn.events() == [] or False
        conn.receive_data(piece)
    assert conn.events() == [Pub("a", b"0123456789")]
    assert conn.buffered == 0
    conn.receive_data(b"")
    assert conn.closed and conn.next_event() is CLOSED


def test_max_payload_at_the_edge_and_one_past() -> None:
    assert decode(b"PUB a 8\r\n12345678\r\n", max_payload=8) == [Pub("a", b"12345678")]
    with pytest.raises(RemoteProtocolError) as caught:
        # Refused from the control line alone: the payload is never waited for.
        decode(b"PUB a 9\r\n", max_payload=8)
    assert caught.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    with pytest.raises(RemoteProtocolError):
        decode(b"HPUB a 4 9\r\n", max_payload=8)  # headers count towards it, as nats-server


def test_max_control_line_at_the_edge_and_one_past() -> None:
    line = b"SUB " + b"a" * (64 - 6) + b" 1"
    assert len(line) == 64
    assert decode(line + b"\r\n", max_control_line=64) == [Sub("1", "a" * 58)]
    with pytest.raises(RemoteProtocolError) as caught:
        decode(b"SUB " + b"a" * 59 + b" 1\r\n", max_control_line=64)
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE
    # Without its CRLF yet: refused as soon as the line is longer than the limit.
    conn = Connection(max_payload=8, max_control_line=64)
    conn.receive_data(b"SUB " + b"a" * 60)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"aa")
    with pytest.raises(RemoteProtocolError):
        conn.events()


@pytest.mark.parametrize(
    "data",
    [
        b"FOO\r\n",
        b"\r\n",
        b"PUB a\r\n",
        b"PUB a +5\r\nhello\r\n",
        b"PUB a 5_0\r\n",
        b"PUB a 2\r\nhiXX",
        b"HPUB a 5 2\r\n",
        b"SUB a\r\n",
        b"UNSUB\r\n",
        b"UNSUB 1 x\r\n",
        b"CONNECT [1]\r\n",
        b"CONNECT {\r\n",
        b"PUB \xff 0\r\n\r\n",
    ],
)
def test_bad_operations_are_remote_protocol_errors(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(data)


def test_events_before_a_bad_operation_are_handed_out_first() -> None:
    conn = Connection(max_payload=64)
    conn.receive_data(b"PING\r\nBAD\r\n")
    assert conn.events() == [Ping()]
    with pytest.raises(RemoteProtocolError):
        conn.events()
    with pytest.raises(RemoteProtocolError):
        conn.events()  # and it stays broken


def test_eof_in_the_middle_of_an_operation() -> None:
    conn = Connection(max_payload=64)
    conn.receive_data(b"PUB a 5\r\nhe")
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        conn.events()


def test_msg_and_hmsg_encodings() -> None:
    before, after, tail = msg_parts("a.b", b"hi", None, None)
    assert before + b"7" + after + tail == b"MSG a.b 7 2\r\nhi\r\n"
    assert msg_head_sid(before + b"7" + after) == "7"
    before, after, tail = msg_parts("a", b"hi", "r", {"status": "503"})
    assert before + b"x" + after + tail == b"HMSG a x r 16 18\r\nNATS/1.0 503\r\n\r\nhi\r\n"
    assert encode_err("Stale Connection") == b"-ERR 'Stale Connection'\r\n"


@pytest.mark.parametrize(
    "block",
    [
        b"NATS/1.0\r\n\r\n",
        b"NATS/1.0 503\r\n\r\n",
        b"NATS/1.0 408 Request Timeout\r\nNats-Pending: 3\r\n\r\n",
        b"NATS/1.0\r\nA: 1\r\nA: 2\r\nB: x y\r\nstatus: kept\r\n\r\n",
    ],
)
def test_headers_round_trip_nats_to_nats(block: bytes) -> None:
    assert encode_headers(decode_headers(block)) == block


def test_header_mapping_for_native_clients() -> None:
    assert decode_headers(b"NATS/1.0 503\r\nA: 1\r\nA:2 \r\nstatus: s\r\n\r\n") == {
        "status": "503",
        "A": "1\r\n2",
        ":status": "s",
    }
    # What NATS cannot carry is left out.
    assert encode_headers({"bad key": "1", "": "2", "k:v": "3", "ok": "a\nb", "fine": "y"}) == (
        b"NATS/1.0\r\nfine: y\r\n\r\n"
    )


_LINES = st.sampled_from(
    [
        b"PUB a 3\r\nabc\r\n",
        b"HPUB a 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
        b"SUB a 1\r\n",
        b"UNSUB 1 2\r\n",
        b"PING\r\n",
        b'CONNECT {"echo":true}\r\n',
        b"PUB a 99999999999999\r\n",
        b"\r\n",
        b"\t \r\n",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_LINES, st.binary(max_size=40)), max_size=8), st.integers(1, 7))
def test_any_input_is_events_or_a_remote_protocol_error(pieces: list[bytes], chunk: int) -> None:
    data = b"".join(pieces)
    conn = Connection(max_payload=64, max_control_line=64)
    try:
        for start in range(0, len(data), chunk):
            conn.receive_data(data[start : start + chunk])
            conn.events()
        conn.receive_data(b"")
        conn.events()
        conn.events()
    except RemoteProtocolError as error:
        assert len(error.message) < 1024
