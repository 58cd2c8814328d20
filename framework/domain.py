"""Aggregates and domain events, built on the eventsourcing library's aggregates.

The documented style: a public method checks the invariant and raises a
:class:`~framework.errors.DomainError`; a private ``@event`` method records the change. Only the
``@event`` methods run again when the aggregate is loaded, so checks never re-run on history::

    class Order(Aggregate):
        @event("Placed")
        def __init__(self, id: UUID, customer_id: UUID) -> None:
            self.customer_id = customer_id
            self.status = "open"

        def confirm(self) -> None:
            if self.status != "open":
                raise OrderNotOpen(f"order {self.id} is {self.status}")
            self._confirmed()

        @event("Confirmed")
        def _confirmed(self) -> None:
            self.status = "confirmed"

Each event class gets a stable type name, ``"<Aggregate>.<Event>"`` (``"Order.Confirmed"``), which
is what the store records: moving a module never orphans history. Set ``type_name`` on an
aggregate to rename its class without renaming its events.

**Schema evolution.** Declare the event class to version it, and give one static upcaster per
step; old payloads are upgraded as they load::

    class Order(Aggregate):
        class Placed(Aggregate.Created):
            class_version = 2
            customer_id: UUID
            currency: str

            @staticmethod
            def upcast_v1_v2(state: dict[str, Any]) -> None:
                state["currency"] = "EUR"

        @event(Placed)
        def __init__(self, id: UUID, customer_id: UUID, currency: str) -> None: ...

An event renamed in code keeps loading with ``aliases = ("OldName",)`` on the event class.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from eventsourcing.domain import Aggregate as _LibraryAggregate
from eventsourcing.domain import event

from framework.errors import ConfigurationError, UnknownEventTypeError

__all__ = ["Aggregate", "DomainEvent", "event", "event_types"]

DomainEvent = _LibraryAggregate.Event
"""The base class of every aggregate event."""


class Aggregate(_LibraryAggregate):
    """Base class of aggregate roots.

    Subclasses inherit ``id``, ``version``, ``created_on`` and ``modified_on`` from the
    eventsourcing library's ``Aggregate``; record changes with ``@event`` methods.
    """

    type_name: ClassVar[str] = ""
    """The aggregate's stable public name (defaults to the class name)."""

    public_events: ClassVar[tuple[str, ...]] = ()
    """Names of the events other services may depend on (integration events): their schemas
    are published and kept stable (see :mod:`framework.catalogue`); the others are internal."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "type_name" not in cls.__dict__:
            cls.type_name = cls.__name__
        _registry.invalidate()


class _EventTypes:
    """Maps stable event type names to event classes (and back), built lazily from every
    subclass of :class:`Aggregate` that has been imported."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, type[DomainEvent]] = {}
        self._names: dict[type[Any], str] = {}
        self._owners: dict[type[Any], type[Aggregate]] = {}
        self._aggregates: dict[str, type[Aggregate]] = {}
        self._clashes: dict[str, set[str]] = {}
        self._stale = True

    def invalidate(self) -> None:
        self._stale = True

    def _rebuild(self) -> None:
        by_name: dict[str, type[DomainEvent]] = {}
        names: dict[type[Any], str] = {}
        owners: dict[type[Any], type[Aggregate]] = {}
        aggregates: dict[str, type[Aggregate]] = {}
        clashes: dict[str, set[str]] = {}
        for aggregate in _all_subclasses(Aggregate):
            other = aggregates.setdefault(aggregate.type_name, aggregate)
            if other is not aggregate:
                # Reported when the name is used, so unrelated code keeps working.
                clashes.setdefault(aggregate.type_name, {other.__module__}).add(
                    aggregate.__module__
                )
            for attr in vars(aggregate).values():
                if not (isinstance(attr, type) and issubclass(attr, DomainEvent)):
                    continue
                if attr.__qualname__ != f"{aggregate.__qualname__}.{attr.__name__}":
                    continue  # inherited from a base aggregate, registered there
                name = f"{aggregate.type_name}.{attr.__name__}"
                names[attr] = name
                owners[attr] = aggregate
                for alias in (name, *(f"{aggregate.type_name}.{a}" for a in _aliases(attr))):
                    by_name[alias] = attr
        self._by_name, self._names, self._owners = by_name, names, owners
        self._aggregates, self._clashes = aggregates, clashes
        self._stale = False

    def _check_unique(self, type_name: str) -> None:
        modules = self._clashes.get(type_name)
        if modules:
            raise ConfigurationError(
                f"several aggregates are named {type_name!r} (in {', '.join(sorted(modules))}): "
                "set a distinct type_name on each"
            )

    def _fresh(self) -> None:
        if self._stale:
            with self._lock:
                if self._stale:
                    self._rebuild()

    def name_of(self, event_class: type[Any]) -> str:
        """The stable type name of an event class."""
        self._fresh()
        name = self._names.get(event_class)
        if name is None:
            raise ConfigurationError(
                f"{event_class.__qualname__} is not an event of a framework.domain.Aggregate "
                "subclass; derive your aggregate from framework.domain.Aggregate"
            )
        self._check_unique(name.rsplit(".", 1)[0])
        return name

    def resolve(self, name: str) -> type[DomainEvent]:
        """The event class recorded under ``name``."""
        self._fresh()
        self._check_unique(name.rsplit(".", 1)[0])
        found = self._by_name.get(name)
        if found is None:
            raise UnknownEventTypeError(
                f"no event class is registered as {name!r}: import the module that defines "
                "its aggregate, or add the old name to the event class's `aliases`"
            )
        return found

    def owner_of(self, event_class: type[Any]) -> type[Aggregate]:
        """The aggregate class that defines ``event_class``."""
        self._fresh()
        return self._owners[event_class]

    def aggregate(self, type_name: str) -> type[Aggregate]:
        """The aggregate class called ``type_name``."""
        self._fresh()
        self._check_unique(type_name)
        found = self._aggregates.get(type_name)
        if found is None:
            raise UnknownEventTypeError(f"no aggregate class is registered as {type_name!r}")
        return found


def _aliases(event_class: type[Any]) -> tuple[str, ...]:
    aliases: tuple[str, ...] = getattr(event_class, "aliases", ())
    return aliases


def _all_subclasses(cls: type[Aggregate]) -> list[type[Aggregate]]:
    found: list[type[Aggregate]] = []
    pending = list(cls.__subclasses__())
    while pending:
        sub = pending.pop()
        found.append(sub)
        pending.extend(sub.__subclasses__())
    return found


_registry = _EventTypes()
event_types = _registry
"""The process-wide registry of event type names."""
