"""Pure means pure at import: the core modules load no I/O library, checked in a fresh process.

A module that imports trio, anyio, asyncio or socket (even through `broker/__init__`) cannot be
used by a codec-only tool or tested as plain functions, and `import broker` must stay cheap.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE_MODULES = (
    "broker",
    "broker.config",
    "broker.message",
    "broker.monitoring",
    "broker.errors",
    "broker.hub",
    "broker.protocol",
    "broker.protocol.native",
    "broker.protocol.nats",
    "broker.retained",
    "broker.routing",
    "broker.stats",
    "broker._text",
    "broker.peerlog",
    "broker._memory",
    "broker.subjects",
    "broker.permissions",
    "broker.auth",
    "broker.cluster",
    "broker.cluster.interest",
    "broker.cluster.wire",
)

_IO = ("trio", "anyio", "asyncio", "socket")


@pytest.mark.parametrize("module", PURE_MODULES)
def test_module_imports_no_io_library(module: str) -> None:
    probe = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(sorted(set(sys.modules) & {set(_IO)!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "[]", f"{module} loads {done.stdout.strip()}"


def test_lazy_names_resolve_and_load_the_io_side_only_then() -> None:
    probe = (
        "import sys, broker\n"
        "assert 'trio' not in sys.modules\n"
        "assert broker.Server.__name__ == 'Server'\n"
        "print('trio' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "True"
