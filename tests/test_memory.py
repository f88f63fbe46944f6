"""Freed buffers go back to the system (glibc keeps them otherwise; CI runs on glibc), and
what start-up made stays out of the garbage collector's way."""

from __future__ import annotations

import gc
import os

import msgpack

from broker._memory import release_free_memory, settle_heap

MiB = 1024 * 1024


def _rss() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) * 1024


def test_buffers_freed_by_departed_clients_are_handed_back() -> None:
    # What 100 clients each half-sending a 1 MB frame leave behind in the codec's buffers.
    frame = msgpack.packb(["HELLO", {"version": "v" * MiB}])
    held = []
    for _ in range(100):
        unpacker = msgpack.Unpacker(max_buffer_size=2 * MiB)
        unpacker.feed(frame[: len(frame) // 2])
        held.append(unpacker)
    peak = _rss()
    del held, unpacker
    assert release_free_memory()
    assert _rss() < peak - 30 * MiB


def test_a_settled_heap_leaves_what_lived_at_start_up_out_of_every_collection() -> None:
    try:
        frozen = settle_heap()
        assert frozen > 10_000  # this process's modules, functions, classes...
        assert frozen == gc.get_freeze_count()
        assert len(gc.get_objects()) < 1000  # what a full collection still walks
    finally:
        gc.unfreeze()
