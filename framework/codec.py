"""JSON encoding of events and snapshots. Never pickle.

An event is stored as ``{"v": <class version>, "data": {...}, "meta": {...}}``: plain JSON that any
consumer can read (UUIDs and datetimes as ISO strings, Decimals as strings, enums as values,
nested pydantic models and dataclasses as objects). Decoding is driven by the event class's type
annotations through pydantic, so values come back with their types.
"""

from __future__ import annotations

import functools
import logging
import typing
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import pydantic_core
from eventsourcing.domain import CanMutateAggregate
from eventsourcing.utils import get_topic
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from framework.commands import Metadata
from framework.domain import Aggregate, DomainEvent, event_types
from framework.errors import EventDecodingError, EventEncodingError, UpcastingError
from framework.persistence import NewEvent, RecordedEvent, Snapshot

__all__ = ["EventCodec", "EventEnvelope", "codec"]

log = logging.getLogger(__name__)

A = TypeVar("A", bound=Aggregate)

# Attributes the store keeps outside the payload, or that the codec restores itself.
_ENVELOPE_FIELDS = frozenset({"originator_id", "originator_version", "originator_topic"})


class EventEnvelope:
    """A decoded event with its metadata and where the store recorded it.

    The metadata (user, command and correlation ids) is validated on first use: most handlers
    never look at it, and validating it was a third of the cost of decoding an event."""

    __slots__ = ("_meta", "_metadata", "event", "recorded")

    def __init__(
        self,
        event: DomainEvent,
        metadata: Metadata | Mapping[str, Any] | None,
        recorded: RecordedEvent,
    ) -> None:
        self.event = event
        self.recorded = recorded
        self._metadata = metadata if isinstance(metadata, Metadata) else None
        self._meta = None if isinstance(metadata, Metadata) else metadata

    @property
    def metadata(self) -> Metadata:
        """The metadata of the command that caused the event. Raises
        :class:`~framework.errors.EventDecodingError` when it is malformed."""
        if self._metadata is None:
            try:
                self._metadata = Metadata.model_validate(self._meta or {})
            except ValidationError as error:
                raise EventDecodingError(
                    f"{EventCodec._where(self.recorded)} has malformed metadata: {error}"
                ) from error
        return self._metadata

    @property
    def type_name(self) -> str:
        return self.recorded.topic

    def __repr__(self) -> str:
        r = self.recorded
        return f"<EventEnvelope {r.topic} v{r.version} p{r.partition}@{r.offset}>"


class _StateModel(BaseModel):
    model_config = ConfigDict(extra="ignore", arbitrary_types_allowed=True)


@functools.cache
def _state_model(cls: type[Any], skip: frozenset[str]) -> type[BaseModel]:
    """A pydantic model with one field per annotated attribute of ``cls``."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for name, hint in hints.items():
        if name in skip or typing.get_origin(hint) is typing.ClassVar:
            continue
        if isinstance(hint, TypeVar):
            hint = Any
        fields[name] = (hint, ...)
    model: type[BaseModel] = create_model(
        f"{cls.__qualname__}State", __base__=_StateModel, **fields
    )
    return model


@functools.cache
def _has_originator_topic(cls: type[Any]) -> bool:
    # Cached: typing.get_type_hints walks the MRO and evaluates every annotation on each call.
    return "originator_topic" in typing.get_type_hints(cls)


_Plan = tuple[type[BaseModel], int, str | None]
_plans: dict[type[DomainEvent], _Plan] = {}


def _plan(cls: type[DomainEvent]) -> _Plan:
    """What decoding an event of ``cls`` needs: its state model, its class version and its
    owner's topic (when the event records one), worked out once per class."""
    plan = _plans.get(cls)
    if plan is None:
        topic = get_topic(event_types.owner_of(cls)) if _has_originator_topic(cls) else None
        plan = (_state_model(cls, _ENVELOPE_FIELDS), getattr(cls, "class_version", 1), topic)
        _plans[cls] = plan
    return plan


def _to_json(value: Any, what: str) -> bytes:
    try:
        return pydantic_core.to_json(value)
    except pydantic_core.PydanticSerializationError as error:
        raise EventEncodingError(
            f"{what} holds a value with no JSON form ({error}); use JSON-friendly types "
            "(str, int, Decimal, UUID, datetime, enums, pydantic models, dataclasses)"
        ) from error


