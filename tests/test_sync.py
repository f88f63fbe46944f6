"""The thread-backed client (`broker.sync`) against a real broker, from plain threads.

The broker runs in a background thread with its own Trio loop; the tests are plain functions
(pytest-trio's trio_mode only takes ``async def`` tests), and each client runs its own loop in
a thread of its own, as in a program with no async code at all.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import sync
from broker.errors import (
    BadSubject,
    ConnectionClosed,
    NoResponders,
    PayloadTooLarge,
    ReconnectBufferFull,
    ServerShuttingDown,
    SubscriptionClosed,
)
from broker.protocol import Pub, encode_frame
from broker.stats import Statistics
from broker.testing import BrokerThread

pytestmark = pytest.mark.timeout(15)

ROOT = Path(__file__).resolve().parent.parent
#: Bound on every wait in these tests, in seconds.
WAIT = 5.0
FAST: dict[str, Any] = {"reconnect_delay": 0.01, "max_reconnect_delay": 0.05}


def wait_for(broker: BrokerThread, condition: Callable[[Statistics], bool]) -> Statistics:
    """Poll the broker's statistics until `condition` holds, bounded by WAIT."""
    deadline = time.monotonic() + WAIT
    while not condition(stats := broker.statistics()):
        assert time.monotonic() < deadline, f"condition never held: {stats}"
        time.sleep(0.005)
    return stats


@pytest.fixture
def client(broker_thread: BrokerThread) -> Iterator[sync.SyncClient]:
    with sync.connect(broker_thread.url, name="test") as client:
        yield client


