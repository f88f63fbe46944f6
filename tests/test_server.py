"""The server over real loopback sockets: handshake, pub/sub, queue groups, request/reply."""

from __future__ import annotations

import errno
import socket

import pytest
import trio
from wire import StartServer, WireClient, raw_frame, wire_client

from broker.protocol import PROTOCOL_VERSION, Hello, Msg, Pub, Sub, Unsub, Welcome
from broker.server import Server


async def subscribe(client: WireClient, *subs: Sub) -> None:
    """Subscribe and wait for the PONG, so the subscriptions are in the routing table."""
    await client.send(*subs)
    assert await client.drain() == []


async def publish(client: WireClient, *pubs: Pub) -> None:
    """Publish and wait for the PONG, so every message has been routed."""
    await client.send(*pubs)
    await client.flush()


# -- handshake ---------------------------------------------------------------------------------


async def test_welcome_announces_limits_and_a_client_id(start_server: StartServer) -> None:
    with trio.fail_after(5):
        server = await start_server(max_payload=4096, max_subscriptions=7, ping_interval=30)
        async with wire_client(server.port) as a, wire_client(server.port) as b:
            info = a.info
            assert info["version"] == PROTOCOL_VERSION
            assert info["server_id"] == server.server_id
            assert info["max_payload"] == 4096
            assert info["max_frame"] == server.config.frame_limit
            assert info["max_subscriptions"] == 7
            assert info["ping_interval"] == 30
            assert type(info["client_id"]) is int
            assert a.info["client_id"] != b.info["client_id"]
            assert server.statistics().connections == 2


@pytest.mark.parametrize(
    "hello",
    [
        ["HELLO"],
        ["HELLO", None],
        ["HELLO", {}],
        ["HELLO", {"version": 1, "name": "n", "echo": True, "token": "t", "future": [1, 2]}],
    ],
    ids=["no-options", "nil-options", "empty-options", "all-options-and-an-unknown-one"],
)
async def test_hello_variants_are_welcome(server: Server, hello: list[object]) -> None:
    with trio.fail_after(5):
        async with wire_client(server.port, hello=False) as client:
            await client.send_raw(raw_frame(hello))
            welcome = await client.expect(Welcome)
            assert welcome.info["version"] == PROTOCOL_VERSION
            # echo defaults to true: the client hears its own publish.
            await client.send_raw(raw_frame(["SUB", 1, "me"]) + raw_frame(["PUB", "me", b"x"]))
            assert await client.drain() == [Msg(1, "me", b"x")]


async def test_frames_may_follow_hello_without_waiting_for_welcome(server: Server) -> None:
    with trio.fail_after(5):
        async with wire_client(server.port, hello=False) as client:
            await client.send(Hello({"name": "eager"}), Sub(1, "now"), Pub("now", b"x"))
            await client.expect(Welcome)
            assert await client.drain() == [Msg(1, "now", b"x")]


async def test_trailing_nils_may_be_sent_or_omitted(server: Server) -> None:
    with trio.fail_after(5):
        async with wire_client(server.port) as client:
            await client.send_raw(
                raw_frame(["SUB", 1, "a"])
                + raw_frame(["SUB", 2, "a", None])
                + raw_frame(["PUB", "a", b"1"])
                + raw_frame(["PUB", "a", b"2", None])
                + raw_frame(["PUB", "a", b"3", None, None])
                + raw_frame(["UNSUB", 2, None])
                + raw_frame(["PUB", "a", b"4", "r", None])
            )
            assert await client.drain() == [
                Msg(1, "a", b"1"),
                Msg(2, "a", b"1"),
                Msg(1, "a", b"2"),
                Msg(2, "a", b"2"),
                Msg(1, "a", b"3"),
                Msg(2, "a", b"3"),
                Msg(1, "a", b"4", "r"),
            ]


# -- 1. basics ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "subject", "delivered"),
    [
        ("orders.eu", "orders.eu", True),
        ("orders.eu", "orders.us", False),
        ("orders.eu", "orders.eu.created", False),
        ("orders.*", "orders.eu", True),
        ("orders.*", "orders", False),
        ("orders.*", "orders.eu.created", False),
        ("*.eu.*", "orders.eu.created", True),
        ("orders.>", "orders.eu", True),
        ("orders.>", "orders.eu.created.today", True),
        ("orders.>", "orders", False),
        (">", "anything.at.all", True),
    ],
)
async def test_subject_matching(
    server: Server, pattern: str, subject: str, delivered: bool
) -> None:
    with trio.fail_after(5):
        async with wire_client(server.port) as sub, wire_client(server.port) as pub:
            await subscribe(sub, Sub(5, pattern))
            await publish(pub, Pub(subject, b"x"))
            expected = [Msg(5, subject, b"x")] if delivered else []
            assert await sub.drain() == expected


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x00", bytes(range(256)), b"\xff" * 100_000],
    ids=["empty", "nul", "all-bytes", "100k"],
)
async def test_payload_reply_to_and_headers_arrive_intact(server: Server, payload: bytes) -> None:
    headers = {"trace-id": "abc", "empty": "", "ünïcode": "✓"}
    with trio.fail_after(5):
        async with wire_client(server.port) as sub, wire_client(server.port) as pub:
            await subscribe(sub, Sub(1, "data.>"))
            await publish(
                pub,
                Pub("data.a", payload, "reply.here", headers),
                Pub("data.b", payload),
            )
            assert await sub.next_event() == Msg(1, "data.a", payload, "reply.here", headers)
            assert await sub.next_event() == Msg(1, "data.b", payload)
            assert await sub.drain() == []


