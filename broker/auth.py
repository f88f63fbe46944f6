"""Credential checks: who a new client is, from ``[auth]``, and with which permissions.

A client proves who it is with a shared token, a user and password, or (over TLS) a client
certificate whose subject CN or a SAN equals a configured user name (NATS's
``verify_and_map``). Secrets in the config are bcrypt hashes (``broker passwd`` makes one) or
plain text; either is compared in constant time, and an unknown user costs the same bcrypt
check as a known one, so neither the answer nor its timing says what was wrong.

`Authenticator.check` is blocking when the config holds a bcrypt hash (`Authenticator.slow`):
the server runs it in a worker thread. It returns an `Identity` or an `AuthFailure`, whose
reason is for the operator's log, never for the client.

Pure: no trio, anyio or socket (bcrypt is imported on first use).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal, final

from .config import AuthConfig, UserConfig
from .permissions import Permissions

__all__ = [
    "BCRYPT_MAX_PASSWORD",
    "AuthFailure",
    "Authenticator",
    "Credentials",
    "Identity",
    "certificate_names",
    "hash_password",
    "is_bcrypt_hash",
]

#: bcrypt uses only a password's first 72 bytes (and bcrypt 5 refuses longer ones).
BCRYPT_MAX_PASSWORD: Final = 72
#: The cost `hash_password` uses by default: about a quarter of a second on a current core.
DEFAULT_BCRYPT_ROUNDS: Final = 12

_BCRYPT_HASH: Final = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")


def is_bcrypt_hash(secret: str) -> bool:
    """Whether a configured secret is a bcrypt hash (``$2b$12$`` and 53 characters)."""
    return _BCRYPT_HASH.fullmatch(secret) is not None


def hash_password(password: str, *, rounds: int = DEFAULT_BCRYPT_ROUNDS) -> str:
    """A bcrypt hash of `password`, for ``password`` or ``token`` in ``[auth]``.

    Raises:
        ValueError: The password is empty or longer than 72 bytes in UTF-8 (bcrypt would
            ignore the rest).
    """
    import bcrypt

    data = password.encode("utf-8")
    if not data:
        raise ValueError("the password must not be empty")
    if len(data) > BCRYPT_MAX_PASSWORD:
        raise ValueError(
            f"bcrypt uses at most {BCRYPT_MAX_PASSWORD} bytes of a password, got {len(data)}"
        )
    return bcrypt.hashpw(data, bcrypt.gensalt(rounds=rounds)).decode("ascii")


def _secret_matches(given: str, configured: str) -> bool:
    """Compare a client's secret with a configured one, in constant time for plain text."""
    data = given.encode("utf-8", "surrogatepass")
    if is_bcrypt_hash(configured):
        import bcrypt

        if len(data) > BCRYPT_MAX_PASSWORD or not data:
            return False
        try:
            return bcrypt.checkpw(data, configured.encode("ascii"))
        except ValueError:
            return False
    return hmac.compare_digest(data, configured.encode("utf-8", "surrogatepass"))


@final
@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client presented: from its handshake (HELLO, NATS CONNECT) and its TLS session.

    Attributes:
        token: The shared token, or None.
        user: The user name, or None.
        password: The password, or None.
        certificate_names: The subject CN and SANs of a client certificate the TLS layer
            verified against ``ca_file``; empty without one.
    """

    token: str | None = None
    user: str | None = None
    password: str | None = None
    certificate_names: tuple[str, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class Identity:
    """Who an authenticated client is.

    Attributes:
        user: The user name, or None for a token client.
        method: How it proved it.
        permissions: Its rules (shared by every connection of the same user).
        secret: The configured secret it matched (a hash or plain text), so a reload can tell
            whether it still holds; None for a certificate.
    """

    user: str | None
    method: Literal["password", "token", "certificate"]
    permissions: Permissions
    secret: str | None

    @property
    def name(self) -> str:
        """For logs: the user name, or ``"<token>"``."""
        return self.user if self.user is not None else "<token>"


@final
@dataclass(frozen=True, slots=True)
class AuthFailure:
    """A refused check; `reason` is for the operator's log, never sent to the client."""

    reason: str


