"""A reader writes what it queued for idle writers at the end of its turn (`HeldWakes`).

The outbox side is tested directly: which deliveries are held, how many outboxes one turn
writes for, how large a batch it writes, and what a partial write leaves for the writer. The
transport side runs on real loopback sockets: plain TCP connections get direct writes, TLS ones
do not, and a subscriber whose socket is full still gets every message once, in order.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from types import FrameType
from typing import Any

import pytest
import trio
import trio.testing
from wire import StartServer, WireClient, raw_frame, wire_client

from broker.errors import ErrorCode
from broker.protocol import Err, Msg, Pub, Sub, encode_frame
from broker.server import Server
from broker.server.native import NativeAdapter
from broker.server.outbox import (
    DIRECT_WRITE_BYTES,
    DIRECT_WRITES_PER_TURN,
    MESSAGE_OVERHEAD,
    HeldWakes,
    Outbox,
)
from broker.testing import faults


def _outbox(held: HeldWakes, **bounds: int) -> Outbox:
    bounds.setdefault("max_messages", 1000)
    bounds.setdefault("max_bytes", 1 << 24)
    return Outbox(held=held, **bounds)  # type: ignore[arg-type]


class _Writer:
    """An idle writer: parked in `Outbox.wait` until woken, as the transport's is."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.woken = 0

    async def run(self) -> None:
        while True:
            await self.outbox.wait()
            self.woken += 1
            self.outbox.take_batch()
            self.outbox.sent()


def _direct(outbox: Outbox, written: list[bytes], *, room: int | None = None) -> None:
    """Give `outbox` a direct writer that takes at most `room` bytes per write."""

    def write() -> bool:
        data = outbox.take_direct()
        if data is None:
            return False
        sent = len(data) if room is None else min(room, len(data))
        written.append(data[:sent])
        if sent == len(data):
            outbox.sent()
            return True
        outbox.put_back(data[sent:])
        return False

    outbox.direct = write


async def test_deliveries_made_while_held_are_written_without_waking_the_writer() -> None:
    held = HeldWakes()
    outbox = _outbox(held)
    written: list[bytes] = []
    _direct(outbox, written)
    writer = _Writer(outbox)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        held.holding = True
        assert outbox.offer(b"h1", b"t1")
        assert outbox.offer(b"h2", b"t2")
        outbox.push_control(b"pong")
        assert held.outboxes == [outbox]  # listed once, however many deliveries
        held.release()
        assert not held.holding
        assert written == [b"h1t1h2t2pong"]  # one write, in the order queued
        assert not outbox and outbox.bytes == outbox.sending == outbox.messages == 0
        await trio.testing.wait_all_tasks_blocked()
        assert writer.woken == 0
        # Not held: a delivery wakes the writer, as it always did.
        assert outbox.offer(b"h3", b"t3")
        await trio.testing.wait_all_tasks_blocked()
        assert writer.woken == 1 and written == [b"h1t1h2t2pong"]
        nursery.cancel_scope.cancel()


