"""A blue-green rebuild never swaps in tables behind the live ones: rows and positions a reader
already waited for are still there after the swap (on SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from framework import dead_letters
from framework.persistence import open_store
from framework.positions import read_positions
from framework.projection_testing import table_rows
from framework.rebuild import RebuildProgress, rebuild
from framework.settings import projection_settings
from framework.worker import ProjectionWorker, wait_until
from framework.writer import writer as serve_commands
from tests.projection_domain import AddItem, CartSummary, OpenCart, cart_app
from tests.support.projection_support import Traffic, pg_database, ready_engine


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/read.db"
        return
    with pg_database(request.getfixturevalue("postgres_url")) as url:
        yield url


def live_positions(engine: sa.Engine) -> dict[int, int]:
    with engine.connect() as conn:
        return read_positions(conn, "cart_summary")


def swap_under_a_reader(store: Any, app: Any, engine: sa.Engine, group: str | None) -> None:
    """Rebuild while a command lands and a reader waits for its row in the live table, then
    print the figures and check them."""
    projection = CartSummary()
    stop = threading.Event()
    live = ProjectionWorker(
        projection, store, engine, batch_size=10, poll_timeout=0.02, group=group
    )
    thread = threading.Thread(target=live.run, args=(stop,), daemon=True)
    thread.start()
    wait_until(projection, engine, store.head(), timeout=60, store=store)
    late = uuid.uuid4()
    seen: dict[str, object] = {}

    def progress(p: RebuildProgress) -> None:
        # A command lands while the rebuild runs; a reader waits for it in the live table.
        if "positions" in seen or p.finished:
            return
        result = app.execute(OpenCart(cart_id=late, customer="late"))
        wait_until(projection, engine, result.positions, timeout=30)
        seen["positions"] = live_positions(engine)
        seen["row"] = sum(r["id"] == late for r in table_rows(engine, CartSummary.carts))

    try:
        rebuild(projection, store, engine, progress=progress)
        after_rows = sum(r["id"] == late for r in table_rows(engine, CartSummary.carts))
        after = live_positions(engine)
    finally:
        stop.set()
        thread.join(30)
    before = seen["positions"]
    assert isinstance(before, dict)
    went_back = sorted(p for p, o in before.items() if after.get(p, 0) < o)
    print(
        f"row_seen_before_swap={seen['row']} row_after_swap={after_rows} "
        f"positions_before={before} positions_after={after} went_back={went_back}"
    )
    assert (seen["row"], after_rows, went_back) == (1, 1, [])


@pytest.mark.timeout(120)
def test_a_row_seen_before_the_swap_is_there_after_it(db_url: str, tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/events.db", name="carts")
    app = cart_app(store)
    Traffic(app, seed=11).run(60)
    engine = ready_engine(db_url)
    print(f"\nREBUILD-SWAP[{engine.dialect.name}]: ", end="")
    swap_under_a_reader(store, app, engine, None)
    store.close()
    engine.dispose()


@pytest.mark.timeout(180)
def test_a_row_seen_before_the_swap_is_there_after_it_on_kafka(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    name = unique_name("carts").replace("-", "_")
    store = open_store(f"kafka://{kafka_bootstrap}?partitions=3", name=name)
    app = cart_app(store, name=name)
    with serve_commands(app):  # this process decides the commands
        Traffic(app, seed=12).run(60)
        engine = ready_engine(f"sqlite:///{tmp_path}/read.db")
        print("\nREBUILD-SWAP[kafka]: ", end="")
        swap_under_a_reader(store, app, engine, unique_name("live"))
    store.close()
    engine.dispose()


@pytest.mark.timeout(120)
def test_a_poison_event_in_the_swap_window_is_parked_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(f"sqlite:///{tmp_path}/events.db", name="carts")
    app = cart_app(store)
    Traffic(app, seed=13).run(40)
    engine = ready_engine(f"sqlite:///{tmp_path}/read.db")
    monkeypatch.setattr(CartSummary, "fail_skus", {"POISON"})
    settings = projection_settings("cart_summary", max_attempts=1, poll_timeout=0.02)
    projection = CartSummary()
    stop = threading.Event()
    live = ProjectionWorker(projection, store, engine, settings=settings)
    thread = threading.Thread(target=live.run, args=(stop,), daemon=True)
    thread.start()
    wait_until(projection, engine, store.head(), timeout=30)
    cart = uuid.uuid4()
    sent: list[bool] = []

    def progress(p: RebuildProgress) -> None:
        # While the rebuild runs, a poison event lands and the live worker parks it.
        if sent or p.finished:
            return
        sent.append(True)
        app.execute(OpenCart(cart_id=cart, customer="p"))
        result = app.execute(AddItem(cart_id=cart, sku="POISON"))
        wait_until(projection, engine, result.positions, timeout=30)

    try:
        result = rebuild(projection, store, engine, progress=progress, settings=settings)
    finally:
        stop.set()
        thread.join(30)
    letters = dead_letters.list_dead_letters(engine, projection)
    print(
        f"\nREBUILD-POISON: swapped={result.swapped} rounds={result.rounds} "
        f"dead_letters={[(d.reason, d.version) for d in letters]}"
    )
    assert result.swapped and [(d.aggregate_id, d.version) for d in letters] == [(str(cart), 2)]
    store.close()
    engine.dispose()
