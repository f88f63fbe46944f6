"""broker: a pub/sub message broker for Python, built on Trio structured concurrency.

This module only re-exports the public names, lazily (PEP 562): ``import broker.protocol`` or
``import broker.subjects`` loads no trio or anyio, and each name below is imported from its
module the first time it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .client import Client, Message, Subscription, connect
    from .config import Config, ConfigError, load_config
    from .errors import (
        AuthFailed,
        BadSid,
        BadSubject,
        BrokerError,
        ConnectionClosed,
        ErrorCode,
        MessagesDropped,
        NoResponders,
        PayloadTooLarge,
        PermissionDenied,
        ProtocolViolation,
        ReconnectBufferFull,
        RetainedLimitExceeded,
        ServerShuttingDown,
        SlowConsumer,
        StaleConnection,
        SubscriptionClosed,
        TooManySubscriptions,
    )
    from .server import Server, run, serve
    from .stats import Statistics
    from .subjects import SubjectError

#: Where each public name lives.
_HOMES: dict[str, str] = {
    **dict.fromkeys(("Client", "Message", "Subscription", "connect"), ".client"),
    **dict.fromkeys(("Config", "ConfigError", "load_config"), ".config"),
    **dict.fromkeys(
        (
            "AuthFailed",
            "BadSid",
            "BadSubject",
            "BrokerError",
            "ConnectionClosed",
            "ErrorCode",
            "MessagesDropped",
            "NoResponders",
            "PayloadTooLarge",
            "PermissionDenied",
            "ProtocolViolation",
            "ReconnectBufferFull",
            "RetainedLimitExceeded",
            "ServerShuttingDown",
            "SlowConsumer",
            "StaleConnection",
            "SubscriptionClosed",
            "TooManySubscriptions",
        ),
        ".errors",
    ),
    **dict.fromkeys(("Server", "run", "serve"), ".server"),
    "Statistics": ".stats",
    "SubjectError": ".subjects",
}

__all__ = [
    "AuthFailed",
    "BadSid",
    "BadSubject",
    "BrokerError",
    "Client",
    "Config",
    "ConfigError",
    "ConnectionClosed",
    "ErrorCode",
    "Message",
    "MessagesDropped",
    "NoResponders",
    "PayloadTooLarge",
    "PermissionDenied",
    "ProtocolViolation",
    "ReconnectBufferFull",
    "RetainedLimitExceeded",
    "Server",
    "ServerShuttingDown",
    "SlowConsumer",
    "StaleConnection",
    "Statistics",
    "SubjectError",
    "Subscription",
    "SubscriptionClosed",
    "TooManySubscriptions",
    "__version__",
    "connect",
    "load_config",
    "run",
    "serve",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'broker' has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
