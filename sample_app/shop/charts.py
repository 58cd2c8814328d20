"""The sales chart above the sales-per-hour list: revenue per hour over the last 48 hours,
every hour shown (an hour without sales is a gap people should see, not a missing bar)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.http import HttpRequest

from framework.contrib.django.charts import bar_chart

HOURS = 48


def sales_chart(request: HttpRequest, model_admin: Any) -> str:
    end = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    start = end - dt.timedelta(hours=HOURS - 1)
    rows = model_admin.get_queryset(request).filter(hour__gte=start).values_list("hour", "revenue")
    revenue = {
        (h if h.tzinfo else h.replace(tzinfo=dt.UTC)).replace(minute=0, second=0, microsecond=0): r
        for h, r in rows
    }
    points = [
        (start + dt.timedelta(hours=i), revenue.get(start + dt.timedelta(hours=i), Decimal(0)))
        for i in range(HOURS)
    ]
    return bar_chart(points, title="Revenue per hour, last 48 hours", unit=" €")
