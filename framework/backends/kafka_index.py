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
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

from framework.backends.kafka_client import KafkaConsumer, KafkaError, TopicPartition
from framework.backends.kafka_records import decode_record
from framework.errors import ConfigurationError, StoreUnavailableError
from framework.persistence import RecordedEvent, Snapshot

__all__ = ["LocalIndex", "TopicIndex", "default_index_path"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
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
    PRIMARY KEY (part, off)
);
CREATE UNIQUE INDEX IF NOT EXISTS records_by_aggregate
    ON records (aggregate_id, version) WHERE indexed = 1;
CREATE TABLE IF NOT EXISTS positions (part INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (
    aggregate_id BLOB PRIMARY KEY,
    version INTEGER NOT NULL,
    topic TEXT NOT NULL,
    state BLOB NOT NULL
);
"""

Row = tuple[int, int, bytes, int, str, bytes, int]


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


class LocalIndex:
    """The SQLite file: records, read positions, snapshots. Safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        # One connection, serialised by a lock: statements are short, and WAL keeps the file
        # consistent if the process dies mid-write.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def bind(self, topic: str, topic_id: str) -> None:
        """Check the file indexes this very topic (not a deleted namesake); else empty it."""
        with self._transaction() as db:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            wanted = {"schema": SCHEMA_VERSION, "topic": topic, "topic_id": topic_id}
            if meta and meta != wanted:
                log.warning("index %s was built for %s; rebuilding it", self.path, meta)
                for table in ("records", "positions", "snapshots", "meta"):
                    db.execute(f"DELETE FROM {table}")
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", wanted.items())

    def positions(self) -> dict[int, int]:
        """Each partition's read position: every committed record below it is indexed."""
        with self._lock:
            return dict(self._db.execute("SELECT part, next_offset FROM positions").fetchall())

    def apply(
        self, events: Sequence[tuple[RecordedEvent, bool]], positions: Mapping[int, int]
    ) -> None:
        """Add records read from the topic and move the read positions, in one transaction."""
        with self._transaction() as db:
            self._insert(db, events)
            db.executemany(
                "INSERT INTO positions (part, next_offset) VALUES (?, ?) ON CONFLICT (part) "
                "DO UPDATE SET next_offset = max(next_offset, excluded.next_offset)",
                positions.items(),
            )

    def add_committed(self, events: Sequence[RecordedEvent]) -> None:
        """Add the records of a transaction this process committed (ahead of the position)."""
        with self._transaction() as db:
            self._insert(db, [(e, True) for e in events])

    def _insert(self, db: sqlite3.Connection, events: Sequence[tuple[RecordedEvent, bool]]) -> None:
        sql = (
            "INSERT INTO records (part, off, aggregate_id, version, topic, state, indexed) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (part, off) DO NOTHING"
        )
        rows = [_row(e, valid) for e, valid in events]
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
                    log.error(
                        "partition %s offset %s repeats version %s of aggregate %s; a writer "
                        "bypassed the store's fencing. Keeping the first, ignoring this one",
                        row[0],
                        row[1],
                        row[3],
                        UUID(bytes=row[2]),
                    )
                    db.execute(sql, (*row[:6], 0))
        db.execute("RELEASE batch")

    def current_versions(self, aggregate_ids: Iterable[UUID]) -> dict[UUID, int]:
        """Each aggregate's last version (0 when it has none)."""
        found: dict[UUID, int] = {}
        with self._lock:
            for aggregate_id in set(aggregate_ids):
                row = self._db.execute(
                    "SELECT max(version) FROM records WHERE aggregate_id = ? AND indexed = 1",
                    (aggregate_id.bytes,),
                ).fetchone()
                found[aggregate_id] = row[0] or 0
        return found

    def contains(self, event: RecordedEvent) -> bool:
        """Whether the record at ``event``'s offset is this event (same aggregate, version)."""
        with self._lock:
            row = self._db.execute(
                "SELECT aggregate_id, version FROM records WHERE part = ? AND off = ?",
                (event.partition, event.offset),
            ).fetchone()
        return row is not None and (row[0], row[1]) == (event.aggregate_id.bytes, event.version)

    def aggregate_events(
        self, aggregate_id: UUID, after_version: int, up_to_version: int | None
    ) -> list[RecordedEvent]:
        """One aggregate's events, in version order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT part, off, aggregate_id, version, topic, state FROM records "
                "WHERE aggregate_id = ? AND indexed = 1 AND version > ? AND version <= ? "
                "ORDER BY version",
                (aggregate_id.bytes, after_version, up_to_version or 2**62),
            ).fetchall()
        return [_event(row) for row in rows]

    def partition_events(self, partition: int, start: int, limit: int) -> list[RecordedEvent]:
        """Up to ``limit`` records of ``partition`` from ``start``, below its read position."""
        with self._lock:
            rows = self._db.execute(
                "SELECT part, off, aggregate_id, version, topic, state FROM records "
                "WHERE part = ? AND off >= ? AND off < "
                "(SELECT coalesce(max(next_offset), 0) FROM positions WHERE part = ?) "
                "ORDER BY off LIMIT ?",
                (partition, start, partition, limit),
            ).fetchall()
        return [_event(row) for row in rows]

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot`` unless a newer one of its aggregate is kept already."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO snapshots (aggregate_id, version, topic, state) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (aggregate_id) DO UPDATE SET version = excluded.version, "
                "topic = excluded.topic, state = excluded.state "
                "WHERE excluded.version > snapshots.version",
                (snapshot.aggregate_id.bytes, snapshot.version, snapshot.topic, snapshot.state),
            )

    def latest_snapshot(self, aggregate_id: UUID) -> Snapshot | None:
        """The newest snapshot kept of ``aggregate_id``."""
        with self._lock:
            row = self._db.execute(
                "SELECT version, topic, state FROM snapshots WHERE aggregate_id = ?",
                (aggregate_id.bytes,),
            ).fetchone()
        return None if row is None else Snapshot(aggregate_id, row[0], row[1], bytes(row[2]))

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()


def _row(event: RecordedEvent, valid: bool) -> Row:
    return (
        event.partition,
        event.offset,
        event.aggregate_id.bytes,
        event.version,
        event.topic,
        event.state,
        1 if valid else 0,
    )


def _event(row: Any) -> RecordedEvent:
    return RecordedEvent(UUID(bytes=row[2]), row[3], row[4], bytes(row[5]), row[0], row[1])


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
        self._consumer = consumer_factory(
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_poll_records=5000,
            fetch_max_wait_ms=100,
        )
        self._lock = threading.Lock()
        # When the last completed catch-up of each partition started (monotonic seconds).
        self._fresh: dict[int, float] = {}

    def end_offsets(self, partitions: Iterable[int] | None = None) -> dict[int, int]:
        """The last stable offset of each partition (what ``read_committed`` can read to)."""
        tps = self._tps(partitions)
        with self._lock:
            return self._end_offsets(tps)

    def _end_offsets(self, tps: list[TopicPartition]) -> dict[int, int]:
        try:
            ends = self._consumer.end_offsets(tps, timeout_ms=int(self._timeout * 1000))
        except KafkaError as error:
            raise StoreUnavailableError(
                f"cannot read the end offsets of {self.topic}: {error}"
            ) from error
        return {tp.partition: int(ends[tp]) for tp in sorted(ends, key=lambda tp: tp.partition)}

    def _tps(self, partitions: Iterable[int] | None) -> list[TopicPartition]:
        chosen = range(self.partitions) if partitions is None else sorted(set(partitions))
        return [TopicPartition(self.topic, p) for p in chosen]

    def catch_up(self, partitions: Iterable[int] | None = None, *, force: bool = False) -> None:
        """Index every record committed in ``partitions`` (all by default) before this call."""
        asked = time.monotonic()
        tps = self._tps(partitions)
        with self._lock:
            if not force and all(self._fresh.get(tp.partition, -1.0) >= asked for tp in tps):
                return  # A catch-up that started after this call covered these partitions.
            started = time.monotonic()
            targets = self._end_offsets(tps)
            current = self.index.positions()
            lagging = {p: end for p, end in targets.items() if current.get(p, 0) < end}
            if lagging:
                self._read(lagging, current, started + self._timeout)
            for tp in tps:
                self._fresh[tp.partition] = started

    def _read(self, targets: dict[int, int], current: Mapping[int, int], deadline: float) -> None:
        tps = {p: TopicPartition(self.topic, p) for p in targets}
        try:
            self._consumer.assign(list(tps.values()))
            for p, tp in tps.items():
                self._consumer.seek(tp, current.get(p, 0))
            while True:
                batch = self._consumer.poll(timeout_ms=200, max_records=5000)
                events = [
                    decode_record(r.key, r.value, r.headers, partition=r.partition, offset=r.offset)
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

    def close(self) -> None:
        """Close the consumer (the index file stays)."""
        with self._lock:
            self._consumer.close(autocommit=False)
