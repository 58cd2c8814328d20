"""Instruments, through the OpenTelemetry metrics API (a no-op until the application installs
the SDK's ``MeterProvider``; :mod:`framework.observability.prometheus` installs one that
Prometheus can scrape).

Histograms and most counters are recorded where the work happens. Gauges are observed: a
module that knows a figure registers a callback with :func:`observe`, and the SDK calls it at
each collection (a scrape), so an idle process costs nothing. A counter added to on every
command (``keel.store.append.events``) is a :class:`Total`: a running sum the SDK observes,
since a recorded measurement costs the SDK several microseconds each time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Observation

from framework.observability import _names as n

__all__ = [
    "Reading",
    "Total",
    "instruments",
    "observe",
    "unobserve",
]

Reading = tuple[float, Mapping[str, Any]]
"""One observed value with its attributes, e.g. ``(12, {"projection": "orders"})``."""

Observer = Callable[[], Iterable[Reading]]

_meter = metrics.get_meter("keel")
_observers: dict[str, list[Observer]] = {}
_lock = threading.Lock()

# Seconds; the semconv buckets for messaging durations (5 ms ... 10 s), with 1 ms below.
_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10)
_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def observe(metric: str, observer: Observer) -> Observer:
    """Report ``observer()``'s readings as the gauge (or observed counter) ``metric`` (one of
    :data:`~framework.observability.METRICS` of kind ``gauge``, or ``keel.writer.*``).
    Returns ``observer``, for :func:`unobserve`. An observer that raises is skipped."""
    if metric not in _OBSERVED:
        raise ValueError(f"{metric!r} is not an observed instrument (one of {sorted(_OBSERVED)})")
    with _lock:
        _observers.setdefault(metric, []).append(observer)
    return observer


def unobserve(metric: str, observer: Observer) -> None:
    """Stop reporting ``observer`` (a worker that stops, a writer that leaves)."""
    with _lock:
        found = _observers.get(metric, [])
        if observer in found:
            found.remove(observer)


def _callback(metric: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def collect(_options: CallbackOptions) -> Iterable[Observation]:
        with _lock:
            observers = list(_observers.get(metric, ()))
        readings: list[Observation] = []
        for observer in observers:
            try:
                readings.extend(Observation(value, dict(attrs)) for value, attrs in observer())
            except Exception:  # one broken source must not blank the whole scrape
                continue
        return readings

    return collect


def _recorded(name: str) -> Any:
    """The counter or histogram ``name``, as :data:`_names.METRICS` declares it."""
    kind, unit, description = n.METRICS[name]
    unit = "" if unit == "1" else unit  # "1" would rename the Prometheus series (``_ratio``)
    if kind == "histogram":
        buckets = _DURATION_BUCKETS if unit == "s" else _SIZE_BUCKETS
        return _meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=buckets
        )
    if kind == "counter":
        return _meter.create_counter(name, unit=unit, description=description)
    raise ValueError(f"{name!r} is declared {kind!r}: only counters and histograms are recorded")


class Total:
    """A running total reported as an observed counter: adding to it takes a lock, not a
    measurement through the SDK (what every append would otherwise pay)."""

    __slots__ = ("_lock", "_value")

    def __init__(self) -> None:
        self._value = 0
        self._lock = threading.Lock()

    def add(self, amount: int) -> None:
        with self._lock:  # ``+=`` on an attribute is not atomic across threads
            self._value += amount

    def __call__(self) -> list[Reading]:
        return [(self._value, {})]


class _Instruments:
    """The recorded instruments (observed ones are created below, once)."""

    command_duration: Histogram
    command_conflicts: Counter
    command_rejected: Counter
    store_append_events: Total
    store_txn_duration: Histogram
    projection_events: Counter
    projection_batch_size: Histogram
    cdc_commands: Counter
    cdc_dead_letters: Counter
    process_duration: Histogram

    def __init__(self) -> None:
        for attribute in type(self).__annotations__:
            if attribute != "store_append_events":
                setattr(self, attribute, _recorded(getattr(n, attribute.upper())))
        self.store_append_events = Total()
        observe(n.STORE_APPEND_EVENTS, self.store_append_events)


_OBSERVED = {
    name: (kind, unit, description)
    for name, (kind, unit, description) in n.METRICS.items()
    if kind == "gauge"
    or name
    in (
        n.STORE_APPEND_EVENTS,
        n.WRITER_TRANSACTIONS,
        n.WRITER_FENCED,
        n.WRITER_RETRIES,
        n.WINDOW_LATE_EVENTS,
        n.PROCESS_OUTCOMES,
    )
}

for _name, (_kind, _unit, _description) in _OBSERVED.items():
    if _kind == "gauge":
        _meter.create_observable_gauge(
            _name, callbacks=[_callback(_name)], unit=_unit, description=_description
        )
    else:
        _meter.create_observable_counter(
            _name, callbacks=[_callback(_name)], unit=_unit, description=_description
        )

instruments = _Instruments()
"""The recorded instruments (``instruments.command_duration.record(...)``)."""
