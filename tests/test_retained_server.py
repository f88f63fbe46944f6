"""Retained messages over real sockets: replay before live, deletes, bounds, and the clients."""

from __future__ import annotations

import pytest
import trio
from wire import StartServer, bystanders, wait_until, wire_client

import broker
from broker import sync
from broker.errors import BrokerError, RetainedLimitExceeded
from broker.protocol import Err, ErrorCode, Msg, Pub, Sub, Unsub, encode_frame
from broker.retained import CHILDREN_COST, ENTRY_COST, NODE_COST
from broker.testing import BrokerThread, faults, running_broker


async def test_a_new_subscription_gets_retained_messages_then_live_ones(
    start_server: StartServer,
) -> None:
    with trio.fail_after(5):
        server = await start_server()
        async with wire_client(server.port) as pub, wire_client(server.port) as sub:
            await pub.send(
                Pub("room.1.temp", b"20", None, {"unit": "C"}, True),
                Pub("room.2.temp", b"21", retain=True),
                Pub("room.2.temp", b"22", retain=True),  # replaces 21
                Pub("room.3.temp", b"not kept"),  # plain publishes are not retained
                Pub("hall.temp", b"19", retain=True),
            )
            await pub.flush()
            await sub.send(Sub(1, "room.*.temp"))
            assert await sub.drain() == [
                Msg(1, "room.1.temp", b"20", None, {"unit": "C"}, True),
                Msg(1, "room.2.temp", b"22", retained=True),
            ]
            await pub.send(Pub("room.1.temp", b"23", retain=True))
            await pub.flush()
            assert await sub.drain() == [Msg(1, "room.1.temp", b"23")]  # live: flag clear
            await sub.send(Sub(2, "room.1.temp"), Sub(3, ">"))
            assert await sub.drain() == [
                Msg(2, "room.1.temp", b"23", retained=True),
                Msg(3, "hall.temp", b"19", retained=True),
                Msg(3, "room.1.temp", b"23", retained=True),
                Msg(3, "room.2.temp", b"22", retained=True),
            ]
        stats = server.statistics()
        assert (stats.retained_subjects, stats.messages_in) == (3, 6)
        entries = sum(
            kept.size + ENTRY_COST + len(subject)
            for subject, kept in server.hub.retained.matching(">")
        )
        # The trie: room, 1, temp, 2, temp, hall, temp; the root, room, 1, 2, hall have children.
        assert stats.retained_bytes == entries + 7 * NODE_COST + 5 * CHILDREN_COST


async def test_an_empty_retained_payload_deletes_and_is_delivered_live(
    start_server: StartServer,
) -> None:
    with trio.fail_after(5):
        server = await start_server()
        async with wire_client(server.port) as pub, wire_client(server.port) as sub:
            await pub.send(Pub("kv.a", b"1", retain=True), Pub("kv.b", b"2", retain=True))
            await pub.flush()
            await sub.send(Sub(1, "kv.>"))
            assert len(await sub.drain()) == 2
            await pub.send(Pub("kv.a", b"", retain=True))
            await pub.flush()
            assert await sub.drain() == [Msg(1, "kv.a", b"")]
            await sub.send(Sub(2, "kv.>"))
            assert await sub.drain() == [Msg(2, "kv.b", b"2", retained=True)]
            await pub.send(Pub("kv.never", b"", retain=True))  # deleting nothing is fine
            assert await pub.drain() == []
        assert server.statistics().retained_subjects == 1


