"""Given / when / then tests for aggregates and command handlers.

Through the application (one or many aggregates)::

    from framework.testing import ev, scenario

    shop = scenario(app)                       # your Application; runs on a fresh memory store

    def test_confirm_an_open_order():
        (shop.given(ev(Order.Placed, customer_id=C, lines=LINES), id=ORDER)
             .when(ConfirmOrder(order_id=ORDER))
             .then(ev(Order.Confirmed)))

Straight on an aggregate, with no application::

    given(ev(Order.Placed, customer_id=C, lines=LINES)).when(lambda o: o.confirm()).then(
        ev(Order.Confirmed)
    )

``ev(EventClass, **fields)`` names an event by its type and the fields you care about: ids,
versions and timestamps are filled in for ``given`` and ignored by ``then`` unless you pass them.
After ``when``, every scenario also replays the aggregates from their stored events and fails if
that state differs from the state the handler left: a change made outside an ``@event`` method,
or a value that does not survive JSON, is caught here rather than in production.

Projections are tested the same way (``given_events`` / ``given_commands`` ... ``then_rows``,
from :mod:`framework.projection_testing`, re-exported here).
"""

from __future__ import annotations

import dataclasses
import difflib
import pprint
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Self
from uuid import UUID, uuid4

from eventsourcing.utils import get_topic

from framework.application import COMMAND_RECORD_TOPIC, Application
from framework.codec import codec
from framework.commands import Command, Metadata
from framework.domain import Aggregate, DomainEvent, event_types
from framework.persistence import EventStore, RecordedEvent, open_store
from framework.projection_testing import (
    ProjectionOutcome,
    digest,
    given_commands,
    given_events,
    table_rows,
)

__all__ = [
    "EventSpec",
    "Outcome",
    "ProjectionOutcome",
    "Scenario",
    "digest",
    "ev",
    "given",
    "given_commands",
    "given_events",
    "scenario",
    "table_rows",
]

_IGNORED = frozenset({"originator_id", "originator_version", "originator_topic", "timestamp"})


@dataclasses.dataclass(frozen=True)
class EventSpec:
    """An event named by its class and the fields that matter to a test."""

    cls: type[DomainEvent]
    fields: dict[str, Any]
    id: UUID | None = None

    def matches(self, event: DomainEvent) -> bool:
        if type(event) is not self.cls or (self.id and event.originator_id != self.id):
            return False
        return all(vars(event).get(k, _MISSING) == v for k, v in self.fields.items())

    def describe(self) -> str:
        return _describe(self.cls, self.fields, self.id)


_MISSING = object()


def ev(cls: type[DomainEvent], *, id: UUID | None = None, **fields: Any) -> EventSpec:
    """Name an event for ``given`` or ``then``: its class and the fields that matter."""
    return EventSpec(cls, fields, id)


class Scenario:
    """Builds given / when / then tests for one Application."""

    def __init__(self, app: Application) -> None:
        self._app = app

    def given(self, *events: EventSpec, id: UUID | None = None) -> Given:
        """Start from these past events. Events without an ``id`` belong to the scenario's
        aggregate: ``id`` (a new UUID when omitted)."""
        return Given(events, id or uuid4(), self._app)


def scenario(app: Application) -> Scenario:
    """Given / when / then tests through ``app``'s command handlers, on a fresh memory store."""
    return Scenario(app)


def given(*events: EventSpec, id: UUID | None = None) -> Given:
    """Start an aggregate-only test (``when`` takes a function of the aggregate)."""
    return Given(events, id or uuid4(), None)


class Given:
    """Past events, stored on a fresh in-memory store."""

    def __init__(self, specs: Iterable[EventSpec], default_id: UUID, app: Application | None):
        self.id = default_id
        self._app = app
        self._store: EventStore = open_store("memory://", name=app.name if app else "test")
        versions: dict[UUID, int] = {}
        history = []
        for spec in specs:
            aggregate_id = spec.id or default_id
            versions[aggregate_id] = versions.get(aggregate_id, 0) + 1
            history.append(
                codec.encode(_instantiate(spec, aggregate_id, versions[aggregate_id]), Metadata())
            )
        self._store.append(history)
        self._versions = versions

    def when(self, action: Command | Callable[[Any], object]) -> Outcome:
        """Execute a command (through the application) or call ``action(aggregate)``."""
        before = self._store.head()
        left: list[Aggregate] = []
        error: BaseException | None = None
        try:
            if isinstance(action, Command):
                if self._app is None:
                    raise TypeError("given(...) has no application: use scenario(app).given(...)")
                app = self._app.using(self._store)
                app.on_commit = left.extend
                app.execute(action)
            else:
                aggregate = _load(self._store, self.id)
                action(aggregate)
                pending = aggregate.collect_events()
                if pending:
                    self._store.append([codec.encode(e, Metadata()) for e in pending])
                left.append(aggregate)
        except Exception as raised:  # the outcome under test
            error = raised
        new = [
            codec.decode(r).event
            for r in _events_after(self._store, before)
            if r.topic != COMMAND_RECORD_TOPIC
        ]
        # Every aggregate the handler loaded or added is checked against its replay (one that
        # recorded no event may still have been changed); then_state looks at changed ones.
        changed = [a for a in left if a.version != self._versions.get(a.id, 0)]
        unchanged = [a for a in left if all(a is not c for c in changed)]
        return Outcome(new, error, changed + unchanged, self._store)


