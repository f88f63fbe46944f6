"""The NATS listener, driven by nats.py (a real NATS client) and by raw sockets over loopback.

Each test runs an in-process broker in a thread (the ``broker_thread`` fixture, whose config
opens the NATS listener on a free port) and its clients on an asyncio loop of its own, bounded
in time. Raw sockets check what nats.py hides: INFO's fields, the exact ``-ERR`` words and
whether they close, +OK, header blocks byte for byte, lame duck.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.errors import NoRespondersError

from broker.client import Client
from broker.testing import BrokerThread

LIMIT = 10.0


async def subscribed(broker: BrokerThread, name: str, count: int) -> None:
    """Wait until the broker holds `count` subscriptions of client `name`.

    nats.py's ``flush`` is no barrier for what was queued before it (its PING is sent ahead of
    pending SUBs and PUBs), so another client's publish must wait for the broker to say.
    """
    await asyncio.to_thread(broker.wait_for_client, name, subscriptions=count)


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(body(), LIMIT)

    try:
        return asyncio.run(bounded())
    finally:
        # nats.py now and then leaves the socket of a connection the server closed for its
        # reconnect loop to drop; collect it here, so its ResourceWarning is not raised in
        # whichever later test the garbage collector happens to run.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


class Raw:
    """A NATS client made of a socket: send lines, read what the server sends."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("nats://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=LIMIT)
        self.buffer = b""
        line = self.line()
        assert line.startswith(b"INFO ")
        self.info: dict[str, Any] = json.loads(line[5:])

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buffer)
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buffer)
            self.buffer += data
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out

    def closed(self) -> bool:
        """True once the server closed the connection (what is left to read is dropped)."""
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(broker_thread: BrokerThread) -> Any:
    opened: list[Raw] = []

    def connect(connect: bytes = b'CONNECT {"verbose":false}\r\n') -> Raw:
        client = Raw(broker_thread.nats_url)
        opened.append(client)
        if connect:
            client.send(connect)
        return client

    yield connect
    for client in opened:
        client.close()


def test_info_carries_what_clients_read(raw: Any, broker_thread: BrokerThread) -> None:
    info = raw(b"").info
    for key in ("server_id", "server_name", "version", "go", "host", "port", "headers"):
        assert key in info
    assert info["max_payload"] == broker_thread.config.max_payload
    assert info["proto"] == 1 and info["headers"] is True
    assert info["client_ip"] == "127.0.0.1" and info["client_id"] >= 1
    assert info["auth_required"] is False and info["tls_required"] is False
    assert broker_thread.nats_url.endswith(f":{info['port']}")


def test_pub_sub_wildcards_and_queue_groups(broker_thread: BrokerThread) -> None:
    broker_nats_url = broker_thread.nats_url

    async def body() -> None:
        nc = await nats.connect(broker_nats_url, name="one")
        other = await nats.connect(broker_nats_url, name="two")
        star = await nc.subscribe("orders.*")
        tail = await nc.subscribe("orders.>")
        shared: list[tuple[str, bytes]] = []
        all_in = asyncio.Event()

        def worker(name: str) -> Callable[[Any], Awaitable[None]]:
            async def take(msg: Any) -> None:
                shared.append((name, msg.data))
                if len(shared) == 10:
                    all_in.set()

            return take

        await nc.subscribe("orders.eu.new", queue="w", cb=worker("one"))
        await other.subscribe("orders.eu.new", queue="w", cb=worker("two"))
        await subscribed(broker_thread, "one", 3)
        await subscribed(broker_thread, "two", 1)
        for n in range(10):
            await other.publish("orders.eu.new", b"%d" % n)
        await other.publish("orders.us", b"x")
        await other.flush()
        assert (await star.next_msg(timeout=LIMIT)).data == b"x"
        got = [(await tail.next_msg(timeout=LIMIT)).data for _ in range(11)]
        assert got == [b"%d" % n for n in range(10)] + [b"x"]
        await all_in.wait()
        # Each message went to one member of the group, none twice.
        assert sorted(data for _, data in shared) == sorted(b"%d" % n for n in range(10))
        await nc.close()
        await other.close()

    run(body)


