"""Section 3: projection throughput, events/s applied into a read model.

A topic holds the records deposit commands leave (each event and its command record), written by
the store in bulk. A ``ProjectionWorker`` applies them into a SQLite and into a PostgreSQL read
model, each batch in one SQL transaction with its guarded positions: the exactly-once path, with
the worker's default settings (batch_size 1000). ``Balances`` is a batch handler (each run of
events folded per account, one ``upsert_many``), the path the sample projections use;
``PerEventBalances`` is the same read model with one statement per event, measured on SQLite
beside it. The worker runs in a thread as a live worker does; timed from its start (joining the
consumer group included) until ``wait_until`` sees its stored positions reach the end of what was
written (polling every 10 ms); every record counts, applied or skipped.

The peer is a bare kafka-python consumer reading the same topic with ``read_committed`` in a
group of its own (joining included), decoding nothing and writing nothing. In the smoke
configuration the feed is the SQLite store and the peer reads it through ``iter_partition``.

Scaling: one worker process, then two worker processes of one projection (a consumer group over
the 3 partitions) into PostgreSQL, timed once the group has settled (see :func:`scale`); the
machine's CPU use over the window is reported (on 2 cores shared with the broker and the database,
CPU saturation bounds the gain; and 3 partitions split 2 + 1 between two workers bound it at
1.5x when one worker is CPU-bound). The full run repeats it on a topic of 4 partitions, split
2 + 2, where the split does not decide the gain, and takes each figure as the median of three
alternating runs (a run lasts a few seconds).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from bench.harness import REPO, Context, Row, Section, ServiceMissing, Stopwatch, rate

TITLE = "Projection throughput (events/s into a read model, exactly-once positions)"


def project(
    ctx: Context,
    store: Any,
    db: str,
    records: int,
    reached: dict[int, int],
    projection: Any = None,
    *,
    per_event: bool = False,
) -> dict[str, Any]:
    """Run a fresh projection (default: Balances) over ``store`` into database ``db``
    (sqlite|postgres) in a thread, as a live worker runs, until its stored positions reach
    ``reached``."""
    from bench.readmodel import balances_projection, drop_schema, open_engine
    from framework.worker import ProjectionWorker, setup_tables, wait_until

    projection = projection or balances_projection(ctx.name("bal"), per_event=per_event)
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
        "handlers": "per event" if per_event else "batch",
        "seconds": round(sw.seconds, 6),
        "expected": records,
    }


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median rate, with every run's seconds beside it."""
    ordered = sorted(runs, key=lambda r: r["events"] / r["seconds"] if r["seconds"] else 0.0)
    chosen = dict(ordered[len(ordered) // 2])
    chosen["runs_seconds"] = [r["seconds"] for r in runs]
    return chosen


def _cpu_times() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [float(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def _settled(bootstrap: str, group: str, members: int, timeout: float = 120.0) -> None:
    """Wait until consumer group ``group`` is Stable with ``members`` members."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = admin.describe_groups([group]).get(group) or {}
            if found.get("group_state") == "Stable" and len(found.get("members", ())) == members:
                return
            time.sleep(0.1)
    finally:
        admin.close()
    raise TimeoutError(f"consumer group {group} did not settle with {members} members")


def _nudges(store: Any) -> list[Any]:
    """One new event per partition (accounts opened), so every worker sees its partitions move."""
    from bench.readmodel import feed_events

    wanted = set(range(store.partitions))
    nudges = []
    for _ in range(1000 * store.partitions):
        opened = next(iter(feed_events(2)))  # the event and its command record
        partition = store.partition_for(opened[0].aggregate_id)
        if partition in wanted:
            wanted.discard(partition)
            nudges.extend(opened)
        if not wanted:
            return nudges
    raise RuntimeError(f"no account id landed in partitions {sorted(wanted)}")


def scale(
    ctx: Context, store: Any, app: str, url: str, reached: dict[int, int], workers: int
) -> dict[str, Any]:
    """``workers`` worker processes of one fresh Balances projection into PostgreSQL.

    So that joining and rebalancing stay out of the window, the workers first start with their
    positions at the head (idle) until the group has settled; then the stored positions are
    reset to 0 and one event appended per partition: each worker's next batch finds its
    positions moved (the guarded update fails, as after a rebuild's swap), re-seeks to 0 and
    applies the whole log. Timed from the reset until every position reaches the new head; the
    machine's CPU use over that window is reported."""
    from bench.readmodel import balances_projection, drop_schema, open_engine
    from framework.positions import now, positions_table
    from framework.worker import consumer_group, setup_tables, wait_until

    projection = balances_projection(ctx.name("scale"))
    db_url = ctx.services.sqlalchemy_postgres()
    engine = open_engine(db_url, schema=projection.name)
    ctx.on_exit(lambda: drop_schema(db_url, projection.name))
    setup_tables(engine, projection)
    t = positions_table
    with engine.begin() as conn:
        conn.execute(
            t.insert(),
            [
                {"projection": projection.name, "partition": p, "next_offset": o,
                 "updated_at": now()}
                for p, o in reached.items()
            ],
        )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = []
    try:
        for n in range(workers):
            own = url.replace(".index.sqlite", f".{projection.name}.{n}.sqlite")
            command = [sys.executable, "-m", "bench.readmodel", projection.name, app, own]
            procs.append(subprocess.Popen([*command, db_url, projection.name], env=env))
        _settled(ctx.services.need_kafka(), consumer_group(app, projection.name), workers)
        time.sleep(1.0)  # the members have run on_assign and poll at the head
        busy0, total0 = _cpu_times()
        with Stopwatch() as sw:
            with engine.begin() as conn:
                conn.execute(
                    t.update().where(t.c.projection == projection.name).values(next_offset=0)
                )
            end = store.append(_nudges(store))
            target = {p: max(o, end.get(p, 0)) for p, o in reached.items()}
            wait_until(projection, engine, target, timeout=900, interval=0.01)
        busy1, total1 = _cpu_times()
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        engine.dispose()
    return {
        "events": sum(target.values()),
        "workers": workers,
        "seconds": round(sw.seconds, 6),
        "cpu_busy_percent": round(100 * (busy1 - busy0) / max(total1 - total0, 1e-9), 1),
        "cores": os.cpu_count(),
    }


def _scaling_repeats(ctx: Context) -> int:
    """Runs of each worker count the scaling rows take the median of."""
    return ctx.pick(1, 1, 3)


def _scaling(
    ctx: Context,
    section: Section,
    store: Any,
    name: str,
    url: str,
    reached: dict[int, int],
    *,
    suffix: str,
) -> None:
    """Rows ``workers_1<suffix>`` and ``workers_2<suffix>``: one, then two worker processes,
    alternating, the run of median rate of each (a run lasts seconds: one slow fetch or commit
    moves a single run's ratio by tenths)."""
    partitions = len(reached)
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    repeats = _scaling_repeats(ctx)
    for round_ in range(repeats):
        for workers in (1, 2):
            ctx.log(
                f"  {workers} worker process(es) into postgres, {partitions} partitions"
                + (f" ({round_ + 1} of {repeats})" if repeats > 1 else "")
            )
            runs[workers].append(scale(ctx, store, name, url, reached, workers))
    results = {workers: _median_run(done) for workers, done in runs.items()}
    for workers, data in results.items():
        section.add(
            Row(
                f"workers_{workers}{suffix}",
                f"{workers} worker process{'es' if workers > 1 else ''}, {partitions} "
                f"partitions, PostgreSQL (CPU {data['cpu_busy_percent']:.0f}% of "
                f"{data['cores']} cores)",
                rate(data["events"], data["seconds"]),
                "events/s",
                peer=f"workers_1{suffix}" if workers > 1 else None,
                raw=data,
            )
        )


def run(ctx: Context) -> Section:
    from bench.bare import read_kafka as bare_read_kafka
    from bench.readmodel import bare_read_store, fill_store
    from framework.persistence import open_store

    section = Section("projection", TITLE)
    records = ctx.pick(400, 50_000, 50_000)
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
            "the defaults (batch_size 1000)"
        )
        # A run of 50,000 records takes 1-3 s, of which joining the group is a good part:
        # each figure is the median of several runs, the peer's as keel's.
        repeats = ctx.pick(1, 3, 3)
        ctx.log(f"  bare reader x{repeats}")
        if kafka:
            bares = [
                bare_read_kafka(
                    ctx.services.need_kafka(), f"{name}.events", written, ctx.name("bare")
                )
                for _ in range(repeats)
            ]
            label = "bare kafka-python consumer, read_committed (peer)"
        else:
            bares = [bare_read_store(store) for _ in range(repeats)]
            label = "bare read of the store's feed, iter_partition (peer)"
        bare = _median_run(bares)
        section.add(
            Row("bare_reader", label, rate(bare["events"], bare["seconds"]), "events/s", raw=bare)
        )
        runs = [("sqlite", False), ("sqlite", True), ("postgres", False)]
        if ctx.smoke:
            runs = [("sqlite", False), ("sqlite", True)]
        for db, per_event in runs:
            try:
                if db == "postgres":
                    ctx.services.need_postgres()
                ctx.log(
                    f"  projection worker into {db}{' (per event)' if per_event else ''} x{repeats}"
                )
                data = _median_run(
                    [
                        project(ctx, store, db, written, reached, per_event=per_event)
                        for _ in range(repeats)
                    ]
                )
            except ServiceMissing as missing:
                section.skipped.append(f"read model on {db}: {missing}")
                continue
            how = "one statement per event" if per_event else "batch handler"
            section.add(
                Row(
                    f"keel_{db}_per_event" if per_event else f"keel_{db}",
                    f"ProjectionWorker into a {db} read model ({how})",
                    rate(data["events"], data["seconds"]),
                    "events/s",
                    peer="bare_reader",
                    raw=data,
                )
            )
        if kafka:
            try:
                ctx.services.need_postgres()
            except ServiceMissing as missing:
                section.skipped.append(f"scaling: {missing}")
                return section
            # A run over the 50,000 records lasts 1-3 s, too short a window for a ratio of
            # two such runs to hold still (the first of each count is the slowest): the full
            # run times the scaling rows over three times as many.
            more = ctx.pick(0, 0, 2 * records)
            if more:
                ctx.log(f"  writing {more:,} more records for the scaling rows")
                fill_store(store, more, reached=reached)
            section.notes.append(
                f"the worker-scaling rows: {records + more:,} records, the median of "
                f"{_scaling_repeats(ctx)} alternating runs of each worker count"
            )
            _scaling(ctx, section, store, name, url, reached, suffix="")
            if not ctx.quick:
                # 3 partitions split 2 + 1 between two workers; 4 split evenly show what a
                # second worker gives when the split does not decide it.
                name4 = ctx.name("proj4")
                url4 = ctx.kafka_url(name4, partitions=4)
                store4 = open_store(url4, name=name4)
                try:
                    ctx.log(f"  writing {records + more:,} records on 4 partitions")
                    reached4: dict[int, int] = {}
                    fill_store(store4, records + more, reached=reached4)
                    _scaling(ctx, section, store4, name4, url4, reached4, suffix="_p4")
                finally:
                    store4.close()
    finally:
        store.close()
    return section
