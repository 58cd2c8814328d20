"""What every section shares: the run's settings, the services found, rows, timing, cleanup.

A section is a function ``run(ctx: Context) -> Section``. It measures our figures and their peers
in the same run and returns rows; a row names its peer row, so the report can print the ratio
next to both raw numbers. A section that needs a missing service returns a note instead of rows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

__all__ = [
    "Context",
    "Row",
    "Section",
    "ServiceMissing",
    "Services",
    "deciding",
    "percentile",
]

REPO = Path(__file__).resolve().parent.parent


class ServiceMissing(Exception):
    """A section (or part of one) needs Kafka or PostgreSQL and it is not there."""


@dataclass
class Row:
    """One measured figure. ``peer`` names the row it is compared with (in the same section);
    the ratio is always ``value / peer value``; ``higher_is_better`` says how to read it."""

    key: str
    label: str
    value: float
    unit: str
    peer: str | None = None
    higher_is_better: bool = True
    raw: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "value": self.value,
            "unit": self.unit,
            "peer": self.peer,
            "higher_is_better": self.higher_is_better,
            "raw": self.raw,
            "note": self.note,
        }


@dataclass
class Section:
    """The rows of one section, plus notes (what N was, what was skipped and why)."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def row(self, key: str) -> Row | None:
        return next((r for r in self.rows if r.key == key), None)

    def ratio(self, key: str) -> float | None:
        """``key``'s value over its peer's, or None."""
        row = self.row(key)
        if row is None or row.peer is None:
            return None
        peer = self.row(row.peer)
        if peer is None or not peer.value or not row.value:
            return None
        return row.value / peer.value

    def as_json(self) -> dict[str, Any]:
        rows = {}
        for row in self.rows:
            data = row.as_json()
            data["ratio"] = self.ratio(row.key)
            rows[row.key] = data
        return {
            "title": self.title,
            "rows": rows,
            "notes": self.notes,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 2),
        }


@dataclass
class Services:
    """Where Kafka and PostgreSQL are, when they are."""

    kafka: str | None = None
    """bootstrap servers, ``host:port``"""
    postgres: str | None = None
    """a libpq-style URL, ``postgresql://user[:password]@host:port/db``"""
    kafka_reason: str = ""
    postgres_reason: str = ""

    @classmethod
    def detect(cls, *, kafka: bool = True, postgres: bool = True) -> Services:
        found = cls()
        if kafka:
            found.kafka, found.kafka_reason = _find_kafka()
        else:
            found.kafka_reason = "Kafka not used in this run"
        if postgres:
            found.postgres, found.postgres_reason = _find_postgres()
        else:
            found.postgres_reason = "PostgreSQL not used in this run"
        return found

    def need_kafka(self) -> str:
        if self.kafka is None:
            raise ServiceMissing(self.kafka_reason)
        return self.kafka

    def need_postgres(self) -> str:
        if self.postgres is None:
            raise ServiceMissing(self.postgres_reason)
        return self.postgres

    def postgres_parts(self) -> dict[str, str]:
        """The PostgreSQL URL as the eventsourcing library's POSTGRES_* settings."""
        parts = urlsplit(self.need_postgres())
        return {
            "POSTGRES_DBNAME": parts.path.lstrip("/"),
            "POSTGRES_HOST": parts.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(parts.port or 5432),
            "POSTGRES_USER": parts.username or "postgres",
            "POSTGRES_PASSWORD": parts.password or "",
        }

    def sqlalchemy_postgres(self) -> str:
        url = self.need_postgres()
        return "postgresql+psycopg://" + url.split("://", 1)[1]


def _reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout):
            return True
    except OSError:
        return False


def _find_kafka() -> tuple[str | None, str]:
    bootstrap = os.environ.get("KEEL_KAFKA_BOOTSTRAP_SERVERS", "").strip() or "127.0.0.1:19092"
    first = bootstrap.split(",")[0]
    host, _, port = first.rpartition(":")
    if not port.isdigit() or not _reachable(host or "127.0.0.1", int(port)):
        return None, f"no Kafka broker at {bootstrap} (start it with scripts/kafka start)"
    try:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
        admin.list_topics()
        admin.close()
    except Exception as error:  # any client failure means "not usable here"
        return None, f"Kafka at {bootstrap} does not answer: {error!r}"
    return bootstrap, ""


