"""The signals of applying one batch of events to a read model: its ``process <topic>`` span
(linked to the commands whose events it holds), its size, duration and outcomes."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from framework.observability import _names as n
from framework.observability._logs import log_context
from framework.observability._metrics import instruments
from framework.observability._tracing import MAX_LINKS, process_span, tracing_enabled

if TYPE_CHECKING:
    from framework.persistence import RecordedEvent

__all__ = ["event_log_context", "observed_batch", "traceparents_of"]

# A scan, not a JSON parse: the batch's events are decoded once, by the handlers.
_TRACEPARENT = re.compile(rb'"traceparent":"([0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2})"')
_IDS = {
    key: re.compile(rb'"' + key.encode() + rb'":"([0-9a-f-]{36})"')
    for key in ("command_id", "correlation_id", "causation_id")
}

_OUTCOMES = (
    ("events_applied", n.APPLIED),
    ("events_skipped", n.SKIPPED_UNHANDLED),
    ("duplicates_skipped", n.DUPLICATE),
    ("dead_lettered", n.DEAD_LETTERED),
    ("held", n.HELD),
)


def traceparents_of(events: Sequence[RecordedEvent], limit: int = MAX_LINKS) -> list[str]:
    r"""The distinct ``traceparent``\ s the events' metadata carries, the first ``limit``."""
    found: dict[str, None] = {}
    for event in events:
        match = _TRACEPARENT.search(event.state)
        if match:
            found[match.group(1).decode("ascii")] = None
            if len(found) >= limit:
                break
    return list(found)


@contextmanager
def event_log_context(event: RecordedEvent) -> Iterator[None]:
    """Log records within carry the ids of the command that caused ``event``."""
    ids: dict[str, Any] = {}
    for key, pattern in _IDS.items():
        match = pattern.search(event.state)
        ids[key] = match.group(1).decode("ascii") if match else None
    with log_context(**ids):
        yield


@contextmanager
def observed_batch(applier: Any, partition: int, events: Sequence[RecordedEvent]) -> Iterator[None]:
    """Around :meth:`Applier.apply_partition`: the span, and the batch's figures from the
    difference its work made to the applier's counters."""
    projection = applier.projection.name
    stats = applier.stats
    before = [getattr(stats, key) for key, _ in _OUTCOMES]
    started = time.perf_counter()
    with process_span(
        applier.topic,
        projection=projection,
        partition=partition,
        first_offset=events[0].offset,
        last_offset=events[-1].offset,
        count=len(events),
        group=applier.group,
        traceparents=traceparents_of(events) if tracing_enabled() else (),
        system=applier.messaging_system,
    ):
        try:
            yield
        finally:
            attributes = {n.PROJECTION: projection}
            instruments.process_duration.record(time.perf_counter() - started, attributes)
            instruments.projection_batch_size.record(len(events), attributes)
            for (key, outcome), was in zip(_OUTCOMES, before, strict=True):
                added = getattr(stats, key) - was
                if added:
                    instruments.projection_events.add(
                        added, {n.PROJECTION: projection, n.OUTCOME: outcome}
                    )
