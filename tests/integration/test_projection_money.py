"""Money in read models round-trips exactly on SQLite and PostgreSQL (``ExactNumeric``)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from framework.database import create_engine
from framework.errors import ConfigurationError
from framework.projection import ExactNumeric, upsert
from tests.support.projection_support import pg_database

AMOUNTS = [
    Decimal("9999999999999999.99"),  # 18 digits: an 8-byte float cannot hold it
    Decimal("0.10"),
    Decimal("0.20"),
    Decimal("-12345678901234.57"),
    Decimal("0"),
    Decimal("1"),
]


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/money.db"
        engine = create_engine(url)
        yield engine
        engine.dispose()
        return
    with pg_database(request.getfixturevalue("postgres_url")) as url:
        engine = create_engine(url)
        yield engine
        engine.dispose()


def test_amounts_round_trip_exactly_and_add_up_in_sql(engine: sa.Engine) -> None:
    metadata = sa.MetaData()
    t = sa.Table(
        "money",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("amount", ExactNumeric(18, 2), nullable=False),
        sa.Column("total", ExactNumeric(18, 2), nullable=False),
    )
    with engine.begin() as conn:
        metadata.create_all(conn)
        conn.execute(
            t.insert(), [{"id": i, "amount": a, "total": 0} for i, a in enumerate(AMOUNTS)]
        )
        for _ in range(3):  # increments in SQL, as a projection's upsert does them
            upsert(conn, t, {"id": 1, "amount": 0, "total": 0}, update={"total": t.c.total + 1})
            upsert(conn, t, {"id": 1, "amount": 0, "total": 0},
                   update={"total": t.c.total + Decimal("0.10")})  # fmt: skip
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.amount, t.c.total).order_by(t.c.id)).all()
        small = conn.execute(sa.select(sa.func.sum(t.c.amount)).where(t.c.id.in_([1, 2])))
        ordered = conn.execute(sa.select(t.c.id).order_by(t.c.amount)).scalars().all()
        total_small = small.scalar_one()
    amounts = [r.amount for r in rows]
    print(
        f"\nMONEY[{engine.dialect.name}]: amounts_equal={amounts == AMOUNTS} "
        f"sum={total_small} total={rows[1].total}"
    )
    assert amounts == AMOUNTS and all(isinstance(a, Decimal) for a in amounts)
    assert total_small == Decimal("0.30") and rows[1].total == Decimal("3.30")
    assert ordered == [3, 4, 1, 2, 5, 0]


def test_a_value_that_would_be_rounded_is_refused(engine: sa.Engine) -> None:
    metadata = sa.MetaData()
    t = sa.Table(
        "money2",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("amount", ExactNumeric(6, 2)),
    )
    with engine.begin() as conn:
        metadata.create_all(conn)
    for bad in (Decimal("0.005"), Decimal("10000.00"), 0.1):
        with pytest.raises(sa.exc.StatementError, match="ExactNumeric"), engine.begin() as conn:
            conn.execute(t.insert().values(id=1, amount=bad))
    with pytest.raises(ConfigurationError, match="precision <= 18"):
        ExactNumeric(19, 2)
