"""The sales charts above the sales-per-hour list: revenue per hour over the last 48 hours and
revenue per Zurich day over the last 14 days, every hour and day shown (one without sales is a
gap people should see, not a missing bar)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.http import HttpRequest
from django.utils.safestring import SafeString

from framework.contrib.django.charts import bar_chart
from framework.contrib.django.conf import get_engine
from framework.database import read_only
from projections.sales import ZONE, SalesPerHourProjection

HOURS = 48
DAYS = 14


def sales_chart(request: HttpRequest, model_admin: Any) -> str:
    end = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    start = end - dt.timedelta(hours=HOURS - 1)
    rows = (
        model_admin.get_queryset(request)
        .filter(window_start__gte=start)
        .values_list("window_start", "revenue")
    )
    revenue = {
        (h if h.tzinfo else h.replace(tzinfo=dt.UTC)).replace(minute=0, second=0, microsecond=0): r
        for h, r in rows
    }
    points = [
        (start + dt.timedelta(hours=i), revenue.get(start + dt.timedelta(hours=i), Decimal(0)))
        for i in range(HOURS)
    ]
    return bar_chart(points, title="Revenue per hour, last 48 hours", unit=" €")


def daily_chart(today: dt.date | None = None) -> SafeString:
    """Revenue per calendar day in Zurich (all countries), from the daily window's pull query."""
    daily = SalesPerHourProjection.daily
    zone = ZoneInfo(ZONE)
    last = today or dt.datetime.now(zone).date()
    days = [last - dt.timedelta(days=n) for n in reversed(range(DAYS))]
    first = dt.datetime.combine(days[0], dt.time(), zone).astimezone(dt.UTC)
    with get_engine().connect() as conn, read_only(conn).begin():
        rows = daily.query(conn, window_start__gte=first)
    revenue: dict[dt.date, Decimal] = {}
    for row in rows:
        start = row["window_start"]
        day = (start if start.tzinfo else start.replace(tzinfo=dt.UTC)).astimezone(zone).date()
        revenue[day] = revenue.get(day, Decimal(0)) + (row["revenue"] or Decimal(0))
    points = [
        (dt.datetime.combine(day, dt.time(), zone), revenue.get(day, Decimal(0))) for day in days
    ]
    return bar_chart(
        points,
        title=f"Revenue per day ({ZONE}), last {DAYS} days",
        unit=" €",
        label="%a %d %b",
        tip="%Y-%m-%d",
    )
