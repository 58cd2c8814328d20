"""Section 7: peak memory (RSS) of the store's writer and of a projection worker.

Each runs alone in a child process (a fresh interpreter), so its RSS is its own: the
writer executes deposit commands through the Kafka store from 8 threads (group commit, local
index, producer and consumer included); the worker then projects that topic, plus a bulk of
records appended after it, into a SQLite read model until caught up. The peak is the child's
high-water mark (``VmHWM``); the parent also samples the child's RSS with psutil every 20 ms
(both reported).

Peers, also in child processes: a bare kafka-python transactional producer writing as many
records of the same shape (16 per transaction), and a bare consumer reading the worker's topic;
they import kafka-python and nothing of keel (``bench.bare``). In the smoke configuration the
store is SQLite and the peers are bare ``sqlite3`` writers and readers of the same rows.
"""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.harness import REPO, Context, Row, Section

TITLE = "Memory: peak RSS of the writer and of a projection worker (MiB, own process each)"
MIB = 1024 * 1024


# -- what the children run (module-level: spawn imports them by name) ---------------------------


def _writer(url: str, name: str, commands: int, callers: int) -> dict[str, Any]:
    from bench.domain import build_app
    from bench.harness import deciding
    from bench.throughput import measure_keel

    app = build_app(url, name)
    ready = _rss()
    try:
        with deciding(app):  # the writer process: it owns the shard
            result = measure_keel(app, commands, callers)
    finally:
        app.close()
    return {"records": result["commands"] * 2, "rss_ready_mib": ready, **result}


def _worker(url: str, name: str, db: str) -> dict[str, Any]:
    from bench.readmodel import balances_projection, open_engine
    from framework.persistence import open_store
    from framework.worker import ProjectionWorker, setup_tables

    store = open_store(url, name=name)
    projection = balances_projection(name + "_mem")
    engine = open_engine(db)
    setup_tables(engine, projection)
    ready = _rss()
    try:
        stats = ProjectionWorker(projection, store, engine).run(until_caught_up=True)
    finally:
        store.close()
        engine.dispose()
    return {"records": stats.events_applied + stats.events_skipped, "rss_ready_mib": ready}


def _producer(bootstrap: str, topic: str, records: str) -> dict[str, Any]:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from bench.bare import produce_records, read_records

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    admin.close()
    rows = read_records(records)
    ready = _rss()
    result = produce_records(bootstrap, topic, rows, per_transaction=16)
    return {"records": result["events"], "rss_ready_mib": ready}


def _consumer(bootstrap: str, topic: str, expected: int, group: str) -> dict[str, Any]:
    from bench.bare import read_kafka

    ready = _rss()
    result = read_kafka(bootstrap, topic, expected, group)
    return {"records": result["events"], "rss_ready_mib": ready}


def _sqlite_writer(path: str, records: str) -> dict[str, Any]:
    import sqlite3

    from bench.bare import read_records

    rows = read_records(records)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, originator_id TEXT, "
        "version INTEGER, topic TEXT, state BLOB, UNIQUE (originator_id, version))"
    )
    ready = _rss()
    for start in range(0, len(rows), 2):  # one command's two records per transaction
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO events (originator_id, version, topic, state) VALUES (?, ?, ?, ?)",
            [r[:4] for r in rows[start : start + 2]],
        )
        db.execute("COMMIT")
    db.close()
    return {"records": len(rows), "rss_ready_mib": ready}


def _sqlite_reader(path: str, table: str) -> dict[str, Any]:
    import sqlite3

    db = sqlite3.connect(path)
    ready = _rss()
    read = 0
    cursor = db.execute(f"SELECT * FROM {table}")
    while rows := cursor.fetchmany(100):
        read += len(rows)
    db.close()
    return {"records": read, "rss_ready_mib": ready}


def _records_file(ctx: Context, count: int, partitions: int) -> str:
    """The records a peer writes: the same shape as the writer's (events and command records)."""
    from bench.bare import write_records
    from bench.readmodel import feed_events
    from framework.backends.kafka_records import partition_for

    def rows() -> Any:
        written = 0
        for events in feed_events(count):
            for e in events:
                if written == count:
                    return
                written += 1
                yield (
                    str(e.aggregate_id),
                    e.version,
                    e.topic,
                    e.state,
                    partition_for(e.route_with or e.aggregate_id, partitions),
                )

    path = str(ctx.path(ctx.name("records") + ".jsonl"))
    write_records(path, rows())
    return path


CHILDREN: dict[str, Callable[..., dict[str, Any]]] = {
    "writer": _writer,
    "worker": _worker,
    "producer": _producer,
    "consumer": _consumer,
    "sqlite_writer": _sqlite_writer,
    "sqlite_reader": _sqlite_reader,
}


