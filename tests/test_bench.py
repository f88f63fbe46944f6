"""Smoke tests for the load generator: it counts exactly, and a small run delivers everything.

No speed is asserted here: timing belongs to `broker bench`, not to the test suite.
"""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from broker import bench
from broker.bench.dialects import FrameCounter, NatsCounter
from broker.protocol import Err, Msg, Pong, encode_frame


def chunked(data: bytes, seed: int) -> list[bytes]:
    """`data` cut at random places, including inside length prefixes and header lines."""
    rng = random.Random(seed)
    pieces, position = [], 0
    while position < len(data):
        size = rng.choice([1, 3, 7, 150, 4096, 70_000])
        pieces.append(data[position : position + size])
        position += size
    return pieces


@pytest.mark.parametrize("seed", range(5))
def test_frame_counter_counts_every_msg_however_the_stream_is_cut(seed: int) -> None:
    uniform = encode_frame(Msg(1, "bench.data", b"x" * 128))
    other = encode_frame(Msg(1, "bench.other.subject", b"y" * 40))
    stream = (
        uniform * 500
        + encode_frame(Pong())
        + other * 3
        + uniform * 700
        + encode_frame(Err("slow_consumer", "too slow"))
        + (uniform + other) * 50
    )
    counter = FrameCounter()
    for piece in chunked(stream, seed):
        counter.feed(piece)
    assert counter.messages == 500 + 3 + 700 + 100
    assert counter.pongs == 1
    assert counter.errors == ["slow_consumer"]


@pytest.mark.parametrize("seed", range(5))
def test_nats_counter_counts_every_msg_however_the_stream_is_cut(seed: int) -> None:
    def msg(subject: str, sid: int, payload: bytes) -> bytes:
        return b"MSG %s %d %d\r\n%s\r\n" % (subject.encode(), sid, len(payload), payload)

    stream = (
        b"INFO {}\r\n"
        + b"PONG\r\n"
        + (msg("bench.p01.data", 1, b"a" * 128) + msg("bench.p02.data", 1, b"b" * 128)) * 400
        + b"PING\r\n"
        + msg("bench.data", 1, b"MSG \r\n" * 20) * 300
        + b"HMSG bench.data 1 12 17\r\nNATS/1.0\r\n\r\nhello\r\n"
        + b"-ERR 'Slow Consumer'\r\n"
    )
    counter = NatsCounter()
    for piece in chunked(stream, seed):
        counter.feed(piece)
    assert counter.messages == 800 + 300 + 1
    assert (counter.pongs, counter.pings) == (1, 1)
    assert counter.errors == ["Slow Consumer"]


def test_a_small_one_to_one_run_delivers_everything() -> None:
    scenario = bench.scaled(
        next(s for s in bench.SCENARIOS if s.name == "one-to-one"), messages=2_000
    )
    with bench.start_broker() as server:
        result = bench.run_scenario(scenario, server.target, timeout=30)
        assert server.process.poll() is None, "the broker must survive the run"
    assert result.failure is None, result.failure
    assert result.complete
    assert (result.published, result.expected, result.delivered, result.missing) == (
        2_000,
        2_000,
        2_000,
        0,
    )
    assert result.seconds > 0
    assert result.rate > 0
    assert result.cpu_per_delivery is not None and result.cpu_per_delivery >= 0
    assert result.peak_rss is not None and result.peak_rss > 1024 * 1024
    [subscriber] = result.subscribers
    assert subscriber.received == 2_000
    assert not subscriber.closed_by_server
    assert subscriber.errors == ()
    assert result.label == "1 -> 1, 128 B"


def test_a_queue_group_shares_the_messages_evenly() -> None:
    queue = next(s for s in bench.SCENARIOS if s.name == "queue-4")
    scenario = dataclasses.replace(bench.scaled(queue, messages=400), subscribers=2)
    with bench.start_broker() as server:
        result = bench.run_scenario(scenario, server.target, timeout=30)
    assert result.complete, result
    assert sorted(s.received for s in result.subscribers) == [200, 200]