@contextlib.contextmanager
def running(target: Callable[[], None]) -> Iterator[threading.Thread]:
    """Run `target` in a thread; re-raise its failure, and require it to end, on exit."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        thread.join(WAIT)
    assert not thread.is_alive(), "the thread did not finish"
    if failures:
        raise failures[0]


def test_publish_subscribe(client: sync.SyncClient) -> None:
    assert client.is_connected
    assert client.server_info["max_payload"] == 1024 * 1024
    with client.subscribe("orders.*") as one, client.subscribe("orders.>") as rest:
        client.publish("orders.created", b"one", headers={"k": "v"})
        client.publish("orders.eu.created", bytearray(b"two"))
        client.flush()
        assert (one.pending, rest.pending) == (1, 2)
        msg = one.next(timeout=WAIT)
        assert (msg.subject, msg.payload, dict(msg.headers), msg.reply_to) == (
            "orders.created",
            b"one",
            {"k": "v"},
            None,
        )
        assert [rest.next(timeout=WAIT).payload for _ in range(2)] == [b"one", b"two"]
        assert one.received == 1 and one.dropped == 0 and one.active
    assert not one.active


def test_next_times_out(client: sync.SyncClient) -> None:
    sub = client.subscribe("quiet")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no message on 'quiet' within 0\.1 s"):
        sub.next(timeout=0.1)
    assert 0.1 <= time.monotonic() - started < WAIT
    with pytest.raises(TimeoutError):
        sub.next(timeout=0)
    with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
        sub.next(timeout=-1)


def test_iterator_ends_on_unsubscribe_and_on_close(broker_thread: BrokerThread) -> None:
    client = sync.connect(broker_thread.url)
    first, second = client.subscribe("a"), client.subscribe("b")
    seen: list[bytes] = []
    got_one = threading.Event()

    def consume(sub: sync.SyncSubscription) -> Callable[[], None]:
        def run() -> None:
            for msg in sub:
                seen.append(msg.payload)
                got_one.set()

        return run

    with running(consume(first)) as one, running(consume(second)) as two:
        client.publish("a", b"x")
        assert got_one.wait(WAIT)
        first.unsubscribe()
        one.join(WAIT)
        assert not one.is_alive()
        client.close()
        two.join(WAIT)
    assert seen == [b"x"]
    with pytest.raises(SubscriptionClosed):
        second.next(timeout=0)


def test_request_reply_with_a_responder_thread(
    broker_thread: BrokerThread, client: sync.SyncClient
) -> None:
    service = sync.connect(broker_thread.url, name="service")
    requests = service.subscribe("time.now")

    def respond() -> None:
        for msg in requests:
            msg.respond(b"noon:" + msg.payload, headers={"served-by": "test"})

    with running(respond):
        service.flush()
        replies: dict[int, bytes] = {}

        def ask(n: int) -> Callable[[], None]:
            def run() -> None:
                for k in range(10):
                    replies[n * 100 + k] = client.request("time.now", b"%d" % (n * 100 + k)).payload

            return run

        with running(ask(1)), running(ask(2)), running(ask(3)):
            pass
        assert replies == {key: b"noon:%d" % key for key in replies} and len(replies) == 30
        reply = client.request("time.now", b"x", headers={"h": "1"})
        assert reply.headers["served-by"] == "test"
        service.close()


def test_replies_leave_no_subject_in_the_publish_encoders_memo(
    broker_thread: BrokerThread, client: sync.SyncClient
) -> None:
    # Each reply goes to a subject used once (the requester's inbox and a token): keeping its
    # encoded prefix, as for a publish, would only churn the memo.
    with sync.connect(broker_thread.url, name="service") as service:
        requests = service.subscribe("echo")

        def respond() -> None:
            for msg in requests:
                msg.respond(msg.payload)

        with running(respond):
            service.flush()
            assert [client.request("echo", b"%d" % n).payload for n in range(5)] == [
                b"%d" % n for n in range(5)
            ]
            service.publish("news", b"")  # a publish's subject is kept
            service.flush()
            assert list(service._encoder._pub_prefixes) == ["news"]
            requests.unsubscribe()


def test_no_responders_is_immediate(client: sync.SyncClient) -> None:
    started = time.monotonic()
    with pytest.raises(NoResponders):
        client.request("nobody.home", b"", timeout=WAIT)
    assert time.monotonic() - started < 1.0


def test_request_timeout(client: sync.SyncClient) -> None:
    silent = client.subscribe("slow.service")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no reply to a request on 'slow\.service'"):
        client.request("slow.service", b"", timeout=0.2)
    assert 0.2 <= time.monotonic() - started < WAIT
    assert silent.next(timeout=WAIT).reply_to is not None
    # The client is still fine after a timeout.
    silent.unsubscribe()
    with pytest.raises(NoResponders):
        client.request("slow.service", b"")


def test_respond_needs_a_reply_subject(client: sync.SyncClient) -> None:
    sub = client.subscribe("plain")
    client.publish("plain", b"")
    with pytest.raises(ValueError, match="no reply_to"):
        sub.next(timeout=WAIT).respond(b"")


def test_many_threads_publish_at_once(broker_thread: BrokerThread, client: sync.SyncClient) -> None:
    threads, per_thread = 8, 500
    with sync.connect(broker_thread.url, name="receiver") as receiver:
        sub = receiver.subscribe("load.*")
        receiver.flush()
        barrier = threading.Barrier(threads)

        def publisher(n: int) -> Callable[[], None]:
            def run() -> None:
                barrier.wait(WAIT)
                for k in range(per_thread):
                    client.publish(f"load.{n}", b"%d" % k)

            return run

        with contextlib.ExitStack() as stack:
            for n in range(threads):
                stack.enter_context(running(publisher(n)))
        client.flush()
        received: dict[str, list[int]] = {}
        for _ in range(threads * per_thread):
            msg = sub.next(timeout=WAIT)
            received.setdefault(msg.subject, []).append(int(msg.payload))
        # Exactly once, and in order per publishing thread.
        assert received == {f"load.{n}": list(range(per_thread)) for n in range(threads)}
        receiver.flush()
        assert sub.pending == 0 and sub.dropped == 0


def test_batches_of_publishes_keep_the_write_buffer_bound(
    broker_thread: BrokerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client's thread joins a batch of encoded publishes into few appends; each still
    # waits while more than write_buffer_size bytes are queued, as `publish` does.
    from broker.client.client import Client

    limit, frame = 300, len(encode_frame(Pub("bound", b"%04d" % 0)))
    peaks: list[int] = []
    append = Client._append_pub

    def watched(self: Client, data: bytes) -> None:
        waited = not self._must_wait()  # `publish` appends only below the bound
        append(self, data)
        peaks.append(self._pending_bytes if waited else -1)

    monkeypatch.setattr(Client, "_append_pub", watched)
    with (
        sync.connect(broker_thread.url, name="receiver") as receiver,
        sync.connect(broker_thread.url, write_buffer_size=limit) as client,
    ):
        sub = receiver.subscribe("bound")
        receiver.flush()
        for k in range(3000):
            client.publish("bound", b"%04d" % k)
        client.flush()
        got = [int(sub.next(timeout=WAIT).payload) for _ in range(3000)]
    assert got == list(range(3000))
    assert -1 not in peaks and max(peaks) <= limit + frame
    assert len(peaks) < 3000  # joined: fewer appends than publishes


def test_the_outbox_joins_frames_in_call_order_into_bounded_chunks() -> None:
    # Callers hand the client's thread bytes, not their own objects; a publish that could not be
    # encoded keeps its place between the chunks around it.
    outbox, wakes = sync._Outbox(1 << 30), []
    frame = encode_frame(Pub("chunk", b"x" * 100))
    fit = sync._CHUNK_BYTES // len(frame)  # frames that fit under the threshold
    for _ in range(fit):
        outbox.put(frame, 100, lambda: wakes.append(1))
    fields = ("big", b"y" * 7, None, None, False)
    outbox.put(fields, 7, lambda: wakes.append(1))
    outbox.put(frame, 100, lambda: wakes.append(1))
    batch, size, longest = outbox.take()
    assert len(wakes) == 1  # one wake-up for the whole burst
    assert list(batch) == [bytearray(frame * fit), fields, bytearray(frame)]
    assert (size, longest) == (100 * (fit + 1) + 7, len(frame))
    assert outbox.empty and outbox.take()[1:] == (size, 0)  # nothing new; size until `sent`
    outbox.sent(size)

    # A chunk takes frames while it is shorter than _CHUNK_BYTES: the edge, then one past it.
    def frame_of(length: int) -> bytes:
        overhead = len(encode_frame(Pub("chunk", bytes(1000)))) - 1000
        made = encode_frame(Pub("chunk", bytes(length - overhead)))
        assert len(made) == length
        return made

    for first, joined in ((sync._CHUNK_BYTES - 1, 2), (sync._CHUNK_BYTES, 1)):
        for data in (frame_of(first), frame, frame):
            outbox.put(data, 0, lambda: None)
        batch, _, longest = outbox.take()
        chunks = [chunk for chunk in batch if isinstance(chunk, bytearray)]
        assert [len(chunk) for chunk in chunks] == [
            first + (joined - 1) * len(frame),
            (3 - joined) * len(frame),
        ]
        assert longest == first and b"".join(chunks) == frame_of(first) + frame + frame


def test_empty_publishes_are_bounded_by_what_their_frames_cost(
    broker_thread: BrokerThread,
) -> None:
    # The outbox counts what it holds at its memory cost, its frames' bytes: publishes with
    # an empty payload, which carry a subject and cost bytes all the same, wait like any other
    # while the client's thread is busy, instead of piling up without bound.
    limit, count = 1000, 2000
    frame = len(encode_frame(Pub("bound.empty", b"")))
    with (
        sync.connect(broker_thread.url, name="receiver") as receiver,
        sync.connect(broker_thread.url, write_buffer_size=limit) as client,
    ):
        sub = receiver.subscribe("bound.empty", max_pending=count)
        receiver.flush()
        entered, release = threading.Event(), threading.Event()

        def hold() -> None:  # in the client's thread, which takes nothing until released
            entered.set()
            release.wait(WAIT)

        client._soon(hold)
        assert entered.wait(WAIT)
        publisher = threading.Thread(
            target=lambda: [client.publish("bound.empty", b"") for _ in range(count)],
            daemon=True,
        )
        publisher.start()
        publisher.join(0.5)
        held = client._outbox._bytes
        assert publisher.is_alive()  # waiting for room, not done
        release.set()
        publisher.join(WAIT)
        assert not publisher.is_alive()
        client.flush()
        got = [sub.next(timeout=WAIT).payload for _ in range(count)]
    assert held <= limit + frame
    assert got == [b""] * count


def test_frames_over_a_max_frame_made_smaller_since_are_reported(
    broker_thread: BrokerThread, caplog: pytest.LogCaptureFixture
) -> None:
    # Callers encode against the max_frame the client's thread last saw. A frame over a smaller
    # one found at hand-over (a reconnection may bring one) is reported, by subject, as
    # `publish` would report it; the frames around it still go, in order.
    errors: list[BaseException] = []
    reported = threading.Event()

    def on_error(error: BaseException) -> None:
        errors.append(error)
        reported.set()

    with (
        sync.connect(broker_thread.url, name="receiver") as receiver,
        sync.connect(broker_thread.url, on_error=on_error) as client,
    ):
        sub = receiver.subscribe("shrink.*")
        receiver.flush()
        entered, release = threading.Event(), threading.Event()

        def hold() -> None:  # in the client's thread, which takes nothing until released
            client._async._encoder.max_frame = 200
            entered.set()
            release.wait(WAIT)

        client._soon(hold)
        assert entered.wait(WAIT)
        client.publish("shrink.small", b"1")
        client.publish("shrink.big", b"x" * 500)
        client.publish("shrink.small", b"2")
        release.set()
        client.flush()
        assert reported.wait(WAIT)
        got = [sub.next(timeout=WAIT).payload for _ in range(2)]
        assert sub.pending == 0
    assert got == [b"1", b"2"]
    assert [type(error) for error in errors] == [PayloadTooLarge]
    assert "exceeds the limit of 200 bytes" in str(errors[0])
    assert "a publish to 'shrink.big' was not sent" in caplog.text


def test_several_threads_share_one_subscription(client: sync.SyncClient) -> None:
    sub = client.subscribe("jobs")
    taken: list[list[int]] = [[], [], []]

    def worker(n: int) -> Callable[[], None]:
        def run() -> None:
            taken[n].extend(int(msg.payload) for msg in sub)

        return run

    with running(worker(0)), running(worker(1)), running(worker(2)):
        for k in range(300):
            client.publish("jobs", b"%d" % k)
        client.flush()
        deadline = time.monotonic() + WAIT
        while sub.pending and time.monotonic() < deadline:
            time.sleep(0.005)
        sub.unsubscribe(max_msgs=300)
    assert sorted(taken[0] + taken[1] + taken[2]) == list(range(300))


def test_queue_group(client: sync.SyncClient) -> None:
    one, two = client.subscribe("work", queue="q"), client.subscribe("work", queue="q")
    for k in range(20):
        client.publish("work", b"%d" % k)
    client.flush()
    assert (one.pending, two.pending) == (10, 10)


def test_publishes_keep_their_place_among_other_calls(client: sync.SyncClient) -> None:
    # Publishes travel through a queue; a later subscribe must not overtake them (with echo,
    # a subscription made after a publish must not receive it).
    for k in range(50):
        client.publish("order.check", b"%d" % k)
    late = client.subscribe("order.check")
    client.publish("order.check", b"after")
    client.flush()
    assert late.pending == 1
    assert late.next(timeout=0).payload == b"after"


def test_close_sends_what_was_published(broker_thread: BrokerThread) -> None:
    with sync.connect(broker_thread.url) as receiver:
        sub = receiver.subscribe("bulk")
        receiver.flush()
        sender = sync.connect(broker_thread.url)
        for k in range(1000):
            sender.publish("bulk", b"%d" % k)
        sender.close()  # No flush: close writes what is queued.
        assert [int(sub.next(timeout=WAIT).payload) for _ in range(1000)] == list(range(1000))


def test_a_thread_holding_a_message_does_not_stall_the_others(client: sync.SyncClient) -> None:
    sub = client.subscribe("shared")
    client.publish("shared", b"first")
    for msg in sub:
        assert msg.payload == b"first"
        break  # This thread now holds "first" (it never came back for more).

    taken: list[bytes] = []

    def other() -> None:
        taken.extend(sub.next(timeout=WAIT).payload for _ in range(3))

    with running(other):
        for k in range(3):
            client.publish("shared", b"%d" % k)
    assert taken == [b"0", b"1", b"2"]


def test_publish_errors_found_late_are_reported(broker_thread: BrokerThread) -> None:
    errors: list[BaseException] = []
    reported, disconnected = threading.Event(), threading.Event()

    def on_error(error: BaseException) -> None:
        errors.append(error)
        if len(errors) == 2:
            reported.set()

    client = sync.connect(
        broker_thread.url,
        reconnect_buffer_size=30,  # One 24-byte PUB frame fits.
        on_error=on_error,
        on_disconnected=lambda error: disconnected.set(),
        **FAST,
    )
    try:
        broker_thread.stop_server()
        assert disconnected.wait(WAIT)
        # Buffered while disconnected until the reconnect buffer is full; the publish that
        # does not fit is reported, since nobody waits for it.
        for _ in range(3):
            client.publish("down", b"12345678")
        assert reported.wait(WAIT)
        assert [type(e) for e in errors] == [ReconnectBufferFull, ReconnectBufferFull]
    finally:
        client.close()
    with pytest.raises(ConnectionClosed, match="the client was closed"):
        client.publish("down", b"")


def test_publish_after_the_connection_is_gone_raises(broker_thread: BrokerThread) -> None:
    disconnected = threading.Event()
    with sync.connect(
        broker_thread.url, reconnect=False, on_disconnected=lambda error: disconnected.set()
    ) as client:
        sub = client.subscribe("gone")
        broker_thread.stop_server()
        assert disconnected.wait(WAIT)
        assert client.is_closed
        with pytest.raises(ServerShuttingDown):
            sub.next(timeout=WAIT)
        # A publish queued before the client's thread finds the connection gone is reported,
        # not raised (nobody waits for it); from then on publishes raise.
        client.publish("gone", b"")
        with pytest.raises(ServerShuttingDown):
            client.flush()
        with pytest.raises(ServerShuttingDown):
            client.publish("gone", b"")


def test_max_pending_drops_the_newest(broker_thread: BrokerThread, client: sync.SyncClient) -> None:
    sub = client.subscribe("burst", max_pending=10)
    with sync.connect(broker_thread.url) as publisher:
        for k in range(50):
            publisher.publish("burst", b"%d" % k)
        publisher.flush()
    client.flush()
    pending, dropped = sub.pending, sub.dropped
    # At most max_pending wait while the consumer is busy, besides the batch it was handed.
    assert pending + dropped == 50 and 10 <= pending <= 20, (pending, dropped)
    payloads = [int(sub.next(timeout=WAIT).payload) for _ in range(pending)]
    # The oldest were kept, in order: the newest were the ones dropped.
    assert payloads == list(range(pending))
    with pytest.raises(TimeoutError):
        sub.next(timeout=0)


def test_unsubscribe_after_max_msgs(client: sync.SyncClient) -> None:
    sub = client.subscribe("counted")
    sub.unsubscribe(max_msgs=3)
    for k in range(5):
        client.publish("counted", b"%d" % k)
    client.flush()
    assert [msg.payload for msg in sub] == [b"0", b"1", b"2"]
    assert not sub.active
    with pytest.raises(ValueError, match="max_msgs must be a non-negative int"):
        sub.unsubscribe(max_msgs=-1)


def test_close_is_idempotent_and_joins_the_thread(broker_thread: BrokerThread) -> None:
    client = sync.connect(broker_thread.url)
    client.publish("bye", b"")
    thread = client._thread
    with running(client.close), running(client.close):
        client.close()
    client.close()
    assert not thread.is_alive()
    assert client.is_closed and not client.is_connected
    assert "closed" in repr(client)
    with pytest.raises(ConnectionClosed):
        client.publish("bye", b"")
    with pytest.raises(ConnectionClosed):
        client.subscribe("bye")
    with pytest.raises(ConnectionClosed):
        client.request("bye", b"")
    wait_for(broker_thread, lambda stats: stats.connections == 0)


def test_typed_errors(client: sync.SyncClient) -> None:
    max_payload = client.server_info["max_payload"]
    client.publish("edge", b"x" * max_payload)  # Exactly at the limit.
    with pytest.raises(PayloadTooLarge, match="exceeds the server's max_payload"):
        client.publish("edge", b"x" * (max_payload + 1))
    with pytest.raises(BadSubject):
        client.publish("bad subject", b"")
    with pytest.raises(BadSubject):
        client.publish("wild.*", b"")
    with pytest.raises(BadSubject):
        client.subscribe("a.>.b")
    with pytest.raises(BadSubject):
        client.subscribe("a", queue="has space")
    with pytest.raises(TypeError):
        client.publish("edge", "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        client.request("edge", b"", timeout=-1)
    client.flush()
    assert client.is_connected


def test_connect_errors(broker_thread: BrokerThread) -> None:
    with pytest.raises(ValueError, match="tcp scheme"):
        sync.connect("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="reconnect_delay"):
        sync.connect(broker_thread.url, reconnect_delay=0)
    # Nothing listens on the port of a server that has stopped.
    broker_thread.stop_server()
    with pytest.raises(ConnectionClosed, match="cannot connect"):
        sync.connect(broker_thread.url)


def test_reconnect_after_the_server_restarts(broker_thread: BrokerThread) -> None:
    disconnected, reconnected = threading.Event(), threading.Event()
    reasons: list[ConnectionClosed] = []

    def on_disconnected(error: ConnectionClosed) -> None:
        reasons.append(error)
        disconnected.set()

    def on_reconnected() -> None:
        # Hooks run in a worker thread, so they may use the client.
        client.publish("news.hook", b"from the hook")
        reconnected.set()

    with sync.connect(
        broker_thread.url, on_disconnected=on_disconnected, on_reconnected=on_reconnected, **FAST
    ) as client:
        news = client.subscribe("news.*")
        client.flush()
        broker_thread.stop_server()
        assert disconnected.wait(WAIT)
        assert [type(e) for e in reasons] == [ServerShuttingDown]
        assert not client.is_connected
        client.publish("news.buffered", b"while down")
        broker_thread.start_server()
        assert reconnected.wait(WAIT)
        with sync.connect(broker_thread.url) as other:
            other.publish("news.live", b"after")
            other.flush()
        client.flush()
        assert sorted(news.next(timeout=WAIT).payload for _ in range(3)) == [
            b"after",
            b"from the hook",
            b"while down",
        ]


def test_drain_lets_a_responder_answer_what_it_took(
    broker_thread: BrokerThread, client: sync.SyncClient
) -> None:
    service = sync.connect(broker_thread.url, name="service")
    requests = service.subscribe("slow.echo")
    service.flush()
    took, go = threading.Event(), threading.Event()

    def respond() -> None:
        for msg in requests:
            took.set()
            assert go.wait(WAIT)
            msg.respond(b"late:" + msg.payload)

    replies: list[bytes] = []

    def ask() -> None:
        replies.append(client.request("slow.echo", b"q", timeout=WAIT).payload)

    with running(respond), running(ask):
        assert took.wait(WAIT)
        before = broker_thread.statistics().subscriptions
        with running(lambda: service.drain(timeout=WAIT)) as draining:
            # The UNSUB went through: the drain has begun while the responder holds a request.
            wait_for(broker_thread, lambda stats: stats.subscriptions == before - 1)
            assert draining.is_alive()
            go.set()
    assert replies == [b"late:q"]
    assert service.is_closed
    with pytest.raises(ConnectionClosed):
        service.subscribe("slow.echo")


def test_drain_timeout_closes_anyway(broker_thread: BrokerThread) -> None:
    client = sync.connect(broker_thread.url)
    sub = client.subscribe("stuck")
    client.publish("stuck", b"never taken")
    client.flush()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"drain did not finish within 0\.2 s"):
        client.drain(timeout=0.2)
    assert time.monotonic() - started < WAIT
    assert client.is_closed and not client._thread.is_alive()
    # What was queued is still handed out, then the subscription ends.
    assert sub.next(timeout=0).payload == b"never taken"
    with pytest.raises(SubscriptionClosed):
        sub.next(timeout=0)


def test_a_forgotten_client_does_not_hang_exit(broker_thread: BrokerThread) -> None:
    script = (
        "import sys\n"
        "from broker import sync\n"
        "client = sync.connect(sys.argv[1])\n"
        "client.publish('left.behind', b'sent at exit')\n"
    )
    with sync.connect(broker_thread.url) as watcher:
        sub = watcher.subscribe("left.behind")
        watcher.flush()
        result = subprocess.run(
            [sys.executable, "-c", script, broker_thread.url],
            capture_output=True,
            text=True,
            timeout=WAIT * 2,
            check=False,
        )
        assert (result.returncode, result.stderr) == (0, "")
        # Closed at exit, gracefully: the publish was written, not lost.
        assert sub.next(timeout=WAIT).payload == b"sent at exit"


@pytest.mark.parametrize("name", ["sync_client", "async_client"])
def test_examples_run(broker_thread: BrokerThread, name: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{name}.py"), "--url", broker_thread.url],
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "received greetings.world: hello",
        "reply: HELLO",
        "no responders on nobody.home",
    ]


async def test_blocking_calls_from_a_trio_task_say_so_and_work_through_to_thread(
    broker_thread: BrokerThread,
) -> None:
    with sync.connect(broker_thread.url) as client:
        with pytest.raises(RuntimeError, match="cannot be called from a Trio task"):
            client.flush()

        def from_a_thread() -> bytes:
            with client.subscribe("t") as sub:
                client.flush()
                client.publish("t", b"via to_thread")
                return sub.next(timeout=5).payload

        with trio.fail_after(10):
            assert await trio.to_thread.run_sync(from_a_thread) == b"via to_thread"
