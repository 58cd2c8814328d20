"""Window shapes: which windows an event time falls in.

Fixed windows are aligned to the Unix epoch in UTC (as Kafka Streams and Flink align them);
:class:`Calendar` windows follow a time zone's calendar, so a day in ``Europe/Zurich`` lasts 23
or 25 hours on the days clocks change. Bounds are half-open, ``[start, end)``, in aware UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from framework.errors import ConfigurationError
from framework.streaming._values import utc

__all__ = ["Calendar", "Hopping", "Session", "Tumbling", "WindowShape"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Bounds = tuple[datetime, datetime]


def _span(size: timedelta | None, parts: dict[str, float], what: str) -> timedelta:
    span = size if size is not None else timedelta(**parts)
    if span <= timedelta(0):
        raise ConfigurationError(f"{what} needs a positive size, e.g. {what}(hours=1)")
    return span


class WindowShape:
    """Base of the window shapes."""

    merging = False

    def windows(self, moment: datetime) -> list[Bounds]:  # pragma: no cover - abstract
        raise NotImplementedError


class Tumbling(WindowShape):
    """Back-to-back windows of one ``size``: ``Tumbling(hours=1)``."""

    def __init__(self, size: timedelta | None = None, **parts: float) -> None:
        self.size = _span(size, parts, "Tumbling")

    def windows(self, moment: datetime) -> list[Bounds]:
        start = EPOCH + ((utc(moment) - EPOCH) // self.size) * self.size
        return [(start, start + self.size)]

    def __repr__(self) -> str:
        return f"Tumbling({self.size})"


class Hopping(WindowShape):
    """Overlapping windows of ``size`` starting every ``step``: an event counts in each
    window that contains it (``Hopping(size=timedelta(hours=1), step=timedelta(minutes=15))``)."""

    def __init__(self, size: timedelta, step: timedelta) -> None:
        if size <= timedelta(0) or step <= timedelta(0) or step > size:
            raise ConfigurationError("Hopping needs 0 < step <= size")
        self.size, self.step = size, step

    def windows(self, moment: datetime) -> list[Bounds]:
        since = utc(moment) - EPOCH
        last = since // self.step
        first = (since - self.size) // self.step + 1
        return [
            (EPOCH + k * self.step, EPOCH + k * self.step + self.size)
            for k in range(first, last + 1)
        ]

    def __repr__(self) -> str:
        return f"Hopping(size={self.size}, step={self.step})"


class Calendar(WindowShape):
    """Calendar days, ISO weeks (from Monday) or months in an IANA time zone:
    ``Calendar(days=1, tz="Europe/Zurich")``. Midnight to midnight, local time."""

    def __init__(self, *, days: int = 0, weeks: int = 0, months: int = 0, tz: str = "UTC") -> None:
        if sorted((days, weeks, months)) != [0, 0, 1]:
            raise ConfigurationError("Calendar takes one of days=1, weeks=1 or months=1")
        self.unit = "day" if days else "week" if weeks else "month"
        try:
            self.tz = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ConfigurationError(
                f"unknown time zone {tz!r}: give an IANA name such as 'Europe/Zurich' "
                "(install the tzdata package where the system has no zone database)"
            ) from error

    def _start(self, local: datetime) -> datetime:
        day = local.date()
        if self.unit == "week":
            day -= timedelta(days=day.weekday())
        elif self.unit == "month":
            day = day.replace(day=1)
        return datetime(day.year, day.month, day.day, tzinfo=self.tz)

    def _next(self, start: datetime) -> datetime:
        day = start.date()
        if self.unit == "month":
            day = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
        else:
            day += timedelta(days=1 if self.unit == "day" else 7)
        return datetime(day.year, day.month, day.day, tzinfo=self.tz)

    def windows(self, moment: datetime) -> list[Bounds]:
        start = self._start(utc(moment).astimezone(self.tz))
        return [(start.astimezone(UTC), self._next(start).astimezone(UTC))]

    def __repr__(self) -> str:
        return f"Calendar({self.unit}, tz={self.tz.key!r})"


@dataclass(frozen=True)
class Session(WindowShape):
    """Activity sessions per key: events less than ``gap`` apart share a session; a session
    closes ``gap`` after its last event. Sessions merge when an event bridges two."""

    gap: timedelta
    merging = True

    def __post_init__(self) -> None:
        if self.gap <= timedelta(0):
            raise ConfigurationError("Session needs a positive gap")

    def windows(self, moment: datetime) -> list[Bounds]:
        at = utc(moment)
        return [(at, at)]
