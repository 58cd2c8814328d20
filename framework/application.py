"""Command handling: load, decide, append with the expected version, retry, idempotency.

::

    app = Application("shop", "sqlite:///var/shop.db")

    @app.handles(PlaceOrder)
    def place_order(command: PlaceOrder, uow: UnitOfWork) -> None:
        customer = uow.get(Customer, command.customer_id)
        uow.add(Order(id=command.order_id, customer=customer, lines=command.lines))

    result = app.execute(PlaceOrder(...), user="alice")

A handler reads aggregates through the :class:`UnitOfWork` and calls their methods; every event
they record is appended in one atomic write, checked against the versions the handler saw. When
another writer got there first the handler runs again on fresh state, a bounded number of times.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from uuid import NAMESPACE_URL, UUID, uuid5

import pydantic_core
from eventsourcing.domain import OriginatorVersionError

from framework.codec import EventEnvelope, codec
from framework.commands import Command, Metadata
from framework.domain import Aggregate
from framework.errors import (
    AggregateExistsError,
    AggregateNotFoundError,
    ConcurrencyError,
    ConfigurationError,
    ConflictRetriesExhaustedError,
    EventDecodingError,
    EventEncodingError,
    IdempotencyKeyReusedError,
    StoreError,
    StreamGapError,
    UnknownCommandError,
)
from framework.observability._commands import observed_command
from framework.observability._metrics import instruments
from framework.observability._tracing import destination_of, send_span
from framework.persistence import (
    EventStore,
    NewEvent,
    Positions,
    RecordedEvent,
    open_store,
    store_url_from_env,
)

__all__ = [
    "COMMAND_RECORD_TOPIC",
    "Application",
    "CommandResult",
    "CommandRouter",
    "Decision",
    "Handler",
    "Loader",
    "StoreLoader",
    "UnitOfWork",
    "a_an",
    "command_record_id",
    "replayed_result",
]

log = logging.getLogger(__name__)

A = TypeVar("A", bound=Aggregate)
C = TypeVar("C", bound=Command)

Handler = Callable[[Any, "UnitOfWork"], None]
"""A command handler: ``handler(command, uow)``; it changes aggregates and returns nothing."""

COMMAND_RECORD_TOPIC = "keel.CommandRecorded"
"""The topic of the record each executed command leaves in the store (its idempotency key).
Projections never see it: it is not an event of any aggregate."""

_COMMANDS = uuid5(NAMESPACE_URL, "urn:keel:commands")


def command_record_id(command_id: UUID) -> UUID:
    """The id under which the store records that ``command_id`` was executed."""
    return uuid5(_COMMANDS, str(command_id))


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What executing a command did."""

    command_id: UUID
    aggregate_id: UUID | None
    """The first aggregate the command changed (for a creation command: the new aggregate)."""
    versions: dict[UUID, int]
    """The new version of every aggregate the command changed."""
    positions: Positions = field(default_factory=dict)
    """Where the events landed; pass to ``Projection.wait_until`` to read your own writes."""
    replayed: bool = False
    """True when this command id had run before: nothing new was written."""


class Loader(Protocol):
    """Where a :class:`UnitOfWork` gets the aggregates a handler asks for."""

    def load(self, cls: type[A], aggregate_id: UUID) -> A:
        """The aggregate as of now; raises AggregateNotFoundError."""

    def exists(self, aggregate_id: UUID) -> bool:
        """Whether an aggregate with this id has any event."""


class StoreLoader:
    """The default loader: the application's store (and its snapshots)."""

    def __init__(self, app: Application) -> None:
        self._app = app

    def load(self, cls: type[A], aggregate_id: UUID) -> A:
        return self._app.load(cls, aggregate_id, deciding=True)

    def exists(self, aggregate_id: UUID) -> bool:
        # A stale "absent" is safe: appending version 1 again is a conflict, and the retry sees it.
        return bool(self._app.store.read_for_decision(aggregate_id))


