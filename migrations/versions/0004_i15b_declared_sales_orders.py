"""projections.sales and projections.orders become stream declarations (issue 15).

The hand-written ``shop_sales_per_hour`` (by ``hour``, with its ledger ``shop_sales_orders``),
``shop_orders`` and ``shop_order_customers`` give way to the tables their declarations own:
the same rows plus each window's bounds, revision, late events and whether it closed, and the
orders' ship-to columns. ``shop_sales_daily`` moves from ``shop_streams`` to ``sales_per_hour``,
and the declarative twins that stood beside them (``shop_sales_hourly``, ``shop_orders_joined``,
``shop_streams_customers``) go. Every such table derives from the log, so the migration empties
what it keeps and resets the two projections' positions, versions and dead letters: their
workers fill the new tables from offset 0, as a new projection bootstraps. Late events gain
the parked event's ``version``, which a re-drive needs. The lead relinks ``down_revision``
when merging.

Revision ID: 0004_i15b
Revises: 0003_i15
Create Date: 2026-12-02 00:40:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_i15b"
down_revision: str | None = "0003_i15"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RESET = ("sales_per_hour", "orders")
"""The projections whose tables this migration replaces: they start again from offset 0."""


def _stream_tables(name: str) -> None:
    op.create_table(
        f"{name}__stream_time",
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("max_event_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("partitions", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("partition"),
    )
    op.create_table(
        f"{name}__late_events",
        sa.Column("stream", sa.String(length=100), nullable=False),
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("offset", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("event_type", sa.String(length=300), nullable=False),
        sa.Column("aggregate_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("late_by_ms", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(length=12), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("stream", "partition", "offset"),
    )


def _customers(name: str, *, nullable: bool) -> None:
    op.create_table(
        name,
        sa.Column("customer_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=nullable),
        sa.Column("city", sa.String(length=100), nullable=nullable),
        sa.Column("country", sa.String(length=2), nullable=nullable),
        sa.PrimaryKeyConstraint("customer_id"),
    )


def _orders(name: str, *, declared: bool) -> None:
    """The orders table: hand-written (``declared=False``: NOT NULL where it was) or joined."""
    required = not declared
    op.create_table(
        name,
        sa.Column("order_id", sa.Uuid(), nullable=False),
        sa.Column("customer_id", sa.Uuid(), nullable=not required),
        sa.Column("status", sa.String(length=20), nullable=not required),
        sa.Column("line_count", sa.Integer(), nullable=not required),
        sa.Column("item_count", sa.Integer(), nullable=not required),
        sa.Column("total", sa.Numeric(precision=14, scale=2), nullable=not required),
        sa.Column("lines", sa.JSON(), nullable=not required),
        sa.Column("gift_wrap", sa.Boolean(), nullable=not required),
        sa.Column("requested_delivery", sa.Date(), nullable=True),
        sa.Column("carrier", sa.String(length=20), nullable=True),
        sa.Column("tracking_number", sa.String(length=40), nullable=True),
        sa.Column("placed_at", sa.DateTime(timezone=True), nullable=not required),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("shipped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=not required),
        sa.Column("version", sa.Integer(), nullable=not required),
        *(
            [
                sa.Column("ship_city", sa.String(length=100), nullable=True),
                sa.Column("ship_country", sa.String(length=2), nullable=True),
            ]
            if declared
            else []
        ),
        sa.Column("customer_name", sa.String(length=100), nullable=True),
        sa.Column("customer_city", sa.String(length=100), nullable=True),
        sa.Column("customer_country", sa.String(length=2), nullable=True),
        sa.PrimaryKeyConstraint("order_id"),
    )
    with op.batch_alter_table(name) as batch_op:
        batch_op.create_index(f"ix_{name}_customer{'_id' if declared else ''}", ["customer_id"])
        if name == "shop_orders":
            batch_op.create_index("ix_shop_orders_placed_at", ["placed_at"])
            batch_op.create_index("ix_shop_orders_status", ["status"])


def _hourly(name: str) -> None:
    op.create_table(
        name,
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("orders", sa.Integer(), nullable=True),
        sa.Column("revenue", sa.Numeric(precision=16, scale=2), nullable=True),
        sa.Column("cancelled", sa.Integer(), nullable=True),
        sa.Column("contributions", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("late_events", sa.Integer(), nullable=False),
        sa.Column("amended_after_close", sa.Boolean(), nullable=False),
        sa.Column("closed", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("window_start"),
    )
    op.create_table(
        f"{name}__contrib",
        sa.Column("contribution_id", sa.String(length=200), nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("late", sa.Boolean(), nullable=False),
        sa.Column("contributed", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("contribution_id"),
    )
    with op.batch_alter_table(name) as batch_op:
        batch_op.create_index(f"ix_{name}_close", ["closed", "window_end"])
    with op.batch_alter_table(f"{name}__contrib") as batch_op:
        batch_op.create_index(f"ix_{name}__contrib_key", ["event_time"])


def _reset(streams_gone: Sequence[str]) -> None:
    """Forget where the replaced projections were: their workers start again from 0."""
    for table in ("keel_projection_positions", "keel_projections", "keel_dead_letters"):
        op.execute(
            sa.text(f"DELETE FROM {table} WHERE projection IN :names").bindparams(
                sa.bindparam("names", list(RESET), expanding=True)
            )
        )
    op.execute("DELETE FROM shop_sales_daily")
    op.execute("DELETE FROM shop_sales_daily__contrib")
    if streams_gone:
        op.execute(
            sa.text("DELETE FROM shop_streams__late_events WHERE stream IN :gone").bindparams(
                sa.bindparam("gone", list(streams_gone), expanding=True)
            )
        )


def upgrade() -> None:
    for table in (
        "shop_sales_orders",
        "shop_sales_per_hour",
        "shop_orders",
        "shop_order_customers",
        "shop_orders_joined",
        "shop_streams_customers",
        "shop_sales_hourly__contrib",
        "shop_sales_hourly",
    ):
        op.drop_table(table)
    _hourly("shop_sales_per_hour")
    _orders("shop_orders", declared=True)
    _customers("shop_order_customers", nullable=True)
    _stream_tables("sales_per_hour")
    _stream_tables("orders")
    with op.batch_alter_table("shop_streams__late_events") as batch_op:
        batch_op.add_column(sa.Column("version", sa.Integer(), nullable=True))
    _reset(["sales_hourly", "sales_daily", "customers", "orders"])
    # shop_streams keeps its sessions and unshipped orders, now as its version 2.
    op.execute("UPDATE keel_projections SET version = 2 WHERE projection = 'shop_streams'")


def downgrade() -> None:
    for table in (
        "shop_sales_per_hour__contrib",
        "shop_sales_per_hour",
        "shop_orders",
        "shop_order_customers",
        "sales_per_hour__stream_time",
        "sales_per_hour__late_events",
        "orders__stream_time",
        "orders__late_events",
    ):
        op.drop_table(table)
    with op.batch_alter_table("shop_streams__late_events") as batch_op:
        batch_op.drop_column("version")
    op.create_table(
        "shop_sales_per_hour",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("orders", sa.Integer(), nullable=False),
        sa.Column("revenue", sa.Numeric(precision=16, scale=2), nullable=False),
        sa.Column("cancelled", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("hour"),
    )
    op.create_table(
        "shop_sales_orders",
        sa.Column("order_id", sa.Uuid(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("total", sa.Numeric(precision=14, scale=2), nullable=False),
        sa.PrimaryKeyConstraint("order_id"),
    )
    _orders("shop_orders", declared=False)
    _customers("shop_order_customers", nullable=False)
    _orders("shop_orders_joined", declared=True)
    _customers("shop_streams_customers", nullable=True)
    _hourly("shop_sales_hourly")
    _reset([])
    # shop_streams held the twins again: it refills them from 0 too.
    op.execute("DELETE FROM shop_sales_daily")
    for table in ("keel_projection_positions", "keel_projections", "keel_dead_letters"):
        op.execute(f"DELETE FROM {table} WHERE projection = 'shop_streams'")