def test_request_reply_and_no_responders(broker_nats_url: str) -> None:
    async def body() -> None:
        nc = await nats.connect(broker_nats_url)

        async def answer(msg: Any) -> None:
            await msg.respond(b"re: " + msg.data)

        await nc.subscribe("svc.echo", cb=answer, queue="q")
        reply = await nc.request("svc.echo", b"hi", timeout=2)
        assert reply.data == b"re: hi"
        with pytest.raises(NoRespondersError):
            # Answered at once by the 503 HMSG: far within the timeout.
            await nc.request("svc.nobody", b"hi", timeout=5)
        await nc.close()

    run(body)


def test_no_responders_only_for_clients_that_asked(raw: Any) -> None:
    asked = raw(b'CONNECT {"headers":true,"no_responders":true}\r\nSUB _INBOX.a 1\r\n')
    asked.send(b"PUB svc.none _INBOX.a 0\r\n\r\nPING\r\n")
    assert asked.line() == b"HMSG _INBOX.a 1 16 16"
    assert asked.read(18) == b"NATS/1.0 503\r\n\r\n\r\n"
    assert asked.line() == b"PONG"
    plain = raw(b'CONNECT {"headers":true}\r\nSUB _INBOX.b 1\r\n')
    plain.send(b"PUB svc.none _INBOX.b 0\r\n\r\nPING\r\n")
    assert plain.line() == b"PONG"
    refused = raw(b'CONNECT {"no_responders":true}\r\n')
    assert refused.line() == b"-ERR 'no responders requires headers support'"
    assert refused.closed()


def test_headers_round_trip_byte_for_byte(raw: Any) -> None:
    sub = raw(b'CONNECT {"headers":true}\r\nSUB h 9\r\nPING\r\n')
    assert sub.line() == b"PONG"
    block = b"NATS/1.0 408 Request Timeout\r\nA: 1\r\nA: 2\r\nstatus: mine\r\n\r\n"
    pub = raw(b'CONNECT {"headers":true}\r\n')
    size = len(block)
    pub.send(b"HPUB h r %d %d\r\n%bhi\r\n" % (size, size + 2, block))
    assert sub.line() == b"HMSG h 9 r %d %d" % (size, size + 2)
    assert sub.read(size + 4) == block + b"hi\r\n"


def test_errors_use_nats_server_words_and_close_where_it_does(
    raw: Any, broker_thread: BrokerThread
) -> None:
    client = raw()
    client.send(b"SUB a..b 1\r\nPUB a.* 0\r\n\r\nPING\r\n")
    # Not fatal: the connection answers the PING that follows.
    assert client.line() == b"-ERR 'Invalid Subject'"
    assert client.line() == b"-ERR 'Invalid Publish Subject'"
    assert client.line() == b"PONG"
    client.send(b"FOO bar\r\n")
    assert client.line() == b"-ERR 'Unknown Protocol Operation'"
    assert client.closed()
    long = raw()
    long.send(b"SUB " + b"a" * 5000 + b" 1\r\n")
    assert long.line() == b"-ERR 'maximum control line exceeded'"
    assert long.closed()
    assert broker_thread.statistics().protocol_errors >= 4


@pytest.mark.broker_config(max_payload=16)
def test_max_payload_at_the_edge_and_one_past(raw: Any) -> None:
    client = raw(b'CONNECT {"verbose":true}\r\n')
    assert client.info["max_payload"] == 16
    assert client.line() == b"+OK"
    client.send(b"PUB a 16\r\n" + b"x" * 16 + b"\r\n")
    assert client.line() == b"+OK"
    client.send(b"PUB a 17\r\n")
    assert client.line() == b"-ERR 'Maximum Payload Violation'"
    assert client.closed()


