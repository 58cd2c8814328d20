"""Fault tests of the projection worker (reliability.md T3, T5, T6, T7), on SQLite read models
and, where marked, PostgreSQL. Each prints one line of figures and asserts on it."""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from framework import dead_letters
from framework.codec import codec
from framework.commands import Metadata
from framework.database import read_only
from framework.persistence import FeedReader, NewEvent, RecordedEvent, open_store
from framework.positions import read_positions
from framework.projection_testing import digest
from framework.rebuild import RebuildProgress, rebuild
from framework.testing import _instantiate, ev
from framework.worker import ProjectionWorker, wait_until
from tests.projection_domain import AddItem, Cart, CartSummary, OpenCart, cart_app
from tests.support.projection_support import (
    PYTHON,
    REPO,
    Traffic,
    check_counts,
    clean_digest,
    pg_database,
    ready_engine,
)


@pytest.fixture(params=["sqlite", "postgres"])
def db_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(the read-model database under test, a second one for the clean run)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/read.db", f"sqlite:///{tmp_path}/clean.db"
        return
    admin = request.getfixturevalue("postgres_url")
    with pg_database(admin) as url, pg_database(admin) as clean:
        yield url, clean


def stored_position(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return sum(read_positions(conn, "cart_summary").values())


@pytest.mark.timeout(240)
def test_t3_worker_process_sigkilled_at_random_points(
    db_urls: tuple[str, str], tmp_path: Path
) -> None:
    db_url, clean_url = db_urls
    store_url = f"sqlite:///{tmp_path}/events.db"
    app = cart_app(store_url)
    traffic = Traffic(app, seed=3)
    traffic.run(100)
    engine = ready_engine(db_url)
    rng = random.Random(20)
    env = {**os.environ, "KEEL_TEST_HANDLER_DELAY": "0.002", "PYTHONPATH": str(REPO)}
    command = [
        PYTHON, "-m", "framework.worker", "run", "tests.projection_domain:CartSummary",
        "--app", "carts", "--store", store_url, "--database", db_url, "--batch-size", "4",
    ]  # fmt: skip
    stop_writer = threading.Event()
    writer = traffic.in_thread(stop_writer, pause=0.05)
    kills = starts = 0
    catchups: list[float] = []
    deadline = time.monotonic() + 150
    with open(tmp_path / "worker.log", "ab") as log:
        while kills < 20 and time.monotonic() < deadline:
            before = stored_position(engine)
            proc = subprocess.Popen(command, env=env, stdout=log, stderr=log)
            starts += 1
            started = time.monotonic()
            while stored_position(engine) == before and time.monotonic() - started < 20:
                time.sleep(0.01)
            catchups.append(time.monotonic() - started)
            time.sleep(rng.uniform(0, 0.2))  # mid-batch, between batches, mid-commit...
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
        stop_writer.set()
        writer.join(10)
        started = time.monotonic()
        subprocess.run([*command, "--until-caught-up"], env=env, stdout=log, stderr=log,
                       timeout=120, check=True)  # fmt: skip
        final = time.monotonic() - started
    store = open_store(store_url, name="carts")
    events, dup, missing = check_counts(engine, store)
    equal = digest(engine, CartSummary().tables) == clean_digest(store, clean_url)
    backend = "postgres" if db_url.startswith("postgres") else "sqlite"
    p50 = statistics.median(catchups)
    p99 = max(catchups)
    print(
        f"\nT3[{backend}]: kills={kills} restarts={starts + 1} events={events} "
        f"dup_applied={dup} missing={missing} digest_equal={equal} "
        f"restart_to_progress_p50={p50:.2f}s p99={p99:.2f}s final_catchup={final:.1f}s"
    )
    assert (kills, dup, missing, equal) == (20, 0, 0, True)
    store.close()
    engine.dispose()


class RedeliveringReader(FeedReader):
    """Delivers every event 1-3 times: whole batches again, earlier slices after later events
    (out of order within a partition), seeks backwards, and revoke/assign mid-stream."""

    def __init__(self, inner: FeedReader, worker: ProjectionWorker, seed: int) -> None:
        self.inner = inner
        self.worker = worker
        self.rng = random.Random(seed)
        self.seen: list[RecordedEvent] = []
        self.keys: set[tuple[int, int]] = set()
        self.delivered = 0
        self.rebalances = 0
        self.seeks = 0

    def poll(self, *, max_records: int, timeout: float) -> list[RecordedEvent]:
        r = self.rng.random()
        if self.seen and r < 0.3:
            start = self.rng.randrange(len(self.seen))
            batch = self.seen[start : start + self.rng.randint(1, max_records)]
        elif self.seen and r < 0.4:
            self.seeks += 1
            back = self.seen[self.rng.randrange(len(self.seen))]
            self.inner.seek(back.partition, back.offset)
            batch = self.inner.poll(max_records=max_records, timeout=timeout)
        elif r < 0.45:
            self.rebalances += 1  # what a consumer-group rebalance does, between two polls
            self.worker._on_revoke({0})
            self.inner.seek(0, self.worker._on_assign({0})[0])
            batch = self.inner.poll(max_records=max_records, timeout=timeout)
        else:
            batch = self.inner.poll(max_records=max_records, timeout=timeout)
            if batch and self.rng.random() < 0.5:
                batch = batch + batch[: self.rng.randint(1, len(batch))]
        for e in batch:
            if (e.partition, e.offset) not in self.keys:
                self.keys.add((e.partition, e.offset))
                self.seen.append(e)
        self.delivered += len(batch)
        return batch

    def seek(self, partition: int, offset: int) -> None:
        self.inner.seek(partition, offset)

    def assignment(self) -> set[int]:
        return self.inner.assignment()

    def close(self) -> None:
        self.inner.close()


@pytest.mark.timeout(120)
def test_t5_every_event_delivered_one_to_three_times(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/events.db", name="carts")
    Traffic(cart_app(store), seed=5).run(300)
    engine = ready_engine(f"sqlite:///{tmp_path}/read.db")
    readers: list[RedeliveringReader] = []

    class Faulty(ProjectionWorker):
        def open_feed(self) -> FeedReader:
            readers.append(RedeliveringReader(super().open_feed(), self, seed=55))
            return readers[-1]

    worker = Faulty(CartSummary(), store, engine, batch_size=10)
    worker.run(until_caught_up=True)
    reader = readers[0]
    unique = len({(e.partition, e.offset) for e in reader.seen})
    events, dup, missing = check_counts(engine, store)
    equal = digest(engine, CartSummary().tables) == clean_digest(
        store, f"sqlite:///{tmp_path}/clean.db"
    )
    print(
        f"\nT5: events={events} records={unique} delivered={reader.delivered} "
        f"duplicates_delivered={reader.delivered - unique} "
        f"duplicates_skipped={worker.stats.duplicates_skipped} seeks_back={reader.seeks} "
        f"rebalances={reader.rebalances} applied_dups={dup} missing={missing} "
        f"digest_equal={equal}"
    )
    assert reader.delivered - unique > unique // 2
    assert (dup, missing, equal) == (0, 0, True)


class ReaderWatch:
    """A reader polling the live positions and rows while a rebuild runs: carts are never
    deleted and items only added, so any count going down is a reader going back in time."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.polls = 0
        self.positions_regressed = 0
        self.rows_regressed = 0

    def run(self, stop: threading.Event) -> None:
        best: dict[int, int] = {}
        best_rows = (0, 0)
        carts = CartSummary.carts
        query = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(carts.c.item_count), 0))
        while not stop.is_set() and self.polls < 100_000:
            try:
                with self.engine.connect() as conn, read_only(conn).begin():
                    positions = read_positions(conn, "cart_summary")
                    count, items = conn.execute(query).one()
            except sa.exc.DBAPIError:  # the swap dropped the table between two statements
                continue
            self.polls += 1
            for p, o in positions.items():
                self.positions_regressed += o < best.get(p, 0)
                best[p] = max(o, best.get(p, 0))
            rows = (int(count), int(items))
            self.rows_regressed += rows[0] < best_rows[0] or rows[1] < best_rows[1]
            best_rows = max(best_rows, rows)
            stop.wait(0.002)


@pytest.mark.timeout(180)
def test_t6_rebuild_while_commands_keep_arriving(db_urls: tuple[str, str], tmp_path: Path) -> None:
    db_url, clean_url = db_urls
    store = open_store(f"sqlite:///{tmp_path}/events.db", name="carts")
    traffic = Traffic(cart_app(store), seed=6)
    traffic.run(400)
    engine = ready_engine(db_url)
    projection = CartSummary()
    live_stop = threading.Event()
    live = ProjectionWorker(projection, store, engine, batch_size=20, poll_timeout=0.05)
    live_thread = threading.Thread(target=live.run, args=(live_stop,), daemon=True)
    live_thread.start()
    wait_until(projection, engine, traffic.positions, timeout=60)
    writer_stop = threading.Event()
    writer = traffic.in_thread(writer_stop, pause=0.01)
    during_start = traffic.commands
    reports: list[RebuildProgress] = []
    watch_stop = threading.Event()
    watch = ReaderWatch(engine)
    watcher = threading.Thread(target=watch.run, args=(watch_stop,), daemon=True)
    watcher.start()
    result = rebuild(projection, store, engine, progress=reports.append)
    during = traffic.commands - during_start
    time.sleep(0.2)
    watch_stop.set()
    watcher.join(10)
    time.sleep(0.3)  # commands still arrive after the swap
    writer_stop.set()
    writer.join(10)
    wait_until(projection, engine, traffic.positions, timeout=60)
    live_stop.set()
    live_thread.join(10)
    events, dup, missed = check_counts(engine, store)
    equal = digest(engine, projection.tables) == clean_digest(store, clean_url)
    backend = "postgres" if db_url.startswith("postgres") else "sqlite"
    print(
        f"\nT6[{backend}]: events={events} rebuilt_events={result.events} "
        f"rebuild_s={result.seconds:.2f} events_per_s={result.rate:.0f} rounds={result.rounds} "
        f"commands_during_rebuild={during} live_conflicts={live.stats.conflicts} "
        f"progress_reports={len(reports)} reader_polls={watch.polls} "
        f"positions_regressed={watch.positions_regressed} rows_regressed={watch.rows_regressed} "
        f"missed={missed} dup={dup} digest_equal={equal}"
    )
    assert reports[-1].finished and reports[-1].fraction == 1.0
    assert during > 0 and live_thread.is_alive() is False and watch.polls > 10
    assert (watch.positions_regressed, watch.rows_regressed) == (0, 0)
    assert (missed, dup, equal) == (0, 0, True)
    engine.dispose()


@pytest.mark.timeout(120)
def test_t7_poison_events_are_parked_and_redriven(
    db_urls: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_url, clean_url = db_urls
    store = open_store(f"sqlite:///{tmp_path}/events.db", name="carts")
    app = cart_app(store)
    traffic = Traffic(app, seed=7)
    traffic.run(100)
    poisoned, bad_json, future = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    app.execute(OpenCart(cart_id=poisoned, customer="p"))
    app.execute(AddItem(cart_id=poisoned, sku="POISON"))  # the handler raises for it
    app.execute(AddItem(cart_id=poisoned, sku="after"))  # held behind it
    app.execute(AddItem(cart_id=poisoned, sku="after2"))  # held behind it
    store.append([NewEvent(bad_json, 1, "Cart.Opened", b"\x00{not json")])  # undecodable
    app.execute(OpenCart(cart_id=future, customer="f"))
    future_payload = b'{"v": 99, "data": {"sku": "z", "quantity": 1, "price": "1"}, "meta": {}}'
    store.append([NewEvent(future, 2, "Cart.ItemAdded", future_payload)])  # unknown version
    later = ev(Cart.ItemAdded, sku="later", quantity=1, price=Decimal("2"))
    store.append([codec.encode(_instantiate(later, future, 3), Metadata())])  # held
    traffic.run(100)  # other aggregates keep flowing
    monkeypatch.setattr(CartSummary, "fail_skus", {"POISON"})
    engine = ready_engine(db_url)
    settings = {"max_attempts": 3, "retry_initial": 0.001, "retry_max": 0.004}
    stop = threading.Event()
    worker = ProjectionWorker(CartSummary(), store, engine, poll_timeout=0.05, **settings)
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    wait_until(CartSummary(), engine, store.head(), timeout=60)
    alive = thread.is_alive()
    letters = dead_letters.list_dead_letters(engine, "cart_summary")
    reasons = sorted((d.reason, d.error_type.rsplit(".", 1)[-1]) for d in letters)
    parked = {(d.aggregate_id, d.version) for d in letters}
    events, _, missing = check_counts(engine, store)
    other_missing = missing - len(parked)
    stop.set()
    thread.join(10)

    def fix_and_redrive(engine: sa.Engine) -> tuple[int, int, int]:
        """The operator's fix: the handler is corrected; the undecodable events are inspected
        and discarded; everything else is re-driven."""
        monkeypatch.setattr(CartSummary, "fail_skus", set())
        failed_decoding = [
            d.id
            for d in dead_letters.list_dead_letters(engine, "cart_summary")
            if d.error_type.endswith("DecodingError")
        ]
        discarded = dead_letters.discard(engine, "cart_summary", failed_decoding)
        result = dead_letters.redrive(engine, CartSummary())
        return result.applied, discarded, result.remaining

    redriven, discarded, remaining = fix_and_redrive(engine)
    clean_engine = ready_engine(clean_url)
    ProjectionWorker(CartSummary(), store, clean_engine, **settings).run(until_caught_up=True)
    fix_and_redrive(clean_engine)
    equal = digest(engine, CartSummary().tables) == digest(clean_engine, CartSummary().tables)
    backend = "postgres" if db_url.startswith("postgres") else "sqlite"
    failed = sum(1 for r, _ in reasons if r == "failed")
    held = sum(1 for r, _ in reasons if r == "held")
    print(
        f"\nT7[{backend}]: events={events} dlq_failed={failed} dlq_held={held} "
        f"reasons={sorted(set(reasons))} worker_alive={alive} other_aggs_missing={other_missing} "
        f"retries={worker.stats.handler_retries} redriven={redriven} discarded={discarded} "
        f"dlq_after={remaining} digest_equal={equal}"
    )
    assert {(str(poisoned), 2), (str(bad_json), 1), (str(future), 2)} <= parked
    assert (failed, held, alive, other_missing) == (3, 3, True, 0)
    assert (remaining, equal) == (0, True)
    clean_engine.dispose()
    engine.dispose()
