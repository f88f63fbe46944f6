"""Credential checks as plain functions: tokens, users, bcrypt or plain text, certificates,
the same answer whatever was wrong, reload validity, and the failure log's rate limit."""

from __future__ import annotations

import pytest

from broker.auth import (
    BCRYPT_MAX_PASSWORD,
    Authenticator,
    AuthFailure,
    Credentials,
    Identity,
    certificate_names,
    hash_password,
    is_bcrypt_hash,
)
from broker.config import AuthConfig, ConfigError, PermissionsConfig, RulesConfig, UserConfig

HASHED = hash_password("orders-secret", rounds=4)
TOKEN_HASH = hash_password("tok", rounds=4)

CONFIG = AuthConfig(
    token=TOKEN_HASH,
    users=(
        UserConfig(
            user="orders",
            password=HASHED,
            permissions=PermissionsConfig(publish=RulesConfig(allow=("orders.>",))),
        ),
        UserConfig(user="plain", password="plain-secret"),
        UserConfig(user="device-1"),
    ),
)


def identity(result: Identity | AuthFailure) -> Identity:
    assert isinstance(result, Identity), result
    return result


def failure(result: Identity | AuthFailure) -> str:
    assert isinstance(result, AuthFailure), result
    return result.reason


def test_users_with_bcrypt_and_plain_text_passwords() -> None:
    auth = Authenticator(CONFIG)
    assert auth.slow
    orders = identity(auth.check(Credentials(user="orders", password="orders-secret")))
    assert (orders.user, orders.method, orders.name) == ("orders", "password", "orders")
    assert orders.permissions.may_publish("orders.x") and not orders.permissions.may_publish("x")
    plain = identity(auth.check(Credentials(user="plain", password="plain-secret")))
    assert plain.permissions is auth.permissions_of(None)  # the default rules
    assert auth.plain_text_secrets() == ["auth.users[1].password (plain)"]


@pytest.mark.parametrize(
    "credentials",
    [
        Credentials(),
        Credentials(user="orders", password="wrong"),
        Credentials(user="orders"),
        Credentials(password="orders-secret"),
        Credentials(user="nobody", password="orders-secret"),
        Credentials(user="plain", password="plain-secreT"),
        Credentials(user="device-1", password="x"),
        Credentials(token="wrong"),
        Credentials(user="orders", password="x" * (BCRYPT_MAX_PASSWORD + 1)),
        Credentials(certificate_names=("stranger",)),
    ],
)
def test_every_wrong_credential_fails(credentials: Credentials) -> None:
    assert failure(Authenticator(CONFIG).check(credentials))


def test_token_and_certificate() -> None:
    auth = Authenticator(CONFIG)
    token = identity(auth.check(Credentials(token="tok")))
    assert (token.user, token.method, token.name) == (None, "token", "<token>")
    device = identity(auth.check(Credentials(certificate_names=("x.example", "device-1"))))
    assert (device.user, device.method) == ("device-1", "certificate")
    # A password given with a certificate is checked: explicit credentials come first.
    assert failure(
        auth.check(Credentials(user="orders", password="no", certificate_names=("device-1",)))
    )


def test_no_token_configured_refuses_any_token() -> None:
    auth = Authenticator(AuthConfig(users=(UserConfig(user="a", password="b"),)))
    assert not auth.slow
    assert failure(auth.check(Credentials(token="b"))) == (
        "a token was given but no token is configured"
    )


def test_still_valid_after_a_reload() -> None:
    auth = Authenticator(CONFIG)
    orders = identity(auth.check(Credentials(user="orders", password="orders-secret")))
    token = identity(auth.check(Credentials(token="tok")))
    device = identity(auth.check(Credentials(certificate_names=("device-1",))))
    same = Authenticator(CONFIG)
    assert same.still_valid(orders) is not None and same.still_valid(token) is not None
    assert same.still_valid(device) is not None
    narrower = AuthConfig(
        users=(
            UserConfig(
                user="orders",
                password=HASHED,
                permissions=PermissionsConfig(publish=RulesConfig(allow=("orders.eu.>",))),
            ),
        )
    )
    changed = Authenticator(narrower)
    kept = changed.still_valid(orders)
    assert kept is not None and not kept.permissions.may_publish("orders.us")
    assert changed.still_valid(token) is None  # the token was removed
    assert changed.still_valid(device) is None  # the user was removed
    moved = Authenticator(AuthConfig(users=(UserConfig(user="orders", password="new"),)))
    assert moved.still_valid(orders) is None  # the password changed


def test_hash_password() -> None:
    hashed = hash_password("s3cret", rounds=4)
    assert is_bcrypt_hash(hashed) and hashed.startswith("$2b$04$")
    with pytest.raises(ValueError, match="at most 72 bytes"):
        hash_password("é" * 37)
    with pytest.raises(ValueError, match="must not be empty"):
        hash_password("")


def test_config_refuses_a_broken_hash() -> None:
    with pytest.raises(ConfigError, match="looks like a bcrypt hash"):
        UserConfig(user="a", password="$2b$12$short")


def test_certificate_names() -> None:
    subject = ((("countryName", "US"),), (("commonName", "device-1"),))
    sans = (("DNS", "device-1.example"), ("IP Address", "127.0.0.1"), ("DNS", "device-1"))
    assert certificate_names(subject, sans) == ("device-1", "device-1.example")


def test_the_shipped_config_documents_a_valid_auth_and_tls_example() -> None:
    """config/broker.toml's commented [auth] and [tls] example parses once uncommented."""
    import tomllib
    from pathlib import Path

    from broker.config import config_from_mapping

    text = (Path(__file__).resolve().parent.parent / "config" / "broker.toml").read_text()
    block = text[text.index("# [auth]") :]
    lines = [line[2:] if line.startswith("# ") else "" for line in block.splitlines()]
    example = "\n".join(lines).replace("$2b$12$...", hash_password("x", rounds=4))
    config = config_from_mapping(tomllib.loads(example))
    assert config.auth is not None and [u.user for u in config.auth.users] == [
        "orders",
        "svc",
        "auditor",
        "device-17",
    ]
    assert config.tls is not None and config.tls.ca_file == "ca.pem"
