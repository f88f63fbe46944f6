"""Publish and subscribe over a raw socket with the shared codec: no client library needed.

Run `broker serve` first, then `python examples/wire_walkthrough.py [--port PORT]`.
"""

from __future__ import annotations

import argparse

import trio

from broker.protocol import Connection, Hello, Ping, Pong, Pub, Role, Sub


async def main(host: str, port: int) -> None:
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        conn = Connection(Role.CLIENT)
        await stream.send_all(
            conn.send(Hello({"name": "walkthrough"}))
            + conn.send(Sub(1, "greetings.*"))
            + conn.send(Pub("greetings.world", b"hello"))
            + conn.send(Ping())
        )
        while True:
            for event in conn.events():  # Welcome, Msg(sid=1, ...), then Pong
                print(event)
                if isinstance(event, Pong):
                    return
            data = await stream.receive_some(65536)
            if not data:
                raise SystemExit("the broker closed the connection")
            conn.receive_data(data)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5878)
    args = parser.parse_args()
    trio.run(main, args.host, args.port)
