"""The I/O-free codec, tested as two Connections passing bytes to each other (no trio)."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.protocol import (
    CLOSED,
    FATAL_ERRORS,
    NEED_DATA,
    Connection,
    Encoder,
    Err,
    ErrorCode,
    Event,
    Hello,
    LocalProtocolError,
    Msg,
    Ping,
    Pong,
    Pub,
    RemoteProtocolError,
    Role,
    Sub,
    Unsub,
    Welcome,
    encode_frame,
    encode_msg_tail,
    msg_head,
    msg_prefix,
)
from broker.protocol.native import PUB_PREFIX_MEMO_SIZE


def frame(value: Any) -> bytes:
    body = msgpack.packb(value)
    return struct.pack(">I", len(body)) + body


def server_after_hello() -> Connection:
    server = Connection(Role.SERVER)
    server.receive_data(frame(["HELLO", {"name": "t"}]))
    assert server.next_event() == Hello({"name": "t"})
    return server


def client_after_welcome() -> Connection:
    client = Connection(Role.CLIENT)
    client.send(Hello({}))
    client.receive_data(frame(["WELCOME", {"version": 1}]))
    assert client.next_event() == Welcome({"version": 1})
    return client


def remote_error(conn: Connection, data: bytes) -> RemoteProtocolError:
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError) as info:
        conn.events()
    return info.value


CLIENT_EVENTS: list[Event] = [
    Sub(1, "a.*"),
    Sub(2, "a.>", "workers"),
    Unsub(1),
    Unsub(2, 5),
    Pub("a.b", b""),
    Pub("a.b", b"\x00\xff" * 100, "inbox.1", {"k": "v"}),
    Ping(),
    Pong(),
]


def test_round_trip_client_to_server() -> None:
    client = Connection(Role.CLIENT)
    server = Connection(Role.SERVER)
    data = client.send(Hello({"name": "x", "echo": False}))
    data += b"".join(client.send(event) for event in CLIENT_EVENTS)
    server.receive_data(data)
    assert server.events() == [Hello({"name": "x", "echo": False}), *CLIENT_EVENTS]


def test_round_trip_server_to_client() -> None:
    server = server_after_hello()
    client = Connection(Role.CLIENT)
    client.send(Hello({}))
    events: list[Event] = [
        Welcome({"version": 1, "max_payload": 10}),
        Msg(3, "a.b", b"x", "r", {"h": "1"}),
        Msg(4, "a.b", b""),
        Ping(),
        Pong(),
        Err("bad_subject", "nope", {"sid": 3}),
    ]
    client.receive_data(b"".join(server.send(event) for event in events))
    assert client.events() == events


def test_byte_at_a_time_decoding() -> None:
    client = Connection(Role.CLIENT)
    server = Connection(Role.SERVER)
    data = client.send(Hello({})) + client.send(Pub("a", b"payload", None, {"k": "v"}))
    seen: list[Any] = []
    for byte in data:
        server.receive_data(bytes([byte]))
        while (event := server.next_event()) is not NEED_DATA:
            seen.append(event)
    assert seen == [Hello({}), Pub("a", b"payload", None, {"k": "v"})]


def test_trailing_nils_are_omitted_on_the_wire() -> None:
    encoded = encode_frame(Pub("a.b", b"x"))
    assert msgpack.unpackb(encoded[4:]) == ["PUB", "a.b", b"x"]
    encoded = encode_frame(Pub("a.b", b"x", None, {"k": "v"}))
    assert msgpack.unpackb(encoded[4:]) == ["PUB", "a.b", b"x", None, {"k": "v"}]


def test_fanout_encoding_equals_plain_encoding() -> None:
    tail = encode_msg_tail("a.b", b"data", "reply", {"k": "v"})
    for sid in (0, 1, 127, 128, 65_536, 2**40):
        assert msg_head(msg_prefix(sid), len(tail)) + tail == encode_frame(
            Msg(sid, "a.b", b"data", "reply", {"k": "v"})
        )


def forwarded_msg(forward: Any, sid: int) -> bytes:
    """The MSG frame a server builds from a PUB's `Forward`, as `NativeAdapter.deliver` does."""
    _pub, body, stop, pad = forward
    tail = body[5:stop] + pad
    return msg_head(msg_prefix(sid), len(tail)) + tail