def test_verbose_echo_and_unsub_max(raw: Any) -> None:
    client = raw(b'CONNECT {"verbose":true,"echo":false}\r\n')
    assert client.line() == b"+OK"
    client.send(b"SUB a 1\r\nPUB a 1\r\nx\r\nPING\r\n")
    assert [client.line() for _ in range(3)] == [b"+OK", b"+OK", b"PONG"]  # no echo
    other = raw()
    client.send(b"UNSUB 1 2\r\nPING\r\n")
    assert [client.line() for _ in range(2)] == [b"+OK", b"PONG"]
    other.send(b"PUB a 1\r\n1\r\nPUB a 1\r\n2\r\nPUB a 1\r\n3\r\nPING\r\n")
    assert other.line() == b"PONG"
    client.send(b"PING\r\n")
    assert [client.line() for _ in range(5)] == [b"MSG a 1 1", b"1", b"MSG a 1 1", b"2", b"PONG"]


def test_crossing_native_and_nats_both_ways(broker_thread: BrokerThread) -> None:
    async def body() -> None:
        nc = await nats.connect(broker_thread.nats_url, name="nats")
        async with broker_thread.connect(name="native") as native:
            assert isinstance(native, Client)
            async with native.subscribe("to.native") as from_nats:
                await native.flush()
                from_native = await nc.subscribe("to.nats")
                await subscribed(broker_thread, "nats", 1)
                await nc.publish("to.native", b"n1", reply="back.nats", headers={"K": "v"})
                message = await from_nats.__anext__()
            assert (message.payload, message.reply_to) == (b"n1", "back.nats")
            assert message.headers == {"K": "v"}
            await native.publish("to.nats", b"p2", reply_to="back.native", headers={"A": "b"})
            got = await from_native.next_msg(timeout=LIMIT)
            assert (got.data, got.reply, got.headers) == (b"p2", "back.native", {"A": "b"})

            # Requests both ways.
            async def answer(msg: Any) -> None:
                await msg.respond(b"nats says " + msg.data)

            await nc.subscribe("svc.nats", cb=answer)
            await subscribed(broker_thread, "nats", 2)
            reply = await native.request("svc.nats", b"hi", timeout=LIMIT)
            assert reply.payload == b"nats says hi"
        await nc.close()

    run(body)


def test_drain_delivers_what_was_published(broker_thread: BrokerThread) -> None:
    async def body() -> None:
        nc = await nats.connect(broker_thread.nats_url, name="drainer")
        pub = await nats.connect(broker_thread.nats_url)
        got: list[bytes] = []
        release = asyncio.Event()

        async def keep(msg: Any) -> None:
            await release.wait()  # messages pile up in the client until drain
            got.append(msg.data)

        await nc.subscribe("d", cb=keep)
        probe = await nc.subscribe("d")
        await subscribed(broker_thread, "drainer", 2)  # nats.py's flush is no barrier
        for n in range(100):
            await pub.publish("d", b"%d" % n)
        # nats.py's flush is no barrier (its PING may overtake queued PUBs): wait for them all.
        for _ in range(100):
            await probe.next_msg(timeout=LIMIT)
        draining = asyncio.create_task(nc.drain())
        release.set()
        await draining
        assert got == [b"%d" % n for n in range(100)]
        await pub.close()

    run(body)


def test_reconnect_after_restart_with_lame_duck_first(broker_thread: BrokerThread) -> None:
    async def body() -> None:
        lame = asyncio.Event()
        reconnected = asyncio.Event()

        async def on_lame_duck() -> None:
            lame.set()

        async def on_reconnect() -> None:
            reconnected.set()

        nc = await nats.connect(
            broker_thread.nats_url,
            name="svc",
            reconnect_time_wait=0.05,
            lame_duck_mode_cb=on_lame_duck,
            reconnected_cb=on_reconnect,
        )
        sub = await nc.subscribe("after")
        await nc.flush()
        await asyncio.to_thread(broker_thread.restart)
        await lame.wait()
        await reconnected.wait()
        await nc.flush()
        await asyncio.to_thread(broker_thread.wait_for_client, "svc", subscriptions=1)
        async with broker_thread.connect() as native:
            await native.publish("after", b"still here")
        assert (await sub.next_msg(timeout=LIMIT)).data == b"still here"
        await nc.close()

    run(body)


