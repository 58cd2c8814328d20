"""Running process managers: input workers, the deadline runner and the outbox relay.

::

    worker = ProcessWorker(PaymentProcess(), sources=[shop.store, payments.store],
                           targets=[shop, payments], engine=engine)
    worker.run(stop)          # until stop is set: inputs, deadlines and the relay
    worker.status()           # active instances, overdue deadlines, oldest open instance

- **Inputs.** For each source application the manager reads, a projection worker (positions in
  SQL, consumer group ``<source>.<pm>.<source>``, retries with backoff, dead letters) whose one
  "projection" is the manager: each event loads its instance's stream, decides, and records the
  facts, the derived rows, the outbox commands and the new position in one transaction. Kafka
  partitions the input by aggregate, and the instance's version check settles the rest: two
  workers never both move one instance.
- **Deadlines.** :func:`~framework.process.deadlines.fire_due` appends ``DeadlineReached`` for
  each deadline that the clock says is due, in the same kind of transaction; a deadline of an
  instance that completed meanwhile is a no-op, counted as ``deadline_after_completion``. A
  failing deadline handler follows ``pm.on_error`` (retry, then park; skip; stop), and a
  parked one is re-driven with :meth:`ProcessWorker.redrive`.
- **Relay.** :class:`Relay` sends the outbox's commands with ``app.send`` to the application
  that handles them and marks them sent. A crash between the two re-sends the same command id,
  which the target replays: the effect is exactly-once.

Rebuilding projections never touches a process manager: its input is refused by
:func:`framework.rebuild.rebuild`, and it has no tables to shadow.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from framework import dead_letters
from framework.application import Application
from framework.database import Backoff, serialize_ddl
from framework.dead_letters import DeadLetter, RedriveResult
from framework.errors import (
    CommandError,
    ConfigurationError,
    DomainError,
    ProcessConflictError,
    ProcessError,
    ProjectionStoppedError,
)
from framework.observability import ProcessSampler
from framework.persistence import EventStore
from framework.positions import (
    dead_letters_table,
    framework_metadata,
    now,
    read_positions,
    reporting_missing_tables,
)
from framework.positions import write_positions as _write_positions
from framework.process.deadlines import (
    ParkedDeadline,
    fire_due,
    parked_deadlines,
    redrive_deadlines,
)
from framework.process.manager import Clock, ProcessManager, SystemClock, UnknownInstanceError
from framework.process.store import (
    count,
    counters,
    counters_table,
    deadlines_table,
    instances_table,
    load_instance,
    outbox_table,
    record,
)
from framework.projection import Projection
from framework.worker import ProjectionWorker

__all__ = [
    "ProcessInput",
    "ProcessStatus",
    "ProcessWorker",
    "Relay",
    "fire_due",
    "instances",
    "redrive_deadlines",
    "redrive_parked",
    "start_at_head",
    "status",
]

log = logging.getLogger(__name__)

_CONFLICT_RETRIES = 50


class ProcessInput(Projection):
    """The input side of a process manager over one source application, as a projection the
    worker runtime can run (built by :meth:`for_manager`; never rebuilt)."""

    version = 1
    metadata = framework_metadata
    manager: ProcessManager
    clock: Clock
    stop_event: threading.Event

    @classmethod
    def for_manager(cls, pm: ProcessManager, source: str, clock: Clock) -> ProcessInput:
        subclass = type(
            f"{type(pm).__name__}Input",
            (cls,),
            {"name": f"{pm.name}.{source}", "handlers": dict.fromkeys(pm._reactions, "react")},
        )
        made: ProcessInput = subclass()
        made.manager, made.clock, made.stop_event = pm, clock, threading.Event()
        return made

    def react(self, event: Any, conn: Connection) -> None:
        pm = self.manager
        instance_id = pm.instance_of(event)
        for _attempt in range(_CONFLICT_RETRIES):
            try:
                with conn.begin_nested():
                    instance = load_instance(conn, pm, instance_id)
                    try:
                        outcome = pm.handle(instance, event, self.clock.now())
                    except (UnknownInstanceError, ProcessError):
                        raise
                    except Exception as error:
                        if pm.on_error == "stop":
                            self.stop_event.set()
                            raise
                        if pm.on_error != "skip":
                            raise
                        log.warning(
                            "%s: skipping a failing %s: %s",
                            pm.name,
                            type(event).__qualname__,
                            error,
                        )
                        outcome = pm.failed(instance, event, error)
                    record(conn, instance, outcome)
                return
            except ProcessConflictError as conflict:
                log.info("%s", conflict)
        raise ProcessConflictError(f"{pm.name}: instance {instance_id} kept moving; retried")

    def parked(self, conn: Connection, event: Any, error: BaseException) -> None:
        count(conn, self.manager.name, "input_parked")  # for keel.process.outcomes

    def shadow(self, *, rename_constraints: bool = False) -> Projection:
        raise ConfigurationError(
            f"{self.manager.name} is a process manager: rebuilding would issue its commands "
            "again, so it is never rebuilt (its state is its own stream)"
        )

    def create_tables(self, conn: Connection) -> None:
        framework_metadata.create_all(conn)

    def drop_tables(self, conn: Connection) -> None:
        raise ConfigurationError("a process manager's tables are the framework's: not dropped")


def start_at_head(projection: Projection, store: EventStore, engine: Engine) -> bool:
    """Bootstrap ``projection`` (or a process manager's input) from "now": when it has no
    stored positions yet, store the store's head, so it skips the history. Returns whether it
    did (``False``: it has positions already and goes on from them)."""
    with engine.begin() as conn:
        if read_positions(conn, projection.key):
            return False
        head = dict(store.head())
        if head:
            _write_positions(conn, projection.key, head, dict.fromkeys(head))
        return True


# -- the relay --------------------------------------------------------------------------------


class Relay:
    """Sends outbox commands to the applications that handle them (``targets``).

    ``pms`` limits it to some process managers' commands (default: every row in the outbox).
    """

    def __init__(
        self, engine: Engine, targets: Sequence[Application], pms: Sequence[str] | None = None
    ) -> None:
        self.engine = engine
        self.pms = list(pms) if pms else None
        self.routes: dict[str, tuple[Application, Any]] = {}
        for app in targets:
            for name, cls in app.command_types.items():
                if name in self.routes:
                    raise ConfigurationError(
                        f"command {name} is handled by both {self.routes[name][0].name!r} and "
                        f"{app.name!r}: give one of them another command_type"
                    )
                self.routes[name] = (app, cls)
        self.sent = 0
        self.refused = 0

    def send_pending(self, *, limit: int = 100) -> int:
        """Send up to ``limit`` unsent commands, oldest first; returns how many were sent.
        A store that is unavailable stops the round (the rest are sent next time)."""
        t = outbox_table
        query = sa.select(t.c.command_id, t.c.command_type, t.c.payload, t.c.instance_id).where(
            t.c.sent_at.is_(None)
        )
        if self.pms:
            query = query.where(t.c.pm.in_(self.pms))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(t.c.seq).limit(limit)).all()
        done = 0
        for command_id, command_type, payload, _instance in rows:
            route = self.routes.get(command_type)
            if route is None:
                raise ConfigurationError(
                    f"the outbox holds a {command_type} command, which none of the relay's "
                    f"targets ({', '.join(sorted({a.name for a, _ in self.routes.values()}))}) "
                    "handles: give the relay that application"
                )
            app, cls = route
            outcome = "sent"
            try:
                app.send(cls.model_validate(payload), user="process-manager")
            except (DomainError, CommandError) as refused:
                # Embedded stores decide in place: the target refused; the command is done.
                outcome = f"refused: {type(refused).__name__}: {refused}"[:2000]
                self.refused += 1
            with self.engine.begin() as conn:
                conn.execute(
                    t.update()
                    .where(t.c.command_id == command_id, t.c.sent_at.is_(None))
                    .values(sent_at=now(), outcome=outcome)
                )
            done += 1
            self.sent += 1
        return done


# -- the worker -------------------------------------------------------------------------------


class ProcessWorker:
    """Runs one process manager: an input worker per source store, the deadline runner and
    the relay, until stopped. Several such workers may run at once (in several processes):
    Kafka shares the input partitions between them, and every write is guarded.

    ``start_from="now"`` makes a manager that has never run skip its sources' history.
    ``relay=False`` leaves sending to another process (``Relay``). ``worker_options`` go to
    each :class:`~framework.worker.ProjectionWorker` (``instance_id``, ``session_timeout``...).
    """

    def __init__(
        self,
        pm: ProcessManager,
        *,
        sources: Sequence[EventStore],
        targets: Sequence[Application],
        engine: Engine,
        clock: Clock | None = None,
        start_from: str = "beginning",
        relay: bool = True,
        tick: float = 0.2,
        **worker_options: Any,
    ) -> None:
        if start_from not in ("beginning", "now"):
            raise ConfigurationError(f"start_from is 'beginning' or 'now', not {start_from!r}")
        self.pm = pm
        self.engine = engine
        self.clock = clock or SystemClock()
        self.start_from = start_from
        self.tick = tick
        self.inputs = [ProcessInput.for_manager(pm, s.name, self.clock) for s in sources]
        options = {
            "max_attempts": pm.max_attempts,
            "retry_initial": pm.retry_initial,
            "retry_max": pm.retry_max,
            **worker_options,
        }
        instance_id = options.pop("instance_id", None)
        self.workers = [
            ProjectionWorker(
                i,
                s,
                engine,
                instance_id=f"{instance_id}.{s.name}" if instance_id else None,
                **options,
            )
            for i, s in zip(self.inputs, sources, strict=True)
        ]
        self.relay = Relay(engine, targets, [pm.name]) if relay else None
        self.stop_event = threading.Event()

    def setup(self) -> None:
        """Create the framework's tables when missing (tests; Alembic in production)."""
        with self.engine.begin() as conn:
            serialize_ddl(conn)
            framework_metadata.create_all(conn)

    def run(self, stop: threading.Event | None = None) -> None:
        """Handle inputs, deadlines and the outbox until ``stop`` is set."""
        stop = stop or self.stop_event
        self.stop_event = stop
        if self.start_from == "now":
            for i, w in zip(self.inputs, self.workers, strict=True):
                start_at_head(i, w.store, self.engine)
        threads = []
        for i, w in zip(self.inputs, self.workers, strict=True):
            i.stop_event = stop  # on_error="stop" sets it
            thread = threading.Thread(target=w.run, args=(stop,), name=i.name, daemon=True)
            thread.start()
            threads.append(thread)
        sampler = ProcessSampler([self]).start()  # keel.process.* while it runs
        backoff = Backoff(0.2, 5.0)
        # Deadlines wait until the inputs have caught up with what was in the log at start:
        # after an outage, a payment that came in meanwhile is seen before its deadline fires.
        heads = [dict(w.store.head()) for w in self.workers]
        try:
            while not stop.is_set():
                try:
                    if heads and self._inputs_reached(heads):
                        heads = []
                    self.step(deadlines=not heads)
                    backoff.reset()
                    stop.wait(self.tick)
                except (ConfigurationError, ProjectionStoppedError):
                    raise
                except Exception as error:
                    delay = backoff.next()
                    log.warning("%s: %s; again in %.1fs", self.pm.name, error, delay)
                    stop.wait(delay)
        finally:
            stop.set()
            sampler.stop()
            for thread in threads:
                thread.join(30)

    def step(self, *, deadlines: bool = True) -> int:
        """One round of deadlines and relay; returns how much it did."""
        done = fire_due(self.pm, self.engine, self.clock, stop=self.stop_event) if deadlines else 0
        if self.relay is not None:
            done += self.relay.send_pending()
        return done

    def _inputs_reached(self, heads: list[dict[int, int]]) -> bool:
        """Whether every input's stored positions reached ``heads`` (offsets have gaps:
        a position short of the head with no event in between counts as there)."""
        with self.engine.connect() as conn:
            stored = [read_positions(conn, i.key) for i in self.inputs]
        for w, head, positions in zip(self.workers, heads, stored, strict=True):
            for partition, end in head.items():
                at = positions.get(partition, 0)
                if at >= end:
                    continue
                ahead = w.store.read_partition(partition, start=at, limit=1)
                if ahead and ahead[0].offset < end:
                    return False
        return True

    def status(self) -> ProcessStatus:
        return status(self.pm, self.engine, self.clock)

    def dead_letters(self) -> list[DeadLetter]:
        """The manager's dead letters: its inputs' parked events, then its parked deadlines
        (``partition == -1``; :func:`~framework.process.deadlines.parked_deadlines` reads
        them as such)."""
        found: list[DeadLetter] = []
        for key in [*(i.key for i in self.inputs), self.pm.name]:
            found += dead_letters.list_dead_letters(self.engine, key)
        return found

    def redrive(self, ids: Collection[int] | None = None) -> RedriveResult:
        """Re-drive the dead letters with ``ids`` (default: all): parked input events, each
        aggregate's in order (:func:`framework.dead_letters.redrive`), and parked deadlines,
        each fired once (:func:`~framework.process.deadlines.redrive_deadlines`)."""
        total = RedriveResult()
        for i in self.inputs:
            letters = dead_letters.list_dead_letters(self.engine, i)
            chosen = sorted({d.aggregate_id for d in letters if ids is None or d.id in ids})
            if chosen:
                done = dead_letters.redrive(self.engine, i, aggregate_ids=chosen)
                total.applied += done.applied
                total.failed.update(done.failed)
        done = redrive_deadlines(self.pm, self.engine, self.clock, ids=ids)
        total.applied += done.applied
        total.failed.update(done.failed)
        total.remaining = len(self.dead_letters())
        return total


def redrive_parked(
    workers: Sequence[ProcessWorker], ids: Collection[int] | None = None
) -> dict[str, RedriveResult]:
    """Re-drive the dead letters with ``ids`` (default: all) of ``workers``, by manager name.
    An id none of them has parked is refused first (ConfigurationError, nothing re-driven);
    each worker gets only its own ids, so a manager without any is left alone."""
    if ids is None:
        return {w.pm.name: w.redrive() for w in workers}
    parked = {w.pm.name: {d.id for d in w.dead_letters()} for w in workers}
    dead_letters.refuse_not_parked(
        ids, {i for found in parked.values() for i in found}, "dead letter id(s)"
    )
    return {
        w.pm.name: w.redrive(mine)
        for w in workers
        if (mine := [i for i in ids if i in parked[w.pm.name]])
    }


# -- status -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessStatus:
    """What an operator needs to know about one process manager."""

    name: str
    active: int
    completed: int
    overdue: list[tuple[str, str, datetime]]
    """``(instance_id, deadline, due_at)`` of every deadline past due (should be empty)."""
    oldest_open: tuple[str, datetime] | None
    outbox_pending: int
    dead_letters: int
    """Parked inputs and parked deadlines."""
    counters: dict[str, int] = field(default_factory=dict)
    parked: list[ParkedDeadline] = field(default_factory=list)
    """Deadlines whose handler failed every attempt (not fired until re-driven)."""

    def lines(self) -> list[str]:
        oldest = (
            f"{self.oldest_open[0]} since {self.oldest_open[1]:%Y-%m-%d %H:%M:%S}"
            if self.oldest_open
            else "none"
        )
        counted = ", ".join(f"{k}={v}" for k, v in sorted(self.counters.items())) or "none"
        out = [
            f"{self.name}: {self.active} active, {self.completed} completed; oldest open: {oldest}",
            f"  overdue deadlines: {len(self.overdue)}; parked deadlines: {len(self.parked)}; "
            f"outbox pending: {self.outbox_pending}; dead letters: {self.dead_letters}",
            f"  counters: {counted}",
        ]
        out += [f"  OVERDUE {i} {n} due {d:%Y-%m-%d %H:%M:%S}" for i, n, d in self.overdue[:20]]
        out += [
            f"  PARKED #{p.id} {p.instance_id} {p.name} after {p.attempts} attempt(s): "
            f"{p.error_type.rsplit('.', 1)[-1]}: {p.error_message[:200]}"
            for p in self.parked[:20]
        ]
        return out

    def as_json(self) -> dict[str, Any]:
        """The status as JSON-ready values (``--json`` of the commands)."""
        return {
            "name": self.name,
            "active": self.active,
            "completed": self.completed,
            "overdue": [[i, n, str(d)] for i, n, d in self.overdue],
            "parked_deadlines": [
                {
                    "id": p.id,
                    "instance_id": p.instance_id,
                    "deadline": p.name,
                    "due_at": str(p.due_at),
                    "error_type": p.error_type,
                    "error_message": p.error_message,
                    "attempts": p.attempts,
                }
                for p in self.parked
            ],
            "oldest_open": [str(v) for v in self.oldest_open] if self.oldest_open else None,
            "outbox_pending": self.outbox_pending,
            "dead_letters": self.dead_letters,
            "counters": self.counters,
        }


def status(
    pm: ProcessManager, engine: Engine, clock: Clock | None = None, *, grace_seconds: float = 0.0
) -> ProcessStatus:
    """Active and completed instances, overdue deadlines (past due by more than
    ``grace_seconds``), parked deadlines, the oldest open instance, unsent commands, dead
    letters, counters."""
    from datetime import timedelta

    moment = (clock or SystemClock()).now() - timedelta(seconds=grace_seconds)
    i, d, o = instances_table, deadlines_table, outbox_table
    with (
        reporting_missing_tables(engine, pm.name, [i, d, o, counters_table, dead_letters_table]),
        engine.connect() as conn,
    ):
        by_state: dict[bool, int] = {
            bool(done): int(n)
            for done, n in conn.execute(
                sa.select(i.c.completed, sa.func.count())
                .where(i.c.pm == pm.name)
                .group_by(i.c.completed)
            )
        }
        overdue = [
            (a, b, c)
            for a, b, c in conn.execute(
                sa.select(d.c.instance_id, d.c.name, d.c.due_at)
                .where(d.c.pm == pm.name, d.c.due_at < moment)
                .order_by(d.c.due_at)
            )
        ]
        oldest = conn.execute(
            sa.select(i.c.instance_id, i.c.started_at)
            .where(i.c.pm == pm.name, i.c.completed.is_(False))
            .order_by(i.c.started_at)
            .limit(1)
        ).first()
        pending = conn.execute(
            sa.select(sa.func.count()).where(o.c.pm == pm.name, o.c.sent_at.is_(None))
        ).scalar_one()
        dl = dead_letters_table
        parked = conn.execute(
            sa.select(sa.func.count()).where(
                (dl.c.projection == pm.name)  # its deadlines
                | dl.c.projection.startswith(f"{pm.name}.", autoescape=True)  # its inputs
            )
        ).scalar_one()
        counted = counters(conn, pm.name)
    return ProcessStatus(
        name=pm.name,
        active=int(by_state.get(False, 0)),
        completed=int(by_state.get(True, 0)),
        overdue=overdue,
        oldest_open=(oldest[0], oldest[1]) if oldest else None,
        outbox_pending=int(pending),
        dead_letters=int(parked),
        counters=counted,
        parked=parked_deadlines(pm, engine),
    )


def instances(
    engine: Engine, pm: ProcessManager, *, open_only: bool = False, limit: int = 100
) -> list[Mapping[str, Any]]:
    """The newest instances of ``pm`` (for the admin)."""
    t = instances_table
    query = sa.select(t).where(t.c.pm == pm.name)
    if open_only:
        query = query.where(t.c.completed.is_(False))
    with engine.connect() as conn:
        return [
            dict(r._mapping)
            for r in conn.execute(query.order_by(t.c.started_at.desc()).limit(limit))
        ]
