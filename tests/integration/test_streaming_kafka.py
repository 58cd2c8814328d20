"""Streaming tables live on real Kafka (3 partitions, 2 workers in one group, writes going on
while they apply) and a rebuild of the same log give byte-identical tables, ticks included."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from framework.codec import codec
from framework.commands import Metadata
from framework.database import create_engine
from framework.persistence import EventStore, open_store
from framework.projection_testing import digest, table_rows
from framework.rebuild import rebuild
from framework.streaming import tick
from framework.worker import ProjectionWorker, setup_tables, wait_until
from tests.support.streaming_domain import Sale, SalesStreams

T0 = datetime(2026, 3, 28, 18, 0, tzinfo=UTC)


def _write(store: EventStore, rng: random.Random, reached: dict[int, int], sales: int) -> None:
    """Sales at jittered times (some late for their partition), some corrected or voided;
    a tick to every partition now and then."""
    for n in range(sales):
        at = T0 + timedelta(minutes=n * 3 + rng.uniform(-40, 10))
        sale = Sale(
            id=uuid.uuid4(),
            at=at,
            amount=Decimal(rng.randint(100, 9000)) / 100,
            country=rng.choice(["CH", "DE", "AT"]),
            shopper=rng.choice(["ann", "bob", "cid", "dan"]),
        )
        if rng.random() < 0.2:
            sale.correct(at + timedelta(minutes=5), Decimal("9.99"), at + timedelta(minutes=61))
        if rng.random() < 0.15:
            sale.void(at + timedelta(minutes=20))
        written = store.append([codec.encode(e, Metadata()) for e in sale.collect_events()])
        for p, o in written.items():
            reached[p] = max(reached.get(p, 0), o)
        if n % 25 == 24:
            for p, o in tick(store, at=T0 + timedelta(minutes=n * 3 - 30)).items():
                reached[p] = max(reached.get(p, 0), o)
        time.sleep(0.005)


@pytest.mark.timeout(300)
def test_live_on_kafka_with_two_workers_equals_a_rebuild(
    kafka_bootstrap: str, postgres_url: str, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("streams").replace("-", "_")
    url = f"kafka://{kafka_bootstrap}?partitions=3"
    schema = name.lower()
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine = create_engine(postgres_url, connect_args={"options": f"-csearch_path={schema}"})
    projection = type("KafkaSalesStreams", (SalesStreams,), {"name": name})
    writer = open_store(url, name=name)
    stores = [open_store(url, name=name) for _ in range(2)]
    try:
        setup_tables(engine, projection())
        workers = [
            ProjectionWorker(projection(), s, engine, group=name, batch_size=7, poll_timeout=0.2)
            for s in stores
        ]
        stops = [threading.Event() for _ in workers]
        threads = [
            threading.Thread(target=w.run, args=(stop,), daemon=True)
            for w, stop in zip(workers, stops, strict=True)
        ]
        for thread in threads:
            thread.start()
            time.sleep(1.0)
        deadline = time.monotonic() + 90
        while not all(w.applier.positions for w in workers) and time.monotonic() < deadline:
            tick(writer, at=T0 - timedelta(hours=1))  # traffic, so both join and get work
            time.sleep(0.5)
        reached: dict[int, int] = {}
        _write(writer, random.Random(15), reached, sales=150)
        for p, o in tick(writer, at=T0 + timedelta(days=2)).items():
            reached[p] = max(reached.get(p, 0), o)
        wait_until(projection(), engine, reached, timeout=120)
        for stop in stops:
            stop.set()
        for thread in threads:
            thread.join(30)
        live = projection()
        result = rebuild(live, writer, engine, swap=False, progress=lambda _p: None)
        shadow = live.shadow()
        equal = digest(engine, live.tables) == digest(engine, shadow.tables)
        late = table_rows(engine, live._keel_late_events)
        hourly = next(t for t in live.tables if t.name == SalesStreams.hourly.table.name)
        closed = [r for r in table_rows(engine, hourly) if r["closed"]]
        applied = [w.stats.events_applied for w in workers]
        print(
            f"\nSTREAMS[kafka]: partitions=3 workers=2 applied={applied} "
            f"rebuilt={result.events} dead_letters={result.stats.dead_lettered} "
            f"late={len(late)} closed_windows={len(closed)} digest_equal={equal}"
        )
        assert all(applied) and late and closed and equal
        assert result.stats.dead_lettered == 0 and not any(w.stats.dead_lettered for w in workers)
    finally:
        for store in (*stores, writer):
            store.close()
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
