"""The server's own voice on ``$SYS``: events about clients, and answers to monitoring requests.

`SystemEvents` is a hub `Subscriber` with no connection (the hub's `SystemOrigin`): it
publishes through `Hub.publish` like any client, and it alone may publish to ``$`` subjects.

Events, JSON payloads, on ``$SYS.SERVER.<server_id>.``:

- ``CLIENT.CONNECT`` and ``CLIENT.DISCONNECT`` (with ``reason`` and the final counters), for
  every wire, since `Transport.run` reports them;
- ``CLIENT.AUTH.ERR``, through `auth_error` (the hook authentication calls);
- ``SLOW_CONSUMER``, when a client is first found reading too slowly;
- ``CLUSTER``, when the Redis link of a cluster node goes ``degraded`` or ``up`` again.

Requests: ``$SYS.REQ.SERVER.PING.<KIND>`` (every server that hears it answers) and
``$SYS.REQ.SERVER.<server_id>.<KIND>`` (that server only), KIND one of VARZ, CONNZ, SUBSZ,
HEALTHZ, are answered on the reply subject with the same JSON as the HTTP endpoint; the
request's payload may be a JSON object of that endpoint's query parameters
(``{"sort": "pending_bytes", "limit": 10}``). Plain ``$SYS.REQ.SERVER.PING`` gets VARZ.

Nothing is published from inside another publish: events found in a delivery loop (a slow
consumer) and requests delivered to us are queued, bounded, and published by our own task.
An event that finds the queue full is dropped and counted (`dropped`); a request then gets no
answer and its requester's timeout tells it so.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any, Final, final

import trio

from .._version import __version__
from ..errors import ErrorCode
from ..hub import Refused, Subscription
from ..message import Message, Retained
from ..monitoring import QueryError, connection_info, rfc3339
from ..subjects import SubjectError

if TYPE_CHECKING:
    from .server import Server
    from .transport import Transport

__all__ = ["EVENT_QUEUE", "REQUEST_KINDS", "SystemEvents"]

log = logging.getLogger("broker.server.sysevents")

#: Events and requests waiting for the system task; past it, new ones are dropped.
EVENT_QUEUE: Final = 1024
#: What a ``$SYS.REQ.SERVER`` request may ask for.
REQUEST_KINDS: Final = ("VARZ", "CONNZ", "SUBSZ", "HEALTHZ")
_PING: Final = "$SYS.REQ.SERVER.PING"


@final
class SystemEvents:
    """Publishes the server's ``$SYS`` events and answers its ``$SYS.REQ`` requests."""

    __slots__ = (
        "_receive",
        "_send",
        "dropped",
        "echo",
        "hub",
        "in_bytes",
        "in_msgs",
        "lang",
        "name",
        "out_bytes",
        "out_msgs",
        "permissions",
        "prefix",
        "server",
        "subscriptions",
        "version",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.hub = server.hub
        self.name = "$SYS"
        self.lang = "python"
        self.version = __version__
        self.echo = False
        self.permissions: Any = None
        self.subscriptions: dict[Any, Subscription] = {}
        self.in_msgs = self.in_bytes = self.out_msgs = self.out_bytes = 0
        #: Where its events go: ``$SYS.SERVER.<server_id>``.
        self.prefix = f"$SYS.SERVER.{server.server_id}"
        #: Events and requests dropped because the queue was full.
        self.dropped = 0
        self._send, self._receive = trio.open_memory_channel[tuple[str, Any]](EVENT_QUEUE)
        self.hub.system = self
        # Authentication reports each failure to these hooks, as hook(peer, reason).
        self.hub.auth_failure_hooks.append(self.auth_error)
        # Straight into the table: a client's limits (max_subscriptions) are not the server's.
        for sid, pattern in enumerate(
            (_PING, f"{_PING}.*", f"$SYS.REQ.SERVER.{server.server_id}.*")
        ):
            sub = Subscription(self, sid, pattern, None, b"")
            try:
                self.hub.table.insert(sub, pattern)
            except SubjectError:
                continue  # max_subject_length or max_subject_tokens leaves no room for $SYS
            self.subscriptions[sid] = sub

    def __repr__(self) -> str:
        return f"<SystemEvents {self.prefix}>"

    # -- the hub's side -------------------------------------------------------------------

    def deliver(self, sub: Subscription, message: Message) -> int:
        """A request for us: queued for our task, never answered from the publisher's."""
        sub.delivered += 1
        return 1 if self._queue("request", message) else 0

    def replay(self, sub: Subscription, entries: list[tuple[str, Retained]]) -> bool:
        return False  # Nothing is retained under $SYS.REQ.

    # -- events -----------------------------------------------------------------------------

    def client_connected(self, client: Transport) -> None:
        self._event("CLIENT.CONNECT", "client_connect", connection_info(client, time.time()))

    def client_disconnected(self, client: Transport) -> None:
        info = connection_info(client, time.time())
        info["reason"] = client.closing_reason
        self._event("CLIENT.DISCONNECT", "client_disconnect", info)

    def slow_consumer(self, client: Transport) -> None:
        info = connection_info(client, time.time())
        info["policy"] = self.hub.config.slow_consumer_policy
        self._event("SLOW_CONSUMER", "slow_consumer", info)

    def auth_error(self, peer: str, reason: str, name: str = "") -> None:
        """Publish ``CLIENT.AUTH.ERR`` for a client whose credentials were refused.

        Args:
            peer: Its address as ``host:port`` (``[v6]:port`` for IPv6).
            reason: Why it was refused, as the server logs it (never the credentials).
            name: The name it gave, if any.
        """
        host, _, port = peer.rpartition(":")
        info = {
            "ip": host.removeprefix("[").removesuffix("]"),
            "port": int(port) if port.isdigit() else 0,
            "name": name[:256],
            "reason": reason,
        }
        self._event("CLIENT.AUTH.ERR", "client_auth_error", info)

    def cluster_state(self, fields: dict[str, Any]) -> None:
        """Publish ``CLUSTER`` when the Redis link changes state (`ClusterStatus.as_dict`):
        ``degraded`` tells clients that cross-node messages are being lost, ``up`` that
        they flow again."""
        self._event("CLUSTER", "cluster_state", fields)

    def _event(self, suffix: str, kind: str, fields: dict[str, Any]) -> None:
        subject = f"{self.prefix}.{suffix}"
        try:
            if not self.hub.table.peek(subject):
                return  # Nobody listens: not worth its JSON.
        except SubjectError:
            return  # Longer than max_subject_length allows: nobody can listen.
        payload = {
            "type": kind,
            "server_id": self.server.server_id,
            "timestamp": rfc3339(time.time()),
            **fields,
        }
        self._queue("publish", (subject, json.dumps(payload).encode()))

    def _queue(self, kind: str, item: Any) -> bool:
        try:
            self._send.send_nowait((kind, item))
        except trio.WouldBlock:
            self.dropped += 1
            return False
        return True

    # -- the task that publishes ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish queued events and answer queued requests until cancelled."""
        task_status.started()
        async for kind, item in self._receive:
            try:
                if kind == "publish":
                    self._publish(*item)
                else:
                    self._answer(item)
            except Exception:
                log.exception("internal error publishing on $SYS")

    def _publish(self, subject: str, payload: bytes) -> None:
        try:
            self.hub.publish(self, (subject, payload, None, None, False))
        except Refused as refused:
            if refused.code is not ErrorCode.PAYLOAD_TOO_LARGE:
                raise
            problem = (
                f"the answer ({len(payload)} bytes) exceeds max_payload"
                f" ({self.hub.config.max_payload}); ask for less (limit, subs)"
            )
            self.hub.publish(self, (subject, _dumps({"error": problem}), None, None, False))

    def _answer(self, request: Message) -> None:
        subject, payload, reply_to = request[0], request[1], request[2]
        if reply_to is None or reply_to[:1] == "$":
            return  # Nowhere to answer; and $ subjects are never written for a client.
        self._publish(reply_to, _dumps(self.answer(subject, payload)))

    def answer(self, subject: str, payload: bytes = b"") -> dict[str, Any]:
        """The JSON a request to `subject` gets: what the HTTP endpoint would say, or an error."""
        tokens = subject.split(".")
        kind = ""
        if subject == _PING:
            kind = "VARZ"
        elif len(tokens) == 5 and tokens[3] in ("PING", self.server.server_id):
            kind = tokens[4]
        monitor = self.server.monitor
        try:
            params = _params(payload)
            if kind == "VARZ":
                return monitor.varz()
            if kind == "CONNZ":
                return monitor.connz(params)
            if kind == "SUBSZ":
                return monitor.subsz(params)
            if kind == "HEALTHZ":
                return monitor.healthz()[1]
        except QueryError as error:
            return {"error": str(error)}
        shown = kind[:64] or subject[:64]
        return {"error": f"unknown request {shown!r}; ask for one of {', '.join(REQUEST_KINDS)}"}


def _dumps(answer: dict[str, Any]) -> bytes:
    return json.dumps(answer).encode()


def _params(payload: bytes) -> dict[str, str]:
    """A request's JSON object of query parameters, as the HTTP query would give them."""
    if not payload.strip():
        return {}
    try:
        given = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise QueryError("a request's payload must be empty or a JSON object") from None
    if not isinstance(given, dict):
        raise QueryError("a request's payload must be empty or a JSON object")
    return {
        str(key): str(value).lower() if isinstance(value, bool) else str(value)
        for key, value in given.items()
    }
