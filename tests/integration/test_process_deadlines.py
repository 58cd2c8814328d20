"""A deadline handler that fails: retried with backoff, then parked in the dead letters (or
skipped, or the worker stopped, as ``on_error`` says), listed in the status, and re-driven so
that it fires exactly once; and the process managers' metrics. The shop and payments services
run on embedded SQLite stores; the process manager's facts, deadlines, outbox and dead letters
live in SQLite and in a real PostgreSQL (a schema of the test's own)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa

from framework import dead_letters
from framework.database import create_engine
from framework.errors import ProcessError
from framework.process import (
    Context,
    FakeClock,
    ProcessWorker,
    deadline,
    parked_deadlines,
    reacts,
    status,
)
from framework.process.store import deadlines_table, outbox_table, timeline
from sample_app.payments import application as payments_app
from sample_app.payments.commands import ReceivePayment
from sample_app.payments.domain import payment_id_for
from sample_app.payments.process import PaymentProcess, PaymentState
from sample_app.shop import application as shop_app
from sample_app.shop.commands import ConfirmOrder, PlaceOrder, RegisterCustomer
from sample_app.shop.domain import Address, Order, OrderLine, OrderStatus

BERLIN = Address(street="Unter den Linden 1", city="Berlin", country="DE")
TEA = OrderLine(product="Tea", quantity=2, unit_price=Decimal("3.50"))


class Flaky(PaymentProcess):
    """The payment process, with a deadline handler that fails while ``broken`` is set (a
    payment provider out of reach, say)."""

    name = "flaky_payment_process"
    max_attempts = 3
    retry_initial = 0.0

    def __init__(self) -> None:
        super().__init__(window=timedelta(minutes=30))
        self.broken = True
        self.calls = 0

    @deadline("payment_due")
    def overdue(self, state: PaymentState, ctx: Context) -> PaymentState:
        self.calls += 1
        if self.broken:
            raise RuntimeError("the payment provider is out of reach")
        return super().overdue(state, ctx)


class Skipping(Flaky):
    name = "skipping_payment_process"
    on_error = "skip"


class Stopping(Flaky):
    name = "stopping_payment_process"
    on_error = "stop"


class Hopeless(Exception):
    retryable = False


class Doomed(Flaky):
    """Fails with an error that says retrying cannot help."""

    name = "doomed_payment_process"

    @deadline("payment_due")
    def overdue(self, state: PaymentState, ctx: Context) -> PaymentState:
        self.calls += 1
        raise Hopeless("the order's payment method is gone")


class Rescheduling(Flaky):
    """Moves the deadline when the order is confirmed again (never in the sample; here to show
    a parked deadline that was moved since is not fired by a re-drive)."""

    name = "rescheduling_payment_process"

    @reacts(Order.Cancelled)
    def cancelled(self, state: PaymentState, event: Any, ctx: Context) -> PaymentState:
        ctx.schedule("payment_due", after=timedelta(minutes=5))
        return state.evolve(stage="extended")


@pytest.fixture(params=["sqlite", "postgresql"])
def read_url(
    request: pytest.FixtureRequest, tmp_path: Path, unique_name: Callable[[str], str]
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'read.db'}"
        return
    base = request.getfixturevalue("postgres_url")
    admin = create_engine(base)
    schema = unique_name("pmdl").replace("-", "_")
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()


class Services:
    def __init__(self, root: Path, read_url: str, pm: Flaky) -> None:
        self.shop = shop_app.build(f"sqlite:///{root / 'shop.db'}")
        self.payments = payments_app.build(f"sqlite:///{root / 'payments.db'}")
        self.engine = create_engine(read_url)
        self.read_url = read_url
        self.clock = FakeClock()
        self.pm = pm
        self.worker = self.new_worker()
        self.worker.setup()
        self.customer = uuid4()
        self.shop.execute(
            RegisterCustomer(
                customer_id=self.customer, name="Ada", email="ada@example.com", address=BERLIN
            )
        )

    def new_worker(self, **options: Any) -> ProcessWorker:
        return ProcessWorker(
            self.pm,
            sources=[self.shop.store, self.payments.store],
            targets=[self.shop, self.payments],
            engine=self.engine,
            clock=self.clock,
            poll_timeout=0.02,  # an idle embedded feed: do not wait long for more
            **options,
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

    def kinds(self, order: UUID) -> list[str]:
        with self.engine.connect() as conn:
            return [f["kind"] for f in timeline(conn, self.pm.name, str(order))]

    def sent(self, command_type: str) -> int:
        t = outbox_table
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(
                        t.c.pm == self.pm.name, t.c.command_type == command_type
                    )
                ).scalar_one()
            )

    def order_status(self, order_id: UUID) -> OrderStatus:
        return self.shop.load(shop_app.Order, order_id).status  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def make(tmp_path: Path, read_url: str) -> Iterator[Callable[[Flaky], Services]]:
    made: list[Services] = []

    def build(pm: Flaky) -> Services:
        made.append(Services(tmp_path, read_url, pm))
        return made[-1]

    yield build
    for s in made:
        s.engine.dispose()


def parked_order(s: Services) -> UUID:
    """An order whose payment deadline fell due and failed every attempt."""
    order = s.confirmed_order()
    s.settle()
    s.clock.advance(minutes=31)
    s.settle()
    return order


def test_a_failing_deadline_is_retried_then_parked_not_overdue(
    make: Callable[[Flaky], Services],
) -> None:
    s = make(Flaky())
    order = parked_order(s)
    assert s.pm.calls == 3  # max_attempts
    found = status(s.pm, s.engine, s.clock)
    assert found.overdue == []  # no longer "overdue and silently failing"
    [parked] = found.parked
    assert (parked.instance_id, parked.name, parked.attempts) == (str(order), "payment_due", 3)
    assert parked.error_type == "builtins.RuntimeError"
    assert "out of reach" in parked.error_message
    assert (found.dead_letters, found.active, found.counters["deadline_parked"]) == (1, 1, 1)
    assert any("PARKED" in line and str(order) in line for line in found.lines())
    [letter] = dead_letters.list_dead_letters(s.engine, s.pm.name)
    assert (letter.event_type, letter.aggregate_id) == ("deadline:payment_due", str(order))
    assert s.kinds(order)[-1] == "DeadlineParked"
    # Not fired again: more rounds (and a later clock) leave it parked.
    s.clock.advance(hours=5)
    s.settle()
    assert s.pm.calls == 3 and s.kinds(order)[-1] == "DeadlineParked"
    with s.engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(deadlines_table)).scalar()
    assert rows == 0
    assert s.order_status(order) is OrderStatus.CONFIRMED


def test_a_redrive_after_the_fix_fires_the_deadline_once(
    make: Callable[[Flaky], Services],
) -> None:
    s = make(Flaky())
    order = parked_order(s)
    s.pm.broken = False
    # A restarted worker (a new process) finds the parked deadline where it was left.
    s.worker = s.new_worker()
    done = s.worker.redrive()
    assert (done.applied, done.failed, done.remaining) == (1, {}, 0)
    assert s.pm.calls == 4
    s.settle()
    assert s.order_status(order) is OrderStatus.CANCELLED
    assert s.worker.redrive().applied == 0  # nothing left to fire
    kinds = s.kinds(order)
    assert (kinds.count("DeadlineParked"), kinds.count("DeadlineReached")) == (1, 1)
    assert (s.sent("VoidPayment"), s.sent("CancelOrder")) == (1, 1)
    after = status(s.pm, s.engine, s.clock)
    assert (after.parked, after.dead_letters, after.active, after.completed) == ([], 0, 0, 1)


def test_a_redrive_that_fails_again_keeps_the_dead_letter(
    make: Callable[[Flaky], Services],
) -> None:
    s = make(Flaky())
    order = parked_order(s)
    done = s.worker.redrive()
    assert (done.applied, done.remaining) == (0, 1)
    assert "out of reach" in done.failed[str(order)]
    [parked] = parked_deadlines(s.pm, s.engine)
    assert parked.attempts == 4
    assert s.kinds(order).count("DeadlineReached") == 0 and s.sent("VoidPayment") == 0


def test_a_parked_deadline_of_an_instance_that_completed_is_dropped_as_a_noop(
    make: Callable[[Flaky], Services],
) -> None:
    s = make(Flaky())
    order = parked_order(s)
    s.payments.execute(ReceivePayment(payment_id=payment_id_for(order), reference="psp-1"))
    s.settle()  # paid: completed, which cancels the parked deadline too
    assert s.order_status(order) is OrderStatus.SHIPPED
    s.pm.broken = False
    done = s.worker.redrive()
    assert (done.applied, done.remaining) == (1, 0)  # removed, not fired
    assert s.pm.calls == 3 and s.sent("VoidPayment") == 0
    kinds = s.kinds(order)
    assert "DeadlineReached" not in kinds and "DeadlineCancelled" in kinds
    assert status(s.pm, s.engine, s.clock).counters["deadline_after_completion"] == 1


def test_a_parked_deadline_moved_since_is_not_fired_by_a_redrive(
    make: Callable[[Flaky], Services],
) -> None:
    s = make(Rescheduling())
    order = parked_order(s)
    from sample_app.shop.commands import CancelOrder

    s.shop.execute(CancelOrder(order_id=order))  # Rescheduling moves the deadline instead
    for w in s.worker.workers:
        w.run(until_caught_up=True)
    s.pm.broken = False
    assert s.worker.redrive().applied == 1  # the stale letter is removed, nothing fires
    assert s.pm.calls == 3 and s.sent("VoidPayment") == 0
    s.clock.advance(minutes=6)
    s.settle()  # the moved deadline fires on its own
    assert s.pm.calls == 4 and s.sent("VoidPayment") == 1


def test_concurrent_redrives_fire_a_parked_deadline_once(
    make: Callable[[Flaky], Services],
) -> None:
    s = make(Flaky())
    order = parked_order(s)
    s.pm.broken = False
    workers = [s.new_worker() for _ in range(4)]
    start = threading.Barrier(len(workers))
    results: list[Any] = []

    def redrive(worker: ProcessWorker) -> None:
        start.wait(10)
        results.append(worker.redrive())

    threads = [threading.Thread(target=redrive, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(r.applied for r in results) == 1
    assert s.kinds(order).count("DeadlineReached") == 1 and s.sent("VoidPayment") == 1
    assert parked_deadlines(s.pm, s.engine) == []


def test_on_error_skip_closes_the_deadline_with_a_fact(
    make: Callable[[Flaky], Services],
) -> None:
    s = make(Skipping())
    order = parked_order(s)
    assert s.pm.calls == 1  # skipped at once, as a skipped input is
    found = status(s.pm, s.engine, s.clock)
    assert (found.overdue, found.parked, found.dead_letters) == ([], [], 0)
    assert found.counters["deadline_skipped"] == 1
    assert s.kinds(order)[-1] == "DeadlineFailed" and found.active == 1


def test_on_error_stop_stops_the_worker_and_leaves_the_deadline_due(
    make: Callable[[Flaky], Services],
) -> None:
    s = make(Stopping())
    order = s.confirmed_order()
    s.settle()
    s.clock.advance(minutes=31)
    with pytest.raises(ProcessError, match="on_error is 'stop'"):
        s.worker.step()
    assert s.worker.stop_event.is_set()
    found = status(s.pm, s.engine, s.clock)
    assert [o[:2] for o in found.overdue] == [(str(order), "payment_due")]
    assert (found.parked, s.pm.calls, s.kinds(order)[-1]) == ([], 1, "DeadlineScheduled")


def test_an_error_that_says_retrying_cannot_help_is_parked_at_once(
    make: Callable[[Flaky], Services],
) -> None:
    s = make(Doomed())
    parked_order(s)
    [parked] = parked_deadlines(s.pm, s.engine)
    assert (s.pm.calls, parked.attempts) == (1, 1)
    assert parked.error_type.endswith("Hopeless")


def test_the_command_line_lists_and_redrives_parked_deadlines(
    make: Callable[[Flaky], Services],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import sys
    from types import ModuleType

    from framework.process import cli

    s = make(Flaky())
    order = parked_order(s)
    factory = ModuleType("keel_test_pm_cli")
    factory.worker = s.worker  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, factory.__name__, factory)
    target = "keel_test_pm_cli:worker"
    assert cli.main(["status", target]) == 3  # something is parked
    assert "PARKED #" in capsys.readouterr().out
    assert cli.main(["dead-letters", target]) == 3
    listed = capsys.readouterr().out
    assert f"deadline payment_due of {order}" in listed and "RuntimeError" in listed
    s.pm.broken = False
    [parked] = parked_deadlines(s.pm, s.engine)
    # A mistyped id is an error naming it, and nothing is re-driven, not even the good one.
    typo = ["--id", str(parked.id), "--id", str(parked.id + 1000)]
    assert cli.main(["dead-letters", target, "--redrive", *typo]) == 1
    assert f"not parked: dead letter id(s) {parked.id + 1000};" in capsys.readouterr().err
    assert s.kinds(order).count("DeadlineReached") == 0
    assert cli.main(["dead-letters", target, "--redrive", "--id", str(parked.id)]) == 0
    out = capsys.readouterr().out
    assert "re-drove 1" in out and "no dead letters" in out
    assert s.kinds(order).count("DeadlineReached") == 1


def test_metrics_follow_instances_deadlines_and_parked_handlers(
    make: Callable[[Flaky], Services],
) -> None:
    from framework.observability import ProcessSampler
    from tests.support import telemetry

    s = make(Flaky())
    telemetry.install()
    name = s.pm.name

    def value(metric: str, **labels: str) -> float | None:
        found = telemetry.scrape(metric, process=name, **labels)
        return found[0][1] if found else None

    sampler = ProcessSampler([s.worker], max_age=0).start()
    try:
        paid, unpaid = s.confirmed_order(), s.confirmed_order()
        s.settle()
        assert value("keel_process_active") == 2
        assert value("keel_process_deadlines_overdue") == 0
        s.clock.advance(minutes=31)
        assert value("keel_process_deadlines_overdue") == 2  # due, not fired yet
        s.payments.execute(ReceivePayment(payment_id=payment_id_for(paid), reference="psp-1"))
        s.settle()  # paid ships; unpaid's deadline fails every attempt and is parked
        assert value("keel_process_active") == 1
        assert value("keel_process_deadlines_overdue") == 0
        assert value("keel_process_dead_letters") == 1
        assert value("keel_process_outcomes_total", outcome="deadline_parked") == 1
        assert value("keel_process_outcomes_total", outcome="deadline_after_completion") is None
        s.payments.execute(ReceivePayment(payment_id=payment_id_for(unpaid), reference="psp-2"))
        s.settle()  # paid late: completed; the parked deadline now reaches a completed instance
        assert s.worker.redrive().applied == 1
        assert value("keel_process_active") == 0
        assert value("keel_process_dead_letters") == 0
        assert value("keel_process_outcomes_total", outcome="deadline_after_completion") == 1
    finally:
        sampler.stop()
    assert telemetry.scrape("keel_process_active", process=name) == []  # stopped: not reported


def test_a_running_worker_reports_its_metrics_until_it_stops(
    make: Callable[[Flaky], Services],
) -> None:
    import time

    from tests.support import telemetry

    s = make(Flaky())
    telemetry.install()
    s.confirmed_order()
    worker = s.new_worker(tick=0.05)
    stop = threading.Event()
    runner = threading.Thread(target=worker.run, args=(stop,))
    runner.start()
    try:
        deadline_at = time.monotonic() + 30
        seen: list[tuple[dict[str, str], float]] = []
        while time.monotonic() < deadline_at:
            seen = telemetry.scrape("keel_process_active", process=s.pm.name)
            if seen and seen[0][1] == 1:
                break
            time.sleep(0.1)
        assert seen and seen[0][1] == 1
    finally:
        stop.set()
        runner.join(30)
    assert telemetry.scrape("keel_process_active", process=s.pm.name) == []
