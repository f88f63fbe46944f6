"""The monitoring endpoint over HTTP: a small ASGI app, served by hypercorn on trio.

Routes: ``/healthz``, ``/varz``, ``/connz``, ``/subsz`` (JSON, as `broker.monitoring` builds
them) and ``/metrics`` (Prometheus text, `broker.server.metrics`). GET and HEAD only.

It runs in the server's own trio loop, so it is built never to take the broker's time:

- at most ``max_connections`` HTTP connections at once; one more is answered 503 and closed
  without being read, so a scraper gone wrong cannot take the broker's file descriptors;
- each read and each idle keep-alive wait is bounded by ``request_timeout`` (hypercorn's
  ``read_timeout`` and ``keep_alive_timeout``), and each write too (`_BoundedStream`): a client
  that stops reading is cut off, rather than holding a task that shutdown would wait for;
- request heads are bounded by hypercorn (16 KiB) and bodies are never read;
- every answer is built synchronously from bounded data (`broker.monitoring.CONNZ_MAX_LIMIT`).

hypercorn's per-connection server (`TCPServer`) is driven from our own accept loop rather than
through ``hypercorn.trio.serve``: that is what lets the connection count be bounded, the
listener be opened (and its errors reported) like the broker's own, and the endpoint stop with
the server's nursery. That class is hypercorn's internal API, hence the narrow version pin.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, cast, final
from urllib.parse import parse_qsl

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIFramework, ConnectionState
from hypercorn.utils import wrap_app

from ..monitoring import QueryError
from .metrics import CONTENT_TYPE, BrokerCollector, render
from .transport import refuse

if TYPE_CHECKING:
    from .server import Server

__all__ = ["MonitoringApp", "serve_http"]

log = logging.getLogger("broker.server.http")

_Scope = dict[str, Any]
_Receive = Callable[[], Awaitable[dict[str, Any]]]
_Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON: Final = b"application/json"
_BUSY_BODY: Final = b'{"status": "unavailable", "error": "too many monitoring connections"}\n'
#: The whole answer to a connection past ``max_connections``, sent without reading its request.
_BUSY: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)
#: HTTP/2 streams one connection may have open at once (h2c upgrades are hypercorn's).
_H2_STREAMS: Final = 4
_ENDPOINTS: Final = ("/healthz", "/varz", "/connz", "/subsz", "/metrics")


@final
class MonitoringApp:
    """The ASGI application: one route per endpoint, each answered from the live server."""

    __slots__ = ("collector", "server")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.collector = BrokerCollector(server.hub, lambda: server.transports)

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets: nothing here speaks them
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(send, 405, _json({"error": "only GET and HEAD are served"}))
            return
        path = scope["path"].rstrip("/") or "/"
        params = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        monitor = self.server.monitor
        try:
            if path == "/metrics":
                await _respond(send, 200, render(self.collector), CONTENT_TYPE.encode())
                return
            if path == "/healthz":
                status, answer = monitor.healthz()
            elif path == "/varz":
                status, answer = 200, monitor.varz()
            elif path == "/connz":
                status, answer = 200, monitor.connz(params)
            elif path == "/subsz":
                status, answer = 200, monitor.subsz(params)
            elif path == "/":
                status, answer = 200, {"endpoints": list(_ENDPOINTS)}
            else:
                status, answer = 404, {"error": f"no such endpoint; try {', '.join(_ENDPOINTS)}"}
        except QueryError as error:
            status, answer = 400, {"error": str(error)}
        await _respond(send, status, _json(answer))


def _json(answer: dict[str, Any]) -> bytes:
    return json.dumps(answer, indent=2).encode() + b"\n"


async def _respond(send: _Send, status: int, body: bytes, kind: bytes = _JSON) -> None:
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: _Receive, send: _Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


@final
class _BoundedStream:
    """A socket stream whose every write must finish within `timeout`, even when shielded.

    hypercorn writes under a shielded scope, so a peer that stops reading would hold its task,
    and the server's shutdown with it. Here such a write is cut and the connection aborted.
    """

    __slots__ = ("_inner", "_timeout", "socket")

    def __init__(self, inner: trio.SocketStream, timeout: float) -> None:
        self._inner = inner
        self._timeout = timeout
        self.socket = inner.socket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with trio.move_on_after(self._timeout):
            await self._inner.send_all(data)
            return
        await trio.aclose_forcefully(self._inner)
        raise trio.BrokenResourceError("monitoring client stopped reading")

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()


def _hypercorn_config(request_timeout: float) -> HypercornConfig:
    config = HypercornConfig()
    config.keep_alive_timeout = request_timeout
    config.read_timeout = math.ceil(request_timeout)
    config.h2_max_concurrent_streams = _H2_STREAMS
    config.include_server_header = False
    config.accesslog = None
    config.errorlog = log
    return config


async def serve_http(
    server: Server,
    listeners: list[trio.SocketListener],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the monitoring endpoint on `listeners` until cancelled; closes them on the way out."""
    settings = server.config.monitoring
    timeout = settings.request_timeout
    config = _hypercorn_config(timeout)
    # Typed loosely (plain dicts for ASGI's messages): hypercorn's TypedDicts add nothing here.
    framework = cast(ASGIFramework, MonitoringApp(server))
    app = wrap_app(framework, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    slots = trio.CapacityLimiter(settings.max_connections)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            try:
                slots.acquire_nowait()
            except trio.WouldBlock:
                await refuse(stream, _BUSY, timeout)
                return
            try:
                bounded = _BoundedStream(stream, timeout)
                await TCPServer(app, config, context, ConnectionState({}), bounded)  # type: ignore[arg-type]
            finally:
                slots.release()
        except Exception:
            log.exception("internal error serving a monitoring request")
        finally:
            await trio.aclose_forcefully(stream)

    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(trio.serve_listeners, handle, [listener])
            task_status.started()
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
