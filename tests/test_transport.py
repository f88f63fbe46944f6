"""The transport assumes no plain TCP socket, and the native adapter encodes once per publish.

A TLS stream (`trio.SSLStream`) has no `send_eof` and no `.socket`: a transport serving one must
still find the peer's address, deliver, report a fatal error and close cleanly. Certificates
come from trustme; the TLS handshake runs over real loopback sockets.
"""

from __future__ import annotations

import ssl
from functools import partial

import trio
import trio.testing
import trustme

from broker.protocol import (
    CLOSED,
    NEED_DATA,
    Connection,
    Err,
    Event,
    Hello,
    Msg,
    Pub,
    Role,
    Sub,
    Welcome,
    encode_frame,
)
from broker.server import Server
from broker.server.native import NativeAdapter
from broker.server.transport import Transport, peer_address
from broker.testing import faults
from broker.testing.inprocess import config_for_tests


async def _events(stream: trio.abc.Stream, conn: Connection, count: int) -> list[Event]:
    got: list[Event] = []
    while len(got) < count:
        event = conn.next_event()
        if event is NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            continue
        if event is CLOSED:
            break
        got.append(event)  # type: ignore[arg-type]
    return got


async def test_a_tls_stream_is_served_like_tcp_and_closed_cleanly() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    peers: list[tuple[str, int]] = []

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(Server(config_for_tests()).serve)

            async def handle(tcp: trio.SocketStream) -> None:
                tls = trio.SSLStream(tcp, server_context, server_side=True)
                peers.append(peer_address(tls))
                await server._handle(tls)

            (listener,) = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
            port = listener.socket.getsockname()[1]
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            client = trio.SSLStream(tcp, client_context, server_hostname="127.0.0.1")
            conn = Connection(Role.CLIENT, max_frame=2**20)
            await client.send_all(
                conn.send(Hello({"name": "tls"}))
                + conn.send(Sub(1, "a.*"))
                + conn.send(Pub("a.b", b"x"))
            )
            welcome, msg = await _events(client, conn, 2)
            assert type(welcome) is Welcome
            assert msg == Msg(1, "a.b", b"x")
            assert peers == [("127.0.0.1", tcp.socket.getsockname()[1])]
            assert [t.adapter.name for t in faults.connections(server)] == ["tls"]
            # Only a plain TCP socket is written to directly by readers (`Transport._write_now`).
            assert faults.connections(server)[0].outbox.direct is None
            # A bad frame is fatal: the ERR arrives, then the server closes without send_eof.
            await client.send_all(b"\x00\x00\x00\x01\xc1")  # 0xc1: never valid msgpack
            (err,) = await _events(client, conn, 2)
            assert type(err) is Err and err.code == "bad_frame"
            with trio.fail_after(2):
                while faults.connections(server):
                    await trio.sleep(0.01)
            assert server.statistics().protocol_errors == 1
            await client.aclose()
            nursery.cancel_scope.cancel()


def test_a_publish_is_encoded_once_for_all_its_native_subscribers() -> None:
    server = Server(config_for_tests())
    hub = server.hub

    def connected(client_id: int) -> NativeAdapter:
        transport = Transport(hub, trio.testing.MemorySendStream(), "peer", client_id)
        adapter = transport.adapter = NativeAdapter(hub, transport)
        adapter.receive_data(encode_frame(Hello({})))
        assert adapter.handshake()
        transport.outbox.take_batch()  # the WELCOME
        return adapter

    publisher = connected(1)
    subscribers = [connected(2 + index) for index in range(3)]
    for adapter in subscribers:
        adapter.receive_data(encode_frame(Sub(1, "s")))
        adapter.process()
    publisher.receive_data(encode_frame(Pub("s", b"p" * 100)) * 2)
    publisher.process()
    tails = [list(adapter.outbox._frames)[1::2] for adapter in subscribers]
    first, second = zip(*tails, strict=True)
    assert len({id(tail) for tail in first}) == 1  # one encoding, shared by all three
    assert len({id(tail) for tail in second}) == 1
    assert first[0] == second[0] and first[0] is not second[0]  # one per publish
