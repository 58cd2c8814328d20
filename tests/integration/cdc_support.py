"""Shared set-up for the CDC tests: a fresh CRM table per test (its own schema) in the test
PostgreSQL, the framework's tables, and helpers that read the shop back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

import framework.cdc  # noqa: F401  (keel_cdc_feeds joins framework_metadata)
from framework.application import Application
from framework.database import create_engine
from framework.positions import framework_metadata
from sample_app import crm
from sample_app.shop.domain import Customer, CustomerStatus
from tests.support.projection_support import free_port


@dataclass
class Crm:
    engine: Engine
    table: str
    feed_name: str

    def sql(self, statement: str, params: dict[str, Any] | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(statement.replace("CRM", self.table)), params or {})

    def insert(self, conn: sa.Connection, crm_id: int, **values: Any) -> None:
        row = {
            "id": crm_id,
            "full_name": f"Customer {crm_id}",
            "email": f"c{crm_id}@example.com",
            "street": "Main 1",
            "city": "Berlin",
            "postcode": "10115",
            "country": "DE",
            **values,
        }
        cols = ", ".join(row)
        conn.execute(
            sa.text(
                f"INSERT INTO {self.table} ({cols}) VALUES ({', '.join(':' + c for c in row)})"
            ),
            row,
        )


def unreachable_url() -> str:
    """A PostgreSQL URL (with a password, which no message may show) where nothing listens."""
    return f"postgresql+psycopg://nobody:secret@127.0.0.1:{free_port()}/crm"


def make_crm(url: str) -> Iterator[Crm]:
    engine = create_engine(url)
    framework_metadata.create_all(engine)
    schema = f"crm_{uuid.uuid4().hex[:10]}"
    table = f"{schema}.customers"
    crm.create_crm_schema(engine, table)
    yield Crm(engine, table, f"crm-{schema}")
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        if conn.execute(sa.text("SELECT to_regclass('keel_cdc.snapshots')")).scalar():
            conn.execute(sa.text("DELETE FROM keel_cdc.changelog WHERE source = :s"), {"s": table})
            conn.execute(sa.text("DELETE FROM keel_cdc.snapshots WHERE source = :s"), {"s": table})
        conn.execute(sa.text("DELETE FROM keel_cdc_feeds WHERE feed = :f"), {"f": f"crm-{schema}"})
        conn.execute(
            sa.text("DELETE FROM keel_dead_letters WHERE projection = :p"),
            {"p": f"cdc:crm-{schema}"},
        )
    engine.dispose()


def shop_state(app: Application, crm_ids: list[int]) -> dict[int, tuple[str, str, str] | None]:
    """crm id -> (status, street, city) of the shop's customer, or None when it has none."""
    state: dict[int, tuple[str, str, str] | None] = {}
    for crm_id in crm_ids:
        cid = crm.customer_id(crm_id)
        if not app.store.read(cid):
            state[crm_id] = None
            continue
        customer = app.load(Customer, cid)
        state[crm_id] = (customer.status.value, customer.address.street, customer.address.city)
    return state


def expected_state(
    rows: dict[int, dict[str, Any]], deleted: set[int]
) -> dict[int, tuple[str, str, str] | None]:
    """What the shop should hold for the CRM's final rows (deleted rows: deactivated, with
    the address they had)."""
    out: dict[int, tuple[str, str, str] | None] = {}
    for crm_id, row in rows.items():
        inactive = crm_id in deleted or row["active"] is False
        status = CustomerStatus.DEACTIVATED if inactive else CustomerStatus.ACTIVE
        out[crm_id] = (status.value, row["street"], row["city"])
    return out
