"""T19: a model-based (stateful) test of the write side and the read side together.

Hypothesis drives a real store (the embedded SQLite file store, and Kafka with an in-process
writer member deciding the commands and a second application sending them over the commands
topic) and a real projection worker (read model in a SQLite file) through random sequences of:
commands alone and from concurrent threads on one aggregate, poison events, worker restarts,
a stale applier re-delivering applied events, read-model outages (the file locked) and restarts
of the whole application, a second worker joining and leaving the group (a rebalance). A
plain model follows every command that succeeded.

Checked on every read and, once the worker has caught up, at the end of every example:
- each aggregate's stream has contiguous versions and equals the model's (no lost or
  duplicated write; a failed command wrote nothing) and a loaded aggregate equals the model;
- the read model equals the fold of the log: every applied event once, every cart row as the
  model folds it up to its first poison event;
- the dead letters are exactly the injected poison and the later events of the same cart that
  it holds back (sequenced dead letters).

``KEEL_T19_EXAMPLES`` sets the examples per backend (default 20 on SQLite, 5 on Kafka; a
nightly run: 200) and ``KEEL_T19_STEPS`` the most steps per example (default 12; nightly: 50).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from framework.application import Application
from framework.applier import Applier
from framework.database import create_engine
from framework.dead_letters import list_dead_letters
from framework.errors import ConflictRetriesExhaustedError
from framework.positions import read_positions
from framework.worker import ProjectionWorker, setup_tables
from framework.writer import WriterMember
from tests.projection_domain import AddItem, Cart, CartSummary, CheckOut, OpenCart, cart_app

EXAMPLES = {"sqlite": 20, "kafka": 5}
if os.environ.get("KEEL_T19_EXAMPLES"):
    EXAMPLES = dict.fromkeys(EXAMPLES, int(os.environ["KEEL_T19_EXAMPLES"]))
STEPS = int(os.environ.get("KEEL_T19_STEPS", "12"))
POISON = "poison"  # CartSummary refuses an ItemAdded of this sku: the event becomes a dead letter
SKUS = ["a", "b", "c"]
PRICE = Decimal("1.50")
FIGURES: Counter[str] = Counter()


@dataclass
class CartModel:
    """What the successful commands did to one cart."""

    customer: str
    events: list[tuple[str, str, int]] = field(default_factory=lambda: [("Cart.Opened", "", 0)])
    """(topic, sku, quantity) per version (sku and quantity only for ItemAdded)."""

    @property
    def version(self) -> int:
        return len(self.events)

    @property
    def status(self) -> str:
        return "checked_out" if any(t == "Cart.CheckedOut" for t, _, _ in self.events) else "open"

    def first_poison(self) -> int | None:
        """The version of the first poison event (it and every later one are parked)."""
        for version, (_, sku, _) in enumerate(self.events, start=1):
            if sku == POISON:
                return version
        return None

    def projected(self) -> dict[str, Any]:
        """The cart's read-model row: the fold of its events before the first poison."""
        upto = (self.first_poison() or self.version + 1) - 1
        status, count, total = "open", 0, Decimal(0)
        for topic, _, quantity in self.events[:upto]:
            if topic == "Cart.ItemAdded":
                count, total = count + quantity, total + PRICE * quantity
            elif topic == "Cart.CheckedOut":
                status = "checked_out"
        return {
            "customer": self.customer,
            "status": status,
            "item_count": count,
            "total": total,
            "version": upto,
        }

    def lines(self) -> dict[str, int]:
        upto = (self.first_poison() or self.version + 1) - 1
        found: Counter[str] = Counter()
        for topic, sku, quantity in self.events[:upto]:
            if topic == "Cart.ItemAdded":
                found[sku] += quantity
        return dict(found)


class Backend:
    """Opens the system under test: an application that decides commands (and one that sends
    them, on Kafka) over a store; closes it all."""

    name: str

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def fresh(self) -> None:
        """A new, empty store for the next example."""
        raise NotImplementedError

    def open(self) -> tuple[Application, Application, Callable[[], None]]:
        raise NotImplementedError


class SQLiteBackend(Backend):
    name = "sqlite"

    def fresh(self) -> None:
        self.url = f"sqlite:///{self.tmp}/events-{uuid.uuid4().hex[:8]}.db"

    def open(self) -> tuple[Application, Application, Callable[[], None]]:
        app = cart_app(self.url, name="carts")
        # A second application on the same file: another process writing the same store.
        other = cart_app(self.url, name="carts")
        return app, other, lambda: (other.close(), app.close())  # type: ignore[func-returns-value]


