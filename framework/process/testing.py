"""given / when / then for process managers, with a fake clock and no database::

    from framework.process.testing import given

    (given(PaymentProcess(), confirmed)                 # events that already happened
        .when_time_passes(minutes=31)                   # the fake clock moves; deadlines fire
        .then_commands(CancelOrder(order_id=order_id, reason="payment failed"))
        .then_completed())

    given(PaymentProcess()).when(confirmed).twice().then_commands(RequestPayment(...))

``then_commands`` compares the commands issued since the ``given`` part (type and fields;
their deterministic ids are checked separately by :meth:`then_command_ids_stable`), so
``.when(e).twice()`` proves a redelivered event issues nothing new. Each step re-loads the
instance from its facts, as JSON, the way the SQL store does: state that cannot round-trip fails
here, not in production.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Self

from framework.commands import Command
from framework.domain import DomainEvent
from framework.process.manager import Fact, FakeClock, Instance, Outcome, ProcessManager

__all__ = ["ProcessScenario", "given"]


def given(
    pm: ProcessManager,
    *events: DomainEvent,
    clock: FakeClock | None = None,
) -> ProcessScenario:
    """Start a scenario: ``events`` have been handled already (their commands don't count)."""
    scenario = ProcessScenario(pm, clock or FakeClock())
    for event in events:
        scenario._deliver(event)
    scenario._mark()
    return scenario


class ProcessScenario:
    """The running scenario (see the module docstring)."""

    def __init__(self, pm: ProcessManager, clock: FakeClock) -> None:
        self.pm = pm
        self.clock = clock
        self.started_at = clock.now()
        self.streams: dict[str, list[Fact]] = {}
        self.commands: list[Command] = []
        self.counters: dict[str, int] = {}
        self._mark_at = 0
        self._last: DomainEvent | None = None
        self._instance_id: str | None = None

    # -- when -----------------------------------------------------------------------------------

    def when(self, event: DomainEvent) -> Self:
        """Deliver ``event``."""
        self._deliver(event)
        return self

    def twice(self) -> Self:
        """Deliver the last event again (a redelivery)."""
        if self._last is None:
            raise AssertionError("twice() repeats the last when(event): call when() first")
        return self.when(self._last)

    def when_time_passes(self, delta: timedelta | None = None, **parts: float) -> Self:
        """Move the clock on, firing each deadline that falls due, in due order."""
        target = self.clock.now() + (delta or timedelta()) + timedelta(**parts)
        while True:
            due = sorted(
                (d.due_at, instance_id, d.name)
                for instance_id in self.streams
                for d in self._load(instance_id).deadlines.values()
                if d.due_at <= target and not d.parked
            )
            if not due:
                break
            due_at, instance_id, name = due[0]
            self.clock._now = max(self.clock.now(), due_at)
            instance = self._load(instance_id)
            self._record(instance, self.pm.reach(instance, name, self.clock.now()))
        self.clock._now = target
        return self

    def when_deadline_reaches_completed(self, name: str) -> Self:
        """Fire deadline ``name`` at the current instance as a runner that read it before the
        instance completed would (the "timeout that arrives too late" case)."""
        instance = self._load(self._current())
        self._record(instance, self.pm.reach(instance, name, self.clock.now()))
        return self

    # -- then -----------------------------------------------------------------------------------

    def then_commands(self, *expected: Command) -> Self:
        """Exactly ``expected`` (in order) were issued since ``given``."""
        got = [_shape(c) for c in self.commands[self._mark_at :]]
        want = [_shape(c) for c in expected]
        if got != want:
            raise AssertionError(f"commands issued:\n  {got}\nexpected:\n  {want}")
        return self

    def then_no_commands(self) -> Self:
        return self.then_commands()

    def then_command_ids_stable(self) -> Self:
        """Replaying the same inputs gives the same command ids (what exactly-once needs)."""
        ids = [c.command_id for c in self.commands]
        if len(set(ids)) != len(ids):
            raise AssertionError(f"two commands share an id: {ids}")
        return self

    def then_deadlines(self, *names: str, **due_after_start: timedelta) -> Self:
        """The current instance's open deadlines are exactly ``names`` plus the keys of
        ``due_after_start`` (name -> due time counted from when the scenario started)."""
        instance = self._load(self._current())
        want = set(names) | set(due_after_start)
        if set(instance.deadlines) != want:
            raise AssertionError(
                f"open deadlines {sorted(instance.deadlines)}, expected {sorted(want)}"
            )
        for name, delta in due_after_start.items():
            due = instance.deadlines[name].due_at
            if due != self.started_at + delta:
                raise AssertionError(f"{name} is due at {due}, expected {self.started_at + delta}")
        return self

    def then_completed(self, instance_id: str | None = None) -> Self:
        instance = self._load(instance_id or self._current())
        if not instance.completed:
            raise AssertionError(f"instance {instance.instance_id} is not completed")
        return self

    def then_active(self, instance_id: str | None = None) -> Self:
        instance = self._load(instance_id or self._current())
        if instance.completed or instance.version == 0:
            raise AssertionError(f"instance {instance.instance_id} is not active")
        return self

    def then_no_instance(self, instance_id: str | None = None) -> Self:
        found = self.streams.get(instance_id or self._current())
        if found:
            raise AssertionError(f"an instance was started: {[f.kind for f in found]}")
        return self

    def then_state(self, **fields: Any) -> Self:
        state = self._load(self._current()).state
        got = {k: getattr(state, k) for k in fields}
        if got != fields:
            raise AssertionError(f"state {got}, expected {fields}")
        return self

    def then_counted(self, counter: str, times: int = 1) -> Self:
        if self.counters.get(counter, 0) != times:
            raise AssertionError(
                f"{counter} counted {self.counters.get(counter, 0)} times, "
                f"expected {times} (counters: {self.counters})"
            )
        return self

    def then_facts(self, *kinds: str) -> Self:
        got = [f.kind for f in self.streams.get(self._current(), [])]
        if got != list(kinds):
            raise AssertionError(f"facts {got}, expected {list(kinds)}")
        return self

    @property
    def now(self) -> datetime:
        return self.clock.now()

    # -- internals ------------------------------------------------------------------------------

    def _deliver(self, event: DomainEvent) -> None:
        self._last = event
        instance_id = self.pm.instance_of(event)
        self._instance_id = instance_id
        instance = self._load(instance_id)
        self._record(instance, self.pm.handle(instance, event, self.clock.now()))

    def _record(self, instance: Instance, outcome: Outcome) -> None:
        if outcome.reason:
            self.counters[outcome.reason] = self.counters.get(outcome.reason, 0) + 1
        stream = self.streams.setdefault(instance.instance_id, [])
        for fact in outcome.facts:
            stream.append(Fact(fact.kind, json.loads(json.dumps(fact.data))))  # as stored
        for data in outcome.commands:
            cls = _command_class(data["command_type"], self)
            self.commands.append(cls.model_validate(data["payload"]))

    def _load(self, instance_id: str) -> Instance:
        instance = Instance(self.pm, instance_id)
        for fact in self.streams.get(instance_id, []):
            instance.apply(fact)
        return instance

    def _current(self) -> str:
        if self._instance_id is None:
            raise AssertionError("no event was delivered yet")
        return self._instance_id

    def _mark(self) -> None:
        self._mark_at = len(self.commands)


def _shape(command: Command) -> tuple[str, dict[str, Any]]:
    return (type(command).__qualname__, command.model_dump(mode="json", exclude={"command_id"}))


def _command_class(name: str, scenario: ProcessScenario) -> type[Command]:
    for cls in _all_commands(Command):
        if cls.command_type == name:
            return cls
    raise AssertionError(f"no Command class is named {name!r}")


def _all_commands(base: type[Command]) -> list[type[Command]]:
    found = []
    for sub in base.__subclasses__():
        found.append(sub)
        found.extend(_all_commands(sub))
    return found
