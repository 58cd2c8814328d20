"""Stream processing in projections: windows, joins and late events, identical on every rebuild.

Declarative tables a :class:`StreamProjection` owns, maintained in the same SQL transaction as
its positions (exactly-once), on event time only. See the README's "Stream processing" section
and :mod:`framework.streaming._projection` for the rules that make every interleaving of the
partitions, and every rebuild, give the same rows. Late events are listed and re-driven
through the log (:mod:`framework.streaming._late`, ``python -m framework.streaming late`` and
``redrive``). The test kit is :mod:`framework.streaming.testing`.
"""

from framework.streaming._aggregates import (
    RECOMPUTE,
    Aggregate,
    Collect,
    Count,
    Earliest,
    Latest,
    Max,
    Mean,
    Min,
    Retractions,
    Sum,
)
from framework.streaming._clock import Clock, accept_late, tick
from framework.streaming._closing import CloseContext, CloseHook
from framework.streaming._interval import IntervalJoin
from framework.streaming._joins import Join, Lookup
from framework.streaming._late import LateEvent, late_events, redrive_late
from framework.streaming._projection import Stream, StreamContext, StreamProjection
from framework.streaming._status import StreamStatus, stream_status
from framework.streaming._windowed import Windowed
from framework.streaming._windows import Calendar, Hopping, Session, Tumbling, WindowShape

__all__ = [
    "RECOMPUTE",
    "Aggregate",
    "Calendar",
    "Clock",
    "CloseContext",
    "CloseHook",
    "Collect",
    "Count",
    "Earliest",
    "Hopping",
    "IntervalJoin",
    "Join",
    "LateEvent",
    "Latest",
    "Lookup",
    "Max",
    "Mean",
    "Min",
    "Retractions",
    "Session",
    "Stream",
    "StreamContext",
    "StreamProjection",
    "StreamStatus",
    "Sum",
    "Tumbling",
    "WindowShape",
    "Windowed",
    "accept_late",
    "late_events",
    "redrive_late",
    "stream_status",
    "tick",
]
