"""The monitoring endpoint over real HTTP, checked against traffic the test itself sent."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from wire import StartServer, wire_client

from broker.client import connect
from broker.config import Config, MonitoringConfig
from broker.monitoring import CONNZ_MAX_LIMIT, duration
from broker.protocol import Hello, Pub, Sub
from broker.server import Server
from broker.server.http import _BoundedStream
from broker.server.server import ListenError

MONITORING = MonitoringConfig(enabled=True, port=0)


async def http(
    server: Server, path: str, *, method: str = "GET", extra: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on its own connection; status, headers and body."""
    assert server.monitor_address is not None
    host, port = server.monitor_address
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        request = f"{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n"
        await stream.send_all(request.encode() + extra + b"\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


async def get_json(server: Server, path: str, status: int = 200) -> dict[str, Any]:
    got, headers, body = await http(server, path)
    assert got == status, body
    assert headers["content-type"] == "application/json"
    answer: dict[str, Any] = json.loads(body)
    return answer


async def start(start_server: StartServer, **overrides: Any) -> Server:
    overrides.setdefault("monitoring", MONITORING)
    return await start_server(**overrides)


# -- /varz, /connz, /subsz, /metrics against the traffic sent ---------------------------------


async def test_figures_match_traffic_the_test_sent(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start(start_server)
        async with (
            connect(server.url, name="publisher") as pub,
            connect(server.url, name="subscriber") as sub,
            sub.subscribe("load.*") as inbox,
        ):
            await sub.flush()
            for _ in range(100):
                await pub.publish("load.x", b"x")
            await pub.flush()
            for _ in range(100):
                await inbox.next()

            varz = await get_json(server, "/varz")
            assert (varz["in_msgs"], varz["in_bytes"]) == (100, 100)
            assert (varz["out_msgs"], varz["out_bytes"]) == (100, 100)
            assert (varz["connections"], varz["total_connections"]) == (2, 2)
            assert varz["subscriptions"] == 1
            assert varz["server_id"] == server.server_id
            assert varz["max_payload"] == server.config.max_payload
            assert varz["max_connections"] == server.config.max_connections
            assert varz["slow_consumers"] == 0
            assert varz["port"] == server.port
            assert varz["http_port"] == server.monitor_address[1]  # type: ignore[index]
            assert varz["start"].endswith("Z") and varz["now"] >= varz["start"]
            assert varz["uptime"].endswith("s") and varz["mem"] > 0 and varz["cpu"] >= 0

            connz = await get_json(server, "/connz")
            assert (connz["num_connections"], connz["total"]) == (2, 2)
            assert (connz["offset"], connz["limit"]) == (0, 1024)
            p, s = connz["connections"]  # by cid: the publisher connected first
            assert (p["name"], p["in_msgs"], p["in_bytes"], p["out_msgs"]) == (
                "publisher",
                100,
                100,
                0,
            )
            assert (s["name"], s["out_msgs"], s["out_bytes"], s["in_msgs"]) == (
                "subscriber",
                100,
                100,
                0,
            )
            assert (s["subscriptions"], s["pending_bytes"]) == (1, 0)
            for conn in (p, s):
                assert conn["lang"] == "python" and conn["version"]
                assert conn["ip"] == "127.0.0.1" and conn["port"] > 0
                assert conn["start"] <= conn["last_activity"]
                assert conn["uptime"].endswith("s") and conn["idle"].endswith("s")

            subsz = await get_json(server, "/subsz")
            assert subsz["num_subscriptions"] == server.statistics().subscriptions + 3  # + $SYS
            assert subsz["num_matches"] >= 100 and subsz["cache_hit_rate"] > 0.9
            assert subsz["num_cache"] >= 1 and subsz["max_fanout"] == 1

            status, headers, body = await http(server, "/metrics")
            assert status == 200 and headers["content-type"].startswith("text/plain")
            families = {
                (f.name, f.type): f.samples[0].value
                for f in text_string_to_metric_families(body.decode())
            }
            assert families[("broker_in_msgs", "counter")] == 100
            assert families[("broker_in_bytes", "counter")] == 100
            assert families[("broker_out_msgs", "counter")] == 100
            assert families[("broker_out_bytes", "counter")] == 100
            assert families[("broker_slow_consumers", "counter")] == 0
            assert families[("broker_connections", "counter")] == 2
            assert families[("broker_connections", "gauge")] == 2
            assert families[("broker_subscriptions", "gauge")] == 1
            assert b"broker_connections_total 2.0" in body


async def test_connz_paging_sorting_cid_and_subs(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start(start_server)
        async with (
            wire_client(server.port, name="quiet") as quiet,
            wire_client(server.port, name="busy") as busy,
            wire_client(server.port, name="subs") as subs,
        ):
            await subs.send(Sub(1, "a.>"), Sub(2, "b.*", "workers"))
            await busy.send(*[Pub("x", b"12345")] * 7)
            await quiet.send(Pub("x", b"1"))
            for client in (quiet, busy, subs):
                await client.flush()
            ids = {c["name"]: c["cid"] for c in (await get_json(server, "/connz"))["connections"]}

            by_in = await get_json(server, "/connz?sort=in_msgs")
            assert [c["name"] for c in by_in["connections"]] == ["busy", "quiet", "subs"]
            assert by_in["sort"] == "in_msgs"
            nats_name = await get_json(server, "/connz?sort=msgs_from")  # NATS's alias
            assert nats_name["connections"] == by_in["connections"]
            by_subs = await get_json(server, "/connz?sort=subscriptions&limit=1")
            assert [c["name"] for c in by_subs["connections"]] == ["subs"]
            assert (by_subs["num_connections"], by_subs["total"], by_subs["limit"]) == (1, 3, 1)
            page = await get_json(server, "/connz?offset=1&limit=1")
            assert [c["cid"] for c in page["connections"]] == [ids["busy"]]
            beyond = await get_json(server, "/connz?offset=3")
            assert (beyond["num_connections"], beyond["total"]) == (0, 3)
            for key in ("pending_bytes", "idle", "uptime", "out_msgs", "last_activity"):
                answer = await get_json(server, f"/connz?sort={key}")
                assert answer["total"] == 3

            one = await get_json(server, f"/connz?cid={ids['subs']}&subs=true")
            (conn,) = one["connections"]
            assert conn["name"] == "subs" and sorted(conn["subscriptions_list"]) == ["a.>", "b.*"]
            assert "subscriptions_list" not in (await get_json(server, "/connz"))["connections"][0]
            none = await get_json(server, "/connz?cid=999")
            assert (none["num_connections"], none["total"], none["connections"]) == (0, 0, [])

            edge = await get_json(server, f"/connz?limit={CONNZ_MAX_LIMIT}")
            past = await get_json(server, f"/connz?limit={CONNZ_MAX_LIMIT + 1}")
            assert edge["limit"] == past["limit"] == CONNZ_MAX_LIMIT

            for bad in ("sort=nope", "limit=-1", "offset=x", "cid=0", "subs=maybe"):
                error = await get_json(server, f"/connz?{bad}", status=400)
                assert bad.split("=")[0] in error["error"]


async def test_subsz_test_subject_counts_receivers(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start(start_server)
        async with wire_client(server.port) as a, wire_client(server.port) as b:
            await a.send(Sub(1, "orders.*"), Sub(2, "orders.new", "q"))
            await b.send(Sub(1, "orders.>"), Sub(2, "orders.new", "q"))
            await a.flush()
            await b.flush()
            hit = await get_json(server, "/subsz?test=orders.new")
            # Two plain subscriptions, and the queue group once.
            assert hit["num_matches_test"] == 3
            assert hit["test"] == "orders.new" and len(hit["subscriptions_list"]) == 3
            miss = await get_json(server, "/subsz?test=payments.new")
            assert miss["num_matches_test"] == 0
            assert miss["num_matches"] == hit["num_matches"]  # a test is not a lookup
            error = await get_json(server, "/subsz?test=bad..subject", status=400)
            assert "test" in error["error"]


async def test_unknown_paths_and_methods(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start(start_server)
        assert "/varz" in (await get_json(server, "/"))["endpoints"]
        assert "try" in (await get_json(server, "/nope", status=404))["error"]
        status, _, _ = await http(server, "/varz", method="POST", extra=b"content-length: 0\r\n")
        assert status == 405
        status, _, body = await http(server, "/varz", method="HEAD")
        assert status == 200 and body == b""


# -- /healthz -------------------------------------------------------------------------------


async def test_healthz_is_503_while_shutting_down(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start(start_server, shutdown_grace=5)
        assert await get_json(server, "/healthz") == {"status": "ok"}
        server.health_checks.append(lambda: "cluster link down")
        assert (await get_json(server, "/healthz", status=503))["error"] == "cluster link down"
        server.health_checks.clear()
        async with wire_client(server.port, name="slow") as slow:
            (transport,) = server.transports
            transport._stall()  # its writer holds the shutdown open until we look
            server.shutdown()
            while not server.hub.closing:
                await trio.sleep(0.01)
            answer = await get_json(server, "/healthz", status=503)
            assert answer == {"status": "unavailable", "error": "the server is shutting down"}
            transport._resume()
            await slow.closed()
        await server.wait_stopped()


# -- bounds ---------------------------------------------------------------------------------


async def test_connections_past_the_limit_get_503_and_the_rest_carry_on(
    start_server: StartServer,
) -> None:
    with trio.fail_after(10):
        # hypercorn frees a closed connection's slot within request_timeout: keep it short.
        settings = MonitoringConfig(enabled=True, port=0, max_connections=2, request_timeout=0.5)
        server = await start(start_server, monitoring=settings)
        assert server.monitor_address is not None
        held = [await trio.open_tcp_stream(*server.monitor_address) for _ in range(2)]
        try:
            status, _, body = await http(server, "/varz")
            assert status == 503 and b"too many monitoring connections" in body
            # The broker's own clients are untouched.
            async with wire_client(server.port) as client:
                await client.flush()
        finally:
            for stream in held:
                await stream.aclose()
        while True:  # the slots free as the server notices the closes
            status, _, _ = await http(server, "/healthz")
            if status == 200:
                break
            await trio.sleep(0.01)


async def test_idle_and_trickling_connections_are_closed(start_server: StartServer) -> None:
    with trio.fail_after(10):
        settings = MonitoringConfig(enabled=True, port=0, request_timeout=0.3)
        server = await start(start_server, monitoring=settings)
        assert server.monitor_address is not None
        async with await trio.open_tcp_stream(*server.monitor_address) as idle:
            assert await idle.receive_some(100) == b""  # closed after request_timeout
        async with await trio.open_tcp_stream(*server.monitor_address) as partial:
            await partial.send_all(b"GET /varz HTTP/1.1\r\n")  # and never the rest
            assert await partial.receive_some(100) == b""
        assert (await get_json(server, "/healthz"))["status"] == "ok"


async def test_request_heads_are_bounded(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start(start_server)
        assert server.monitor_address is not None
        async with await trio.open_tcp_stream(*server.monitor_address) as stream:
            # hypercorn buffers at most 16 KiB of an unfinished request head.
            await stream.send_all(b"GET /varz HTTP/1.1\r\nx-pad: " + b"a" * 40_000)
            answer = b""
            while chunk := await stream.receive_some(65536):
                answer += chunk
            assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")) or answer == b""
        assert (await get_json(server, "/healthz"))["status"] == "ok"


# -- on, off, and the listener ---------------------------------------------------------------


async def test_off_by_default_and_a_port_in_use_is_named(start_server: StartServer) -> None:
    with trio.fail_after(10):
        plain = await start_server()
        assert plain.config.monitoring == MonitoringConfig() and not plain.config.monitoring.enabled
        assert plain.monitor_url is None
        first = await start(start_server)
        assert first.monitor_address is not None
        taken = MonitoringConfig(enabled=True, port=first.monitor_address[1])
        with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{taken.port}"):
            await Server(Config(hosts=("127.0.0.1",), port=0, monitoring=taken)).serve()


def test_durations_read_like_nats() -> None:
    assert [duration(s) for s in (0, 59.9, 61, 3600, 90061)] == [
        "0s",
        "59s",
        "1m1s",
        "1h0m0s",
        "1d1h1m1s",
    ]


async def test_hello_lang_and_version_show_in_connz(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start(start_server)
        async with wire_client(server.port, hello=False) as client:
            await client.send(Hello({"name": "go", "lang": "go", "client_version": "1.2.3"}))
            await client.flush()
            (conn,) = (await get_json(server, "/connz"))["connections"]
            assert (conn["lang"], conn["version"]) == ("go", "1.2.3")


async def test_a_write_to_a_client_that_stopped_reading_is_cut() -> None:
    with trio.fail_after(10):
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with listener:
            port = listener.socket.getsockname()[1]
            async with await trio.open_tcp_stream("127.0.0.1", port):  # and never reads
                served = await listener.accept()
                bounded = _BoundedStream(served, timeout=0.2)
                with pytest.raises(trio.BrokenResourceError):
                    for _ in range(1000):  # far more than the socket buffers hold
                        await bounded.send_all(b"x" * 1_000_000)
