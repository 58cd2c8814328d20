"""In-memory event store for unit tests: ``memory://``. Nothing survives the process.

``?max_event_bytes=...&max_append_bytes=...`` set the size limits (see ``recorders``).
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from eventsourcing.popo import POPOAggregateRecorder, POPOApplicationRecorder

from framework.backends.recorders import RecorderEventStore, size_limits


def open_store(url: str = "memory://", *, name: str) -> RecorderEventStore:
    """Open a fresh, empty in-memory store."""
    max_event, max_append = size_limits(parse_qs(urlsplit(url).query))
    return RecorderEventStore(
        name,
        POPOApplicationRecorder(),
        POPOAggregateRecorder(),
        max_event_bytes=max_event,
        max_append_bytes=max_append,
    )
