"""Reloading [auth] and [tls] without dropping anyone: in process (`Server.reload`) and through
SIGHUP to a real `broker serve` process."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import broker
from broker.config import (
    AuthConfig,
    Config,
    ConfigError,
    PermissionsConfig,
    RulesConfig,
    UserConfig,
)
from broker.errors import AuthFailed, ErrorCode, PermissionDenied
from broker.protocol import Connection, Err, Hello, Ping, Pong, Role, Welcome
from broker.server import Server
from broker.testing import make_certificates


def users(**entries: PermissionsConfig | None) -> AuthConfig:
    return AuthConfig(
        users=tuple(
            UserConfig(user=name, password=f"{name}-pw", permissions=permissions)
            for name, permissions in entries.items()
        )
    )


SUBSCRIBE_ALL = PermissionsConfig(subscribe=RulesConfig(allow=("orders.>", "billing.>")))
SUBSCRIBE_ORDERS = PermissionsConfig(subscribe=RulesConfig(allow=("orders.>",)))
BEFORE = users(admin=None, bob=SUBSCRIBE_ALL, carol=None)
AFTER = users(admin=None, bob=SUBSCRIBE_ORDERS, dave=None)


def login(server: Server, name: str, **options: Any) -> Any:
    return broker.connect(server.url, user=name, password=f"{name}-pw", reconnect=False, **options)


async def test_reload_applies_new_rules_to_open_connections_both_ways(
    nursery: trio.Nursery,
) -> None:
    server: Server = await nursery.start(Server(Config(port=0, auth=BEFORE)).serve)
    lost: list[BaseException] = []
    carol_lost = trio.Event()

    def on_disconnected(error: BaseException) -> None:
        lost.append(error)
        carol_lost.set()

    with trio.fail_after(10):
        async with (
            login(server, "admin") as admin,
            login(server, "bob") as bob,
            login(server, "carol", on_disconnected=on_disconnected) as carol,
        ):
            orders = bob.subscribe("orders.>")
            billing = bob.subscribe("billing.>")
            await bob.flush(raise_refused=True)
            await carol.flush()

            server.reload(Config(port=0, auth=AFTER))

            # bob keeps its connection and its orders, loses billing with permission_denied.
            with pytest.raises(PermissionDenied) as info:
                await billing.next()
            assert info.value.details == {"sid": 2, "subject": "billing.>", "op": "subscribe"}
            await admin.publish("orders.1", b"still")
            assert (await orders.next()).payload == b"still"
            # carol was removed: disconnected with auth_failed.
            with pytest.raises(AuthFailed):
                await carol.flush()
            # The hook runs in the client's hook task: soon after, not before flush raises.
            await carol_lost.wait()
            assert [type(error) for error in lost] == [AuthFailed]
            # dave is new: welcome now.
            async with login(server, "dave") as dave:
                await dave.flush()
            # And back: the old rules again.
            server.reload(Config(port=0, auth=BEFORE))
            await bob.flush()  # takes the refusal above
            billing = bob.subscribe("billing.>")
            await bob.flush(raise_refused=True)
            async with login(server, "carol") as again:
                await again.flush()
            with pytest.raises(AuthFailed):
                async with login(server, "dave"):
                    pass
            await admin.flush()


async def test_reload_turning_auth_on_and_off(nursery: trio.Nursery) -> None:
    server: Server = await nursery.start(Server(Config(port=0)).serve)
    with trio.fail_after(10):
        async with broker.connect(server.url, reconnect=False) as anonymous:
            await anonymous.flush()
            server.reload(Config(port=0, auth=BEFORE))
            with pytest.raises(AuthFailed):
                await anonymous.flush()
        async with login(server, "bob") as bob:
            server.reload(Config(port=0))
            sub = bob.subscribe("anything")  # no rules any more
            await bob.flush(raise_refused=True)
            await bob.publish("anything", b"x")
            assert (await sub.next()).payload == b"x"


async def test_an_invalid_reload_changes_nothing(nursery: trio.Nursery, tmp_path: Path) -> None:
    server: Server = await nursery.start(Server(Config(port=0, auth=BEFORE)).serve)
    bad = tmp_path / "bad.toml"
    bad.write_text('[auth]\nusers = [{ user = "x", password = "" }]\n')
    assert not server.reload_file(bad)
    assert not server.reload_file(tmp_path / "missing.toml")
    certificates = make_certificates(tmp_path / "tls", clients=())
    with pytest.raises(ConfigError, match=r"\[tls\] cannot be added or removed by a reload"):
        server.reload(Config(port=0, auth=BEFORE, tls=certificates.tls_config()))
    assert server.hub.auth is not None and server.hub.auth.config == BEFORE
    assert server.config.tls is None
    with trio.fail_after(5):
        async with login(server, "carol") as carol:
            await carol.flush()


async def test_reload_replaces_the_certificate_for_new_connections(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    first = make_certificates(tmp_path / "first", clients=())
    second = make_certificates(tmp_path / "second", clients=())
    config = Config(port=0, tls=first.tls_config())
    server: Server = await nursery.start(Server(config).serve)
    with trio.fail_after(10):
        async with broker.connect(server.url, reconnect=False, **first.client_options()) as old:
            server.reload(Config(port=0, tls=second.tls_config()))
            await old.flush()  # the open connection is not dropped
            async with broker.connect(server.url, **second.client_options()) as new:
                await new.flush()
            with pytest.raises(broker.ConnectionClosed):
                async with broker.connect(server.url, **first.client_options()):
                    pass


# ---- SIGHUP to a real process -------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(rb"listening on 127\.0\.0\.1:(\d+)")


def auth_toml(**entries: str) -> str:
    lines = []
    for name, subscribe in entries.items():
        lines += ["[[auth.users]]", f'user = "{name}"', f'password = "{name}-pw"']
        lines.append(f'permissions.subscribe = ["{subscribe}"]')
    return "\n".join(lines) + "\n"


#: Every stream `hello` opened, closed when the test ends.
_opened: list[trio.SocketStream] = []


async def hello(port: int, name: str) -> tuple[trio.SocketStream, Connection, list[object]]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    _opened.append(stream)
    conn = Connection(Role.CLIENT)
    await stream.send_all(conn.send(Hello({"user": name, "password": f"{name}-pw"})))
    events: list[object] = []
    while not events:
        data = await stream.receive_some()
        if not data:
            break
        conn.receive_data(data)
        events.extend(conn.events())
    return stream, conn, events


async def until_closed(stream: trio.SocketStream, conn: Connection) -> list[object]:
    events: list[object] = []
    while data := await stream.receive_some():
        conn.receive_data(data)
        events.extend(conn.events())
    return events


async def test_sighup_reloads_auth_in_a_broker_serve_process(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(auth_toml(bob="orders.>", carol=">"))
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "broker", "serve", "--port", "0", "--config", str(config)],
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stderr is not None
    log = bytearray()

    async def wait_for(pattern: bytes) -> re.Match[bytes]:
        assert process.stderr is not None
        while (found := re.search(pattern, log)) is None:
            chunk = await process.stderr.receive_some()
            assert chunk, f"broker exited: {log.decode()}"
            log.extend(chunk)
        return found

    try:
        with trio.fail_after(20):
            port = int((await wait_for(LISTENING.pattern)).group(1))
            bob, bob_conn, [welcome] = await hello(port, "bob")
            assert isinstance(welcome, Welcome)
            carol, carol_conn, [welcome] = await hello(port, "carol")
            # Removing bob and narrowing carol: bob is told auth_failed, carol stays.
            config.write_text(auth_toml(carol="orders.>", dave="orders.>"))
            process.send_signal(signal.SIGHUP)
            assert await until_closed(bob, bob_conn) == [
                Err(ErrorCode.AUTH_FAILED.value, "authentication failed", None)
            ]
            _, _, [welcome] = await hello(port, "dave")
            assert isinstance(welcome, Welcome)
            _, _, [refused] = await hello(port, "bob")
            assert isinstance(refused, Err) and refused.code == "auth_failed"
            # An invalid file changes nothing and is logged; then back to the first rules.
            config.write_text("[auth]\n")
            process.send_signal(signal.SIGHUP)
            await wait_for(rb"reload refused, nothing changed: .*auth")
            _, _, [welcome] = await hello(port, "dave")
            assert isinstance(welcome, Welcome)
            config.write_text(auth_toml(bob="orders.>", carol=">"))
            process.send_signal(signal.SIGHUP)
            await wait_for(rb"(?s)reloaded \[auth\] and \[tls\].*reloaded \[auth\] and \[tls\]")
            _, _, [welcome] = await hello(port, "bob")
            assert isinstance(welcome, Welcome)
            await carol.send_all(carol_conn.send(Ping()))
            carol_conn.receive_data(await carol.receive_some())
            assert carol_conn.events() == [Pong()]
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    finally:
        for stream in _opened:
            await trio.aclose_forcefully(stream)
        _opened.clear()
        if process.returncode is None:
            process.kill()
            with trio.move_on_after(5):
                await process.wait()


async def test_a_reload_during_a_handshake_holds_it_to_the_new_rules(
    nursery: trio.Nursery,
) -> None:
    from wire import connect as raw_connect

    from broker.protocol import Sub

    server: Server = await nursery.start(Server(Config(port=0, auth=BEFORE)).serve)
    with trio.fail_after(10):
        carol, bob = await raw_connect(server.port), await raw_connect(server.port)
        server.reload(Config(port=0, auth=AFTER))  # neither has said HELLO yet: both stay
        await carol.send(Hello({"version": 1, "user": "carol", "password": "carol-pw"}))
        [refused] = await carol.closed()
        assert isinstance(refused, Err) and refused.code == "auth_failed"
        await bob.send(Hello({"version": 1, "user": "bob", "password": "bob-pw"}))
        await bob.expect(Welcome)
        await bob.send(Sub(1, "billing.>"))  # allowed before the reload, not after
        [denied] = await bob.drain()
        assert isinstance(denied, Err) and denied.code == "permission_denied"
        await carol.aclose()
        await bob.aclose()
