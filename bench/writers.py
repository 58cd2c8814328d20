"""Section "writers": the Kafka command path across processes (issue 10).

Every figure uses real processes: writer processes (each a member of ``<name>-writers``, owning
the shards Kafka gives it) and sender processes that only call ``app.execute`` (their commands
travel over ``<name>.commands``; results come back on ``<name>.results``). Each sender process
runs 2 caller threads, each depositing into its own account, so nothing conflicts.

- total commands/s with 1, 2, 4, 8 sender processes on one shard, beside the eventsourcing
  library's Application on PostgreSQL with the same processes and threads;
- 1, 2, 4 shards with as many writer processes (and enough senders to keep them busy);
- ``execute`` latency, one caller: routed to a writer process vs decided in place;
- a new sender process's time to its first command with 10k and 1M events in the topic.

The machine's CPU use over each timed window is reported: the broker, the writers and the
senders share its cores.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import threading
import time
import uuid
from decimal import Decimal
from typing import Any

from bench.domain import Deposit, OpenAccount, build_app, build_peer
from bench.harness import Context, Row, Section, ServiceMissing, Stopwatch, deciding, percentile

TITLE = "Kafka command path across processes (commands/s, ms)"
NEEDS_KAFKA = True
"""Nothing to measure without Kafka: the smoke run (embedded only) reports the section skipped."""
SPAWN = multiprocessing.get_context("spawn")
THREADS = 2  # caller threads per sender process
AMOUNT = Decimal("1.00")


# -- child processes ------------------------------------------------------------------------------


def _writer_main(url: str, name: str, ready: Any, stop: Any) -> None:
    import logging

    from framework.backends.kafka_owner import WriterMember
    from framework.runtime import tune_garbage_collector

    logging.getLogger("kafka").setLevel(logging.ERROR)
    logging.getLogger("framework.backends.kafka_topic").setLevel(logging.ERROR)
    app = build_app(url, name, snapshot_every=100)
    member = WriterMember(app)
    tune_garbage_collector()  # as python -m framework.writer run does
    member.start()
    ready.set()
    stop.wait()
    member.close()
    app.close()


def _sender_main(
    kind: str, url: str, env: dict[str, str], name: str, per_thread: int, start: Any, out: Any
) -> None:
    """``THREADS`` callers, each depositing ``per_thread`` times into its own account, released
    together by ``start``; reports (first start, last end, commands)."""
    import logging

    logging.getLogger("kafka").setLevel(logging.ERROR)
    logging.getLogger("framework.backends.kafka_topic").setLevel(logging.ERROR)
    try:
        app: Any = build_app(url, name) if kind == "keel" else build_peer(name, env)
        accounts = [uuid.uuid4() for _ in range(THREADS)]
        for account in accounts:
            command = OpenAccount(account_id=account, owner="Ada", email="ada@example.org")
            if kind == "keel":
                app.execute(command, timeout=120)
            else:
                app.open_account(command)
    except BaseException as error:
        out.put(("failed", 0.0, 0.0, repr(error)))
        raise
    out.put(("ready", 0.0, 0.0, 0))
    start.wait()
    spans: list[tuple[float, float]] = []

    def caller(account: uuid.UUID) -> None:
        began = time.time()
        for _ in range(per_thread):
            command = Deposit(account_id=account, amount=AMOUNT)
            if kind == "keel":
                app.execute(command, timeout=120)
            else:
                app.deposit(command)
        spans.append((began, time.time()))

    threads = [threading.Thread(target=caller, args=(a,)) for a in accounts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(("done", min(s for s, _ in spans), max(e for _, e in spans), per_thread * THREADS))
    if kind == "keel":
        app.close()


def _first_command_main(url: str, name: str, spawned_at: float, out: Any) -> None:
    import logging

    logging.getLogger("framework.backends.kafka_topic").setLevel(logging.ERROR)
    app = build_app(url, name)
    app.execute(OpenAccount(account_id=uuid.uuid4(), owner="Ada", email="a@example.org"))
    out.put(time.time() - spawned_at)
    app.close()


# -- orchestration ------------------------------------------------------------------------------


class Writers:
    """``count`` writer processes for ``name``, started and settled: every shard owned and
    every writer owning one, so no rebalance falls inside a timed window (stopped by
    ``close``)."""

    def __init__(self, url: str, name: str, count: int) -> None:
        self.stop = SPAWN.Event()
        self.processes = []
        for _ in range(count):
            ready = SPAWN.Event()
            process = SPAWN.Process(target=_writer_main, args=(url, name, ready, self.stop))
            process.start()
            if not ready.wait(120):
                raise RuntimeError("a writer process did not start")
            self.processes.append(process)
        self._settle(url, name, count)

    @staticmethod
    def _settle(url: str, name: str, count: int, timeout: float = 120.0) -> None:
        from framework.writer import writer_status

        app = build_app(url, name)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                report = writer_status(app)
                owned = [m["shards"] for m in report["members"]]
                shards = {s for m in owned for s in m}
                if (
                    report["state"] == "Stable"
                    and len(owned) == count
                    and all(owned)
                    and shards == set(range(len(report["shards"])))
                ):
                    return
                time.sleep(0.2)
            raise RuntimeError(f"the writer group did not settle: {report}")
        finally:
            app.close()

    def close(self) -> None:
        self.stop.set()
        for process in self.processes:
            process.join(60)
            if process.is_alive():
                process.kill()


def _cpu_percent() -> float:
    import psutil

    return float(psutil.cpu_percent(interval=None))


def drive(
    kind: str, url: str, env: dict[str, str], name: str, senders: int, total: int
) -> dict[str, Any]:
    """Total commands/s of ``senders`` sender processes (each ``THREADS`` callers)."""
    per_thread = max(1, total // (senders * THREADS))
    start, out = SPAWN.Event(), SPAWN.Queue()
    processes = [
        SPAWN.Process(target=_sender_main, args=(kind, url, env, name, per_thread, start, out))
        for _ in range(senders)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        report = out.get(timeout=300)
        if report[0] != "ready":
            start.set()
            raise RuntimeError(f"a {kind} sender process failed: {report[3]}")
    _cpu_percent()
    start.set()
    reports = [out.get(timeout=900) for _ in processes]
    cpu = _cpu_percent()
    for process in processes:
        process.join(60)
    began = min(r[1] for r in reports)
    ended = max(r[2] for r in reports)
    commands = sum(r[3] for r in reports)
    return {
        "commands": commands,
        "senders": senders,
        "threads_per_sender": THREADS,
        "seconds": round(ended - began, 4),
        "cpu_percent": cpu,
    }


def _url(ctx: Context, name: str, partitions: int = 3, **options: Any) -> str:
    # No index= option: every process takes its own index slot (senders never open one).
    bootstrap = ctx.services.need_kafka()
    query = "&".join(f"{k}={v}" for k, v in {"partitions": partitions, **options}.items())
    ctx.drop_kafka_topics_later(
        f"{name}.events", f"{name}.events.layout", f"{name}.commands", f"{name}.results"
    )
    return f"kafka://{bootstrap}?{query}"


def _peer_env(ctx: Context, name: str) -> dict[str, str]:
    env = {"PERSISTENCE_MODULE": "eventsourcing.postgres", **ctx.services.postgres_parts()}
    env.update(POSTGRES_POOL_SIZE="5", POSTGRES_MAX_OVERFLOW="5", POSTGRES_PRE_PING="y")
    ctx.drop_postgres_tables_later(f"{name.lower()}_events", f"{name.lower()}_snapshots")
    build_peer(name, env).close()  # create its tables once, before the processes race
    return {**env, "CREATE_TABLE": "false"}  # concurrent DDL from the processes would clash


def senders_rows(ctx: Context, section: Section, counts: tuple[int, ...], total: int) -> None:
    name = ctx.name("wrs")
    url = _url(ctx, name)
    writers = Writers(url, name, 1)
    try:
        for senders in counts:
            peer_key = f"es_pg_p{senders}"
            try:
                peer_name = ctx.name(f"PeerWr{senders}")
                env = _peer_env(ctx, peer_name)
                ctx.log(f"  eventsourcing on PostgreSQL, {senders} processes")
                raw = drive("peer", "", env, peer_name, senders, total)
                section.add(
                    Row(
                        peer_key,
                        f"eventsourcing Application, PostgreSQL, {senders} process(es) x "
                        f"{THREADS} threads (peer)",
                        raw["commands"] / raw["seconds"],
                        "commands/s",
                        raw=raw,
                    )
                )
            except ServiceMissing as missing:
                section.skipped.append(f"peer at {senders} processes: {missing}")
                peer_key = ""
            ctx.log(f"  keel routed, {senders} sender processes, 1 shard")
            raw = drive("keel", url, {}, name, senders, total)
            section.add(
                Row(
                    f"keel_senders_{senders}",
                    f"keel, Kafka, {senders} sender process(es) x {THREADS} threads, 1 shard, "
                    "1 writer process",
                    raw["commands"] / raw["seconds"],
                    "commands/s",
                    peer=peer_key or None,
                    raw=raw,
                )
            )
    finally:
        writers.close()
    first, last = section.row("keel_senders_1"), section.row(f"keel_senders_{counts[-1]}")
    if first and last and len(counts) > 1:
        section.add(
            Row(
                f"keel_senders_{counts[-1]}_vs_1",
                f"keel at {counts[-1]} sender processes against keel at 1 (must not fall)",
                last.value,
                "commands/s",
                peer="keel_senders_1",
                raw=last.raw,
            )
        )


def shards_rows(ctx: Context, section: Section, counts: tuple[int, ...], total: int) -> None:
    senders = 4
    for shards in counts:
        name = ctx.name(f"wsh{shards}")
        url = _url(ctx, name, partitions=max(4, shards), shards=shards)
        ctx.log(f"  keel routed, {shards} shard(s), {shards} writer process(es)")
        writers = Writers(url, name, shards)
        try:
            raw = drive("keel", url, {}, name, senders, total)
        finally:
            writers.close()
        raw["shards"] = raw["writers"] = shards
        section.add(
            Row(
                f"keel_shards_{shards}",
                f"keel, Kafka, {shards} shard(s), {shards} writer process(es), {senders} "
                f"senders x {THREADS} threads",
                raw["commands"] / raw["seconds"],
                "commands/s",
                peer="keel_shards_1" if shards > 1 else None,
                raw=raw,
            )
        )


def latency_rows(ctx: Context, section: Section, samples: int) -> None:
    name = ctx.name("wlat")
    url = _url(ctx, name)
    app = build_app(url, name)
    measured: dict[str, list[float]] = {}
    try:
        account = uuid.uuid4()
        with deciding(app):
            app.execute(OpenAccount(account_id=account, owner="Ada", email="a@example.org"))
            measured["in_place"] = _timed(app, account, samples)
        writers = Writers(url, name, 1)
        try:
            app.execute(Deposit(account_id=account, amount=AMOUNT), timeout=120)  # warm up
            measured["routed"] = _timed(app, account, samples)
        finally:
            writers.close()
    finally:
        app.close()
    for q in (50, 99):
        section.add(
            Row(
                f"latency_in_place_p{q}",
                f"execute() decided in place (this process owns the shard), p{q} (peer)",
                percentile(measured["in_place"], q),
                "ms",
                higher_is_better=False,
                raw={"samples": samples},
            )
        )
        section.add(
            Row(
                f"latency_routed_p{q}",
                f"execute() routed to a writer process and back, p{q}",
                percentile(measured["routed"], q),
                "ms",
                peer=f"latency_in_place_p{q}",
                higher_is_better=False,
                raw={"samples": samples},
            )
        )


def _timed(app: Any, account: uuid.UUID, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        with Stopwatch() as sw:
            app.execute(Deposit(account_id=account, amount=AMOUNT), timeout=60)
        out.append(sw.seconds * 1000)
    return out


def first_command_rows(ctx: Context, section: Section, sizes: tuple[int, int]) -> None:
    measured: dict[int, float] = {}
    for size in sizes:
        name = ctx.name(f"wfc{size}")
        url = _url(ctx, name)
        ctx.log(f"  first command of a new sender with {size:,} events in the topic")
        _fill(ctx, name, size)
        writers = Writers(url, name, 1)
        try:
            app = build_app(url, name)
            app.execute(
                OpenAccount(account_id=uuid.uuid4(), owner="A", email="a@x.org"), timeout=600
            )
            app.close()  # the writer is caught up and deciding
            times = []
            for _ in range(3):
                out = SPAWN.Queue()
                process = SPAWN.Process(
                    target=_first_command_main, args=(url, name, time.time(), out)
                )
                process.start()
                times.append(out.get(timeout=300) * 1000)
                process.join(60)
            measured[size] = statistics.median(times)
        finally:
            writers.close()
    small, large = sizes
    section.add(
        Row(
            "first_command_small",
            f"new sender process: start to first result, {small:,} events in the topic (peer)",
            measured[small],
            "ms",
            higher_is_better=False,
        )
    )
    section.add(
        Row(
            "first_command_large",
            f"new sender process: start to first result, {large:,} events in the topic",
            measured[large],
            "ms",
            peer="first_command_small",
            higher_is_better=False,
            note="includes starting Python and importing the framework (same in both)",
        )
    )


def _fill(ctx: Context, name: str, count: int) -> None:
    """``count`` events of distinct aggregates in ``<name>.events``, written raw and fast."""
    from framework.backends.kafka import open_store
    from framework.backends.kafka_client import KafkaProducer
    from framework.backends.kafka_records import encode_event, partition_for
    from framework.persistence import NewEvent

    bootstrap = ctx.services.need_kafka()
    open_store(_url(ctx, name), name=name).close()  # creates the topics and the layout
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=256 * 1024
    )
    state = b'{"v":1,"data":{"amount":"1.00"},"meta":{}}'
    for _ in range(count):
        event = NewEvent(uuid.uuid4(), 1, "Bench.Filler", state)
        key, value, headers = encode_event(event)
        producer.send(
            f"{name}.events",
            key=key,
            value=value,
            headers=headers,
            partition=partition_for(event.aggregate_id, 3),
        )
    producer.flush(timeout=600)
    producer.close()


def run(ctx: Context) -> Section:
    section = Section("writers", TITLE)
    if ctx.smoke or ctx.kafka_missing(section):
        if ctx.smoke:
            section.skipped.append("whole section: needs Kafka (not in the smoke run)")
        return section
    senders_rows(ctx, section, ctx.pick((1,), (1, 2), (1, 2, 4, 8)), ctx.pick(0, 200, 2000))
    shards_rows(ctx, section, ctx.pick((1,), (1, 2), (1, 2, 4)), ctx.pick(0, 200, 2000))
    latency_rows(ctx, section, ctx.pick(5, 30, 200))
    first_command_rows(ctx, section, ctx.pick((10, 100), (1_000, 10_000), (10_000, 1_000_000)))
    cores = os.cpu_count()
    section.notes.append(
        f"real processes on {cores} cores shared with the broker; cpu_percent in each row's raw "
        "data is the whole machine's use over the timed window (100 = every core busy); each "
        f"sender process runs {THREADS} caller threads, each depositing into its own account"
    )
    return section
