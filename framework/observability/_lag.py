"""Projection lag as gauges: events between each projection's position and the head, the age
of the oldest event not yet applied, and dead letters; sampled at collection time from the
store and the read-model database, so any process (a web process too) can report every
projection, including one whose worker is stopped."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydantic_core

from framework.observability import _names as n
from framework.observability._metrics import Reading, observe, unobserve

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from framework.persistence import EventStore, RecordedEvent
    from framework.projection import Projection

__all__ = ["LagSampler", "PartitionLag", "projection_lag"]


@dataclass(frozen=True)
class PartitionLag:
    projection: str
    partition: int
    events: int
    seconds: float
    """Wall clock minus the issue time of the oldest event not yet applied (0 when none)."""


def _issued_at(events: Iterable[RecordedEvent]) -> dt.datetime | None:
    for event in events:
        try:
            meta = pydantic_core.from_json(event.state).get("meta") or {}
            stamp = meta.get("issued_at")
        except (ValueError, AttributeError):
            continue
        if stamp:
            moment = dt.datetime.fromisoformat(stamp)
            return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    return None


def projection_lag(
    projection: Projection, store: EventStore, engine: Engine
) -> tuple[list[PartitionLag], int]:
    """Per partition the lag in events and seconds, and the projection's dead letters."""
    from framework.worker import status

    found = status(projection, store, engine)
    now = dt.datetime.now(dt.UTC)
    lags = []
    for p in found.partitions:
        seconds = 0.0
        if p.lag:
            issued = _issued_at(store.read_partition(p.partition, start=p.position, limit=20))
            seconds = max(0.0, (now - issued).total_seconds()) if issued else 0.0
        lags.append(PartitionLag(projection.name, p.partition, p.lag, seconds))
    return lags, found.dead_letters


class LagSampler:
    """Reports :func:`projection_lag` of ``projections`` as ``keel.projection.lag``,
    ``keel.projection.lag.seconds`` and ``keel.projection.dead_letters``; one sample serves
    the three gauges of one collection (``max_age`` seconds)."""

    def __init__(
        self,
        projections: Iterable[Projection],
        store: EventStore,
        engine: Engine,
        *,
        max_age: float = 1.0,
    ) -> None:
        self.projections = list(projections)
        self.store = store
        self.engine = engine
        self.max_age = max_age
        self._lock = threading.Lock()
        self._taken = -1e9
        self._sample: list[tuple[list[PartitionLag], int, str]] = []
        self._observers: list[tuple[str, Any]] = []

    def sample(self) -> list[tuple[list[PartitionLag], int, str]]:
        with self._lock:
            if time.monotonic() - self._taken > self.max_age:
                found = []
                for projection in self.projections:
                    try:
                        lags, dead = projection_lag(projection, self.store, self.engine)
                    except Exception:  # unreachable store or database: no reading, not zero
                        continue
                    found.append((lags, dead, projection.name))
                self._sample = found
                self._taken = time.monotonic()
            return self._sample

    def _events(self) -> list[Reading]:
        return [
            (lag.events, {n.PROJECTION: lag.projection, n.PARTITION: lag.partition})
            for lags, _, _ in self.sample()
            for lag in lags
        ]

    def _seconds(self) -> list[Reading]:
        return [
            (lag.seconds, {n.PROJECTION: lag.projection, n.PARTITION: lag.partition})
            for lags, _, _ in self.sample()
            for lag in lags
        ]

    def _dead(self) -> list[Reading]:
        return [(dead, {n.PROJECTION: name}) for _, dead, name in self.sample()]

    def start(self) -> LagSampler:
        """Begin reporting (idempotent)."""
        if not self._observers:
            self._observers = [
                (n.PROJECTION_LAG, observe(n.PROJECTION_LAG, self._events)),
                (n.PROJECTION_LAG_SECONDS, observe(n.PROJECTION_LAG_SECONDS, self._seconds)),
                (n.PROJECTION_DEAD_LETTERS, observe(n.PROJECTION_DEAD_LETTERS, self._dead)),
            ]
        return self

    def stop(self) -> None:
        for metric, observer in self._observers:
            unobserve(metric, observer)
        self._observers = []
