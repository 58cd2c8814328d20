"""The projection worker: consumes the feed and keeps a projection's read model up to date.

::

    worker = ProjectionWorker(OrderSummary(), store, engine)
    worker.run(stop_event)                   # until stop_event is set; or until_caught_up=True
    worker.rebuild()                         # shadow tables from position 0, then an atomic swap
    status(OrderSummary(), store, engine)    # per partition: position, head, lag; dead letters
    wait_until(OrderSummary(), engine, result.positions, timeout=5)   # read your writes

Several workers of one projection (in several processes) share its partitions as members of a
Kafka consumer group named after the application and the projection (``<app>.<projection>``,
see :func:`consumer_group`). Each keeps its positions in the read-model
database (see :mod:`framework.positions`): on assignment it reads them and seeks there, and it
commits every batch together with the new positions, guarded, so a rebalance, a crash or a
redelivery never applies an event twice nor skips one (see :mod:`framework.applier`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.engine import Engine

from framework import dead_letters
from framework.applier import Applier, ApplierStats
from framework.arguments import positive_float, positive_int, refuse_ignored
from framework.database import Backoff, engine_for, read_only, serialize_ddl
from framework.errors import (
    ConfigurationError,
    ProjectionError,
    ProjectionStoppedError,
    ProjectionTimeoutError,
    StoreError,
    StoreUnavailableError,
)
from framework.loading import load_object
from framework.observability._tracing import destination_of
from framework.persistence import (
    ConsumerSettings,
    EventStore,
    FeedReader,
    RecordedEvent,
    group_by_partition,
)
from framework.positions import (
    POSITION_TABLES,
    framework_metadata,
    read_positions,
    read_version,
    reporting_missing_tables,
    require_tables,
    write_version,
)
from framework.projection import SHADOW_SUFFIX, Projection
from framework.runtime import tune_garbage_collector
from framework.settings import ProjectionSettings, database_url, projection_settings

__all__ = [
    "PartitionStatus",
    "ProjectionStatus",
    "ProjectionWorker",
    "consumer_group",
    "run_forever",
    "setup_tables",
    "status",
    "wait_until",
]

if TYPE_CHECKING:
    from framework.rebuild import RebuildResult

log = logging.getLogger(__name__)


def consumer_group(app: str, projection: str) -> str:
    """The Kafka consumer group of ``projection``'s workers over application ``app``'s events:
    ``<app>.<projection>``, so two applications on one cluster never share a group.

    (It used to be the projection's name alone. Positions live in the read-model database,
    not in Kafka, so workers in the renamed group start exactly where the old ones stopped.)"""
    return f"{app}.{projection}"


def setup_tables(engine: Engine, *projections: Projection) -> None:
    """Create the framework's tables and these projections' tables when missing. Handy for
    tests and the embedded default; production databases are migrated with Alembic."""
    with engine.begin() as conn:
        serialize_ddl(conn)
        framework_metadata.create_all(conn)
        for projection in projections:
            projection.create_tables(conn)


class ProjectionWorker:
    """Runs one projection: ``ProjectionWorker(projection, store, engine).run(stop)``.

    ``engine`` defaults to the projection's configured database (:mod:`framework.settings`);
    settings (batch size, retries, backoff) default to the environment, and keyword arguments
    override them (``batch_size=10``, ``session_timeout=6``, ``instance_id="worker-1"``).
    ``group`` is the consumer group (default: :func:`consumer_group` of the store's
    application and the projection). With ``rebuild_on_version_change=True`` a worker that
    finds its tables built by an older ``version`` rebuilds them before going live (run one
    worker so, not several); otherwise it refuses to start and says to rebuild.
    """

    def __init__(
        self,
        projection: Projection | type[Projection],
        store: EventStore,
        engine: Engine | None = None,
        *,
        settings: ProjectionSettings | None = None,
        rebuild_on_version_change: bool = False,
        group: str | None = None,
        **overrides: Any,
    ) -> None:
        self.projection = projection() if isinstance(projection, type) else projection
        self.group = group or consumer_group(store.name, self.projection.name)
        self.store = store
        self.engine = engine if engine is not None else engine_for(self.projection.name)
        self.settings = settings or projection_settings(self.projection.name, **overrides)
        self.rebuild_on_version_change = rebuild_on_version_change
        self.stop_event = threading.Event()
        self._reader: FeedReader | None = None
        self.applier = Applier(
            self.projection,
            self.engine,
            self.settings,
            self.stop_event,
            on_conflict=self._reseek,
            destination=destination_of(store),
            group=self.group,
        )

    @property
    def stats(self) -> ApplierStats:
        """What this worker has done so far."""
        return self.applier.stats

    # -- the feed -------------------------------------------------------------------------------

    def _on_assign(self, partitions: set[int]) -> Mapping[int, int]:
        # Waits out a database outage; raises ProjectionStoppedError if stopped meanwhile, so
        # the feed holds these partitions (nothing is read without its stored position).
        starts = self.applier.load(partitions)
        log.info("%s: assigned partitions %s at %s", self.group, sorted(partitions), starts)
        return starts

    def _on_revoke(self, partitions: set[int]) -> None:
        # Batches are applied between polls, so none is in flight here: just stop expecting.
        log.info("%s: partitions %s revoked", self.projection.key, sorted(partitions))
        self.applier.forget(partitions)

    def _reseek(self, partition: int, stored: int | None) -> None:
        if self._reader is not None:
            self._reader.seek(partition, stored or 0)

    def open_feed(self) -> FeedReader:
        """Join the projection's consumer group (tests override this to inject faults)."""
        s = self.settings
        return self.store.feed(
            self.group,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            consumer=ConsumerSettings(
                session_timeout=s.session_timeout,
                heartbeat_interval=s.heartbeat_interval,
                max_poll_interval=s.max_poll_interval,
                instance_id=s.instance_id,
            ),
        )

    # -- running --------------------------------------------------------------------------------

    def run(
        self, stop: threading.Event | None = None, *, until_caught_up: bool = False
    ) -> ApplierStats:
        """Apply events until ``stop`` is set (checked between batches), or, with
        ``until_caught_up``, until every assigned partition reaches the head it had when the
        run started. Database outages are waited out; poison events become dead letters."""
        if stop is not None:
            self.stop_event = stop
            self.applier.stop = stop
        try:
            self._check_version()
        except ProjectionStoppedError:
            return self.stats
        target = self.store.head() if until_caught_up else {}
        try:
            self._reader = self.open_feed()
        except ProjectionStoppedError:
            return self.stats
        store_backoff = Backoff(self.settings.outage_initial, self.settings.outage_max)
        try:
            while not self.stop_event.is_set():
                try:
                    events = self._reader.poll(
                        max_records=self.settings.batch_size, timeout=self.settings.poll_timeout
                    )
                    store_backoff.reset()
                except StoreUnavailableError as error:
                    # The event store (broker) is away: nothing was read, so poll again later.
                    delay = store_backoff.next()
                    log.warning("%s: %s; polling again in %.2fs", self.group, error, delay)
                    if self.stop_event.wait(delay):
                        break
                    continue
                if events:
                    self.process(events)
                if (
                    until_caught_up
                    and len(events) < self.settings.batch_size
                    and self._caught_up(target)
                ):
                    break
        except ProjectionStoppedError:
            log.info("%s: stopped while waiting to retry", self.projection.key)
        finally:
            reader, self._reader = self._reader, None
            reader.close()
        return self.stats

    def process(self, events: list[RecordedEvent]) -> None:
        """Apply one polled batch, partition by partition."""
        assert self._reader is not None
        for partition, part_events in group_by_partition(events).items():
            if partition not in self.applier.positions:
                if partition in self._reader.assignment():
                    # Never apply without knowing the stored position: load it, re-read.
                    stored = self.applier.load([partition])[partition]
                    self._reader.seek(partition, stored)
                continue
            self.applier.apply_partition(partition, part_events)

    def _caught_up(self, target: Mapping[int, int]) -> bool:
        assert self._reader is not None
        assigned = self._reader.assignment()
        if not assigned:
            return False
        for partition in assigned:
            if partition not in self.applier.positions:
                return False
            position = self.applier.next_offset(partition)
            if position >= target.get(partition, 0):
                continue
            ahead = self.store.read_partition(partition, start=position, limit=1)
            if ahead and ahead[0].offset < target.get(partition, 0):
                return False
        return True

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current batch."""
        self.stop_event.set()

    def _check_version(self) -> None:
        p = self.projection

        def check(conn: sa.Connection) -> int | None:
            require_tables(conn, p.name, [*POSITION_TABLES, *p.tables])
            stored = read_version(conn, p.name)
            if stored is None:
                write_version(conn, p.name, p.version)  # a new projection: bootstrap from 0
            return stored

        stored = self.applier._with_db(check)
        if stored is None or stored == p.version:
            return
        if stored > p.version:
            raise ProjectionError(
                f"{p.name}'s tables were built by version {stored}, newer than this code's "
                f"{p.version}: deploy the newer code"
            )
        if not self.rebuild_on_version_change:
            raise ProjectionError(
                f"{p.name}'s tables were built by version {stored} but the code is version "
                f"{p.version}: rebuild it (python -m framework.worker rebuild ...)"
            )
        log.warning("%s: version %s -> %s, rebuilding", p.name, stored, p.version)
        self.rebuild()

    def rebuild(self, **options: Any) -> RebuildResult:
        """Rebuild the read model into shadow tables and swap them in (see
        :func:`framework.rebuild.rebuild`: ``from_positions``, ``progress``, ``stop``,
        ``swap``); then continue from the rebuilt positions."""
        from framework.rebuild import rebuild

        result = rebuild(
            self.projection, self.store, self.engine, settings=self.settings, **options
        )
        owned = set(self.applier.positions)
        self.applier.forget(owned)
        if self._reader is not None and owned:
            for partition, start in self.applier.load(owned).items():
                self._reader.seek(partition, start)
        return result

    def wait_until(self, positions: Mapping[int, int], timeout: float = 10.0) -> None:
        """See :func:`wait_until`."""
        wait_until(self.projection, self.engine, positions, timeout, store=self.store)


# -- status and read-your-writes ------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionStatus:
    partition: int
    position: int
    """The next offset the projection will read."""
    head: int
    """The offset just past the partition's last committed record."""
    lag: int
    """Offsets between the position and the head (0 when no event remains to apply; Kafka's
    transaction markers count, as in Kafka's own consumer lag)."""


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    version: int
    stored_version: int | None
    partitions: list[PartitionStatus] = field(default_factory=list)
    dead_letters: int = 0
    rebuilding: bool = False
    """Whether a rebuild has shadow positions stored (running, or abandoned)."""

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)


