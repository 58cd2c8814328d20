"""Process managers: react to events, keep state, send commands, schedule deadlines.

A process manager (PM) is the event -> command half of a workflow that spans aggregates or
services. Each *instance* (one order's payment, say) has a stream of its own, and everything
that happens to it is a fact there: the input it reacted to (with the state after it), each
command it issued, each deadline it scheduled, cancelled or reached, its completion. Its state
is the fold of those facts, so it rebuilds by itself and its history reads as a timeline::

    class PaymentProcess(ProcessManager):
        name = "payment_process"
        state_type = PaymentState                     # a ProcessState (pydantic) subclass
        correlate = {Order.Confirmed: lambda e: e.originator_id,
                     OrderPayment.Received: lambda e: e.order_id}
        starts = (Order.Confirmed,)

        @reacts(Order.Confirmed)
        def confirmed(self, state, event, ctx):
            ctx.send(RequestPayment(order_id=event.originator_id, amount=event.total))
            ctx.schedule("payment_due", after=timedelta(minutes=30))
            return state.evolve(order_id=event.originator_id)

        @reacts(OrderPayment.Received)
        def paid(self, state, event, ctx):
            ctx.send(ShipOrder(order_id=event.order_id))
            ctx.complete()                            # also cancels the open deadlines

        @deadline("payment_due")
        def overdue(self, state, ctx):
            ctx.send(CancelOrder(order_id=state.order_id, reason="payment failed"))
            ctx.complete()

Handlers are pure: they read ``state``, the event and ``ctx.now`` (the injected clock) and
return the new state (``None``: unchanged). This module holds that pure part; where the facts
are kept and how commands leave is :mod:`framework.process.store` and
:mod:`framework.process.runner`; :mod:`framework.process.testing` tests it with a fake clock.

Every command gets a deterministic id, ``uuid5(pm, instance, trigger, n)``, so a redelivered
trigger, a restarted worker or a re-bootstrapped service issues the *same* command id, and the
target application's command-id dedup makes the effect exactly-once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal, Protocol, Self, TypeVar

from pydantic import BaseModel, ConfigDict

from framework.commands import Command
from framework.domain import DomainEvent, event_types
from framework.errors import ConfigurationError, ProcessError, UnknownInstanceError

__all__ = [
    "COMMAND_NAMESPACE",
    "Clock",
    "Context",
    "Deadline",
    "Fact",
    "FakeClock",
    "Instance",
    "Outcome",
    "ProcessManager",
    "ProcessState",
    "SystemClock",
    "UnknownInstanceError",
    "deadline",
    "reacts",
    "trigger_of",
]

F = TypeVar("F", bound=Callable[..., Any])

COMMAND_NAMESPACE = uuid.UUID("6f1c3a52-2a4e-4b8e-9d55-3c1f0e4b7a11")
"""The uuid5 namespace of process managers' command ids."""

_REACTS = "__keel_reacts__"
_DEADLINE = "__keel_deadline__"


# -- clocks -----------------------------------------------------------------------------------


class Clock(Protocol):
    """Where a process manager's "now" comes from (inject a :class:`FakeClock` in tests)."""

    def now(self) -> datetime: ...


class SystemClock:
    """The wall clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that moves only when told: ``clock.advance(minutes=31)``."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta | None = None, **parts: float) -> None:
        self._now += (delta or timedelta()) + timedelta(**parts)


# -- declaring a process manager --------------------------------------------------------------


def reacts(*event_classes: type[DomainEvent]) -> Callable[[F], F]:
    """Mark a method ``(self, state, event, ctx) -> state | None`` as the reaction to
    ``event_classes``."""
    if not event_classes:
        raise ConfigurationError("@reacts needs at least one event class")

    def mark(method: F) -> F:
        setattr(method, _REACTS, (*getattr(method, _REACTS, ()), *event_classes))
        return method

    return mark


def deadline(name: str) -> Callable[[F], F]:
    """Mark a method ``(self, state, ctx) -> state | None`` as what happens when the deadline
    ``name`` is reached (scheduled with ``ctx.schedule(name, after=...)``)."""

    def mark(method: F) -> F:
        setattr(method, _DEADLINE, name)
        return method

    return mark


class ProcessState(BaseModel):
    """Base of a process manager's state: a frozen pydantic model, recorded as JSON in each
    fact that changes it. ``state.evolve(field=value)`` returns a changed copy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def evolve(self, **changes: Any) -> Self:
        return self.model_validate({**self.model_dump(), **changes})


