"""A chat room: each participant sees everyone else's lines, and who joins and leaves.

    python examples/chat.py [--url URL] --room lobby --nick alice

Type a line and press Enter to say it; ``/quit``, end of input (Ctrl-D) or Ctrl-C leaves. Run it
in several terminals with the same room; input may also come from a pipe.

Every line is one message on ``chat.<room>``, with the speaker and the kind of line (``join``,
``say``, ``leave``) in its headers. The client connects with ``echo=False``, so the broker never
sends a participant its own lines: no filtering by nick, and two participants may share one.
The sync client fits a chat: the main thread reads input, a second thread prints the room.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Iterable

from broker import ConnectionClosed, sync
from broker.cli import DEFAULT_URL
from broker.subjects import SubjectError, validate_subject


def show(message: sync.SyncMessage) -> str:
    nick = message.headers.get("nick", "?")
    kind = message.headers.get("kind")
    if kind == "join":
        return f"* {nick} joined"
    if kind == "leave":
        return f"* {nick} left"
    return f"<{nick}> {message.payload.decode('utf-8', 'replace')}"


def print_room(room: sync.SyncSubscription) -> None:
    for message in room:  # Ends once the client has drained.
        print(show(message), flush=True)


def chat(url: str, room: str, nick: str, lines: Iterable[str]) -> None:
    subject = f"chat.{room}"
    with sync.connect(url, name=f"chat-{nick}", echo=False) as client:
        messages = client.subscribe(subject)
        client.flush()  # Subscribed before anyone hears of us, so no answer to our join is missed.
        print(f"welcome to {room}, {nick}! /quit leaves", flush=True)
        printer = threading.Thread(target=print_room, args=(messages,))
        printer.start()
        client.publish(subject, b"", headers={"nick": nick, "kind": "join"})
        try:
            for line in lines:
                text = line.rstrip("\r\n")
                if text == "/quit":
                    break
                if text:
                    client.publish(subject, text.encode(), headers={"nick": nick, "kind": "say"})
        except KeyboardInterrupt:
            pass
        client.publish(subject, b"", headers={"nick": nick, "kind": "leave"})
        # Sends what is queued, lets the printer show what already arrived, then closes.
        client.drain()
        printer.join()
    print("bye", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("BROKER_URL", DEFAULT_URL),
        help=f"broker address (default: $BROKER_URL, else {DEFAULT_URL})",
    )
    parser.add_argument("--room", default="lobby", help="room to join (default: %(default)s)")
    parser.add_argument("--nick", required=True, help="your name in the room")
    args = parser.parse_args()
    try:
        validate_subject(f"chat.{args.room}")
    except SubjectError as error:
        parser.error(f"--room: {error}")
    try:
        chat(args.url, args.room, args.nick, sys.stdin)
    except ConnectionClosed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
