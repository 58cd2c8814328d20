"""Streaming projections' figures as instruments: late events (a counter read from the
``<projection>__late_events`` table, so it is exact across restarts and retried
transactions), open windows and the watermark's lag, sampled at collection time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from framework.observability import _names as n
from framework.observability._metrics import Reading, observe, unobserve

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from framework.streaming import StreamProjection, StreamStatus

__all__ = ["StreamSampler"]


class StreamSampler:
    """Reports ``keel.window.late_events`` (by stream and action), ``keel.window.open`` and
    ``keel.watermark.lag.seconds`` of ``projections``."""

    def __init__(
        self, projections: Iterable[StreamProjection], engine: Engine, *, max_age: float = 1.0
    ) -> None:
        self.projections = list(projections)
        self.engine = engine
        self.max_age = max_age
        self._lock = threading.Lock()
        self._taken = -1e9
        self._sample: list[tuple[str, StreamStatus]] = []
        self._observers: list[tuple[str, Any]] = []

    def sample(self) -> list[tuple[str, StreamStatus]]:
        from framework.streaming import stream_status

        with self._lock:
            if time.monotonic() - self._taken > self.max_age:
                found = []
                for projection in self.projections:
                    try:
                        found.append((projection.name, stream_status(projection, self.engine)))
                    except Exception:  # unreachable database: no reading, not zero
                        continue
                self._sample, self._taken = found, time.monotonic()
            return self._sample

    def _late(self) -> list[Reading]:
        return [
            (count, {n.PROJECTION: name, n.STREAM: stream, n.ACTION: action})
            for name, status in self.sample()
            for stream, actions in status.late_events.items()
            for action, count in actions.items()
        ]

    def _open(self) -> list[Reading]:
        return [
            (count, {n.PROJECTION: name, n.STREAM: stream})
            for name, status in self.sample()
            for stream, count in status.open_windows.items()
        ]

    def _watermark(self) -> list[Reading]:
        return [
            (status.watermark_lag_seconds, {n.PROJECTION: name})
            for name, status in self.sample()
            if status.watermark_lag_seconds is not None
        ]

    def start(self) -> StreamSampler:
        if not self._observers:
            self._observers = [
                (metric, observe(metric, observer))
                for metric, observer in (
                    (n.WINDOW_LATE_EVENTS, self._late),
                    (n.WINDOW_OPEN, self._open),
                    (n.WATERMARK_LAG_SECONDS, self._watermark),
                )
            ]
        return self

    def stop(self) -> None:
        for metric, observer in self._observers:
            unobserve(metric, observer)
        self._observers = []