def test_missing_messages_are_reported_not_waited_for() -> None:
    # The second subscriber's pattern matches nothing: the run ends once the publisher is done
    # and nothing more arrives, and says how many are missing.
    one = next(s for s in bench.SCENARIOS if s.name == "one-to-one")
    scenario = dataclasses.replace(
        bench.scaled(one, messages=100), subscribers=2, patterns=("bench.data", "nothing.here")
    )
    with bench.start_broker() as server:
        result = bench.run_scenario(scenario, server.target, timeout=30)
    assert result.seconds < 30
    assert not result.complete
    assert (result.expected, result.delivered, result.missing) == (200, 100, 100)
    assert [s.received for s in result.subscribers] == [100, 0]


def test_write_docs_keeps_what_is_around_the_generated_part(tmp_path: Path) -> None:
    path = tmp_path / "performance.md"
    path.write_text("# Performance\n\nIntro by hand.\n")
    result = bench.ScenarioResult(
        "one-to-one", "broker", 10, 10, 10, 1.0, 10.0, 1e-6, 40 * 1024 * 1024, label="1 -> 1"
    )
    bench.write_docs(path, bench.render_markdown([result], command="broker bench"))
    path.write_text(path.read_text() + "\nFindings by hand.\n")
    bench.write_docs(path, bench.render_markdown([result], command="broker bench -n 5"))
    text = path.read_text()
    assert text.startswith("# Performance\n\nIntro by hand.\n")
    assert text.endswith("\nFindings by hand.\n")
    assert text.count("bench:begin") == 1
    assert "broker bench -n 5" in text and "```sh\nbroker bench\n```" not in text
    assert "| 1 -> 1 | deliveries/s | 10/s |" in text


@pytest.mark.parametrize("url", ["http://127.0.0.1:5878", "tcp://127.0.0.1:99999", "tcp://:5878"])
def test_a_bad_url_is_refused_before_anything_starts(url: str) -> None:
    with pytest.raises(typer.BadParameter) as refused:
        bench.run_and_report(scenario_names=["one-to-one"], url=url)
    assert refused.value.param_hint == "--url"
    assert repr(url) in str(refused.value), "the message names the value it refuses"


def test_the_cli_loads_the_suite_only_when_bench_runs() -> None:
    # In a fresh interpreter: this one has imported broker.bench already.
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from broker.cli import app\n"
        "for args in (['--help'], ['bench', '--help'], ['check-config', '--help']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('broker.bench'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_the_cli_offers_every_scenario_by_name() -> None:
    from broker.cli import _BENCH_SCENARIOS

    assert tuple(s.name for s in bench.SCENARIOS) == _BENCH_SCENARIOS


def test_the_public_names_are_what_the_cli_benchmarks_and_tests_use() -> None:
    assert sorted(bench.__all__) == [
        "SCENARIOS",
        "Scenario",
        "ScenarioResult",
        "ServerProcess",
        "SubscriberOutcome",
        "Target",
        "find_nats_server",
        "render_markdown",
        "run_and_report",
        "run_scenario",
        "scaled",
        "start_broker",
        "start_nats",
        "write_docs",
    ]
    missing = [name for name in bench.__all__ if not hasattr(bench, name)]
    assert not missing


def test_secure_runs_deliver_everything_over_auth_and_tls() -> None:
    from broker.bench.secure import VARIANTS, report_secure, run_secure

    wildcard = next(s for s in bench.SCENARIOS if s.name == "wildcard-10x10")
    scenario = dataclasses.replace(bench.scaled(wildcard, messages=50), publishers=2, subscribers=2)
    [results] = run_secure([scenario], timeout=30)
    assert [r.complete for r in results] == [True] * len(VARIANTS), [r.failure for r in results]
    assert all(r.delivered == r.expected > 0 for r in results)
    header, _, row = report_secure([results])
    assert "auth + TLS" in header and row.startswith("| 10 -> 10 wildcard")
