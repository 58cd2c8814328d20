"""The read model the projection benchmarks build, and the feeds they build it from.

``Balances`` keeps one row per account (balance in cents, event count) from ``Opened`` and
``Deposited`` events: the shape of a typical read model. It is a batch handler (each run of
events folded per account, one ``upsert_many``); ``PerEventBalances`` is the same read model
with one statement per event. The feed holds what the
application appends for such commands: every event followed by its command record (which the
projection skips without decoding). Bulk feeds are stamped from one encoded event of each kind,
so writing a million of them costs the broker's time, not the codec's.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any
from uuid import UUID

import pydantic_core
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from bench.domain import Account
from framework.application import COMMAND_RECORD_TOPIC, command_record_id
from framework.codec import codec
from framework.commands import Metadata
from framework.persistence import EventStore, NewEvent
from framework.projection import Projection, handles, upsert_many

__all__ = [
    "Balances",
    "PerEventBalances",
    "balances_projection",
    "feed_events",
    "fill_store",
    "open_engine",
]


def _balances_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "bench_balances",
        metadata,
        sa.Column("account_id", sa.Uuid, primary_key=True),
        sa.Column("cents", sa.BigInteger, nullable=False),
        sa.Column("events", sa.Integer, nullable=False),
    )


class Balances(Projection):
    """The fast path the sample projections use: one batch handler folds each run of events
    into one row per account, then one ``upsert_many`` (an ``executemany``) adds them up."""

    name = "bench_balances"
    version = 1
    metadata = sa.MetaData()
    balances = _balances_table(metadata)

    @handles(Account.Opened, Account.Deposited, batch=True)
    def changed(self, events: Sequence[Any], conn: Connection) -> None:
        rows: dict[UUID, dict[str, Any]] = {}
        for event in events:
            row = rows.get(event.originator_id)
            if row is None:
                row = rows[event.originator_id] = {
                    "account_id": event.originator_id,
                    "cents": 0,
                    "events": 0,
                }
            row["events"] += 1
            if type(event) is Account.Deposited:
                row["cents"] += int(event.amount * 100)  # type: ignore[attr-defined]
        upsert_many(conn, self.balances, list(rows.values()), add=["cents", "events"])


class PerEventBalances(Projection):
    """The same read model with one statement per event (the per-event API)."""

    name = "bench_balances_per_event"
    version = 1
    metadata = sa.MetaData()
    balances = _balances_table(metadata)

    @handles(Account.Opened)
    def opened(self, event: Any, conn: Connection) -> None:
        conn.execute(self._statements()[0], {"id": event.originator_id})

    @handles(Account.Deposited)
    def deposited(self, event: Any, conn: Connection) -> None:
        conn.execute(
            self._statements()[1], {"id": event.originator_id, "delta": int(event.amount * 100)}
        )

    def _statements(self) -> tuple[Any, Any]:
        # Built once per table (a rebuild's shadow has its own), with bound parameters: building
        # a SQLAlchemy expression per event costs more than running it.
        cached = self.__dict__.get("_cached")
        if cached is None or cached[0] is not self.balances:
            t = self.balances
            insert = t.insert().values(account_id=sa.bindparam("id"), cents=0, events=1)
            update = (
                t.update()
                .where(t.c.account_id == sa.bindparam("id"))
                .values(cents=t.c.cents + sa.bindparam("delta"), events=t.c.events + 1)
            )
            cached = (t, insert, update)
            self.__dict__["_cached"] = cached
        return cached[1], cached[2]


def balances_projection(name: str, *, per_event: bool = False) -> Projection:
    """A Balances projection with its own name (its positions and consumer group)."""
    base: type[Projection] = PerEventBalances if per_event else Balances
    cls = type(f"{base.__name__}_{name}", (base,), {"name": name})
    projection: Projection = cls()
    return projection


def open_engine(url: str, schema: str | None = None) -> Engine:
    """A read-model engine; on PostgreSQL, confined to ``schema`` (created here)."""
    from framework.database import create_engine

    if schema is None:
        return create_engine(url)
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    admin.dispose()
    return create_engine(url, connect_args={"options": f"-csearch_path={schema}"})


def drop_schema(url: str, schema: str) -> None:
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


def balance_of(engine: Engine, projection: Any, account_id: UUID) -> int | None:
    t = projection.balances
    with engine.connect() as conn:
        row = conn.execute(sa.select(t.c.cents).where(t.c.account_id == account_id)).first()
    return None if row is None else int(row[0])


def _templates() -> tuple[bytes, bytes]:
    meta = Metadata(command_id=uuid.uuid4(), command_type="BenchDeposit", user="bench")
    account = Account(id=uuid.uuid4(), owner="Ada Lovelace", email="ada@example.org")
    account.deposit(Decimal("10.00"))
    opened, deposited = (codec.encode(e, meta) for e in account.collect_events())
    return opened.state, deposited.state


def feed_events(count: int, deposits_per_account: int = 19) -> Iterator[list[NewEvent]]:
    """Appends (one command's events each: the event and its command record) adding up to
    about ``count`` records."""
    opened_state, deposited_state = _templates()
    opened_topic = "BenchAccount.Opened"
    deposited_topic = "BenchAccount.Deposited"
    written = 0
    while written < count:
        account_id = uuid.uuid4()
        for version in range(1, deposits_per_account + 2):
            if written >= count:
                return
            command_id = uuid.uuid4()
            record = pydantic_core.to_json(
                {
                    "command_type": "BenchOpenAccount" if version == 1 else "BenchDeposit",
                    "aggregate_id": account_id,
                    "versions": {str(account_id): version},
                }
            )
            yield [
                NewEvent(
                    account_id,
                    version,
                    opened_topic if version == 1 else deposited_topic,
                    opened_state if version == 1 else deposited_state,
                ),
                NewEvent(
                    command_record_id(command_id),
                    1,
                    COMMAND_RECORD_TOPIC,
                    record,
                    route_with=account_id,
                ),
            ]
            written += 2


def fill_store(
    store: EventStore, count: int, *, chunk: int = 1000, reached: dict[int, int] | None = None
) -> int:
    """Append about ``count`` records to ``store`` in transactions of ``chunk`` records;
    returns how many were written. ``reached`` collects, per partition, the offset just past
    the last record written (what a projection has applied once it has caught up)."""
    batch: list[NewEvent] = []
    written = 0

    def flush() -> None:
        nonlocal batch, written
        positions = store.append(batch)
        if reached is not None:
            for partition, offset in positions.items():
                reached[partition] = max(reached.get(partition, 0), offset)
        written += len(batch)
        batch = []

    for events in feed_events(count):
        batch.extend(events)
        if len(batch) >= chunk:
            flush()
    if batch:
        flush()
    return written


# -- the peer of the embedded feed ---------------------------------------------------------------


def bare_read_store(store: EventStore) -> dict[str, Any]:
    """Read every record of a one-partition (embedded) store through ``iter_partition``."""
    import time

    started = time.perf_counter()
    read = sum(1 for _ in store.iter_partition(0))
    return {"events": read, "seconds": round(time.perf_counter() - started, 6)}


# -- a worker process, for the scaling measurement ------------------------------------------------


def _worker_main(argv: list[str]) -> int:
    """``python -m bench.readmodel NAME APP STORE_URL DB_URL [SCHEMA]``: run a Balances worker
    until SIGTERM, set up as ``python -m framework.worker run`` sets up its process."""
    import logging

    from framework.persistence import open_store
    from framework.runtime import tune_garbage_collector
    from framework.worker import ProjectionWorker, run_forever

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.ERROR)
    name, app, store_url, db_url, *schema = argv
    engine = open_engine(db_url, schema=schema[0] if schema else None)
    store = open_store(store_url, name=app)
    try:
        worker = ProjectionWorker(balances_projection(name), store, engine)
        tune_garbage_collector()  # as python -m framework.worker run does
        run_forever(worker)
    finally:
        store.close()
        engine.dispose()
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(_worker_main(sys.argv[1:]))
