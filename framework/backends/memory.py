"""In-memory event store for unit tests: ``memory://``. Nothing survives the process.

``?max_event_bytes=...&max_append_bytes=...`` set the size limits (see ``recorders``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from eventsourcing.popo import POPOAggregateRecorder, POPOApplicationRecorder

from framework.backends.recorders import SIZE_OPTIONS, RecorderEventStore, size_limits
from framework.backends.url_options import parse_options


def open_store(url: str = "memory://", *, name: str) -> RecorderEventStore:
    """Open a fresh, empty in-memory store."""
    options = parse_options(urlsplit(url).query, SIZE_OPTIONS, store="memory")
    max_event, max_append = size_limits(options)
    return RecorderEventStore(
        name,
        POPOApplicationRecorder(),
        POPOAggregateRecorder(),
        max_event_bytes=max_event,
        max_append_bytes=max_append,
    )
