"""Operational state (issues 12 and 16): workers' and writers' heartbeats, lag samples and the
throughput / dead-letter samples behind the projections page's charts. Until now these tables
were created on first use; a database where that happened already keeps them (each is created
only when missing).

Revision ID: 0008_i16
Revises: 0007_unpaid
Create Date: 2026-12-02 00:45:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_i16"
down_revision: str | None = "0007_unpaid"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _missing(name: str) -> bool:
    return not sa.inspect(op.get_bind()).has_table(name)


def upgrade() -> None:
    if _missing("keel_heartbeats"):
        op.create_table(
            "keel_heartbeats",
            sa.Column("name", sa.String(length=200), nullable=False),
            sa.Column("kind", sa.String(length=20), nullable=False),
            sa.Column("owner", sa.String(length=200), nullable=False),
            sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("applied", sa.BigInteger(), nullable=False),
            sa.Column("progress", sa.Float(), nullable=True),
            sa.Column("detail", sa.String(length=500), nullable=True),
            sa.PrimaryKeyConstraint("name"),
        )
    if _missing("keel_lag_samples"):
        op.create_table(
            "keel_lag_samples",
            sa.Column("name", sa.String(length=200), nullable=False),
            sa.Column("at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("lag", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("name", "at"),
        )
    if _missing("keel_samples"):
        op.create_table(
            "keel_samples",
            sa.Column("name", sa.String(length=200), nullable=False),
            sa.Column("metric", sa.String(length=50), nullable=False),
            sa.Column("at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("value", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("name", "metric", "at"),
        )


def downgrade() -> None:
    op.drop_table("keel_samples")
    op.drop_table("keel_lag_samples")
    op.drop_table("keel_heartbeats")
