"""The local index of a Kafka events topic: SQLite, rebuilt from the topic whenever it is lost.

Each process keeps its own file with every committed record of the topic, keyed both by
``(partition, offset)`` (the feed) and by ``(aggregate_id, version)`` (one aggregate's events),
plus each partition's read position, written in the same SQLite transaction as the records it
covers. Deleting the file only costs a rebuild: :class:`TopicIndex` reads the topic again with
``read_committed`` from offset 0. Snapshots live here too; they are a cache of derivable state.

The writer adds the records of its own committed transactions at once (their offsets are known
from the produce responses), ahead of the read position; catching up later skips them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import sqlite3
import struct
import tempfile
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar
from uuid import UUID

from framework.backends.kafka_client import KafkaConsumer, KafkaError, TopicPartition
from framework.backends.kafka_records import NIL_UUID, decode_record
from framework.errors import (
    ConfigurationError,
    IndexDamagedError,
    StoreError,
    StoreUnavailableError,
)
from framework.persistence import RecordedEvent, Snapshot

__all__ = ["LocalIndex", "TopicIndex", "default_index_path"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = "2"
# Every row carries a CRC-32 of its content (see _checksum), verified whenever it is read.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    part INTEGER NOT NULL,
    off INTEGER NOT NULL,
    aggregate_id BLOB NOT NULL,
    version INTEGER NOT NULL,
    topic TEXT NOT NULL,
    state BLOB NOT NULL,
    indexed INTEGER NOT NULL,
    problem TEXT NOT NULL,
    checksum INTEGER NOT NULL,
    PRIMARY KEY (part, off)
);
CREATE UNIQUE INDEX IF NOT EXISTS records_by_aggregate
    ON records (aggregate_id, version) WHERE indexed = 1;
CREATE TABLE IF NOT EXISTS positions (
    part INTEGER PRIMARY KEY,
    next_offset INTEGER NOT NULL,
    checksum INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    aggregate_id BLOB PRIMARY KEY,
    version INTEGER NOT NULL,
    topic TEXT NOT NULL,
    state BLOB NOT NULL,
    checksum INTEGER NOT NULL
);
"""
_COLUMNS = "part, off, aggregate_id, version, topic, state, indexed, problem, checksum"

Row = tuple[int, int, bytes, int, str, bytes, int, str, int]
T = TypeVar("T")


def default_index_dir() -> Path:
    """Where index files go unless the URL names one: ``$KEEL_KAFKA_INDEX_DIR`` or a temp dir."""
    configured = os.environ.get("KEEL_KAFKA_INDEX_DIR")
    base = Path(configured) if configured else Path(tempfile.gettempdir()) / "keel-kafka-index"
    base.mkdir(parents=True, exist_ok=True)
    return base


STALE_SLOT_DAYS = 7.0
"""A free index slot unused this long is deleted (``$KEEL_KAFKA_INDEX_MAX_AGE_DAYS``)."""


