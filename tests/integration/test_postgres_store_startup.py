"""Processes that start at once on a fresh PostgreSQL database (web workers, writers, workers
after a deploy) each open a store, and each creates its tables if they are missing. Without
a lock, PostgreSQL's catalogue races even under IF NOT EXISTS: in every round some of the six
starters failed with "duplicate key value violates unique constraint" (which then read as a
ConcurrencyError) or "tuple concurrently updated" (20 of 30 over five rounds). Stores of
different names race too: the stores of a schema share one composite type. The same holds for
workers creating the framework's and their projection's tables (``--create-tables``,
``setup_tables``)."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable

import sqlalchemy as sa

from framework.persistence import open_store
from framework.worker import setup_tables
from tests.projection_domain import CartSummary
from tests.support.projection_support import pg_database

STARTERS = 6
ROUNDS = 5


def at_once(start: Callable[[], None]) -> list[str]:
    """Run ``start`` in :data:`STARTERS` threads released together; the errors they raised."""
    failed: list[str] = []
    barrier = threading.Barrier(STARTERS)

    def run() -> None:
        barrier.wait()
        try:
            start()
        except Exception as error:  # every failure is the finding
            failed.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=run) for _ in range(STARTERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not [t for t in threads if t.is_alive()], "a starter hung"
    return failed


def test_processes_starting_at_once_on_a_fresh_database_all_open_their_stores(
    postgres_url: str,
) -> None:
    failed: list[str] = []
    for _ in range(ROUNDS):
        with pg_database(postgres_url) as url:
            # Two starters per store, three stores: the same tables and the shared type.
            names = queue.SimpleQueue[str]()
            stores = [f"startup_{uuid.uuid4().hex[:10]}" for _ in range(3)]
            for name in stores * (STARTERS // len(stores)):
                names.put(name)

            def start(names: queue.SimpleQueue[str] = names, url: str = url) -> None:
                open_store(url, name=names.get()).close()

            failed += at_once(start)
            for name in stores:
                store = open_store(url, name=name)
                try:
                    assert store.read(uuid.uuid4()) == []  # the tables are there, and empty
                finally:
                    store.close()
    print(f"PG-STARTUP: rounds={ROUNDS} starters={STARTERS} failed={len(failed)}")
    assert failed == []


def test_workers_creating_their_tables_at_once_on_a_fresh_database_all_start(
    postgres_url: str,
) -> None:
    failed: list[str] = []
    for _ in range(ROUNDS):
        with pg_database(postgres_url) as url:
            engines = [sa.create_engine(url) for _ in range(STARTERS)]
            try:
                starting: queue.SimpleQueue[sa.Engine] = queue.SimpleQueue()
                for engine in engines:
                    starting.put(engine)

                def start(starting: queue.SimpleQueue[sa.Engine] = starting) -> None:
                    setup_tables(starting.get(), CartSummary())  # an engine of its own each

                failed += at_once(start)
                tables = set(sa.inspect(engines[0]).get_table_names())
                assert {t.name for t in CartSummary.metadata.tables.values()} <= tables
            finally:
                for engine in engines:
                    engine.dispose()
    print(f"PG-STARTUP[tables]: rounds={ROUNDS} starters={STARTERS} failed={len(failed)}")
    assert failed == []
