"""broker: a pub/sub message broker for Python, built on Trio structured concurrency.

This module only re-exports the public names.
"""

from __future__ import annotations

from ._version import __version__
from .client import Client, Message, Subscription, connect
from .config import Config, ConfigError, load_config
from .errors import (
    BadSid,
    BadSubject,
    BrokerError,
    ConnectionClosed,
    MessagesDropped,
    NoResponders,
    PayloadTooLarge,
    ProtocolViolation,
    ReconnectBufferFull,
    RetainedLimitExceeded,
    ServerShuttingDown,
    SlowConsumer,
    StaleConnection,
    SubscriptionClosed,
    TooManySubscriptions,
)
from .protocol import ErrorCode
from .server import Server, run, serve
from .stats import Statistics
from .subjects import SubjectError

__all__ = [
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