async def test_every_subscription_gets_each_message_once(server: Server) -> None:
    with trio.fail_after(5):
        async with (
            wire_client(server.port) as a,
            wire_client(server.port) as b,
            wire_client(server.port) as c,
            wire_client(server.port) as pub,
        ):
            await subscribe(a, Sub(1, "news.sport"))
            await subscribe(b, Sub(1, "news.*"))
            # Two matching subscriptions on one connection: one MSG for each.
            await subscribe(c, Sub(1, "news.>"), Sub(2, "news.sport"))
            await publish(pub, Pub("news.sport", b"goal"))
            assert await a.drain() == [Msg(1, "news.sport", b"goal")]
            assert await b.drain() == [Msg(1, "news.sport", b"goal")]
            assert sorted(await c.drain()) == [
                Msg(1, "news.sport", b"goal"),
                Msg(2, "news.sport", b"goal"),
            ]
            stats = server.statistics()
            assert (stats.messages_in, stats.messages_out) == (1, 4)
            assert stats.subscriptions == 4


# -- 2. PING/PONG ordering ---------------------------------------------------------------------


async def test_pong_proves_the_subscription_is_routed(server: Server) -> None:
    with trio.fail_after(5):
        async with wire_client(server.port) as a, wire_client(server.port) as b:
            for sid in range(50):
                # SUB, PING and wait for PONG; only then does the other client publish.
                await subscribe(a, Sub(sid, f"race.{sid}"))
                await b.send(Pub(f"race.{sid}", b"%d" % sid))
                assert await a.next_event() == Msg(sid, f"race.{sid}", b"%d" % sid)


async def test_own_messages_arrive_before_the_pong(server: Server) -> None:
    with trio.fail_after(5):
        async with wire_client(server.port) as a:
            pubs = [Pub("self.x", b"%d" % i) for i in range(100)]
            # One write: SUB, 100 PUBs, then the flush's PING.
            await a.send(Sub(1, "self.x"), *pubs)
            assert await a.drain() == [Msg(1, "self.x", p.payload) for p in pubs]


# -- 3. echo -----------------------------------------------------------------------------------


async def test_echo_false_never_delivers_own_publishes(server: Server) -> None:
    with trio.fail_after(5):
        async with (
            wire_client(server.port, echo=False) as quiet,
            wire_client(server.port) as other,
        ):
            await subscribe(quiet, Sub(1, "chat.>"), Sub(2, "chat.room", "workers"))
            await subscribe(other, Sub(1, "chat.room"), Sub(2, "chat.room", "workers"))
            await publish(quiet, *(Pub("chat.room", b"%d" % i) for i in range(6)))
            assert await quiet.drain() == []
            received = await other.drain()
            # The plain subscription gets all six; the queue group skips the publisher's own
            # member every time, so the other member gets all six as well.
            assert [e for e in received if e.sid == 1] == [
                Msg(1, "chat.room", b"%d" % i) for i in range(6)
            ]
            assert [e for e in received if e.sid == 2] == [
                Msg(2, "chat.room", b"%d" % i) for i in range(6)
            ]
            # Others' publishes still reach the echo=false client.
            await publish(other, Pub("chat.room", b"hi"))
            assert sorted(await quiet.drain()) in (
                [Msg(1, "chat.room", b"hi")],
                [Msg(1, "chat.room", b"hi"), Msg(2, "chat.room", b"hi")],
            )


async def test_echo_false_alone_in_its_queue_group_gets_nothing(server: Server) -> None:
    with trio.fail_after(5):
        async with wire_client(server.port, echo=False) as quiet:
            await subscribe(quiet, Sub(1, "jobs", "workers"))
            await publish(quiet, Pub("jobs", b"1"), Pub("jobs", b"2"))
            assert await quiet.drain() == []