@pytest.mark.parametrize(
    ("items", "msg"),
    [
        (["PUB", "a.b", b"x"], Msg(7, "a.b", b"x")),
        (["PUB", "a.b", b"x", "re.ply"], Msg(7, "a.b", b"x", "re.ply")),
        (["PUB", "a.b", b"x", None], Msg(7, "a.b", b"x")),
        (["PUB", "a.b", b"x", None, None], Msg(7, "a.b", b"x")),
        # A retained publish is delivered live: its flag is not forwarded as "replayed".
        (["PUB", "a.b", b"x", None, None, True], Msg(7, "a.b", b"x")),
        (["PUB", "a.b", b"x" * 300, "r", None, False], Msg(7, "a.b", b"x" * 300, "r")),
        (["PUB", "a.b", b"x", None, {"k": "v"}], Msg(7, "a.b", b"x", None, {"k": "v"})),
        (["PUB", "a.b", b"", "r", {"k": "v"}, True], Msg(7, "a.b", b"", "r", {"k": "v"})),
    ],
)
def test_a_plain_pub_forwards_its_own_fields_as_the_msg_tail(items: list[Any], msg: Msg) -> None:
    server = server_after_hello()
    server.receive_data(frame(items) + frame(["PING"]))
    events, forwards = server.events_and_tails()
    assert len(events) == len(forwards) == 2
    assert forwards[1] is None  # not a PUB
    assert forwards[0] is not None and forwards[0][0] is events[0]
    client = client_after_welcome()
    client.receive_data(forwarded_msg(forwards[0], 7))
    assert client.events() == [msg]


def test_a_pub_encoded_otherwise_is_re_encoded_not_forwarded() -> None:
    # A longer-than-needed encoding of the op name: no Forward; the server encodes instead.
    server = server_after_hello()
    longer_op = b"\x93\xd9\x03PUB\xa3a.b\xc4\x01x"
    server.receive_data(struct.pack(">I", len(longer_op)) + longer_op)
    events, forwards = server.events_and_tails()
    assert events == [Pub("a.b", b"x")]
    assert forwards == [None]


def test_events_compare_by_type_too() -> None:
    assert Ping() != Pong()
    assert Ping() == Ping()
    assert Unsub(1) != Sub(1, "a")  # type: ignore[comparison-overlap]
    assert len({Ping(), Pong(), Ping()}) == 2


def test_eof_on_a_frame_boundary_is_closed() -> None:
    server = server_after_hello()
    server.receive_data(b"")
    assert server.next_event() is CLOSED
    assert server.closed


def test_eof_mid_frame_is_a_remote_error() -> None:
    server = server_after_hello()
    server.receive_data(frame(["PING"])[:-1])
    assert server.next_event() is NEED_DATA
    server.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as info:
        server.next_event()
    assert info.value.code is ErrorCode.BAD_FRAME


def test_frame_exactly_at_the_limit_is_read_and_one_past_is_refused() -> None:
    limit = 1000
    size = limit - len(msgpack.packb(["PUB", "a", b""]))
    while len(msgpack.packb(["PUB", "a", b"x" * size])) > limit:
        size -= 1  # the bin header grows with the payload's length
    payload = b"x" * size
    body = msgpack.packb(["PUB", "a", payload])
    assert len(body) == limit
    server = Connection(Role.SERVER, max_frame=limit)
    server.receive_data(frame(["HELLO", {}]) + struct.pack(">I", len(body)) + body)
    assert server.events() == [Hello({}), Pub("a", payload)]
    server = Connection(Role.SERVER, max_frame=limit)
    server.receive_data(frame(["HELLO", {}]))
    server.next_event()
    # Only the header of the oversized frame: it must be refused without waiting for the body.
    error = remote_error(server, struct.pack(">I", limit + 1))
    assert error.code is ErrorCode.FRAME_TOO_LARGE
    assert str(limit + 1) in error.message


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (struct.pack(">I", 0), ErrorCode.BAD_FRAME),
        (struct.pack(">I", 3) + b"\xc1\xc1\xc1", ErrorCode.BAD_FRAME),  # 0xc1 is never used
        (frame(1) + b"", ErrorCode.BAD_FRAME),
        (frame({"PUB": 1}), ErrorCode.BAD_FRAME),
        (frame([]), ErrorCode.BAD_FRAME),
        (frame([1, 2]), ErrorCode.BAD_FRAME),
        (frame(["NOPE"]), ErrorCode.UNKNOWN_OP),
        (frame(["MSG", 1, "a", b""]), ErrorCode.UNKNOWN_OP),  # a client may not send MSG
        (frame(["PUB", "a", "not-bin"]), ErrorCode.BAD_FRAME),
        (frame(["PUB", 1, b""]), ErrorCode.BAD_FRAME),
        (frame(["PUB", "a"]), ErrorCode.BAD_FRAME),
        (frame(["PUB", "a", b"", None, None, None, None]), ErrorCode.BAD_FRAME),
        (frame(["PUB", "a", b"", None, None, "yes"]), ErrorCode.BAD_FRAME),
        (frame(["PUB", "a", b"", None, None, 1]), ErrorCode.BAD_FRAME),
        (frame(["PUB", "a", b"", 5]), ErrorCode.BAD_FRAME),
        (frame(["PUB", "a", "not-bin", "r"]), ErrorCode.BAD_FRAME),  # a request's checks too
        (frame(["PUB", 1, b"", "r"]), ErrorCode.BAD_FRAME),
        (frame(["PUB", "a", b"", None, {"k": 1}]), ErrorCode.BAD_FRAME),
        (frame(["PUB", "a", b"", None, ["k"]]), ErrorCode.BAD_FRAME),
        (frame(["SUB", "1", "a"]), ErrorCode.BAD_FRAME),
        (frame(["SUB", -1, "a"]), ErrorCode.BAD_FRAME),
        (frame(["SUB", True, "a"]), ErrorCode.BAD_FRAME),
        (frame(["SUB", 1, "a", 7]), ErrorCode.BAD_FRAME),
        (frame(["UNSUB", 1, -1]), ErrorCode.BAD_FRAME),
        (frame(["UNSUB", 1, "2"]), ErrorCode.BAD_FRAME),
        (frame(["PING", 1]), ErrorCode.BAD_FRAME),
        (frame(["HELLO", {}]), ErrorCode.BAD_HANDSHAKE),  # a second HELLO
        (struct.pack(">I", 2) + b"\x91\xa1", ErrorCode.BAD_FRAME),  # truncated inside
        (frame(["PUB", "a", b"", None, {1: "v"}]), ErrorCode.BAD_FRAME),
    ],
)
def test_bad_frames_after_hello(data: bytes, code: ErrorCode) -> None:
    error = remote_error(server_after_hello(), data)
    assert error.code is code
    assert error.message