async def test_retained_then_live_with_no_gap_and_no_duplicate_under_load(
    start_server: StartServer,
) -> None:
    """A publisher counts up on one retained subject while subscribers join one by one: each
    sees the value current at its SUB (flagged retained), then every later value, once each."""
    with trio.fail_after(10):
        server = await start_server()
        total, step = 3000, 300
        async with wire_client(server.port) as pub, wire_client(server.port) as sub:
            await sub.send(Sub(0, "counter"))
            await sub.flush()
            send_progress, progress = trio.open_memory_channel[int](total // step)
            async with trio.open_nursery() as nursery:

                async def publish() -> None:
                    async with send_progress:
                        for n in range(1, total + 1):
                            await pub.send(Pub("counter", b"%d" % n, retain=True))
                            if n % step == 0:
                                send_progress.send_nowait(n)
                                await trio.sleep(0)

                nursery.start_soon(publish)
                sid = 0
                async for _ in progress:
                    sid += 1  # joins while the publisher is mid-run
                    await sub.send(Sub(sid, "counter"))
            await pub.flush()
            await sub.send(Sub(99, "counter"))
            seen: dict[int, list[tuple[int, bool]]] = {}
            for event in await sub.drain():
                assert type(event) is Msg, event
                seen.setdefault(event.sid, []).append((int(event.payload), event.retained))
        assert seen.pop(0) == [(n, False) for n in range(1, total + 1)]
        assert seen.pop(99) == [(total, True)]
        assert len(seen) == total // step
        for sid, values in seen.items():
            numbers = [n for n, _ in values]
            assert numbers == list(range(numbers[0], total + 1)), f"sid {sid}: gap or repeat"
            assert values[0][1], f"sid {sid}: a value was current when it joined"
            assert not any(retained for _, retained in values[1:]), f"sid {sid}: replay after live"


async def test_a_client_that_did_not_ask_for_the_flag_gets_replays_as_plain_msgs(
    start_server: StartServer,
) -> None:
    # Older clients parse MSG with at most 6 elements: the flag is sent only to those that say
    # in HELLO that they take it.
    with trio.fail_after(5):
        server = await start_server()
        async with wire_client(server.port) as pub, wire_client(server.port, retained=False) as old:
            await pub.send(Pub("cfg.a", b"1", None, {"h": "v"}, True))
            await pub.flush()
            await old.send(Sub(1, "cfg.*"))
            assert await old.drain() == [Msg(1, "cfg.a", b"1", None, {"h": "v"})]


async def test_a_retained_request_is_replayed_without_its_reply_subject(
    start_server: StartServer,
) -> None:
    with trio.fail_after(5):
        server = await start_server()
        async with wire_client(server.port) as pub, wire_client(server.port) as sub:
            await sub.send(Sub(1, "jobs.next"))
            await sub.flush()
            await pub.send(Pub("jobs.next", b"do it", "inbox.1", None, True))
            await pub.flush()
            assert await sub.drain() == [Msg(1, "jobs.next", b"do it", "inbox.1")]  # live: kept
            await sub.send(Sub(2, "jobs.next"))
            assert await sub.drain() == [Msg(2, "jobs.next", b"do it", retained=True)]


async def test_queue_group_members_get_no_replay(start_server: StartServer) -> None:
    with trio.fail_after(5):
        server = await start_server()
        async with wire_client(server.port) as pub, wire_client(server.port) as worker:
            await pub.send(Pub("jobs.config", b"v1", retain=True))
            await pub.flush()
            await worker.send(Sub(1, "jobs.*", "workers"))
            assert await worker.drain() == []
            await pub.send(Pub("jobs.config", b"v2", retain=True))
            await pub.flush()
            assert await worker.drain() == [Msg(1, "jobs.config", b"v2")]


async def test_replays_count_towards_unsub_max_msgs(start_server: StartServer) -> None:
    with trio.fail_after(5):
        server = await start_server()
        async with wire_client(server.port) as pub, wire_client(server.port) as sub:
            await pub.send(*(Pub(f"k.{n}", b"v", retain=True) for n in range(5)))
            await pub.flush()
            # The whole replay is queued at SUB; an UNSUB(2) that follows finds 5 delivered,
            # more than 2, and ends the subscription at once: no live message follows.
            await sub.send(Sub(1, "k.*"), Unsub(1, 2))
            events = await sub.drain()
            assert [e.subject for e in events if type(e) is Msg] == [f"k.{n}" for n in range(5)]
            assert server.statistics().subscriptions == 0


async def test_max_msgs_counts_replays_then_live_ones(start_server: StartServer) -> None:
    with trio.fail_after(5):
        server = await start_server()
        async with wire_client(server.port) as pub, wire_client(server.port) as sub:
            await pub.send(*(Pub(f"k.{n}", b"v", retain=True) for n in range(5)))
            await pub.flush()
            await sub.send(Sub(1, "k.*"))
            await sub.send(Unsub(1, 7))
            assert len([e for e in await sub.drain() if type(e) is Msg]) == 5
            await pub.send(Pub("k.9", b"live"), Pub("k.9", b"live"), Pub("k.9", b"past"))
            await pub.flush()
            assert [e.payload for e in await sub.drain()] == [b"live", b"live"]


async def test_subject_bound_exactly_at_the_limit_and_one_past(start_server: StartServer) -> None:
    with trio.fail_after(5):
        server = await start_server(max_retained_subjects=2)
        async with (
            bystanders(server.port) as pair,
            wire_client(server.port) as pub,
            wire_client(server.port) as sub,
        ):
            await sub.send(Sub(1, "s.*"))
            await sub.flush()
            await pub.send(Pub("s.1", b"a", retain=True), Pub("s.2", b"b", retain=True))
            assert await pub.drain() == []
            await pub.send(Pub("s.3", b"c", retain=True))
            (err,) = await pub.drain()
            assert type(err) is Err and err.code == ErrorCode.RETAINED_LIMIT
            assert err.details == {"subject": "s.3"}
            assert "max_retained_subjects" in err.message
            assert not err.fatal
            # Refused means not delivered either; replacing and plain publishing still work.
            await pub.send(Pub("s.2", b"b2", retain=True), Pub("s.3", b"plain"))
            assert await pub.drain() == []
            assert [e.payload for e in await sub.drain()] == [b"a", b"b", b"b2", b"plain"]
            await pair.check()
        stats = server.statistics()
        assert (stats.retained_subjects, stats.protocol_errors) == (2, 0)


async def test_byte_bound_exactly_at_the_limit_and_one_past(start_server: StartServer) -> None:
    with trio.fail_after(5):
        # An entry weighs its encoded replay tail (subject "b" + 100-byte payload + nils and
        # flag) plus the store's own structure: a trie node, the entry, the subject string,
        # and once for the store the root's children.
        tail = 1 + 1 + 2 + 100 + 3
        weight = tail + NODE_COST + ENTRY_COST + len("b")
        limit = 2 * weight + CHILDREN_COST
        server = await start_server(max_retained_bytes=limit)
        async with wire_client(server.port) as pub:
            await pub.send(Pub("a", b"x" * 100, retain=True), Pub("b", b"y" * 100, retain=True))
            assert await pub.drain() == []
            assert server.statistics().retained_bytes == limit
            await pub.send(Pub("a", b"x" * 101, retain=True))
            (err,) = await pub.drain()
            assert err == Err(
                "retained_limit",
                f"retaining {tail + 1} bytes on 'a' would hold {limit + 1} bytes with the "
                f"store's own structure, more than max_retained_bytes ({limit})",
                {"subject": "a"},
            )
            assert server.hub.retained.get("a") is not None
            assert server.statistics().retained_bytes == limit
            await pub.send(Pub("c", b"z", retain=True))  # a new subject, one past too
            (err,) = await pub.drain()
            assert type(err) is Err and err.details == {"subject": "c"}


async def test_retention_off_refuses_every_retained_publish(start_server: StartServer) -> None:
    with trio.fail_after(5):
        server = await start_server(max_retained_subjects=0)
        async with wire_client(server.port) as pub:
            assert pub.info["max_retained_subjects"] == 0
            await pub.send(Pub("a", b"x", retain=True))
            (err,) = await pub.drain()
            assert type(err) is Err and err.code == "retained_limit"


@pytest.mark.parametrize("policy", ["disconnect", "drop_newest", "drop_oldest"])
async def test_a_replay_larger_than_the_pending_bounds_is_not_a_slow_consumer(
    start_server: StartServer, policy: str
) -> None:
    # The replay is the store's content, bounded by [retained]; counting it against the
    # outbox bounds would cut off (or drop for) a client that only subscribed to a wide pattern.
    with trio.fail_after(5):
        server = await start_server(
            max_pending_messages=3, max_pending_bytes=1024, slow_consumer_policy=policy
        )
        async with wire_client(server.port) as pub, wire_client(server.port) as sub:
            await pub.send(*(Pub(f"k.{n:02}", b"v" * 100, retain=True) for n in range(40)))
            await pub.flush()
            await sub.send(Sub(1, "k.*"))
            events = await sub.drain()
            assert [e.subject for e in events] == [f"k.{n:02}" for n in range(40)]
            await pub.send(Pub("k.live", b"x"))
            await pub.flush()
            assert await sub.drain() == [Msg(1, "k.live", b"x")]
        stats = server.statistics()
        assert (stats.slow_consumers, stats.dropped_messages) == (0, 0)


async def test_sub_after_a_pending_replay_waits_and_order_is_kept(
    start_server: StartServer,
) -> None:
    """Many wide SUBs in one write are replayed one at a time (at most one replay beyond the
    bounds), and what the client sent after them is processed after them, in order."""
    with trio.fail_after(5):
        # Room for the 30 live messages at the end, not for the 300 replayed ones.
        server = await start_server(max_pending_messages=40)
        async with wire_client(server.port) as pub, wire_client(server.port) as sub:
            await pub.send(*(Pub(f"k.{n}", b"v", retain=True) for n in range(10)))
            await pub.flush()
            await sub.send(*(Sub(sid, "k.>") for sid in range(1, 31)), Pub("k.own", b"mine"))
            events = await sub.drain()
            replays = [(e.sid, e.subject) for e in events if type(e) is Msg and e.retained]
            assert replays == [(sid, f"k.{n}") for sid in range(1, 31) for n in range(10)]
            live = [(e.sid, e.payload) for e in events if type(e) is Msg and not e.retained]
            assert live == [(sid, b"mine") for sid in range(1, 31)]
            assert events[-30:] == [Msg(sid, "k.own", b"mine") for sid in range(1, 31)]
        assert server.statistics().slow_consumers == 0


async def test_drop_oldest_discards_live_messages_never_replayed_ones(
    start_server: StartServer,
) -> None:
    with trio.fail_after(5):
        server = await start_server(max_pending_messages=2, slow_consumer_policy="drop_oldest")
        async with (
            wire_client(server.port) as pub,
            wire_client(server.port, name="stalled") as sub,
        ):
            await pub.send(*(Pub(f"k.{n}", b"old", retain=True) for n in range(3)))
            await pub.flush()
            assert faults.stall_client(server, "stalled") == 1
            await sub.send(Sub(1, "k.*"))
            await wait_until(lambda: server.hub.table.match("k.0").plain != [])
            await pub.send(*(Pub("k.9", b"%d" % n) for n in range(5)))
            await pub.flush()
            faults.resume_client(server, "stalled")
            events = await sub.drain() + await sub.drain()
            msgs = [(e.subject, e.payload, e.retained) for e in events if type(e) is Msg]
            assert msgs == [
                ("k.0", b"old", True),
                ("k.1", b"old", True),
                ("k.2", b"old", True),
                ("k.9", b"3", False),
                ("k.9", b"4", False),
            ]
            [report] = [e for e in events if type(e) is Err]
            assert report.details == {"dropped": 3, "total": 3, "sids": [[1, 3]]}


async def test_async_client_retains_and_sees_the_flag(start_server: StartServer) -> None:
    with trio.fail_after(5):
        server = await start_server(max_retained_subjects=1)
        errors: list[BrokerError] = []
        async with broker.connect(server.url, on_error=errors.append) as client:
            await client.publish("cfg.mode", b"fast", retain=True, headers={"by": "test"})
            await client.flush()
            async with client.subscribe("cfg.>") as sub:
                replay = await sub.next()
                assert (replay.subject, replay.payload, replay.retained) == (
                    "cfg.mode",
                    b"fast",
                    True,
                )
                assert dict(replay.headers) == {"by": "test"}
                await client.publish("cfg.mode", b"slow", retain=True)
                live = await sub.next()
                assert (live.payload, live.retained) == (b"slow", False)
                client.publish_nowait("cfg.other", b"x", retain=True)
                client.publish_nowait("cfg.mode", b"kept", retain=True)  # a replacement fits
                await client.flush()  # by default a flush does not raise refusals
                client.publish_nowait("cfg.other", b"x", retain=True)
                with pytest.raises(RetainedLimitExceeded) as refused:
                    await client.flush(raise_refused=True)  # the refusal comes with the flush
                assert refused.value.details == {"subject": "cfg.other"}
                assert (await sub.next()).payload == b"kept"
                await client.flush(raise_refused=True)  # raised once, not again
                while not errors:
                    await trio.sleep(0.001)
            assert type(errors[0]) is RetainedLimitExceeded  # on_error hears of it as well
            assert errors[0].details == {"subject": "cfg.other"}


def test_sync_flush_raises_a_refused_retained_publish() -> None:
    with BrokerThread(max_retained_subjects=1) as thread, sync.connect(thread.url) as client:
        client.publish("a", b"1", retain=True)
        client.publish("b", b"2", retain=True)
        with pytest.raises(RetainedLimitExceeded, match="max_retained_subjects"):
            client.flush(raise_refused=True)
        client.flush(raise_refused=True)


def test_sync_client_retains_and_sees_the_flag(broker_thread: BrokerThread) -> None:
    with sync.connect(broker_thread.url) as client:
        client.publish("kv.colour", b"blue", retain=True)
        client.flush()
        with client.subscribe("kv.*") as sub:
            replay = sub.next(timeout=5)
            assert (replay.payload, replay.retained) == (b"blue", True)
            client.publish("kv.colour", b"", retain=True)
            deleted = sub.next(timeout=5)
            assert (deleted.payload, deleted.retained) == (b"", False)
        with client.subscribe("kv.*") as again:
            client.flush()
            assert again.pending == 0


async def test_a_reconnected_client_is_replayed_what_changed_while_it_was_away() -> None:
    back = trio.Event()
    with trio.fail_after(5):
        async with (
            running_broker() as handle,
            handle.connect(name="writer") as writer,
            handle.connect(name="watcher", on_reconnected=back.set) as watcher,
            watcher.subscribe("kv.>") as sub,
        ):
            await writer.publish("kv.a", b"1", retain=True)
            assert (await sub.next()).payload == b"1"
            assert handle.drop_client("watcher") == 1
            await writer.publish("kv.a", b"2", retain=True)  # while the watcher is away
            await back.wait()
            replay = await sub.next()
            assert (replay.subject, replay.payload, replay.retained) == ("kv.a", b"2", True)


async def test_clients_refuse_retain_at_once_when_the_server_retains_nothing(
    start_server: StartServer,
) -> None:
    with trio.fail_after(5):
        server = await start_server(max_retained_subjects=0)
        async with broker.connect(server.url) as client:
            with pytest.raises(RetainedLimitExceeded, match="max_retained_subjects is 0"):
                await client.publish("cfg.a", b"x", retain=True)
            with pytest.raises(RetainedLimitExceeded):
                client.publish_nowait("cfg.a", b"x", retain=True)
            await client.publish("cfg.a", b"", retain=True)  # deleting is harmless
            await client.publish("cfg.a", b"x")  # and plain publishing unaffected
            await client.flush()

        def sync_side() -> None:
            with sync.connect(server.url) as threaded:
                with pytest.raises(RetainedLimitExceeded, match="max_retained_subjects is 0"):
                    threaded.publish("cfg.a", b"x", retain=True)
                threaded.publish("cfg.a", b"", retain=True)
                threaded.flush()

        await trio.to_thread.run_sync(sync_side)
        assert server.statistics().protocol_errors == 0


async def test_echo_false_still_gets_replays_of_its_own_retained_messages(
    start_server: StartServer,
) -> None:
    # A retained value belongs to its subject, not to its publisher.
    with trio.fail_after(5):
        server = await start_server()
        async with wire_client(server.port, echo=False) as client:
            await client.send(Pub("own.value", b"1", retain=True))
            await client.flush()
            await client.send(Sub(1, "own.*"))
            assert await client.drain() == [Msg(1, "own.value", b"1", retained=True)]
            await client.send(Pub("own.value", b"2", retain=True))
            assert await client.drain() == []  # live: no echo


async def test_a_retained_publish_to_a_reserved_subject_is_refused(
    start_server: StartServer,
) -> None:
    with trio.fail_after(5):
        server = await start_server()
        async with wire_client(server.port) as client:
            await client.send(Pub("$SYS.x", b"1", retain=True))
            (err,) = await client.drain()
            assert type(err) is Err and err.code == ErrorCode.BAD_SUBJECT
        assert server.statistics().retained_subjects == 0


async def test_a_subscriber_reading_late_survives_a_replay_larger_than_its_bounds(
    start_server: StartServer,
) -> None:
    # The replay in flight must not count against max_pending_bytes: a subscriber still busy
    # reading 600 KB of replay is not a slow consumer for the next two small live messages.
    with trio.fail_after(10):
        server = await start_server(max_pending_bytes=64 * 1024)
        async with wire_client(server.port, name="pub") as pub:
            await pub.send(*(Pub(f"r.{i}", b"r" * 60_000, None, None, True) for i in range(10)))
            await pub.flush()
            async with wire_client(server.port, name="sub", rcvbuf=16 * 1024) as sub:
                await sub.send(Sub(1, "live"), Sub(2, "r.>"))
                await wait_until(lambda: server.statistics().messages_out >= 10)
                [session] = faults.connections(server, "sub")
                await wait_until(lambda: session.outbox.replaying == 0)  # taken, not yet read
                await pub.send(Pub("live", b"1"), Pub("live", b"2"))
                await pub.flush()
                events = await sub.drain()
                assert [e.payload for e in events if type(e) is Msg and e.sid == 1] == [
                    b"1",
                    b"2",
                ]
                assert [e for e in events if type(e) is Err] == []
                assert sum(1 for e in events if type(e) is Msg and e.sid == 2) == 10
        assert server.statistics().slow_consumers == 0


async def test_a_client_that_writes_much_before_reading_is_not_held_by_its_own_replay(
    start_server: StartServer,
) -> None:
    # SUB with a 4 MB replay, another SUB (deferred behind it), then 30 MB of PUBs, all before
    # reading anything. The deferred SUB must go ahead once the replay is taken, not once it
    # is sent, or both sides block on full sockets until write_timeout cuts the client off.
    with trio.fail_after(20):
        server = await start_server(write_timeout=2.0)
        async with wire_client(server.port, name="pub") as pub:
            for i in range(40):
                await pub.send(Pub(f"r.{i}", b"r" * 100_000, None, None, True))
            await pub.flush()
        async with wire_client(server.port, name="sub", rcvbuf=64 * 1024) as sub:
            burst = encode_frame(Sub(1, "r.>")) + encode_frame(Sub(2, "r.0"))
            burst += encode_frame(Pub("other", b"p" * 60_000)) * 500
            await sub.send_raw(burst)
            events = await sub.drain()
            assert sum(1 for e in events if type(e) is Msg and e.sid == 1) == 40
            assert sum(1 for e in events if type(e) is Msg and e.sid == 2) == 1
        assert server.statistics().slow_consumers == 0
