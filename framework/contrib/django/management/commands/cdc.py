"""``manage.py cdc install|run|status|dead-letters|redrive FEED [options]``: the change feeds
of :mod:`framework.cdc`, run and watched from the Django host. The arguments are those of
``python -m framework.cdc`` (and its exit codes: 3 from ``status`` means dead letters, a
last error or a source out of reach; a feed that cannot be loaded or configured, or whose
own database cannot be reached, is a ``CommandError`` with the reason)."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from framework.cdc.__main__ import execute
from framework.errors import FrameworkError


class Command(BaseCommand):
    help = (
        "Change data capture: translate a legacy table's inserts, updates and deletes into "
        "commands. install FEED (changelog, trigger, initial snapshot); run FEED "
        "[--until-caught-up] (until SIGTERM); status FEED [--json] (cursor, lag in changes and "
        "seconds, dead letters, last error); dead-letters FEED; redrive FEED [--row ID]. FEED "
        "is module:callable returning a ChangeFeed, e.g. sample_app.crm:feed. "
        "Details: python -m framework.cdc --help."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "cdc_args",
            nargs=argparse.REMAINDER,
            metavar="COMMAND FEED [OPTIONS]",
            help="passed to python -m framework.cdc",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        argv = list(options["cdc_args"])
        if not argv:
            raise CommandError("name a command: install, run, status, dead-letters or redrive")
        try:
            code = execute(argv)
        except FrameworkError as error:  # the feed's own reason (set-up, database), not usage
            raise CommandError(f"cdc {' '.join(argv)}: {error}") from error
        except SystemExit as exit_:  # argparse's own usage errors (it printed which)
            code = int(exit_.code or 0)
            if code == 2:
                raise CommandError(
                    f"cdc {' '.join(argv)}: bad arguments (python -m framework.cdc --help)"
                ) from exit_
        if code:
            raise SystemExit(code)
