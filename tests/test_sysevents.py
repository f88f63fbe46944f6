"""``$SYS`` events and requests, over real connections."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from wire import StartServer, wire_client

from broker.client import Client, Message, connect
from broker.errors import BadSubject, NoResponders
from broker.protocol import Err, Pub, Sub
from broker.server import Server


def body(message: Message) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(message.payload)
    return answer


async def request(client: Client, subject: str, payload: bytes = b"") -> dict[str, Any]:
    return body(await client.request(subject, payload, timeout=5))


async def test_connect_and_disconnect_events(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server()
        prefix = f"$SYS.SERVER.{server.server_id}"
        async with connect(server.url, name="ops") as ops, ops.subscribe("$SYS.>") as events:
            await ops.flush()
            async with connect(server.url, name="worker") as worker:
                await worker.publish("jobs", b"abc")
                await worker.flush()
                connected = await events.next()
            disconnected = await events.next()
        assert connected.subject == f"{prefix}.CLIENT.CONNECT"
        event = body(connected)
        assert (event["type"], event["name"], event["server_id"]) == (
            "client_connect",
            "worker",
            server.server_id,
        )
        assert event["ip"] == "127.0.0.1" and event["port"] > 0 and event["cid"] > 1
        assert disconnected.subject == f"{prefix}.CLIENT.DISCONNECT"
        event = body(disconnected)
        assert (event["name"], event["reason"], event["cid"]) == ("worker", "client_closed", 2)
        assert (event["in_msgs"], event["in_bytes"], event["out_msgs"]) == (1, 3, 0)


async def test_slow_consumer_event(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(max_pending_messages=4)
        async with (
            connect(server.url, name="ops") as ops,
            ops.subscribe(f"$SYS.SERVER.{server.server_id}.SLOW_CONSUMER") as events,
        ):
            await ops.flush()
            async with wire_client(server.port, name="laggard") as laggard:
                await laggard.send(Sub(1, "feed"))
                await laggard.flush()
                (transport,) = [t for t in server.transports if t.adapter.name == "laggard"]
                transport._stall()
                async with wire_client(server.port, name="feeder") as feeder:
                    await feeder.send(*[Pub("feed", b"x" * 100)] * 10)
                    await feeder.flush()
                event = body(await events.next())
                assert (event["type"], event["name"]) == ("slow_consumer", "laggard")
                assert event["policy"] == "disconnect" and event["subscriptions"] == 1
                transport._resume()


async def test_auth_error_event(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server()
        async with (
            connect(server.url, name="ops") as ops,
            ops.subscribe("$SYS.SERVER.*.CLIENT.AUTH.ERR") as events,
        ):
            await ops.flush()
            # The hook authentication calls with the peer and its reason.
            server.system.auth_error("[::1]:4222", "bad credentials", name="mallory")
            server.system.auth_error("10.1.2.3:999", "no token")
            first, second = body(await events.next()), body(await events.next())
        assert (first["ip"], first["port"], first["name"]) == ("::1", 4222, "mallory")
        assert (first["type"], first["reason"]) == ("client_auth_error", "bad credentials")
        assert (second["ip"], second["port"], second["name"]) == ("10.1.2.3", 999, "")


async def test_requests_get_the_http_json(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server()
        async with connect(server.url, name="ops") as ops:
            for _ in range(3):
                await ops.publish("counted", b"12")
            await ops.flush()
            varz = await request(ops, "$SYS.REQ.SERVER.PING.VARZ")
            assert varz["server_id"] == server.server_id
            # The request itself is the fourth message in (empty, so no bytes).
            assert (varz["in_msgs"], varz["in_bytes"], varz["connections"]) == (4, 6, 1)
            assert (await request(ops, "$SYS.REQ.SERVER.PING"))["server_id"] == server.server_id
            direct = await request(ops, f"$SYS.REQ.SERVER.{server.server_id}.CONNZ")
            assert [c["name"] for c in direct["connections"]] == ["ops"]
            page = await request(ops, "$SYS.REQ.SERVER.PING.CONNZ", b'{"limit": 0, "subs": true}')
            assert (page["num_connections"], page["total"]) == (0, 1)
            subsz = await request(ops, "$SYS.REQ.SERVER.PING.SUBSZ", b'{"test": "counted"}')
            assert subsz["num_matches_test"] == 0
            assert await request(ops, "$SYS.REQ.SERVER.PING.HEALTHZ") == {"status": "ok"}
            unknown = await request(ops, "$SYS.REQ.SERVER.PING.NOPE")
            assert "VARZ" in unknown["error"]
            bad = await request(ops, "$SYS.REQ.SERVER.PING.CONNZ", b"[1]")
            assert "JSON object" in bad["error"]
            # Another server's id: nobody here answers, and the broker says so at once.
            with pytest.raises(NoResponders):
                await ops.request("$SYS.REQ.SERVER.0000.VARZ", b"", timeout=5)


async def test_clients_cannot_publish_to_sys_except_requests(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server()
        async with wire_client(server.port) as client:
            await client.send(Sub(1, "$SYS.>"))
            forged = f"$SYS.SERVER.{server.server_id}.CLIENT.CONNECT"
            await client.send(Pub(forged, b"{}"), Pub("$SYS.REQ.SERVER.PING.VARZ", b""))
            err = await client.expect(Err)
            assert err.code == "bad_subject" and "$SYS.REQ.SERVER." in err.message
            # The request without a reply is routed (to the server, which ignores it); the
            # forged event reached nobody.
            events = await client.drain()
            assert [e for e in events if getattr(e, "subject", "") == forged] == []
        async with connect(server.url) as ops:
            with pytest.raises(BadSubject):
                await ops.publish("$SYS.SERVER.x.CLIENT.CONNECT", b"")


async def test_answers_never_go_to_a_sys_reply_subject(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server: Server = await start_server()
        async with wire_client(server.port) as client:
            await client.send(Pub("$SYS.REQ.SERVER.PING.VARZ", b"", reply_to="$SYS.x"))
            err = await client.expect(Err)
            assert err.code == "bad_subject"
            assert server.system.answer("$SYS.REQ.SERVER.PING.VARZ")["connections"] == 1


async def test_a_failed_login_publishes_auth_err_to_a_user_allowed_to_read_sys(
    start_server: StartServer,
) -> None:
    from broker.config import AuthConfig, PermissionsConfig, RulesConfig, UserConfig
    from broker.errors import AuthFailed

    ops = UserConfig(
        user="ops",
        password="ops-pw",
        permissions=PermissionsConfig(subscribe=RulesConfig(allow=("$SYS.>",))),
    )
    with trio.fail_after(10):
        server = await start_server(auth=AuthConfig(users=(ops,)))
        async with (
            connect(server.url, name="ops", user="ops", password="ops-pw") as client,
            client.subscribe(f"$SYS.SERVER.{server.server_id}.CLIENT.AUTH.ERR") as events,
        ):
            await client.flush()
            with pytest.raises(AuthFailed):
                async with connect(server.url, name="mallory", user="ops", password="guess"):
                    pass
            event = body(await events.next())
        assert event["type"] == "client_auth_error" and event["ip"] == "127.0.0.1"
        assert server.statistics().auth_failures == 1
