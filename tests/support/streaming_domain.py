"""A small domain for the streaming tests: sales that are made, corrected and voided, and
visits; every event carries its own time ``at`` (the event time the tests control)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from framework.domain import Aggregate, event
from framework.streaming import (
    Calendar,
    Collect,
    Count,
    Hopping,
    Latest,
    Max,
    Mean,
    Min,
    Retractions,
    Session,
    StreamProjection,
    Sum,
    Tumbling,
    Windowed,
)


class Sale(Aggregate):
    @event("Made")
    def __init__(self, id: UUID, at: datetime, amount: Decimal, country: str, shopper: str) -> None:
        self.amount = amount

    @event("Corrected")
    def correct(self, at: datetime, amount: Decimal, moved_to: datetime) -> None:
        self.amount = amount

    @event("Voided")
    def void(self, at: datetime) -> None:
        pass


def _when(e: Any) -> datetime:
    moment: datetime = getattr(e, "moved_to", None) or e.at
    return moment


class SalesStreams(StreamProjection):
    name = "test_sales_streams"
    metadata = sa.MetaData()
    event_time = staticmethod(lambda e: e.at)

    hourly = Windowed(
        "t_sales_hourly",
        metadata,
        window=Tumbling(hours=1),
        time=_when,
        key={"country": (sa.String(2), lambda e: e.country)},
        aggregates={
            "sales": Count(),
            "revenue": Sum(lambda e: e.amount, type=sa.Numeric(14, 2)),
            "voided": Retractions(),
        },
        contributes=Sale.Made,
        replaces=Sale.Corrected,
        retracts=Sale.Voided,
        contribution_id=lambda e: e.originator_id,
        grace=timedelta(minutes=10),
    )
    stats = Windowed(
        "t_sales_stats",
        metadata,
        window=Hopping(size=timedelta(hours=2), step=timedelta(hours=1)),
        time=_when,
        aggregates={
            "smallest": Min(lambda e: e.amount),
            "largest": Max(lambda e: e.amount),
            "mean": Mean(lambda e: e.amount),
            "last_shopper": Latest(lambda e: e.shopper),
            "shoppers": Collect(lambda e: e.shopper),
        },
        contributes=Sale.Made,
        replaces=Sale.Corrected,
        retracts=Sale.Voided,
        contribution_id=lambda e: e.originator_id,
        late="drop",
    )




