"""The projection API, the worker's bookkeeping, status, read-your-writes and the test helpers,
on the embedded backends (memory store, SQLite read models)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from framework import codec as codec_module
from framework import dead_letters
from framework.database import Backoff, create_engine, is_connectivity_error
from framework.errors import (
    ConfigurationError,
    ProjectionError,
    ProjectionTimeoutError,
    ReadModelNotMigratedError,
)
from framework.persistence import NewEvent, open_store
from framework.positions import read_positions, write_positions
from framework.projection import Projection, handles
from framework.projection_testing import digest, given_commands, given_events, table_rows
from framework.settings import database_url, projection_settings
from framework.testing import ev
from framework.worker import ProjectionWorker, main, setup_tables, status, wait_until
from tests.projection_domain import AddItem, Cart, CartSummary, CheckOut, OpenCart, cart_app

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]

CART = uuid.UUID(int=1)


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    engine = create_engine(f"sqlite:///{tmp_path}/read.db")
    setup_tables(engine, CartSummary())
    yield engine
    engine.dispose()


def test_given_events_then_rows() -> None:
    (
        given_events(
            CartSummary(),
            ev(Cart.Opened, id=CART, customer="ann"),
            ev(Cart.ItemAdded, id=CART, sku="a", quantity=2, price=Decimal("1.25")),
            ev(Cart.ItemAdded, id=CART, sku="a", quantity=1, price=Decimal("1.25")),
        )
        .then_rows(
            CartSummary.carts,
            [{"id": CART, "customer": "ann", "item_count": 3, "total": Decimal("3.75")}],
        )
        .then_rows(CartSummary.lines, [{"cart_id": CART, "sku": "a", "quantity": 3}])
    )


def test_given_commands_and_a_readable_diff() -> None:
    outcome = given_commands(
        CartSummary(),
        cart_app,
        OpenCart(cart_id=CART, customer="bo"),
        AddItem(cart_id=CART, sku="x"),
        CheckOut(cart_id=CART),
    )
    outcome.then_rows(CartSummary.carts, [{"id": CART, "status": "checked_out", "version": 3}])
    with pytest.raises(AssertionError, match=r"(?s)differ.*-.*'status': 'open'"):
        outcome.then_rows(CartSummary.carts, [{"id": CART, "status": "open"}])


def test_a_handler_reading_outside_state_is_caught_by_the_rebuild_check() -> None:
    calls = iter(range(1000))

    class Flaky(Projection):
        name = "flaky"
        metadata = sa.MetaData()
        seen = sa.Table("flaky_seen", metadata, sa.Column("n", sa.Integer, primary_key=True))

        @handles(Cart.Opened)
        def opened(self, event: Cart.Opened, conn: sa.Connection) -> None:
            conn.execute(self.seen.insert().values(n=next(calls)))

    with pytest.raises(AssertionError, match="rebuilding flaky_seen"):
        given_events(Flaky(), ev(Cart.Opened, id=CART, customer="x"))


def test_unhandled_events_and_command_records_are_never_decoded(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    class OnlyCheckouts(Projection):
        name = "only_checkouts"
        metadata = sa.MetaData()
        done = sa.Table("only_done", metadata, sa.Column("id", sa.Uuid, primary_key=True))

        @handles(Cart.CheckedOut)
        def checked_out(self, event: Cart.CheckedOut, conn: sa.Connection) -> None:
            conn.execute(self.done.insert().values(id=event.originator_id))

    store = open_store("memory://", name="carts")
    app = cart_app(store)
    app.execute(OpenCart(cart_id=CART, customer="a"))
    app.execute(AddItem(cart_id=CART, sku="s"))
    app.execute(CheckOut(cart_id=CART))
    decoded: list[str] = []
    real = codec_module.codec.decode
    monkeypatch.setattr(codec_module.codec, "decode", lambda r: decoded.append(r.topic) or real(r))
    projection = OnlyCheckouts()
    setup_tables(engine, projection)
    stats = ProjectionWorker(projection, store, engine).run(until_caught_up=True)
    assert decoded == ["Cart.CheckedOut"]
    assert (stats.events_applied, stats.events_skipped) == (1, 5)  # 2 events + 3 records
    assert status(projection, store, engine).lag == 0


def test_redelivered_events_are_skipped_and_a_stale_worker_rolls_back(
    engine: sa.Engine,
) -> None:
    store = open_store("memory://", name="carts")
    app = cart_app(store)
    app.execute(OpenCart(cart_id=CART, customer="a"))
    first = ProjectionWorker(CartSummary(), store, engine)
    first.run(until_caught_up=True)
    before = digest(engine, CartSummary().tables)
    # Delivered again: below the position, skipped.
    events = list(store.iter_partition(0))
    first.applier.apply_partition(0, events)
    assert first.stats.duplicates_skipped == len(events)
    # A second worker moves the position; the first one's expectation is stale.
    app.execute(AddItem(cart_id=CART, sku="s"))
    ProjectionWorker(CartSummary(), store, engine).run(until_caught_up=True)
    assert first.applier.apply_partition(0, list(store.iter_partition(0, start=0))) is False
    assert first.stats.conflicts == 1
    assert first.applier.positions[0] == store.head()[0]  # re-read from the database
    assert digest(engine, CartSummary().tables) != before
    with engine.connect() as conn:
        assert conn.execute(sa.select(CartSummary.event_log.c.applied).distinct()).all() == [(1,)]


def test_position_guard(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        write_positions(conn, "p", {0: 5}, {0: None})
        write_positions(conn, "p", {0: 9}, {0: 5})
    with pytest.raises(ProjectionError, match="no longer 5"), engine.begin() as conn:
        write_positions(conn, "p", {0: 12}, {0: 5})
    with pytest.raises(ProjectionError, match="first"), engine.begin() as conn:
        write_positions(conn, "p", {0: 12}, {0: None})
    with engine.connect() as conn:
        assert read_positions(conn, "p") == {0: 9}


def test_status_and_wait_until(engine: sa.Engine) -> None:
    store = open_store("memory://", name="carts")
    app = cart_app(store)
    result = app.execute(OpenCart(cart_id=CART, customer="a"))
    projection = CartSummary()
    before = status(projection, store, engine)
    assert [(p.position, p.lag) for p in before.partitions] == [(0, 3)]
    with pytest.raises(ProjectionTimeoutError, match="is its worker running"):
        wait_until(projection, engine, result.positions, timeout=0.1)
    stop = threading.Event()
    worker = ProjectionWorker(projection, store, engine, poll_timeout=0.05)
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        later = app.execute(AddItem(cart_id=CART, sku="s"))
        worker.wait_until(later.positions, timeout=10)
        assert table_rows(engine, CartSummary.carts)[0]["item_count"] == 1
    finally:
        stop.set()
        thread.join(10)
    after = status(projection, store, engine)
    assert (after.lag, after.dead_letters, after.stored_version) == (0, 0, 1)


def test_a_new_version_needs_a_rebuild(engine: sa.Engine) -> None:
    store = open_store("memory://", name="carts")
    cart_app(store).execute(OpenCart(cart_id=CART, customer="a"))
    ProjectionWorker(CartSummary(), store, engine).run(until_caught_up=True)

    class CartSummaryV2(CartSummary):
        version = 2

    with pytest.raises(ProjectionError, match="rebuild it"):
        ProjectionWorker(CartSummaryV2(), store, engine).run(until_caught_up=True)
    ProjectionWorker(CartSummaryV2(), store, engine, rebuild_on_version_change=True).run(
        until_caught_up=True
    )
    assert status(CartSummaryV2(), store, engine).stored_version == 2


def test_dead_letters_hold_the_aggregate_and_redrive_in_order(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(CartSummary, "fail_skus", {"bad"})
    store = open_store("memory://", name="carts")
    app = cart_app(store)
    other = uuid.UUID(int=2)
    app.execute(OpenCart(cart_id=CART, customer="a"))
    app.execute(OpenCart(cart_id=other, customer="b"))
    app.execute(AddItem(cart_id=CART, sku="bad"))
    app.execute(AddItem(cart_id=CART, sku="good"))
    app.execute(AddItem(cart_id=other, sku="good"))
    worker = ProjectionWorker(
        CartSummary(), store, engine, max_attempts=3, retry_initial=0.001, retry_max=0.002
    )
    worker.run(until_caught_up=True)
    letters = dead_letters.list_dead_letters(engine, CartSummary())
    assert [(d.reason, d.version) for d in letters] == [("failed", 2), ("held", 3)]
    assert letters[0].error_type == "builtins.ValueError" and letters[0].attempts == 3
    assert worker.stats.handler_retries == 2
    rows = {r["id"]: r["item_count"] for r in table_rows(engine, CartSummary.carts)}
    assert rows == {CART: 0, other: 1}
    # Still broken: nothing changes, the error is kept.
    assert dead_letters.redrive(engine, CartSummary()).failed
    monkeypatch.setattr(CartSummary, "fail_skus", set())
    result = dead_letters.redrive(engine, CartSummary())
    assert (result.applied, result.failed, result.remaining) == (2, {}, 0)
    rows = {r["id"]: (r["item_count"], r["version"]) for r in table_rows(engine, CartSummary.carts)}
    assert rows == {CART: (2, 3), other: (1, 2)}


def test_settings_fall_back_from_projection_to_global() -> None:
    env = {"DATABASE_URL": "postgres://u@h/db"}
    assert database_url("orders", env) == "postgresql+psycopg://u@h/db"
    env["KEEL_DATABASE_URL"] = "sqlite:///a.db"
    assert database_url("orders", env) == "sqlite:///a.db"
    env["KEEL_PROJECTION_ORDERS_DATABASE_URL"] = "sqlite:///b.db"
    assert database_url("orders", env) == "sqlite:///b.db"
    assert database_url("other", env) == "sqlite:///a.db"
    assert database_url(None, {}) == "sqlite:///var/read_models.db"
    env = {"KEEL_PROJECTION_BATCH_SIZE": "7", "KEEL_PROJECTION_ORDERS_BATCH_SIZE": "9"}
    assert projection_settings("orders", env).batch_size == 9
    assert projection_settings("other", env).batch_size == 7
    assert projection_settings("other", env, batch_size=3).batch_size == 3


def test_worker_settings_that_contradict_each_other_are_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"heartbeat_interval \(2\.0\) must be below"):
        projection_settings("orders", {}, session_timeout=1.5)
    with pytest.raises(ConfigurationError, match="KEEL_PROJECTION_ORDERS_<FIELD>"):
        projection_settings("orders", {"KEEL_PROJECTION_BATCH_SIZE": "none"})


def test_connectivity_errors_are_told_apart_from_handler_errors() -> None:
    refused = sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))
    locked = sa.exc.OperationalError("x", {}, Exception("database is locked"))
    syntax = sa.exc.OperationalError("x", {}, Exception('near "SELEC": syntax error'))
    duplicate = sa.exc.IntegrityError("x", {}, Exception("UNIQUE constraint failed"))
    assert is_connectivity_error(refused) and is_connectivity_error(locked)
    assert not is_connectivity_error(syntax)
    assert not is_connectivity_error(duplicate) and not is_connectivity_error(ValueError("x"))
    wrapped = RuntimeError("handler")
    wrapped.__cause__ = refused
    assert is_connectivity_error(wrapped)
    backoff = Backoff(0.1, 1.0)
    assert [backoff.next() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_raw_events_that_do_not_decode_are_dead_letters(engine: sa.Engine) -> None:
    store = open_store("memory://", name="carts")
    store.append([NewEvent(CART, 1, "Cart.Opened", b"{not json")])
    worker = ProjectionWorker(CartSummary(), store, engine, max_attempts=1)
    worker.run(until_caught_up=True)
    [letter] = dead_letters.list_dead_letters(engine, "cart_summary")
    assert letter.error_type.endswith("EventDecodingError") and "JSON" in letter.error_message
    assert letter.payload == b"{not json" and letter.partition == 0


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_url = f"sqlite:///{tmp_path}/events.db"
    db = f"sqlite:///{tmp_path}/read.db"
    app = cart_app(store_url)
    app.execute(OpenCart(cart_id=CART, customer="cli"))
    app.close()
    common = ["--app", "carts", "--store", store_url, "--database", db]
    target = "tests.projection_domain:CartSummary"
    assert main(["run", target, *common, "--until-caught-up", "--create-tables"]) == 0
    assert main(["status", target, *common]) == 0
    assert "lag 0, 0 dead letters" in capsys.readouterr().out
    assert main(["rebuild", target, *common]) == 0
    assert "rebuilt from 2 events" in capsys.readouterr().out
    assert main(["dead-letters", target, *common, "--redrive"]) == 0


def test_sigterm_stops_the_worker_cleanly(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/events.db"
    db = f"sqlite:///{tmp_path}/read.db"
    app = cart_app(store_url)
    app.execute(OpenCart(cart_id=CART, customer="term"))
    app.close()
    engine = create_engine(db)
    setup_tables(engine, CartSummary())
    command = [
        str(REPO / ".venv" / "bin" / "python"), "-m", "framework.projection", "run",
        "tests.projection_domain:CartSummary", "--app", "carts", "--store", store_url,
        "--database", db,
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_until(CartSummary(), engine, {0: 3}, timeout=30)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert "stopping after this batch" in output and "stopped;" in output


def test_progress_reporting() -> None:
    from framework.rebuild import RebuildProgress, console_progress

    p = RebuildProgress("x", events_done=50, offsets_done=50, offsets_total=200, elapsed=2.0)
    assert (p.rate, p.fraction, p.eta) == (25.0, 0.25, 6.0)
    report = console_progress("x", interval=0)  # not a terminal here: log lines
    report(p)
    report(RebuildProgress("x", 200, 200, 200, 8.0, finished=True))


def test_missing_tables_are_reported_not_retried(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/empty.db")
    store = open_store("memory://", name="carts")
    with pytest.raises(ProjectionError, match="alembic upgrade head"):
        ProjectionWorker(CartSummary(), store, engine).run(until_caught_up=True)


def test_every_read_of_an_unmigrated_database_names_the_missing_tables(tmp_path: Path) -> None:
    from framework.process import status as process_status
    from framework.streaming import stream_status
    from projections.streams import ShopStreams
    from sample_app.payments.process import PaymentProcess

    engine = create_engine(f"sqlite:///{tmp_path}/empty.db")
    store = open_store("memory://", name="carts")
    projection = CartSummary()
    positions = ["keel_projection_positions", "keel_projections", "keel_dead_letters"]
    calls = {
        "status": (lambda: status(projection, store, engine), positions),
        "wait_until": (lambda: wait_until(projection, engine, {0: 1}, timeout=0.1), positions),
        "rebuild": (lambda: ProjectionWorker(projection, store, engine).rebuild(), positions),
        "list": (lambda: dead_letters.list_dead_letters(engine, projection), positions[2:]),
        "count": (lambda: dead_letters.count(engine, projection), positions[2:]),
        "discard": (lambda: dead_letters.discard(engine, projection, [1]), positions[2:]),
        "redrive": (lambda: dead_letters.redrive(engine, projection), positions[2:]),
        "process": (lambda: process_status(PaymentProcess(), engine), ["keel_pm_instances"]),
        "stream": (lambda: stream_status(ShopStreams(), engine), ["shop_streams__stream_time"]),
    }
    for name, (call, missing) in calls.items():
        with pytest.raises(ReadModelNotMigratedError, match="run `alembic upgrade head`") as found:
            call()
        assert set(missing) <= set(found.value.missing), name
        assert isinstance(found.value, ProjectionError)
    assert sa.inspect(engine).get_table_names() == []  # the rebuild made no shadow tables


def test_other_database_errors_are_not_taken_for_missing_tables(engine: sa.Engine) -> None:
    with engine.begin() as conn:  # every table is there, but one lacks a column
        conn.exec_driver_sql("DROP TABLE keel_projection_positions")
        conn.exec_driver_sql("CREATE TABLE keel_projection_positions (projection TEXT)")
    with pytest.raises(sa.exc.OperationalError, match="no such column"):
        status(CartSummary(), open_store("memory://", name="carts"), engine)
