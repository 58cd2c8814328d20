"""Writer processes: on Kafka, the processes that decide commands.

Every command on the Kafka store is decided by the one writer process that owns its shard
(design.md, decision 12; :mod:`framework.backends.kafka_owner`). Run one or more::

    python -m framework.writer run sample_app.shop.application:build
    python -m framework.writer run myapp:app --instance-id writer-1   # static membership
    python -m framework.writer status myapp:app

or, under Django, ``manage.py run_writers``. Kafka gives each shard to one writer at a time and
moves it to another when a writer stops or dies (after ``--session-timeout``, or at once when
a writer restarts with the same ``--instance-id``). Web processes, scripts and workers just call
``app.execute(...)``: their commands travel to the owner and the result comes back.

In a test or a one-process script, run a writer in the background::

    with writer(app):
        app.execute(Deposit(...))   # decided in place: this process owns every shard
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from framework.application import Application
from framework.backends.kafka_owner import WriterMember, WriterSettings
from framework.errors import ConfigurationError, FrameworkError
from framework.loading import load_object
from framework.runtime import tune_garbage_collector

__all__ = [
    "add_writer_arguments",
    "load_application",
    "main",
    "run_writer",
    "writer",
    "writer_settings",
    "writer_status",
]

log = logging.getLogger(__name__)


def load_application(spec: str, store: str | None = None) -> Application:
    """The application that ``module:attribute`` names (an Application, or a factory called with
    the store URL when ``store`` is given, else with no argument)."""

    def make(found: Any) -> object:
        if isinstance(found, Application):
            return found.using(store) if store else found
        if not callable(found):
            return found
        return found(store) if store else found()

    example = "sample_app.shop.application:build"
    return load_object(spec, Application, what="application", example=example, make=make)


@contextlib.contextmanager
def writer(app: Application, settings: WriterSettings | None = None) -> Iterator[WriterMember]:
    """Run a writer member in this process for the block (waits until it owns every shard)."""
    member = WriterMember(app, settings).start()
    try:
        member.wait_owning()
        yield member
    finally:
        member.close()


def run_writer(
    app: Application,
    settings: WriterSettings | None = None,
    *,
    stop: threading.Event | None = None,
) -> None:
    """Decide ``app``'s commands until ``stop`` is set; without ``stop``, until SIGTERM or
    SIGINT (when called from the main thread)."""
    if stop is None:
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: stop.set())
    member = WriterMember(app, settings)
    log.info("writer for %r joining %s", app.name, app.store.writer_group)  # type: ignore[attr-defined]
    member.run(stop)


def writer_status(app: Application) -> dict[str, Any]:
    """The writer group as Kafka sees it: members, and per shard the commands waiting."""
    from framework.backends.kafka import KafkaEventStore
    from framework.backends.kafka_client import KafkaAdminClient, TopicPartition

    store = app.store
    if not isinstance(store, KafkaEventStore):
        raise ConfigurationError(f"{app.name!r} is not on the Kafka store: it has no writers")
    admin = KafkaAdminClient(bootstrap_servers=store._servers, **store._security)
    try:
        group = admin.describe_groups([store.writer_group]).get(store.writer_group, {})
        committed = admin.list_group_offsets(store.writer_group).get(store.writer_group, {})
    finally:
        admin.close()
    tps = [TopicPartition(store.commands_topic, s) for s in range(store.shards)]
    consumer = store._new_consumer(group_id=None, enable_auto_commit=False)
    try:
        ends = consumer.end_offsets(tps)
    finally:
        consumer.close(autocommit=False)
    members = [
        {
            "member_id": m.get("member_id"),
            "instance_id": m.get("group_instance_id"),
            "client_host": m.get("client_host"),
            "shards": sorted(
                p
                for assigned in (m.get("member_assignment") or {}).get("assigned_partitions", ())
                if assigned.get("topic") == store.commands_topic
                for p in assigned.get("partitions", ())
            ),
        }
        for m in group.get("members") or ()
    ]
    shards = []
    for tp in tps:
        done = committed.get(tp)
        offset = getattr(done, "offset", done)
        shards.append(
            {
                "shard": tp.partition,
                "commands_end": int(ends[tp]),
                "committed": None if offset is None else int(offset),
                "waiting": int(ends[tp]) - int(offset or 0),
            }
        )
    return {
        "application": app.name,
        "group": store.writer_group,
        "state": group.get("group_state"),
        "members": members,
        "shards": shards,
    }


def add_writer_arguments(parser: argparse.ArgumentParser) -> None:
    """A writer process's tuning options, read back by :func:`writer_settings`; shared by
    ``python -m framework.writer run`` and ``manage.py run_writers``."""
    defaults = WriterSettings()
    parser.add_argument(
        "--instance-id",
        help="a stable id per writer process (static membership: a restart within the session "
        "timeout gets its shards back without a rebalance)",
    )
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=defaults.session_timeout,
        metavar="S",
        help=f"seconds before a dead writer's shards move (default {defaults.session_timeout:g})",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=defaults.max_batch,
        metavar="N",
        help=f"most commands in one transaction (default {defaults.max_batch})",
    )
    parser.add_argument(
        "--linger",
        type=float,
        default=defaults.linger,
        metavar="S",
        help="seconds a transaction may wait for the callers of the last two (in this process "
        "or waiting senders) to come back, never past the moment they all are; more commands a "
        f"transaction for a little latency (default {defaults.linger:g}; 0: never)",
    )


def writer_settings(options: Mapping[str, Any]) -> WriterSettings:
    """The settings :func:`add_writer_arguments`' options name (ConfigurationError when they
    cannot work)."""
    return WriterSettings(
        instance_id=options["instance_id"],
        session_timeout=options["session_timeout"],
        max_batch=options["max_batch"],
        linger=options["linger"],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m framework.writer",
        description="Decide an application's commands on the Kafka store (one writer per shard "
        "at a time; run several for fail-over).",
    )
    commands = parser.add_subparsers(dest="action", required=True)
    run = commands.add_parser("run", help="join the writer group and decide commands")
    status = commands.add_parser("status", help="show the writer group and waiting commands")
    for sub in (run, status):
        sub.add_argument(
            "app",
            metavar="MODULE:APP",
            help="the Application, or a factory of one (called with --store when given)",
        )
        sub.add_argument(
            "--store",
            metavar="URL",
            help="event store URL (default: KEEL_<APP>_EVENT_STORE, then KEEL_EVENT_STORE)",
        )
    add_writer_arguments(run)
    status.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        # Bad settings are refused before the application is even loaded.
        settings = writer_settings(vars(args)) if args.action == "run" else None
        app = load_application(args.app, args.store)
        if settings is None:
            report = writer_status(app)
            if args.json:
                print(json.dumps(report, indent=2))
            else:
                _print_status(report)
            return 0
        try:
            tune_garbage_collector()
            run_writer(app, settings)
        finally:
            app.close()
    except FrameworkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _print_status(report: dict[str, Any]) -> None:
    print(f"{report['application']}: group {report['group']} ({report['state']})")
    if not report["members"]:
        print("  no writer is running: commands wait until one starts")
    for member in report["members"]:
        who = member["instance_id"] or member["member_id"]
        print(f"  member {who} at {member['client_host']} owns shards {member['shards']}")
    for shard in report["shards"]:
        print(
            f"  shard {shard['shard']}: {shard['waiting']} command(s) waiting "
            f"(end {shard['commands_end']}, done up to {shard['committed']})"
        )


if __name__ == "__main__":
    sys.exit(main())
