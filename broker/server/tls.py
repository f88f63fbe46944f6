"""TLS for listeners: the server's `ssl.SSLContext` from ``[tls]``, and each connection's
handshake and client-certificate names.

Any listener can use `server_context`: the native listener wraps each accepted stream in
`trio.SSLStream` at once (no plaintext fallback); the NATS listener upgrades after its INFO
line. The handshake runs in the transport, under the handshake deadline, so a client that
never completes it holds its slot no longer than one that never sends HELLO. A plaintext
client on a TLS port fails that handshake and is closed; nothing else notices.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from ..auth import certificate_names
from ..config import ConfigError, TlsConfig

if TYPE_CHECKING:
    from .transport import Transport

__all__ = ["batched_receive", "peer_certificate_names", "server_context", "tls_handshake"]

log = logging.getLogger("broker.server.tls")


def server_context(config: TlsConfig) -> ssl.SSLContext:
    """The server side of ``[tls]``: TLS 1.2 or later, its certificate, and client checks.

    With ``ca_file`` a client certificate is verified against it when one is presented (and
    can then stand for a user); with ``verify = true`` one is required.

    Raises:
        ConfigError: A file cannot be read, or the key does not match the certificate; the
            message names the key (``tls.cert_file``) and the reason.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.cert_file, config.key_file)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            f"cannot load the certificate {config.cert_file!r} with the key"
            f" {config.key_file!r}: {_reason(error)}",
            key="tls.cert_file",
        ) from None
    if config.ca_file is not None:
        try:
            context.load_verify_locations(cafile=config.ca_file)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(
                f"cannot load the CA file {config.ca_file!r}: {_reason(error)}", key="tls.ca_file"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED if config.verify else ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


async def tls_handshake(transport: Transport) -> bool:
    """Run the TLS handshake of a new connection; False (logged) if it failed.

    The caller holds the handshake deadline. A failure is the client's problem (plain TCP on
    a TLS port, an untrusted or expired certificate, none where one is required): it is
    counted as a refused connection and logged at debug level, since a port scanner would
    otherwise fill the log.
    """
    stream = transport.stream
    assert isinstance(stream, trio.SSLStream)
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as error:
        transport.hub.counters.refused_connections += 1
        log.debug("%s: TLS handshake failed: %s", transport.peer, error.__cause__ or error)
        return False
    return True


def peer_certificate_names(stream: trio.abc.Stream) -> tuple[str, ...]:
    """The names of the client certificate verified on `stream` (none if not TLS, or none)."""
    if not isinstance(stream, trio.SSLStream):
        return ()
    try:
        cert: dict[str, Any] | None = stream.getpeercert()
    except (ValueError, trio.BrokenResourceError):
        return ()
    if not cert:
        return ()
    return certificate_names(cert.get("subject", ()), cert.get("subjectAltName", ()))


def batched_receive(
    stream: trio.abc.Stream,
) -> Callable[[int], Awaitable[bytes | bytearray]] | None:
    """For a TLS stream, a ``receive_some`` that returns every whole record already received.

    OpenSSL hands out one TLS record (at most 16 KiB) per read, so `trio.SSLStream` returns at
    most 16 KiB per call however much arrived: a reader would take four turns (and four
    batches for its subscribers' writers) for what one 64 KiB read of plain TCP brings. This
    takes one `receive_some`, then decrypts the records that read left buffered, without
    waiting, up to `max_bytes`. It reads trio's SSLStream's own buffers, so it checks that
    they are what it expects and returns None (use ``receive_some``) otherwise; anything
    unusual (an alert, a close_notify, half a record) is left for the next ``receive_some``.
    """
    if not isinstance(stream, trio.SSLStream):
        return None
    ssl_object = getattr(stream, "_ssl_object", None)
    incoming = getattr(stream, "_incoming", None)
    if not isinstance(ssl_object, ssl.SSLObject) or not isinstance(incoming, ssl.MemoryBIO):
        return None
    receive_some = stream.receive_some

    async def receive(max_bytes: int) -> bytes | bytearray:
        data = await receive_some(max_bytes)
        if not data or not incoming.pending:
            return data
        parts = [data]
        size = len(data)
        while size < max_bytes and incoming.pending:
            try:
                chunk = ssl_object.read(max_bytes - size)
            except ssl.SSLError:  # half a record (want read), or anything for trio to handle
                break
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)

    return receive
