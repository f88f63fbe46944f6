"""How a client connects: the options of `connect`, their defaults and checks, broker URLs.

Each option's default is a named constant here, documented once, and `ConnectOptions`
documents the options once for both `broker.connect` and `broker.sync.connect`.

This module is pure: it imports neither trio, anyio nor the rest of the client.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypedDict, TypeVar, final
from urllib.parse import unquote, urlsplit

from .._checks import check_seconds
from ..config import DEFAULT_HOSTS, DEFAULT_PORT
from ..errors import BrokerError, ConnectionClosed, ServerShuttingDown
from ..subjects import SubjectError, validate_subject

if TYPE_CHECKING:
    import ssl  # imports socket: only for the annotation

__all__ = [
    "CLOSE_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_FLUSH_TIMEOUT",
    "DEFAULT_INBOX_PREFIX",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_MAX_PENDING_BYTES",
    "DEFAULT_MAX_PINGS_OUTSTANDING",
    "DEFAULT_MAX_RECONNECT_DELAY",
    "DEFAULT_NEXT_TIMEOUT",
    "DEFAULT_RECONNECT_BUFFER_SIZE",
    "DEFAULT_RECONNECT_DELAY",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_URL",
    "DEFAULT_WRITE_BUFFER_SIZE",
    "URL_ENV",
    "ClientOptions",
    "ConnectOptions",
    "Target",
    "check_options",
    "document_options",
    "parse_url",
    "resolve_target",
    "resolve_targets",
    "resolve_url",
    "resolve_urls",
]

F = TypeVar("F", bound=Callable[..., Any])

KiB: Final = 1024
MiB: Final = 1024 * KiB

#: The environment variable `connect` reads when given no URL, as the command line does.
URL_ENV: Final = "BROKER_URL"
#: Where `connect` goes when given no URL and $BROKER_URL is unset or empty: the server's
#: default address.
DEFAULT_URL: Final = f"tcp://{DEFAULT_HOSTS[0]}:{DEFAULT_PORT}"

#: Messages one subscription queues for its consumer before dropping the newest.
DEFAULT_MAX_PENDING: Final = 65_536
#: Payload bytes one subscription queues before dropping the newest (a message always fits an
#: empty queue, so one large message is never refused outright).
DEFAULT_MAX_PENDING_BYTES: Final = 64 * MiB
#: Queued, unwritten bytes above which `Client.publish` waits for the writer (backpressure).
DEFAULT_WRITE_BUFFER_SIZE: Final = 1 * MiB
#: Encoded bytes of publishes kept while disconnected, sent after reconnecting.
DEFAULT_RECONNECT_BUFFER_SIZE: Final = 8 * MiB
#: First reconnection delay in seconds; doubles per failed attempt up to the maximum.
DEFAULT_RECONNECT_DELAY: Final = 0.1
DEFAULT_MAX_RECONNECT_DELAY: Final = 5.0
#: Seconds one connection attempt (TCP connect plus HELLO/WELCOME) may take.
DEFAULT_CONNECT_TIMEOUT: Final = 2.0
#: Unanswered PINGs after which the connection is given up as dead.
DEFAULT_MAX_PINGS_OUTSTANDING: Final = 2
#: Seconds a graceful close waits for queued frames to be written and the server to finish.
CLOSE_TIMEOUT: Final = 2.0

# The default limits of the calls that wait, for both clients. The async client applies them
# only when no cancel scope with a deadline surrounds the call (`broker.client.deadlines`).
#: Seconds `request` waits for a reply.
DEFAULT_REQUEST_TIMEOUT: Final = 2.0
#: Seconds `flush` waits for the server's PONG (and, while reconnecting, for the connection).
DEFAULT_FLUSH_TIMEOUT: Final = 5.0
#: Seconds `drain` waits for consumers to finish before closing anyway.
DEFAULT_DRAIN_TIMEOUT: Final = 30.0
#: Seconds a subscription's `next` waits for a message.
DEFAULT_NEXT_TIMEOUT: Final = 1.0

#: Where request replies come back: ``<prefix>.<random>.<n>``. A broker that confines users
#: to their own inboxes (``_INBOX.<user>.>``) needs ``inbox_prefix="_INBOX.<user>"``.
DEFAULT_INBOX_PREFIX: Final = "_INBOX"

#: Hooks may return an awaitable: `broker.connect` awaits it, `broker.sync.connect` does not.
DisconnectedHook: TypeAlias = Callable[[ConnectionClosed], object]
ReconnectedHook: TypeAlias = Callable[[], object]
ShuttingDownHook: TypeAlias = Callable[[ServerShuttingDown], object]
ErrorHook: TypeAlias = Callable[[BrokerError], object]


class ConnectOptions(TypedDict, total=False):
    """The keyword arguments of `broker.connect` and `broker.sync.connect`, all optional.

    Both clients take the same options with the same defaults, checked before connecting (a
    bad value raises `ValueError`, an unknown keyword `TypeError`).

    Keyword Args:
        name: Shown in the server's logs. Default None.
        echo: Whether this client receives its own publishes. Default True.
        token: A shared token for a broker with ``[auth] token``. Default None.
        user: A user name for a broker with ``[[auth.users]]`` (or from the URL,
            ``tcp://user:password@host``). Default None.
        password: That user's password (or from the URL). Default None.
        tls: Connect over TLS: True (the system's CAs, or `tls_ca_file`), an
            `ssl.SSLContext` of your own, or False. A ``tls://`` URL, or any ``tls_*_file``
            option, means True. Default False.
        tls_ca_file: PEM file of the CA that signed the broker's certificate. Default None.
        tls_cert_file: PEM file of this client's certificate, for a broker that verifies
            clients (``[tls] verify``). Default None.
        tls_key_file: Its private key (PEM); None if `tls_cert_file` holds it too.
        tls_hostname: The name the broker's certificate must carry; None (the default)
            checks the URL's host.
        inbox_prefix: Subject prefix of request inboxes, ``<prefix>.<random>.<n>``. Default
            `DEFAULT_INBOX_PREFIX` (``_INBOX``); ``_INBOX.<user>`` for a user confined to its
            own inboxes.
        reconnect: Reconnect when a live connection breaks. The first connection is not
            retried: a wrong address should fail loudly. Default True.
        max_reconnect_attempts: Attempts per outage before giving up; None (the default) for
            no limit.
        reconnect_delay: First delay before an attempt, in seconds; doubles per failure.
            Default `DEFAULT_RECONNECT_DELAY` (0.1).
        max_reconnect_delay: Upper bound on that delay. Default `DEFAULT_MAX_RECONNECT_DELAY`
            (5.0).
        reconnect_buffer_size: Bytes of encoded publishes kept while disconnected. Default
            `DEFAULT_RECONNECT_BUFFER_SIZE` (8 MiB).
        write_buffer_size: Queued bytes above which ``publish`` waits. Default
            `DEFAULT_WRITE_BUFFER_SIZE` (1 MiB).
        connect_timeout: Seconds each connection attempt may take, handshake included (the
            reconnections run in the background, with no caller's cancel scope to bound them).
            Default `DEFAULT_CONNECT_TIMEOUT` (2.0).
        ping_interval: Seconds between our PINGs; None (the default) takes the server's from
            WELCOME.
        max_pings_outstanding: Unanswered PINGs after which the connection is dead. Default
            `DEFAULT_MAX_PINGS_OUTSTANDING` (2).
        on_disconnected: ``on_disconnected(error)``: called with the `ConnectionClosed` (or
            subclass: `StaleConnection`, `SlowConsumer`, ...) that ended a live connection;
            not when the client itself closes.
        on_reconnected: ``on_reconnected()``: called with no arguments once a new connection
            is up, every subscription is in place again and what was published meanwhile has
            been sent (a PING round trip proves it). Not called for the first connection.
        on_shutting_down: ``on_shutting_down(error)``: called with the `ServerShuttingDown`
            the server sent before closing (``on_disconnected`` follows).
        on_error: ``on_error(error)``: called with a `BrokerError` that belongs to no caller:
            `MessagesDropped`, a publish the server refused (`RetainedLimitExceeded`,
            `BadSubject`), a subscription it refused (`TooManySubscriptions`, `BadSubject`,
            with its ``sid`` in ``details``). They are logged when it is None.

    Hooks run one at a time, in order, so a slow hook never stalls the reader, and an exception
    from one is logged. None is given the client: to use it in a hook, close over it (a
    closure, or ``functools.partial(hook, client)``). `broker.connect` takes sync or async
    callables and runs them in a task of its own; `broker.sync.connect` runs plain callables in
    a worker thread, where they may call the client's blocking methods.
    """

    name: str | None
    echo: bool
    token: str | None
    user: str | None
    password: str | None
    tls: bool | ssl.SSLContext
    tls_ca_file: str | None
    tls_cert_file: str | None
    tls_key_file: str | None
    tls_hostname: str | None
    inbox_prefix: str
    reconnect: bool
    max_reconnect_attempts: int | None
    reconnect_delay: float
    max_reconnect_delay: float
    reconnect_buffer_size: int
    write_buffer_size: int
    connect_timeout: float
    ping_interval: float | None
    max_pings_outstanding: int
    on_disconnected: DisconnectedHook | None
    on_reconnected: ReconnectedHook | None
    on_shutting_down: ShuttingDownHook | None
    on_error: ErrorHook | None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ClientOptions:
    """`ConnectOptions` with their defaults, checked: what a client runs with.

    Raises:
        ValueError: A value breaks its rule (on construction, so before connecting).
    """

    name: str | None = None
    echo: bool = True
    token: str | None = None
    user: str | None = None
    password: str | None = None
    tls: bool | ssl.SSLContext = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_hostname: str | None = None
    inbox_prefix: str = DEFAULT_INBOX_PREFIX
    reconnect: bool = True
    max_reconnect_attempts: int | None = None
    reconnect_delay: float = DEFAULT_RECONNECT_DELAY
    max_reconnect_delay: float = DEFAULT_MAX_RECONNECT_DELAY
    reconnect_buffer_size: int = DEFAULT_RECONNECT_BUFFER_SIZE
    write_buffer_size: int = DEFAULT_WRITE_BUFFER_SIZE
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    ping_interval: float | None = None
    max_pings_outstanding: int = DEFAULT_MAX_PINGS_OUTSTANDING
    on_disconnected: DisconnectedHook | None = None
    on_reconnected: ReconnectedHook | None = None
    on_shutting_down: ShuttingDownHook | None = None
    on_error: ErrorHook | None = None

    def __post_init__(self) -> None:
        for name in (
            "token",
            "user",
            "password",
            "tls_ca_file",
            "tls_cert_file",
            "tls_key_file",
            "tls_hostname",
        ):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a str or None, got {type(value).__name__}")
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_key_file needs tls_cert_file, the certificate it goes with")
        if self.tls_ca_file or self.tls_cert_file:
            if self.tls is False:
                object.__setattr__(self, "tls", True)
            elif self.tls is not True:
                raise ValueError(
                    "give either an ssl.SSLContext as tls or tls_*_file options, not both"
                )
        try:
            validate_subject(self.inbox_prefix)
        except SubjectError as error:
            raise ValueError(f"inbox_prefix must be a subject: {error}") from None
        if self.max_reconnect_attempts is not None:
            require_non_negative_int("max_reconnect_attempts", self.max_reconnect_attempts)
        check_seconds("reconnect_delay", self.reconnect_delay)
        check_seconds("max_reconnect_delay", self.max_reconnect_delay)
        if self.max_reconnect_delay < self.reconnect_delay:
            raise ValueError(
                f"max_reconnect_delay must be >= reconnect_delay ({self.reconnect_delay}), "
                f"got {self.max_reconnect_delay}"
            )
        require_non_negative_int("reconnect_buffer_size", self.reconnect_buffer_size)
        require_non_negative_int("write_buffer_size", self.write_buffer_size)
        check_seconds("connect_timeout", self.connect_timeout)
        if self.ping_interval is not None:
            check_seconds("ping_interval", self.ping_interval)
        require_positive_int("max_pings_outstanding", self.max_pings_outstanding)
        # Seconds are kept as floats, so messages show them alike whichever was given.
        for name in ("reconnect_delay", "max_reconnect_delay", "connect_timeout"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.ping_interval is not None:
            object.__setattr__(self, "ping_interval", float(self.ping_interval))


_KEYWORDS: Final = frozenset(ConnectOptions.__annotations__)


def check_options(options: ConnectOptions, caller: str) -> ClientOptions:
    """`options` as given to `caller` (``connect``), checked and completed with defaults.

    Raises:
        TypeError: An unknown keyword, as Python says it for a function that lists its own.
        ValueError: As `ClientOptions`.
    """
    for key in options:
        if key not in _KEYWORDS:
            raise TypeError(f"{caller}() got an unexpected keyword argument {key!r}")
    return ClientOptions(**options)


def document_options(fn: F) -> F:
    """Append the keyword arguments documented in `ConnectOptions` to `fn`'s docstring.

    So ``help(broker.connect)`` lists them, as it did when they were in the signature; the
    text is written once, in `ConnectOptions`.
    """
    doc, options = fn.__doc__, ConnectOptions.__doc__
    if doc is not None and options is not None:  # None under python -OO
        # Cleaned first: Python 3.13 strips docstrings' indentation when compiling, 3.11 not.
        options = inspect.cleandoc(options)
        section = options[options.index("Keyword Args:") :]
        fn.__doc__ = f"{inspect.cleandoc(doc)}\n\n{section}\n"
    return fn


def require_positive_int(name: str, value: object) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def require_non_negative_int(name: str, value: object) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")


def resolve_url(url: str | None) -> tuple[str, int]:
    """Host and port of `url`, or when it is None of ``$BROKER_URL``, or else of `DEFAULT_URL`.

    The same rule as the command line's ``--url``: an empty ``$BROKER_URL`` counts as unset.

    Raises:
        ValueError: As `parse_url`; for an address from the environment, it says so.
    """
    if url is not None:
        return parse_url(url)
    from_env = os.environ.get(URL_ENV)
    if not from_env:
        return parse_url(DEFAULT_URL)
    try:
        return parse_url(from_env)
    except ValueError as error:
        raise ValueError(f"${URL_ENV}: {error}") from None


def resolve_urls(url: str | Sequence[str] | None) -> list[tuple[str, int]]:
    """Host and port of every broker `resolve_targets` names."""
    return [(target.host, target.port) for target in resolve_targets(url)]


def resolve_targets(url: str | Sequence[str] | None) -> list[Target]:
    """Every broker to try, in order: of `url`, else ``$BROKER_URL``, else the default.

    Several nodes of one cluster are a list (``["tcp://a:5878", "tcp://b:5878"]``) or one
    string with commas (``"tcp://a:5878,tcp://b:5878"``, as ``--url`` and ``$BROKER_URL``
    take them). A client connects to the first that answers and, when that connection breaks,
    fails over to the next.

    Raises:
        ValueError: As `parse_url`, for any of them; or no address at all.
        TypeError: `url` is neither a str nor a sequence of str.
    """
    if url is None:
        from_env = os.environ.get(URL_ENV)
        if not from_env:
            return [parse_target(DEFAULT_URL)]
        try:
            return resolve_targets(from_env)
        except ValueError as error:
            raise ValueError(f"${URL_ENV}: {error}") from None
    if isinstance(url, str):
        items = [part.strip() for part in url.split(",")] if "," in url else [url]
    elif isinstance(url, Sequence):
        items = list(url)
    else:
        raise TypeError(f"url must be a str or a list of str, got {type(url).__name__}")
    if not items:
        raise ValueError("url must name at least one broker, got an empty list")
    return [parse_target(item) for item in items]


@final
@dataclass(frozen=True, slots=True)
class Target:
    """A broker URL taken apart: where, whether over TLS, and the credentials it carries."""

    host: str
    port: int
    tls: bool = False
    user: str | None = None
    password: str | None = None

    def apply(self, options: ClientOptions) -> ClientOptions:
        """`options` completed by the URL: ``tls://`` turns TLS on, and its ``user:password@``
        fills the credentials not given as options.
        """
        changes: dict[str, Any] = {}
        if self.tls and options.tls is False:
            changes["tls"] = True
        if self.user is not None and options.user is None:
            changes["user"] = self.user
        if self.password is not None and options.password is None:
            changes["password"] = self.password
        return dataclasses.replace(options, **changes) if changes else options


def parse_url(url: str) -> tuple[str, int]:
    """Split a broker address into host and port (see `parse_target` for the whole of it).

    Raises:
        ValueError: As `parse_target`.
    """
    target = parse_target(url)
    return target.host, target.port


def parse_target(url: str) -> Target:
    """Take a broker URL apart.

    Accepts ``tcp://host:port``, ``tls://host:port``, ``host:port`` and ``[::1]:port``, with
    an optional ``user:password@`` (percent-encoded) before the host; the port defaults to the
    server's (`broker.config.DEFAULT_PORT`).

    Raises:
        ValueError: Another scheme, no host, a bad port, or a path, query or fragment.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}")
    parts = urlsplit(url if "://" in url else "tcp://" + url)
    if parts.scheme not in ("tcp", "tls"):
        raise ValueError(
            f"broker URLs use the tcp scheme (tcp://host:port), or tls for TLS, got {url!r}"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"the port must be an int between 0 and 65535 in {url!r}") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"a broker URL needs a host, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"a broker URL is only tcp://[user:password@]host:port, got {url!r}")
    return Target(
        host,
        DEFAULT_PORT if port is None else port,
        tls=parts.scheme == "tls",
        user=None if parts.username is None else unquote(parts.username),
        password=None if parts.password is None else unquote(parts.password),
    )


def resolve_target(url: str | None) -> Target:
    """`resolve_url`, keeping the scheme and credentials (see `parse_target`)."""
    if url is not None:
        return parse_target(url)
    from_env = os.environ.get(URL_ENV)
    if not from_env:
        return parse_target(DEFAULT_URL)
    try:
        return parse_target(from_env)
    except ValueError as error:
        raise ValueError(f"${URL_ENV}: {error}") from None