class EventCodec:
    """Turns domain events into :class:`~framework.persistence.NewEvent` and back, and
    aggregates into snapshots and back."""

    def encode(self, event: CanMutateAggregate[UUID], metadata: Metadata) -> NewEvent:
        """Encode one event with the metadata of the command that caused it."""
        cls = type(event)
        state = {k: v for k, v in vars(event).items() if k not in _ENVELOPE_FIELDS}
        payload = {
            "v": getattr(cls, "class_version", 1),
            "data": state,
            "meta": metadata.model_dump(mode="json", exclude_none=True),
        }
        return NewEvent(
            aggregate_id=event.originator_id,
            version=event.originator_version,
            topic=event_types.name_of(cls),
            state=_to_json(payload, f"event {cls.__qualname__}"),
        )

    def decode(self, recorded: RecordedEvent) -> EventEnvelope:
        """Decode a recorded event, upcasting old payloads. Raises
        :class:`~framework.errors.EventDecodingError` (or a subclass) when it cannot."""
        if recorded.problem or recorded.version < 1:
            # A record outside every aggregate's stream must never reach a handler.
            raise EventDecodingError(
                f"{self._where(recorded)} is not an event of this store: "
                f"{recorded.problem or 'it does not follow the record layout'}"
            )
        cls = event_types.resolve(recorded.topic)
        payload = self._payload(recorded)
        state = payload.get("data")
        if not isinstance(state, dict):
            raise EventDecodingError(f"{self._where(recorded)} has no 'data' object")
        model, target, originator_topic = _plan(cls)
        version = payload.get("v", 1)
        if version != target:
            state = self._upcast(cls, state, version, recorded)
        try:
            # The validator itself, and the fresh instance's __dict__ (not dict(model), which
            # probes the model for `keys` through pydantic's slow __getattr__).
            values = model.__pydantic_validator__.validate_python(state).__dict__
        except ValidationError as error:
            raise EventDecodingError(
                f"{self._where(recorded)} does not match {cls.__qualname__}: {error}. "
                "If the event class changed, raise its class_version and add an upcaster."
            ) from error
        meta = payload.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise EventDecodingError(f"{self._where(recorded)} has a 'meta' that is no object")
        values["originator_id"] = recorded.aggregate_id
        values["originator_version"] = recorded.version
        if originator_topic is not None:
            values["originator_topic"] = originator_topic
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", values)
        return EventEnvelope(event, meta, recorded)

    def encode_snapshot(self, aggregate: Aggregate) -> Snapshot:
        """Encode an aggregate's whole state. Raises EventEncodingError when it has no JSON
        form."""
        state = {k: v for k, v in vars(aggregate).items() if k != "_pending_events"}
        return Snapshot(
            aggregate_id=aggregate.id,
            version=aggregate.version,
            topic=type(aggregate).type_name,
            state=_to_json(state, f"aggregate {type(aggregate).__qualname__}"),
        )

    def decode_snapshot(self, snapshot: Snapshot, expected: type[A]) -> A:
        """Rebuild an aggregate from a snapshot, typing its attributes from the class's
        annotations."""
        cls = event_types.aggregate(snapshot.topic)
        if not issubclass(cls, expected):
            raise EventDecodingError(
                f"snapshot of {snapshot.aggregate_id} is a {cls.__name__}, not a "
                f"{expected.__name__}"
            )
        try:
            raw = pydantic_core.from_json(snapshot.state)
            typed = _typed_attributes(_snapshot_model(cls), raw)
        except (ValueError, ValidationError) as error:
            raise EventDecodingError(f"snapshot of {snapshot.aggregate_id}: {error}") from error
        # Attributes without annotations keep their JSON form.
        state = {**raw, **typed, "_pending_events": []}
        aggregate = object.__new__(cls)
        aggregate.__dict__.update(state)
        return aggregate

    def round_trips(self, aggregate: Aggregate) -> bool:
        """Whether a snapshot of ``aggregate`` decodes to an equal state (it does when every
        attribute is JSON-native or annotated on the class)."""
        try:
            copy = self.decode_snapshot(self.encode_snapshot(aggregate), type(aggregate))
        except (EventEncodingError, EventDecodingError):
            return False
        return bool(vars(copy) == vars(aggregate))

    @staticmethod
    def _payload(recorded: RecordedEvent) -> Mapping[str, Any]:
        try:
            payload = pydantic_core.from_json(recorded.state)
        except ValueError as error:
            raise EventDecodingError(
                f"{EventCodec._where(recorded)} is not valid JSON: {error}"
            ) from error
        if not isinstance(payload, dict):
            raise EventDecodingError(f"{EventCodec._where(recorded)} is not a JSON object")
        return payload

    @staticmethod
    def _upcast(
        cls: type[Any], state: dict[str, Any], version: Any, recorded: RecordedEvent
    ) -> dict[str, Any]:
        target = getattr(cls, "class_version", 1)
        if not isinstance(version, int) or version < 1 or version > target:
            raise EventDecodingError(
                f"{EventCodec._where(recorded)} has class version {version!r}, but "
                f"{cls.__qualname__} is at version {target}"
            )
        while version < target:
            step = f"upcast_v{version}_v{version + 1}"
            upcaster = getattr(cls, step, None)
            if upcaster is None:
                raise UpcastingError(f"{cls.__qualname__} has class_version {target} but no {step}")
            try:
                upcaster(state)
            except Exception as error:
                raise UpcastingError(
                    f"{cls.__qualname__}.{step} failed on {EventCodec._where(recorded)}: {error}"
                ) from error
            version += 1
        return state

    @staticmethod
    def _where(recorded: RecordedEvent) -> str:
        return (
            f"event {recorded.topic!r} v{recorded.version} of {recorded.aggregate_id} "
            f"(partition {recorded.partition}, offset {recorded.offset})"
        )


@functools.cache
def _snapshot_model(cls: type[Aggregate]) -> type[BaseModel]:
    """A pydantic model over the aggregate's annotated attributes (aliased, since pydantic
    fields cannot start with an underscore)."""
    hints: dict[str, Any] = {
        name: Any if isinstance(hint, TypeVar) else hint
        for name, hint in typing.get_type_hints(cls).items()
        if typing.get_origin(hint) is not typing.ClassVar and not name.startswith("__")
    }
    hints.update(_id=UUID, _version=int, _created_on=datetime, _modified_on=datetime)
    fields: dict[str, Any] = {
        f"a_{name}": (hint, Field(None, alias=name)) for name, hint in hints.items()
    }
    model: type[BaseModel] = create_model(
        f"{cls.__qualname__}Snapshot", __base__=_StateModel, **fields
    )
    return model


def _typed_attributes(model: type[BaseModel], raw: Any) -> dict[str, Any]:
    """Validate ``raw`` with ``model`` and return the attributes it set, by their own names."""
    instance = model.model_validate(raw)
    return {
        info.alias or name: getattr(instance, name)
        for name, info in type(instance).model_fields.items()
        if name in instance.model_fields_set
    }


codec = EventCodec()
"""The shared codec (it holds no state)."""