class UnitOfWork:
    """The aggregates one attempt of a command handler has loaded or created."""

    def __init__(self, app: Application, loader: Loader | None = None) -> None:
        self._loader: Loader = loader or StoreLoader(app)
        self._seen: dict[UUID, tuple[Aggregate, int]] = {}

    def get(self, cls: type[A], aggregate_id: UUID) -> A:
        """Load an aggregate (once per attempt); raises AggregateNotFoundError."""
        found = self._seen.get(aggregate_id)
        if found is None:
            aggregate = self._loader.load(cls, aggregate_id)
            self._seen[aggregate_id] = (aggregate, aggregate.version)
            return aggregate
        if not isinstance(found[0], cls):
            raise AggregateNotFoundError(f"{aggregate_id} is {a_an(type(found[0]).__name__)}")
        return found[0]

    def add(self, aggregate: Aggregate) -> None:
        """Register a newly created aggregate; raises AggregateExistsError if its id is taken."""
        if aggregate.id in self._seen or self._loader.exists(aggregate.id):
            raise AggregateExistsError(
                f"an aggregate with id {aggregate.id} exists already; choose a new id"
            )
        self._seen[aggregate.id] = (aggregate, 0)

    def touched(self) -> Iterator[tuple[Aggregate, int]]:
        """Every aggregate loaded or added, with its version when loaded (0 when added), in the
        order the handler touched them."""
        return iter(self._seen.values())


@dataclass
class Decision:
    """What a handler decided: the events to append, not yet written."""

    command: Command
    events: list[NewEvent]
    """The aggregates' new events, in the order they were recorded."""
    changed: list[tuple[Aggregate, int]]
    """Each aggregate with new events, and its version when loaded (0 when created)."""
    touched: list[Aggregate]
    """Every aggregate the handler loaded or created: the changed ones first, in order."""
    versions: dict[UUID, int] = field(default_factory=dict)
    """The new version of each changed aggregate, as this decision left it (a later command
    of the same batch may change the same aggregate object again)."""

    def __post_init__(self) -> None:
        if not self.versions:
            self.versions = {aggregate.id: aggregate.version for aggregate, _ in self.changed}

    @property
    def primary(self) -> UUID | None:
        """The first aggregate changed (for a creation command: the new one)."""
        return self.changed[0][0].id if self.changed else None

    def record(self, positions: Positions | None = None) -> NewEvent:
        """The command record: the idempotency key, appended in the same write as the events.
        Writers that know where the events landed store ``positions`` in it, so a replay can
        hand them back."""
        body: dict[str, Any] = {
            "command_type": self.command.command_type,
            "fingerprint": self.command.fingerprint(),
            "aggregate_id": self.primary,
            "versions": {str(k): v for k, v in self.versions.items()},
        }
        if positions:
            body["positions"] = {str(p): o for p, o in positions.items()}
        return NewEvent(
            aggregate_id=command_record_id(self.command.command_id),
            version=1,
            topic=COMMAND_RECORD_TOPIC,
            state=pydantic_core.to_json(body),
            route_with=self.record_route,
        )

    @property
    def record_route(self) -> UUID:
        """Where the command record goes: beside the command's primary aggregate."""
        return self.primary or self.command.routing_id()

    def result(self, positions: Positions) -> CommandResult:
        return CommandResult(self.command.command_id, self.primary, self.versions, positions)


class CommandRouter(Protocol):
    """Carries commands to the process that decides them (a sharded store's shard owner).

    A store that decides commands elsewhere returns one from ``command_router(app)``;
    embedded stores return None and commands are decided in the calling process."""

    def execute(self, command: Command, metadata: Metadata, timeout: float | None) -> CommandResult:
        """Run ``command`` where it is decided and return its result, or raise the error its
        handler raised; OutcomeUnknownError when no answer came within ``timeout``."""

    def send(self, command: Command, metadata: Metadata) -> None:
        """Hand ``command`` over without waiting for its outcome."""

    def close(self) -> None:
        """Release the router's clients."""


