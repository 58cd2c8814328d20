"""Section: stream processing, a windowed projection against a plain per-event one.

One feed of deposits (each event followed by its command record, as the application appends
them), the event times one second apart, so an hour window rolls over every 3,600 deposits.
Three projections run over it, each as a live worker into its own SQLite (and PostgreSQL)
read model, side by side in one run:

- **plain**: ``Balances``, one upsert per event (the projection section's read model);
- **hand-written window**: deposits and amount per hour with a per-deposit ledger, written by
  hand the way ``projections/sales.py`` is (ledger insert + upsert per event);
- **windowed**: the same per-hour table declared with :class:`framework.streaming.Windowed`
  (stream time per partition, revision, late-event checks, window closing); it declares no
  retractions, so it keeps no ledger;
- **ledger**: the same declaration with ``retracts=``, so the contribution ledger is kept
  (the hand-written window's equal in work).

The goal is windowed >= 0.7x plain. The bare consumer reading the same topic is the ceiling.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pydantic_core
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bench.domain import Account
from bench.harness import Context, Row, Section, ServiceMissing, rate
from framework.application import COMMAND_RECORD_TOPIC, command_record_id
from framework.codec import codec
from framework.commands import Metadata
from framework.persistence import EventStore, NewEvent
from framework.projection import Projection, handles, upsert
from framework.streaming import Count, StreamProjection, Sum, Tumbling, Windowed

TITLE = "Stream processing (events/s: a windowed projection vs a plain per-event one)"

START = datetime(2026, 1, 1, tzinfo=UTC)


def _amount(e: Any) -> Decimal:
    return Decimal(e.amount)


class WindowedDeposits(StreamProjection):
    name = "bench_windowed"
    version = 1
    metadata = sa.MetaData()
    hourly = Windowed(
        "bench_deposits_hourly",
        metadata,
        window=Tumbling(hours=1),
        aggregates={"deposits": Count(), "amount": Sum(_amount, type=sa.Numeric(16, 2))},
        contributes=Account.Deposited,
    )


class LedgeredDeposits(StreamProjection):
    """The same table, retractable: with ``retracts=`` the contribution ledger is kept (the
    feed never retracts; an Opened event stands in, whose retraction finds nothing)."""

    name = "bench_windowed_ledger"
    version = 1
    metadata = sa.MetaData()
    hourly = Windowed(
        "bench_deposits_hourly_ledger",
        metadata,
        window=Tumbling(hours=1),
        aggregates={"deposits": Count(), "amount": Sum(_amount, type=sa.Numeric(16, 2))},
        contributes=Account.Deposited,
        retracts=Account.Opened,
    )


class HandWrittenHourly(Projection):
    name = "bench_hand_hourly"
    version = 1
    metadata = sa.MetaData()
    hourly = sa.Table(
        "bench_hand_hourly",
        metadata,
        sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("deposits", sa.Integer, nullable=False),
        sa.Column("amount", sa.Numeric(16, 2), nullable=False),
    )
    ledger = sa.Table(
        "bench_hand_hourly_ledger",
        metadata,
        sa.Column("deposit_id", sa.String(80), primary_key=True),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amount", sa.Numeric(14, 2), nullable=False),
    )

    @handles(Account.Deposited)
    def deposited(self, event: Any, conn: Connection) -> None:
        hour = event.timestamp.replace(minute=0, second=0, microsecond=0)
        amount = Decimal(event.amount)
        conn.execute(
            self.ledger.insert().values(
                deposit_id=f"{event.originator_id}:{event.originator_version}",
                hour=hour,
                amount=amount,
            )
        )
        t = self.hourly
        upsert(
            conn,
            t,
            {"hour": hour, "deposits": 1, "amount": amount},
            update={"deposits": t.c.deposits + 1, "amount": t.c.amount + amount},
        )


def _named(cls: type[Projection], name: str) -> Projection:
    named: type[Projection] = type(f"{cls.__name__}_{name}", (cls,), {"name": name})
    return named()


def _feed(count: int) -> Iterator[list[NewEvent]]:
    """Deposits one second apart (stamped from one encoded event; an account's opening at
    the time of its first deposit), each with its command record; about ``count`` records."""
    meta = Metadata(command_id=uuid.uuid4(), command_type="BenchDeposit", user="bench")
    account = Account(id=uuid.uuid4(), owner="Ada Lovelace", email="ada@example.org")
    account.deposit(Decimal("10.00"))
    opened, deposited = (codec.encode(e, meta) for e in account.collect_events())
    opened_marker = opened.state.split(b'"timestamp":"', 1)[1].split(b'"', 1)[0]
    marker = deposited.state.split(b'"timestamp":"', 1)[1].split(b'"', 1)[0]
    written, second = 0, 0
    while written < count:
        account_id = uuid.uuid4()
        for version in range(1, 21):
            if written >= count:
                return
            moment = (START + timedelta(seconds=second)).isoformat().replace("+00:00", "Z")
            if version == 1:
                topic = "BenchAccount.Opened"
                state = opened.state.replace(opened_marker, moment.encode())
            else:
                topic = "BenchAccount.Deposited"
                state = deposited.state.replace(marker, moment.encode())
                second += 1
            record = pydantic_core.to_json(
                {
                    "command_type": "BenchDeposit",
                    "aggregate_id": account_id,
                    "versions": {str(account_id): version},
                }
            )
            yield [
                NewEvent(account_id, version, topic, state),
                NewEvent(
                    command_record_id(uuid.uuid4()),
                    1,
                    COMMAND_RECORD_TOPIC,
                    record,
                    route_with=account_id,
                ),
            ]
            written += 2


def _fill(store: EventStore, count: int, reached: dict[int, int]) -> int:
    batch: list[NewEvent] = []
    written = 0
    for events in _feed(count):
        batch.extend(events)
        if len(batch) >= 1000:
            for p, o in store.append(batch).items():
                reached[p] = max(reached.get(p, 0), o)
            written += len(batch)
            batch = []
    if batch:
        for p, o in store.append(batch).items():
            reached[p] = max(reached.get(p, 0), o)
        written += len(batch)
    return written


def run(ctx: Context) -> Section:
    from bench.bare import read_kafka as bare_read_kafka
    from bench.projection import project
    from bench.readmodel import balances_projection, bare_read_store
    from framework.persistence import open_store

    section = Section("streaming", TITLE)
    records = ctx.pick(400, 6000, 40_000)
    kafka = not ctx.smoke
    if ctx.kafka_missing(section):
        return section
    name = ctx.name("strm")
    url = ctx.kafka_url(name) if kafka else f"sqlite:///{ctx.path(name + '.db')}"
    store = open_store(url, name=name)
    try:
        ctx.log(f"  writing {records:,} records")
        reached: dict[int, int] = {}
        written = _fill(store, records, reached)
        source = "Kafka topic (3 partitions)" if kafka else "SQLite store"
        section.notes.append(
            f"{written:,} records from a {source}: half deposits one second apart (an hour "
            "window holds 3,600), half command records; worker defaults (batch_size 100)"
        )
        if kafka:
            bare = bare_read_kafka(
                ctx.services.need_kafka(), f"{name}.events", written, ctx.name("bare")
            )
        else:
            bare = bare_read_store(store)
        section.add(
            Row(
                "bare_reader",
                "bare consumer of the same feed (ceiling)",
                rate(bare["events"], bare["seconds"]),
                "events/s",
                raw=bare,
            )
        )
        for db in ["sqlite"] if ctx.smoke else ["sqlite", "postgres"]:
            try:
                if db == "postgres":
                    ctx.services.need_postgres()
                runs = {
                    "plain": balances_projection(ctx.name("bal")),
                    "hand": _named(HandWrittenHourly, ctx.name("hand")),
                    "windowed": _named(WindowedDeposits, ctx.name("win")),
                    "ledger": _named(LedgeredDeposits, ctx.name("led")),
                }
                results = {}
                for kind, projection in runs.items():
                    ctx.log(f"  {kind} projection into {db}")
                    results[kind] = project(ctx, store, db, written, reached, projection)
            except ServiceMissing as missing:
                section.skipped.append(f"read model on {db}: {missing}")
                continue
            labels = {
                "plain": ("plain per-event projection (Balances, one upsert)", "bare_reader"),
                "hand": ("hand-written hourly window with a ledger", f"plain_{db}"),
                "windowed": ("Windowed(Tumbling(hours=1)) declaration", f"plain_{db}"),
                "ledger": ("the same, retractable (contribution ledger kept)", f"plain_{db}"),
            }
            for kind, data in results.items():
                label, peer = labels[kind]
                section.add(
                    Row(
                        f"{kind}_{db}",
                        f"{label}, {db}",
                        rate(data["events"], data["seconds"]),
                        "events/s",
                        peer=peer,
                        raw=data,
                    )
                )
    finally:
        store.close()
    return section
