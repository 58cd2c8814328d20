"""Section 4: rebuilding a projection over a long log.

``framework.rebuild.rebuild`` fills shadow tables from position 0 and swaps them in; it reads the
store partition by partition (on Kafka, through the process's local index) and applies through
the same exactly-once machinery as the worker. Timed over 100,000 and 1,000,000 records (full
mode; quick mode uses fewer, and says how many), the second round on the same topic after
appending the rest. The read model is SQLite; the projection is ``Balances``, a batch handler
(the path the sample projections use), with the default settings (batch_size 1000).

Peers: a bare kafka-python consumer reading the same records. On Kafka the rebuild reads the
process's local index, brought up to date before the clock starts; a new process pays for
building its index first, measured once as "cold index catch-up" (a store with an empty index
reading the topic): a rebuild in a new process costs both.
"""

from __future__ import annotations

from typing import Any

from bench.harness import Context, Row, Section, Stopwatch, rate

READ_TIMEOUT = 500  # kafka-python needs request_timeout_ms < connections_max_idle_ms (540 s)
TITLE = "Rebuild (events/s from position 0 into shadow tables, then swap; SQLite read model)"


def rebuild_once(ctx: Context, store: Any) -> dict[str, Any]:
    from bench.readmodel import balances_projection, open_engine
    from framework.rebuild import rebuild
    from framework.worker import setup_tables

    projection = balances_projection(ctx.name("rb"))
    engine = open_engine(f"sqlite:///{ctx.path(projection.name + '.db')}")
    try:
        setup_tables(engine, projection)
        with Stopwatch() as sw:
            result = rebuild(projection, store, engine, progress=lambda _: None)
    finally:
        engine.dispose()
    return {
        "events": result.events,
        "applied": result.stats.events_applied,
        "transactions": result.stats.transactions,
        "rounds": result.rounds,
        "seconds": round(sw.seconds, 6),
    }


def cold_catch_up(ctx: Context, name: str) -> dict[str, Any]:
    """A second store on the same topic, with an empty index, brought up to date."""
    from framework.persistence import open_store

    url = ctx.kafka_url(name, read_timeout=READ_TIMEOUT).replace(".index.sqlite", ".cold.sqlite")
    with Stopwatch() as sw:
        store = open_store(url, name=name)
        try:
            store.catch_up()  # type: ignore[attr-defined]
            head = store.head()
        finally:
            store.close()
    return {"offsets": sum(head.values()), "seconds": round(sw.seconds, 6)}


def run(ctx: Context) -> Section:
    from bench.bare import read_kafka as bare_read_kafka
    from bench.readmodel import bare_read_store, fill_store
    from framework.persistence import open_store

    section = Section("rebuild", TITLE)
    kafka = not ctx.smoke
    if ctx.kafka_missing(section):
        return section
    sizes = ctx.pick([400], [20_000], [100_000, 1_000_000])
    if ctx.quick and not ctx.smoke:
        section.notes.append(
            "quick mode: N = 20,000 records (100,000 and 1,000,000 in the full mode)"
        )
    name = ctx.name("rebuild")
    # A catch-up must finish within read_timeout (30 s by default), which reading a million
    # records into the local index does not; see bench/README.md.
    url = (
        ctx.kafka_url(name, read_timeout=READ_TIMEOUT)
        if kafka
        else f"sqlite:///{ctx.path(name + '.db')}"
    )
    if kafka:
        section.notes.append(
            f"the Kafka store is opened with read_timeout={READ_TIMEOUT} (default 30 s): with the "
            "default, the first read of a 1,000,000-record topic fails with StoreUnavailableError"
        )
    store = open_store(url, name=name)
    total = 0
    try:
        for size in sizes:
            ctx.log(f"  writing up to {size:,} records")
            with Stopwatch() as sw:
                total += fill_store(store, size - total)
            section.notes.append(
                f"N = {total:,} records (half events, half command records), appended by the "
                f"store in transactions of 1,000 at {total / max(sw.seconds, 1e-9):,.0f}/s"
                if size == sizes[0]
                else f"N = {total:,}: {size - sizes[0]:,} more appended at "
                f"{(size - sizes[0]) / max(sw.seconds, 1e-9):,.0f}/s"
            )
            ctx.log(f"  bare reader over {total:,}")
            if kafka:
                bare = bare_read_kafka(
                    ctx.services.need_kafka(), f"{name}.events", total, ctx.name("bare")
                )
                label = f"bare kafka-python consumer, {total:,} records (peer)"
            else:
                bare = bare_read_store(store)
                label = f"bare read of the store's feed, {total:,} records (peer)"
            section.add(
                Row(
                    f"bare_{size}",
                    label,
                    rate(bare["events"], bare["seconds"]),
                    "events/s",
                    raw=bare,
                )
            )
            if kafka:
                # Bring the local index up to date first (untimed): a writer's own commits sit
                # ahead of the index's read position, and the first read would re-read them.
                # A new process's index build is measured on its own below.
                store.catch_up()  # type: ignore[attr-defined]  # the Kafka store's
            ctx.log(f"  rebuild over {total:,}")
            data = rebuild_once(ctx, store)
            data["n"] = total
            section.add(
                Row(
                    f"keel_rebuild_{size}",
                    f"rebuild over {total:,} records",
                    rate(data["events"], data["seconds"]),
                    "events/s",
                    peer=f"bare_{size}",
                    raw=data,
                )
            )
            section.add(
                Row(
                    f"keel_rebuild_{size}_seconds",
                    f"rebuild over {total:,} records, seconds",
                    data["seconds"],
                    "s",
                    higher_is_better=False,
                    raw=data,
                )
            )
            if kafka and size == sizes[0]:
                ctx.log("  cold index catch-up")
                cold = cold_catch_up(ctx, name)
                cold["events"] = total
                section.add(
                    Row(
                        f"keel_index_{size}",
                        f"cold local-index catch-up, {total:,} records (new process)",
                        rate(total, cold["seconds"]),
                        "events/s",
                        peer=f"bare_{size}",
                        raw=cold,
                    )
                )
    finally:
        store.close()
    return section
