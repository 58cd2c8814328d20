"""Operating projections from Django: status, rebuild, dead-letter re-drive, workers.

Shared by the admin's projections page and the management commands, so both report the same
figures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import close_old_connections

from framework import dead_letters
from framework.contrib.django.conf import (
    consumer_group,
    get_application,
    get_engine,
    get_projection,
    get_projections,
)
from framework.contrib.django.execution import format_positions
from framework.errors import FrameworkError
from framework.persistence import RecordedEvent
from framework.worker import ProjectionWorker

__all__ = [
    "DjangoProjectionWorker",
    "StatusRow",
    "make_worker",
    "rebuild",
    "redrive",
    "status_rows",
]

log = logging.getLogger(__name__)


@dataclass
class StatusRow:
    """One projection's standing, ready for a template or JSON."""

    name: str
    version: int
    stored_version: int | None = None
    positions: dict[int, int] = field(default_factory=dict)
    head: dict[int, int] = field(default_factory=dict)
    lag: int = 0
    dead_letter_count: int = 0
    rebuilding: bool = False
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def positions_text(self) -> str:
        return format_positions(self.positions)

    @property
    def head_text(self) -> str:
        return format_positions(self.head)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "stored_version": self.stored_version,
            "positions": {str(k): v for k, v in self.positions.items()},
            "head": {str(k): v for k, v in self.head.items()},
            "lag": self.lag,
            "dead_letters": self.dead_letter_count,
            "rebuilding": self.rebuilding,
            "error": self.error,
        }


def status_rows(*, names: list[str] | None = None, dead_letters: bool = False) -> list[StatusRow]:
    """The status of every configured projection (or of ``names``); a projection whose tables
    cannot be read gets a row with ``error`` set rather than failing the page."""
    from framework.worker import status

    store = get_application().store
    engine = get_engine()
    rows = []
    for name in names or list(get_projections()):
        projection = get_projection(name)
        row = StatusRow(name=name, version=projection.version)
        try:
            found = status(projection, store, engine)
        except Exception as error:  # the page must show the others; the error is shown here
            row.error = f"{type(error).__name__}: {error}"
            rows.append(row)
            continue
        row.stored_version = found.stored_version
        row.positions = {p.partition: p.position for p in found.partitions}
        row.head = {p.partition: p.head for p in found.partitions}
        row.lag = found.lag
        row.dead_letter_count = found.dead_letters
        row.rebuilding = found.rebuilding
        if dead_letters and found.dead_letters:
            row.dead_letters = [
                {
                    "id": d.id,
                    "position": f"{d.partition}:{d.offset}",
                    "topic": d.event_type,
                    "aggregate_id": d.aggregate_id,
                    "version": d.version,
                    "reason": d.reason,
                    "error": f"{d.error_type}: {d.error_message}"[:2000],
                    "failed_at": d.created_at,
                }
                for d in _dead_letters(engine, projection, limit=100)
            ]
        rows.append(row)
    return rows


def _dead_letters(engine: Any, projection: Any, limit: int) -> list[dead_letters.DeadLetter]:
    return dead_letters.list_dead_letters(engine, projection, limit=limit)


class DjangoProjectionWorker(ProjectionWorker):
    """A projection worker that releases Django's database connections between batches (a
    long-running process must not hold on to connections the database has closed)."""

    def process(self, events: list[RecordedEvent]) -> None:
        super().process(events)
        close_old_connections()


def make_worker(name: str, **options: Any) -> DjangoProjectionWorker:
    """A worker for a configured projection, on the application's store and the read-model
    engine."""
    options.setdefault("group", consumer_group(name))
    return DjangoProjectionWorker(
        get_projection(name), get_application().store, get_engine(), **options
    )


def rebuild(
    name: str,
    *,
    progress: Callable[..., None] | None = None,
    **options: Any,
) -> str:
    """Rebuild one projection into shadow tables and swap them in; returns a one-line
    summary. ``progress`` is passed on to the rebuild (see :func:`framework.rebuild.rebuild`)."""
    worker = make_worker(name)
    if progress is not None:
        options["progress"] = progress
    result = worker.rebuild(**options)
    return _summary(result)


def _summary(result: Any) -> str:
    if result is None:
        return "done"
    parts = []
    for attribute in ("events", "applied", "seconds", "positions"):
        value = getattr(result, attribute, None)
        if value is None:
            continue
        if attribute == "positions" and isinstance(value, dict):
            value = format_positions(value)
        elif isinstance(value, float):
            value = f"{value:.2f}"
        parts.append(f"{attribute}={value}")
    return ", ".join(parts) or str(result)


def redrive(name: str, ids: list[str] | None = None) -> str:
    """Re-drive a projection's dead letters (those with ``ids``, else all); a summary."""
    projection = get_projection(name)
    engine = get_engine()
    aggregate_ids = None
    if ids is not None:
        wanted = {int(i) for i in ids if str(i).isdigit()}
        letters = dead_letters.list_dead_letters(engine, projection)
        aggregate_ids = sorted({d.aggregate_id for d in letters if d.id in wanted})
        if not aggregate_ids:
            raise FrameworkError("none of the selected dead letters exists any more")
    result = dead_letters.redrive(projection, engine, aggregate_ids=aggregate_ids)
    summary = f"re-drove {result.applied} dead letter(s); {result.remaining} remain"
    if result.failed:
        failed = "; ".join(f"{a}: {e}" for a, e in list(result.failed.items())[:5])
        summary += f"; still failing: {failed}"
    return summary
