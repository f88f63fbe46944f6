"""Authentication, permissions and TLS over loopback: real sockets, real clients, trustme
certificates, and the rules of docs/security.md, each with a test that it holds.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from wire import Closed, connect, raw_frame

import broker
from broker.auth import hash_password
from broker.config import (
    AuthConfig,
    Config,
    PermissionsConfig,
    ResponsesConfig,
    RulesConfig,
    UserConfig,
)
from broker.errors import AuthFailed, ErrorCode, PermissionDenied
from broker.protocol import Err, Hello, Welcome
from broker.server import Server
from broker.testing import TestCertificates, make_certificates

#: Cheap hashes: the tests check the rules, not bcrypt's cost.
ROUNDS = 4


def rules(allow: tuple[str, ...] = (), deny: tuple[str, ...] = ()) -> RulesConfig:
    return RulesConfig(allow=allow, deny=deny)


def user(name: str, password: str | None = None, **permissions: Any) -> UserConfig:
    return UserConfig(
        user=name,
        password=None if password is None else hash_password(password, rounds=ROUNDS),
        permissions=PermissionsConfig(**permissions) if permissions else None,
    )


#: The docs/security.md recipes, as a config: a requester confined to its own inboxes, a
#: responder that may only answer, a read-only auditor, a confined attacker and an admin.
AUTH = AuthConfig(
    token="shared-token",
    users=(
        user(
            "alice",
            "alice-pw",
            publish=rules(("svc.>",)),
            subscribe=rules(("_INBOX.alice.>",)),
        ),
        user(
            "responder",
            "responder-pw",
            publish=rules(deny=(">",)),
            subscribe=rules(("svc.>",)),
            allow_responses=True,
        ),
        user(
            "auditor",
            "auditor-pw",
            publish=rules(deny=(">",)),
            subscribe=rules(("orders.>",), ("orders.audit",)),
        ),
        user(
            "mallory",
            "mallory-pw",
            publish=rules(("svc.>",)),
            subscribe=rules(("_INBOX.mallory.>",)),
        ),
        user("admin", "admin-pw"),
    ),
)


@pytest.fixture
async def server(nursery: trio.Nursery) -> Server:
    started: Server = await nursery.start(Server(Config(port=0, auth=AUTH)).serve)
    return started


def login(server: Server, name: str, **options: Any) -> Any:
    return broker.connect(server.url, user=name, password=f"{name}-pw", **options)


async def hello_answer(port: int, options: dict[str, Any]) -> list[object]:
    """Send HELLO with `options`; everything the server sends until it closes (or WELCOME)."""
    client = await connect(port)
    try:
        await client.send(Hello({"version": 1, **options}))
        first = await client.next_event()
        if isinstance(first, Welcome):
            return [first]
        return [first, *await client.closed()]
    finally:
        await client.aclose()


# ---- authentication -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"user": "alice"},
        {"user": "alice", "password": "wrong"},
        {"user": "nobody", "password": "alice-pw"},
        {"password": "alice-pw"},
        {"token": "wrong"},
        {"user": "alice", "password": "x" * 100},
    ],
)
async def test_every_wrong_credential_gets_the_same_fatal_answer(
    server: Server, options: dict[str, Any]
) -> None:
    with trio.fail_after(5):
        events = await hello_answer(server.port, options)
    assert events == [Err("auth_failed", "authentication failed", None)]
    stats = server.statistics()
    assert (stats.auth_failures, stats.refused_connections, stats.connections) == (1, 1, 0)


async def test_right_credentials_and_token_get_welcome(server: Server) -> None:
    with trio.fail_after(5):
        for options in (
            {"user": "alice", "password": "alice-pw"},
            {"token": "shared-token"},
        ):
            [welcome] = await hello_answer(server.port, options)
            assert isinstance(welcome, Welcome)
    assert server.statistics().auth_failures == 0


async def test_auth_failures_reach_the_hooks_and_the_others_carry_on(server: Server) -> None:
    seen: list[tuple[str, str]] = []
    server.hub.auth_failure_hooks.append(lambda peer, reason: seen.append((peer, reason)))
    with trio.fail_after(5):
        async with login(server, "admin") as admin:
            sub = admin.subscribe("still.>")
            await admin.flush()
            with pytest.raises(AuthFailed) as info:
                async with broker.connect(server.url, user="admin", password="no"):
                    pass
            assert info.value.code is ErrorCode.AUTH_FAILED
            await admin.publish("still.here", b"1")
            assert (await sub.next()).payload == b"1"
    [(peer, reason)] = seen
    assert peer.startswith("127.0.0.1:") and reason == "wrong password for user 'admin'"


async def test_a_flood_of_logins_does_not_hold_up_the_accept_loop(server: Server) -> None:
    # Clients that never finish their HELLO, and wrong passwords, while a good one connects.
    with trio.fail_after(10):
        stalled = [await connect(server.port) for _ in range(20)]
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(hello_answer, server.port, {"user": "a", "password": "b"})
            async with login(server, "admin") as admin:
                await admin.flush()
        for client in stalled:
            await client.aclose()
    assert server.statistics().auth_failures == 10


async def test_open_broker_ignores_credentials(nursery: trio.Nursery) -> None:
    open_server: Server = await nursery.start(Server(Config(port=0)).serve)
    with trio.fail_after(5):
        [welcome] = await hello_answer(open_server.port, {"user": "x", "password": "y"})
    assert isinstance(welcome, Welcome)


async def test_hello_credentials_must_be_strings(server: Server) -> None:
    client = await connect(server.port)
    with trio.fail_after(5):
        await client.send_raw(raw_frame(["HELLO", {"user": 1, "password": "x"}]))
        [err] = await client.closed()
    assert isinstance(err, Err) and err.code == "bad_handshake"
    await client.aclose()


# ---- permissions --------------------------------------------------------------------------


async def test_reply_snooping_fails_for_a_confined_user_and_works_for_an_unconfined_one(
    server: Server,
) -> None:
    with trio.fail_after(10):
        async with (
            login(server, "alice", inbox_prefix="_INBOX.alice") as alice,
            login(server, "responder") as responder,
            login(server, "mallory", inbox_prefix="_INBOX.mallory") as mallory,
            login(server, "admin") as admin,
        ):
            snooper = admin.subscribe("_INBOX.>")
            requests = responder.subscribe("svc.echo")
            await admin.flush()
            await responder.flush()
            # The attack: listen on every inbox, and answer before the real responder.
            stolen = mallory.subscribe("_INBOX.>")
            with pytest.raises(PermissionDenied) as info:
                await stolen.next()
            assert info.value.details["op"] == "subscribe"
            assert info.value.details["subject"] == "_INBOX.>"

            async def serve_one() -> None:
                request = await requests.next()
                assert request.reply_to is not None
                assert request.reply_to.startswith("_INBOX.alice.")
                with pytest.raises(PermissionDenied):
                    await mallory.publish(request.reply_to, b"forged")
                    await mallory.flush(raise_refused=True)
                await responder.publish(request.reply_to, b"genuine")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_one)
                reply = await alice.request("svc.echo", b"hi")
            assert reply.payload == b"genuine"
            # The unconfined admin sees the request's reply subject: nothing stops it.
            seen = await snooper.next()
            assert seen.subject == "svc.echo" or seen.subject.startswith("_INBOX.alice.")


async def test_a_confined_requester_needs_its_own_inbox_prefix(server: Server) -> None:
    with trio.fail_after(5):
        async with login(server, "alice") as alice:  # the default _INBOX.<random> prefix
            with pytest.raises(PermissionDenied):
                await alice.request("svc.echo", b"hi")


async def test_allow_responses_once_by_default_and_up_to_max(server: Server) -> None:
    with trio.fail_after(10):
        async with (
            login(server, "admin") as admin,
            login(server, "responder") as responder,
        ):
            replies = admin.subscribe("_INBOX.r.>")
            responder_requests = responder.subscribe("svc.a")
            await admin.flush()
            await responder.flush()
            await admin.publish("svc.a", b"q", reply_to="_INBOX.r.1")
            request = await responder_requests.next()
            await responder.publish(request.reply_to or "", b"first")
            await responder.publish(request.reply_to or "", b"second")
            with pytest.raises(PermissionDenied) as info:
                await responder.flush(raise_refused=True)
            assert info.value.details == {"subject": "_INBOX.r.1", "op": "publish"}
            assert (await replies.next()).payload == b"first"
            # A reply subject nobody sent it stays closed.
            await responder.publish("_INBOX.r.2", b"forged")
            with pytest.raises(PermissionDenied):
                await responder.flush(raise_refused=True)


async def test_allow_responses_max(nursery: trio.Nursery) -> None:
    auth = AuthConfig(
        users=(
            user("admin", "admin-pw"),
            user(
                "worker",
                "worker-pw",
                publish=rules(deny=(">",)),
                subscribe=rules(("jobs",)),
                allow_responses=ResponsesConfig(max=2, expires=60),
            ),
        )
    )
    server: Server = await nursery.start(Server(Config(port=0, auth=auth)).serve)
    with trio.fail_after(10):
        async with login(server, "admin") as admin, login(server, "worker") as worker:
            replies = admin.subscribe("done.>")
            jobs = worker.subscribe("jobs")
            await admin.flush()
            await worker.flush()
            await admin.publish("jobs", b"q", reply_to="done.1")
            job = await jobs.next()
            for index in range(2):  # exactly max
                await worker.publish(job.reply_to or "", b"%d" % index)
            await worker.flush(raise_refused=True)
            await worker.publish(job.reply_to or "", b"one past")
            with pytest.raises(PermissionDenied):
                await worker.flush(raise_refused=True)
            assert [(await replies.next()).payload for _ in range(2)] == [b"0", b"1"]


async def test_wildcard_subscription_overlapping_a_deny_never_gets_denied_subjects(
    server: Server,
) -> None:
    with trio.fail_after(10):
        async with login(server, "admin") as admin, login(server, "auditor") as auditor:
            await admin.publish("orders.audit", b"retained secret", retain=True)
            await admin.publish("orders.old", b"retained", retain=True)
            await admin.flush()
            everything = auditor.subscribe("orders.>")
            await auditor.flush(raise_refused=True)
            for subject in ("orders.audit", "orders.new", "orders.audit", "orders.eu"):
                await admin.publish(subject, subject.encode())
            await admin.flush()
            got = [(await everything.next()).subject for _ in range(3)]
            assert got == ["orders.old", "orders.new", "orders.eu"]
            # Straight at the denied subject, and outside the allow list: refused.
            for pattern in ("orders.audit", "billing.>", ">"):
                refused = auditor.subscribe(pattern)
                with pytest.raises(PermissionDenied):
                    await refused.next()
            # Read-only: it may publish nothing.
            await auditor.publish("orders.new", b"forged")
            with pytest.raises(PermissionDenied):
                await auditor.flush(raise_refused=True)


async def test_sys_is_not_subscribable_unless_allowed(server: Server) -> None:
    with trio.fail_after(5):
        async with login(server, "admin") as admin:
            sys_events = admin.subscribe("$SYS.>")
            with pytest.raises(PermissionDenied):
                await sys_events.next()
            await admin.flush()  # takes the refusal above
            everything = admin.subscribe(">")  # allowed: $SYS subjects are filtered out
            await admin.flush(raise_refused=True)
            await admin.publish("a", b"x")
            assert (await everything.next()).subject == "a"


# ---- TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> TestCertificates:
    return make_certificates(tmp_path_factory.mktemp("tls"), clients=("client", "alice"))


@asynccontextmanager
async def tls_server(certificates: TestCertificates, **config: Any) -> AsyncIterator[Server]:
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(
            Server(Config(port=0, hosts=("127.0.0.1",), **config)).serve
        )
        yield server
        nursery.cancel_scope.cancel()


async def test_tls_round_trip_and_plaintext_client_gets_a_clean_close(
    certificates: TestCertificates,
) -> None:
    with trio.fail_after(10):
        async with tls_server(certificates, tls=certificates.tls_config()) as server:
            assert server.url.startswith("tls://")
            plain = await connect(server.port)
            await plain.send(Hello({"version": 1}))
            with pytest.raises(Closed):
                await plain.next_event()  # no WELCOME, nothing readable as a frame: closed
            await plain.aclose()
            async with broker.connect(server.url, **certificates.client_options()) as client:
                sub = client.subscribe("t")
                await client.flush()
                await client.publish("t", b"over tls")
                assert (await sub.next()).payload == b"over tls"
            # A plain broker URL to a TLS port fails the handshake, not the server.
            with pytest.raises(broker.ConnectionClosed):
                async with broker.connect(server.url.replace("tls://", "tcp://")):
                    pass
            stats = server.statistics()
            assert stats.refused_connections >= 1 and stats.connections == 0


async def test_a_burst_over_tls_arrives_whole_and_in_order(
    certificates: TestCertificates,
) -> None:
    # Many TLS records per read: the reader takes every whole record one read brought.
    with trio.fail_after(20):
        async with tls_server(certificates, tls=certificates.tls_config()) as server:
            options = certificates.client_options()
            async with (
                broker.connect(server.url, **options) as publisher,
                broker.connect(server.url, **options) as subscriber,
            ):
                sub = subscriber.subscribe("burst")
                await subscriber.flush()
                for index in range(2000):
                    await publisher.publish("burst", index.to_bytes(4, "big") * 256)
                await publisher.flush()
                for index in range(2000):
                    assert (await sub.next()).payload == index.to_bytes(4, "big") * 256


async def test_verify_requires_a_certificate_from_the_ca(
    certificates: TestCertificates, tmp_path: Path
) -> None:
    import trustme

    other = trustme.CA().issue_cert("client", common_name="client")
    wrong_ca = tmp_path / "wrong-ca.pem"
    other.private_key_and_cert_chain_pem.write_to_path(str(wrong_ca))
    past = datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC)
    expired = certificates.ca.issue_cert(
        "client", not_before=past, not_after=past + datetime.timedelta(days=1)
    )
    expired_file = tmp_path / "expired.pem"
    expired.private_key_and_cert_chain_pem.write_to_path(str(expired_file))
    with trio.fail_after(15):
        async with tls_server(certificates, tls=certificates.tls_config(verify=True)) as server:
            for cert_file in (None, str(wrong_ca), str(expired_file)):
                options: dict[str, Any] = {"tls_ca_file": certificates.ca_file}
                if cert_file is not None:
                    options["tls_cert_file"] = cert_file
                with pytest.raises(broker.ConnectionClosed):
                    async with broker.connect(server.url, **options) as client:
                        await client.flush()  # TLS 1.3 reports a refused cert on first read
            async with broker.connect(server.url, **certificates.client_options("client")) as ok:
                await ok.flush()
            assert server.statistics().connections == 0


async def test_a_certificate_stands_for_its_user(certificates: TestCertificates) -> None:
    auth = AuthConfig(
        users=(UserConfig(user="alice", permissions=PermissionsConfig(publish=rules(("a.>",)))),)
    )
    tls = certificates.tls_config(verify=True)
    with trio.fail_after(10):
        async with tls_server(certificates, tls=tls, auth=auth) as server:
            async with broker.connect(server.url, **certificates.client_options("alice")) as a:
                await a.publish("a.b", b"x")
                await a.flush(raise_refused=True)
                await a.publish("b", b"x")
                with pytest.raises(PermissionDenied):
                    await a.flush(raise_refused=True)
            # The "client" certificate names no user: refused, with the same answer.
            with pytest.raises(AuthFailed):
                async with broker.connect(server.url, **certificates.client_options("client")):
                    pass


async def test_server_context_refuses_missing_files(tmp_path: Path) -> None:
    from broker.config import ConfigError, TlsConfig
    from broker.server.tls import server_context

    with pytest.raises(ConfigError, match=r"tls\.cert_file .*cannot load the certificate"):
        server_context(TlsConfig(cert_file=str(tmp_path / "x"), key_file=str(tmp_path / "y")))


def test_client_tls_options_are_checked() -> None:
    with pytest.raises(ValueError, match="tls_key_file needs tls_cert_file"):
        broker.connect("tls://127.0.0.1:1", tls_key_file="k.pem")
    with pytest.raises(ValueError, match=r"either an ssl\.SSLContext"):
        broker.connect("127.0.0.1:1", tls=ssl.create_default_context(), tls_ca_file="ca.pem")
    with pytest.raises(ValueError, match="inbox_prefix must be a subject"):
        broker.connect("127.0.0.1:1", inbox_prefix="_INBOX.>")