def _find_postgres() -> tuple[str | None, str]:
    url = os.environ.get("DATABASE_URL", "").strip()
    script = REPO / "scripts" / "postgres"
    if not url.startswith("postgres") and script.exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [str(script), "url"],
                capture_output=True,
                text=True,
                timeout=20,
                stdin=subprocess.DEVNULL,
                check=False,
            )
            if out.returncode == 0:
                url = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    if not url.startswith("postgres"):
        return None, "no PostgreSQL: DATABASE_URL is not set (scripts/postgres start, then url)"
    rest = url.split("://", 1)[1]
    url = "postgresql://" + rest  # drop a SQLAlchemy driver suffix such as +psycopg
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as error:  # any failure to connect means "not usable here"
        return None, f"PostgreSQL at {urlsplit(url).netloc} does not answer: {error}"
    return url, ""


@dataclass
class Context:
    """The run's settings and what sections share: services, a scratch dir, cleanups."""

    quick: bool
    services: Services
    scratch: Path
    smoke: bool = False
    """The smallest configuration (the pytest smoke test): embedded backends, tiny N."""
    log: Callable[[str], None] = print
    results: dict[str, Section] = field(default_factory=dict)
    """Sections finished so far in this run (a later section may quote an earlier one)."""
    _cleanups: list[Callable[[], None]] = field(default_factory=list)

    @classmethod
    @contextlib.contextmanager
    def open(
        cls, *, quick: bool, services: Services, smoke: bool = False, log: Callable[[str], None]
    ) -> Iterator[Context]:
        scratch = Path(tempfile.mkdtemp(prefix="keel-bench-"))
        ctx = cls(quick=quick, services=services, scratch=scratch, smoke=smoke, log=log)
        try:
            yield ctx
        finally:
            for cleanup in reversed(ctx._cleanups):
                try:
                    cleanup()
                except Exception as error:  # cleanup is best effort; report, go on
                    log(f"cleanup failed: {error!r}")
            shutil.rmtree(scratch, ignore_errors=True)

    def pick(self, smoke: T, quick: T, full: T) -> T:
        """The size for this mode."""
        if self.smoke:
            return smoke
        return quick if self.quick else full

    def name(self, prefix: str) -> str:
        """A fresh name, usable as an application name, a SQL table prefix and a topic."""
        return f"{prefix}_{uuid.uuid4().hex[:10]}"

    def path(self, name: str) -> Path:
        return self.scratch / name

    def on_exit(self, cleanup: Callable[[], None]) -> None:
        self._cleanups.append(cleanup)

    # -- resources that outlive one measurement, cleaned at the end ------------------------------

    def kafka_missing(self, section: Section) -> bool:
        """Outside the smoke run a section needs Kafka: True, with the section marked skipped,
        when the broker is missing (``need_kafka`` raises instead under ``CI=true``)."""
        if self.smoke:
            return False
        try:
            self.services.need_kafka()
        except ServiceMissing as missing:
            section.skipped.append(f"whole section: {missing}")
            return True
        return False

    def kafka_url(self, name: str, *, partitions: int = 3, **options: Any) -> str:
        """A store URL on a fresh topic ``<name>.events`` (deleted at the end of the run)."""
        bootstrap = self.services.need_kafka()
        index = self.path(f"{name}.index.sqlite")
        query = "&".join(
            f"{k}={v}" for k, v in {"partitions": partitions, "index": index, **options}.items()
        )
        self.drop_kafka_topics_later(f"{name}.events", f"{name}.events.layout")
        return f"kafka://{bootstrap}?{query}"

    def drop_kafka_topics_later(self, *topics: str) -> None:
        bootstrap = self.services.kafka

        def drop() -> None:
            from kafka import KafkaAdminClient

            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
            try:
                existing = set(admin.list_topics())
                doomed = [t for t in topics if t in existing]
                if doomed:
                    admin.delete_topics(doomed)
            finally:
                admin.close()

        self.on_exit(drop)

    def drop_postgres_tables_later(self, *tables: str) -> None:
        url = self.services.need_postgres()

        def drop() -> None:
            import psycopg

            with psycopg.connect(url, autocommit=True) as conn:
                for table in tables:
                    conn.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')

        self.on_exit(drop)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation."""
    if not values:
        return 0.0
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


class Stopwatch:
    """``with Stopwatch() as sw: ...; sw.seconds``"""

    seconds: float = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


@contextlib.contextmanager
def deciding(app: Any) -> Iterator[None]:
    """While the block runs, ``app``'s commands are decided in this process: on Kafka a writer
    member here owns every shard (``execute`` decides in place); the embedded stores always do."""
    from framework.backends.kafka import KafkaEventStore
    from framework.writer import writer

    if not isinstance(app.store, KafkaEventStore):
        yield
        return
    with writer(app):
        yield
