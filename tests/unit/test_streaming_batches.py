"""A windowed table folds a batch's contributions to each window and writes them with one
statement per window, before anything reads the table; the rows are those event-by-event
application gives, and an event the database refuses at that write is still parked alone."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

from framework.applier import Applier
from framework.database import create_engine
from framework.positions import dead_letters_table
from framework.projection_testing import digest, table_rows
from framework.settings import ProjectionSettings
from framework.streaming import Count, Max, StreamProjection, Sum, Tumbling, Windowed
from framework.streaming._values import utc
from framework.streaming.testing import given_partitions
from framework.testing import ev
from framework.worker import setup_tables
from tests.support.streaming_domain import Sale

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def made(sid: uuid.UUID, minutes: float, amount: str, country: str = "CH", shopper: str = "ann"):
    at = T0 + timedelta(minutes=minutes)
    return ev(Sale.Made, id=sid, at=at, amount=Decimal(amount), country=country, shopper=shopper)


def voided(sid: uuid.UUID, minutes: float):
    return ev(Sale.Voided, id=sid, at=T0 + timedelta(minutes=minutes))


class Hourly(StreamProjection):
    name = "test_batched_hourly"
    metadata = sa.MetaData()
    event_time = staticmethod(lambda e: e.at)

    hourly = Windowed(
        "t_batched_hourly",
        metadata,
        window=Tumbling(hours=1),
        key={"country": (sa.String(2), lambda e: e.country)},
        aggregates={
            "sales": Count(),
            "revenue": Sum(lambda e: e.amount, type=sa.Numeric(14, 2)),
            "largest": Max(lambda e: e.amount, type=sa.Numeric(14, 2)),
        },
        contributes=Sale.Made,
        retracts=Sale.Voided,
        contribution_id=lambda e: e.originator_id,
    )


def _sales(count: int) -> list[Any]:
    """Sales a minute apart from 10:00 in two countries (two hours: four rows), every
    seventh voided two minutes later."""
    items: list[Any] = []
    for n in range(count):
        sid = uuid.UUID(int=n + 1)
        items.append(made(sid, n, f"{n % 17 + 1}.25", country="CH" if n % 2 else "DE"))
        if n % 7 == 3:
            items.append(voided(sid, n + 2))
    return items


def _apply(engine: sa.Engine, batches: list[list[Any]]) -> tuple[Applier, int]:
    """Apply ``batches`` of partition 0 in order; returns the applier and statements run."""
    projection = Hourly()
    setup_tables(engine, projection)
    applier = Applier(projection, engine, ProjectionSettings(max_attempts=1, retry_initial=0))
    applier.load([0])
    statements = [0]

    def count(*_args: Any) -> None:
        statements[0] += 1

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        for batch in batches:
            applier.apply_partition(0, batch)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    return applier, statements[0]


def test_a_batch_writes_each_window_once_and_gives_the_rows_of_one_event_at_a_time():
    recorded = given_partitions({0: _sales(120)}).recorded()[0]
    one_by_one = create_engine("sqlite://", poolclass=StaticPool)
    batched = create_engine("sqlite://", poolclass=StaticPool)
    _apply(one_by_one, [[r] for r in recorded])
    # Made events only (no voids between them) fold into one UPSERT per hour and country.
    made_only = [r for r in recorded if r.topic.endswith(".Made")][:60]
    _applier, statements = _apply(batched, [made_only])
    # The transaction's own statements: the advisory lock is PostgreSQL's; here, the
    # position (read, write), the stream-time read and insert, one ledger executemany and
    # one UPSERT executemany (two rows: CH and DE of one hour): well under one per event.
    assert statements <= 10, statements
    rows = table_rows(batched, Hourly.hourly.table)
    assert sum(r["sales"] for r in rows) == 60 and len(rows) == 2
    # The whole feed in batches of 50 (voids flush what came before them) gives the rows of
    # applying it event by event, byte for byte.
    again = create_engine("sqlite://", poolclass=StaticPool)
    _apply(again, [recorded[i : i + 50] for i in range(0, len(recorded), 50)])
    projection = Hourly()
    assert digest(again, projection.tables) == digest(one_by_one, projection.tables)
    hours = table_rows(one_by_one, Hourly.hourly.table)
    assert [(r["country"], r["window_start"].hour) for r in hours] == [
        ("CH", 10),
        ("CH", 11),
        ("DE", 10),
        ("DE", 11),
    ]
    voids = sum(1 for n in range(120) if n % 7 == 3)
    assert sum(r["sales"] for r in hours) == 120 - voids
    assert sum(r["revision"] for r in hours) == 120 + voids


def test_an_event_the_database_refuses_at_the_batch_write_is_parked_alone(postgres_url: str):
    # NUMERIC(14, 2) holds less than 10**12: PostgreSQL refuses the batch's UPSERT. The applier
    # retries the batch one event at a time, so only the oversized sale is parked.
    items = [made(uuid.UUID(int=n + 1), n, "2.50") for n in range(6)]
    items.insert(3, made(uuid.UUID(int=99), 3.5, "9" * 13))
    recorded = given_partitions({0: items}).recorded()[0]
    schema = f"t_batches_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine = create_engine(postgres_url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        applier, _statements = _apply(engine, [recorded])
        with engine.connect() as conn:
            parked = conn.execute(sa.select(dead_letters_table)).all()
        rows = table_rows(engine, Hourly.hourly.table)
        assert [(p.aggregate_id, p.reason) for p in parked] == [(str(uuid.UUID(int=99)), "failed")]
        assert "numeric" in parked[0].error_message.lower()
        assert [(r["sales"], r["revenue"]) for r in rows] == [(6, Decimal("15.00"))]
        assert applier.stats.dead_lettered == 1 and applier.stats.events_applied == 6
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_ticks_close_windows_whatever_the_batch_size(size: int):
    # The close reads the table: what the batch folded so far is written first.
    items = [made(uuid.UUID(int=n + 1), n * 20, "1.00") for n in range(6)]
    given = given_partitions({0: items}).tick(0, T0 + timedelta(hours=3))
    recorded = given.recorded()[0]
    engine = create_engine("sqlite://", poolclass=StaticPool)
    _apply(engine, [recorded[i : i + size] for i in range(0, len(recorded), size)])
    rows = table_rows(engine, Hourly.hourly.table)
    assert [(utc(r["window_start"]), r["sales"], r["closed"]) for r in rows] == [
        (datetime(2026, 3, 2, 10, tzinfo=UTC), 3, True),
        (datetime(2026, 3, 2, 11, tzinfo=UTC), 3, True),
    ]
