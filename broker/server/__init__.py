"""The I/O side of the broker: listeners, one transport per connection, one adapter per wire.

- `server.py`: `Server` (listeners, the nursery that supervises every connection, shutdown)
  and `run` (signals, exit codes) for the command line.
- `transport.py`: one connection whatever its wire: handshake deadline, reader and writer
  tasks, keepalive, the slow-consumer policy, a graceful close.
- `outbox.py`: the bounded queue between fan-out and one connection's writer.
- `native.py`: the native wire's adapter, turning its frames into `broker.hub.Hub` calls.
"""

from __future__ import annotations

from .server import Server, format_address, run, serve

__all__ = ["Server", "format_address", "run", "serve"]