def test_invalid_utf8_is_a_bad_frame() -> None:
    body = b"\x92\xa3PUB\xa2\xff\xfe"  # ["PUB", <invalid utf-8 str>]
    error = remote_error(server_after_hello(), struct.pack(">I", len(body)) + body)
    assert error.code is ErrorCode.BAD_FRAME


@pytest.mark.parametrize(
    "first",
    [frame(["PUB", "a", b""]), frame(["PING"]), frame(["SUB", 1, "a"])],
)
def test_first_frame_must_be_hello(first: bytes) -> None:
    error = remote_error(Connection(Role.SERVER), first)
    assert error.code is ErrorCode.BAD_HANDSHAKE


@pytest.mark.parametrize(
    "options",
    [{"version": 2}, {"version": "1"}, {"echo": "yes"}, {"retained": 1}, {"name": 5}, {"token": 1}],
)
def test_bad_hello_options(options: dict[str, Any]) -> None:
    error = remote_error(Connection(Role.SERVER), frame(["HELLO", options]))
    assert error.code is ErrorCode.BAD_HANDSHAKE


def test_hello_without_options_and_unknown_options_are_accepted() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(frame(["HELLO"]) + frame(["PING"]))
    assert server.events() == [Hello({}), Ping()]
    server = Connection(Role.SERVER)
    server.receive_data(frame(["HELLO", {"future": [1, 2]}]))
    assert server.events() == [Hello({"future": [1, 2]})]


def test_client_accepts_err_instead_of_welcome() -> None:
    client = Connection(Role.CLIENT)
    client.send(Hello({}))
    client.receive_data(frame(["ERR", "max_connections", "full"]))
    event = client.next_event()
    assert event == Err("max_connections", "full")
    assert isinstance(event, Err) and event.fatal


def test_error_is_sticky_and_events_before_it_are_returned() -> None:
    server = server_after_hello()
    server.receive_data(frame(["PING"]) + frame(["PONG"]) + frame(["BOGUS"]) + frame(["PING"]))
    assert server.events() == [Ping(), Pong()]
    with pytest.raises(RemoteProtocolError) as first:
        server.events()
    with pytest.raises(RemoteProtocolError) as again:
        server.next_event()
    assert first.value is again.value
    assert first.value.code is ErrorCode.UNKNOWN_OP


def test_local_errors() -> None:
    client = Connection(Role.CLIENT)
    with pytest.raises(LocalProtocolError) as info:
        client.send(Pub("a", b""))
    assert info.value.code is ErrorCode.BAD_HANDSHAKE
    client.send(Hello({}))
    with pytest.raises(LocalProtocolError):
        client.send(Welcome({}))  # a client cannot send WELCOME
    with pytest.raises(LocalProtocolError):
        client.send(Pub("a", "text"))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        client.send(Sub(-1, "a"))
    with pytest.raises(LocalProtocolError):
        client.send(Unsub(1, False))  # type: ignore[arg-type]  # not "unsubscribe now"
    small = Connection(Role.CLIENT, max_frame=64)
    small.send(Hello({}))
    with pytest.raises(LocalProtocolError) as info:
        small.send(Pub("a", b"x" * 100))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