def _peak_rss() -> float:
    """This process's peak RSS: VmHWM, the high-water mark of its own address space (not
    ru_maxrss, which on Linux carries the forking parent's RSS across exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _rss() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / MIB, 1)


def _child_main(argv: list[str]) -> None:
    """``python -m bench.memory KIND JSON``: run one child, print its result as JSON."""
    kind, kwargs = argv[0], json.loads(argv[1])
    result = CHILDREN[kind](**kwargs)
    result["peak_mib"] = _peak_rss()
    print(RESULT_MARK + json.dumps(result), flush=True)


RESULT_MARK = "bench-memory-result: "


def run_child(kind: str, timeout: float = 900.0, **kwargs: Any) -> dict[str, Any]:
    """Run ``CHILDREN[kind](**kwargs)`` in a fresh interpreter, sampling its RSS."""
    import psutil

    process = subprocess.Popen(
        [sys.executable, "-m", "bench.memory", kind, json.dumps(kwargs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=str(REPO),
    )
    sampled = 0
    deadline = time.monotonic() + timeout
    try:
        watched = psutil.Process(process.pid)
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(psutil.Error):
                sampled = max(sampled, watched.memory_info().rss)
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            process.kill()
        out, err = process.communicate()
    found = [line for line in out.splitlines() if line.startswith(RESULT_MARK)]
    if process.returncode != 0 or not found:
        tail = "\n".join(err.strip().splitlines()[-5:])
        raise RuntimeError(f"the {kind} child failed (exit {process.returncode}): {tail}")
    result: dict[str, Any] = json.loads(found[-1][len(RESULT_MARK) :])
    result["sampled_peak_mib"] = round(sampled / MIB, 1)
    return result


def run(ctx: Context) -> Section:
    from bench.readmodel import fill_store
    from framework.persistence import open_store

    section = Section("memory", TITLE)
    kafka = not ctx.smoke
    if ctx.kafka_missing(section):
        return section
    commands = ctx.pick(40, 400, 3000)
    extra = ctx.pick(400, 10_000, 100_000)
    name = ctx.name("mem")
    if kafka:
        url = ctx.kafka_url(name)
        worker_url = url.replace(".index.sqlite", ".worker.sqlite")
        filler_url = url.replace(".index.sqlite", ".filler.sqlite")
    else:
        url = worker_url = filler_url = f"sqlite:///{ctx.path(name + '.db')}"

    ctx.log(f"  writer child: {commands} commands, 8 callers")
    writer = run_child("writer", url=url, name=name, commands=commands, callers=8)
    ctx.log(f"  appending {extra:,} more records for the worker")
    store = open_store(filler_url, name=name)
    try:
        written = fill_store(store, extra)
    finally:
        store.close()
    total = writer["records"] + written
    ctx.log(f"  worker child over {total:,} records")
    worker = run_child(
        "worker", url=worker_url, name=name, db=f"sqlite:///{ctx.path(name + '.read.db')}"
    )
    ctx.log("  peer children")
    if kafka:
        bootstrap = ctx.services.need_kafka()
        topic = ctx.name("memraw") + ".events"
        ctx.drop_kafka_topics_later(topic)
        producer = run_child(
            "producer",
            bootstrap=bootstrap,
            topic=topic,
            records=_records_file(ctx, writer["records"], 3),
        )
        consumer = run_child(
            "consumer",
            bootstrap=bootstrap,
            topic=f"{name}.events",
            expected=worker["records"],
            group=ctx.name("memgroup"),
        )
        peer_w, peer_r = "bare transactional producer", "bare consumer"
    else:
        producer = run_child(
            "sqlite_writer",
            path=str(ctx.path(name + ".raw.db")),
            records=_records_file(ctx, writer["records"], 1),
        )
        consumer = run_child(
            "sqlite_reader", path=str(ctx.path(name + ".db")), table=f"{name}_events"
        )
        peer_w, peer_r = "bare sqlite3 writer", "bare sqlite3 reader"
    backend = "Kafka" if kafka else "SQLite"
    section.add(
        Row(
            "bare_producer",
            f"{peer_w}, {producer['records']:,} records (peer)",
            producer["peak_mib"],
            "MiB",
            higher_is_better=False,
            raw=producer,
        )
    )
    section.add(
        Row(
            "keel_writer",
            f"keel writer ({backend} store), {writer['commands']:,} commands, 8 callers",
            writer["peak_mib"],
            "MiB",
            peer="bare_producer",
            higher_is_better=False,
            raw=writer,
        )
    )
    section.add(
        Row(
            "bare_consumer",
            f"{peer_r}, {consumer['records']:,} records (peer)",
            consumer["peak_mib"],
            "MiB",
            higher_is_better=False,
            raw=consumer,
        )
    )
    section.add(
        Row(
            "keel_worker",
            f"keel projection worker, {worker['records']:,} records into SQLite",
            worker["peak_mib"],
            "MiB",
            peer="bare_consumer",
            higher_is_better=False,
            raw=worker,
        )
    )
    section.notes.append(
        "peak = the child's VmHWM (high-water mark of its RSS); raw.sampled_peak_mib is "
        "psutil's RSS sampled every 20 ms and raw.rss_ready_mib the RSS after imports and "
        "setup, before the work"
    )
    return section


if __name__ == "__main__":
    _child_main(sys.argv[1:])
