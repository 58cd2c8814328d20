"""The SQL stores never hang and never answer raw: a statement timeout on every PostgreSQL
append, the largest allowed append goes through, SQLite's own "string or blob too big" is the
framework's EventTooLargeError, bad limit options are refused, and a path SQLite cannot use is a
ConfigurationError naming the file."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from framework.application import Application
from framework.backends.recorders import translated_errors
from framework.errors import (
    ConfigurationError,
    EventTooLargeError,
    StoreError,
    StoreUnavailableError,
)
from framework.persistence import NewEvent, open_store


def psycopg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://").split("?")[0]


@pytest.mark.postgres
@pytest.mark.timeout(90)
def test_a_postgres_append_waiting_on_a_lock_times_out_typed(postgres_url: str) -> None:
    name = f"locked_{uuid.uuid4().hex[:8]}"
    with open_store(f"{postgres_url}?statement_timeout=1", name=name) as store:
        store.append([NewEvent(uuid.uuid4(), 1, "T.x", b"{}")])
        with psycopg.connect(psycopg_url(postgres_url)) as blocker:
            # Another session holds the table lock every append takes, and never lets go.
            blocker.execute(f"LOCK TABLE {name}_events IN EXCLUSIVE MODE")
            with pytest.raises(StoreUnavailableError, match="nothing was written"):
                store.append([NewEvent(uuid.uuid4(), 1, "T.x", b"{}")])
            blocker.rollback()
        a = uuid.uuid4()
        store.append([NewEvent(a, 1, "T.x", b"{}")])
        assert [e.version for e in store.read(a)] == [1]


@pytest.mark.postgres
@pytest.mark.timeout(90)
def test_the_largest_postgres_append_goes_through(postgres_url: str) -> None:
    # 50 events of 100 kB (5 MB) stalled the recorder's pipeline for good; 3 MiB is the cap.
    cap = 3 * 1024 * 1024
    name = f"large_{uuid.uuid4().hex[:8]}"
    with open_store(f"{postgres_url}?max_append_bytes={cap}", name=name) as store:
        for count, size in ((30, 100_000), (1000, 3_000), (3, 1_040_000)):
            a = uuid.uuid4()
            store.append([NewEvent(a, v, "T.x", b"x" * size) for v in range(1, count + 1)])
            assert len(store.read(a)) == count
    with pytest.raises(ConfigurationError, match="max_append_bytes"):
        open_store(f"{postgres_url}?max_append_bytes={cap + 1}", name=name)


def test_sqlites_own_blob_limit_is_event_too_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect = sqlite3.connect

    def limited(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 100_000)  # below the store's own limit
        return conn

    monkeypatch.setattr(sqlite3, "connect", limited)
    with open_store(f"sqlite:///{tmp_path}/e.db?max_event_bytes=500000", name="blob") as store:
        a = uuid.uuid4()
        with pytest.raises(EventTooLargeError, match="Nothing was written"):
            store.append([NewEvent(a, 1, "T.x", b"x" * 200_000)])
        assert store.read(a) == []
        store.append([NewEvent(a, 1, "T.x", b"x" * 1000)])
        assert len(store.read(a)) == 1


@pytest.mark.parametrize(
    "query", ["max_event_bytes=0", "max_event_bytes=ten", "max_append_bytes=-5"]
)
def test_bad_size_options_are_refused(tmp_path: Path, query: str) -> None:
    for url in ("memory://", f"sqlite:///{tmp_path}/e.db"):
        with pytest.raises(ConfigurationError, match="positive number of bytes"):
            open_store(f"{url}?{query}", name="opts")


def test_size_options_are_honoured(tmp_path: Path) -> None:
    with open_store("memory://?max_event_bytes=1000", name="opts") as store:
        store.append([NewEvent(uuid.uuid4(), 1, "T.x", b"x" * 900)])
        with pytest.raises(EventTooLargeError, match="accepts 1000"):
            store.append([NewEvent(uuid.uuid4(), 1, "T.x", b"x" * 1000)])


@pytest.mark.postgres
def test_libpq_parameters_on_a_postgres_url_reach_the_driver(postgres_url: str) -> None:
    tag = f"keel_probe_{uuid.uuid4().hex[:8]}"
    with open_store(f"{postgres_url}?application_name={tag}&pool_size=1", name="libpq") as store:
        store.append([NewEvent(uuid.uuid4(), 1, "T.x", b"{}")])
        with psycopg.connect(psycopg_url(postgres_url)) as conn:
            found = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (tag,)
            ).fetchone()
        assert found is not None and found[0] >= 1


def test_a_file_that_is_not_a_sqlite_store_is_refused_by_name(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database, " * 100)
    with pytest.raises(ConfigurationError, match="file is not a database") as refused:
        Application("x", f"sqlite:///{notes}")
    assert str(notes) in str(refused.value) and "keel SQLite store" in str(refused.value)
    assert notes.read_text().startswith("not a database")  # left as it was


@pytest.mark.parametrize("where", ["a directory", "under a file"])
def test_a_path_sqlite_cannot_open_is_refused_with_what_to_check(
    tmp_path: Path, where: str
) -> None:
    # Root may write anywhere, so an unwritable directory is a directory or a file in the way.
    taken = tmp_path / "taken"
    if where == "a directory":
        taken.mkdir()
        path = taken
    else:
        taken.touch()
        path = taken / "e.db"
    with pytest.raises(ConfigurationError, match="its directory exists or can be created") as e:
        open_store(f"sqlite:///{path}", name="x")
    assert str(path) in str(e.value)


def test_sqlite3s_own_errors_stay_in_the_framework_tree() -> None:
    # The recorder lets sqlite3's errors through when it sets up a new connection.
    with pytest.raises(StoreError, match="disk I/O error"), translated_errors():
        raise sqlite3.OperationalError("disk I/O error")
