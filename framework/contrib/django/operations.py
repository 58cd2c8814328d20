"""Operating projections from Django: status, rebuild, dead-letter re-drive, workers.

Shared by the admin's projections page and the management commands, so both report the same
figures.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import close_old_connections

from framework import dead_letters
from framework.contrib.django import heartbeats
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
    "rebuild_in_background",
    "redrive",
    "status_rows",
    "wait_for_rebuilds",
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
    worker: heartbeats.Beat | None = None
    """The last heartbeat of a worker of this projection (None: never seen one)."""
    rebuild: heartbeats.Beat | None = None
    """The last report of a rebuild started from the admin."""
    lag_seconds: float = 0.0
    """How long ago the oldest event still to apply was recorded (0 when caught up)."""

    @property
    def worker_alive(self) -> bool:
        return self.worker is not None and self.worker.alive

    @property
    def rebuild_running(self) -> bool:
        return (
            self.rebuild is not None
            and self.rebuild.alive
            and (self.rebuild.progress or 0.0) < 1.0
            and not (self.rebuild.detail or "").startswith(("done", "failed"))
        )

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
            "lag_seconds": round(self.lag_seconds, 3),
            "worker_alive": self.worker_alive,
            "worker_beat_at": self.worker.beat_at.isoformat() if self.worker else None,
            "last_applied_at": (
                self.worker.applied_at.isoformat()
                if self.worker and self.worker.applied_at
                else None
            ),
        }


def status_rows(*, names: list[str] | None = None, dead_letters: bool = False) -> list[StatusRow]:
    """The status of every configured projection (or of ``names``); a projection whose tables
    cannot be read gets a row with ``error`` set rather than failing the page."""
    from framework.worker import status

    store = get_application().store
    engine = get_engine()
    try:
        beats = heartbeats.read_beats(engine)
    except Exception as error:  # no heartbeats is no reason to hide the positions
        log.warning("cannot read heartbeats: %s", error)
        beats = {}
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
        row.worker = beats.get(name)
        row.rebuild = beats.get(name + REBUILD_SUFFIX)
        row.lag_seconds = _lag_seconds(store, row.positions) if row.lag else 0.0
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


def _lag_seconds(store: Any, positions: dict[int, int]) -> float:
    """Age of the oldest event not yet applied (reads one event per lagging partition)."""
    from framework.codec import codec

    oldest: dt.datetime | None = None
    for partition, position in positions.items():
        for record in store.read_partition(partition, start=position, limit=1):
            try:
                moment = getattr(codec.decode(record).event, "timestamp", None)
            except FrameworkError:
                continue
            if isinstance(moment, dt.datetime) and (oldest is None or moment < oldest):
                oldest = moment
    if oldest is None:
        return 0.0
    if oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=dt.UTC)
    return max(0.0, (dt.datetime.now(dt.UTC) - oldest).total_seconds())


def _dead_letters(engine: Any, projection: Any, limit: int) -> list[dead_letters.DeadLetter]:
    return dead_letters.list_dead_letters(engine, projection, limit=limit)


class DjangoProjectionWorker(ProjectionWorker):
    """A projection worker that releases Django's database connections between batches (a
    long-running process must not hold on to connections the database has closed), and
    leaves heartbeats and lag samples for the projections page
    (:mod:`~framework.contrib.django.heartbeats`; written by a background thread, so the poll
    loop never waits for them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pulse = heartbeats.Pulse(
            self.engine, self.projection.name, sample=self._lag, dead_letters=self._dead_letters
        )

    def run(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().run(*args, **kwargs)
        finally:
            self.pulse.close()  # the last beat, with the last batches' count

    def open_feed(self) -> Any:
        return _BeatingFeed(super().open_feed(), self.pulse)

    def process(self, events: list[RecordedEvent]) -> None:
        super().process(events)
        self.pulse(len(events))
        close_old_connections()

    def _dead_letters(self) -> int:
        from framework import dead_letters

        return dead_letters.count(self.engine, self.projection)

    def _lag(self) -> int | None:
        """Events between this worker's positions and the head, over its partitions."""
        positions = dict(self.applier.positions)
        if not positions:
            return None
        head = self.store.head()
        return sum(max(0, head.get(p, 0) - (o or 0)) for p, o in positions.items())


class _BeatingFeed:
    """The worker's feed reader, beating on every poll (so an idle worker looks alive)."""

    def __init__(self, reader: Any, pulse: Callable[..., None]) -> None:
        self._reader = reader
        self._pulse = pulse

    def poll(self, *args: Any, **kwargs: Any) -> Any:
        events = self._reader.poll(*args, **kwargs)
        self._pulse()
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


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


REBUILD_SUFFIX = ":rebuild"
_running: dict[str, threading.Thread] = {}
_running_lock = threading.Lock()


def rebuild_in_background(name: str) -> bool:
    """Start rebuilding ``name`` in a thread of this process; its progress goes to the
    heartbeats (the projections page shows it). False when one is running already."""
    engine = get_engine()
    get_projection(name)  # an unknown name fails here, in the request
    with _running_lock:
        thread = _running.get(name)
        if thread is not None and thread.is_alive():
            return False
        last = [0.0]

        def report(p: Any) -> None:
            now = time.monotonic()
            if not p.finished and now - last[0] < 1.0:
                return
            last[0] = now
            heartbeats.beat(
                engine,
                name + REBUILD_SUFFIX,
                kind="rebuild",
                progress=p.fraction,
                detail=f"{p.events_done} events, {p.rate:.0f} events/s",
            )

        def run() -> None:
            try:
                heartbeats.beat(engine, name + REBUILD_SUFFIX, kind="rebuild", progress=0.0)
                summary = rebuild(name, progress=report)
            except Exception as error:  # shown on the page; the log has the traceback
                log.exception("rebuild of %s failed", name)
                detail = f"failed: {type(error).__name__}: {error}"
                heartbeats.beat(engine, name + REBUILD_SUFFIX, kind="rebuild", detail=detail)
            else:
                heartbeats.beat(
                    engine,
                    name + REBUILD_SUFFIX,
                    kind="rebuild",
                    progress=1.0,
                    detail=f"done: {summary}",
                )

        thread = threading.Thread(target=run, name=f"rebuild-{name}", daemon=True)
        _running[name] = thread
        thread.start()
    return True


def wait_for_rebuilds(timeout: float = 30.0) -> None:
    """Join the background rebuilds of this process (for tests and shutdown)."""
    deadline = time.monotonic() + timeout
    for thread in list(_running.values()):
        thread.join(max(0.0, deadline - time.monotonic()))


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
    result = dead_letters.redrive(engine, projection, aggregate_ids=aggregate_ids)
    summary = f"re-drove {result.applied} dead letter(s); {result.remaining} remain"
    if result.failed:
        failed = "; ".join(f"{a}: {e}" for a, e in list(result.failed.items())[:5])
        summary += f"; still failing: {failed}"
    return summary