def status(projection: Projection, store: EventStore, engine: Engine) -> ProjectionStatus:
    """Where ``projection`` stands: per partition its position, the head and the lag, plus how
    many dead letters it has."""
    with (
        reporting_missing_tables(engine, projection.name),
        engine.connect() as conn,
        read_only(conn).begin(),
    ):
        stored = read_positions(conn, projection.name)
        shadow = read_positions(conn, projection.name + SHADOW_SUFFIX)
        version = read_version(conn, projection.name)
    head = store.head()
    partitions = []
    for partition in range(store.partitions):
        position = stored.get(partition, 0)
        end = head.get(partition, 0)
        lag = max(0, end - position)
        if lag and not store.read_partition(partition, start=position, limit=1):
            lag = 0
        partitions.append(PartitionStatus(partition, position, end, lag))
    return ProjectionStatus(
        name=projection.name,
        version=projection.version,
        stored_version=version,
        partitions=partitions,
        dead_letters=dead_letters.count(engine, projection),
        rebuilding=bool(shadow),
    )


def wait_until(
    projection: Projection,
    engine: Engine,
    positions: Mapping[int, int],
    timeout: float = 10.0,
    *,
    interval: float = 0.02,
    store: EventStore | None = None,
) -> None:
    """Return once ``projection`` has applied everything up to ``positions`` (a command's
    ``CommandResult.positions``: for each partition, stored next offset >= the given one);
    raise :class:`ProjectionTimeoutError` after ``timeout`` seconds.

    Pass ``store`` to wait for positions that may end in offsets holding no event, such as
    ``store.head()`` on Kafka (whose last offset is a transaction marker): a partition then
    counts as reached when no event lies between the stored position and the wanted one."""
    deadline = time.monotonic() + timeout
    wanted = {p: o for p, o in positions.items() if o > 0}
    while True:
        with (
            reporting_missing_tables(engine, projection.name),
            engine.connect() as conn,
            read_only(conn).begin(),
        ):
            stored = read_positions(conn, projection.name, wanted)
        behind = {p: (stored.get(p, 0), o) for p, o in wanted.items() if stored.get(p, 0) < o}
        if store is not None:
            behind = {p: at for p, at in behind.items() if _event_between(store, p, *at)}
        if not behind:
            return
        if time.monotonic() >= deadline:
            raise ProjectionTimeoutError(
                f"{projection.name} did not reach {dict(wanted)} within {timeout}s "
                f"(partition: (at, wanted) = {behind}); is its worker running?"
            )
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def _event_between(store: EventStore, partition: int, start: int, end: int) -> bool:
    ahead = store.read_partition(partition, start=start, limit=1)
    return bool(ahead) and ahead[0].offset < end


