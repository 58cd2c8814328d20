"""The payment process end to end on the embedded SQLite stores: the shop and the payments
service each with a store of its own, the process manager's facts and outbox in a read-model
database, a fake clock for the deadline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa

from framework import dead_letters
from framework.database import create_engine
from framework.errors import ConfigurationError
from framework.process import Context, FakeClock, ProcessWorker, reacts, status
from framework.process.store import facts_table, outbox_table, timeline
from framework.worker import ProjectionWorker, setup_tables
from projections.payments import PaymentOrdersProjection, PaymentsProjection
from sample_app.payments import application as payments_app
from sample_app.payments.commands import ReceivePayment
from sample_app.payments.domain import payment_id_for
from sample_app.payments.process import PaymentProcess
from sample_app.shop import application as shop_app
from sample_app.shop.commands import CancelOrder, ConfirmOrder, PlaceOrder, RegisterCustomer
from sample_app.shop.domain import Address, Order, OrderLine, OrderStatus

BERLIN = Address(street="Unter den Linden 1", city="Berlin", country="DE")
TEA = OrderLine(product="Tea", quantity=2, unit_price=Decimal("3.50"))


class Services:
    def __init__(self, root: Path) -> None:
        self.shop = shop_app.build(f"sqlite:///{root / 'shop.db'}")
        self.payments = payments_app.build(f"sqlite:///{root / 'payments.db'}")
        self.engine = create_engine(f"sqlite:///{root / 'read.db'}")
        self.clock = FakeClock()
        self.worker = ProcessWorker(
            PaymentProcess(window=timedelta(minutes=30)),
            sources=[self.shop.store, self.payments.store],
            targets=[self.shop, self.payments],
            engine=self.engine,
            clock=self.clock,
        )
        self.worker.setup()
        self.customer = uuid4()
        self.shop.execute(
            RegisterCustomer(
                customer_id=self.customer, name="Ada", email="ada@example.com", address=BERLIN
            )
        )

    def confirmed_order(self) -> UUID:
        order_id = uuid4()
        self.shop.execute(PlaceOrder(order_id=order_id, customer_id=self.customer, lines=[TEA]))
        self.shop.execute(ConfirmOrder(order_id=order_id))
        return order_id

    def settle(self) -> None:
        """Inputs to the head, then deadlines and relay, until nothing moves."""
        for _ in range(10):
            for w in self.worker.workers:
                w.run(until_caught_up=True)
            if not self.worker.step():
                return

    def order_status(self, order_id: UUID) -> OrderStatus:
        return self.shop.load(shop_app.Order, order_id).status  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    s = Services(tmp_path)
    yield s
    s.engine.dispose()


def test_paid_orders_ship_and_unpaid_ones_are_cancelled(services: Services) -> None:
    s = services
    paid, unpaid = s.confirmed_order(), s.confirmed_order()
    s.settle()
    s.payments.execute(ReceivePayment(payment_id=payment_id_for(paid), reference="psp-1"))
    s.settle()
    assert s.order_status(paid) is OrderStatus.SHIPPED
    assert s.order_status(unpaid) is OrderStatus.CONFIRMED
    before = status(s.worker.pm, s.engine, s.clock)
    assert (before.active, before.completed, before.overdue) == (1, 1, [])
    s.clock.advance(minutes=31)
    overdue = status(s.worker.pm, s.engine, s.clock)
    assert [o[:2] for o in overdue.overdue] == [(str(unpaid), "payment_due")]  # visible
    s.settle()
    assert s.order_status(unpaid) is OrderStatus.CANCELLED
    after = status(s.worker.pm, s.engine, s.clock)
    assert (after.active, after.completed, after.overdue, after.outbox_pending) == (0, 2, [], 0)
    # The shop's Order.Cancelled (caused by the manager itself) reached a completed instance.
    assert after.counters.get("after_completion") == 1
    with s.engine.connect() as conn:
        kinds = [f["kind"] for f in timeline(conn, "payment_process", str(unpaid))]
    assert kinds == [
        "Triggered",
        "CommandIssued",
        "DeadlineScheduled",
        "DeadlineReached",
        "CommandIssued",  # VoidPayment
        "Triggered",  # OrderPayment.Voided
        "CommandIssued",  # CancelOrder
        "Completed",
    ]
    payment = s.payments.load(payments_app.OrderPayment, payment_id_for(unpaid))  # type: ignore[attr-defined]
    assert payment.status.value == "voided"


def test_resending_the_whole_outbox_changes_nothing(services: Services) -> None:
    s = services
    orders = [s.confirmed_order() for _ in range(3)]
    s.settle()
    s.payments.execute(ReceivePayment(payment_id=payment_id_for(orders[0])))
    s.settle()
    shop_head, payments_head = dict(s.shop.store.head()), dict(s.payments.store.head())
    with s.engine.begin() as conn:  # as if the relay crashed after sending, before marking
        sent = conn.execute(outbox_table.update().values(sent_at=None, outcome=None)).rowcount
    assert sent == 4  # 3 RequestPayment + 1 ShipOrder
    assert s.worker.step() == 4
    assert dict(s.shop.store.head()) == shop_head  # every command replayed, nothing new
    assert dict(s.payments.store.head()) == payments_head


def test_redelivered_inputs_are_not_applied_twice(services: Services) -> None:
    s = services
    s.confirmed_order()
    s.settle()
    with s.engine.connect() as conn:
        facts = conn.execute(sa.select(sa.func.count()).select_from(facts_table)).scalar()
    # A second input worker of the same manager with no positions of its own would be a new
    # deployment; the same worker re-reading from 0 is a redelivery: the facts say "seen".
    for i, w in zip(s.worker.inputs, s.worker.workers, strict=True):
        from framework.positions import positions_table

        with s.engine.begin() as conn:
            conn.execute(positions_table.delete().where(positions_table.c.projection == i.key))
        w.applier.forget(set(w.applier.positions))
        w.run(until_caught_up=True)
    with s.engine.connect() as conn:
        again = conn.execute(sa.select(sa.func.count()).select_from(facts_table)).scalar()
        pending = conn.execute(
            sa.select(sa.func.count()).where(outbox_table.c.sent_at.is_(None))
        ).scalar()
    assert (again, pending) == (facts, 0)
    assert status(s.worker.pm, s.engine, s.clock).counters["duplicate"] >= 1


def test_rebuilding_never_reruns_a_process_manager(services: Services) -> None:
    s = services
    s.confirmed_order()
    s.settle()
    with pytest.raises(ConfigurationError, match="never rebuilt"):
        s.worker.workers[0].rebuild()
    # Rebuilding the service's projections issues nothing either.
    setup_tables(s.engine, PaymentsProjection(), PaymentOrdersProjection())
    ProjectionWorker(PaymentOrdersProjection(), s.shop.store, s.engine).rebuild(
        progress=lambda *_: None
    )
    with s.engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(outbox_table)).scalar()
    assert rows == 1


def test_start_from_now_skips_history(tmp_path: Path) -> None:
    s = Services(tmp_path)
    old = s.confirmed_order()
    late = ProcessWorker(
        PaymentProcess(),
        sources=[s.shop.store, s.payments.store],
        targets=[s.shop, s.payments],
        engine=s.engine,
        clock=s.clock,
        start_from="now",
    )
    from framework.process.runner import start_at_head

    assert start_at_head(late.inputs[0], s.shop.store, s.engine) is True
    assert start_at_head(late.inputs[0], s.shop.store, s.engine) is False  # has positions now
    new = s.confirmed_order()
    for w in late.workers:
        w.run(until_caught_up=True)
    with s.engine.connect() as conn:
        started = {r[0] for r in conn.execute(sa.select(facts_table.c.instance_id).distinct())}
    assert started == {str(new)} and str(old) not in started
    s.engine.dispose()


def test_a_relay_without_the_target_says_which_application_is_missing(services: Services) -> None:
    s = services
    s.confirmed_order()
    for w in s.worker.workers:
        w.run(until_caught_up=True)
    from framework.process import Relay

    with pytest.raises(ConfigurationError, match="RequestPayment command"):
        Relay(s.engine, [s.shop]).send_pending()
    with pytest.raises(ConfigurationError, match="handled by both"):
        Relay(s.engine, [s.shop, s.shop.using("memory://")])


def test_the_command_line_status_and_timeline(
    services: Services,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from framework.process.cli import main

    s = services
    order = s.confirmed_order()
    s.settle()
    monkeypatch.setenv("KEEL_SHOP_EVENT_STORE", f"sqlite:///{tmp_path / 'shop.db'}")
    monkeypatch.setenv("KEEL_PAYMENTS_EVENT_STORE", f"sqlite:///{tmp_path / 'payments.db'}")
    monkeypatch.setenv(
        "KEEL_PROJECTION_PAYMENT_PROCESS_DATABASE_URL", f"sqlite:///{tmp_path / 'read.db'}"
    )
    target = "sample_app.payments.service:payment_process_worker"
    # The services' fake clock stands in 2026-01-01: by the wall clock the CLI reads, the
    # deadline is long overdue, so status says so and exits 1.
    assert main(["status", target, "--json"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert [o[:2] for o in found["overdue"]] == [[str(order), "payment_due"]]
    assert (found["active"], found["oldest_open"][0], found["outbox_pending"]) == (1, str(order), 0)
    assert main(["timeline", target, str(order)]) == 0
    assert "DeadlineScheduled" in capsys.readouterr().out
    assert main(["timeline", target, "nope"]) == 1
    assert main(["status", "sample_app.payments.service"]) == 2
    assert "package.module:factory" in capsys.readouterr().err
    assert main(["status", "sample_app.nowhere:worker"]) == 2
    assert "no module 'sample_app.nowhere'" in capsys.readouterr().err
    assert main(["status", "sample_app.payments.service:PaymentProcess"]) == 2
    assert "not a ProcessWorker" in capsys.readouterr().err


class Fragile(PaymentProcess):
    """Fails on every confirmed order whose total is 7.00."""

    name = "fragile_process"
    max_attempts = 2
    retry_initial = 0.0

    @reacts(Order.Confirmed)
    def confirmed(self, state: Any, event: Any, ctx: Context) -> Any:
        raise RuntimeError("the payment provider is misconfigured")


class Skipping(Fragile):
    name = "skipping_process"
    on_error = "skip"


@pytest.mark.parametrize("pm_class", [Fragile, Skipping])
def test_error_policies_park_or_skip(services: Services, pm_class: type[Fragile]) -> None:
    s = services
    worker = ProcessWorker(
        pm_class(),
        sources=[s.shop.store],
        targets=[s.shop, s.payments],
        engine=s.engine,
        clock=s.clock,
    )
    order = s.confirmed_order()
    worker.workers[0].run(until_caught_up=True)
    found = status(worker.pm, s.engine, s.clock)
    with s.engine.connect() as conn:
        kinds = [f["kind"] for f in timeline(conn, worker.pm.name, str(order))]
    if pm_class is Fragile:  # retried, then parked with the projections' dead letters
        assert (found.dead_letters, kinds, found.counters) == (1, [], {"input_parked": 1})
        listed = dead_letters.list_dead_letters(s.engine, worker.inputs[0])
        assert "misconfigured" in listed[0].error_message
    else:
        assert (found.dead_letters, kinds, found.counters) == (0, ["Failed"], {"skipped_errors": 1})


class Strict(PaymentProcess):
    name = "strict_process"
    on_unknown = "dead_letter"


def test_an_input_for_an_unknown_instance_is_parked_at_once(services: Services) -> None:
    s = services
    worker = ProcessWorker(
        Strict(),
        sources=[s.shop.store],
        targets=[s.shop, s.payments],
        engine=s.engine,
        clock=s.clock,
    )
    order = uuid4()
    s.shop.execute(PlaceOrder(order_id=order, customer_id=s.customer, lines=[TEA]))
    s.shop.execute(CancelOrder(order_id=order))  # never confirmed: no instance
    worker.workers[0].run(until_caught_up=True)
    assert worker.workers[0].stats.handler_retries == 0  # retrying cannot help
    [parked] = dead_letters.list_dead_letters(s.engine, worker.inputs[0])
    assert parked.error_type.endswith("UnknownInstanceError") and str(order) in parked.error_message


def test_a_stale_instance_cannot_be_moved(services: Services) -> None:
    from framework.errors import ProcessConflictError
    from framework.process.store import load_instance, record

    s = services
    order = s.confirmed_order()
    s.settle()
    pm = s.worker.pm
    with s.engine.begin() as conn:
        stale = load_instance(conn, pm, str(order))
    with s.engine.begin() as conn:  # another worker moves it first
        fresh = load_instance(conn, pm, str(order))
        record(conn, fresh, pm.reach(fresh, "payment_due", s.clock.now()))
    with (
        pytest.raises(ProcessConflictError, match="no longer at version 3"),
        s.engine.begin() as conn,
    ):
        record(conn, stale, pm.reach(stale, "payment_due", s.clock.now()))
    with s.engine.connect() as conn:
        kinds = [f["kind"] for f in timeline(conn, pm.name, str(order))]
    assert kinds.count("DeadlineReached") == 1


class Stopping(Fragile):
    name = "stopping_process"
    on_error = "stop"


def test_on_error_stop_stops_the_worker_and_keeps_the_input(services: Services) -> None:
    import threading

    s = services
    worker = ProcessWorker(
        Stopping(),
        sources=[s.shop.store],
        targets=[s.shop, s.payments],
        engine=s.engine,
        clock=s.clock,
        tick=0.05,
    )
    order = s.confirmed_order()
    stop = threading.Event()
    runner = threading.Thread(target=worker.run, args=(stop,))
    runner.start()
    runner.join(30)
    assert not runner.is_alive() and stop.is_set()
    found = status(worker.pm, s.engine, s.clock)
    with s.engine.connect() as conn:
        assert timeline(conn, worker.pm.name, str(order)) == []
    assert (found.dead_letters, found.active) == (0, 0)  # applied again after a restart
