"""Operator figures of a streaming projection: stream times, watermark, open windows and late
events (the wall clock appears here only, for the operator's ``watermark_lag_seconds``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from framework.database import read_only
from framework.positions import reporting_missing_tables
from framework.streaming._projection import StreamProjection
from framework.streaming._values import utc
from framework.streaming._windowed import Windowed

__all__ = ["StreamStatus", "stream_status"]


@dataclass
class StreamStatus:
    """Per partition stream time, the watermark (``min st[p]``), and per windowed table the
    open windows, rows amended after close, and late events by action."""

    stream_times: dict[int, datetime]
    partitions: int | None
    watermark: datetime | None
    watermark_lag_seconds: float | None
    open_windows: dict[str, int] = field(default_factory=dict)
    amended_after_close: dict[str, int] = field(default_factory=dict)
    late_events: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "partitions": self.partitions,
            "stream_times": {str(p): t.isoformat() for p, t in sorted(self.stream_times.items())},
            "watermark": self.watermark.isoformat() if self.watermark else None,
            "watermark_lag_seconds": self.watermark_lag_seconds,
            "open_windows": self.open_windows,
            "amended_after_close": self.amended_after_close,
            "late_events": self.late_events,
        }

    def summary(self) -> str:
        """One line: the watermark and the late events by action."""
        if self.watermark is None:
            mark = "no watermark yet (no window closes)"
        else:
            lag = self.watermark_lag_seconds or 0.0
            mark = f"watermark {self.watermark:%Y-%m-%d %H:%M:%S} UTC ({lag:,.0f} s behind)"
        totals: dict[str, int] = {}
        for actions in self.late_events.values():
            for action, count in actions.items():
                totals[action] = totals.get(action, 0) + count
        late = ", ".join(f"{a} {n}" for a, n in sorted(totals.items())) or "none"
        return f"{mark}; open windows {sum(self.open_windows.values())}; late events: {late}"


def stream_status(projection: StreamProjection, engine: Engine) -> StreamStatus:
    """Read ``projection``'s stream figures (a read-only transaction)."""
    with (
        reporting_missing_tables(engine, projection.name, projection.tables),
        engine.connect() as conn,
        read_only(conn).begin(),
    ):
        times: dict[int, datetime] = {}
        partitions = type(projection).partitions
        for row in conn.execute(sa.select(projection._keel_stream_time)):
            if row.max_event_time is not None:
                times[row.partition] = utc(row.max_event_time)
            if row.partitions and type(projection).partitions is None:
                partitions = max(partitions or 0, row.partitions)
        known = partitions is not None and all(p in times for p in range(partitions))
        watermark = min(times[p] for p in range(partitions or 0)) if known else None
        status = StreamStatus(
            times,
            partitions,
            watermark,
            None if watermark is None else (datetime.now(UTC) - watermark).total_seconds(),
        )
        for attr, stream in projection._streams.items():
            if not isinstance(stream, Windowed):
                continue
            rows = stream.current(projection, "rows")
            source = stream.current(projection, "open" if stream.emit == "final" else "rows")
            status.open_windows[attr] = conn.execute(
                sa.select(sa.func.count()).select_from(source).where(source.c.closed.is_(False))
            ).scalar_one()
            status.amended_after_close[attr] = conn.execute(
                sa.select(sa.func.count())
                .select_from(rows)
                .where(rows.c.amended_after_close.is_(True))
            ).scalar_one()
        late = projection._keel_late_events
        counts = conn.execute(
            sa.select(late.c.stream, late.c.action, sa.func.count()).group_by(
                late.c.stream, late.c.action
            )
        )
        for stream_name, action, count in counts:
            status.late_events.setdefault(stream_name, {})[action] = int(count)
    return status
