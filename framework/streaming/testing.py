"""The streaming test kit: per-partition sequences, every interleaving, then these rows.

::

    from framework.streaming.testing import given_partitions

    def test_sales_per_hour():
        (given_partitions({0: [confirmed_a, cancelled_a], 1: [confirmed_b]})
            .tick(0, at=T0 + timedelta(hours=2))          # a tick record in partition 0
            .project(SalesPerHour)
            .then_rows(SalesPerHour.sales, [{"window_start": T0, "orders": 1}]))

    def test_any_interleaving_gives_the_same_rows():
        given_partitions({...}).all_interleavings(SalesPerHour, examples=100)

Items are domain events, aggregates (their pending events), ``ev(Class, id=..., **fields)``
specs (``timestamp=`` sets the event time) or :class:`Tick` markers. Each partition's items get
offsets in order. ``project`` applies them round-robin, one event at a time (a live trickle),
then checks that delivering every partition again changes nothing and that a rebuild (each
partition in one go, a fast catch-up) gives the same bytes. ``all_interleavings`` (Hypothesis)
draws interleavings, batch sizes and duplicate deliveries, and fails with the first schedule
whose tables differ, shrunk to a small one.

Runs use a fresh SQLite database in memory; ``given_partitions(..., database=url)`` runs them on
PostgreSQL instead, each in a schema of its own that :meth:`StreamOutcome.close` drops (the
kit closes the runs it makes itself; what is left is dropped at exit).
"""

from __future__ import annotations

import atexit
import dataclasses
import difflib
import pprint
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

import sqlalchemy as sa
from eventsourcing.utils import get_topic
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool

from framework.applier import Applier
from framework.codec import codec
from framework.commands import Metadata
from framework.database import create_engine
from framework.domain import Aggregate, DomainEvent, event_types
from framework.errors import ConfigurationError
from framework.persistence import RecordedEvent
from framework.positions import dead_letters_table
from framework.projection_testing import digest, table_rows
from framework.settings import ProjectionSettings
from framework.streaming._clock import Clock
from framework.streaming._projection import Stream, StreamProjection
from framework.streaming._values import utc
from framework.testing import EventSpec
from framework.worker import setup_tables

__all__ = ["Interleavings", "Partitions", "StreamOutcome", "Tick", "given_partitions"]

_TEST_CLOCKS = uuid.UUID("a3c7d1e2-8b4f-4e6a-9c0d-2f5e7b9a1c34")

Schedule = list[tuple[int, int, bool]]
"""Steps of (partition, how many new events, deliver the previous batch again first)."""


@dataclass(frozen=True)
class Tick:
    """A tick record at ``at`` in the partition it is placed in."""

    at: datetime


@dataclass(frozen=True)
class Accept:
    """A ``Clock.LateAccepted`` record: re-drive the late event parked at ``offset``."""

    projection: str
    stream: str
    offset: int


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        return utc(value).isoformat()
    return value


