"""The README's first-hour commands, run as written against a real `broker serve` process.

The serve command comes from the Quickstart and the client commands from "Command line", both
read out of README.md, so the README cannot drift from what works. `.ci/run` installs into a
fresh virtual environment with the README's own install command, and this test then walks
through serve, sub, pub, request and a retained pub from there. (The testing snippets run in
an empty project in tests/test_readme.py.) The only change to a command is the port: the server
gets ``--port 0`` and the clients ``--url``, so the walk-through never collides with a broker
already on 5878.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import trio
from test_serve_process import broker_process

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _sh_lines(heading: str) -> list[str]:
    """Every line of the ```sh blocks under a README heading."""
    section = README.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def _command(line: str) -> list[str]:
    """A README command as argv for this interpreter (`broker ...` -> `python -m broker ...`)."""
    argv = shlex.split(line, comments=True)
    assert argv[0] == "broker", line
    return [sys.executable, "-m", "broker", *argv[1:]]


def _line(heading: str, start: str) -> str:
    (found,) = [line for line in _sh_lines(heading) if line.startswith(start)]
    return found


async def test_the_readme_walkthrough_serve_sub_pub_request_retain() -> None:
    serve = _line("## Quickstart", "pip install -e . && broker serve")
    serve_argv = shlex.split(serve.split("&&", 1)[1])
    assert serve_argv[:2] == ["broker", "serve"]
    with trio.fail_after(90):
        async with broker_process(*serve_argv[2:]) as (process, port, log):
            url = ["--url", f"tcp://127.0.0.1:{port}"]
            sub = await trio.lowlevel.open_process(
                [*_command(_line("## Command line", "broker sub 'orders.>'")), *url],
                stdout=subprocess.PIPE,
            )
            try:
                # Publishes before the subscription is in place reach nobody, so publish (as
                # the README writes it) until the subscriber has its two messages and exits.
                publish = [*_command(_line("## Command line", "broker pub orders.created")), *url]
                while sub.poll() is None:
                    await trio.run_process(publish, capture_stdout=True)
                assert sub.stdout is not None
                out = bytearray()
                while chunk := await sub.stdout.receive_some():
                    out += chunk
            finally:
                if sub.returncode is None:
                    sub.kill()
                await sub.wait()
            assert sub.returncode == 0
            messages = [json.loads(line) for line in out.decode().splitlines()]
            assert len(messages) == 2
            for message in messages:
                assert message["subject"] == "orders.created"
                assert message["payload"] == '{"id": 1}'
                assert message["headers"] == {"source": "cli"}

            request = [*_command(_line("## Command line", "broker request time.now")), *url]
            refused = await trio.run_process(request, capture_stderr=True, check=False)
            assert refused.returncode == 3, refused.stderr  # README: 3 is "no responders"

            retain = [*_command(_line("## Command line", "broker pub config.mode")), *url]
            await trio.run_process(retain, capture_stdout=True)
            later = [sys.executable, "-m", "broker", "sub", "config.mode", "--count", "1"]
            kept = await trio.run_process([*later, "--json", *url], capture_stdout=True)
            message = json.loads(kept.stdout)
            assert (message["payload"], message["retained"]) == ("fast", True)

            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0, log.decode()
