"""Read-model databases: engines configured for projection workers, and how their errors are
told apart (the database went away, or a handler is wrong).

SQLite gets WAL, a busy timeout and real transactions (``BEGIN IMMEDIATE`` for writers, so two
processes never deadlock upgrading a read lock; DDL inside transactions, which the rebuild's
swap needs). PostgreSQL gets ``pool_pre_ping`` so a connection killed while idle is replaced.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url

from framework.errors import ConfigurationError, FrameworkError, StoreUnavailableError
from framework.settings import database_url, normalise_database_url

__all__ = [
    "DDL_LOCK",
    "Backoff",
    "create_engine",
    "engine_for",
    "is_connectivity_error",
    "reaching",
    "read_only",
    "serialize_ddl",
    "without_password",
]

log = logging.getLogger(__name__)

READ_ONLY = "keel_read_only"


def without_password(url: str | sa.URL) -> str:
    """``url`` fit for an error message or a log: its password hidden (text that does not parse
    as a URL is shown as it is)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return str(url)


def create_engine(url: str, *, what: str = "database", **kwargs: Any) -> Engine:
    """An engine for a read-model database at ``url`` (SQLite or PostgreSQL). It connects
    lazily; a URL that does not parse or names no installed dialect or driver is a
    :class:`ConfigurationError` naming ``what`` and the URL (password hidden)."""
    try:
        return _create_engine(normalise_database_url(url), kwargs)
    except (sa.exc.ArgumentError, ImportError) as error:  # ImportError: a driver not installed
        raise ConfigurationError(f"{what} {without_password(url)!r}: {error}") from error


def _create_engine(url: str, kwargs: dict[str, Any]) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        return sa.create_engine(url, **kwargs)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("timeout", 30)
    engine = sa.create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin() emit BEGIN itself (the pysqlite driver's own is broken).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if parsed.database and parsed.database != ":memory:":
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextmanager
def reaching(engine: Engine, what: str) -> Iterator[None]:
    """Turn an unreachable database (or a broken connection) inside the block into a
    :class:`StoreUnavailableError` naming ``what`` and the database, password hidden: an
    operator learns which database to check, not a driver traceback. It is a ConnectionError,
    so whoever retries outages still does; other errors propagate unchanged."""
    try:
        yield
    except Exception as error:
        # Already typed (an inner block's, another store's, a missing table): keep it.
        if isinstance(error, FrameworkError) or not is_connectivity_error(error):
            raise
        reason = " ".join(str(getattr(error, "orig", None) or error).split())
        raise StoreUnavailableError(
            f"{what}: cannot reach its database {without_password(engine.url)} ({reason})"
        ) from error


def engine_for(projection: str | None = None) -> Engine:
    """An engine for ``projection``'s configured database (see :mod:`framework.settings`)."""
    return create_engine(database_url(projection))


def read_only(conn: Connection) -> Connection:
    """Mark ``conn`` as read-only, so SQLite does not take the write lock for it."""
    return conn.execution_options(**{READ_ONLY: True})


# SQLite reports programming mistakes as OperationalError too; these are not outages.
_SQLITE_MISTAKES = ("syntax error", "no such column", "has no column", 'near "')


DDL_LOCK = "keel:tables"
"""The PostgreSQL advisory lock (``hashtext`` of it) under which keel creates tables."""


def serialize_ddl(conn: Connection) -> None:
    """Within ``conn``'s transaction, wait for any other process creating keel's tables:
    processes that start at once on a fresh PostgreSQL database race in its catalogue even
    under ``IF NOT EXISTS`` ("tuple concurrently updated", a duplicate key in ``pg_type``).
    Other databases serialise DDL themselves."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": DDL_LOCK})


def is_connectivity_error(error: BaseException) -> bool:
    """Whether ``error`` means the database is unreachable or the connection broke (retry the
    same work later) rather than that a handler or statement is wrong (a poison event)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa.exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sa.exc.OperationalError | sa.exc.InterfaceError):
            message = str(current.orig if current.orig is not None else current).lower()
            return not any(m in message for m in _SQLITE_MISTAKES)
        if isinstance(current, sa.exc.PendingRollbackError | sa.exc.DisconnectionError):
            return True
        if isinstance(current, sa.exc.TimeoutError | ConnectionError):
            return True
        module = type(current).__module__
        if module.startswith("psycopg") and type(current).__name__ in {
            "OperationalError",
            "InterfaceError",
        }:
            return True
        current = current.__cause__ or current.__context__
    return False


@dataclass
class Backoff:
    """Capped exponential backoff: ``initial``, doubling, at most ``cap`` seconds."""

    initial: float
    cap: float
    attempts: int = 0
    delays: list[float] = field(default_factory=list)
    """Every delay handed out so far (tests and logs report them)."""

    def next(self) -> float:
        delay = float(min(self.cap, self.initial * 2.0**self.attempts))
        self.attempts += 1
        self.delays.append(delay)
        return delay

    def reset(self) -> None:
        self.attempts = 0

    def sleep(self, stop: threading.Event | None) -> bool:
        """Wait the next delay; ``False`` when ``stop`` was set meanwhile."""
        delay = self.next()
        if stop is None:
            threading.Event().wait(delay)
            return True
        return not stop.wait(delay)


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
