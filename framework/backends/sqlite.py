"""The embedded default: one SQLite file, ``sqlite:///path/to/events.db``.

WAL mode and a busy timeout (from the eventsourcing library's datastore) let several processes
share the file; SQLite serialises writers, so notification ids never interleave.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from eventsourcing.sqlite import (
    SQLiteAggregateRecorder,
    SQLiteApplicationRecorder,
    SQLiteDatastore,
)

from framework.backends.recorders import (
    SIZE_OPTIONS,
    RecorderEventStore,
    size_limits,
    translated_errors,
)
from framework.backends.url_options import Parser, parse_options, positive_integer
from framework.errors import ConfigurationError


def table_prefix(name: str) -> str:
    """A safe SQL identifier prefix for the application ``name``."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,40}", name):
        raise ConfigurationError(
            f"application name {name!r} must start with a letter and use only letters, digits "
            "and underscores (it names the store's tables)"
        )
    return name.lower()


OPTIONS: dict[str, Parser] = {"lock_timeout": positive_integer, **SIZE_OPTIONS}

_UNUSABLE_FILE = {
    sqlite3.SQLITE_NOTADB,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_PERM,
}
"""SQLite's answers for a file that can never be this store, however often one retries."""


def _sqlite_error(error: BaseException | None) -> sqlite3.Error | None:
    """The sqlite3 error behind ``error`` (the recorders wrap it, and we wrap theirs)."""
    while error is not None and not isinstance(error, sqlite3.Error):
        error = error.__cause__ or error.__context__
    return error


@contextmanager
def _opening(path: str) -> Iterator[None]:
    """A path that cannot hold the store, as a ConfigurationError naming the file and what to
    check; a busy or locked file stays the retryable error it is."""
    try:
        yield
    except Exception as error:
        cause = _sqlite_error(error)
        if not isinstance(error, OSError) and (
            cause is None or cause.sqlite_errorcode & 0xFF not in _UNUSABLE_FILE
        ):
            raise
        raise ConfigurationError(
            f"cannot open {Path(path).absolute()} as a keel SQLite event store "
            f"({cause or error}): check the store URL's path (is that file a keel SQLite "
            "store?) and that its directory exists or can be created, writable by this process"
        ) from error


def store_path(url: str) -> str:
    """The file a SQLite store URL names (``:memory:`` for an in-memory database)."""
    parts = urlsplit(url)
    path = parts.netloc if parts.netloc == ":memory:" else parts.path[1:]
    if not path:
        raise ConfigurationError(f"{url!r} names no file: use sqlite:///path/to/events.db")
    return path


def open_store(url: str, *, name: str) -> RecorderEventStore:
    """Open (creating when missing) the SQLite store that ``url`` names.

    ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``sqlite://:memory:``;
    ``?lock_timeout=10`` sets how many seconds a writer waits for the file lock;
    ``max_event_bytes`` and ``max_append_bytes`` set the size limits.
    """
    path = store_path(url)
    options = parse_options(urlsplit(url).query, OPTIONS, store="SQLite")
    max_event, max_append = size_limits(options)
    prefix = table_prefix(name)
    datastore = SQLiteDatastore(path, lock_timeout=options.get("lock_timeout", 30))
    events = SQLiteApplicationRecorder(datastore, events_table_name=f"{prefix}_events")
    snapshots = SQLiteAggregateRecorder(datastore, events_table_name=f"{prefix}_snapshots")
    try:
        with _opening(path), translated_errors():
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            events.create_table()
            snapshots.create_table()
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
