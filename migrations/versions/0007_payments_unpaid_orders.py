"""The payments service's interval join "confirmed but not paid within 30 minutes"
(projections.payments.UnpaidOrdersProjection): its result table, the join's two sides, and the
stream projection's late events and stream time.

Revision ID: 0007_unpaid
Revises: 0006_i14_cdc
Create Date: 2026-12-02 01:53:56.577974+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_unpaid"
down_revision: str | None = "0006_i14_cdc"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "payments_unpaid_orders",
        sa.Column("order_id", sa.Uuid(), nullable=False),
        sa.Column("left_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("right_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.PrimaryKeyConstraint("order_id"),
    )
    op.create_table(
        "payments_unpaid_orders__left",
        sa.Column("order_id", sa.Uuid(), nullable=False),
        sa.Column("left_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closes_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("emitted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("order_id"),
    )
    with op.batch_alter_table("payments_unpaid_orders__left", schema=None) as batch_op:
        batch_op.create_index(
            "ix_payments_unpaid_orders__left_open", ["emitted", "closes_at"], unique=False
        )

    op.create_table(
        "payments_unpaid_orders__right",
        sa.Column("order_id", sa.Uuid(), nullable=False),
        sa.Column("right_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("order_id", "right_time"),
    )
    op.create_table(
        "unpaid_orders__late_events",
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
    op.create_table(
        "unpaid_orders__stream_time",
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("max_event_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("partitions", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("partition"),
    )


def downgrade() -> None:
    op.drop_table("unpaid_orders__stream_time")
    op.drop_table("unpaid_orders__late_events")
    op.drop_table("payments_unpaid_orders__right")
    with op.batch_alter_table("payments_unpaid_orders__left", schema=None) as batch_op:
        batch_op.drop_index("ix_payments_unpaid_orders__left_open")

    op.drop_table("payments_unpaid_orders__left")
    op.drop_table("payments_unpaid_orders")
