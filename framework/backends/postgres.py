"""PostgreSQL event store: ``postgresql://user:password@host:port/dbname``.

The eventsourcing library's recorder takes a table lock per insert, so concurrent transactions
never commit notification ids out of order: a reader tailing the feed cannot skip an event.

No call can hang: every statement has a ``statement_timeout``, waiting for the table lock a
``lock_timeout``, and a session idle inside a transaction (a client that died holding the lock)
is ended by the server after the same time. A timeout is a ``StoreUnavailableError``; the
append was rolled back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresDatastore,
)
from psycopg import pq
from psycopg.sql import SQL, Literal

from framework.backends.recorders import (
    SIZE_OPTIONS,
    RecorderEventStore,
    size_limits,
    translated_errors,
)
from framework.backends.sqlite import table_prefix
from framework.backends.url_options import Parser, number, parse_options, positive_integer, text
from framework.database import DDL_LOCK
from framework.errors import ConfigurationError

MAX_APPEND_BYTES = 3 * 1024 * 1024
"""The most one append may send: the recorder's pipeline stalled for good at about 5 MB."""


def _seconds(value: str) -> float:
    try:
        seconds = number(value)
    except ValueError:
        seconds = 0.0
    if not seconds >= 1:  # NaN too
        raise ValueError("must be a number of seconds, at least 1")
    return seconds


_URL_PARTS = {"host", "hostaddr", "port", "dbname", "user", "password"}
LIBPQ_OPTIONS = frozenset(
    o.keyword.decode() for o in pq.Conninfo.get_defaults() if o.keyword.decode() not in _URL_PARTS
)
"""libpq's connection parameters (``sslmode``, ``application_name``, ...), passed to the driver;
the URL's own parts give the host, port, database, user and password."""

KEEL_OPTIONS: dict[str, Parser] = {
    "pool_size": positive_integer,
    "statement_timeout": _seconds,
    **SIZE_OPTIONS,
}


class _Datastore(PostgresDatastore):
    """The library's datastore, with a statement timeout on every connection and libpq's
    connection parameters passed through."""

    def __init__(
        self,
        *args: Any,
        statement_timeout: float,
        connect_options: dict[str, str],
        **kwargs: Any,
    ) -> None:
        self.statement_timeout = statement_timeout
        super().__init__(*args, **kwargs)
        # The library builds the pool's connect arguments itself (a dict); the pool, not yet
        # open, reads its kwargs attribute for every connection it makes.
        connect_kwargs = self.pool.kwargs
        assert isinstance(connect_kwargs, dict)
        connect_kwargs.update(connect_options)

    def after_connect_func(self) -> Callable[[Any], None]:
        configure = super().after_connect_func()
        statement = SQL("SET statement_timeout = {0}").format(
            Literal(f"{int(self.statement_timeout * 1000)}ms")
        )

        def after_connect(conn: Any) -> None:
            configure(conn)
            conn.cursor().execute(statement)

        return after_connect


def parse_url(url: str) -> dict[str, Any]:
    """The datastore's keyword arguments that ``url`` spells, and its size limits
    (``max_event_bytes``, ``max_append_bytes``); refuses an unknown option before connecting.

    ``?pool_size=5`` sets the connection pool size; ``statement_timeout=30`` the seconds any
    statement (and any wait for the table lock) may take; ``max_event_bytes`` and
    ``max_append_bytes`` the size limits (at most 3 MiB per append). libpq's connection
    parameters (``sslmode=verify-full``, ``application_name=...``) go to the driver.
    """
    parts = urlsplit(url)
    dbname = parts.path.lstrip("/")
    if not (parts.hostname and dbname):
        raise ConfigurationError(
            f"{url!r} needs a host and a database: postgresql://user:password@host:5432/dbname"
        )
    options = parse_options(
        parts.query,
        {**KEEL_OPTIONS, **dict.fromkeys(LIBPQ_OPTIONS, text)},
        store="PostgreSQL",
        unlisted=LIBPQ_OPTIONS,
        also=", and libpq's connection parameters (sslmode, application_name, ...)",
    )
    max_event, max_append = size_limits(options, cap=MAX_APPEND_BYTES)
    pool_size = options.get("pool_size", 5)
    timeout = options.get("statement_timeout", 30.0)
    return {
        "dbname": dbname,
        "host": parts.hostname,
        "port": parts.port or 5432,
        "user": unquote(parts.username or "postgres"),
        "password": unquote(parts.password or ""),
        "pool_size": pool_size,
        "max_overflow": pool_size,
        "statement_timeout": timeout,
        "lock_timeout": int(timeout),
        "idle_in_transaction_session_timeout": timeout,
        "connect_options": {k: options[k] for k in LIBPQ_OPTIONS & options.keys()},
        "max_event_bytes": max_event,
        "max_append_bytes": max_append,
    }


def open_store(url: str, *, name: str) -> RecorderEventStore:
    """Open (creating tables when missing) the PostgreSQL store that ``url`` names (its options:
    :func:`parse_url`)."""
    settings = parse_url(url)
    max_event = settings.pop("max_event_bytes")
    max_append = settings.pop("max_append_bytes")
    with translated_errors():
        datastore = _Datastore(pre_ping=True, **settings)
    prefix = table_prefix(name)
    try:
        with translated_errors():  # the recorders connect at once (to register their types)
            events = PostgresApplicationRecorder(datastore, events_table_name=f"{prefix}_events")
            snapshots = PostgresAggregateRecorder(
                datastore, events_table_name=f"{prefix}_snapshots"
            )
        with translated_errors(), datastore.get_connection() as conn:
            # Processes starting at once on a fresh database race in PostgreSQL's catalogue
            # even under IF NOT EXISTS (the stores of a schema share a composite type, too):
            # one creates, the others wait. The pool's connections autocommit: a session lock.
            conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (DDL_LOCK,))
            try:
                events.create_table()
                snapshots.create_table()
            finally:
                # A broken connection is dropped by the pool, and its lock with it.
                with contextlib.suppress(Exception):
                    conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (DDL_LOCK,))
    except BaseException:
        datastore.close()
        raise
    return RecorderEventStore(
        name,
        events,
        snapshots,
        close=datastore.close,
        max_event_bytes=max_event,
        max_append_bytes=max_append,
    )
