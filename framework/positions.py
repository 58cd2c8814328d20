"""The framework's own tables in a read-model database, and the guarded position updates that
make projections exactly-once.

- ``keel_projection_positions``: per projection and partition, the next offset to read (the
  offset just past the last event the read model reflects). It changes in the same SQL
  transaction as the read model, and only from the value the worker expects, so two workers (or
  a worker and a rebuild's swap) can never both move it: the loser rolls back.
- ``keel_projections``: each projection's version (a new version needs a rebuild).
- ``keel_dead_letters``: events a projection could not apply (see
  :mod:`framework.dead_letters`).

Alembic migrates them (``migrations/versions``); :data:`framework_metadata` is its target.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from framework.database import reaching
from framework.errors import PositionConflictError, ReadModelNotMigratedError

__all__ = [
    "POSITION_TABLES",
    "dead_letters_table",
    "framework_metadata",
    "positions_table",
    "projections_table",
    "read_positions",
    "read_version",
    "reporting_missing_tables",
    "require_tables",
    "write_positions",
    "write_version",
]

framework_metadata = sa.MetaData()
"""The framework's tables (Alembic's target, with every registered projection's tables)."""

positions_table = sa.Table(
    "keel_projection_positions",
    framework_metadata,
    sa.Column("projection", sa.String(200), primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("next_offset", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

projections_table = sa.Table(
    "keel_projections",
    framework_metadata,
    sa.Column("projection", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

dead_letters_table = sa.Table(
    "keel_dead_letters",
    framework_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("projection", sa.String(200), nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("aggregate_id", sa.String(36), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("event_type", sa.String(300), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("reason", sa.String(20), nullable=False),
    sa.Column("error_type", sa.String(200), nullable=False),
    sa.Column("error_message", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("projection", "partition", "offset", name="uq_keel_dead_letters_position"),
    sa.Index("ix_keel_dead_letters_aggregate", "projection", "aggregate_id"),
)

POSITION_TABLES = tuple(framework_metadata.sorted_tables)
"""The tables every projection's worker, status, rebuild and dead letters use."""


def require_tables(conn: Connection, what: str, tables: Iterable[sa.Table]) -> None:
    """Raise :class:`ReadModelNotMigratedError` (naming ``what`` and the tables) when any of
    ``tables`` is missing from the database."""
    inspector = sa.inspect(conn)
    missing = [t.name for t in tables if not inspector.has_table(t.name)]
    if missing:
        raise ReadModelNotMigratedError(what, missing)


@contextmanager
def reporting_missing_tables(
    engine: Engine, what: str, tables: Iterable[sa.Table] = POSITION_TABLES
) -> Iterator[None]:
    """Turn a database error raised inside the block into :class:`ReadModelNotMigratedError`
    when it came from missing ``tables``, and an unreachable database into the
    :class:`StoreUnavailableError` of :func:`framework.database.reaching`; any other error
    propagates unchanged. Nothing is inspected unless a statement failed, so the happy path
    costs nothing."""
    with reaching(engine, what):
        try:
            yield
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as error:
            # SQLite says OperationalError "no such table", PostgreSQL ProgrammingError
            # (UndefinedTable); a fresh connection, as the failed one's transaction is aborted.
            try:
                with engine.connect() as conn:
                    require_tables(conn, what, tables)
            except ReadModelNotMigratedError as missing:
                raise missing from error
            except sa.exc.SQLAlchemyError:
                pass  # cannot inspect either: the original error says more
            raise


def now() -> datetime:
    return datetime.now(UTC)


def read_positions(
    conn: Connection, projection: str, partitions: Collection[int] | None = None
) -> dict[int, int]:
    """The stored positions of ``projection`` (only ``partitions``, when given)."""
    t = positions_table
    query = sa.select(t.c.partition, t.c.next_offset).where(t.c.projection == projection)
    if partitions is not None:
        query = query.where(t.c.partition.in_(sorted(partitions)))
    return {int(p): int(o) for p, o in conn.execute(query)}


def write_positions(
    conn: Connection,
    projection: str,
    new: Mapping[int, int],
    expected: Mapping[int, int | None],
) -> None:
    """Move each partition's position from ``expected[p]`` (``None``: no row yet) to
    ``new[p]``, inside the caller's transaction. Raises :class:`PositionConflictError` when a
    stored position is not the expected one; the caller must roll back."""
    t = positions_table
    stamp = now()
    # Sorted, so two workers touching the same rows lock them in the same order.
    for partition in sorted(new):
        was = expected.get(partition)
        if was is None:
            try:
                with conn.begin_nested():
                    conn.execute(
                        t.insert().values(
                            projection=projection,
                            partition=partition,
                            next_offset=new[partition],
                            updated_at=stamp,
                        )
                    )
            except sa.exc.IntegrityError as error:
                raise PositionConflictError(
                    f"{projection} partition {partition}: another worker stored a position first"
                ) from error
            continue
        result = conn.execute(
            t.update()
            .where(
                t.c.projection == projection,
                t.c.partition == partition,
                t.c.next_offset == was,
            )
            .values(next_offset=new[partition], updated_at=stamp)
        )
        if result.rowcount != 1:
            raise PositionConflictError(
                f"{projection} partition {partition}: the stored position is no longer {was} "
                "(another worker or a rebuild moved it); rolled back"
            )


def read_version(conn: Connection, projection: str) -> int | None:
    """The version of ``projection`` its tables were built by, if it ever ran."""
    t = projections_table
    found = conn.execute(sa.select(t.c.version).where(t.c.projection == projection)).scalar()
    return None if found is None else int(found)


def write_version(conn: Connection, projection: str, version: int) -> None:
    """Record that ``projection``'s tables are built by ``version`` of its code."""
    t = projections_table
    result = conn.execute(
        t.update().where(t.c.projection == projection).values(version=version, updated_at=now())
    )
    if result.rowcount == 0:
        try:
            with conn.begin_nested():
                conn.execute(
                    t.insert().values(projection=projection, version=version, updated_at=now())
                )
        except sa.exc.IntegrityError:
            # Another worker of a new projection, starting at the same moment, inserted it.
            conn.execute(
                t.update()
                .where(t.c.projection == projection)
                .values(version=version, updated_at=now())
            )