def test_error_codes_are_stable_strings() -> None:
    assert ErrorCode.SLOW_CONSUMER == "slow_consumer"
    assert ErrorCode.SHUTTING_DOWN in FATAL_ERRORS
    assert ErrorCode.BAD_SUBJECT not in FATAL_ERRORS
    assert ErrorCode.MESSAGES_DROPPED not in FATAL_ERRORS


_ALLOWED = (RemoteProtocolError,)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), max_size=8))
def test_arbitrary_bytes_only_ever_yield_events_or_remote_errors(chunks: list[bytes]) -> None:
    server = Connection(Role.SERVER, max_frame=1024)
    try:
        for chunk in chunks:
            server.receive_data(chunk)
            server.events()
        server.receive_data(b"")
        while server.next_event() not in (NEED_DATA, CLOSED):
            pass
    except _ALLOWED:
        pass


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["PUB", "SUB", "UNSUB", "PING", "PONG", "HELLO", "X"]),
    st.lists(msgpack_values, max_size=6),
)
def test_arbitrary_arrays_only_ever_yield_valid_events_or_remote_errors(
    op: str, fields: list[Any]
) -> None:
    server = server_after_hello()
    server.receive_data(frame([op, *fields]))
    try:
        events = server.events()
    except RemoteProtocolError:
        return
    # Whatever decodes must re-encode to a frame the codec accepts again.
    again = server_after_hello()
    client = client_after_welcome()
    del client
    again.receive_data(b"".join(encode_frame(event) for event in events))
    assert again.events() == events


def test_encoder_checks_like_send_but_needs_no_handshake() -> None:
    encoder = Encoder(Role.CLIENT, max_frame=64)
    assert encoder.send(Pub("a", b"x")) == encode_frame(Pub("a", b"x"))
    with pytest.raises(LocalProtocolError):
        encoder.send(Pub("a", "text"))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        encoder.send(Msg(1, "a", b""))  # a client never sends MSG
    with pytest.raises(LocalProtocolError) as info:
        encoder.send(Pub("a", b"x" * 100))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


@settings(max_examples=300, deadline=None)
@given(
    subject=st.text(min_size=1, max_size=300),
    size=st.sampled_from([0, 1, 31, 32, 255, 256, 257, 65535, 65536, 65537]),
)
def test_a_plain_pub_is_the_bytes_msgpack_packs(subject: str, size: int) -> None:
    # `Encoder.pub` joins a plain PUB from parts it keeps per subject; the frame must be what
    # packing the whole array gives, at every str and bin header size.
    encoder = Encoder(Role.CLIENT, max_frame=1 << 20)
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    expected = frame(["PUB", subject, payload])
    assert encoder.pub(subject, payload) == expected
    assert encoder.pub(subject, payload) == expected  # from the kept prefix
    assert encoder.send(Pub(subject, payload)) == expected
    assert Encoder(Role.CLIENT, max_frame=1 << 20).pub(subject, payload, once=True) == expected


def test_a_plain_pub_is_checked_against_max_frame_at_the_edge() -> None:
    body = len(msgpack.packb(["PUB", "a", b"x" * 40]))
    encoder = Encoder(Role.CLIENT, max_frame=body)
    assert encoder.pub("a", b"x" * 40) == frame(["PUB", "a", b"x" * 40])
    with pytest.raises(LocalProtocolError) as info:
        encoder.pub("a", b"x" * 41)
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert f"frame of {body + 1} bytes" in info.value.message


def test_an_encoder_keeps_at_most_pub_prefix_memo_size_subjects() -> None:
    encoder = Encoder(Role.CLIENT)
    for number in range(PUB_PREFIX_MEMO_SIZE):  # the edge
        encoder.pub(f"s.{number}", b"x")
    assert len(encoder._pub_prefixes) == PUB_PREFIX_MEMO_SIZE
    encoder.pub("one.past", b"x")  # one past it: starts again
    assert list(encoder._pub_prefixes) == ["one.past"]
    assert encoder.pub("s.0", b"y") == frame(["PUB", "s.0", b"y"])
    encoder.pub("an.inbox.7", b"answer", once=True)  # a reply's subject is not kept
    assert "an.inbox.7" not in encoder._pub_prefixes