class Application:
    """Routes commands to handlers and appends the events they cause.

    ``store`` is an :class:`~framework.persistence.EventStore` or a URL for
    :func:`~framework.persistence.open_store`; by default it comes from the environment
    (``KEEL_<NAME>_EVENT_STORE``, then ``KEEL_EVENT_STORE``), else a SQLite file under
    ``var/``. ``snapshot_every`` takes a snapshot of an aggregate each time its version crosses
    a multiple of it (``None`` turns snapshots off).

    On the embedded stores a command is decided in the calling process. On Kafka it is decided
    by the one writer process that owns its shard (``python -m framework.writer run``); other
    processes send it there and wait for the result (see :mod:`framework.writer`).
    """

    def __init__(
        self,
        name: str,
        store: EventStore | str | None = None,
        *,
        snapshot_every: int | None = 100,
        max_conflict_retries: int = 10,
    ) -> None:
        self.name = name
        if store is None:
            store = store_url_from_env(name)
        self.store = open_store(store, name=name) if isinstance(store, str) else store
        self.snapshot_every = snapshot_every
        self.max_conflict_retries = max_conflict_retries
        self._handlers: dict[type[Command], Handler] = {}
        self._no_snapshots: set[type[Aggregate]] = set()
        self._lock = threading.Lock()
        self._router: CommandRouter | None = None
        self._router_ready = False
        self._turns = [threading.RLock() for _ in range(64)]  # striped by routing id
        # Test hook: framework.testing checks the state handlers leave against a replay. It
        # gets every aggregate the handler touched, changed or not.
        self.on_commit: Callable[[list[Aggregate]], None] | None = None

    def using(self, store: EventStore | str) -> Application:
        """A copy of this application (same handlers and settings) on another store."""
        copy = Application(
            self.name,
            store,
            snapshot_every=self.snapshot_every,
            max_conflict_retries=self.max_conflict_retries,
        )
        copy._handlers = self._handlers
        copy._turns = self._turns  # the same process: same-aggregate commands still take turns
        return copy

    # -- registration -------------------------------------------------------------------------

    def handles(self, command_type: type[C]) -> Callable[[Callable[[C, UnitOfWork], None]], Any]:
        """Decorator registering the handler of ``command_type``."""

        def register(handler: Callable[[C, UnitOfWork], None]) -> Callable[[C, UnitOfWork], None]:
            if command_type in self._handlers:
                raise ConfigurationError(f"{command_type.__name__} already has a handler")
            self._handlers[command_type] = handler
            return handler

        return register

    @property
    def command_types(self) -> dict[str, type[Command]]:
        """Every command this application handles, by its public name."""
        return {cls.command_type: cls for cls in self._handlers}

    @property
    def router(self) -> CommandRouter | None:
        """The store's command router (None: commands are decided in this process)."""
        with self._lock:
            if not self._router_ready:
                self._router = self.store.command_router(self)
                self._router_ready = True
            return self._router

    # -- commands -----------------------------------------------------------------------------

    def execute_raw(
        self, command_type: str, data: Mapping[str, Any] | str | bytes, **metadata: Any
    ) -> CommandResult:
        """Validate untrusted input for the command named ``command_type``, then execute it."""
        cls = self.command_types.get(command_type)
        if cls is None:
            known = ", ".join(sorted(self.command_types)) or "none"
            raise UnknownCommandError(f"unknown command {command_type!r} (known: {known})")
        return self.execute(cls.parse(data), **metadata)

    def execute(
        self,
        command: Command,
        *,
        user: str | None = None,
        correlation_id: UUID | None = None,
        causation_id: UUID | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        """Run ``command``'s handler and append its events atomically.

        Retries on a version conflict (up to ``max_conflict_retries``), then raises
        ConflictRetriesExhaustedError. Executing a command id that ran before returns the first
        result and writes nothing (the same id with another payload raises
        IdempotencyKeyReusedError). Domain errors from the handler propagate; nothing is
        written. On Kafka the command may be decided in another process: ``timeout`` bounds the
        wait for its result (OutcomeUnknownError; re-sending the same command is safe).
        """
        metadata = self._metadata(command, user, correlation_id, causation_id)
        with observed_command(metadata) as observed:
            router = self.router
            if router is not None:
                result = router.execute(command, observed.metadata, timeout)
            else:
                result = self.execute_here(command, observed.metadata)
            observed.done(result)
            return result

    def send(
        self,
        command: Command,
        *,
        user: str | None = None,
        correlation_id: UUID | None = None,
        causation_id: UUID | None = None,
    ) -> UUID:
        """Hand ``command`` over without waiting for its outcome; returns its command id.

        On Kafka the command is in the commands topic when this returns, and its shard's
        writer executes it exactly once. The embedded stores have no queue: they execute it
        here (errors propagate)."""
        metadata = self._metadata(command, user, correlation_id, causation_id)
        with observed_command(metadata) as observed:
            router = self.router
            if router is not None:
                router.send(command, observed.metadata)
            else:
                observed.done(self.execute_here(command, observed.metadata))
        return command.command_id

    def _metadata(
        self,
        command: Command,
        user: str | None,
        correlation_id: UUID | None,
        causation_id: UUID | None,
    ) -> Metadata:
        self.handler_for(command)
        return Metadata(
            command_id=command.command_id,
            command_type=command.command_type,
            user=user,
            correlation_id=correlation_id or command.command_id,
            causation_id=causation_id or command.command_id,
        )

    def handler_for(self, command: Command) -> Handler:
        """The handler registered for ``command``'s type; raises UnknownCommandError."""
        handler = self._handlers.get(type(command))
        if handler is None:
            raise UnknownCommandError(
                f"no handler for {type(command).__name__}: register one with @app.handles"
            )
        return handler

    def execute_here(self, command: Command, metadata: Metadata) -> CommandResult:
        """Decide ``command`` in this process and append through the store's version check
        (what :meth:`execute` does on the embedded stores).

        Commands for the same aggregate (by routing id) take turns within this process, so
        threads hammering one aggregate never race each other into exhausted retries; other
        processes still meet the store's version check."""
        with self._turns[hash(command.routing_id()) % len(self._turns)]:
            return self._execute_here(command, metadata)

    def _execute_here(self, command: Command, metadata: Metadata) -> CommandResult:
        for _attempt in range(self.max_conflict_retries + 1):
            previous = self.previous_result(command)
            if previous is not None:
                return previous
            decision = self.decide(command, metadata, UnitOfWork(self))
            try:
                positions = self._append(decision)
            except ConcurrencyError:
                instruments.command_conflicts.add(1, {"command": command.command_type})
                continue
            return self.committed(decision, positions)
        raise ConflictRetriesExhaustedError(
            f"{command.command_type} {command.command_id} lost {self.max_conflict_retries + 1} "
            "races for the same aggregates; nothing was written"
        )

    def _append(self, decision: Decision) -> Positions:
        events = [*decision.events, decision.record()]
        primary = decision.primary
        system, topic = destination_of(self.store)
        with send_span(
            topic,
            system=system,
            count=len(events),
            aggregate_id=primary,
            version=decision.versions.get(primary) if primary else None,
        ):
            started = time.perf_counter()
            positions = self.store.append(events)
        instruments.store_txn_duration.record(time.perf_counter() - started)
        instruments.store_append_events.add(len(decision.events))
        return positions

    def decide(self, command: Command, metadata: Metadata, uow: UnitOfWork) -> Decision:
        """Run the handler and encode the events it caused; nothing is written."""
        self.handler_for(command)(command, uow)
        events: list[NewEvent] = []
        changed: list[tuple[Aggregate, int]] = []
        unchanged: list[Aggregate] = []
        for aggregate, loaded_version in uow.touched():
            pending = aggregate.collect_events()
            if pending:
                changed.append((aggregate, loaded_version))
                events.extend(codec.encode(e, metadata) for e in pending)
            else:
                unchanged.append(aggregate)
        return Decision(command, events, changed, [a for a, _ in changed] + unchanged)

    def committed(self, decision: Decision, positions: Positions) -> CommandResult:
        """After a decision's events are written: test hooks, snapshots, the result."""
        if self.on_commit is not None:
            self.on_commit(decision.touched)
        for aggregate, loaded_version in decision.changed:
            self._maybe_snapshot(aggregate, loaded_version)
        return decision.result(positions)

    def previous_result(self, command: Command) -> CommandResult | None:
        """The result of ``command``'s id if it ran before (``replayed=True``), else None.

        Raises IdempotencyKeyReusedError when that id ran with another type or payload."""
        # A stale "absent" is safe: the command record's version 1 is then a conflict.
        found = self.store.read_for_decision(command_record_id(command.command_id))
        if not found:
            return None
        return replayed_result(self.store, command, found[0])

    # -- aggregates ---------------------------------------------------------------------------

    def load(
        self,
        cls: type[A],
        aggregate_id: UUID,
        *,
        version: int | None = None,
        deciding: bool = False,
    ) -> A:
        """Rebuild an aggregate from its snapshot (if any) and later events.

        ``deciding`` (used by command handlers) allows a read that may lag the log where the
        store's append catches the difference (see ``EventStore.read_for_decision``)."""
        aggregate: Aggregate | None = None
        after = 0
        if version is None and self.snapshot_every:
            aggregate = self._from_snapshot(cls, aggregate_id)
            after = aggregate.version if aggregate is not None else 0
        if deciding and version is None:
            events = self.store.read_for_decision(aggregate_id, after_version=after)
            if not events and aggregate is None:  # maybe not indexed yet: never say "not found"
                events = self.store.read(aggregate_id)
        else:
            events = self.store.read(aggregate_id, after_version=after, up_to_version=version)
        for recorded in events:
            try:
                aggregate = codec.decode(recorded).event.mutate(aggregate)
            except OriginatorVersionError as error:
                have = aggregate.version if aggregate is not None else 0
                raise StreamGapError(
                    f"aggregate {aggregate_id} has version {recorded.version} after version "
                    f"{have}: its stored events skip a version (something wrote around the "
                    "store, or the data was damaged)"
                ) from error
        if aggregate is None:
            raise AggregateNotFoundError(f"no {cls.__name__} has id {aggregate_id}")
        if not isinstance(aggregate, cls):
            raise AggregateNotFoundError(
                f"{aggregate_id} is {a_an(type(aggregate).__name__)}, not {a_an(cls.__name__)}"
            )
        return aggregate

    def history(self, aggregate_id: UUID) -> list[EventEnvelope]:
        """Every event of one aggregate, decoded, with its metadata."""
        return [codec.decode(recorded) for recorded in self.store.read(aggregate_id)]

    def _from_snapshot(self, cls: type[A], aggregate_id: UUID) -> A | None:
        try:
            snapshot = self.store.latest_snapshot(aggregate_id)
            return codec.decode_snapshot(snapshot, cls) if snapshot else None
        except (EventDecodingError, StoreError) as error:
            log.warning("ignoring the snapshot of %s: %s", aggregate_id, error)
            return None

    def _maybe_snapshot(self, aggregate: Aggregate, previous_version: int) -> None:
        every = self.snapshot_every
        if not every or aggregate.version // every == previous_version // every:
            return
        cls = type(aggregate)
        if cls in self._no_snapshots:
            return
        if not codec.round_trips(aggregate):
            with self._lock:
                self._no_snapshots.add(cls)
            log.warning(
                "snapshots of %s are off: its state does not survive JSON; annotate its "
                "attributes on the class (e.g. `status: Status`) so they decode with their types",
                cls.__name__,
            )
            return
        try:
            self.store.save_snapshot(codec.encode_snapshot(aggregate))
        except (StoreError, EventEncodingError) as error:
            log.warning("could not save a snapshot of %s: %s", aggregate.id, error)

    def close(self) -> None:
        """Close the command router and the store."""
        with self._lock:
            router, self._router = self._router, None
        if router is not None:
            router.close()
        self.store.close()


def a_an(noun: str) -> str:
    """``"an Order"``, ``"a Customer"``: the noun with its indefinite article."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def replayed_result(store: EventStore, command: Command, record: RecordedEvent) -> CommandResult:
    """The result a command record stands for; refuses a re-used id with another payload."""
    body = pydantic_core.from_json(record.state)
    ran_as = body.get("command_type", command.command_type)
    if ran_as != command.command_type:
        differs = f"as {a_an(str(ran_as))}, not {a_an(command.command_type)}"
    elif body.get("fingerprint", command.fingerprint()) != command.fingerprint():
        differs = f"as {a_an(str(ran_as))} with another payload"
    else:
        differs = ""
    if differs:
        raise IdempotencyKeyReusedError(
            f"command id {command.command_id} already ran {differs}; nothing was written. "
            "Give a new command a new id"
        )
    primary = body.get("aggregate_id")
    stored = body.get("positions")
    # Without stored positions, the head is past the command's events: a safe place to wait.
    positions = {int(p): int(o) for p, o in stored.items()} if stored else dict(store.head())
    return CommandResult(
        command_id=command.command_id,
        aggregate_id=UUID(primary) if primary else None,
        versions={UUID(k): int(v) for k, v in body.get("versions", {}).items()},
        positions=positions,
        replayed=True,
    )
