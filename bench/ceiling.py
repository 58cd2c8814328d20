"""Section 2: the raw Kafka ceiling, and how close the store gets to it.

The events are the very ones the application appends for deposit commands (each deposit event
plus its command record, captured from an in-memory run), so sizes, keys and headers match.

- **ours**: ``KafkaEventStore.append`` of those appends, one command's events per call, from 1
  and from 8 threads (group commit batches concurrent appends into one transaction; the version
  check runs for each).
- **peers**: a bare kafka-python producer with ``acks=all`` and idempotence, sending everything
  and flushing; and a bare transactional producer committing every N events, with N = 2 (one
  command per transaction: what one caller can do), N = 16 (eight commands: the most that 8
  callers can put in one transaction) and N = 1000 (the store's ``max_batch``). The bare
  transactional producer gets ``retry_backoff_ms=5``: with kafka-python's default (100 ms) a
  transaction begun right after a commit waits out a CONCURRENT_TRANSACTIONS retry, which would
  make the peer look slower than the client can be.

In the smoke configuration (no Kafka) the same comparison runs on SQLite: the store's append
against bare ``sqlite3`` inserts committed every N events.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from bench.domain import Deposit, OpenAccount, build_app
from bench.harness import Context, Row, Section, Stopwatch, rate
from framework.persistence import EventStore, NewEvent, open_store

TITLE = "Raw ceiling: the store's append against the bare client (events/s)"


def captured_appends(callers: int, commands: int) -> list[list[list[NewEvent]]]:
    """For each caller, the appends (lists of events) its ``commands`` deposit commands made,
    after the appends that opened its accounts."""
    out: list[list[list[NewEvent]]] = []
    app = build_app("memory://", "capture", snapshot_every=None)
    captured: list[list[NewEvent]] = []
    inner = app.store.append

    def append(events: Sequence[NewEvent]) -> Any:
        captured.append(list(events))
        return inner(events)

    app.store.append = append  # type: ignore[method-assign]
    for _ in range(callers):
        captured.clear()
        ids = [uuid.uuid4() for _ in range(max(1, commands // 20))]
        for account_id in ids:
            app.execute(OpenAccount(account_id=account_id, owner="Ada", email="ada@example.org"))
        for i in range(commands):
            app.execute(Deposit(account_id=ids[i % len(ids)], amount=Decimal("10.00")))
        out.append(list(captured))
    app.close()
    return out


def store_append(store: EventStore, per_caller: list[list[list[NewEvent]]]) -> dict[str, Any]:
    """Each caller appends its appends in order, all callers at once."""
    barrier = threading.Barrier(len(per_caller) + 1)
    errors: list[BaseException] = []

    def caller(appends: list[list[NewEvent]]) -> None:
        barrier.wait()
        try:
            for events in appends:
                store.append(events)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=caller, args=(a,), daemon=True) for a in per_caller]
    for t in threads:
        t.start()
    barrier.wait()
    with Stopwatch() as sw:
        for t in threads:
            t.join()
    if errors:
        raise RuntimeError(f"an append failed: {errors[0]!r}") from errors[0]
    events = sum(len(e) for appends in per_caller for e in appends)
    appends = sum(len(a) for a in per_caller)
    return {
        "events": events,
        "appends": appends,
        "callers": len(per_caller),
        "seconds": round(sw.seconds, 6),
        "bytes_per_event": round(
            sum(len(e.state) for a in per_caller for es in a for e in es) / max(events, 1), 1
        ),
    }


# -- Kafka ----------------------------------------------------------------------------------------


def _create_topic(ctx: Context, topic: str, partitions: int) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=ctx.services.need_kafka())
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    ctx.drop_kafka_topics_later(topic)


def _records(events: Sequence[NewEvent], partitions: int) -> list[tuple[Any, ...]]:
    from framework.backends.kafka_records import encode_event, partition_for

    out = []
    for event in events:
        key, value, headers = encode_event(event)
        out.append(
            (key, value, headers, partition_for(event.route_with or event.aggregate_id, partitions))
        )
    return out


def raw_producer(
    ctx: Context, events: Sequence[NewEvent], per_transaction: int | None, partitions: int = 3
) -> dict[str, Any]:
    """Produce ``events`` with a bare producer: idempotent (``per_transaction=None``) or
    transactional, committing every ``per_transaction`` events."""
    # keel's client defaults (its quiet selector, kafka-python's own metrics off): the peer
    # differs from the store by the store alone.
    from framework.backends.kafka_client import KafkaProducer

    topic = ctx.name("rawceil") + ".events"
    _create_topic(ctx, topic, partitions)
    records = _records(events, partitions)
    settings: dict[str, Any] = {"acks": "all", "enable_idempotence": True}
    if per_transaction is not None:
        settings["transactional_id"] = topic + "-tx"
        # kafka-python backs off retry_backoff_ms (100 ms) when the next transaction starts
        # before the broker finished the last one's markers; 5 ms is its best setting here.
        settings["retry_backoff_ms"] = 5
    producer = KafkaProducer(bootstrap_servers=ctx.services.need_kafka(), **settings)
    try:
        if per_transaction is not None:
            producer.init_transactions()
        # Warm the metadata so the timed part does not include the first lookup.
        producer.partitions_for(topic)
        transactions = 0
        with Stopwatch() as sw:
            if per_transaction is None:
                for key, value, headers, partition in records:
                    producer.send(topic, key=key, value=value, headers=headers, partition=partition)
                producer.flush()
            else:
                for start in range(0, len(records), per_transaction):
                    producer.begin_transaction()
                    for key, value, headers, partition in records[start : start + per_transaction]:
                        producer.send(
                            topic, key=key, value=value, headers=headers, partition=partition
                        )
                    producer.commit_transaction()
                    transactions += 1
    finally:
        producer.close()
    return {
        "events": len(records),
        "seconds": round(sw.seconds, 6),
        "per_transaction": per_transaction,
        "transactions": transactions,
    }


# -- SQLite (the smoke configuration) -------------------------------------------------------------


def raw_sqlite(ctx: Context, events: Sequence[NewEvent], per_transaction: int) -> dict[str, Any]:
    path = ctx.path(ctx.name("rawceil") + ".db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, originator_id BLOB, "
        "version INTEGER, topic TEXT, state BLOB, UNIQUE (originator_id, version))"
    )
    rows = [(e.aggregate_id.bytes, e.version, e.topic, e.state) for e in events]
    transactions = 0
    with Stopwatch() as sw:
        for start in range(0, len(rows), per_transaction):
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO events (originator_id, version, topic, state) VALUES (?, ?, ?, ?)",
                rows[start : start + per_transaction],
            )
            db.execute("COMMIT")
            transactions += 1
    db.close()
    return {
        "events": len(rows),
        "seconds": round(sw.seconds, 6),
        "per_transaction": per_transaction,
        "transactions": transactions,
    }


def run(ctx: Context) -> Section:
    section = Section("ceiling", TITLE)
    kafka = not ctx.smoke
    if ctx.kafka_missing(section):
        return section
    callers = 8
    per_caller = ctx.pick(8, 60, 300)
    single = ctx.pick(8, 100, 400)
    ctx.log(f"  capturing the events of {callers * per_caller + single} deposit commands")
    eight = captured_appends(callers, per_caller)
    one = captured_appends(1, single)
    flat_eight = [e for appends in eight for events in appends for e in events]
    flat_one = [e for appends in one for events in appends for e in events]
    backend = "Kafka" if kafka else "SQLite"
    section.notes.append(
        f"{backend}; the same events (a deposit plus its command record per command, "
        f"{sum(len(e.state) for e in flat_eight) / len(flat_eight):.0f} bytes of value on "
        f"average): {len(flat_one)} events for 1 caller, {len(flat_eight)} for 8"
    )

    def raw(events: Sequence[NewEvent], n: int | None) -> dict[str, Any]:
        if kafka:
            return raw_producer(ctx, events, n)
        return raw_sqlite(ctx, events, n or 1000)

    def add_raw(
        key: str, label: str, events: Sequence[NewEvent], n: int | None, peer: str | None
    ) -> None:
        ctx.log(f"  bare client: {label}")
        data = raw(events, n)
        section.add(
            Row(key, label, rate(data["events"], data["seconds"]), "events/s", peer=peer, raw=data)
        )

    if kafka:
        add_raw(
            "raw_idempotent", "bare idempotent producer, acks=all (peer)", flat_eight, None, None
        )
        base = "raw_idempotent"
    else:
        base = "raw_txn_1000"
        add_raw(base, "bare sqlite3, 1000 events per transaction (peer)", flat_eight, 1000, None)
    what = "transactional producer" if kafka else "sqlite3"
    add_raw(
        "raw_txn_2", f"bare {what}, 2 events (1 command) per transaction (peer)", flat_one, 2, base
    )
    add_raw(
        "raw_txn_16",
        f"bare {what}, 16 events (8 commands) per transaction (peer)",
        flat_eight,
        16,
        base,
    )
    if kafka:
        add_raw(
            "raw_txn_1000",
            f"bare {what}, 1000 events per transaction (peer)",
            flat_eight,
            1000,
            base,
        )

    for key, appends, peer in (
        ("keel_append_1", one, "raw_txn_2"),
        ("keel_append_8", eight, "raw_txn_16"),
    ):
        name = ctx.name("ceil")
        url = ctx.kafka_url(name) if kafka else f"sqlite:///{ctx.path(name + '.db')}"
        store = open_store(url, name=name)
        try:
            ctx.log(f"  keel store append, {len(appends)} caller(s)")
            data = store_append(store, appends)
            if kafka:
                from framework.backends.kafka import writer_stats

                stats = writer_stats(store)  # type: ignore[arg-type]
                txns = sum(s.get("transactions", 0) for s in stats.values())
                data["transactions"] = txns
                data["events_per_transaction"] = round(data["events"] / max(txns, 1), 1)
        finally:
            store.close()
        section.add(
            Row(
                key,
                f"keel {backend} store append, {len(appends)} caller(s)",
                rate(data["events"], data["seconds"]),
                "events/s",
                peer=peer,
                raw=data,
            )
        )

    # The end-to-end figure of section 1, when it ran: commands carry 2 events each.
    throughput = ctx.results.get("throughput")
    row = throughput.row("keel_kafka_8") if throughput is not None and kafka else None
    if row is not None:
        section.add(
            Row(
                "keel_execute_8",
                "keel execute(), Kafka, 8 callers (from section 1)",
                row.raw["events_per_s"],
                "events/s",
                peer="raw_txn_16",
                raw={"from": "throughput.keel_kafka_8"},
            )
        )
    return section
