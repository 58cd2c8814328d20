"""Two services on the real Kafka broker: the shop and the payments service, joined by the
payment process manager (issue 14).

The shop and payments writers run in this process (``writer(app)``); the process manager runs
in this process for the flow test and as a child process (``python -m framework.process run``)
for the kill test, which SIGKILLs it 10 times mid-flow and checks every order ends shipped (paid)
or cancelled (unpaid) exactly once, with no duplicate command effects, and that the payments
service's read models bootstrapped from offset 0 equal the ones kept live.

Set ``KEEL_SOAK=1`` for the bigger kill run (more orders, more kills).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from framework.application import Application
from framework.backends.kafka import open_store
from framework.database import create_engine
from framework.errors import AggregateNotFoundError, OutcomeUnknownError
from framework.process import ProcessWorker, status
from framework.process.store import outbox_table
from framework.projection_testing import digest
from framework.worker import ProjectionWorker, setup_tables
from framework.writer import writer
from projections.payments import PaymentOrdersProjection, PaymentsProjection
from sample_app.payments import application as payments_app
from sample_app.payments.commands import ReceivePayment
from sample_app.payments.domain import PaymentNotOpen, payment_id_for
from sample_app.payments.process import PaymentProcess
from sample_app.shop import application as shop_app
from sample_app.shop.commands import CancelOrder, ConfirmOrder, PlaceOrder, RegisterCustomer
from sample_app.shop.domain import Address, OrderLine

REPO = Path(__file__).resolve().parents[2]
BERLIN = Address(street="Unter den Linden 1", city="Berlin", country="DE")
TEA = OrderLine(product="Tea", quantity=2, unit_price=Decimal("3.50"))
SOAK = os.environ.get("KEEL_SOAK") == "1"


@pytest.fixture
def schemas(postgres_url: str, unique_name: Callable[[str], str]) -> Iterator[Callable[[], str]]:
    """``schemas()`` -> the URL of a fresh PostgreSQL schema of this test's own (dropped after)."""
    admin = create_engine(postgres_url)
    made: list[str] = []

    def make() -> str:
        schema = unique_name("pm").replace("-", "_")
        with admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        made.append(schema)
        sep = "&" if "?" in postgres_url else "?"
        return f"{postgres_url}{sep}options=-csearch_path%3D{schema}"

    yield make
    with admin.begin() as conn:
        for schema in made:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()


@pytest.fixture
def schema_url(schemas: Callable[[], str]) -> str:
    return schemas()


@dataclass
class Hub:
    url: str
    shop_name: str
    payments_name: str
    shop: Application = field(init=False)
    payments: Application = field(init=False)

    def __post_init__(self) -> None:
        self.shop = shop_app.build(open_store(self.url, name=self.shop_name))
        self.payments = payments_app.build(open_store(self.url, name=self.payments_name))

    def close(self) -> None:
        self.shop.close()
        self.payments.close()


@pytest.fixture
def hub(
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Hub]:
    monkeypatch.setenv("KEEL_KAFKA_INDEX_DIR", str(tmp_path / "index"))
    found = Hub(
        f"kafka://{kafka_bootstrap}?partitions=3",
        unique_name("shop").replace("-", "_"),
        unique_name("payments").replace("-", "_"),
    )
    yield found
    found.close()


