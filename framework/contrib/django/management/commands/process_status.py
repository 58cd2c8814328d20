"""``manage.py process_status [NAME ...] [--json] [--grace SECONDS]``."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from framework.contrib.django.conf import get_process_workers
from framework.errors import FrameworkError
from framework.process import status


class Command(BaseCommand):
    help = (
        "Show each process manager's active and completed instances, overdue deadlines, the "
        "oldest open instance, unsent commands, dead letters and its no-op counters "
        "(duplicates, unknown instances, deadlines after completion). Exits with an error "
        "when a deadline is overdue by more than --grace seconds."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="*", help="process managers (default: all)")
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.add_argument(
            "--grace",
            type=float,
            default=60.0,
            help="seconds a deadline may be late before it counts as overdue (default 60)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            workers = get_process_workers()
        except FrameworkError as error:
            raise CommandError(str(error)) from error
        names = options["names"] or sorted(workers)
        unknown = [n for n in names if n not in workers]
        if unknown:
            raise CommandError(
                f"unknown process manager {unknown} (known: {', '.join(sorted(workers))})"
            )
        found = [
            status(
                workers[n].pm, workers[n].engine, workers[n].clock, grace_seconds=options["grace"]
            )
            for n in names
        ]
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    [
                        {
                            "name": s.name,
                            "active": s.active,
                            "completed": s.completed,
                            "overdue": [[i, d, str(t)] for i, d, t in s.overdue],
                            "oldest_open": [str(v) for v in s.oldest_open]
                            if s.oldest_open
                            else None,
                            "outbox_pending": s.outbox_pending,
                            "dead_letters": s.dead_letters,
                            "counters": s.counters,
                        }
                        for s in found
                    ],
                    indent=2,
                )
            )
        else:
            for s in found:
                self.stdout.write("\n".join(s.lines()))
        overdue = sum(len(s.overdue) for s in found)
        if overdue:
            raise CommandError(f"{overdue} deadline(s) overdue: is run_process_managers running?")
