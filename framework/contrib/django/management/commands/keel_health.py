"""``manage.py keel_health [web|workers|writers] [--projection NAME] [--json]``."""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from framework.contrib.django import observability
from framework.errors import ConfigurationError, FrameworkError


class Command(BaseCommand):
    help = (
        "Check health for a container orchestrator's probe: exit 0 when ready, 1 when not "
        "(2 for a --projection that does not exist), with each check on stdout. 'web' "
        "(default): the event store and the read-model database answer. 'workers': every "
        "projection (or each --projection) has a worker that beats and applies (one that "
        "lags without applying for "
        "KEEL['HEALTH_STALL_AFTER'] seconds counts as stopped). 'writers': on Kafka, every "
        "writer shard is owned by a live writer."
    )
    requires_system_checks: list[str] = []  # a probe must be quick and must not fail on a warning

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("role", nargs="?", choices=["web", "workers", "writers"], default="web")
        parser.add_argument(
            "--projection",
            action="append",
            dest="projections",
            help="check only this projection's workers (repeatable)",
        )
        parser.add_argument(
            "--stall-after",
            type=float,
            help="seconds a projection may lag without applying (default "
            "KEEL['HEALTH_STALL_AFTER'])",
        )
        parser.add_argument("--json", action="store_true", help="print the checks as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        role = options["role"]
        try:
            if role == "workers":
                health = observability.worker_health(
                    options["projections"], stall_after=options["stall_after"]
                )
            elif role == "writers":
                health = observability.writer_health()
            else:
                health = observability.web_health()
        except ConfigurationError as error:  # a probe with a typo: bad arguments, not unready
            raise CommandError(str(error), returncode=2) from error
        except FrameworkError as error:
            raise CommandError(str(error)) from error
        if options["json"]:
            self.stdout.write(json.dumps(health.as_json(), indent=2))
        else:
            self.stdout.write(health.describe())
        if not health.ok:
            sys.exit(1)
