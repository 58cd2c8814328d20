"""``manage.py keel_check``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from framework.contrib.django import checks
from framework.contrib.django.conf import get_application, get_engine, get_settings
from framework.contrib.django.execution import format_positions
from framework.errors import FrameworkError


class Command(BaseCommand):
    help = (
        "Check the deployment end to end: the KEEL settings, that the event store is reachable "
        "and safely configured (on Kafka: the topic exists with retention.ms=-1, no compaction, "
        "an unchanged partition count; the store refuses unsafe settings when it opens), and "
        "that the read-model database is reachable and at the Alembic head. Exits non-zero "
        "when anything fails."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--skip-store", action="store_true", help="do not open the event store")

    def handle(self, *args: Any, **options: Any) -> None:
        problems: list[str] = []
        try:
            keel = get_settings()
        except FrameworkError as error:
            raise CommandError(str(error)) from error
        self._ok(f"settings: application {keel.application}")
        if not options["skip_store"]:
            try:
                app = get_application()
                head = app.store.head()
                self._ok(
                    f"event store: {type(app.store).__name__} '{app.name}', "
                    f"{app.store.partitions} partition(s), head {format_positions(head) or '-'}"
                )
            except Exception as error:  # report every failure, then exit non-zero
                problems.append(f"event store: {type(error).__name__}: {error}")
                self._fail(problems[-1])
        try:
            with get_engine().connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            self._ok(f"read-model database: {get_engine().url.render_as_string()}")
        except Exception as error:
            problems.append(f"read-model database: {type(error).__name__}: {error}")
            self._fail(problems[-1])
        else:
            try:
                heads, current = checks.alembic_revisions()
            except Exception as error:
                problems.append(f"alembic: {error}")
                self._fail(problems[-1])
            else:
                if heads == current:
                    self._ok(f"alembic: at head {', '.join(sorted(heads)) or '(none)'}")
                else:
                    problems.append(
                        f"alembic: the database is at {sorted(current) or 'no revision'}, the "
                        f"head is {sorted(heads)}: run `alembic upgrade head`"
                    )
                    self._fail(problems[-1])
        for message in checks.check_settings():
            problems.append(f"{message.id}: {message.msg}")
            self._fail(problems[-1])
        if problems:
            raise CommandError(f"{len(problems)} problem(s) found")
        self.stdout.write(self.style.SUCCESS("all checks passed"))

    def _ok(self, text: str) -> None:
        self.stdout.write(f"{self.style.SUCCESS('ok')}    {text}")

    def _fail(self, text: str) -> None:
        self.stdout.write(f"{self.style.ERROR('FAIL')}  {text}")
