"""broker: a pub/sub message broker for Python, built on Trio structured concurrency.

This module only re-exports the public names.
"""

from __future__ import annotations

from ._version import __version__
from .config import Config, ConfigError, load_config
from .protocol import ErrorCode
from .server import Server, run, serve
from .stats import Statistics
from .subjects import SubjectError

__all__ = [
    "Config",
    "ConfigError",
    "ErrorCode",
    "Server",
    "Statistics",
    "SubjectError",
    "__version__",
    "load_config",
    "run",
    "serve",
]