class KafkaBackend(Backend):
    name = "kafka"

    def __init__(self, tmp: Path, bootstrap: str) -> None:
        super().__init__(tmp)
        self.bootstrap = bootstrap

    def fresh(self) -> None:
        self.name_ = f"t19_{uuid.uuid4().hex[:10]}"
        self.url = f"kafka://{self.bootstrap}?partitions=3&command_timeout=30"

    def open(self) -> tuple[Application, Application, Callable[[], None]]:
        with ExitStack() as stack:
            app = cart_app(self.url, name=self.name_)
            stack.callback(app.close)
            member = WriterMember(app).start()
            stack.callback(member.close)
            member.wait_owning()
            sender = cart_app(self.url, name=self.name_)  # sends over the commands topic
            stack.callback(sender.close)
            close = stack.pop_all().close
        return app, sender, close


class Machine(RuleBasedStateMachine):
    backend: Backend
    carts = Bundle("carts")

    def __init__(self) -> None:
        super().__init__()
        CartSummary.fail_skus = {POISON}
        self.model: dict[uuid.UUID, CartModel] = {}
        self.app_restarts = self.worker_restarts = self.rebalances = 0
        self.backend.fresh()
        self.app, self.other, self._close_apps = self.backend.open()
        self.db = self.backend.tmp / f"rm-{uuid.uuid4().hex[:8]}.db"
        self.engine = create_engine(f"sqlite:///{self.db}")
        setup_tables(self.engine, CartSummary())
        self.group = f"t19-{uuid.uuid4().hex[:10]}"
        self.worker: ProjectionWorker | None = None
        self.worker_thread: threading.Thread | None = None
        self.start_worker()
        FIGURES["examples"] += 1

    # -- the system ------------------------------------------------------------------------

    def start_worker(self) -> None:
        worker = self.new_worker()
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        self.worker, self.worker_thread = worker, thread

    def new_worker(self) -> ProjectionWorker:
        return ProjectionWorker(
            CartSummary(),
            self.app.store,
            self.engine,
            group=self.group,
            batch_size=7,
            poll_timeout=0.1,
            max_attempts=2,
            retry_initial=0.01,
            retry_max=0.02,
            outage_initial=0.05,
            outage_max=0.2,
        )

    def stop_worker(self) -> None:
        if self.worker is not None and self.worker_thread is not None:
            self.worker.stop()
            self.worker_thread.join(60)
            assert not self.worker_thread.is_alive(), "the worker did not stop"
        self.worker = self.worker_thread = None

    def execute(self, command: Any, app: Application | None = None) -> bool:
        """Run ``command``; True when it succeeded (the model then records it)."""
        FIGURES["commands"] += 1
        try:
            (app or self.app).execute(command)
        except ConflictRetriesExhaustedError:
            FIGURES["exhausted"] += 1
            return False
        return True

    # -- rules -----------------------------------------------------------------------------

    @initialize(target=carts)
    def first_cart(self) -> uuid.UUID:
        return self.open_cart(via_other=False)

    @rule(target=carts, via_other=st.booleans())
    def open_cart(self, via_other: bool) -> uuid.UUID:
        cart = uuid.uuid4()
        customer = f"c{len(self.model)}"
        app = self.other if via_other else self.app
        assert self.execute(OpenCart(cart_id=cart, customer=customer), app)
        self.model[cart] = CartModel(customer)
        return cart

    @rule(
        cart=carts,
        sku=st.sampled_from(SKUS),
        quantity=st.integers(1, 3),
        via_other=st.booleans(),
    )
    def add_item(self, cart: uuid.UUID, sku: str, quantity: int, via_other: bool) -> None:
        command = AddItem(cart_id=cart, sku=sku, quantity=quantity, price=PRICE)
        if self.execute(command, self.other if via_other else self.app):
            self.model[cart].events.append(("Cart.ItemAdded", sku, quantity))

    @rule(cart=carts)
    def add_poison(self, cart: uuid.UUID) -> None:
        """An event the projection cannot apply: it and the cart's later events are parked."""
        if self.execute(AddItem(cart_id=cart, sku=POISON, quantity=1, price=PRICE)):
            self.model[cart].events.append(("Cart.ItemAdded", POISON, 1))
            FIGURES["poison"] += 1

    @rule(cart=carts)
    def check_out(self, cart: uuid.UUID) -> None:
        if self.execute(CheckOut(cart_id=cart)):
            self.model[cart].events.append(("Cart.CheckedOut", "", 0))

    @rule(cart=carts, writers=st.integers(2, 6), each=st.integers(1, 3))
    def concurrent_adds(self, cart: uuid.UUID, writers: int, each: int) -> None:
        """Several threads (of both applications) add to one cart at once."""
        done: list[tuple[str, int]] = []
        lock = threading.Lock()

        def add(me: int) -> None:
            for i in range(each):
                sku, quantity = SKUS[(me + i) % 3], 1 + (me + i) % 3
                command = AddItem(cart_id=cart, sku=sku, quantity=quantity, price=PRICE)
                if self.execute(command, self.other if me % 2 else self.app):
                    with lock:
                        done.append((sku, quantity))

        threads = [threading.Thread(target=add, args=(me,)) for me in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        # Concurrent commits land in some order: the log decides it, the model takes it.
        topics = [(e.topic, e.version) for e in self.app.store.read(cart)]
        added = self._read_added(cart, len(self.model[cart].events))
        assert len(added) == len(done) and Counter(added) == Counter(done), (topics, done)
        self.model[cart].events.extend(("Cart.ItemAdded", s, q) for s, q in added)

    def _read_added(self, cart: uuid.UUID, after: int) -> list[tuple[str, int]]:
        history = self.app.history(cart)[after:]
        return [(h.event.sku, h.event.quantity) for h in history]  # type: ignore[attr-defined]

    @rule(cart=carts)
    def read(self, cart: uuid.UUID) -> None:
        """A read of the log and a load of the aggregate agree with the model."""
        self.check_stream(cart)

    @precondition(lambda self: self.worker_restarts < 3)  # on Kafka: a group rejoin each
    @rule()
    def restart_worker(self) -> None:
        FIGURES["worker_restarts"] += 1
        self.worker_restarts += 1
        self.stop_worker()
        self.start_worker()

    @precondition(lambda self: self.app_restarts < 2)  # costly on Kafka: a writer rejoins
    @rule()
    def restart_application(self) -> None:
        """Every client is closed and opened again (on Kafka: new index, new writer member)."""
        FIGURES["app_restarts"] += 1
        self.app_restarts += 1
        self.stop_worker()
        self._close_apps()
        self.app, self.other, self._close_apps = self.backend.open()
        self.start_worker()

    @precondition(lambda self: self.rebalances < 1)  # on Kafka: two rebalances each
    @rule(cart=carts, adds=st.integers(1, 4))
    def rebalance(self, cart: uuid.UUID, adds: int) -> None:
        """A second worker joins the group while commands run, then leaves: partitions move
        to it and back (on the embedded store both read the one partition; the positions
        guard keeps either from applying an event twice)."""
        FIGURES["rebalances"] += 1
        self.rebalances += 1
        second = self.new_worker()
        thread = threading.Thread(target=second.run, daemon=True)
        thread.start()
        try:
            for i in range(adds):
                sku = SKUS[i % len(SKUS)]
                if self.execute(AddItem(cart_id=cart, sku=sku, quantity=1, price=PRICE)):
                    self.model[cart].events.append(("Cart.ItemAdded", sku, 1))
                time.sleep(0.2)
        finally:
            second.stop()
            thread.join(60)
        assert not thread.is_alive(), "the second worker did not stop"

    @rule(seconds=st.sampled_from([0.2, 0.6, 1.2]))
    def read_model_outage(self, seconds: float) -> None:
        """The read-model file is locked (no reads, no writes) for a while."""
        FIGURES["db_outages"] += 1
        locker = sqlite3.connect(self.db, timeout=10, isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            time.sleep(seconds)
            locker.execute("ROLLBACK")
        finally:
            locker.close()

    @rule()
    def stale_redelivery(self) -> None:
        """A stale applier (it loaded the positions before the worker moved on) delivers the
        log again from those positions: the positions guard must refuse every event."""
        FIGURES["redeliveries"] += 1
        assert self.worker is not None
        stale = Applier(CartSummary(), self.engine, self.worker.settings)
        partitions = list(range(self.app.store.partitions))
        stale.load(partitions)
        self.app.execute(OpenCart(cart_id=(cart := uuid.uuid4()), customer="late"))
        self.model[cart] = CartModel("late")
        self.wait_caught_up()
        for p in partitions:
            events = self.app.store.read_partition(p, start=stale.next_offset(p), limit=1000)
            if events:
                FIGURES["redelivered"] += len(events)
                stale.apply_partition(p, events)

    # -- checks ----------------------------------------------------------------------------

    def check_stream(self, cart: uuid.UUID) -> None:
        model = self.model[cart]
        events = self.app.store.read(cart)
        assert [e.version for e in events] == list(range(1, len(events) + 1)), "gap or dup"
        assert [e.topic for e in events] == [t for t, _, _ in model.events], cart
        loaded = self.app.load(Cart, cart)
        assert (loaded.version, loaded.status) == (model.version, model.status)

    def wait_caught_up(self, timeout: float = 60.0) -> None:
        """Until the worker's stored positions pass every event in the log now (on Kafka the
        head may sit one past a commit marker, which no event occupies)."""
        store = self.app.store
        head = store.head()
        deadline = time.monotonic() + timeout
        while True:
            with self.engine.connect() as conn:
                stored = read_positions(conn, CartSummary().key, list(head))
            behind = [
                p
                for p, end in head.items()
                if (stored.get(p) or 0) < end
                and any(
                    e.offset < end
                    for e in store.read_partition(p, start=stored.get(p) or 0, limit=1)
                )
            ]
            if not behind:
                return
            assert time.monotonic() < deadline, f"not caught up: {stored} < {head}"
            time.sleep(0.05)

    def check_read_model(self) -> None:
        self.wait_caught_up()
        p = CartSummary()
        with self.engine.connect() as conn:
            rows = {
                r.id: {k: getattr(r, k) for k in ("customer", "status", "item_count", "total")}
                | {"version": r.version}
                for r in conn.execute(sa.select(p.carts))
            }
            lines: dict[uuid.UUID, dict[str, int]] = {}
            for r in conn.execute(sa.select(p.lines)):
                lines.setdefault(r.cart_id, {})[r.sku] = r.quantity
            applied = {(a, v): n for a, v, n in conn.execute(sa.select(p.event_log))}
        expected_rows = {c: m.projected() for c, m in self.model.items()}
        assert rows == expected_rows
        assert lines == {c: m.lines() for c, m in self.model.items() if m.lines()}
        expected_applied = {
            (c, v): 1 for c, m in self.model.items() for v in range(1, m.projected()["version"] + 1)
        }
        assert applied == expected_applied, "an event applied twice, or missing"
        parked = {(uuid.UUID(d.aggregate_id), d.version) for d in list_dead_letters(self.engine, p)}
        expected_parked = {
            (c, v)
            for c, m in self.model.items()
            if (first := m.first_poison()) is not None
            for v in range(first, m.version + 1)
        }
        assert parked == expected_parked, "dead letters are not exactly the poison it holds back"
        FIGURES["dead_letters"] += len(parked)

    def teardown(self) -> None:
        try:
            for cart in self.model:
                self.check_stream(cart)
            self.check_read_model()
            FIGURES["checked"] += 1
        finally:
            self.stop_worker()
            self._close_apps()
            self.engine.dispose()
            CartSummary.fail_skus = set()


def run_machine(backend: Backend) -> None:
    machine = type(f"T19{backend.name.title()}", (Machine,), {"backend": backend})
    FIGURES.clear()
    started = time.monotonic()
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES[backend.name],
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        ),
    )
    keys = (
        "examples",
        "checked",
        "commands",
        "exhausted",
        "poison",
        "dead_letters",
        "worker_restarts",
        "app_restarts",
        "db_outages",
        "redeliveries",
        "redelivered",
        "rebalances",
    )
    print(
        f"\nT19[{backend.name}]: "
        + " ".join(f"{k}={FIGURES[k]}" for k in keys)
        + f" steps<={STEPS} failing=0 seconds={time.monotonic() - started:.0f}"
    )
    assert FIGURES["checked"] == FIGURES["examples"] > 0


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


@pytest.mark.timeout(600)
def test_model_based_sqlite(tmp: Path) -> None:
    run_machine(SQLiteBackend(tmp))


@pytest.mark.kafka
@pytest.mark.timeout(900)
def test_model_based_kafka(tmp: Path, kafka_bootstrap: str) -> None:
    run_machine(KafkaBackend(tmp, kafka_bootstrap))
