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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import NAMESPACE_URL, UUID, uuid5

import pydantic_core

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
    StoreError,
    UnknownCommandError,
)
from framework.persistence import EventStore, NewEvent, Positions, open_store, store_url_from_env

__all__ = ["COMMAND_RECORD_TOPIC", "Application", "CommandResult", "Handler", "UnitOfWork"]

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


class UnitOfWork:
    """The aggregates one attempt of a command handler has loaded or created."""

    def __init__(self, app: Application) -> None:
        self._app = app
        self._seen: dict[UUID, tuple[Aggregate, int]] = {}

    def get(self, cls: type[A], aggregate_id: UUID) -> A:
        """Load an aggregate (once per attempt); raises AggregateNotFoundError."""
        found = self._seen.get(aggregate_id)
        if found is None:
            aggregate = self._app.load(cls, aggregate_id, deciding=True)
            self._seen[aggregate_id] = (aggregate, aggregate.version)
            return aggregate
        if not isinstance(found[0], cls):
            raise AggregateNotFoundError(f"{aggregate_id} is a {type(found[0]).__name__}")
        return found[0]

    def add(self, aggregate: Aggregate) -> None:
        """Register a newly created aggregate; raises AggregateExistsError if its id is taken."""
        # A stale "absent" is safe: appending version 1 again is a conflict, and the retry sees it.
        if aggregate.id in self._seen or self._app.store.read_for_decision(aggregate.id):
            raise AggregateExistsError(
                f"an aggregate with id {aggregate.id} exists already; choose a new id"
            )
        self._seen[aggregate.id] = (aggregate, 0)

    def touched(self) -> Iterator[tuple[Aggregate, int]]:
        """Every aggregate loaded or added, with its version when loaded (0 when added), in the
        order the handler touched them."""
        return iter(self._seen.values())


class Application:
    """Routes commands to handlers and appends the events they cause.

    ``store`` is an :class:`~framework.persistence.EventStore` or a URL for
    :func:`~framework.persistence.open_store`; by default it comes from the environment
    (``KEEL_<NAME>_EVENT_STORE``, then ``KEEL_EVENT_STORE``), else a SQLite file under
    ``var/``. ``snapshot_every`` takes a snapshot of an aggregate each time its version crosses
    a multiple of it (``None`` turns snapshots off).
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
        # Test hook: framework.testing checks the state handlers leave against a replay.
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
    ) -> CommandResult:
        """Run ``command``'s handler and append its events atomically.

        Retries on a version conflict (up to ``max_conflict_retries``), then raises
        ConflictRetriesExhaustedError. Executing a command id that ran before returns the first
        result and writes nothing. Domain errors from the handler propagate; nothing is written.
        """
        handler = self._handlers.get(type(command))
        if handler is None:
            raise UnknownCommandError(
                f"no handler for {type(command).__name__}: register one with @app.handles"
            )
        metadata = Metadata(
            command_id=command.command_id,
            command_type=command.command_type,
            user=user,
            correlation_id=correlation_id or command.command_id,
            causation_id=causation_id or command.command_id,
        )
        for _attempt in range(self.max_conflict_retries + 1):
            previous = self._previous_result(command.command_id)
            if previous is not None:
                return previous
            uow = UnitOfWork(self)
            handler(command, uow)
            try:
                return self._commit(command, uow, metadata)
            except ConcurrencyError:
                continue
        raise ConflictRetriesExhaustedError(
            f"{command.command_type} {command.command_id} lost {self.max_conflict_retries + 1} "
            "races for the same aggregates; nothing was written"
        )

    def _commit(self, command: Command, uow: UnitOfWork, metadata: Metadata) -> CommandResult:
        events: list[NewEvent] = []
        changed: list[tuple[Aggregate, int]] = []
        for aggregate, loaded_version in uow.touched():
            pending = aggregate.collect_events()
            if pending:
                changed.append((aggregate, loaded_version))
                events.extend(codec.encode(e, metadata) for e in pending)
        versions = {aggregate.id: aggregate.version for aggregate, _ in changed}
        primary = changed[0][0].id if changed else None
        record = {
            "command_type": command.command_type,
            "aggregate_id": primary,
            "versions": {str(k): v for k, v in versions.items()},
        }
        events.append(
            NewEvent(
                aggregate_id=command_record_id(command.command_id),
                version=1,
                topic=COMMAND_RECORD_TOPIC,
                state=pydantic_core.to_json(record),
                route_with=primary,
            )
        )
        positions = self.store.append(events)
        if self.on_commit is not None:
            self.on_commit([aggregate for aggregate, _ in uow.touched()])
        for aggregate, loaded_version in changed:
            self._maybe_snapshot(aggregate, loaded_version)
        return CommandResult(command.command_id, primary, versions, positions)

    def _previous_result(self, command_id: UUID) -> CommandResult | None:
        # A stale "absent" is safe: the command record's version 1 is then a conflict.
        found = self.store.read_for_decision(command_record_id(command_id))
        if not found:
            return None
        record = pydantic_core.from_json(found[0].state)
        primary = record.get("aggregate_id")
        positions = {found[0].partition: found[0].offset + 1} if found[0].offset >= 0 else {}
        return CommandResult(
            command_id=command_id,
            aggregate_id=UUID(primary) if primary else None,
            versions={UUID(k): int(v) for k, v in record.get("versions", {}).items()},
            positions=positions,
            replayed=True,
        )

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
            aggregate = codec.decode(recorded).event.mutate(aggregate)
        if aggregate is None:
            raise AggregateNotFoundError(f"no {cls.__name__} has id {aggregate_id}")
        if not isinstance(aggregate, cls):
            raise AggregateNotFoundError(
                f"{aggregate_id} is a {type(aggregate).__name__}, not a {cls.__name__}"
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
        """Close the store."""
        self.store.close()
