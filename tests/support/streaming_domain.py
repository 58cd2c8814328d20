"""A small domain for the streaming tests: sales that are made, corrected and voided, and
visits; every event carries its own time ``at`` (the event time the tests control)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from framework.domain import Aggregate, event
from framework.projection import upsert
from framework.streaming import (
    Calendar,
    CloseContext,
    Collect,
    Count,
    Hopping,
    IntervalJoin,
    Join,
    Latest,
    Lookup,
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


def _day_closed(row: dict[str, Any], ctx: CloseContext) -> None:
    # Keyed by the window's effect id: closing the same day again changes nothing.
    table = ctx.projection.closed_days  # type: ignore[attr-defined]
    upsert(
        ctx.conn,
        table,
        {
            "effect_id": ctx.effect_id,
            "day": row["window_start"],
            "country": row["country"],
            "sales": row["sales"],
            "closings": 1,
        },
        update={"closings": table.c.closings + 1},
    )


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

    sessions = Windowed(
        "t_shopper_sessions",
        metadata,
        window=Session(gap=timedelta(minutes=30)),
        time=_when,
        key={"shopper": (sa.String(20), lambda e: e.shopper)},
        aggregates={"sales": Count(), "spent": Sum(lambda e: e.amount, type=sa.Numeric(14, 2))},
        contributes=Sale.Made,
        replaces=Sale.Corrected,
        retracts=Sale.Voided,
        contribution_id=lambda e: e.originator_id,
        grace=timedelta(minutes=5),
    )
    daily = Windowed(
        "t_sales_daily",
        metadata,
        window=Calendar(days=1, tz="Europe/Zurich"),
        time=_when,
        key={"country": (sa.String(2), lambda e: e.country)},
        aggregates={"sales": Count(), "revenue": Sum(lambda e: e.amount, type=sa.Numeric(14, 2))},
        contributes=Sale.Made,
        replaces=Sale.Corrected,
        retracts=Sale.Voided,
        contribution_id=lambda e: e.originator_id,
        grace=timedelta(minutes=10),
        late="dead_letter",
        emit="final",
        on_close=_day_closed,
    )
    closed_days = sa.Table(
        "t_closed_days",
        metadata,
        sa.Column("effect_id", sa.Uuid, primary_key=True),
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("sales", sa.Integer, nullable=False),
        sa.Column("closings", sa.Integer, nullable=False),
    )


class Shopper(Aggregate):
    @event("Registered")
    def __init__(self, id: UUID, at: datetime, handle: str, country: str) -> None:
        self.handle = handle

    @event("Moved")
    def move(self, at: datetime, handle: str, country: str) -> None:
        pass


class Payment(Aggregate):
    @event("Received")
    def __init__(self, id: UUID, at: datetime, sale_id: UUID) -> None:
        pass


def _unpaid(row: dict[str, Any], ctx: CloseContext) -> None:
    table = ctx.projection.reminders  # type: ignore[attr-defined]
    upsert(
        ctx.conn,
        table,
        {"effect_id": ctx.effect_id, "sale_id": row["sale_id"], "sent": 1},
        update={"sent": table.c.sent + 1},
    )


class JoinStreams(StreamProjection):
    name = "test_join_streams"
    metadata = sa.MetaData()
    event_time = staticmethod(lambda e: e.at)

    shoppers = Lookup(
        "t_shoppers",
        metadata,
        key=("handle", sa.String(20)),
        key_of=lambda e: e.handle,
        columns={"country": sa.String(2)},
        fed_by={
            Shopper.Registered: lambda e: {"country": e.country},
            Shopper.Moved: lambda e: {"country": e.country},
        },
        versioned=True,
    )
    latest = Join(
        "t_sales_latest",
        metadata,
        key=("sale_id", sa.Uuid),
        columns={"shopper": sa.String(20), "amount": sa.Numeric(14, 2)},
        fed_by={Sale.Made: lambda e: {"shopper": e.shopper, "amount": e.amount}},
        right=shoppers,
        fk="shopper",
        enrich={"country": ("country", sa.String(2))},
    )
    as_of = Join(
        "t_sales_as_of",
        metadata,
        key=("sale_id", sa.Uuid),
        columns={"shopper": sa.String(20), "made_at": sa.DateTime(timezone=True)},
        fed_by={Sale.Made: lambda e: {"shopper": e.shopper, "made_at": e.at}},
        right=shoppers,
        fk="shopper",
        enrich={"country": ("country", sa.String(2))},
        mode="as_of",
        as_of="made_at",
    )
    unpaid = IntervalJoin(
        "t_unpaid_sales",
        metadata,
        left=Sale.Made,
        right=Payment.Received,
        key=("sale_id", sa.Uuid, lambda e: getattr(e, "sale_id", e.originator_id)),
        within=timedelta(minutes=30),
        on_unmatched=_unpaid,
    )
    reminders = sa.Table(
        "t_reminders",
        metadata,
        sa.Column("effect_id", sa.Uuid, primary_key=True),
        sa.Column("sale_id", sa.Uuid, nullable=False),
        sa.Column("sent", sa.Integer, nullable=False),
    )


def _noted(row: dict[str, Any], ctx: CloseContext) -> None:
    # A process manager's trigger, keyed by the effect id: a second close adds nothing.
    table = ctx.projection.effects  # type: ignore[attr-defined]
    upsert(
        ctx.conn,
        table,
        {"effect_id": ctx.effect_id, "sale_id": row["sale_id"], "status": row["status"], "runs": 1},
        update={"runs": table.c.runs + 1},
    )


class OuterJoinStreams(StreamProjection):
    """``how="outer"``: unpaid sales and payments for no sale, each written once at close."""

    name = "test_outer_join_streams"
    metadata = sa.MetaData()
    event_time = staticmethod(lambda e: e.at)

    payments = IntervalJoin(
        "t_sale_payments",
        metadata,
        left=Sale.Made,
        right=Payment.Received,
        key=("sale_id", sa.Uuid, lambda e: getattr(e, "sale_id", e.originator_id)),
        within=timedelta(minutes=30),
        how="outer",
        on_unmatched=_noted,
    )
    effects = sa.Table(
        "t_outer_effects",
        metadata,
        sa.Column("effect_id", sa.Uuid, primary_key=True),
        sa.Column("sale_id", sa.Uuid, nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("runs", sa.Integer, nullable=False),
    )


def _session_closed(row: dict[str, Any], ctx: CloseContext) -> None:
    # Keyed by the session's effect id; only what every history agrees on is written down
    # (the counts at close depend on when the close came).
    table = ctx.projection.session_effects  # type: ignore[attr-defined]
    upsert(
        ctx.conn,
        table,
        {
            "effect_id": ctx.effect_id,
            "session_id": row["session_id"],
            "shopper": row["shopper"],
            "closings": 1,
        },
        update={"closings": table.c.closings + 1},
    )


def _final_sessions(
    name: str, metadata: sa.MetaData, emit: str = "final", **options: Any
) -> Windowed:
    return Windowed(
        name,
        metadata,
        window=Session(gap=timedelta(minutes=30)),
        time=_when,
        key={"shopper": (sa.String(20), lambda e: e.shopper)},
        aggregates={"sales": Count(), "spent": Sum(lambda e: e.amount, type=sa.Numeric(14, 2))},
        contributes=Sale.Made,
        contribution_id=lambda e: e.originator_id,
        grace=timedelta(minutes=5),
        emit=emit,
        **options,
    )


def _effects_table(name: str, metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("effect_id", sa.Uuid, primary_key=True),
        sa.Column("session_id", sa.Uuid, nullable=False),
        sa.Column("shopper", sa.String(20), nullable=False),
        sa.Column("closings", sa.Integer, nullable=False),
    )


class SessionStreams(StreamProjection):
    """Shopping sessions whose rows appear when they close (``emit="final"``), under each late
    policy, each announcing its closed sessions through ``on_close``."""

    name = "test_session_streams"
    metadata = sa.MetaData()
    event_time = staticmethod(lambda e: e.at)

    amended = _final_sessions(
        "t_final_sessions",
        metadata,
        replaces=Sale.Corrected,
        retracts=Sale.Voided,
        on_close=_session_closed,
    )
    dropped = _final_sessions(
        "t_final_sessions_drop", metadata, late="drop", on_close=_session_closed
    )
    parked = _final_sessions(
        "t_final_sessions_parked", metadata, late="dead_letter", on_close=_session_closed
    )
    session_effects = _effects_table("t_session_effects", metadata)


class SessionProperty(StreamProjection):
    """For the property test: final sessions with every late event amended, corrected and
    voided (the rows), and final sessions whose late events are dropped and which never change
    after close, so their ``on_close`` effects are the same in every interleaving too."""

    name = "test_session_property"
    metadata = sa.MetaData()
    event_time = staticmethod(lambda e: e.at)

    sessions = _final_sessions(
        "t_prop_sessions", metadata, replaces=Sale.Corrected, retracts=Sale.Voided
    )
    announced = _final_sessions(
        "t_prop_sessions_drop", metadata, late="drop", on_close=_session_closed
    )
    session_effects = _effects_table("t_prop_session_effects", metadata)


def _closes_into(stream: str) -> Any:
    """An ``on_close`` hook that writes each closed window down once per effect id, with only
    what every history agrees on (the counts at close depend on when the close came)."""

    def closed(row: dict[str, Any], ctx: CloseContext) -> None:
        table = ctx.projection.window_effects  # type: ignore[attr-defined]
        upsert(
            ctx.conn,
            table,
            {
                "effect_id": ctx.effect_id,
                "stream": stream,
                "window_start": row["window_start"],
                "country": row["country"],
                "closings": 1,
            },
            update={"closings": table.c.closings + 1},
        )

    return closed


def _late_fixed(name: str, metadata: sa.MetaData, window: Any, **options: Any) -> Windowed:
    return Windowed(
        name,
        metadata,
        window=window,
        time=_when,
        key={"country": (sa.String(2), lambda e: e.country)},
        contributes=Sale.Made,
        replaces=Sale.Corrected,
        retracts=Sale.Voided,
        contribution_id=lambda e: e.originator_id,
        grace=timedelta(minutes=10),
        **options,
    )


def _counted() -> dict[str, Any]:
    return {"sales": Count(), "revenue": Sum(lambda e: e.amount, type=sa.Numeric(14, 2))}


class LateWindows(StreamProjection):
    """Fixed windows that amend late events, each announcing its windows through ``on_close``:
    also a window whose first contribution (an event or a correction) comes after its close."""

    name = "test_late_windows"
    metadata = sa.MetaData()
    event_time = staticmethod(lambda e: e.at)

    hourly = _late_fixed(
        "t_late_hourly",
        metadata,
        Tumbling(hours=1),
        aggregates=_counted(),
        on_close=_closes_into("hourly"),
    )
    hourly_final = _late_fixed(
        "t_late_hourly_final",
        metadata,
        Tumbling(hours=1),
        aggregates=_counted(),
        emit="final",
        on_close=_closes_into("hourly_final"),
    )
    hopping = _late_fixed(  # Mean has no SQL arithmetic: the path that reads the row
        "t_late_hopping",
        metadata,
        Hopping(size=timedelta(hours=2), step=timedelta(hours=1)),
        aggregates={"sales": Count(), "mean": Mean(lambda e: e.amount)},
        on_close=_closes_into("hopping"),
    )
    daily = _late_fixed(
        "t_late_daily",
        metadata,
        Calendar(days=1, tz="Europe/Zurich"),
        aggregates=_counted(),
        emit="final",
        on_close=_closes_into("daily"),
    )
    window_effects = sa.Table(
        "t_late_window_effects",
        metadata,
        sa.Column("effect_id", sa.Uuid, primary_key=True),
        sa.Column("stream", sa.String(20), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("closings", sa.Integer, nullable=False),
    )


class SplitSessions(StreamProjection):
    """Sessions of both emit modes that amend late events, take corrections and voids, and
    announce every closed session: for the rule that each session id is announced once."""

    name = "test_split_sessions"
    metadata = sa.MetaData()
    event_time = staticmethod(lambda e: e.at)

    final = _final_sessions(
        "t_split_final",
        metadata,
        replaces=Sale.Corrected,
        retracts=Sale.Voided,
        on_close=_session_closed,
    )
    updating = _final_sessions(
        "t_split_update",
        metadata,
        emit="update",
        replaces=Sale.Corrected,
        retracts=Sale.Voided,
        on_close=_session_closed,
    )
    session_effects = _effects_table("t_split_session_effects", metadata)


def _unmatched_into(stream: str) -> Any:
    """An ``on_unmatched`` hook that writes each trigger down once per effect id and counts the
    runs, with what every history agrees on (the key and the status)."""

    def unmatched(row: dict[str, Any], ctx: CloseContext) -> None:
        table = ctx.projection.unmatched_effects  # type: ignore[attr-defined]
        upsert(
            ctx.conn,
            table,
            {
                "effect_id": ctx.effect_id,
                "stream": stream,
                "sale_id": row["sale_id"],
                "status": row["status"],
                "runs": 1,
            },
            update={"runs": table.c.runs + 1},
        )

    return unmatched


def _payments_join(name: str, metadata: sa.MetaData, stream: str, **options: Any) -> IntervalJoin:
    return IntervalJoin(
        name,
        metadata,
        left=Sale.Made,
        right=Payment.Received,
        key=("sale_id", sa.Uuid, lambda e: getattr(e, "sale_id", e.originator_id)),
        within=timedelta(minutes=30),
        on_unmatched=_unmatched_into(stream),
        **options,
    )


class UnmatchedJoins(StreamProjection):
    """ "Made, but not paid within 30 minutes" under each late policy (left joins) and as an
    outer join, every trigger counted: for the rule that each key's ``on_unmatched`` runs once."""

    name = "test_unmatched_joins"
    metadata = sa.MetaData()
    event_time = staticmethod(lambda e: e.at)

    amended = _payments_join("t_unpaid_amend", metadata, "amended")
    dropped = _payments_join("t_unpaid_drop", metadata, "dropped", late="drop")
    parked = _payments_join("t_unpaid_parked", metadata, "parked", late="dead_letter")
    graced = _payments_join("t_unpaid_grace", metadata, "graced", grace=timedelta(minutes=10))
    outer = _payments_join("t_unpaid_outer", metadata, "outer", how="outer")
    unmatched_effects = sa.Table(
        "t_unmatched_effects",
        metadata,
        sa.Column("effect_id", sa.Uuid, primary_key=True),
        sa.Column("stream", sa.String(20), nullable=False),
        sa.Column("sale_id", sa.Uuid, nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("runs", sa.Integer, nullable=False),
    )