class Driver:
    """Places and confirms orders, and pays the ones meant to be paid once their payment was
    requested (as a payment provider would)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.customer = uuid.uuid4()
        hub.shop.execute(
            RegisterCustomer(
                customer_id=self.customer, name="Ada", email="ada@example.com", address=BERLIN
            )
        )
        self.paid: set[uuid.UUID] = set()
        self.unpaid: set[uuid.UUID] = set()
        self.to_pay: list[uuid.UUID] = []
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.late_payments = 0

    def order(self, pay: bool) -> uuid.UUID:
        order_id = uuid.uuid4()
        self.hub.shop.execute(PlaceOrder(order_id=order_id, customer_id=self.customer, lines=[TEA]))
        self.hub.shop.execute(ConfirmOrder(order_id=order_id))
        (self.paid if pay else self.unpaid).add(order_id)
        if pay:
            self.to_pay.append(order_id)
        return order_id

    def pay_loop(self) -> None:
        try:
            while not self.stop.is_set() or self.to_pay:
                for order_id in list(self.to_pay):
                    if self._pay(order_id):
                        self.to_pay.remove(order_id)
                if self.stop.wait(0.2) and not self.to_pay:
                    return
        except BaseException as error:  # reported by the test
            self.errors.append(error)

    def _pay(self, order_id: uuid.UUID) -> bool:
        command = ReceivePayment(payment_id=payment_id_for(order_id), reference="psp")
        for _ in range(5):
            try:
                self.hub.payments.execute(command, timeout=15)
                return True
            except AggregateNotFoundError:
                return False  # not requested yet: the process manager has not got there
            except PaymentNotOpen:
                # Too late: the window passed and the payment was voided first. The order must
                # end cancelled, like one never paid.
                self.paid.discard(order_id)
                self.unpaid.add(order_id)
                self.late_payments += 1
                return True
            except OutcomeUnknownError:
                continue  # the same command id again is safe
        return False


def final_states(hub: Hub, orders: set[uuid.UUID]) -> dict[uuid.UUID, Counter[str]]:
    """Per order: how many of each shop and payment event it got."""
    out: dict[uuid.UUID, Counter[str]] = {}
    for order_id in orders:
        seen: Counter[str] = Counter(e.type_name for e in hub.shop.history(order_id))
        with contextlib.suppress(AggregateNotFoundError):
            seen.update(e.type_name for e in hub.payments.history(payment_id_for(order_id)))
        out[order_id] = seen
    return out


def settled(s: Counter[str]) -> bool:
    """The order is shipped or cancelled, and its payment received or voided."""
    return (
        s["Order.Shipped"] + s["Order.Cancelled"] >= 1
        and s["OrderPayment.Received"] + s["OrderPayment.Voided"] >= 1
    )


def wait_final(hub: Hub, orders: set[uuid.UUID], timeout: float) -> dict[uuid.UUID, Counter[str]]:
    end = time.monotonic() + timeout
    while True:
        states = final_states(hub, orders)
        done = all(settled(s) for s in states.values())
        if done or time.monotonic() > end:
            return states
        time.sleep(0.5)


def outcome_figures(
    states: dict[uuid.UUID, Counter[str]], paid: set[uuid.UUID], unpaid: set[uuid.UUID]
) -> tuple[int, int, int]:
    """(duplicates, stuck, wrong) over every order."""
    duplicates = stuck = wrong = 0
    for order_id, s in states.items():
        finals = s["Order.Shipped"] + s["Order.Cancelled"]
        duplicates += max(0, finals - 1) + max(0, s["OrderPayment.Requested"] - 1)
        duplicates += max(0, s["OrderPayment.Received"] - 1) + max(0, s["OrderPayment.Voided"] - 1)
        if not settled(s):
            stuck += 1
        elif order_id in paid:
            wrong += not (s["Order.Shipped"] == 1 and s["OrderPayment.Received"] == 1)
        elif order_id in unpaid:
            wrong += not (s["Order.Cancelled"] == 1 and s["OrderPayment.Voided"] == 1)
    return duplicates, stuck, wrong


@pytest.mark.timeout(240)
def test_the_payment_process_across_two_services(hub: Hub, schema_url: str) -> None:
    engine = create_engine(schema_url)
    worker = ProcessWorker(
        PaymentProcess(window=timedelta(seconds=6)),
        sources=[hub.shop.store, hub.payments.store],
        targets=[hub.shop, hub.payments],
        engine=engine,
        poll_timeout=0.2,
    )
    worker.setup()
    stop = threading.Event()
    with writer(hub.shop), writer(hub.payments):
        driver = Driver(hub)
        runner = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        runner.start()
        payer = threading.Thread(target=driver.pay_loop, daemon=True)
        payer.start()
        paid = [driver.order(pay=True) for _ in range(2)]
        driver.order(pay=False)
        by_customer = driver.order(pay=False)
        driver.unpaid.discard(by_customer)
        hub.shop.execute(CancelOrder(order_id=by_customer))
        orders = driver.paid | driver.unpaid | {by_customer}
        states = wait_final(hub, orders, timeout=90)
        driver.stop.set()
        payer.join(30)
        s = status(worker.pm, engine)
        stop.set()
        runner.join(60)
    assert not driver.errors
    duplicates, stuck, wrong = outcome_figures(states, driver.paid, driver.unpaid)
    assert (duplicates, stuck, wrong) == (0, 0, 0), states
    assert states[by_customer]["Order.Cancelled"] == 1
    assert all(states[o]["Order.Shipped"] == 1 for o in paid)
    assert s.overdue == [] and s.dead_letters == 0
    engine.dispose()


# -- SIGKILL of the process-manager worker ---------------------------------------------------


class ProcessManagerProcess:
    def __init__(self, hub: Hub, database: str, window: float, tmp: Path) -> None:
        self.env = {
            **os.environ,
            "KEEL_SHOP_EVENT_STORE": hub.url,
            "KEEL_PAYMENTS_EVENT_STORE": hub.url,
            "KEEL_SHOP_NAME": hub.shop_name,
            "KEEL_PAYMENTS_NAME": hub.payments_name,
            "DATABASE_URL": database,
            "KEEL_PAYMENT_WINDOW_SECONDS": str(window),
            "KEEL_PROJECTION_POLL_TIMEOUT": "0.2",
            "KEEL_KAFKA_INDEX_DIR": str(tmp / "pm-index"),
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tmp / "pm.log"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "framework.process",
                    "run",
                    "sample_app.payments.service:payment_process_worker",
                    "--instance-id",
                    "pm-1",
                    "--create-tables",
                ],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.mark.timeout(600 if SOAK else 300)
def test_killing_the_process_manager_loses_and_duplicates_nothing(
    hub: Hub, schemas: Callable[[], str], tmp_path: Path
) -> None:
    schema_url = schemas()
    kills, orders_n, window = (30, 150, 20.0) if SOAK else (10, 30, 14.0)
    engine = create_engine(schema_url)
    live = [PaymentsProjection(), PaymentOrdersProjection()]
    setup_tables(engine, *live)
    pm = ProcessManagerProcess(hub, schema_url, window, tmp_path)
    stop = threading.Event()
    projection_workers = [
        ProjectionWorker(live[0], hub.payments.store, engine, poll_timeout=0.2),
        ProjectionWorker(live[1], hub.shop.store, engine, poll_timeout=0.2),
    ]
    threads = [
        threading.Thread(target=w.run, args=(stop,), daemon=True) for w in projection_workers
    ]
    with writer(hub.shop), writer(hub.payments):
        driver = Driver(hub)
        for t in threads:
            t.start()
        pm.start()
        payer = threading.Thread(target=driver.pay_loop, daemon=True)
        payer.start()
        done_kills = 0
        placed = 0
        next_kill = time.monotonic() + 2.0
        while placed < orders_n or done_kills < kills:
            if placed < orders_n:
                driver.order(pay=placed % 3 != 2)  # two in three orders get paid
                placed += 1
            if done_kills < kills and time.monotonic() >= next_kill:
                pm.kill()
                done_kills += 1
                time.sleep(0.3)
                pm.start()
                next_kill = time.monotonic() + 1.5
            time.sleep(0.1)
        orders = driver.paid | driver.unpaid
        states = wait_final(hub, orders, timeout=window + 90)
        driver.stop.set()
        payer.join(60)
        pm.stop()
        pm_status = status(PaymentProcess(), engine)
        with engine.connect() as conn:
            per_type = Counter(
                conn.execute(
                    sa.select(outbox_table.c.instance_id, outbox_table.c.command_type)
                ).all()
            )
        # A second deployment of the process manager, bootstrapped from offset 0 of both
        # topics, re-issues the same command ids for what was done: nothing happens twice.
        rebooted = ProcessWorker(
            PaymentProcess(window=timedelta(seconds=window)),
            sources=[hub.shop.store, hub.payments.store],
            targets=[hub.shop, hub.payments],
            engine=create_engine(schemas()),
            poll_timeout=0.2,
        )
        rebooted.setup()
        for w in rebooted.workers:
            w.run(until_caught_up=True)
        resent = 0
        while sent := rebooted.relay.send_pending() if rebooted.relay else 0:
            resent += sent
        time.sleep(3)  # the writers decide the re-sent commands (replays)
        replay_equal = final_states(hub, orders) == states
        rebooted.engine.dispose()
        # Every live read model has caught up: now bootstrap a fresh copy from offset 0.
        for w in projection_workers:
            w.wait_until(w.store.head(), timeout=60)
        stop.set()
        for t in threads:
            t.join(30)
    fresh = create_engine(schemas())  # a payments service deployed now, replaying the hub
    boot = [PaymentsProjection(), PaymentOrdersProjection()]
    setup_tables(fresh, *boot)
    ProjectionWorker(boot[0], hub.payments.store, fresh, group=f"{hub.payments_name}.boot").run(
        until_caught_up=True
    )
    ProjectionWorker(boot[1], hub.shop.store, fresh, group=f"{hub.shop_name}.boot").run(
        until_caught_up=True
    )
    tables = [PaymentsProjection.payments, PaymentOrdersProjection.orders]
    digest_equal = digest(engine, tables) == digest(fresh, tables)
    duplicates, stuck, wrong = outcome_figures(states, driver.paid, driver.unpaid)
    duplicates += sum(n - 1 for n in per_type.values() if n > 1)
    stuck += len(pm_status.overdue) + pm_status.outbox_pending
    print(
        f"PM: kills={done_kills} orders={len(orders)} paid={len(driver.paid)} "
        f"cancelled={len(driver.unpaid)} late_payments={driver.late_payments} wrong={wrong} "
        f"duplicates={duplicates} stuck={stuck} "
        f"active={pm_status.active} dead_letters={pm_status.dead_letters} "
        f"rebootstrap_resent={resent} rebootstrap_effects_equal={replay_equal} "
        f"digest_equal={digest_equal}"
    )
    assert not driver.errors, driver.errors
    assert done_kills == kills
    odd = {
        ("paid" if o in driver.paid else "unpaid", tuple(sorted(c.items())))
        for o, c in states.items()
        if (o in driver.paid) != (c["Order.Shipped"] == 1 and c["OrderPayment.Received"] == 1)
    }
    assert (duplicates, stuck, wrong) == (0, 0, 0), (odd, pm.log.read_text()[-3000:])
    assert pm_status.active == 0 and pm_status.dead_letters == 0
    assert digest_equal and replay_equal and resent >= len(orders)
    engine.dispose()
    fresh.dispose()
