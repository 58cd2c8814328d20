"""Section 3: projection throughput, events/s applied into a read model.

A topic holds the records deposit commands leave (each event and its command record), written by
the store in bulk. ``ProjectionWorker.run(until_caught_up=True)`` applies them into a SQLite and
into a PostgreSQL read model (``Balances``: one upsert per event, skipping command records
without decoding them), each batch in one SQL transaction with its guarded positions: the
exactly-once path. The worker runs in a thread as a live worker does; timed from its start
(joining the consumer group included) until ``wait_until`` sees its stored positions reach the
end of what was written (polling every 10 ms); every record counts, applied or skipped. (Not
``run(until_caught_up=True)``: on Kafka its end-of-log check re-reads the topic into the local
index, which is not part of applying events; see bench/README.md.)

The peer is a bare kafka-python consumer reading the same topic with ``read_committed`` in a
group of its own (joining included), decoding nothing and writing nothing. In the smoke
configuration the feed is the SQLite store and the peer reads it through ``iter_partition``.
"""

from __future__ import annotations

import threading
from typing import Any

from bench.harness import Context, Row, Section, ServiceMissing, Stopwatch, rate

TITLE = "Projection throughput (events/s into a read model, exactly-once positions)"


def project(
    ctx: Context,
    store: Any,
    db: str,
    records: int,
    reached: dict[int, int],
    projection: Any = None,
) -> dict[str, Any]:
    """Run a fresh projection (default: Balances) over ``store`` into database ``db``
    (sqlite|postgres) in a thread, as a live worker runs, until its stored positions reach
    ``reached``."""
    from bench.readmodel import balances_projection, drop_schema, open_engine
    from framework.worker import ProjectionWorker, setup_tables, wait_until

    projection = projection or balances_projection(ctx.name("bal"))
    if db == "sqlite":
        engine = open_engine(f"sqlite:///{ctx.path(projection.name + '.db')}")
    else:
        url = ctx.services.sqlalchemy_postgres()
        engine = open_engine(url, schema=projection.name)
        ctx.on_exit(lambda: drop_schema(url, projection.name))
    try:
        setup_tables(engine, projection)
        worker = ProjectionWorker(projection, store, engine)
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        try:
            with Stopwatch() as sw:
                thread.start()
                wait_until(projection, engine, reached, timeout=900, interval=0.01)
        finally:
            stop.set()
            thread.join(60)
        stats = worker.stats
    finally:
        engine.dispose()
    return {
        "events": stats.events_applied + stats.events_skipped,
        "applied": stats.events_applied,
        "skipped": stats.events_skipped,
        "transactions": stats.transactions,
        "batch_size": worker.settings.batch_size,
        "seconds": round(sw.seconds, 6),
        "expected": records,
    }


def run(ctx: Context) -> Section:
    from bench.bare import read_kafka as bare_read_kafka
    from bench.readmodel import bare_read_store, fill_store
    from framework.persistence import open_store

    section = Section("projection", TITLE)
    records = ctx.pick(400, 6000, 50_000)
    kafka = not ctx.smoke
    if ctx.kafka_missing(section):
        return section
    name = ctx.name("proj")
    url = ctx.kafka_url(name) if kafka else f"sqlite:///{ctx.path(name + '.db')}"
    store = open_store(url, name=name)
    try:
        ctx.log(f"  writing {records:,} records")
        reached: dict[int, int] = {}
        written = fill_store(store, records, reached=reached)
        source = "Kafka topic (3 partitions)" if kafka else "SQLite store"
        section.notes.append(
            f"{written:,} records from a {source}: half events (account opened or deposit), "
            "half command records, which the projection skips undecoded; worker settings are "
            "the defaults (batch_size 100)"
        )
        ctx.log("  bare reader")
        if kafka:
            bare = bare_read_kafka(
                ctx.services.need_kafka(), f"{name}.events", written, ctx.name("bare")
            )
            label = "bare kafka-python consumer, read_committed (peer)"
        else:
            bare = bare_read_store(store)
            label = "bare read of the store's feed, iter_partition (peer)"
        section.add(
            Row("bare_reader", label, rate(bare["events"], bare["seconds"]), "events/s", raw=bare)
        )
        databases = ["sqlite"] if ctx.smoke else ["sqlite", "postgres"]
        for db in databases:
            try:
                if db == "postgres":
                    ctx.services.need_postgres()
                ctx.log(f"  projection worker into {db}")
                data = project(ctx, store, db, written, reached)
            except ServiceMissing as missing:
                section.skipped.append(f"read model on {db}: {missing}")
                continue
            section.add(
                Row(
                    f"keel_{db}",
                    f"ProjectionWorker into a {db} read model",
                    rate(data["events"], data["seconds"]),
                    "events/s",
                    peer="bare_reader",
                    raw=data,
                )
            )
    finally:
        store.close()
    return section