async def test_echo_true_delivers_own_publishes(server: Server) -> None:
    with trio.fail_after(5):
        async with wire_client(server.port, echo=True) as loud:
            await subscribe(loud, Sub(1, "chat.>"), Sub(2, "chat.room", "workers"))
            await publish(loud, Pub("chat.room", b"x"))
            assert sorted(await loud.drain()) == [
                Msg(1, "chat.room", b"x"),
                Msg(2, "chat.room", b"x"),
            ]


# -- 4. UNSUB ----------------------------------------------------------------------------------


async def test_unsub_now(server: Server) -> None:
    with trio.fail_after(5):
        async with wire_client(server.port) as sub, wire_client(server.port) as pub:
            await subscribe(sub, Sub(1, "t"), Sub(2, "t"))
            assert server.statistics().subscriptions == 2
            await sub.send(Unsub(1))
            assert await sub.drain() == []
            assert server.statistics().subscriptions == 1
            await publish(pub, Pub("t", b"after"))
            assert await sub.drain() == [Msg(2, "t", b"after")]


async def test_unsub_max_msgs_delivers_exactly_n(server: Server) -> None:
    with trio.fail_after(5):
        async with wire_client(server.port) as sub, wire_client(server.port) as pub:
            await subscribe(sub, Sub(1, "t"))
            await sub.send(Unsub(1, 3))
            await sub.flush()
            await publish(pub, *(Pub("t", b"%d" % i) for i in range(5)))
            assert await sub.drain() == [Msg(1, "t", b"%d" % i) for i in range(3)]
            assert server.statistics().subscriptions == 0


async def test_unsub_max_msgs_counts_messages_already_delivered(server: Server) -> None:
    with trio.fail_after(5):
        async with wire_client(server.port) as sub, wire_client(server.port) as pub:
            await subscribe(sub, Sub(1, "t"), Sub(2, "t"))
            await publish(pub, Pub("t", b"0"), Pub("t", b"1"))
            # sid 1 has had 2 of 5: three more. sid 2 has had 2 already, so UNSUB 2 is at once.
            await sub.send(Unsub(1, 5), Unsub(2, 2))
            await sub.flush()
            assert server.statistics().subscriptions == 1
            await publish(pub, *(Pub("t", b"%d" % i) for i in range(2, 10)))
            received = await sub.drain()
            assert [e for e in received if e.sid == 1] == [Msg(1, "t", b"%d" % i) for i in range(5)]
            assert [e for e in received if e.sid == 2] == [Msg(2, "t", b"0"), Msg(2, "t", b"1")]
            assert server.statistics().subscriptions == 0


async def test_unsub_unknown_sid_is_ignored(server: Server) -> None:
    with trio.fail_after(5):
        async with wire_client(server.port) as sub:
            await subscribe(sub, Sub(1, "t"))
            await sub.send(Unsub(99), Unsub(98, 4))
            assert await sub.drain() == []
            await publish(sub, Pub("t", b"still"))
            assert await sub.drain() == [Msg(1, "t", b"still")]
            assert server.statistics().protocol_errors == 0


async def test_sid_can_be_reused_after_unsub(server: Server) -> None:
    with trio.fail_after(5):
        async with wire_client(server.port) as sub:
            await subscribe(sub, Sub(1, "old"))
            await sub.send(Unsub(1))
            await subscribe(sub, Sub(1, "new"))
            await publish(sub, Pub("old", b"a"), Pub("new", b"b"))
            assert await sub.drain() == [Msg(1, "new", b"b")]


# -- 5. queue groups ---------------------------------------------------------------------------


async def test_queue_group_is_round_robin_and_plain_subscribers_get_all(server: Server) -> None:
    with trio.fail_after(5):
        async with (
            wire_client(server.port) as w1,
            wire_client(server.port) as w2,
            wire_client(server.port) as w3,
            wire_client(server.port) as auditor,
            wire_client(server.port) as pub,
        ):
            workers = [w1, w2, w3]
            for worker in workers:
                await subscribe(worker, Sub(7, "jobs.*", "workers"))
            await subscribe(auditor, Sub(1, "jobs.>"))
            await publish(pub, *(Pub("jobs.new", b"%d" % i) for i in range(30)))
            got = [[e.payload for e in await worker.drain()] for worker in workers]
            assert [len(payloads) for payloads in got] == [10, 10, 10]
            assert sorted(p for payloads in got for p in payloads) == sorted(
                b"%d" % i for i in range(30)
            )
            assert [e.payload for e in await auditor.drain()] == [b"%d" % i for i in range(30)]


async def test_each_queue_group_gets_one_copy(server: Server) -> None:
    with trio.fail_after(5):
        async with (
            wire_client(server.port) as a,
            wire_client(server.port) as b,
            wire_client(server.port) as pub,
        ):
            await subscribe(a, Sub(1, "ev", "billing"), Sub(2, "ev", "audit"))
            await subscribe(b, Sub(1, "ev", "billing"), Sub(2, "ev", "audit"))
            await publish(pub, *(Pub("ev", b"%d" % i) for i in range(20)))
            received = await a.drain() + await b.drain()
            for sid in (1, 2):
                payloads = sorted(e.payload for e in received if e.sid == sid)
                assert payloads == sorted(b"%d" % i for i in range(20))
            assert server.statistics().messages_out == 40