class ProcessManager:
    """Base class of process managers (see the module docstring for an example).

    Class attributes:

    - ``name``: unique and stable; it keys the instances' streams, positions and dead letters.
    - ``state_type``: the :class:`ProcessState` subclass (every field needs a default).
    - ``correlate``: input event class -> function giving the instance id from the event.
    - ``starts``: the event classes that may start a new instance.
    - ``on_unknown``: what a non-starting event for an instance that does not exist does:
      ``"ignore"`` (default; counted in the status as ``unknown_ignored``), ``"dead_letter"``
      (parked, to re-drive later) or ``"start"`` (starts the instance anyway).
    - ``on_error``: a failing handler, of an input or of a deadline: ``"park"`` (default:
      retried ``max_attempts`` times with capped backoff, then parked in the dead letters, like
      a projection's poison event; a parked deadline is recorded as ``DeadlineParked`` and
      fires again only when re-driven), ``"skip"`` (recorded as a ``Failed`` or
      ``DeadlineFailed`` fact and counted; the instance goes on) or ``"stop"`` (the worker
      stops; the input or deadline is handled again after a restart).
    """

    name: ClassVar[str] = ""
    state_type: ClassVar[type[ProcessState]] = ProcessState
    correlate: ClassVar[Mapping[type[DomainEvent], Callable[[Any], Any]]] = {}
    starts: ClassVar[tuple[type[DomainEvent], ...]] = ()
    on_unknown: ClassVar[Literal["ignore", "dead_letter", "start"]] = "ignore"
    on_error: ClassVar[Literal["park", "skip", "stop"]] = "park"
    max_attempts: ClassVar[int] = 5
    retry_initial: ClassVar[float] = 0.1
    retry_max: ClassVar[float] = 5.0

    _reactions: ClassVar[dict[type[DomainEvent], str]]
    _deadlines: ClassVar[dict[str, str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        reactions: dict[type[DomainEvent], str] = {}
        deadlines: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                for event_class in getattr(value, _REACTS, ()):
                    reactions[event_class] = attr
                if isinstance(getattr(value, _DEADLINE, None), str):
                    deadlines[getattr(value, _DEADLINE)] = attr
        cls._reactions, cls._deadlines = reactions, deadlines

    def __init__(self) -> None:
        cls = type(self)
        if not cls.name:
            raise ConfigurationError(f"{cls.__name__} needs a `name`")
        if not cls._reactions:
            raise ConfigurationError(f"{cls.__name__} reacts to no event: use @reacts")
        missing = [e.__qualname__ for e in cls._reactions if e not in cls.correlate]
        if missing:
            raise ConfigurationError(
                f"{cls.__name__}.correlate has no instance id for {', '.join(missing)}: add "
                "`EventClass: lambda e: <instance id>` for each event it reacts to"
            )
        if not cls.starts:
            raise ConfigurationError(f"{cls.__name__}.starts names no event that starts it")
        try:
            cls.state_type()
        except Exception as error:
            raise ConfigurationError(
                f"{cls.__name__}.state_type {cls.state_type.__name__} needs a default for "
                f"every field (the state before the first event): {error}"
            ) from error

    # -- the pure part: one input -> an outcome ------------------------------------------------

    def reacted_types(self) -> dict[str, type[DomainEvent]]:
        """Recorded type name (aliases included) -> event class, for the inputs it reacts to."""
        found: dict[str, type[DomainEvent]] = {}
        for event_class in self._reactions:
            owner = event_types.owner_of(event_class)
            found[event_types.name_of(event_class)] = event_class
            for alias in getattr(event_class, "aliases", ()):
                found[f"{owner.type_name}.{alias}"] = event_class
        return found

    def instance_of(self, event: DomainEvent) -> str:
        """The instance id ``event`` belongs to (``correlate``)."""
        for event_class in type(event).__mro__:
            if event_class in self.correlate:
                return str(self.correlate[event_class](event))
        raise ProcessError(f"{self.name}: no correlation for {type(event).__qualname__}")

    def handle(self, instance: Instance, event: DomainEvent, now: datetime) -> Outcome:
        """Decide what ``event`` does to ``instance`` (nothing is written here)."""
        trigger = trigger_of(event)
        if trigger in instance.seen:
            return Outcome.noop("duplicate")
        if instance.completed:
            return Outcome.noop("after_completion")
        if instance.version == 0 and not isinstance(event, self.starts):
            if self.on_unknown == "ignore":
                return Outcome.noop("unknown_ignored")
            if self.on_unknown == "dead_letter":
                raise UnknownInstanceError(
                    f"{self.name}: {type(event).__qualname__} for instance {instance.instance_id}, "
                    "which was never started"
                )
        method = getattr(self, self._reactions[_reaction_class(self, event)])
        ctx = Context(self, instance, trigger, now)
        state = method(instance.state, event, ctx)
        facts = [
            Fact(
                "Triggered",
                {
                    "trigger": trigger,
                    "event_type": event_types.name_of(type(event)),
                    "state": _dump(state if state is not None else instance.state),
                },
            )
        ]
        return ctx.outcome(facts)

    def reach(
        self, instance: Instance, name: str, now: datetime, *, redrive: str | None = None
    ) -> Outcome:
        """Decide what reaching deadline ``name`` does (a no-op when it is no longer open).

        A parked deadline (its handler failed every attempt) fires only when re-driven:
        ``redrive`` is its trigger, and a deadline moved, cancelled or completed since it was
        parked is a no-op instead."""
        open_deadline = instance.deadlines.get(name)
        if instance.completed:
            return Outcome.noop("deadline_after_completion")
        if open_deadline is None or open_deadline.parked != (redrive is not None):
            return Outcome.noop("deadline_not_open")
        trigger = open_deadline.trigger
        if redrive is not None and redrive != trigger:
            return Outcome.noop("deadline_not_open")  # rescheduled since: the new one counts
        method_name = self._deadlines.get(name)
        ctx = Context(self, instance, trigger, now)
        ctx.cancelled.add(name)  # reached: no longer open (recorded as DeadlineReached)
        state = getattr(self, method_name)(instance.state, ctx) if method_name else None
        facts = [
            Fact(
                "DeadlineReached",
                {"name": name, "trigger": trigger, "state": _dump(state or instance.state)},
            )
        ]
        return ctx.outcome(facts, reached=name)

    def deadline_failed(
        self, instance: Instance, name: str, error: BaseException, *, parked: bool
    ) -> Outcome:
        """A deadline whose handler failed: ``DeadlineParked`` (it stays open, waiting for a
        re-drive; the runner no longer fires it) or, with ``on_error="skip"``,
        ``DeadlineFailed`` (it is closed, the instance goes on)."""
        data = {"name": name, "trigger": instance.deadlines[name].trigger}
        data["error"] = _error_text(error)
        if parked:
            return Outcome([Fact("DeadlineParked", data)], reason="deadline_parked")
        return Outcome([Fact("DeadlineFailed", data)], reason="deadline_skipped")

    def failed(self, instance: Instance, event: DomainEvent, error: BaseException) -> Outcome:
        """The ``on_error="skip"`` outcome: a ``Failed`` fact (the trigger counts as seen)."""
        fact = Fact(
            "Failed",
            {"trigger": trigger_of(event), "error": _error_text(error)},
        )
        return Outcome([fact], reason="skipped_errors")


def _reaction_class(pm: ProcessManager, event: DomainEvent) -> type[DomainEvent]:
    for event_class in type(event).__mro__:
        if event_class in pm._reactions:
            return event_class
    raise ProcessError(f"{pm.name} does not react to {type(event).__qualname__}")


def trigger_of(event: DomainEvent) -> str:
    """The stable id of an input event: its aggregate and version."""
    return f"{event.originator_id}@{event.originator_version}"


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:2000]


def _dump(state: ProcessState) -> dict[str, Any]:
    if not isinstance(state, ProcessState):
        raise ProcessError(
            f"a process handler returned {type(state).__name__}: return the new state "
            "(state.evolve(...)) or None"
        )
    return state.model_dump(mode="json")


# -- facts, instances, outcomes ---------------------------------------------------------------


@dataclass(frozen=True)
class Fact:
    """One entry of an instance's stream: ``kind`` and its JSON data."""

    kind: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Deadline:
    """An open deadline. ``parked``: its handler failed every attempt; it waits in the dead
    letters for a re-drive (and is not fired by the runner meanwhile)."""

    name: str
    due_at: datetime
    scheduled_at_version: int
    parked: bool = False

    @property
    def trigger(self) -> str:
        """Its stable id (the trigger of the commands it issues)."""
        return f"deadline:{self.name}:{self.scheduled_at_version}"


@dataclass
class Instance:
    """One instance's state: the fold of its facts."""

    pm: ProcessManager
    instance_id: str
    version: int = 0
    state: Any = None
    completed: bool = False
    seen: set[str] = field(default_factory=set)
    deadlines: dict[str, Deadline] = field(default_factory=dict)
    commands: list[dict[str, Any]] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.state is None:
            self.state = self.pm.state_type()

    def apply(self, fact: Fact) -> None:
        """Fold one fact in (loading from the stream, and after deciding)."""
        self.version += 1
        self.facts.append(fact)
        data = fact.data
        if "trigger" in data:
            self.seen.add(data["trigger"])
        if "state" in data:
            self.state = self.pm.state_type.model_validate(data["state"])
        if fact.kind == "CommandIssued":
            self.commands.append(data)
        elif fact.kind == "DeadlineScheduled":
            due = datetime.fromisoformat(data["due_at"])
            self.deadlines[data["name"]] = Deadline(data["name"], due, self.version)
        elif fact.kind in ("DeadlineCancelled", "DeadlineReached", "DeadlineFailed"):
            self.deadlines.pop(data["name"], None)
        elif fact.kind == "DeadlineParked" and data["name"] in self.deadlines:
            self.deadlines[data["name"]] = replace(self.deadlines[data["name"]], parked=True)
        elif fact.kind == "Completed":
            self.completed = True


@dataclass
class Outcome:
    """What one input does: the facts to append, in order. ``reason`` names a no-op (or a
    counted case) for the status counters."""

    facts: list[Fact]
    reason: str | None = None
    reached: str | None = None

    @classmethod
    def noop(cls, reason: str) -> Outcome:
        return cls([], reason)

    @property
    def commands(self) -> list[dict[str, Any]]:
        return [f.data for f in self.facts if f.kind == "CommandIssued"]


class Context:
    """What a handler uses to act: :meth:`send`, :meth:`schedule`, :meth:`cancel`,
    :meth:`complete`, and :attr:`now` (the injected clock's time)."""

    def __init__(self, pm: ProcessManager, instance: Instance, trigger: str, now: datetime):
        self.pm = pm
        self.instance = instance
        self.trigger = trigger
        self.now = now
        self.instance_id = instance.instance_id
        self.sent: list[Command] = []
        self.scheduled: dict[str, datetime] = {}
        self.cancelled: set[str] = set()
        self.completing = False

    def send(self, command: Command) -> uuid.UUID:
        """Issue ``command`` (through the outbox, after this input's transaction commits);
        its command id is replaced by the deterministic one, which this returns."""
        if not isinstance(command, Command):
            raise ProcessError(f"ctx.send takes a Command, not {type(command).__name__}")
        command_id = uuid.uuid5(
            COMMAND_NAMESPACE,
            f"{self.pm.name}/{self.instance_id}/{self.trigger}/{len(self.sent)}",
        )
        self.sent.append(command.model_copy(update={"command_id": command_id}))
        return command_id

    def schedule(
        self, name: str, *, after: timedelta | None = None, at: datetime | None = None
    ) -> None:
        """Schedule deadline ``name`` (``after`` a delay from now, or ``at`` a time); one of a
        name is open at a time: scheduling it again moves it."""
        if (after is None) == (at is None):
            raise ProcessError("ctx.schedule needs exactly one of after= or at=")
        if name not in self.pm._deadlines:
            raise ProcessError(f"{self.pm.name} has no @deadline({name!r}) handler")
        self.scheduled[name] = at if at is not None else self.now + (after or timedelta())
        self.cancelled.discard(name)

    def cancel(self, name: str) -> None:
        """Cancel the open deadline ``name`` (a no-op when none is open)."""
        self.scheduled.pop(name, None)
        self.cancelled.add(name)

    def complete(self) -> None:
        """End this instance: later inputs and deadlines are no-ops (counted)."""
        self.completing = True

    def outcome(self, facts: list[Fact], reached: str | None = None) -> Outcome:
        for command in self.sent:
            facts.append(
                Fact(
                    "CommandIssued",
                    {
                        "command_id": str(command.command_id),
                        "command_type": command.command_type,
                        "payload": command.model_dump(mode="json"),
                    },
                )
            )
        open_now = set(self.instance.deadlines) - ({reached} if reached else set())
        if self.completing:
            cancelled = open_now  # a completed instance has no open deadline
        else:
            cancelled = (self.cancelled & open_now) - set(self.scheduled)
        for name in sorted(cancelled):
            facts.append(Fact("DeadlineCancelled", {"name": name}))
        if not self.completing:
            for name, due in sorted(self.scheduled.items()):
                facts.append(Fact("DeadlineScheduled", {"name": name, "due_at": due.isoformat()}))
        if self.completing:
            facts.append(Fact("Completed", {}))
        return Outcome(facts, reached=reached)
