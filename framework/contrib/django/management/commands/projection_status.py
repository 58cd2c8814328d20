"""``manage.py projection_status [NAME ...] [--json]``."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from framework.contrib.django import operations
from framework.contrib.django.conf import get_projections
from framework.errors import FrameworkError


class Command(BaseCommand):
    help = (
        "Show each projection's positions, the store's head, the lag (events not yet applied), "
        "its dead letters and whether a worker is running (its heartbeat: a worker started by "
        "run_projections beats every few seconds). Exits 0 even when projections lag, 1 when "
        "a projection's status cannot be read (e.g. an unmigrated read-model database); --json "
        "for scripts. A streaming projection also shows its watermark, open windows and late "
        "events (python -m framework.streaming late lists them)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="*", metavar="NAME", help="projections (default: all)")
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            known = get_projections()
            unknown = [n for n in options["names"] if n not in known]
            if unknown:
                raise CommandError(
                    f"unknown projection(s): {', '.join(unknown)}; known: "
                    f"{', '.join(sorted(known))}"
                )
            rows = operations.status_rows(names=options["names"] or None)
        except FrameworkError as error:
            raise CommandError(str(error)) from error
        streams = _stream_lines(known, [r.name for r in rows])
        if options["json"]:
            data = [{**r.as_json(), **streams.get(r.name, ({}, ""))[0]} for r in rows]
            self.stdout.write(json.dumps(data, indent=2))
        else:
            self._table(rows, streams)
        failed = [r.name for r in rows if r.error]
        if failed:
            # A status nobody could read is no "all is well": scripts and operators see exit 1.
            raise CommandError(f"cannot read the status of {', '.join(failed)} (see above)")

    def _table(
        self, rows: list[operations.StatusRow], streams: dict[str, tuple[dict[str, Any], str]]
    ) -> None:
        header = ("projection", "version", "positions", "head", "lag", "dead letters", "worker")
        table = [
            (
                r.name,
                str(r.version)
                if r.stored_version in (None, r.version)
                else f"{r.version} (tables: {r.stored_version})",
                r.positions_text or "-",
                r.head_text or "-",
                str(r.lag) if r.error is None else "?",
                str(r.dead_letter_count),
                _worker(r),
            )
            for r in rows
        ]
        widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
        self.stdout.write("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        for r, row in zip(rows, table, strict=True):
            line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
            if r.error:
                self.stdout.write(self.style.ERROR(f"{line}  {r.error}"))
            elif r.lag or r.dead_letter_count:
                self.stdout.write(self.style.WARNING(line))
            else:
                self.stdout.write(line)
        for name, (_data, summary) in streams.items():
            self.stdout.write(f"stream {name}: {summary}")


def _stream_lines(known: dict[str, Any], names: list[str]) -> dict[str, tuple[dict[str, Any], str]]:
    """Per streaming projection: its stream figures (for --json) and a one-line summary."""
    from framework.contrib.django.conf import get_engine
    from framework.streaming import StreamProjection, stream_status

    out: dict[str, tuple[dict[str, Any], str]] = {}
    for name in names:
        projection = known[name]
        if isinstance(projection, StreamProjection):
            try:
                status = stream_status(projection, get_engine())
            except Exception as error:  # a status never fails on one projection's tables
                out[name] = ({"stream": {"error": str(error)}}, f"unavailable ({error})")
                continue
            out[name] = ({"stream": status.as_json()}, status.summary())
    return out


def _worker(row: operations.StatusRow) -> str:
    if row.worker is None:
        return "never seen"
    if row.worker_alive:
        return f"running ({row.worker.owner})"
    return f"stopped (last beat {row.worker.beat_at:%Y-%m-%d %H:%M:%S})"