@pytest.mark.broker_config(max_pending_bytes=4096)
def test_slow_consumer_is_closed_and_others_are_unharmed(broker_thread: BrokerThread) -> None:
    async def body() -> None:
        disconnected = asyncio.Event()

        async def on_disconnect() -> None:
            disconnected.set()

        slow = await nats.connect(
            broker_thread.nats_url,
            name="slow",
            disconnected_cb=on_disconnect,
            allow_reconnect=False,
        )
        await slow.subscribe("flood")
        await subscribed(broker_thread, "slow", 1)
        fine = await nats.connect(broker_thread.nats_url, name="fine")
        sub = await fine.subscribe("flood")
        await fine.flush()
        await asyncio.to_thread(broker_thread.stall_client, "slow")
        for _ in range(40):
            await fine.publish("flood", b"x" * 100)
            await fine.flush()  # one at a time, so the reader keeps up and only "slow" lags
        await disconnected.wait()
        assert [(await sub.next_msg(timeout=LIMIT)).data for _ in range(40)] == [b"x" * 100] * 40
        assert broker_thread.statistics().slow_consumers == 1
        await slow.close()
        await fine.close()

    run(body)


# -- authentication, permissions, TLS ----------------------------------------------------------

AUTH = {
    "auth": {
        "token": "s3cret",
        "users": [
            {
                "user": "orders",
                "password": "orders-pw",
                "permissions": {"publish": ["orders.>", "_INBOX.>"], "subscribe": ["orders.>"]},
            }
        ],
    }
}


@pytest.mark.broker_config(toml=AUTH)
def test_token_and_user_password_auth(broker_thread: BrokerThread, raw: Any) -> None:
    url = broker_thread.nats_url
    assert raw(b"").info["auth_required"] is True

    async def body() -> None:
        token = await nats.connect(url, token="s3cret", allow_reconnect=False)
        user = await nats.connect(
            url, name="user", user="orders", password="orders-pw", allow_reconnect=False
        )
        sub = await user.subscribe("orders.new")
        await subscribed(broker_thread, "user", 1)
        await token.publish("orders.new", b"1")
        assert (await sub.next_msg(timeout=LIMIT)).data == b"1"
        await token.close()
        await user.close()

    run(body)
    # Refusals: the exact words, and the close, on the wire. (Not through nats.py: it leaks the
    # socket of a refused connect, and its ResourceWarning would fail a later test.)
    bad = raw(b'CONNECT {"user":"orders","pass":"wrong"}\r\n')
    assert bad.line() == b"-ERR 'Authorization Violation'"
    assert bad.closed()
    for wrong in (b'{"auth_token":"nope"}', b"{}"):
        refused = raw(b"CONNECT " + wrong + b"\r\n")
        assert refused.line() == b"-ERR 'Authorization Violation'"
        assert refused.closed()
    skipped = raw(b"PING\r\n")  # with auth on, CONNECT must come first
    assert skipped.line() == b"-ERR 'Authorization Violation'"
    assert skipped.closed()


@pytest.mark.broker_config(toml=AUTH)
def test_permission_violations_are_reported_and_not_fatal(raw: Any) -> None:
    client = raw(b'CONNECT {"user":"orders","pass":"orders-pw"}\r\n')
    client.send(b"PUB billing.x 1\r\nx\r\nSUB billing.> 1\r\nSUB orders.> 2\r\nPING\r\n")
    assert client.line() == b"-ERR 'Permissions Violation for Publish to \"billing.x\"'"
    assert client.line() == b"-ERR 'Permissions Violation for Subscription to \"billing.>\"'"
    assert client.line() == b"PONG"
    client.send(b"PUB orders.a 1\r\ny\r\n")
    assert client.line() == b"MSG orders.a 2 1"


def test_tls_after_info(tmp_path: Any) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    tls = {"tls": {"cert_file": str(cert_file), "key_file": str(key_file)}}
    with BrokerThread(toml=tls) as broker:
        plain = Raw(broker.nats_url)  # INFO comes in plain text and says TLS is next
        assert plain.info["tls_required"] is True
        plain.close()

        async def body() -> None:
            nc = await nats.connect(broker.nats_url, tls=client_context, allow_reconnect=False)
            sub = await nc.subscribe("secure")
            await nc.publish("secure", b"over tls")
            assert (await sub.next_msg(timeout=LIMIT)).data == b"over tls"
            await nc.close()

        run(body)