class Outcome:
    """What ``when`` did: new events, or an error; assert on it with the ``then`` methods."""

    def __init__(
        self,
        events: list[DomainEvent],
        error: BaseException | None,
        left: list[Aggregate],
        store: EventStore,
    ) -> None:
        self.events = events
        self.error = error
        self._left = left
        self._store = store
        if error is None:
            self._check_replay()

    def then(self, *expected: EventSpec) -> Self:
        """Exactly these new events, in this order (unnamed fields are not compared)."""
        self._no_error()
        if len(expected) != len(self.events) or not all(
            spec.matches(event) for spec, event in zip(expected, self.events, strict=False)
        ):
            raise AssertionError(
                "the new events differ from the expected ones:\n"
                + _diff([s.describe() for s in expected], [_describe_event(e) for e in self.events])
            )
        return self

    def then_nothing(self) -> Self:
        """No new events (and no error)."""
        return self.then()

    def then_raises(self, error_type: type[BaseException], match: str | None = None) -> Self:
        """The command failed with ``error_type`` (its message matching ``match``), and wrote
        no event."""
        if not isinstance(self.error, error_type):
            got = f"{type(self.error).__name__}: {self.error}" if self.error else "no error"
            raise AssertionError(f"expected {error_type.__name__}, got {got}")
        if match is not None and not re.search(match, str(self.error)):
            raise AssertionError(f"{str(self.error)!r} does not match {match!r}")
        if self.events:
            raise AssertionError(
                f"the command failed but wrote {len(self.events)} event(s): "
                + ", ".join(_describe_event(e) for e in self.events)
            )
        return self

    def then_state(
        self, predicate: Callable[[Any], bool] | None = None, /, **attributes: Any
    ) -> Self:
        """The aggregate (the one the command changed first, else the first it loaded)
        satisfies ``predicate`` and has these attribute values."""
        self._no_error()
        if not self._left:
            raise AssertionError("the command changed no aggregate")
        aggregate = self._left[0]
        wrong = {
            name: (value, getattr(aggregate, name, _MISSING))
            for name, value in attributes.items()
            if getattr(aggregate, name, _MISSING) != value
        }
        if wrong:
            lines = [f"  {n}: expected {e!r}, got {a!r}" for n, (e, a) in wrong.items()]
            raise AssertionError("the aggregate's state differs:\n" + "\n".join(lines))
        if predicate is not None and not predicate(aggregate):
            raise AssertionError(f"the state does not satisfy the predicate: {_state(aggregate)}")
        return self

    def _no_error(self) -> None:
        if self.error is not None:
            raise AssertionError(
                f"the command raised {type(self.error).__name__}: {self.error}"
            ) from self.error

    def _check_replay(self) -> None:
        for aggregate in self._left:
            if not self._store.read(aggregate.id, up_to_version=1):
                raise AssertionError(
                    f"{type(aggregate).__name__} {aggregate.id} was added but recorded no "
                    "event, so it does not exist once reloaded"
                )
            replayed = _load(self._store, aggregate.id)
            if _state(replayed) != _state(aggregate):
                raise AssertionError(
                    f"{type(aggregate).__name__} {aggregate.id}: the state replayed from its "
                    "events differs from the state the handler left (a change outside an @event "
                    "method, or a value that does not survive JSON):\n"
                    + _diff(
                        _pretty(_state(aggregate)),
                        _pretty(_state(replayed)),
                        labels=("left by the handler", "replayed from events"),
                    )
                )


def _instantiate(spec: EventSpec, aggregate_id: UUID, version: int) -> DomainEvent:
    values: dict[str, Any] = {
        "originator_id": aggregate_id,
        "originator_version": version,
        "timestamp": datetime.now(UTC),
        **spec.fields,
    }
    if "originator_topic" in {f.name for f in dataclasses.fields(spec.cls)}:
        values["originator_topic"] = get_topic(event_types.owner_of(spec.cls))
    return spec.cls(**values)


def _load(store: EventStore, aggregate_id: UUID) -> Any:
    aggregate = None
    for recorded in store.read(aggregate_id):
        aggregate = codec.decode(recorded).event.mutate(aggregate)
    if aggregate is None:
        raise AssertionError(f"no events were given for {aggregate_id}")
    return aggregate


def _events_after(store: EventStore, before: dict[int, int]) -> list[RecordedEvent]:
    return [
        event
        for partition in range(store.partitions)
        for event in store.iter_partition(partition, start=before.get(partition, 0))
    ]


def _state(aggregate: Aggregate) -> dict[str, Any]:
    return {k: v for k, v in vars(aggregate).items() if k != "_pending_events"}


def _describe(cls: type[Any], fields: dict[str, Any], aggregate_id: UUID | None) -> str:
    shown = ", ".join(f"{k}={v!r}" for k, v in sorted(fields.items()))
    where = f" @{aggregate_id}" if aggregate_id else ""
    return f"{event_types.name_of(cls)}({shown}){where}"


def _describe_event(event: DomainEvent) -> str:
    fields = {k: v for k, v in vars(event).items() if k not in _IGNORED}
    return _describe(type(event), fields, None)


def _pretty(state: dict[str, Any]) -> list[str]:
    return pprint.pformat(state, width=90).splitlines()


def _diff(
    expected: list[str], actual: list[str], labels: tuple[str, str] = ("expected", "actual")
) -> str:
    return "\n".join(difflib.unified_diff(expected, actual, *labels, lineterm="", n=3))