def run_forever(worker: ProjectionWorker, *, until_caught_up: bool = False) -> ApplierStats:
    """Run ``worker`` in the main thread until SIGTERM or SIGINT, which stop it cleanly between
    batches."""
    stop = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: signal %s, stopping after this batch", worker.projection.name, signum)
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, handle)
    try:
        return worker.run(stop, until_caught_up=until_caught_up)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# -- command line ---------------------------------------------------------------------------------


def load_projection(target: str) -> Projection:
    """``package.module:Name`` -> a projection instance (a class or factory is called)."""
    return load_object(
        target,
        Projection,
        what="projection",
        form="package.module:ClassName",
        example="projections.orders:OrdersProjection",
    )


_DESCRIPTION = """\
Run, rebuild or inspect one projection.

  run           apply events until SIGTERM/SIGINT (or, with --until-caught-up, until the
                head the store had at start), then exit 0
  rebuild       fill shadow tables from position 0 and swap them in (no downtime; a live
                worker may keep running)
  status        per partition: position, head, lag; dead letters; whether a rebuild is stored
  dead-letters  list the parked events (with --redrive: apply them again first)

An option another command reads (--until-caught-up with status, say) is refused, exit 2.

Every command needs the application (--app: it names the event store and the consumer group),
an event store and a read-model database. Each option falls back to the environment; the
worker refuses to start when no event store is configured rather than open an empty one.
"""