def default_index_path(topic: str) -> tuple[Path, TextIO]:
    """The first free slot ``<topic>.<n>.sqlite`` of the index dir, locked for this instance.

    A slot is held by an exclusive ``flock`` for the store's life, so concurrent processes (and
    several stores in one process) never share a file, while a restarted process reuses a free
    one and only reads what it lacks; the OS drops the lock when a process dies. Free slots of
    any topic left unused for a week are deleted on the way (:func:`prune_index_slots`).
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", topic)
    base = default_index_dir()
    for slot in range(10_000):
        path = base / f"{safe}.{slot}.sqlite"
        lock = lock_index_file(path)
        if lock is not None:
            prune_index_slots(base, keep=path)
            return path, lock
    raise ConfigurationError(f"no free index slot for {topic!r} in {base}")


def prune_index_slots(base: Path, *, keep: Path, max_age_days: float | None = None) -> list[Path]:
    """Delete index files in ``base`` that no store holds and nothing touched for
    ``max_age_days``; return the deleted ones. An index is a cache: deleting it only costs
    the next process that uses the slot a read of the topic."""
    if max_age_days is None:
        max_age_days = float(os.environ.get("KEEL_KAFKA_INDEX_MAX_AGE_DAYS", STALE_SLOT_DAYS))
    cutoff = time.time() - max_age_days * 86400
    deleted = []
    for path in sorted(base.glob("*.sqlite")):
        if path == keep:
            continue
        try:
            newest = max(p.stat().st_mtime for p in (path, Path(f"{path}-wal")) if p.exists())
        except (OSError, ValueError):
            continue
        if newest > cutoff:
            continue
        lock = lock_index_file(path)
        if lock is None:
            continue  # in use
        try:
            for part in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
            deleted.append(path)
        finally:
            lock.close()
    if deleted:
        log.info("deleted %d stale Kafka index file(s) from %s", len(deleted), base)
    return deleted


def lock_index_file(path: Path) -> TextIO | None:
    """Lock ``path``'s companion lock file, or return None when another instance holds it."""
    handle = open(f"{path}.lock", "a")  # noqa: SIM115 - held open for the store's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


class _Damaged(Exception):
    """Raised inside :class:`LocalIndex` when a check fails; handled by a rebuild."""


