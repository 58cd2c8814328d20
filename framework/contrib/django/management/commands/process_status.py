"""``manage.py process_status [NAME ...] [--json] [--grace SECONDS] [--redrive [--id N]]``."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from framework.arguments import non_negative_float, positive_int
from framework.contrib.django.conf import pick_process_workers
from framework.errors import FrameworkError
from framework.process import redrive_parked, status


class Command(BaseCommand):
    help = (
        "Show each process manager's active and completed instances, overdue and parked "
        "deadlines, the oldest open instance, unsent commands, dead letters and its counters "
        "(duplicates, unknown instances, deadlines after completion, skipped and parked "
        "handlers). Exits with an error when a deadline is overdue by more than --grace "
        "seconds or a deadline is parked. --redrive handles the parked inputs and deadlines "
        "again first (after a fix): a parked deadline fires once. --redrive --id N re-drives "
        "only those; an id that is not parked is an error, and nothing is re-driven."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="*", help="process managers (default: all)")
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.add_argument(
            "--grace",
            type=non_negative_float,
            default=60.0,
            help="seconds a deadline may be late before it counts as overdue (0 or more; "
            "default 60)",
        )
        parser.add_argument(
            "--redrive",
            action="store_true",
            help="re-drive the dead letters (parked inputs and deadlines) first",
        )
        parser.add_argument(
            "--id",
            type=positive_int,
            action="append",
            metavar="N",
            help="with --redrive: only dead letter N (repeatable; default: all)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["id"] and not options["redrive"]:
            raise CommandError("--id names the dead letters to re-drive: give --redrive too")
        try:
            workers = pick_process_workers(options["names"])
        except FrameworkError as error:
            raise CommandError(str(error)) from error
        try:
            if options["redrive"]:
                redriven = redrive_parked(list(workers.values()), options["id"])
                for name, done in redriven.items():
                    failing = "; ".join(f"{k}: {v}" for k, v in list(done.failed.items())[:5])
                    self.stdout.write(
                        f"{name}: re-drove {done.applied}; still failing: {failing or 'none'}; "
                        f"{done.remaining} left"
                    )
            found = [
                status(w.pm, w.engine, w.clock, grace_seconds=options["grace"])
                for w in workers.values()
            ]
        except FrameworkError as error:  # e.g. an unmigrated read-model database
            raise CommandError(str(error)) from error
        if options["json"]:
            self.stdout.write(json.dumps([s.as_json() for s in found], indent=2))
        else:
            for s in found:
                self.stdout.write("\n".join(s.lines()))
        overdue = sum(len(s.overdue) for s in found)
        if overdue:
            raise CommandError(f"{overdue} deadline(s) overdue: is run_process_managers running?")
        parked = sum(len(s.parked) for s in found)
        if parked:
            raise CommandError(
                f"{parked} deadline(s) parked after failing: fix the handler, then "
                "process_status --redrive"
            )