_APPLIES = {
    "--batch-size": ["run", "rebuild"],
    "--instance-id": ["run"],
    "--session-timeout": ["run"],
    "--until-caught-up": ["run"],
    "--redrive": ["dead-letters"],
}
"""The options only some commands read (the others would ignore them: refused)."""

_EPILOG = """\
environment:
  KEEL_<APP>_EVENT_STORE, KEEL_EVENT_STORE   event store URL when --store is not given
  KEEL_PROJECTION_<NAME>_DATABASE_URL, KEEL_DATABASE_URL, DATABASE_URL
                                             read-model database when --database is not given
                                             (else sqlite:///var/read_models.db)
  KEEL_PROJECTION_[<NAME>_]<SETTING>         any worker setting: BATCH_SIZE, SESSION_TIMEOUT,
                                             INSTANCE_ID, MAX_ATTEMPTS, ... (see the README)

examples:
  python -m framework.worker run projections.customers:CustomersProjection --app shop \\
      --store kafka://127.0.0.1:9092 --database postgresql://app@db/shop --instance-id w1
  python -m framework.worker status projections.customers:CustomersProjection --app shop
  python -m framework.worker rebuild projections.customers:CustomersProjection --app shop
"""


def _store_url(app: str, given: str | None) -> str:
    """The event store to open: ``--store`` or the environment, never a silent default."""
    from framework.persistence import refuse_missing_store, store_url_from_env

    keys = f"KEEL_{app.upper()}_EVENT_STORE or KEEL_EVENT_STORE"
    url = given or next(
        (os.environ[k] for k in (f"KEEL_{app.upper()}_EVENT_STORE", "KEEL_EVENT_STORE")
         if os.environ.get(k)),
        None,
    )  # fmt: skip
    if url is None:
        raise ConfigurationError(
            f"no event store is configured for application {app!r}: pass --store URL or set "
            f"{keys} (the application itself defaults to {store_url_from_env(app, {})}; a "
            "worker does not, since it would silently read an empty store)"
        )
    refuse_missing_store(url, check=f"--store / {keys}", user="a worker")
    return url


