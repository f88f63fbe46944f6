"""The uppercase echo server, as a responder: every request comes back in capitals.

    python examples/echo_upper.py [--url URL] serve        # answer requests until Ctrl-C
    python examples/echo_upper.py [--url URL] ask TEXT     # print TEXT in capitals

Where a socket server accepts connections and reads each one, a responder subscribes and
answers each request on its ``reply_to``. Copies of ``serve`` form a queue group, so each
request goes to exactly one of them; start more to share the load, stop any of them at will.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from broker import ConnectionClosed, NoResponders, sync
from broker.cli import DEFAULT_URL

SUBJECT = "echo.upper"


def serve(url: str) -> int:
    with (
        sync.connect(url, name="echo-upper") as client,
        client.subscribe(SUBJECT, queue="echo-upper") as requests,
    ):
        try:
            client.flush()  # The subscription is in place at the broker before we say so.
            print(f"ready: answering {SUBJECT}", flush=True)
            for request in requests:
                request.respond(request.payload.decode("utf-8", "replace").upper().encode())
        except KeyboardInterrupt:
            print("stopped", flush=True)
    return 0


def ask(url: str, text: str) -> int:
    with sync.connect(url, name="echo-upper-ask") as client:
        try:
            reply = client.request(SUBJECT, text.encode(), timeout=2.0)
        except NoResponders:
            # The broker says so at once: nobody subscribes, so waiting would not help.
            print(f"no responders on {SUBJECT}: start `echo_upper.py serve`", file=sys.stderr)
            return 1
        except TimeoutError:
            print(f"no reply on {SUBJECT} within 2 s", file=sys.stderr)
            return 1
    print(reply.payload.decode("utf-8", "replace"), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("BROKER_URL", DEFAULT_URL),
        help=f"broker address (default: $BROKER_URL, else {DEFAULT_URL})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="answer requests on " + SUBJECT)
    ask_parser = commands.add_parser("ask", help="send TEXT, print the answer")
    ask_parser.add_argument("text", metavar="TEXT")
    args = parser.parse_args()
    # SIGTERM (a process manager, `kill`) stops the server as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if args.command == "serve":
            return serve(args.url)
        return ask(args.url, args.text)
    except ConnectionClosed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
