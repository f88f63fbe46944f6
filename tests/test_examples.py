"""The examples without a test elsewhere run as a user would run them, as subprocesses.

(examples/sync_client.py and async_client.py are run by tests/test_sync.py.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from broker.testing import BrokerThread

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_wire_walkthrough(broker_thread: BrokerThread) -> None:
    result = run_example(str(EXAMPLES / "wire_walkthrough.py"), "--port", str(broker_thread.port))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Welcome(info={'version': 1")
    assert lines[1:] == [
        "Msg(sid=1, subject='greetings.world', payload=b'hello', reply_to=None, headers=None, "
        "retained=False)",
        "Pong()",
    ]


def test_testing_example() -> None:
    result = run_example(str(EXAMPLES / "testing_example.py"))
    assert result.returncode == 0, result.stderr + result.stdout