async def test_one_turn_writes_for_at_most_direct_writes_per_turn_outboxes() -> None:
    held = HeldWakes()
    count = DIRECT_WRITES_PER_TURN + 1  # the edge, and one past it
    outboxes = [_outbox(held) for _ in range(count)]
    written: list[list[bytes]] = [[] for _ in range(count)]
    writers = [_Writer(outbox) for outbox in outboxes]
    async with trio.open_nursery() as nursery:
        for outbox, out, writer in zip(outboxes, written, writers, strict=True):
            _direct(outbox, out)
            nursery.start_soon(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        held.holding = True
        for outbox in outboxes:
            outbox.offer(b"h", b"t")
        held.release()
        await trio.testing.wait_all_tasks_blocked()
        assert [len(out) for out in written] == [1] * DIRECT_WRITES_PER_TURN + [0]
        assert [w.woken for w in writers] == [0] * DIRECT_WRITES_PER_TURN + [1]
        assert not any(outboxes)
        nursery.cancel_scope.cancel()


def test_a_direct_write_takes_at_most_direct_write_bytes() -> None:
    held = HeldWakes()
    head = b"h" * 8
    tail = b"t" * (DIRECT_WRITE_BYTES - len(head) - MESSAGE_OVERHEAD)
    at_edge = _outbox(held)
    at_edge.offer(head, tail)
    assert at_edge.bytes == DIRECT_WRITE_BYTES
    assert at_edge.take_direct() == head + tail
    one_past = _outbox(held)
    one_past.offer(head, tail + b"t")
    assert one_past.take_direct() is None
    assert one_past.take_batch() == head + tail + b"t"  # the writer sends it as before


def test_nothing_is_written_directly_while_a_batch_or_a_replay_is_under_way() -> None:
    held = HeldWakes()
    outbox = _outbox(held)
    assert outbox.take_direct() is None  # nothing queued
    outbox.offer(b"h1", b"t1")
    assert outbox.take_batch() == b"h1t1"  # the writer is sending it
    outbox.offer(b"h2", b"t2")
    assert outbox.take_direct() is None
    outbox.sent()
    assert outbox.take_direct() == b"h2t2"
    outbox.sent()
    outbox.offer_replay(iter([(b"H", b"T")]))
    outbox.offer(b"h3", b"t3")
    assert outbox.take_direct() is None  # a replay goes first, through the writer


async def test_what_a_direct_write_leaves_goes_first_and_counts_until_sent() -> None:
    held = HeldWakes()
    # Room for the 5 bytes the write leaves, and two 4-byte messages: to the byte.
    outbox = _outbox(held, max_bytes=5 + 2 * (4 + MESSAGE_OVERHEAD))
    written: list[bytes] = []
    _direct(outbox, written, room=3)
    writer = _Writer(outbox)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        held.holding = True
        assert outbox.offer(b"head", b"tail")
        held.release()
        assert written == [b"hea"]
        assert outbox.sending == 5 and outbox  # the rest counts against the bound
        assert outbox.offer(b"h2", b"t2")
        assert outbox.offer(b"h3", b"t3")  # exactly at the bound
        assert not outbox.offer(b"h", b"4")  # one past it, though 3 bytes smaller
        assert outbox.take_batch() == b"dtail"  # the rest first...
        outbox.sent()
        assert outbox.take_batch() == b"h2t2h3t3"  # ...then what was queued after it
        outbox.sent()
        outbox.put_back(b"x")
        outbox.clear()
        assert not outbox and outbox.sending == 0
        nursery.cancel_scope.cancel()


async def test_plain_tcp_connections_write_directly_and_deliver_in_order(
    start_server: StartServer,
) -> None:
    with trio.fail_after(10):
        server = await start_server()
        async with (
            wire_client(server.port, name="sub") as sub,
            wire_client(server.port, name="pub") as pub,
        ):
            (transport,) = faults.connections(server, "sub")
            assert transport.outbox.direct is not None
            await sub.send(Sub(1, "s"))
            await sub.flush()
            for number in range(200):
                await pub.send(Pub("s", number.to_bytes(2, "big")))
                if number % 7 == 0:
                    await pub.flush()  # some reads of one PUB, some of several
            await pub.flush()
            received: list[int] = []
            while len(received) < 200:
                for event in await sub.drain():
                    assert type(event) is Msg
                    received.append(int.from_bytes(event.payload, "big"))
            assert received == list(range(200))


@pytest.mark.parametrize("code", [ErrorCode.BAD_FRAME, ErrorCode.SLOW_CONSUMER])
async def test_after_half_a_frame_a_fatal_error_waits_for_the_rest_or_is_not_sent(
    start_server: StartServer, code: ErrorCode
) -> None:
    with trio.fail_after(10):
        server = await start_server()
        async with wire_client(server.port, name="sub") as sub:
            await sub.flush()
            await trio.testing.wait_all_tasks_blocked()
            (transport,) = faults.connections(server, "sub")
            assert transport.outbox.direct is not None
            # What `Transport._write_now` leaves when the socket takes only part of a batch:
            # the start on the wire, the rest put back and the writer woken...
            frame = encode_frame(Msg(1, "s", b"m" * 100))
            assert os.write(transport.stream.socket.fileno(), frame[:10]) == 10
            transport.outbox.put_back(frame[10:])
            assert transport.outbox.mid_frame
            transport.outbox.wake()
            # ...and before the writer runs, the connection must close.
            transport.fail(code, "closing it")
            events = await sub.closed()
        if code is ErrorCode.SLOW_CONSUMER:
            # As when the writer itself is stuck mid-frame: cut off at once, no ERR after half
            # a frame (the client reads a frame cut short).
            assert events == [] and sub.truncated
        else:
            # The frame is finished first, then the error: the stream stays whole.
            assert [type(e) for e in events] == [Msg, Err]
            assert events[0] == Msg(1, "s", b"m" * 100)
            assert isinstance(events[1], Err) and events[1].code == code.value
            assert not sub.truncated


async def test_a_failing_direct_write_leaves_no_writer_asleep_over_queued_frames() -> None:
    held = HeldWakes()
    outboxes = [_outbox(held) for _ in range(3)]
    writers = [_Writer(outbox) for outbox in outboxes]

    def broken() -> bool:
        raise RuntimeError("a bug in a direct write")

    for outbox in outboxes:
        outbox.direct = broken
    async with trio.open_nursery() as nursery:
        for writer in writers:
            nursery.start_soon(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        held.holding = True
        for outbox in outboxes:
            outbox.offer(b"h", b"t")
        with pytest.raises(RuntimeError, match="a bug"):
            held.release()
        await trio.testing.wait_all_tasks_blocked()
        assert [w.woken for w in writers] == [1, 1, 1]
        assert not any(outboxes) and held.outboxes == []
        # And the next turn lists them again.
        held.holding = True
        outboxes[0].offer(b"h", b"t")
        assert held.outboxes == [outboxes[0]]
        nursery.cancel_scope.cancel()


# -- a reader's turn that left no writer anything to send goes straight back to reading -----------


def test_a_turn_records_whether_it_left_a_writer_frames_to_send() -> None:
    held = HeldWakes()
    written: list[bytes] = []
    direct = _outbox(held)
    _direct(direct, written)
    direct._waiting = True  # parked, as an idle writer is
    held.holding, held.unsent = True, False
    direct.offer(b"h", b"t")
    held.release()
    assert written == [b"ht"] and not held.unsent  # written here: no writer to wait for
    full = _outbox(held)
    _direct(full, written, room=1)
    full._waiting = True
    held.holding, held.unsent = True, False
    full.offer(b"h", b"t")
    held.release()
    assert held.unsent  # the socket took one byte: the writer sends the rest
    tls = _outbox(held)  # no direct writer, as on TLS
    tls._waiting = True
    held.holding, held.unsent = True, False
    tls.offer(b"h", b"t")
    assert held.unsent
    busy = _outbox(held, max_messages=1)  # its writer is not parked: a send is under way
    _direct(busy, written)
    held.holding, held.unsent = True, False
    assert busy.offer(b"h", b"t")
    assert held.unsent and held.outboxes == []  # nothing listed: its writer will send it
    held.holding, held.unsent = True, False
    assert not busy.offer(b"h", b"t")  # full: its writer is behind
    assert held.unsent
    held.holding, held.unsent = True, False
    busy.push_control(b"pong")
    assert held.unsent
    held.release()


@contextlib.asynccontextmanager
async def _reader_steps(server: Server, name: str) -> AsyncIterator[list[int]]:
    """Once every task is blocked, count the steps of client `name`'s reader task while in the
    block (in the one item)."""
    (transport,) = faults.connections(server, name)
    await trio.testing.wait_all_tasks_blocked()
    steps = [0]

    class Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            coro = task.coro
            if (
                getattr(coro, "cr_code", None) is not None
                and coro.cr_code.co_name == "_read_loop"  # type: ignore[attr-defined]
                and coro.cr_frame.f_locals.get("self") is transport  # type: ignore[attr-defined]
            ):
                steps[0] += 1

    instrument = Steps()
    trio.lowlevel.add_instrument(instrument)
    try:
        yield steps
    finally:
        trio.lowlevel.remove_instrument(instrument)


@contextlib.asynccontextmanager
async def _subscribed_pair(server: Server) -> AsyncIterator[tuple[WireClient, WireClient]]:
    """Clients ``sub`` (subscribed to ``s``) and ``pub``, both handshaken and flushed."""
    async with (
        wire_client(server.port, name="sub") as sub,
        wire_client(server.port, name="pub") as pub,
    ):
        await sub.send(Sub(1, "s"))
        await sub.flush()
        await pub.flush()
        yield sub, pub


async def test_a_read_whose_deliveries_were_all_written_costs_its_reader_one_step(
    start_server: StartServer,
) -> None:
    # Request/reply's path: each hop was three passes of the scheduler for the reader (the
    # read, then two checkpoints for writers it had not woken); now one.
    with trio.fail_after(10):
        server = await start_server()
        async with _subscribed_pair(server) as (sub, pub):
            async with _reader_steps(server, "pub") as steps:
                for number in range(20):
                    await pub.send(Pub("s", bytes([number])))
                    msg = await sub.expect(Msg)
                    assert msg.payload == bytes([number])
                    await trio.testing.wait_all_tasks_blocked()
                await pub.send(Pub("nobody", b"x"))  # delivered nowhere: one step too
                await trio.testing.wait_all_tasks_blocked()
            assert steps[0] == 21


@contextlib.contextmanager
def _calls_of(function: Callable[..., Any]) -> Iterator[list[int]]:
    """Count the calls of `function` made in the block (in the one item)."""
    code = function.__code__
    calls = [0]

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code is code:
            calls[0] += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield calls
    finally:
        sys.setprofile(previous)


async def test_a_read_decoded_whole_costs_one_turn_of_its_adapter(
    start_server: StartServer,
) -> None:
    # After a turn that left nothing buffered, the reader reads again at once; it used to take
    # another turn first, which decoded nothing (and cost a tenth of a hop's instructions).
    with trio.fail_after(10):
        server = await start_server()
        async with _subscribed_pair(server) as (sub, pub):
            await trio.testing.wait_all_tasks_blocked()
            with _calls_of(NativeAdapter.process) as turns:
                for number in range(20):
                    await pub.send(Pub("s", bytes([number])))
                    msg = await sub.expect(Msg)
                    assert msg.payload == bytes([number])
                    await trio.testing.wait_all_tasks_blocked()
            assert turns[0] == 20
            # Half a frame is a turn that finds nothing, then one more when the rest comes.
            frame = encode_frame(Pub("s", b"late"))
            with _calls_of(NativeAdapter.process) as turns:
                await pub.send_raw(frame[:3])
                await trio.testing.wait_all_tasks_blocked()
                await pub.send_raw(frame[3:])
                assert (await sub.expect(Msg)).payload == b"late"
                await trio.testing.wait_all_tasks_blocked()
            assert turns[0] == 2


async def test_a_bad_frame_after_good_ones_in_one_read_is_answered_at_once(
    start_server: StartServer,
) -> None:
    # The codec hands out the good frames and keeps the error for its next call, with nothing
    # left buffered: the reader must take that turn rather than wait for more bytes.
    with trio.fail_after(10):
        server = await start_server()
        async with wire_client(server.port) as client:
            await client.send_raw(encode_frame(Sub(1, "x")) + raw_frame(["BOGUS", 1]))
            with trio.fail_after(1):
                err = await client.expect(Err)
            assert err.code == ErrorCode.UNKNOWN_OP.value


async def test_a_read_that_woke_a_writer_lets_it_send_before_reading_again(
    start_server: StartServer,
) -> None:
    # One subscriber more than a turn writes for: its writer is woken, and the reader takes
    # its two checkpoints (three steps) so that writer sends before the next read.
    with trio.fail_after(20):
        server = await start_server()
        async with contextlib.AsyncExitStack() as stack:
            subs = [
                await stack.enter_async_context(wire_client(server.port, name=f"sub{n}"))
                for n in range(DIRECT_WRITES_PER_TURN + 1)
            ]
            for sub in subs:
                await sub.send(Sub(1, "s"))
                await sub.flush()
            pub = await stack.enter_async_context(wire_client(server.port, name="pub"))
            await pub.flush()
            async with _reader_steps(server, "pub") as steps:
                await pub.send(Pub("s", b"x"))
                for sub in subs:
                    assert (await sub.expect(Msg)).payload == b"x"
                await trio.testing.wait_all_tasks_blocked()
            assert steps[0] == 3


def test_a_partial_frame_or_operation_counts_as_pending() -> None:
    from broker.server.native import NativeAdapter
    from broker.server.nats import NatsAdapter
    from broker.server.transport import Transport
    from broker.testing.inprocess import config_for_tests

    server = Server(config_for_tests())
    hub = server.hub
    native = NativeAdapter(hub, Transport(hub, trio.testing.MemorySendStream(), "peer", 1))
    assert not native.pending
    native.receive_data(encode_frame(Pub("s", b"x"))[:5])
    assert native.pending and native.buffered == 5
    transport = Transport(hub, trio.testing.MemorySendStream(), "peer", 2)
    nats = NatsAdapter(hub, transport, server._nats_info, max_control_line=4096)
    assert not nats.pending
    nats.receive_data(b"PUB s 1\r")
    assert nats.pending


async def test_a_read_longer_than_a_turn_still_yields_between_its_turns(
    start_server: StartServer,
) -> None:
    # PUBs nobody receives wake no writer, yet a read of more than `DECODE_PER_TURN` frames
    # must still let the other tasks run between its turns.
    from broker.server.native import DECODE_PER_TURN

    count = 8 * DECODE_PER_TURN
    with trio.fail_after(10):
        server = await start_server()
        async with wire_client(server.port, name="pub") as pub:
            await pub.flush()
            async with _reader_steps(server, "pub") as steps:
                await pub.send(*[Pub("nobody", bytes([n % 256])) for n in range(count)])
                await pub.flush()
            assert server.hub.statistics().messages_in == count
            assert steps[0] >= count // DECODE_PER_TURN


async def test_a_read_that_queued_behind_a_busy_writer_lets_it_send_before_reading_again(
    start_server: StartServer,
) -> None:
    # Under load a subscriber's writer is mostly inside a send, not parked: a delivery then
    # wakes nobody, yet the reader must let that writer send before routing the next read,
    # or routing runs ahead of writing (and the slow-consumer policy cuts healthy clients).
    with trio.fail_after(10):
        server = await start_server()
        async with _subscribed_pair(server) as (sub, pub):
            # A stalled writer stands for one busy sending: woken by the first delivery, it
            # is no longer parked when the second arrives.
            faults.stall_client(server, "sub")
            await pub.send(Pub("s", b"1"))
            await pub.flush()
            async with _reader_steps(server, "pub") as steps:
                await pub.send(Pub("s", b"2"))
                await trio.testing.wait_all_tasks_blocked()
            assert steps[0] == 3
            faults.resume_client(server, "sub")
            assert (await sub.expect(Msg)).payload == b"1"
            assert (await sub.expect(Msg)).payload == b"2"
