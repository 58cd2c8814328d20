"""The read-model database failing under a running worker (reliability.md T10, T11), on real
PostgreSQL. T10 crashes a PRIVATE server it starts for itself (never the shared one); T11 kills
connections of a database of its own on the shared server. Each prints one line of figures."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from framework.persistence import open_store
from framework.positions import read_positions
from framework.projection_testing import digest
from framework.worker import ProjectionWorker, wait_until
from tests.projection_domain import CartSummary, cart_app
from tests.support.projection_support import (
    Traffic,
    check_counts,
    clean_digest,
    pg_database,
    private_postgres,
    ready_engine,
)


def position(engine: sa.Engine) -> int | None:
    try:
        with engine.connect() as conn:
            return sum(read_positions(conn, "cart_summary").values())
    except sa.exc.OperationalError:
        return None


def torn_rows(engine: sa.Engine) -> int:
    """Carts whose rows disagree with each other (what half a transaction would leave)."""
    carts, lines, log = CartSummary.carts, CartSummary.lines, CartSummary.event_log
    with engine.connect() as conn:
        quantities = dict(
            conn.execute(
                sa.select(lines.c.cart_id, sa.func.sum(lines.c.quantity)).group_by(lines.c.cart_id)
            ).all()
        )
        versions = dict(
            conn.execute(
                sa.select(log.c.aggregate_id, sa.func.max(log.c.version)).group_by(
                    log.c.aggregate_id
                )
            ).all()
        )
        rows = conn.execute(sa.select(carts.c.id, carts.c.item_count, carts.c.version)).all()
    return sum(
        1
        for cart, items, version in rows
        if items != (quantities.get(cart) or 0) or version != versions.get(cart)
    )


@pytest.mark.timeout(240)
def test_t10_database_down_then_back_up(tmp_path: Path, postgres_url: str) -> None:
    cap = 1.0
    with private_postgres() as pg:
        engine = ready_engine(pg.url)
        store = open_store(f"sqlite:///{tmp_path}/events.db", name="carts")
        traffic = Traffic(cart_app(store), seed=10)
        traffic.run(150)
        worker = ProjectionWorker(
            CartSummary(), store, engine, batch_size=10, poll_timeout=0.05,
            outage_initial=0.1, outage_max=cap,
        )  # fmt: skip
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        wait_until(CartSummary(), engine, traffic.positions, timeout=60)
        writer_stop = threading.Event()
        writer = traffic.in_thread(writer_stop, pause=0.01)
        time.sleep(0.5)
        pg.crash()  # pg_ctl stop -m immediate
        down = 4.0
        time.sleep(down)
        alive_while_down = thread.is_alive()
        pg.start()
        back = time.monotonic()
        at_back = None
        while at_back is None and time.monotonic() - back < 30:
            at_back = position(engine)
        assert at_back is not None
        while (position(engine) or 0) <= at_back and time.monotonic() - back < 60:
            time.sleep(0.02)
        resume = time.monotonic() - back
        writer_stop.set()
        writer.join(10)
        wait_until(CartSummary(), engine, traffic.positions, timeout=60)
        stop.set()
        thread.join(10)
        events, dup, lost = check_counts(engine, store)
        with pg_database(pg.url) as clean_url:
            equal = digest(engine, CartSummary().tables) == clean_digest(store, clean_url)
        engine.dispose()
    episodes = worker.stats.outage_episodes
    delays = [d for e in episodes for d in e]
    monotone = all(e == sorted(e) for e in episodes)
    print(
        f"\nT10: down={down:.0f}s events={events} retries={worker.stats.outage_retries} "
        f"outages={len(episodes)} backoff={[round(d, 2) for d in delays]} cap={cap} "
        f"monotone={monotone} resume_after_up={resume:.2f}s alive={alive_while_down} "
        f"lost={lost} dup={dup} digest_equal={equal}"
    )
    assert worker.stats.outage_retries >= 3 and alive_while_down
    assert monotone and max(delays) <= cap
    assert resume <= cap + 2.0
    assert (lost, dup, equal) == (0, 0, True)


@pytest.mark.timeout(180)
def test_t11_connections_killed_mid_transaction(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(CartSummary, "delay", 0.002)  # keep transactions open for a while
    store = open_store(f"sqlite:///{tmp_path}/events.db", name="carts")
    traffic = Traffic(cart_app(store), seed=11)
    traffic.run(500)
    with pg_database(postgres_url) as url, pg_database(postgres_url) as clean_url:
        engine = ready_engine(url)
        database = url.rsplit("/", 1)[1]
        admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
        worker = ProjectionWorker(
            CartSummary(), store, engine, batch_size=15, poll_timeout=0.05,
            outage_initial=0.02, outage_max=0.2,
        )  # fmt: skip
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        rng = random.Random(11)
        rounds = terminated = 0
        with admin.connect() as conn:
            while rounds < 25 and thread.is_alive():
                time.sleep(rng.uniform(0.02, 0.15))
                terminated += conn.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": database},
                ).scalar_one()
                rounds += 1
        admin.dispose()
        alive = thread.is_alive()
        wait_until(CartSummary(), engine, traffic.positions, timeout=90)
        stop.set()
        thread.join(10)
        events, dup, missing = check_counts(engine, store)
        partial = torn_rows(engine)
        equal = digest(engine, CartSummary().tables) == clean_digest(store, clean_url)
        engine.dispose()
    print(
        f"\nT11: kill_rounds={rounds} backends_terminated={terminated} events={events} "
        f"aborted_and_retried={worker.stats.outage_retries} conflicts={worker.stats.conflicts} "
        f"worker_alive={alive} dup={dup} missing={missing} partial={partial} digest_equal={equal}"
    )
    assert terminated >= 5 and alive
    assert (dup, missing, partial, equal) == (0, 0, 0, True)
