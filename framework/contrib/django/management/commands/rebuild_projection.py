"""``manage.py rebuild_projection NAME [--from-position P:O ...]``."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from framework.contrib.django import operations
from framework.contrib.django.conf import get_application, get_projections
from framework.contrib.django.execution import check_positions, format_positions, parse_positions
from framework.errors import FrameworkError


class Command(BaseCommand):
    help = (
        "Rebuild a projection's read model without downtime: replay the event store into shadow "
        "tables, then swap them in atomically (queries keep reading the old tables until then; "
        "a running worker continues from the rebuilt positions). Shows a progress bar on a "
        "terminal and a line every few seconds otherwise."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", metavar="NAME", help="the projection to rebuild")
        parser.add_argument(
            "--from-position",
            action="append",
            default=[],
            metavar="P:O",
            help="start partition P at offset O instead of the beginning (repeat, or give "
            "P:O,P:O); events before it are not replayed",
        )
        parser.add_argument(
            "--no-progress", action="store_true", help="no progress bar, even on a terminal"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"]
        try:
            known = get_projections()
        except FrameworkError as error:
            raise CommandError(str(error)) from error
        if name not in known:
            raise CommandError(
                f"no projection is named {name!r}; known: {', '.join(sorted(known)) or 'none'}"
            )
        try:
            start = parse_positions(",".join(options["from_position"]))
        except ValueError as error:
            raise CommandError(f"--from-position: {error}") from error
        if start:
            # A partition the store lacks would be skipped silently: the rebuild would start
            # from the beginning and the operator would never know.
            try:
                check_positions(start, get_application().store.head())
            except ValueError as error:
                raise CommandError(f"--from-position: {error}") from error
            except FrameworkError as error:
                raise CommandError(f"cannot read the event store: {error}") from error
        tty = self.stdout.isatty() and not options["no_progress"]
        progress = _RichBar(name, self.stdout) if tty else _Lines(self)
        extra = {"from_positions": start} if start else {}
        self.stdout.write(
            f"rebuilding {name}"
            + (f" from {format_positions(start)}" if start else " from the beginning")
        )
        try:
            summary = operations.rebuild(name, progress=progress, **extra)
        except FrameworkError as error:
            raise CommandError(f"rebuild of {name} failed: {error}") from error
        finally:
            progress.close()
        self.stdout.write(self.style.SUCCESS(f"rebuilt {name}: {summary}"))


class _Lines:
    """A progress line every few seconds (output is not a terminal)."""

    def __init__(self, command: BaseCommand, interval: float = 5.0) -> None:
        self.command = command
        self.interval = interval
        self.last = 0.0

    def __call__(self, p: Any) -> None:
        now = time.monotonic()
        if not p.finished and now - self.last < self.interval:
            return
        self.last = now
        self.command.stdout.write(
            f"  {p.events_done} events, {100 * p.fraction:.0f}%, {p.rate:.0f} events/s"
            + ("" if p.eta is None else f", ETA {p.eta:.0f}s")
        )

    def close(self) -> None:
        pass


class _RichBar:
    """A rich progress bar on the terminal."""

    def __init__(self, name: str, stream: Any) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn(f"[bold]{name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.0f} events/s"),
            TimeRemainingColumn(),
            console=Console(file=stream),
        )
        self.task: Any = None

    def __call__(self, p: Any) -> None:
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task(p.projection, total=p.offsets_total or 1, rate=0.0)
        self.bar.update(
            self.task, completed=p.offsets_done, total=p.offsets_total or 1, rate=p.rate
        )

    def close(self) -> None:
        if self.task is not None:
            self.bar.stop()
