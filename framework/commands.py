"""Commands: typed, validated requests to change the system.

A command is a frozen pydantic model. The client chooses its fields (and may choose its
``command_id``, which makes a retry idempotent); the framework fills in who issued it and why
(:class:`Metadata`), which the client can never set.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Self
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from framework.errors import CommandValidationError

__all__ = ["Command", "Metadata"]


class Command(BaseModel):
    """Base class of every command.

    Subclass it with your fields; ``command_id`` identifies one *intent*: executing the same
    command id twice returns the first result and writes nothing new::

        class PlaceOrder(Command):
            order_id: UUID
            customer_id: UUID
            lines: list[OrderLine] = Field(min_length=1)
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        allow_inf_nan=False,
        validate_default=True,
        str_max_length=100_000,
    )

    command_type: ClassVar[str] = ""
    """The command's public name (defaults to the class name); forms and APIs use it."""

    route_by: ClassVar[str | None] = None
    """The field holding the id of the aggregate this command changes. On a sharded store
    (Kafka) the command goes to that aggregate's writer shard. By default: the first field
    whose type is ``UUID`` (``command_id`` aside); a command without one routes by its
    ``command_id``."""

    verbose_name: ClassVar[str] = ""
    """What people call it, in lists, titles, buttons and messages ("Place order"); defaults to
    the class name in words."""

    help_text: ClassVar[str] = ""
    """One sentence on what it does, for people (Django's name for it; ``description`` is too
    likely a field of some command); defaults to the first line of the docstring."""

    command_id: UUID = Field(default_factory=uuid4, description="Idempotency key")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "command_type" not in cls.__dict__:
            cls.command_type = cls.__name__
        if "verbose_name" not in cls.__dict__:
            words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", cls.__name__).lower()
            cls.verbose_name = words[:1].upper() + words[1:]
        if "help_text" not in cls.__dict__:
            doc = (cls.__doc__ or "").strip()
            cls.help_text = doc.splitlines()[0] if doc else ""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.route_by is not None and cls.route_by not in cls.model_fields:
            raise TypeError(
                f"{cls.__name__}.route_by names {cls.route_by!r}, which is not one of its fields"
            )

    def routing_id(self) -> UUID:
        """The id that picks this command's writer shard (see :attr:`route_by`)."""
        field_name = self.route_by or _first_uuid_field(type(self))
        value = getattr(self, field_name) if field_name else None
        return value if isinstance(value, UUID) else self.command_id

    def fingerprint(self) -> str:
        """A digest of the command's type and payload (without its id): re-using a command id
        for another command is refused by comparing these."""
        payload = self.model_dump_json(exclude={"command_id"})
        return hashlib.sha256(f"{self.command_type}\n{payload}".encode()).hexdigest()

    @classmethod
    def parse(cls, data: Mapping[str, Any] | str | bytes) -> Self:
        """Validate untrusted input (a mapping or JSON), raising
        :class:`~framework.errors.CommandValidationError` with every field error."""
        try:
            if isinstance(data, str | bytes):
                return cls.model_validate_json(data)
            return cls.model_validate(data)
        except ValidationError as error:
            raise CommandValidationError(
                cls.command_type,
                [
                    {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                    for e in error.errors(include_url=False)
                ],
            ) from None


def _first_uuid_field(cls: type[Command]) -> str | None:
    for name, info in cls.model_fields.items():
        if name != "command_id" and info.annotation is UUID:
            return name
    return None


class Metadata(BaseModel):
    """Who issued a command and why, recorded on every event it causes.

    Set by the framework (from the authenticated user and the request), never by the client.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: UUID | None = None
    command_type: str | None = None
    user: str | None = None
    correlation_id: UUID | None = None
    causation_id: UUID | None = None
    issued_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    traceparent: str | None = Field(default=None, max_length=200)
    """The W3C trace context of the span that issued the command (None when untraced): a
    writer's spans join the caller's trace, a projection batch links back to it."""