def test_retained_messages_replay_to_nats_subscribers(
    broker_thread: BrokerThread, raw: Any
) -> None:
    with broker_thread.connect_sync(name="native") as native:
        native.publish("cfg.colour", b"blue", retain=True, headers={"v": "1"})
        native.flush()
    plain = raw(b'CONNECT {"headers":false}\r\nSUB cfg.* 1\r\nSUB cfg.* 2\r\nPING\r\n')
    # NATS has no retained flag: a replay is a plain MSG (headers dropped for this client).
    assert [plain.line() for _ in range(5)] == [
        b"MSG cfg.colour 1 4",
        b"blue",
        b"MSG cfg.colour 2 4",
        b"blue",
        b"PONG",
    ]
    headed = raw(b'CONNECT {"headers":true}\r\nSUB cfg.colour 7\r\n')
    assert headed.line() == b"HMSG cfg.colour 7 18 22"
    assert headed.read(24) == b"NATS/1.0\r\nv: 1\r\n\r\nblue\r\n"


@pytest.mark.broker_config(ping_interval=0.3, max_pings_outstanding=2)
def test_stale_connection_as_nats_server(raw: Any) -> None:
    silent = raw()
    # A client that never answers: two PINGs, then the words nats.py reconnects on.
    assert [silent.line() for _ in range(3)] == [b"PING", b"PING", b"-ERR 'Stale Connection'"]
    assert silent.closed()


@pytest.mark.broker_config(handshake_timeout=0.2)
def test_handshake_timeout(raw: Any) -> None:
    quiet = raw(b"")
    assert quiet.line() == b"-ERR 'Authentication Timeout'"
    assert quiet.closed()


@pytest.mark.broker_config(max_connections=2)
def test_max_connections(raw: Any) -> None:
    first, second = raw(), raw()
    first.send(b"PING\r\n")
    assert first.line() == b"PONG"
    third = raw(b"")  # INFO first, then the refusal, as nats-server
    assert third.line() == b"-ERR 'maximum connections exceeded'"
    assert third.closed()
    second.send(b"PING\r\n")
    assert second.line() == b"PONG"


def test_a_publish_to_more_subscriptions_than_one_step(raw: Any) -> None:
    from broker.hub import FANOUT_STEP

    count = FANOUT_STEP + 100
    sub = raw()
    sub.send(b"".join(b"SUB wide %d\r\n" % n for n in range(count)) + b"PING\r\n")
    assert sub.line() == b"PONG"
    pub = raw(b'CONNECT {"verbose":true}\r\n')
    assert pub.line() == b"+OK"
    pub.send(b"PUB wide 1\r\nx\r\nPING\r\n")
    assert [pub.line() for _ in range(2)] == [b"+OK", b"PONG"]  # after every step
    sids = set()
    for _ in range(count):
        head = sub.line().split()
        assert sub.line() == b"x"
        sids.add(head[2])
    assert len(sids) == count


def test_monitoring_shows_nats_connections_with_their_lang_and_version(
    broker_thread: BrokerThread,
) -> None:
    import urllib.request

    async def body() -> dict[str, Any]:
        nc = await nats.connect(broker_thread.nats_url, name="svc")
        try:
            await nc.publish("metered", b"four")
            await nc.flush()
            url = f"{broker_thread.monitor_url}/connz?sort=cid"
            while True:  # nats.py's flush is no barrier: its PING may overtake the PUB
                reply = await asyncio.to_thread(urllib.request.urlopen, url, timeout=LIMIT)
                connz: dict[str, Any] = json.loads(reply.read())
                if any(c["name"] == "svc" and c["in_msgs"] for c in connz["connections"]):
                    return connz
                await asyncio.sleep(0.01)
        finally:
            await nc.close()

    connz = run(body)
    (svc,) = [c for c in connz["connections"] if c["name"] == "svc"]
    from nats.aio.client import __lang__, __version__

    assert (svc["lang"], svc["version"]) == (__lang__, __version__)  # "python3", "2.16.0"
    assert (svc["in_msgs"], svc["in_bytes"]) == (1, 4)