def _pretty(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    from framework.projection_testing import _canonical as canonical

    return pprint.pformat(
        [{k: canonical(_canonical(v)) for k, v in row.items()} for row in rows], width=100
    ).splitlines()


def _table(table: sa.Table | Stream) -> sa.Table:
    if isinstance(table, Stream):
        return table.tables["rows"]
    return table


class StreamOutcome:
    """The tables after the given partitions; assert with :meth:`then_rows`."""

    def __init__(
        self, projection: StreamProjection, engine: Engine, drop: Callable[[], None] = lambda: None
    ) -> None:
        self.projection = projection
        self.engine = engine
        self._drop = drop

    def close(self) -> None:
        """Drop this run's database (a PostgreSQL schema); SQLite's goes with the engine."""
        self._drop()
        self._drop = lambda: None

    def _current(self, table: sa.Table | Stream) -> sa.Table:
        wanted = _table(table)
        for current in self.projection.tables:
            if current.name == wanted.name:
                return current
        raise AssertionError(f"{wanted.name} is not a table of {self.projection!r}")

    def rows(self, table: sa.Table | Stream) -> list[dict[str, Any]]:
        return table_rows(self.engine, self._current(table))

    def then_rows(
        self,
        table: sa.Table | Stream,
        expected: Iterable[Mapping[str, Any]],
        *,
        columns: Sequence[str] = (),
    ) -> Self:
        """``table`` (or a declaration's table) holds exactly these rows, in primary-key order,
        comparing the columns the expected rows name (or ``columns``). Datetimes compare in
        UTC whatever the database hands back."""
        current = self._current(table)
        wanted = [dict(r) for r in expected]
        names = list(columns) or sorted({k for r in wanted for k in r})
        unknown = [n for n in names if n not in current.c]
        if unknown:
            raise AssertionError(f"{current.name} has no column(s) {unknown}")
        actual = _pretty({n: r[n] for n in names} for r in self.rows(current))
        want = _pretty({n: r.get(n) for n in names} for r in wanted)
        if actual != want:
            diff = difflib.unified_diff(want, actual, "expected", "actual", lineterm="")
            raise AssertionError(f"the rows of {current.name} differ:\n" + "\n".join(diff))
        return self

    def late_events(self) -> list[dict[str, Any]]:
        """The projection's record of late events."""
        return table_rows(self.engine, self.projection._keel_late_events)

    def digest(self) -> str:
        return digest(self.engine, _compared(self.projection))


@dataclass
class Interleavings:
    """What :meth:`Partitions.all_interleavings` ran: ``STREAMS: examples=.. differing=0``."""

    examples: int = 0
    interleavings: int = 0
    differing: int = 0
    seen: set[tuple[int, ...]] = field(default_factory=set, repr=False)

    def line(self) -> str:
        return (
            f"STREAMS: examples={self.examples} interleavings={self.interleavings} "
            f"differing={self.differing}"
        )


class Partitions:
    """Per-partition sequences of events; see :func:`given_partitions`."""

    def __init__(self, sequences: Mapping[int, Sequence[Any]], database: str | None = None) -> None:
        if not sequences or sorted(sequences) != list(range(len(sequences))):
            raise ConfigurationError("give partitions 0..N-1, e.g. {0: [...], 1: [...]}")
        if database is not None and sa.make_url(database).get_backend_name() != "postgresql":
            raise ConfigurationError(
                f"database= takes a PostgreSQL URL, not {database!r} (without it: SQLite)"
            )
        self.database = database
        self.items: dict[int, list[Any]] = {p: list(items) for p, items in sequences.items()}
        self._recorded: dict[int, list[RecordedEvent]] | None = None

    def tick(self, partition: int | None, at: datetime) -> Self:
        """Append a tick at ``at`` to ``partition`` (``None``: to every partition)."""
        for p in self.items if partition is None else [partition]:
            self.items[p].append(Tick(at))
        self._recorded = None
        return self

    def accept_late(self, partition: int, index: int, stream: str, projection: str) -> Self:
        """Append a re-drive (``Clock.LateAccepted``) of the late event that ``stream`` of
        ``projection`` parked: the ``index``-th record of ``partition`` (from 0)."""
        self.items[partition].append(Accept(projection, stream, 2 * index))
        self._recorded = None
        return self

    # -- encoding -------------------------------------------------------------------------------

    def recorded(self) -> dict[int, list[RecordedEvent]]:
        """Each partition's items as recorded events (encoded once: every run sees the same
        bytes)."""
        if self._recorded is None:
            self._recorded = self._encode()
        return self._recorded

    def _encode(self) -> dict[int, list[RecordedEvent]]:
        versions: dict[uuid.UUID, int] = {}
        out: dict[int, list[RecordedEvent]] = {}
        count = len(self.items)
        for partition, items in self.items.items():
            out[partition] = []
            for item in items:
                for event in self._events(item, partition, count, versions):
                    versions[event.originator_id] = event.originator_version
                    new = codec.encode(event, Metadata())
                    out[partition].append(
                        RecordedEvent(
                            new.aggregate_id,
                            new.version,
                            new.topic,
                            new.state,
                            partition,
                            2 * len(out[partition]),  # offsets have gaps, as Kafka's do
                        )
                    )
        return out

    @staticmethod
    def _events(item: Any, partition: int, count: int, versions: dict[uuid.UUID, int]) -> list[Any]:
        if isinstance(item, Tick):
            cid = uuid.uuid5(_TEST_CLOCKS, str(partition))
            at = utc(item.at)
            return [
                Clock.Ticked(  # type: ignore[call-arg]
                    originator_id=cid,
                    originator_version=versions.get(cid, 0) + 1,
                    timestamp=at,
                    at=at,
                    partitions=count,
                )
            ]
        if isinstance(item, Accept):
            cid = uuid.uuid5(_TEST_CLOCKS, str(partition))
            return [
                Clock.LateAccepted(  # type: ignore[call-arg]
                    originator_id=cid,
                    originator_version=versions.get(cid, 0) + 1,
                    timestamp=datetime(2000, 1, 1, tzinfo=UTC),
                    projection=item.projection,
                    stream=item.stream,
                    offset=item.offset,
                )
            ]
        if isinstance(item, Aggregate):
            return list(item.collect_events())
        if isinstance(item, EventSpec):
            if item.id is None:
                raise ConfigurationError(f"give ev({item.cls.__qualname__}, id=...) an id")
            fields: dict[str, Any] = {
                "originator_id": item.id,
                "originator_version": versions.get(item.id, 0) + 1,
                **item.fields,
            }
            if "timestamp" not in fields:
                if not isinstance(fields.get("at"), datetime):
                    raise ConfigurationError("streaming tests need event times: give timestamp=")
                fields["timestamp"] = fields["at"]
            if "originator_topic" in {f.name for f in dataclasses.fields(item.cls)}:
                fields["originator_topic"] = get_topic(event_types.owner_of(item.cls))
            return [item.cls(**fields)]
        if isinstance(item, DomainEvent):
            return [item]
        raise ConfigurationError(f"not an event, aggregate, ev(...) or Tick: {item!r}")

    # -- running --------------------------------------------------------------------------------

    def run(
        self, projection: type[StreamProjection] | StreamProjection, schedule: Schedule | None
    ) -> StreamOutcome:
        """Apply the partitions to a fresh SQLite database by ``schedule`` (``None``: each
        partition in one batch, as a rebuild catches up)."""
        instance = projection() if isinstance(projection, type) else projection
        engine, drop = self._database()
        setup_tables(engine, instance)
        applier = Applier(instance, engine, ProjectionSettings(max_attempts=1, retry_initial=0))
        recorded = self.recorded()
        applier.load(list(recorded))
        if schedule is None:
            for partition, events in recorded.items():
                if events:
                    applier.apply_partition(partition, events)
        else:
            done = dict.fromkeys(recorded, 0)
            last: dict[int, list[RecordedEvent]] = {}
            for partition, size, again in schedule:
                if again and last.get(partition):
                    applier.apply_partition(partition, last[partition])
                batch = recorded[partition][done[partition] : done[partition] + size]
                if batch:
                    applier.apply_partition(partition, batch)
                    done[partition] += len(batch)
                    last[partition] = batch
            for partition, events in recorded.items():  # whatever the schedule left out
                if done[partition] < len(events):
                    applier.apply_partition(partition, events[done[partition] :])
        with engine.connect() as conn:
            parked = conn.execute(sa.select(dead_letters_table)).all()
        if parked:
            raise AssertionError(
                f"{instance!r} failed on {len(parked)} event(s): "
                + "; ".join(f"{r.event_type}: {r.error_type}: {r.error_message}" for r in parked)
            )
        return StreamOutcome(instance, engine, drop)

    def _database(self) -> tuple[Engine, Callable[[], None]]:
        """A fresh, empty database for one run, and what drops it."""
        if self.database is None:
            return create_engine("sqlite://", poolclass=StaticPool), lambda: None
        schema = f"keel_kit_{uuid.uuid4().hex[:16]}"
        admin = sa.create_engine(self.database)
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        engine = create_engine(self.database, connect_args={"options": f"-csearch_path={schema}"})

        def drop() -> None:
            atexit.unregister(drop)
            engine.dispose()
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            admin.dispose()

        atexit.register(drop)
        return engine, drop

    def trickle(self) -> Schedule:
        """Round-robin over the partitions, one event at a time."""
        recorded = self.recorded()
        sizes = {p: len(recorded[p]) for p in self.items}
        schedule: Schedule = []
        for step in range(max(sizes.values(), default=0)):
            schedule += [(p, 1, False) for p in self.items if step < sizes[p]]
        return schedule

    def project(self, projection: type[StreamProjection] | StreamProjection) -> StreamOutcome:
        """Apply the partitions as a live trickle; check that redelivery changes nothing and
        that a rebuild gives the same tables."""
        cls = projection if isinstance(projection, type) else type(projection)
        live = self.run(cls, self.trickle())
        again = self.run(cls, [(s[0], s[1], True) for s in self.trickle()])
        rebuilt = self.run(cls, None)
        try:
            for name, other in (("delivering every batch twice", again), ("a rebuild", rebuilt)):
                if other.digest() != live.digest():
                    raise AssertionError(
                        f"{cls.__name__}: {name} gave other rows:\n" + _diff(live, other)
                    )
        finally:
            again.close()
            rebuilt.close()
        return live

    def all_interleavings(
        self, projection: type[StreamProjection], *, examples: int = 50
    ) -> Interleavings:
        """Draw ``examples`` interleavings (with batch sizes and duplicate deliveries) and check
        each gives the tables of a rebuild, byte for byte."""
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import strategies as st

        sizes = {p: len(events) for p, events in self.recorded().items()}
        reference = self.run(projection, None)
        report = Interleavings()
        failures: list[str] = []

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            # No shrinking: every run builds a database; the first differing schedule is shown.
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(st.data())
        def check(data: st.DataObject) -> None:
            left = dict(sizes)
            schedule: Schedule = []
            while any(left.values()):
                partition = data.draw(st.sampled_from([p for p, n in left.items() if n]))
                size = data.draw(st.integers(1, min(left[partition], 4)))
                schedule.append((partition, size, data.draw(st.booleans())))
                left[partition] -= size
            order = tuple(p for p, n, _again in schedule for _ in range(n))
            outcome = self.run(projection, schedule)
            report.examples += 1
            report.seen.add(order)
            try:
                if outcome.digest() != reference.digest():
                    report.differing += 1
                    failures.append(f"schedule {schedule}:\n{_diff(reference, outcome)}")
                    raise AssertionError(failures[-1])
            finally:
                outcome.close()

        try:
            check()
        finally:
            report.interleavings = len(report.seen)
            reference.close()
        return report


def _compared(projection: StreamProjection) -> list[sa.Table]:
    """The tables two runs must agree on: all but ``<table>__announced``, which lists the
    session ids whose ``on_close`` ran, and which a session that changed its id after closing
    makes differ between interleavings by design (each id is announced at most once: its
    primary key says so)."""
    return [t for t in projection.tables if not t.name.endswith("__announced")]


def _diff(a: StreamOutcome, b: StreamOutcome) -> str:
    lines: list[str] = []
    for table in _compared(a.projection):
        left, right = _pretty(a.rows(table)), _pretty(b.rows(table))
        if left != right:
            lines += difflib.unified_diff(left, right, f"{table.name} (a)", "(b)", lineterm="")
    return "\n".join(lines[:200])


def given_partitions(
    sequences: Mapping[int, Sequence[Any]], *, database: str | None = None
) -> Partitions:
    """Start a streaming test from these per-partition sequences; ``database``: a PostgreSQL
    URL to run on (default: SQLite in memory)."""
    return Partitions(sequences, database)
