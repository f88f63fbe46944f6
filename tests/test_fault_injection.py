"""The server's fault-injection hooks that broker.testing builds on: drop and stall a client."""

from __future__ import annotations

import pytest
import trio
from wire import StartServer, bystanders, wire_client

from broker.protocol import Err, Msg, Pub, Sub
from broker.testing import faults


async def test_drop_client_cuts_only_that_client_without_an_err(
    start_server: StartServer,
) -> None:
    with trio.fail_after(5):
        server = await start_server()
        async with (
            bystanders(server.port) as pair,
            wire_client(server.port, name="victim") as victim,
            wire_client(server.port, name="other") as other,
        ):
            await victim.send(Sub(1, "x"))
            await victim.flush()
            assert faults.drop_client(server, "victim") == 1
            assert await victim.closed() == []  # no ERR: it looks like a network failure
            assert [t.adapter.name for t in faults.connections(server)] == [
                "bystander-sub",
                "bystander-pub",
                "other",
            ]
            assert server.statistics().subscriptions == 1  # only the bystander's remains
            with pytest.raises(LookupError, match="no live client named 'nobody'"):
                faults.drop_client(server, "nobody")
            await other.flush()
            await pair.check()


async def test_stalled_client_becomes_a_slow_consumer_and_others_carry_on(
    start_server: StartServer,
) -> None:
    with trio.fail_after(5):
        server = await start_server(max_pending_messages=10)
        async with (
            bystanders(server.port) as pair,
            wire_client(server.port, name="stuck") as stuck,
            wire_client(server.port, name="healthy") as healthy,
            wire_client(server.port, name="pub") as pub,
        ):
            for client in (stuck, healthy):
                await client.send(Sub(1, "work"))
                await client.flush()
            assert faults.stall_client(server, "stuck") == 1
            # One at a time: a single read's publishes are all routed before any writer runs,
            # so a burst of 11 would overflow a 10-message bound for the healthy client too.
            for i in range(11):
                await pub.send(Pub("work", b"%d" % i))
                await pub.flush()
            # The eleventh message overflows the stalled outbox: disconnect policy applies.
            events = await stuck.closed()
            assert events[-1] == Err(
                "slow_consumer",
                events[-1].message,  # type: ignore[union-attr]
            )
            assert [e.payload for e in await healthy.drain() if isinstance(e, Msg)] == [
                b"%d" % i for i in range(11)
            ]
            assert server.statistics().slow_consumers == 1
            await pair.check()


async def test_resume_delivers_what_was_queued_while_stalled(start_server: StartServer) -> None:
    with trio.fail_after(5):
        server = await start_server()
        async with (
            wire_client(server.port, name="sleepy") as sleepy,
            wire_client(server.port, name="pub") as pub,
        ):
            await sleepy.send(Sub(1, "news"))
            await sleepy.flush()
            faults.stall_client(server, "sleepy")
            await pub.send(Pub("news", b"a"), Pub("news", b"b"))
            await pub.flush()
            with trio.move_on_after(0.2):
                event = await sleepy.next_event()
                raise AssertionError(f"a stalled client received {event!r}")
            assert faults.resume_client(server, "sleepy") == 1
            assert [e.payload for e in await sleepy.drain() if isinstance(e, Msg)] == [b"a", b"b"]


async def test_a_name_no_client_has_is_refused_with_the_names_there_are(
    start_server: StartServer,
) -> None:
    with trio.fail_after(5):
        server = await start_server()
        assert faults.resume_client(server, None) == 0  # every one of none: nothing to refuse
        async with (
            bystanders(server.port) as pair,
            wire_client(server.port, name="orders-svc") as svc,
        ):
            await svc.flush()
            expected = (
                r"no live client named 'order-svc' \(live clients: 'bystander-sub', "
                r"'bystander-pub', 'orders-svc'\); .*wait_for_client"
            )
            for fault in (faults.drop_client, faults.stall_client, faults.resume_client):
                with pytest.raises(LookupError, match=expected):
                    fault(server, "order-svc")
            assert faults.stall_client(server, "orders-svc") == 1
            assert faults.resume_client(server, "orders-svc") == 1
            assert faults.drop_client(server, "orders-svc") == 1
            # Cut, and not back: a second drop finds nothing to cut, and says so.
            with pytest.raises(LookupError, match="no live client named 'orders-svc'"):
                faults.drop_client(server, "orders-svc")
            assert await svc.closed() == []
            await pair.check()