class LocalIndex:
    """The SQLite file: records, read positions, snapshots. Safe to share between threads.

    Damage is detected, not served: opening runs SQLite's ``quick_check``, and every row read
    is checked against the CRC-32 stored with it. A damaged file (or one of another schema) is
    replaced by an empty one, which ``refill`` (set by :class:`TopicIndex`) reads back from the
    topic before the read is answered. A full disk or an unwritable file is a
    ``StoreUnavailableError`` naming the file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.refill: Callable[[], None] | None = None
        self.rebuilds = 0
        """How many times a damaged file was replaced and rebuilt from the topic."""
        self._bound: dict[str, str] = {}
        self._lock = threading.RLock()
        with self._lock:
            self._db = self._open()

    # -- the file ---------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        """Connect, replacing a file that is damaged or of another schema by an empty one."""
        problem = ""
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as error:
            raise self._unavailable("cannot be opened", error) from error
        try:
            problem = _file_problem(db)
            if not problem:
                # One connection, serialised by a lock: statements are short, and WAL keeps the
                # file consistent if the process dies mid-write.
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(SCHEMA)
                return db
        except sqlite3.OperationalError as error:
            db.close()
            raise self._unavailable("cannot be opened", error) from error
        except sqlite3.DatabaseError as error:
            problem = f"SQLite reports {error}"
        db.close()
        if problem != "empty":
            log.warning(
                "index %s %s; replacing it and rebuilding it from the topic", self.path, problem
            )
        self._remove_files()
        return self._open()

    def _remove_files(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.remove(self.path + suffix)
            except FileNotFoundError:
                pass
            except OSError as error:
                raise IndexDamagedError(
                    f"the local index {self.path} is damaged and cannot be removed ({error}); "
                    "delete it by hand (the store rebuilds it from the topic)"
                ) from error

    def reset(self, reason: str) -> None:
        """Replace the file by an empty one (rebound to the same topic); the next catch-up
        reads the whole topic again."""
        with self._lock:
            log.warning("index %s: %s; rebuilding it from the topic", self.path, reason)
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._remove_files()
            self._db = self._open()
            self.rebuilds += 1
            if self._bound:
                self._write_meta(self._bound)

    def _unavailable(self, what: str, error: sqlite3.Error) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"the local index {self.path} {what}: {error}. Free disk space or fix the file's "
            "permissions; deleting the file is safe (the store rebuilds it from the topic)"
        )

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """SQLite errors as the framework's: damage as _Damaged, the rest as unavailable."""
        try:
            yield
        except sqlite3.DatabaseError as error:
            if _is_damage(error):
                raise _Damaged(f"SQLite reports {error}") from error
            raise self._unavailable(f"cannot be {what}", error) from error

    def _checked(self, read: Callable[[], T]) -> T:
        """Run ``read``; on damage rebuild the file from the topic and run it once more."""
        for attempt in range(2):
            try:
                with self._lock, self._guard("read"):
                    return read()
            except _Damaged as damage:
                if attempt == 1 or self.refill is None:
                    raise IndexDamagedError(
                        f"the local index {self.path} is damaged ({damage}) even after a "
                        "rebuild from the topic; stop the process, delete the file (the store "
                        "rebuilds it) and check the disk"
                    ) from damage
                self.reset(str(damage))
            self.refill()
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _transaction(self, what: str = "written") -> Iterator[sqlite3.Connection]:
        try:
            with self._lock, self._guard(what):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
        except _Damaged as damage:
            raise IndexDamagedError(
                f"the local index {self.path} is damaged ({damage})"
            ) from damage

    def bind(self, topic: str, topic_id: str) -> None:
        """Check the file indexes this very topic (not a deleted namesake); else empty it."""
        wanted = {"schema": SCHEMA_VERSION, "topic": topic, "topic_id": topic_id}
        self._bound = wanted
        try:
            with self._lock, self._guard("read"):
                meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except _Damaged as damage:
            self.reset(str(damage))
            return
        if meta and meta != wanted:
            self.reset(f"it was built for {meta}")
        elif not meta:
            self._write_meta(wanted)

    def _write_meta(self, meta: Mapping[str, str]) -> None:
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", meta.items())

    # -- writing ------------------------------------------------------------------------------

    def positions(self) -> dict[int, int]:
        """Each partition's read position: every committed record below it is indexed.
        Raises IndexDamagedError when a stored position fails its checksum."""
        with self._lock:
            try:
                with self._guard("read"):
                    rows = self._db.execute(
                        "SELECT part, next_offset, checksum FROM positions"
                    ).fetchall()
                for part, offset, checksum in rows:
                    if checksum != _crc(part, offset):
                        raise _Damaged(f"the read position of partition {part} fails its checksum")
            except _Damaged as damage:
                raise IndexDamagedError(
                    f"the local index {self.path} is damaged ({damage})"
                ) from damage
            return {part: offset for part, offset, _ in rows}

    def apply(self, events: Sequence[RecordedEvent], positions: Mapping[int, int]) -> None:
        """Add records read from the topic and move the read positions, in one transaction."""
        with self._transaction() as db:
            self._insert(db, events)
            known = dict(db.execute("SELECT part, next_offset FROM positions").fetchall())
            moved = [
                (p, offset, _crc(p, offset))
                for p, offset in positions.items()
                if offset > known.get(p, -1)
            ]
            db.executemany(
                "INSERT OR REPLACE INTO positions (part, next_offset, checksum) VALUES (?, ?, ?)",
                moved,
            )

    def add_committed(self, events: Sequence[RecordedEvent]) -> None:
        """Add the records of a transaction this process committed (ahead of the position).
        Raises ``sqlite3.Error`` when it cannot (the writer then re-initialises, which catches
        up from the topic); a damaged file is replaced first."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._insert(self._db, events)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as error:
                if _is_damage(error):
                    self.reset(f"SQLite reports {error}")
                raise

    def _insert(self, db: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        sql = (
            f"INSERT INTO records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (part, off) DO NOTHING"
        )
        rows = [_row(e) for e in events]
        db.execute("SAVEPOINT batch")
        try:
            db.executemany(sql, rows)
        except sqlite3.IntegrityError:
            # Some version is taken at another offset: only a foreign writer can do that.
            db.execute("ROLLBACK TO batch")
            for row in rows:
                try:
                    db.execute(sql, row)
                except sqlite3.IntegrityError:
                    self._keep_first(db, sql, row)
        db.execute("RELEASE batch")

    def _keep_first(self, db: sqlite3.Connection, sql: str, row: Row) -> None:
        """Two records claim one version: the first in the partition wins, wherever it was
        inserted from, so every process's index agrees."""
        taken = db.execute(
            "SELECT part, off FROM records WHERE aggregate_id = ? AND version = ? AND indexed = 1",
            (row[2], row[3]),
        ).fetchone()
        first, second = ((row[0], row[1]), tuple(taken))
        if (taken[0], taken[1]) < (row[0], row[1]):
            first, second = second, first
        problem = (
            f"it repeats version {row[3]} of aggregate {UUID(bytes=row[2])}, taken first at "
            f"partition {first[0]} offset {first[1]}: a writer bypassed the store's fencing"
        )
        log.error(
            "partition %s offset %s: %s. Keeping the first, ignoring this one",
            second[0],
            second[1],
            problem,
        )
        if second == (row[0], row[1]):
            db.execute(sql, _with_problem(row, problem))
            return
        old = db.execute(
            f"SELECT {_COLUMNS} FROM records WHERE part = ? AND off = ?", second
        ).fetchone()
        db.execute("DELETE FROM records WHERE part = ? AND off = ?", second)
        db.execute(sql, row)
        db.execute(sql, _with_problem(tuple(old[:8]), problem))

    # -- reading ------------------------------------------------------------------------------

    def current_versions(self, aggregate_ids: Iterable[UUID]) -> dict[UUID, int]:
        """Each aggregate's last version (0 when it has none)."""

        def read() -> dict[UUID, int]:
            found: dict[UUID, int] = {}
            for aggregate_id in set(aggregate_ids):
                row = self._db.execute(
                    f"SELECT {_COLUMNS} FROM records WHERE aggregate_id = ? AND indexed = 1 "
                    "ORDER BY version DESC LIMIT 1",
                    (aggregate_id.bytes,),
                ).fetchone()
                found[aggregate_id] = 0 if row is None else _event(row).version
            return found

        return self._checked(read)

    def contains(self, event: RecordedEvent) -> bool:
        """Whether the record at ``event``'s offset is this event (same aggregate, version)."""

        def read() -> bool:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM records WHERE part = ? AND off = ?",
                (event.partition, event.offset),
            ).fetchone()
            if row is None:
                return False
            _event(row)
            return (row[2], row[3]) == (event.aggregate_id.bytes, event.version)

        return self._checked(read)

    def aggregate_events(
        self, aggregate_id: UUID, after_version: int, up_to_version: int | None
    ) -> list[RecordedEvent]:
        """One aggregate's events, in version order."""

        def read() -> list[RecordedEvent]:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM records "
                "WHERE aggregate_id = ? AND indexed = 1 AND version > ? AND version <= ? "
                "ORDER BY version",
                (aggregate_id.bytes, after_version, up_to_version or 2**62),
            ).fetchall()
            return [_event(row) for row in rows]

        return self._checked(read)

    def partition_events(self, partition: int, start: int, limit: int) -> list[RecordedEvent]:
        """Up to ``limit`` records of ``partition`` from ``start``, below its read position.
        Records in no aggregate's stream come with the nil id, version 0 and their problem."""

        def read() -> list[RecordedEvent]:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM records "
                "WHERE part = ? AND off >= ? AND off < "
                "(SELECT coalesce(max(next_offset), 0) FROM positions WHERE part = ?) "
                "ORDER BY off LIMIT ?",
                (partition, start, partition, limit),
            ).fetchall()
            return [_event(row) for row in rows]

        return self._checked(read)

    def problems(self, partition: int, offsets: Iterable[int]) -> dict[int, str]:
        """The records at ``offsets`` of ``partition`` that are in no aggregate's stream, each
        with its problem (the feed uses it to apply the index's rule to what it polled)."""
        wanted = sorted(set(offsets))

        def read() -> dict[int, str]:
            if not wanted:
                return {}
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM records WHERE part = ? AND off BETWEEN ? AND ? "
                "AND indexed = 0",
                (partition, wanted[0], wanted[-1]),
            ).fetchall()
            return {row[1]: _event(row).problem for row in rows if row[1] in set(wanted)}

        return self._checked(read)

    def anomalies(self) -> dict[str, int]:
        """How many records of the topic are ``malformed`` (they break the record layout) and
        how many are ``duplicate`` (they repeat a version taken first by another record: some
        writer bypassed the store's fencing). Both should be 0."""

        def read() -> dict[str, int]:
            malformed, duplicate = self._db.execute(
                "SELECT coalesce(sum(aggregate_id = ?), 0), coalesce(sum(aggregate_id != ?), 0) "
                "FROM records WHERE indexed = 0",
                (NIL_UUID.bytes, NIL_UUID.bytes),
            ).fetchone()
            return {"malformed": int(malformed), "duplicate": int(duplicate)}

        return self._checked(read)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot`` unless a newer one of its aggregate is kept already."""
        row = (snapshot.aggregate_id.bytes, snapshot.version, snapshot.topic, snapshot.state)
        try:
            self._keep_snapshot(row)
        except IndexDamagedError as error:
            self.reset(str(error))  # the next read rebuilds the index from the topic
        except StoreUnavailableError as error:
            # A snapshot is a cache: failing to keep one must not fail the command behind it.
            log.warning("index %s: could not keep a snapshot: %s", self.path, error)

    def _keep_snapshot(self, row: tuple[bytes, int, str, bytes]) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO snapshots (aggregate_id, version, topic, state, checksum) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (aggregate_id) DO UPDATE SET version = excluded.version, "
                "topic = excluded.topic, state = excluded.state, checksum = excluded.checksum "
                "WHERE excluded.version > snapshots.version",
                (*row, _crc(*row)),
            )

    def latest_snapshot(self, aggregate_id: UUID) -> Snapshot | None:
        """The newest snapshot kept of ``aggregate_id`` (a damaged one is dropped: it is a
        cache, and the events rebuild the aggregate)."""

        def read() -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = self._db.execute(
                "SELECT version, topic, state, checksum FROM snapshots WHERE aggregate_id = ?",
                (aggregate_id.bytes,),
            ).fetchone()
            return row

        row = self._checked(read)
        if row is None:
            return None
        version, topic, state = row[0], row[1], bytes(row[2])
        if row[3] != _crc(aggregate_id.bytes, version, topic, state):
            log.warning(
                "index %s: the snapshot of %s fails its checksum; dropping it",
                self.path,
                aggregate_id,
            )
            with contextlib.suppress(StoreError), self._transaction() as db:
                db.execute("DELETE FROM snapshots WHERE aggregate_id = ?", (aggregate_id.bytes,))
            return None
        return Snapshot(aggregate_id, version, topic, state)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()


def _file_problem(db: sqlite3.Connection) -> str:
    """Why the file cannot be used as is (``"empty"`` for a new file), or ``""``."""
    if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
        return "fails SQLite's integrity check"
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return ""
    if "meta" not in tables:
        return "has no meta table"
    schema = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if schema is None:
        return "" if tables == {"meta"} else "has no schema version"
    if schema[0] != SCHEMA_VERSION:
        return f"has schema {schema[0]}, not {SCHEMA_VERSION}"
    return ""


def _is_damage(error: sqlite3.DatabaseError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    return not isinstance(error, sqlite3.OperationalError)


def _crc(*values: int | str | bytes) -> int:
    """A CRC-32 of ``values`` in one unambiguous encoding (each value's length, then it)."""
    parts = [
        value.encode("utf-8")
        if isinstance(value, str)
        else value
        if isinstance(value, bytes)
        else b"%d" % value
        for value in values
    ]
    lengths = b",".join(b"%d" % len(part) for part in parts)
    return zlib.crc32(b"".join(parts), zlib.crc32(lengths))


def _row(event: RecordedEvent) -> Row:
    # A record in no aggregate's stream keeps its problem, and never enters the unique index.
    content = (
        event.partition,
        event.offset,
        event.aggregate_id.bytes,
        event.version,
        event.topic,
        event.state,
        0 if event.problem else 1,
        event.problem,
    )
    return (*content, _crc(*content))


def _with_problem(row: tuple[Any, ...], problem: str) -> Row:
    content = (*row[:6], 0, problem)
    return (*content, _crc(*content))


def _event(row: Any) -> RecordedEvent:
    """The event a row holds, once its checksum matches."""
    content = (row[0], row[1], bytes(row[2]), row[3], row[4], bytes(row[5]), row[6], row[7])
    if row[8] != _crc(*content):
        raise _Damaged(f"the record at partition {row[0]} offset {row[1]} fails its checksum")
    if row[7]:
        return RecordedEvent(NIL_UUID, 0, row[4], content[5], row[0], row[1], row[7])
    return RecordedEvent(UUID(bytes=content[2]), row[3], row[4], content[5], row[0], row[1])


_LIVE: dict[str, weakref.WeakSet[TopicIndex]] = {}
_LIVE_LOCK = threading.Lock()


def _left(deadline: float) -> float:
    """Seconds to ``deadline``, at least 0.2 (a Kafka request needs some)."""
    return max(0.2, deadline - time.monotonic())


class TopicIndex:
    """Keeps a :class:`LocalIndex` caught up with the topic, reading with ``read_committed``.

    Catching up is bounded: it reads to the end offsets (the last stable offsets) it finds when
    it starts, so a reader never waits for writes that began after it asked. When the index is
    current, catching up costs one ``ListOffsets`` request.
    """

    def __init__(
        self,
        index: LocalIndex,
        topic: str,
        partitions: int,
        consumer_factory: Callable[..., KafkaConsumer],
        timeout: float,
    ) -> None:
        self.index = index
        self.topic = topic
        self.partitions = partitions
        self._timeout = timeout
        self._consumer_factory = consumer_factory
        # Connected on first use, under the lock: opening the index needs no cluster, so the
        # connection counts against the deadline of the call (or writer) that needs it.
        self._consumer_instance: KafkaConsumer | None = None
        self._lock = threading.Lock()
        # When the last completed catch-up of each partition started (monotonic seconds), for
        # the index file of generation ``_rebuilds`` (a rebuilt file is fresh nowhere).
        self._fresh: dict[int, float] = {}
        self._rebuilds = index.rebuilds
        index.refill = lambda: self.catch_up(force=True)
        with _LIVE_LOCK:
            _LIVE.setdefault(topic, weakref.WeakSet()).add(self)

    @staticmethod
    def live(topic: str) -> TopicIndex | None:
        """An open index of ``topic`` in this process (a feed uses it to apply the index's
        first-record-wins rule), or None."""
        with _LIVE_LOCK:
            return next(iter(_LIVE.get(topic, ())), None)

    def end_offsets(self, partitions: Iterable[int] | None = None) -> dict[int, int]:
        """The last stable offset of each partition (what ``read_committed`` can read to)."""
        tps = self._tps(partitions)
        with self._lock:
            return self._end_offsets(tps)

    @property
    def _consumer(self) -> KafkaConsumer:
        return self._connect(None)

    def _connect(self, deadline: float | None) -> KafkaConsumer:
        """The consumer, connected (by ``deadline``, when given) on first use."""
        if self._consumer_instance is None:
            bootstrap = self._timeout if deadline is None else _left(deadline)
            try:
                self._consumer_instance = self._consumer_factory(
                    group_id=None,
                    enable_auto_commit=False,
                    isolation_level="read_committed",
                    auto_offset_reset="earliest",
                    max_poll_records=5000,
                    fetch_max_wait_ms=100,
                    bootstrap_timeout_ms=int(bootstrap * 1000),
                )
            except KafkaError as error:
                raise StoreUnavailableError(
                    f"cannot connect to Kafka to read {self.topic}: {error}"
                ) from error
        return self._consumer_instance

    def _end_offsets(
        self, tps: list[TopicPartition], deadline: float | None = None
    ) -> dict[int, int]:
        timeout = self._timeout if deadline is None else _left(deadline)
        try:
            consumer = self._connect(deadline)
            ends = consumer.end_offsets(tps, timeout_ms=int(timeout * 1000))
        except KafkaError as error:
            raise StoreUnavailableError(
                f"cannot read the end offsets of {self.topic}: {error}"
            ) from error
        return {tp.partition: int(ends[tp]) for tp in sorted(ends, key=lambda tp: tp.partition)}

    def _tps(self, partitions: Iterable[int] | None) -> list[TopicPartition]:
        chosen = range(self.partitions) if partitions is None else sorted(set(partitions))
        return [TopicPartition(self.topic, p) for p in chosen]

    def catch_up(
        self,
        partitions: Iterable[int] | None = None,
        *,
        force: bool = False,
        deadline: float | None = None,
    ) -> None:
        """Index every record committed in ``partitions`` (all by default) before this call,
        connecting and reading within ``read_timeout`` (or by ``deadline``)."""
        asked = time.monotonic()
        tps = self._tps(partitions)
        with self._lock:
            if self.index.rebuilds != self._rebuilds:
                self._fresh.clear()
                self._rebuilds = self.index.rebuilds
            if not force and all(self._fresh.get(tp.partition, -1.0) >= asked for tp in tps):
                return  # A catch-up that started after this call covered these partitions.
            started = time.monotonic()
            if deadline is None:
                deadline = started + self._timeout
            targets = self._end_offsets(tps, deadline)
            try:
                self._read_to(targets, deadline)
            except IndexDamagedError as damage:
                # Positions or records fail their checks: read the whole topic into a new file.
                self.index.reset(str(damage))
                self._rebuilds = self.index.rebuilds
                self._fresh.clear()
                self._read_to(self._end_offsets(self._tps(None)), started + self._timeout)
            for tp in tps:
                self._fresh[tp.partition] = started

    def _read_to(self, targets: dict[int, int], deadline: float) -> None:
        current = self.index.positions()
        lagging = {p: end for p, end in targets.items() if current.get(p, 0) < end}
        if lagging:
            self._read(lagging, current, deadline)

    def _read(self, targets: dict[int, int], current: Mapping[int, int], deadline: float) -> None:
        tps = {p: TopicPartition(self.topic, p) for p in targets}
        try:
            self._consumer.assign(list(tps.values()))
            for p, tp in tps.items():
                self._consumer.seek(tp, current.get(p, 0))
            while True:
                batch = self._consumer.poll(timeout_ms=200, max_records=5000)
                events = [
                    decode_record(
                        r.key,
                        r.value,
                        r.headers,
                        partition=r.partition,
                        offset=r.offset,
                    )
                    for records in batch.values()
                    for r in records
                ]
                reached = {p: int(self._consumer.position(tp)) for p, tp in tps.items()}
                self.index.apply(events, reached)
                if all(reached[p] >= end for p, end in targets.items()):
                    return
                if time.monotonic() > deadline:
                    raise StoreUnavailableError(
                        f"could not read {self.topic} to its end offsets {targets} in "
                        f"{self._timeout:.0f} s (reached {reached})"
                    )
        except KafkaError as error:
            raise StoreUnavailableError(f"cannot read {self.topic}: {error}") from error
        except (ValueError, TypeError, AssertionError, struct.error) as error:
            # kafka-python could not parse a fetched batch (e.g. a header name that is not UTF-8).
            raise StoreUnavailableError(
                f"cannot decode a record batch of {self.topic}: {type(error).__name__}: {error}"
            ) from error

    def close(self) -> None:
        """Close the consumer (the index file stays)."""
        with _LIVE_LOCK:
            _LIVE.get(self.topic, weakref.WeakSet()).discard(self)
        with self._lock:
            consumer, self._consumer_instance = self._consumer_instance, None
            if consumer is not None:
                consumer.close(autocommit=False)