# -- 6. request/reply --------------------------------------------------------------------------


async def test_request_reply(server: Server) -> None:
    with trio.fail_after(5):
        async with wire_client(server.port) as responder, wire_client(server.port) as requester:
            await subscribe(responder, Sub(1, "svc.echo", "echoers"))
            await subscribe(requester, Sub(9, "_INBOX.abc.*"))
            await requester.send(Pub("svc.echo", b"ping", "_INBOX.abc.1", {"k": "v"}))
            request = await responder.expect(Msg)
            assert request == Msg(1, "svc.echo", b"ping", "_INBOX.abc.1", {"k": "v"})
            assert request.reply_to is not None
            await responder.send(Pub(request.reply_to, b"pong"))
            assert await requester.next_event() == Msg(9, "_INBOX.abc.1", b"pong")
            assert server.statistics().no_responders == 0


async def test_no_responders_answers_at_once_with_503(server: Server) -> None:
    with trio.fail_after(5):
        async with wire_client(server.port) as requester, wire_client(server.port) as other:
            await subscribe(requester, Sub(3, "_INBOX.>"))
            await subscribe(other, Sub(1, "_INBOX.>"))
            await requester.send(Pub("nobody.home", b"hello?", "_INBOX.r1"))
            assert await requester.drain() == [Msg(3, "_INBOX.r1", b"", None, {"status": "503"})]
            # Only the requester hears it, and a publish without reply_to gets no answer.
            await publish(requester, Pub("nobody.home", b"fire and forget"))
            assert await requester.drain() == []
            assert await other.drain() == []
            assert server.statistics().no_responders == 1


async def test_no_503_when_someone_listens(server: Server) -> None:
    with trio.fail_after(5):
        async with wire_client(server.port) as requester, wire_client(server.port) as responder:
            await subscribe(requester, Sub(3, "_INBOX.>"))
            await subscribe(responder, Sub(1, "svc"))
            await publish(requester, Pub("svc", b"q", "_INBOX.r1"))
            assert await requester.drain() == []
            assert await responder.drain() == [Msg(1, "svc", b"q", "_INBOX.r1")]
            assert server.statistics().no_responders == 0


# -- 7. ordering -------------------------------------------------------------------------------


async def test_one_publisher_order_is_kept_for_every_subscriber(server: Server) -> None:
    count = 1000
    with trio.fail_after(10):
        async with (
            wire_client(server.port) as s1,
            wire_client(server.port) as s2,
            wire_client(server.port) as s3,
            wire_client(server.port) as pub,
        ):
            subscribers = [s1, s2, s3]
            await subscribe(s1, Sub(1, "seq"))
            await subscribe(s2, Sub(1, "*"))
            await subscribe(s3, Sub(1, ">"))
            received: dict[int, list[bytes]] = {}

            async def collect(index: int, client: WireClient) -> None:
                payloads = received.setdefault(index, [])
                while len(payloads) < count:
                    payloads.append((await client.expect(Msg)).payload)

            async with trio.open_nursery() as nursery:
                for index, client in enumerate(subscribers):
                    nursery.start_soon(collect, index, client)
                for start in range(0, count, 100):
                    await pub.send(*(Pub("seq", b"%d" % i) for i in range(start, start + 100)))
            expected = [b"%d" % i for i in range(count)]
            assert received == {0: expected, 1: expected, 2: expected}


# -- 15. dual stack ----------------------------------------------------------------------------


def ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as error:
        if error.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            return False
        raise
    return True


async def test_listens_on_every_host_with_one_port(start_server: StartServer) -> None:
    ipv6 = ipv6_loopback_works()
    hosts = ("127.0.0.1", "::1") if ipv6 else ("127.0.0.1",)
    with trio.fail_after(5):
        server = await start_server(hosts=hosts)
        assert {host for host, _ in server.addresses} == set(hosts)
        assert {port for _, port in server.addresses} == {server.port}
        assert server.url == f"tcp://127.0.0.1:{server.port}"
        async with wire_client(server.port, host="127.0.0.1") as v4:
            await subscribe(v4, Sub(1, "dual"))
            if not ipv6:
                pytest.skip("no IPv6 loopback on this machine; checked 127.0.0.1 only")
            async with wire_client(server.port, host="::1") as v6:
                await publish(v6, Pub("dual", b"over ipv6"))
                assert await v4.drain() == [Msg(1, "dual", b"over ipv6")]
