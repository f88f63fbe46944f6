"""The async client on Trio: publish, subscribe and request/reply.

Start a broker (`broker serve`), then run `python examples/async_client.py [--url URL]`.
The same code runs under asyncio: `broker.connect` is written against anyio.
"""

from __future__ import annotations

import argparse

import trio

import broker


async def main(url: str) -> None:
    async with broker.connect(url, name="async-example") as client:
        # Publish and subscribe: flush proves the broker routed the message before we wait.
        async with client.subscribe("greetings.*") as greetings:
            await client.publish("greetings.world", b"hello")
            await client.flush()
            msg = await greetings.next()
            print(f"received {msg.subject}: {msg.payload.decode()}")

        async with trio.open_nursery() as nursery:
            requests = client.subscribe("upper")

            async def serve() -> None:
                async for request in requests:  # Ends when `requests` is unsubscribed.
                    await request.respond(request.payload.upper())

            nursery.start_soon(serve)
            # A cancel scope bounds the wait; without one, request(..., timeout=2.0) does.
            with trio.fail_after(2):
                reply = await client.request("upper", b"hello")
            print(f"reply: {reply.payload.decode()}")
            requests.unsubscribe()

        # Nobody listens here: the broker says so at once, instead of a timeout.
        try:
            with trio.fail_after(2):
                await client.request("nobody.home", b"")
        except broker.NoResponders:
            print("no responders on nobody.home")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="tcp://127.0.0.1:5878", help="broker address")
    trio.run(main, parser.parse_args().url)
