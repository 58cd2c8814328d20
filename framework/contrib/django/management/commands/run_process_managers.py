"""``manage.py run_process_managers [NAME ...] [--instance-id ID] [--start-from now]
[--metrics-port PORT]``."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from framework.arguments import port
from framework.contrib.django import checks
from framework.contrib.django.conf import pick_process_workers
from framework.contrib.django.observability import serve_metrics
from framework.errors import FrameworkError
from framework.runtime import tune_garbage_collector


class Command(BaseCommand):
    help = (
        "Run the configured process managers (KEEL['PROCESS_MANAGERS']): each handles its "
        "input events, fires its due deadlines and sends its commands through the target "
        "applications' command paths, until SIGTERM or Ctrl-C. Several copies may run at "
        "once: they share the input partitions, and every write is guarded."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="*", help="process managers to run (default: all)")
        parser.add_argument(
            "--instance-id",
            help="a stable id for this process (Kafka static membership: a restart gets its "
            "partitions back at once)",
        )
        parser.add_argument(
            "--start-from",
            choices=["beginning", "now"],
            default="beginning",
            help="where a process manager that never ran starts reading its sources "
            "(default: the beginning of each topic)",
        )
        parser.add_argument(
            "--metrics-port",
            type=port,
            metavar="PORT",
            help="serve /metrics (keel.process.* among them) on 127.0.0.1:PORT; needs "
            "KEEL['METRICS_EXPORTER'] = 'prometheus'",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        checks.running_worker = True
        self.check(display_num_errors=False)
        try:
            workers = pick_process_workers(options["names"])
            serve_metrics(options["metrics_port"])
            tune_garbage_collector()  # a process of its own: see framework.runtime
        except FrameworkError as error:
            raise CommandError(str(error)) from error
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        threads = []
        for name, worker in workers.items():
            worker.start_from = options["start_from"]
            if options["instance_id"]:
                for w in worker.workers:
                    w.settings = w.settings.model_copy(
                        update={"instance_id": f"{options['instance_id']}.{w.store.name}"}
                    )
            thread = threading.Thread(target=worker.run, args=(stop,), name=name, daemon=True)
            thread.start()
            threads.append(thread)
            self.stdout.write(f"{name}: running")
        while not stop.wait(0.5):
            if not any(t.is_alive() for t in threads):
                raise CommandError("every process manager stopped; see the log")
        for thread in threads:
            thread.join(30)
