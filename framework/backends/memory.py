"""In-memory event store for unit tests: ``memory://``. Nothing survives the process."""

from __future__ import annotations

from eventsourcing.popo import POPOAggregateRecorder, POPOApplicationRecorder

from framework.backends.recorders import RecorderEventStore


def open_store(url: str = "memory://", *, name: str) -> RecorderEventStore:
    """Open a fresh, empty in-memory store."""
    return RecorderEventStore(name, POPOApplicationRecorder(), POPOAggregateRecorder())
