"""`broker top` and `broker stats` against a real broker's monitoring endpoint."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request

import trio
from rich.console import Console
from typer.testing import CliRunner
from wire import StartServer, wire_client

from broker import sync
from broker.cli import app
from broker.config import MonitoringConfig
from broker.protocol import Pub, Sub
from broker.testing import BrokerThread
from broker.top import take_sample, top_frame

#: Seconds a broker process may take to start or stop.
WAIT = 20


async def test_top_renders_a_frame_from_a_real_broker(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(monitoring=MonitoringConfig(enabled=True, port=0))
        url = server.monitor_url
        assert url is not None
        async with (
            wire_client(server.port, name="orders-service") as busy,
            wire_client(server.port, name="audit") as audit,
        ):
            await audit.send(Sub(1, "orders.>"))
            await audit.flush()
            before = await trio.to_thread.run_sync(
                lambda: take_sample(url, sort="in_msgs", limit=10)
            )
            await busy.send(*[Pub("orders.new", b"x" * 10)] * 50)
            await busy.flush()
            now = await trio.to_thread.run_sync(lambda: take_sample(url, sort="in_msgs", limit=10))
            console = Console(record=True, width=200)
            console.print(top_frame(now, before, sort="in_msgs"))
            screen = console.export_text()
        assert f"broker {server.server_id}" in screen
        assert "2 of 2 connections, sorted by in_msgs" in screen
        rows = [line for line in screen.splitlines() if "orders-service" in line or "audit" in line]
        assert "orders-service" in rows[0] and "audit" in rows[1]  # busiest first
        busy_row = rows[0].split("│")
        assert busy_row[7].strip() == "50"  # msgs in
        assert busy_row[9].strip() not in ("", "-", "0")  # a rate, from two readings


def test_stats_prints_varz_as_a_table_or_json(
    broker_thread: BrokerThread, broker_monitor_url: str
) -> None:
    with sync.connect(broker_thread.url, name="counted") as client:
        for _ in range(100):
            client.publish("t", b"x")
        client.flush()
        result = CliRunner().invoke(app, ["stats", "--json", "-m", broker_monitor_url])
        assert result.exit_code == 0, result.output
        varz = json.loads(result.output)
        assert (varz["in_msgs"], varz["in_bytes"], varz["connections"]) == (100, 100, 1)
        table = CliRunner().invoke(app, ["stats", "-m", broker_monitor_url], env={"COLUMNS": "100"})
        assert table.exit_code == 0
        assert re.search(r"in_msgs\s+│\s+100 │", table.output)
        once = CliRunner().invoke(
            app,
            ["top", "-m", broker_monitor_url, "--once", "-d", "0.1", "-s", "in_msgs"],
            env={"COLUMNS": "200"},
        )
        assert once.exit_code == 0, once.output
        assert "counted" in once.output and "sorted by in_msgs" in once.output
        bad = CliRunner().invoke(app, ["top", "-m", broker_monitor_url, "--once", "-s", "x"])
        assert bad.exit_code == 2 and "sort must be one of" in bad.output


def test_stats_says_what_to_check_when_nothing_answers() -> None:
    result = CliRunner().invoke(app, ["stats", "-m", "http://127.0.0.1:1"])
    assert result.exit_code == 1
    assert "cannot read http://127.0.0.1:1/varz" in result.output
    assert "--monitor-port" in result.output


def test_serve_monitor_port_turns_monitoring_on() -> None:
    command = [sys.executable, "-m", "broker", "serve", "--port", "0", "--monitor-port", "0"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert process.stderr is not None
            url = None
            for line in process.stderr:
                if match := re.search(r"monitoring on (http://\S+)", line):
                    url = match.group(1)
                    break
            assert url is not None
            with urllib.request.urlopen(url + "/healthz", timeout=WAIT) as response:
                assert json.load(response) == {"status": "ok"}
        finally:
            process.terminate()
            process.wait(WAIT)
    assert process.returncode == 0


def test_monitor_port_is_checked() -> None:
    result = CliRunner().invoke(app, ["serve", "--monitor-port", "70000"])
    assert result.exit_code == 2
    assert "--monitor-port" in result.output and "65535" in result.output
