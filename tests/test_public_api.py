"""The names `import broker` offers are a promise: this pins them, so a change is deliberate."""

from __future__ import annotations

import broker


def test_public_names_are_pinned() -> None:
    assert sorted(broker.__all__) == sorted(
        [
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
    )
    for name in broker.__all__:
        assert getattr(broker, name) is not None


def test_errors_share_one_base() -> None:
    for name in ("ConnectionClosed", "NoResponders", "PayloadTooLarge", "BadSubject"):
        assert issubclass(getattr(broker, name), broker.BrokerError)
    assert issubclass(broker.BadSubject, ValueError)
