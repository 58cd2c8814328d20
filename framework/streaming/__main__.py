"""``python -m framework.streaming``: ticks, stream status, late events and their re-drive.

Windows close when every partition's stream time has passed them; an idle partition only moves
when a tick arrives. Run ``tick`` once a minute (cron, a systemd timer, a sidecar loop)::

    python -m framework.streaming tick --name shop                # once, store from the env
    python -m framework.streaming tick --name shop --every 60     # forever, once a minute
    python -m framework.streaming status projections.streams:ShopStreams
    python -m framework.streaming late projections.streams:ShopStreams --action dead_letter
    python -m framework.streaming redrive projections.streams:ShopStreams --name shop --at 0:1234
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence
from typing import Any

from framework.arguments import positive_float, positive_int
from framework.database import create_engine
from framework.errors import FrameworkError, StoreUnavailableError
from framework.persistence import EventStore, open_store, refuse_missing_store, store_url_from_env
from framework.settings import database_url
from framework.streaming._clock import tick
from framework.streaming._late import ACTIONS, late_events, redrive_late
from framework.streaming._projection import StreamProjection
from framework.streaming._status import stream_status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m framework.streaming",
        description="Stream-processing tools: ticks that close windows in a quiet system, a "
        "streaming projection's stream times and late events, and the re-drive of late events "
        "parked as dead letters.",
        epilog="Exit codes: 0 done, 1 the database or the store cannot be reached, 2 a bad "
        "argument or configuration (a projection, URL or position; a missing store file).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ticker = commands.add_parser(
        "tick",
        help="append a tick to every partition",
        description="Append a keel.Clock.Ticked record (the current UTC time) to every "
        "partition of an application's events, so windows close the same way on every replay.",
    )
    _store_options(ticker)
    ticker.add_argument(
        "--every",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="repeat every SECONDS (above 0) until interrupted",
    )
    status = commands.add_parser(
        "status",
        help="stream times, watermark, open windows, late events",
        description="A streaming projection's stream time per partition, its watermark (the "
        "minimum, which closes windows), open windows, rows amended after close and late "
        "events by stream and action.",
    )
    _projection_options(status)
    late = commands.add_parser(
        "late",
        help="list late events",
        description="List the late events a streaming projection recorded, in log order.",
    )
    _projection_options(late)
    late.add_argument("--stream", help="only this declaration's (its attribute name)")
    late.add_argument("--action", choices=ACTIONS, help="only those handled so")
    late.add_argument(
        "--limit",
        type=positive_int,
        default=100,
        help="at most this many, 1 or more (default 100)",
    )
    redrive = commands.add_parser(
        "redrive",
        help="re-drive late events parked as dead letters (appends LateAccepted records)",
        description="Append a keel.Clock.LateAccepted record, after the event in its own "
        "partition, for each late event parked as a dead letter (all, one stream's, or those "
        "--at the positions given). Nothing is applied here: the projection's workers apply the "
        "parked payload when they reach the record (as late='amend' would, once; a second "
        "re-drive finds nothing parked), and a rebuild does the same at the same place.",
    )
    _projection_options(redrive)
    _store_options(redrive)
    redrive.add_argument("--stream", help="only this declaration's (its attribute name)")
    redrive.add_argument(
        "--at",
        dest="positions",
        action="append",
        default=[],
        metavar="POSITION",
        help="PARTITION:OFFSET of a parked event (repeat for more; default: every parked one)",
    )
    return parser


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="the application (store) name")
    parser.add_argument(
        "--store",
        help="the store URL (default: KEEL_<NAME>_EVENT_STORE, else KEEL_EVENT_STORE, else "
        "sqlite:///var/<NAME>-events.db under the current directory, as the application reads "
        "it); a SQLite store file that does not exist is refused, never created",
    )


def _open_store(args: argparse.Namespace) -> EventStore:
    """The application's store, which must exist: a tick or re-drive record in a new, empty
    store would report success and reach no worker."""
    url = args.store or store_url_from_env(args.name)
    check = "--store" if args.store else f"KEEL_{args.name.upper()}_EVENT_STORE / KEEL_EVENT_STORE"
    refuse_missing_store(url, check=check, user="python -m framework.streaming")
    return open_store(url, name=args.name)


def _projection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("projection", help="the streaming projection, package.module:ClassName")
    parser.add_argument(
        "--database",
        help="the read-model database URL (default: as the worker reads it, "
        "KEEL_PROJECTION_<NAME>_DATABASE_URL, KEEL_DATABASE_URL or DATABASE_URL)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _position(text: str) -> tuple[int, int]:
    partition, sep, offset = text.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise ValueError(f"{text!r} is no position: give PARTITION:OFFSET, e.g. 0:1234")
    return int(partition), int(offset)


def main(argv: Sequence[str] | None = None, stop: threading.Event | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "tick":
        return _tick(args, stop or threading.Event())
    try:
        positions = [_position(p) for p in getattr(args, "positions", [])]
    except ValueError as error:
        parser.error(str(error))
    from framework.worker import load_projection

    try:
        projection = load_projection(args.projection)
        if not isinstance(projection, StreamProjection):
            parser.error(f"{args.projection} is a projection without streaming tables")
        engine = create_engine(args.database or database_url(projection.name))
        if args.command == "status":
            _print(args, _status_json(projection, engine), _status_text)
        elif args.command == "late":
            found = late_events(
                projection, engine, stream=args.stream, action=args.action, limit=args.limit
            )
            _print(args, [e.as_json() for e in found], _late_text)
        else:
            with _open_store(args) as store:
                written = redrive_late(
                    store, projection, engine, stream=args.stream, positions=positions or None
                )
            appended = {str(p): o for p, o in sorted(written.items())}
            if args.json:
                print(json.dumps({"appended": appended}))
            else:
                print(f"re-drive records appended: {dict(sorted(written.items())) or 'none'}")
    except StoreUnavailableError as error:  # an outage, not a bad argument
        print(f"error: {error}", file=sys.stderr)
        return 1
    except FrameworkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _tick(args: argparse.Namespace, stop: threading.Event) -> int:
    try:
        store = _open_store(args)
    except StoreUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except FrameworkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with store:
        while True:
            written = tick(store)
            print(f"ticked {store.partitions} partition(s): {dict(sorted(written.items()))}")
            sys.stdout.flush()
            if args.every is None or stop.wait(args.every):
                return 0


def _status_json(projection: StreamProjection, engine: Any) -> dict[str, Any]:
    return {"projection": projection.name, **stream_status(projection, engine).as_json()}


def _status_text(data: dict[str, Any]) -> list[str]:
    lines = [f"projection  {data['projection']}"]
    times = ", ".join(f"{p}: {t}" for p, t in data["stream_times"].items()) or "none yet"
    lines.append(f"stream time {times}")
    if data["watermark"] is None:
        known = data["partitions"]
        why = "a partition has no stream time yet" if known else "no tick told the partitions"
        lines.append(f"watermark   none ({why}: no window closes)")
    else:
        lag = data["watermark_lag_seconds"]
        lines.append(f"watermark   {data['watermark']} ({lag:,.0f} s behind the clock)")
    for name, count in data["open_windows"].items():
        amended = data["amended_after_close"].get(name, 0)
        lines.append(f"{name:<12}open windows {count}, amended after close {amended}")
    for name, actions in sorted(data["late_events"].items()):
        counts = ", ".join(f"{a} {n}" for a, n in sorted(actions.items()))
        lines.append(f"late events {name}: {counts}")
    if not data["late_events"]:
        lines.append("late events none")
    return lines


def _late_text(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["no late events"]
    header = ("position", "stream", "event", "event time", "late by", "action")
    table = [
        (
            r["position"],
            r["stream"],
            r["event_type"].rpartition(":")[2],
            r["event_time"],
            f"{r['late_by_seconds']:,.0f} s",
            r["action"],
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    return out


def _print(args: argparse.Namespace, data: Any, text: Any) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print("\n".join(text(data)))


if __name__ == "__main__":
    raise SystemExit(main())
