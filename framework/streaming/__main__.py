"""``python -m framework.streaming tick``: append a tick record to every partition.

Windows close when every partition's stream time has passed them; an idle partition only moves
when a tick arrives. Run this once a minute (cron, a systemd timer, a sidecar loop)::

    python -m framework.streaming tick --name shop                # once, store from the env
    python -m framework.streaming tick --name shop --every 60     # forever, once a minute
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence

from framework.persistence import open_store, store_url_from_env
from framework.streaming._clock import tick


def main(argv: Sequence[str] | None = None, stop: threading.Event | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m framework.streaming",
        description="Stream-processing tools. `tick` appends a keel.Clock.Ticked record "
        "(the current UTC time) to every partition of an application's events, so windows "
        "close in a quiet system, the same way on every replay.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ticker = commands.add_parser("tick", help="append a tick to every partition")
    ticker.add_argument("--name", required=True, help="the application (store) name")
    ticker.add_argument(
        "--store",
        help="the store URL (default: KEEL_<NAME>_EVENT_STORE, else KEEL_EVENT_STORE, as the "
        "application reads it)",
    )
    ticker.add_argument(
        "--every", type=float, default=None, help="repeat every SECONDS until interrupted"
    )
    args = parser.parse_args(argv)
    if args.every is not None and args.every <= 0:
        parser.error("--every needs a positive number of seconds")
    stop = stop or threading.Event()
    with open_store(args.store or store_url_from_env(args.name), name=args.name) as store:
        while True:
            written = tick(store)
            print(f"ticked {store.partitions} partition(s): {dict(sorted(written.items()))}")
            sys.stdout.flush()
            if args.every is None or stop.wait(args.every):
                return 0


if __name__ == "__main__":
    raise SystemExit(main())
