"""``manage.py run_writers [--instance-id ID] [--session-timeout S] [--max-batch N] [--linger S]
[--status]``."""

from __future__ import annotations

import json
import signal
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from framework.arguments import port
from framework.backends.kafka_owner import WriterMember
from framework.contrib.django import checks, heartbeats
from framework.contrib.django.conf import get_application
from framework.contrib.django.observability import WriterBeat, serve_metrics
from framework.errors import FrameworkError
from framework.runtime import tune_garbage_collector
from framework.writer import add_writer_arguments, writer_settings, writer_status


class Command(BaseCommand):
    help = (
        "Decide the application's commands on the Kafka store. Kafka gives each writer shard "
        "to one running writer at a time; run two or more for fail-over. Web processes send "
        "their commands here and wait for the result. Stops cleanly on SIGTERM or Ctrl-C. "
        "The embedded stores (SQLite, PostgreSQL) need no writer."
    )
    requires_system_checks: list[str] = []  # run below, after marking this a worker

    def add_arguments(self, parser: CommandParser) -> None:
        add_writer_arguments(parser)
        parser.add_argument(
            "--metrics-port",
            type=port,
            help="serve Prometheus /metrics on 127.0.0.1:PORT (KEEL['METRICS_EXPORTER'] = "
            "'prometheus' and the [metrics] extra)",
        )
        parser.add_argument(
            "--status",
            action="store_true",
            help="print the writer group and the commands waiting per shard (JSON), then exit",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        checks.running_worker = True
        self.check(display_num_errors=False)
        try:
            settings = writer_settings(options)  # refused before the store is opened
            app = get_application()
            if options["status"]:
                self.stdout.write(json.dumps(writer_status(app), indent=2))
                return
        except FrameworkError as error:
            raise CommandError(str(error)) from error
        stop = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            self.stdout.write(f"{signal.Signals(signum).name}: stopping after this transaction")
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.stdout.write(self.style.SUCCESS(f"writer for {app.name!r} running (Ctrl-C to stop)"))
        beat: WriterBeat | None = None
        try:
            serve_metrics(options["metrics_port"])
            member = WriterMember(app, settings)
            tune_garbage_collector()  # a process of its own: see framework.runtime
            name = f"writer:{settings.instance_id or heartbeats.owner()}"
            beat = WriterBeat(member, name).start()  # for keel_health writers
            member.run(stop)
        except FrameworkError as error:
            raise CommandError(str(error)) from error
        finally:
            if beat is not None:
                beat.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self.stdout.write("writer stopped")
