"""The shop end to end on the real Kafka broker: commands in (this process), a projection worker
process (``manage.py run_projections``) out, read models checked; then ``manage.py
rebuild_projection orders`` gives the same rows (sha256 digest of the enriched orders and its
join table).

Kafka keys events by aggregate id over 3 partitions, so customer and order events land in
different partitions and the worker sees them interleaved differently from the rebuild: the
enriched-orders projection must give the same rows either way.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from framework.backends.kafka import open_store
from framework.backends.kafka_client import KafkaAdminClient
from framework.database import create_engine
from framework.worker import setup_tables, wait_until
from projections.customers import CustomersProjection
from projections.order_history import OrderHistoryProjection
from projections.orders import OrdersProjection
from projections.sales import SalesPerHourProjection
from projections.streams import ShopStreams
from sample_app.shop.application import build
from sample_app.shop.commands import ChangeCustomerAddress
from sample_app.shop.management.commands.seed_demo import CUSTOMERS, _id, demo_commands

REPO = Path(__file__).resolve().parents[2]
PROJECTIONS = [
    CustomersProjection(),
    OrdersProjection(),
    SalesPerHourProjection(),
    OrderHistoryProjection(),
    ShopStreams(),
]


def digest(engine: sa.Engine, *tables: sa.Table) -> str:
    hasher = hashlib.sha256()
    with engine.connect() as conn:
        for table in tables:
            key = list(table.primary_key.columns)
            for row in conn.execute(sa.select(table).order_by(*key)):
                hasher.update(repr(tuple(row)).encode())
    return hasher.hexdigest()


def manage(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, str(REPO / "manage.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.timeout(240)
def test_the_shop_on_kafka_end_to_end(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    topic = unique_name("shop-e2e")
    url = f"kafka://{kafka_bootstrap}?topic={topic}&partitions=3"
    # Writes go through a store with a unique name: its transactional ids are this test's own.
    store = open_store(url, name=unique_name("shop_e2e").replace("-", "_"))
    app = build(store)
    readmodels = tmp_path / "read_models.db"
    engine = create_engine(f"sqlite:///{readmodels}")
    setup_tables(engine, *PROJECTIONS)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "sample_app.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "e2e",
        "KEEL_VAR_DIR": str(tmp_path),
        "DJANGO_DB": str(tmp_path / "django.db"),
        "KEEL_READMODELS_DB": str(readmodels),
        "KEEL_EVENT_STORE": url,
        "KEEL_CONSUMER_GROUP_PREFIX": f"{topic}.",
        "KEEL_PROJECTION_POLL_TIMEOUT": "0.2",
        "KEEL_KAFKA_INDEX_DIR": str(tmp_path / "index"),
        "PYTHONUNBUFFERED": "1",
    }
    worker = subprocess.Popen(
        [sys.executable, str(REPO / "manage.py"), "run_projections", "--instance-id", "e2e-w1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    # The shop's commands are decided by a writer process; this test process only sends them.
    writer = subprocess.Popen(
        [sys.executable, str(REPO / "manage.py"), "run_writers", "--instance-id", "e2e-1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        started = time.monotonic()
        written: dict[int, int] = {}  # the furthest position each partition got an event at
        results = [app.execute(command, user="e2e") for command in demo_commands()]
        # Moves after orders were placed: open orders follow, confirmed ones keep their ship-to.
        ada = _id("customer", 0)
        last = app.execute(
            ChangeCustomerAddress(
                customer_id=ada,
                address={"street": "1 Rue de la Paix", "city": "Paris", "country": "FR"},
            ),
            user="e2e",
        )
        for result in [*results, last]:
            for partition, offset in result.positions.items():
                written[partition] = max(written.get(partition, 0), offset)
        head = store.head()  # past the commit markers too: never wait for the head itself
        assert all(head[p] >= o for p, o in written.items())
        assert len(written) == 3  # customers and orders spread over every partition
        for projection in PROJECTIONS:
            try:
                wait_until(projection, engine, written, timeout=90)
            except TimeoutError:
                worker.kill()
                out, err = worker.communicate()
                raise AssertionError(
                    f"the worker did not catch up:\n{out}\n{err[-5000:]}"
                ) from None
        caught_up = time.monotonic() - started

        with engine.connect() as conn:
            customers = conn.execute(
                sa.text("SELECT name, country, status FROM shop_customers")
            ).all()
            orders = conn.execute(
                sa.text(
                    "SELECT customer_id, customer_name, customer_country, status, total "
                    "FROM shop_orders"
                )
            ).all()
            hours = conn.execute(sa.text("SELECT orders, revenue FROM shop_sales_per_hour")).all()
            history = conn.execute(sa.text("SELECT count(*) FROM shop_order_events")).scalar()
        assert len(customers) == len(CUSTOMERS)
        assert ("Ada Lovelace", "FR", "active") in customers
        assert ("Maryam Mirzakhani", "US", "deactivated") in customers
        assert len(orders) == 20 and all(o.customer_name for o in orders)
        ada_orders = [o for o in orders if o.customer_id.replace("-", "") == ada.hex]
        assert {(o.status, o.customer_country) for o in ada_orders} >= {("open", "FR")}
        assert all(
            o.customer_country == "GB" for o in ada_orders if o.status in {"confirmed", "shipped"}
        )
        statuses = sorted(o.status for o in orders)
        confirmed = [o for o in orders if o.status in {"confirmed", "shipped"}]
        assert statuses.count("cancelled") == 3 and len(confirmed) > 5
        assert sum(h.orders for h in hours) == len(confirmed)
        assert sum(Decimal(str(h.revenue)) for h in hours) == sum(
            Decimal(str(o.total)) for o in confirmed
        )
        assert history == sum(len(app.history(_id("order", n))) for n in range(20))

        live = digest(engine, OrdersProjection.joined.table, OrdersProjection.customers.table)
        # Static membership: the worker is a member of each projection's group as e2e-w1.
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            groups = [f"{topic}.{p.name}" for p in PROJECTIONS]
            described = admin.describe_groups(groups)
        finally:
            admin.close()
        instances = {
            g: [m.get("group_instance_id") for m in d["members"]] for g, d in described.items()
        }
        assert all(ids == ["e2e-w1"] for ids in instances.values()), instances
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        assert "SIGTERM: stopping after the current batch" in out

        rebuilt_out = manage(env, "rebuild_projection", "orders")
        assert "rebuilt orders: events=" in rebuilt_out
        rebuilt = digest(engine, OrdersProjection.joined.table, OrdersProjection.customers.table)
        status = manage(env, "projection_status", "orders", "--json")
        print(
            f"\nE2E kafka: offsets={sum(head.values())} partitions=3 caught_up_s={caught_up:.1f} "
            f"orders={len(orders)} digest_equal={live == rebuilt}"
        )
        assert rebuilt == live
        assert '"lag": 0' in status
    finally:
        for process in (worker, writer):
            if process.poll() is None:
                process.kill()
                process.communicate()
        app.close()
        engine.dispose()
