"""``python -m framework.cdc``: install, run and watch change feeds.

A feed is named by a factory, ``module:callable``, that returns a ready
:class:`~framework.cdc.ChangeFeed` (its source, application and database taken from the
environment), e.g. ``sample_app.crm:feed``::

    python -m framework.cdc install sample_app.crm:feed          # changelog, trigger, snapshot
    python -m framework.cdc run sample_app.crm:feed              # until Ctrl-C / SIGTERM
    python -m framework.cdc status sample_app.crm:feed [--json]
    python -m framework.cdc dead-letters sample_app.crm:feed
    python -m framework.cdc redrive sample_app.crm:feed [--row ID ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from framework.arguments import non_negative_float, port, positive_int
from framework.cdc._feed import ChangeFeed
from framework.dead_letters import refuse_not_parked
from framework.errors import ConfigurationError, FrameworkError
from framework.loading import load_object
from framework.observability import prometheus
from framework.runtime import tune_garbage_collector

EPILOG = """\
FEED is module:callable, a function returning a ChangeFeed, e.g. sample_app.crm:feed.
The feed's cursor and dead letters live in DATABASE_URL's database (migrate it with
`alembic upgrade head`); the commands go to the application's store (KEEL_EVENT_STORE ...),
on Kafka through its writer processes. Exit codes: 0 ok, 1 error (among them the feed's
own database out of reach: `run` waits for it instead), 2 usage or configuration, 3
(status) the feed has dead letters or a last error, or its source cannot be reached.
"""


def load_feed(spec: str) -> ChangeFeed:
    """The feed a ``module:callable`` factory returns (or a ChangeFeed the module holds)."""
    return load_object(
        spec, ChangeFeed, what="feed", form="module:callable", example="sample_app.crm:feed"
    )


def _add_feed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "feed",
        metavar="FEED",
        help="module:callable, a function returning the ChangeFeed (e.g. sample_app.crm:feed)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m framework.cdc",
        description="Change data capture: translate a legacy table's inserts, updates and "
        "deletes into commands, exactly once, with a stored cursor, dead letters and lag.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    install = sub.add_parser(
        "install",
        help="create the changelog and trigger on the legacy table and take the initial snapshot",
        description="Idempotent. The trigger is created first, then the table's rows are "
        "copied into the changelog in one REPEATABLE READ transaction: the feed reads them, "
        "then every change the snapshot did not see (no gap, no duplicate).",
    )
    _add_feed(install)
    install.add_argument("--no-snapshot", action="store_true", help="stream only new changes")
    run = sub.add_parser("run", help="run the feed (until interrupted)")
    _add_feed(run)
    run.add_argument("--until-caught-up", action="store_true", help="stop once nothing is readable")
    run.add_argument(
        "--idle",
        type=non_negative_float,
        default=0.5,
        help="seconds between polls when idle, 0 or more (0.5)",
    )
    run.add_argument(
        "--metrics-port",
        type=port,
        metavar="PORT",
        help="serve /metrics (Prometheus: the feed's lag, commands, dead letters) on "
        "127.0.0.1:PORT while it runs; needs the [metrics] extra",
    )
    status = sub.add_parser(
        "status", help="cursor, lag (changes, seconds), dead letters, last error"
    )
    _add_feed(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    letters = sub.add_parser("dead-letters", help="list the parked changes")
    _add_feed(letters)
    letters.add_argument(
        "--limit",
        type=positive_int,
        default=50,
        help="list at most this many, oldest first, 1 or more (50)",
    )
    redrive = sub.add_parser("redrive", help="translate and execute parked changes again")
    _add_feed(redrive)
    redrive.add_argument(
        "--row",
        action="append",
        help="only this row id (repeatable); a row with nothing parked is an error (exit 2), "
        "and nothing is re-driven",
    )
    return parser


def main(argv: Sequence[str] | None = None, stop: threading.Event | None = None) -> int:
    try:
        return execute(argv, stop)
    except ConfigurationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except FrameworkError as error:  # e.g. the feed's own database cannot be reached
        print(f"error: {error}", file=sys.stderr)
        return 1


def execute(argv: Sequence[str] | None = None, stop: threading.Event | None = None) -> int:
    """:func:`main` without its last step: a feed that cannot be loaded or configured
    raises its :class:`ConfigurationError`, and one whose own database cannot be reached a
    :class:`StoreUnavailableError` (``manage.py cdc`` shows either as its own error)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    feed = load_feed(args.feed)
    if args.command == "install":
        install = getattr(feed.source, "install", None)
        if install is None:
            print(f"error: {type(feed.source).__name__} needs no install", file=sys.stderr)
            return 1
        copied = install(snapshot=not args.no_snapshot)
        print(f"installed capture of {feed.source.name}; snapshot rows copied: {copied}")
        return 0
    if args.command == "run":
        server = None
        if args.metrics_port is not None:
            try:
                prometheus.install(service_name=f"keel-cdc-{feed.name}")
                server = prometheus.serve(args.metrics_port)
            except (ConfigurationError, OSError) as error:
                raise ConfigurationError(f"--metrics-port {args.metrics_port}: {error}") from error
        if stop is None:  # a process of its own (tests pass a stop): see framework.runtime
            tune_garbage_collector()
        stop = stop or threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            if threading.current_thread() is threading.main_thread():
                signal.signal(sig, lambda *_: stop.set())
        try:
            done = feed.run(stop, until_caught_up=args.until_caught_up, idle=args.idle)
        finally:
            if server is not None:
                server.shutdown()
        print(f"feed {feed.name}: {done} change(s) done")
        return 0
    if args.command == "status":
        s = feed.status()
        if args.json:
            print(json.dumps(s.as_dict(), indent=2))
        else:
            print(f"feed          {s.feed}  (source {s.source})")
            print(f"done          {s.changes} change(s), {s.commands} command(s)")
            if s.lag_changes is None or s.lag_seconds is None:
                print("lag           unknown: the source cannot be reached")
            else:
                print(f"lag           {s.lag_changes} change(s), {s.lag_seconds:.1f} s")
            print(f"dead letters  {s.dead_letters}")
            print(f"last change   {s.last_change_at or '-'}")
            print(
                f"last error    {s.last_error or '-'}"
                + (f" at {s.last_error_at}" if s.last_error_at else "")
            )
            if s.source_error:
                print(f"source error  {s.source_error}")
        return 3 if s.dead_letters or s.last_error or s.source_error else 0
    if args.command == "dead-letters":
        for letter in feed.dead_letters(limit=args.limit):
            change = feed.change_of(letter)
            print(
                f"#{letter.id} row {letter.aggregate_id} {change.op} {dict(change.key)} at "
                f"{change.position}: {letter.reason} {letter.error_type} {letter.error_message}"
            )
        return 0
    if args.row:
        parked = {letter.aggregate_id for letter in feed.dead_letters()}
        refuse_not_parked(args.row, parked, "row id(s)")
    result = feed.redrive(args.row)
    print(
        f"re-driven: {result.done} done, {len(result.failed)} row(s) still failing, "
        f"{result.remaining} left"
    )
    for rid, reason in result.failed.items():
        print(f"  {rid}: {reason}")
    return 0 if not result.failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