@final
class Authenticator:
    """Checks credentials against one ``[auth]`` config; replaced whole on a reload.

    Attributes:
        config: The section it was built from.
        slow: Whether `check` may run bcrypt (run it off the event loop).
    """

    __slots__ = ("_decoy", "_default", "_permissions", "_users", "config", "slow")

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self._users = {user.user: user for user in config.users}
        self._default = Permissions.from_config(config.default_permissions)
        #: One Permissions per user with its own rules, so its connections share caches.
        self._permissions = {
            user.user: Permissions.from_config(user.permissions)
            for user in config.users
            if user.permissions is not None
        }
        secrets = [config.token, *(user.password for user in config.users)]
        hashes = [s for s in secrets if s is not None and is_bcrypt_hash(s)]
        self.slow = bool(hashes)
        #: A configured hash to check unknown users against, so they cost the same time.
        self._decoy = hashes[0] if hashes else None

    def plain_text_secrets(self) -> list[str]:
        """Where the config keeps a secret in plain text (for a start-up warning)."""
        found = []
        if self.config.token is not None and not is_bcrypt_hash(self.config.token):
            found.append("auth.token")
        for index, user in enumerate(self.config.users):
            if user.password is not None and not is_bcrypt_hash(user.password):
                found.append(f"auth.users[{index}].password ({user.user})")
        return found

    def permissions_of(self, user: str | None) -> Permissions:
        """A user's permissions, or the default ones (for token clients too)."""
        if user is None:
            return self._default
        return self._permissions.get(user, self._default)

    def check(self, credentials: Credentials) -> Identity | AuthFailure:
        """Who `credentials` prove the client is; blocking when `slow`.

        A user and password are checked first, then a token, then a verified certificate's
        names. Anything wrong is an `AuthFailure`: the client is told only that it failed.
        """
        if credentials.user is not None or credentials.password is not None:
            return self._check_user(credentials.user, credentials.password)
        if credentials.token is not None:
            token = self.config.token
            if token is None:
                self._waste(credentials.token)
                return AuthFailure("a token was given but no token is configured")
            if not _secret_matches(credentials.token, token):
                return AuthFailure("wrong token")
            return Identity(None, "token", self._default, token)
        for name in credentials.certificate_names:
            if name in self._users:
                return Identity(name, "certificate", self.permissions_of(name), None)
        if credentials.certificate_names:
            names = ", ".join(credentials.certificate_names)
            return AuthFailure(f"the client certificate ({names}) names no user")
        return AuthFailure("no credentials")

    def _check_user(self, user: str | None, password: str | None) -> Identity | AuthFailure:
        entry: UserConfig | None = self._users.get(user) if user is not None else None
        given = password if password is not None else ""
        if entry is None or entry.password is None:
            self._waste(given)
            if entry is None:
                return AuthFailure(f"unknown user {user!r}")
            return AuthFailure(f"user {user!r} may only connect with a certificate")
        if not _secret_matches(given, entry.password):
            return AuthFailure(f"wrong password for user {user!r}")
        return Identity(entry.user, "password", self.permissions_of(entry.user), entry.password)

    def _waste(self, given: str) -> None:
        """Spend what a real check would, so a wrong name answers no faster than a right one."""
        if self._decoy is not None:
            _secret_matches(given, self._decoy)

    def still_valid(self, identity: Identity) -> Identity | None:
        """`identity` under this (reloaded) config, or None if it no longer holds.

        A removed user, a changed password or token, or a certificate user removed all end
        it; otherwise its permissions are this config's.
        """
        if identity.method == "token":
            if self.config.token is None or self.config.token != identity.secret:
                return None
            return Identity(None, "token", self._default, identity.secret)
        entry = self._users.get(identity.user or "")
        if entry is None:
            return None
        if identity.method == "password" and entry.password != identity.secret:
            return None
        return Identity(
            entry.user,
            identity.method,
            self.permissions_of(entry.user),
            entry.password if identity.method == "password" else None,
        )


def certificate_names(
    subject: Iterable[Iterable[tuple[str, str]]], alt_names: Iterable[tuple[str, str]]
) -> tuple[str, ...]:
    """The names a certificate stands for: its subject CN, then its DNS, email and URI SANs.

    Takes the shapes of `ssl.SSLSocket.getpeercert`'s ``subject`` and ``subjectAltName``.
    """
    names = [value for rdn in subject for key, value in rdn if key == "commonName"]
    names.extend(value for kind, value in alt_names if kind in ("DNS", "email", "URI"))
    return tuple(dict.fromkeys(names))
