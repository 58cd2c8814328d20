"""PostgreSQL event store: ``postgresql://user:password@host:port/dbname``.

The eventsourcing library's recorder takes a table lock per insert, so concurrent transactions
never commit notification ids out of order: a reader tailing the feed cannot skip an event.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresDatastore,
)

from framework.backends.recorders import RecorderEventStore, translated_errors
from framework.backends.sqlite import table_prefix
from framework.errors import ConfigurationError


def open_store(url: str, *, name: str) -> RecorderEventStore:
    """Open (creating tables when missing) the PostgreSQL store that ``url`` names.

    ``?pool_size=5`` sets the connection pool size.
    """
    parts = urlsplit(url)
    dbname = parts.path.lstrip("/")
    if not (parts.hostname and dbname):
        raise ConfigurationError(
            f"{url!r} needs a host and a database: postgresql://user:password@host:5432/dbname"
        )
    options = parse_qs(parts.query)
    pool_size = int(options.get("pool_size", ["5"])[0])
    with translated_errors():
        datastore = PostgresDatastore(
            dbname=dbname,
            host=parts.hostname,
            port=parts.port or 5432,
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password or ""),
            pool_size=pool_size,
            max_overflow=pool_size,
            pre_ping=True,
        )
    prefix = table_prefix(name)
    events = PostgresApplicationRecorder(datastore, events_table_name=f"{prefix}_events")
    snapshots = PostgresAggregateRecorder(datastore, events_table_name=f"{prefix}_snapshots")
    with translated_errors():
        events.create_table()
        snapshots.create_table()
    return RecorderEventStore(name, events, snapshots, close=datastore.close)
