"""Process managers' figures as instruments: active instances, overdue deadlines and dead
letters (gauges), and the counted outcomes (``keel.process.outcomes``: duplicates, late
deadlines, skipped and parked handlers), read at collection time from the read-model
database, where every worker of a manager keeps them. So the figures are exact across
restarts, and every process reporting one manager reports the same values (aggregate them
with ``max``, not ``sum``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from framework.observability import _names as n
from framework.observability._metrics import Reading, observe, unobserve

if TYPE_CHECKING:
    from framework.process import ProcessStatus, ProcessWorker

__all__ = ["ProcessSampler"]


class ProcessSampler:
    """Reports ``keel.process.active``, ``keel.process.deadlines.overdue``,
    ``keel.process.dead_letters`` and ``keel.process.outcomes`` (by outcome) of the managers
    of ``workers``, each with the attribute ``process`` (the manager's name). A deadline
    counts as overdue once its due time has passed on the worker's clock; one sample serves a
    collection (``max_age`` seconds)."""

    def __init__(self, workers: Iterable[ProcessWorker], *, max_age: float = 1.0) -> None:
        self.workers = list(workers)
        self.max_age = max_age
        self._lock = threading.Lock()
        self._taken = -1e9
        self._sample: list[ProcessStatus] = []
        self._observers: list[tuple[str, Any]] = []

    def sample(self) -> list[ProcessStatus]:
        from framework.process import status

        with self._lock:
            if time.monotonic() - self._taken > self.max_age:
                found = []
                for worker in self.workers:
                    try:
                        found.append(status(worker.pm, worker.engine, worker.clock))
                    except Exception:  # unreachable database: no reading, not zero
                        continue
                self._sample, self._taken = found, time.monotonic()
            return self._sample

    def _active(self) -> list[Reading]:
        return [(s.active, {n.PROCESS: s.name}) for s in self.sample()]

    def _overdue(self) -> list[Reading]:
        return [(len(s.overdue), {n.PROCESS: s.name}) for s in self.sample()]

    def _dead(self) -> list[Reading]:
        return [(s.dead_letters, {n.PROCESS: s.name}) for s in self.sample()]

    def _outcomes(self) -> list[Reading]:
        return [
            (value, {n.PROCESS: s.name, n.OUTCOME: outcome})
            for s in self.sample()
            for outcome, value in sorted(s.counters.items())
        ]

    def start(self) -> ProcessSampler:
        """Begin reporting (idempotent)."""
        if not self._observers:
            self._observers = [
                (metric, observe(metric, observer))
                for metric, observer in (
                    (n.PROCESS_ACTIVE, self._active),
                    (n.PROCESS_DEADLINES_OVERDUE, self._overdue),
                    (n.PROCESS_DEAD_LETTERS, self._dead),
                    (n.PROCESS_OUTCOMES, self._outcomes),
                )
            ]
        return self

    def stop(self) -> None:
        for metric, observer in self._observers:
            unobserve(metric, observer)
        self._observers = []
