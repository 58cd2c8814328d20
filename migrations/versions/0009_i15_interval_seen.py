"""Interval joins (issue 15, on_unmatched exactly once): each buffered event of
``shop_unshipped_orders`` and ``payments_unpaid_orders`` keeps ``seen``, the point its
partition had reached when it came (its own time when it was on time), which decides whether a
right event answered a left one in every interleaving. Buffered rows get their own time: the
rule as if every event so far was on time.

Revision ID: 0009_i15_seen
Revises: 0008_i16
Create Date: 2026-12-02 08:10:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_i15_seen"
down_revision: str | None = "0008_i16"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BUFFERS = {
    "shop_unshipped_orders__left": "left_time",
    "shop_unshipped_orders__right": "right_time",
    "payments_unpaid_orders__left": "left_time",
    "payments_unpaid_orders__right": "right_time",
}


def upgrade() -> None:
    for table, moment in BUFFERS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("seen", sa.DateTime(timezone=True), nullable=True))
        op.execute(sa.text(f'UPDATE "{table}" SET seen = {moment}'))
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column("seen", existing_type=sa.DateTime(timezone=True), nullable=False)


def downgrade() -> None:
    for table in BUFFERS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("seen")
