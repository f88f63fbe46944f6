"""The thread-backed client: publish, subscribe and request/reply with no async code.

Start a broker (`broker serve`), then run `python examples/sync_client.py [--url URL]`.
"""

from __future__ import annotations

import argparse
import threading

from broker import NoResponders, sync


def main(url: str) -> None:
    with sync.connect(url, name="sync-example") as client:
        # Publish and subscribe: flush proves the broker routed the message before we wait.
        with client.subscribe("greetings.*") as greetings:
            client.publish("greetings.world", b"hello")
            client.flush()
            msg = greetings.next(timeout=2.0)
            print(f"received {msg.subject}: {msg.payload.decode()}")

        # A responder in a thread of its own; `respond` blocks until the answer is queued.
        requests = client.subscribe("upper")

        def serve() -> None:
            for request in requests:  # Ends when `requests` is unsubscribed.
                request.respond(request.payload.upper())

        responder = threading.Thread(target=serve)
        responder.start()
        try:
            print(f"reply: {client.request('upper', b'hello', timeout=2.0).payload.decode()}")
        finally:
            requests.unsubscribe()
            responder.join()

        # Nobody listens here: the broker says so at once, instead of a timeout.
        try:
            client.request("nobody.home", b"", timeout=2.0)
        except NoResponders:
            print("no responders on nobody.home")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="tcp://127.0.0.1:5878", help="broker address")
    main(parser.parse_args().url)
