"""Change data capture (issue 14, part 3): each change feed's cursor, counters and last error.
(Parked changes use keel_dead_letters, under the projection name ``cdc:<feed>``.)

Revision ID: 0006_i14_cdc
Revises: 0005_i14
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_i14_cdc"
down_revision: str | None = "0005_i14"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "keel_cdc_feeds",
        sa.Column("feed", sa.String(length=200), nullable=False),
        sa.Column("cursor", sa.Text(), nullable=True),
        sa.Column("changes", sa.BigInteger(), nullable=False),
        sa.Column("commands", sa.BigInteger(), nullable=False),
        sa.Column("last_change_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("feed"),
    )


def downgrade() -> None:
    op.drop_table("keel_cdc_feeds")
