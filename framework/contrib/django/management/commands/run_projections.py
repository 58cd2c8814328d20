"""``manage.py run_projections [NAME ...] [--until-caught-up] [--instance-id ID]``."""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from framework.arguments import port, positive_float, positive_int
from framework.contrib.django import checks
from framework.contrib.django.conf import (
    consumer_group,
    get_application,
    get_engine,
    get_projections,
    get_settings,
)
from framework.contrib.django.observability import serve_metrics
from framework.contrib.django.operations import DjangoProjectionWorker
from framework.errors import FrameworkError
from framework.runtime import tune_garbage_collector


class Command(BaseCommand):
    help = (
        "Run projection workers: consume the event store and keep the read models up to date. "
        "Runs every projection in KEEL['PROJECTIONS'] (or the NAMEs given), one thread each, "
        "until SIGTERM or Ctrl-C, which stop them cleanly between batches. Several processes "
        "may run the same projection: on Kafka they share its partitions (a NAME given twice "
        "is refused: one process runs one worker per projection)."
    )
    requires_system_checks: list[str] = []  # run below, after marking this a worker

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "names", nargs="*", metavar="NAME", help="projections to run (default: all)"
        )
        parser.add_argument(
            "--until-caught-up",
            action="store_true",
            help="stop once every projection has applied the events that existed at start",
        )
        parser.add_argument(
            "--batch-size",
            type=positive_int,
            default=None,
            help="events per SQL transaction (1 or more)",
        )
        parser.add_argument(
            "--instance-id",
            metavar="ID",
            help="Kafka static group membership: a worker restarted with the same ID gets its "
            "partitions back at once instead of after the session timeout. Give each worker "
            "process its own stable ID (a pod or host name); each projection's group uses it",
        )
        parser.add_argument(
            "--session-timeout",
            type=positive_float,
            metavar="SECONDS",
            help="seconds without a heartbeat before Kafka gives a dead worker's partitions to "
            "another (default: KEEL_PROJECTION_SESSION_TIMEOUT or 10)",
        )
        parser.add_argument(
            "--metrics-port",
            type=port,
            help="serve Prometheus /metrics on 127.0.0.1:PORT (KEEL['METRICS_EXPORTER'] = "
            "'prometheus' and the [metrics] extra)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        checks.running_worker = True
        self.check(display_num_errors=False)
        alias = get_settings().readmodels_database
        for message in checks.check_alembic_head(databases=[alias]):
            self.stderr.write(self.style.WARNING(f"{message.id}: {message.msg} {message.hint}"))
        try:
            known = get_projections()
        except FrameworkError as error:
            raise CommandError(str(error)) from error
        names = options["names"] or list(known)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise CommandError(
                f"unknown projection(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        if not names:
            raise CommandError("no projections are configured: set KEEL['PROJECTIONS']")
        # A NAME twice is likelier a typo in a script than a wish for two workers in this one
        # process: more workers of a projection are more processes (they share its partitions).
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise CommandError(
                f"projection(s) named more than once: {', '.join(twice)}; a process runs one "
                "worker per projection (start more processes for more workers)"
            )
        chosen = {
            "batch_size": options["batch_size"],
            "instance_id": options["instance_id"],
            "session_timeout": options["session_timeout"],
        }
        overrides = {key: value for key, value in chosen.items() if value is not None}
        stop = threading.Event()
        try:
            store = get_application().store
            engine = get_engine()
            serve_metrics(options["metrics_port"])
            workers = [
                DjangoProjectionWorker(
                    known[n], store, engine, group=consumer_group(n), **overrides
                )
                for n in names
            ]
            tune_garbage_collector()  # a process of its own: see framework.runtime
        except FrameworkError as error:
            raise CommandError(str(error)) from error
        failures: dict[str, BaseException] = {}

        def run(worker: DjangoProjectionWorker) -> None:
            try:
                worker.run(stop, until_caught_up=options["until_caught_up"])
            except BaseException as error:  # reported by the main thread
                failures[worker.projection.name] = error
                stop.set()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            self.stdout.write(f"{signal.Signals(signum).name}: stopping after the current batch")
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        threads = [
            threading.Thread(target=run, args=(w,), name=f"projection-{w.projection.name}")
            for w in workers
        ]
        self.stdout.write(
            self.style.SUCCESS(f"running projections: {', '.join(names)}")
            + (" (until caught up)" if options["until_caught_up"] else " (Ctrl-C to stop)")
        )
        started = time.monotonic()
        try:
            for thread in threads:
                thread.start()
            while any(t.is_alive() for t in threads):
                for thread in threads:
                    thread.join(timeout=0.2)  # short joins keep signal handling responsive
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        for worker in workers:
            stats = worker.stats
            self.stdout.write(f"{worker.projection.name}: {_describe(stats)}")
        if failures:
            raise CommandError(
                "; ".join(f"{name}: {type(e).__name__}: {e}" for name, e in failures.items())
            )
        self.stdout.write(f"stopped after {time.monotonic() - started:.1f}s")


def _describe(stats: Any) -> str:
    fields = getattr(stats, "__dataclass_fields__", None)
    if not fields:
        return str(stats)
    return ", ".join(f"{name}={getattr(stats, name)}" for name in fields)