def main(argv: list[str] | None = None) -> int:
    """``python -m framework.worker {run,rebuild,status,dead-letters} module:Projection``."""
    import argparse

    from framework.database import create_engine
    from framework.persistence import open_store

    parser = argparse.ArgumentParser(
        prog="python -m framework.worker",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["run", "rebuild", "status", "dead-letters"])
    parser.add_argument(
        "projection", help="the projection, as package.module:ProjectionClass (or an instance)"
    )
    parser.add_argument(
        "--app",
        required=True,
        help="the application whose events to read (names its store and the consumer group)",
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        help="event store URL: kafka://host:9092, sqlite:///var/shop-events.db, "
        "postgresql://... (default: KEEL_<APP>_EVENT_STORE, then KEEL_EVENT_STORE)",
    )
    parser.add_argument(
        "--database",
        metavar="URL",
        help="read-model database URL (default: KEEL_PROJECTION_<NAME>_DATABASE_URL, "
        "KEEL_DATABASE_URL, DATABASE_URL, else sqlite:///var/read_models.db)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="run, rebuild: events per poll and SQL transaction (1 or more)",
    )
    parser.add_argument(
        "--instance-id",
        metavar="ID",
        help="run: a stable identity for this worker (Kafka static membership; a restart with "
        "the same id takes its partitions back at once). Give each worker its own",
    )
    parser.add_argument(
        "--session-timeout",
        type=positive_float,
        metavar="SECONDS",
        help="run: how long a killed worker's partitions wait before moving (default 10)",
    )
    parser.add_argument(
        "--until-caught-up",
        action="store_true",
        help="run: exit once every partition reaches the head it had at start",
    )
    parser.add_argument(
        "--create-tables",
        action="store_true",
        help="create missing framework and projection tables first (tests, the embedded "
        "default; migrate production databases with `alembic upgrade head`)",
    )
    parser.add_argument(
        "--redrive", action="store_true", help="dead-letters: apply the parked events again"
    )
    args = parser.parse_args(argv)
    refuse_ignored(parser, args, args.command, _APPLIES)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        projection = load_projection(args.projection)
        store_url = _store_url(args.app, args.store)
        # Connects lazily: only the URL is checked here.
        engine = create_engine(
            args.database or database_url(projection.name), what="read-model database"
        )
        store = open_store(store_url, name=args.app)
    except (ProjectionError, ConfigurationError, StoreError, ImportError, AttributeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        if args.create_tables:
            setup_tables(engine, projection)
        worker = ProjectionWorker(
            projection,
            store,
            engine,
            batch_size=args.batch_size,
            instance_id=args.instance_id,
            session_timeout=args.session_timeout,
        )
        if args.command in ("run", "rebuild"):
            tune_garbage_collector()
        if args.command == "run":
            stats = run_forever(worker, until_caught_up=args.until_caught_up)
            log.info("%s: stopped; %s", projection.name, stats)
        elif args.command == "rebuild":
            result = worker.rebuild()
            print(
                f"{projection.name}: rebuilt from {result.events} events in "
                f"{result.seconds:.1f}s; positions {result.positions}"
            )
        elif args.command == "status":
            s = status(projection, store, engine)
            print(
                f"{s.name} v{s.version} (tables v{s.stored_version}): lag {s.lag}, "
                f"{s.dead_letters} dead letters{', rebuilding' if s.rebuilding else ''}"
            )
            for p in s.partitions:
                print(f"  partition {p.partition}: position {p.position} head {p.head} lag {p.lag}")
        else:
            if args.redrive:
                result_ = dead_letters.redrive(engine, projection)
                print(
                    f"re-drove {result_.applied}; still failing: {result_.failed or 'none'}; "
                    f"{result_.remaining} left"
                )
            letters = dead_letters.list_dead_letters(engine, projection)
            for d in letters:
                print(
                    f"#{d.id} p{d.partition}@{d.offset} {d.event_type} v{d.version} of "
                    f"{d.aggregate_id} [{d.reason}] {d.error_type}: {d.error_message}"
                )
            if not letters:
                print("no dead letters")
    # StoreError: the read-model database out of reach (run waits for it instead)
    except (ProjectionError, ConfigurationError, StoreError, ValidationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        store.close()
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
