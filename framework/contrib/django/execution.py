"""Executing commands for a Django request: who issued it, correlation ids, waiting for the read
models (read-your-writes), and what an error means to a user.

The admin and the JSON views both go through here, so they record the same metadata and map
errors the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from uuid import UUID, uuid4

from django.http import HttpRequest

from framework.application import CommandResult
from framework.commands import Command
from framework.contrib.django.conf import get_application, get_projections, get_settings
from framework.errors import (
    AggregateExistsError,
    AggregateNotFoundError,
    CommandValidationError,
    ConcurrencyError,
    CrossShardCommandError,
    DomainError,
    IdempotencyKeyReusedError,
    OutcomeUnknownError,
    StoreUnavailableError,
    UnknownCommandError,
)
from framework.observability import request_span
from framework.persistence import Positions

__all__ = [
    "CORRELATION_HEADER",
    "aggregate_type",
    "check_positions",
    "correlation_id",
    "error_status",
    "execute",
    "format_positions",
    "parse_positions",
    "username",
    "wait_for",
]

log = logging.getLogger(__name__)

CORRELATION_HEADER = "X-Correlation-ID"
"""A client may send a UUID in this header to tie its commands together; else one is made."""


def username(request: HttpRequest) -> str | None:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    return str(user.get_username())


def correlation_id(request: HttpRequest) -> UUID:
    """The request's correlation id: the client's ``X-Correlation-ID`` when it is a UUID, else
    a new one."""
    supplied = request.headers.get(CORRELATION_HEADER, "")
    try:
        return UUID(supplied[:64])
    except ValueError:
        return uuid4()


def execute(
    command: Command, request: HttpRequest, *, correlation: UUID | None = None
) -> CommandResult:
    """Execute ``command`` as the request's user; the user name and the correlation id go into
    every event's metadata (set here, never by the client). The command goes into the admin's
    log too (:mod:`framework.contrib.django.audit`)."""
    from framework.contrib.django.audit import log_command

    app = get_application()
    user = username(request)
    match = getattr(request, "resolver_match", None)
    route = (match.route if match is not None else "") or request.path
    with request_span(
        request.method or "GET",
        route,
        request.path,
        user=user,
        traceparent=request.headers.get("traceparent"),
    ):
        result = app.execute(
            command, user=user, correlation_id=correlation or correlation_id(request)
        )
    if not result.replayed:
        kind = aggregate_type(result.aggregate_id) if result.aggregate_id else None
        log_command(request, command, result, kind)
    return result


def aggregate_type(aggregate_id: UUID) -> str | None:
    """The type name of an aggregate (``"Order"``), from its first event."""
    first = get_application().store.read(aggregate_id, up_to_version=1)
    return first[0].topic.split(".", 1)[0] if first else None


def wait_for(
    positions: Positions,
    *,
    timeout: float | None = None,
    projections: Iterable[str] | None = None,
) -> bool:
    """Wait until the projections (all configured ones by default) have applied everything up
    to ``positions``; True when they have, False when ``timeout`` (default
    ``KEEL['WAIT_TIMEOUT']``) ran out first. Never raises for a slow worker."""
    if not positions:
        return True
    from framework.contrib.django.conf import get_engine
    from framework.errors import ProjectionTimeoutError
    from framework.worker import wait_until

    budget = get_settings().wait_timeout if timeout is None else timeout
    deadline = time.monotonic() + budget
    chosen = get_projections()
    names = list(chosen) if projections is None else list(projections)
    engine = get_engine()
    for name in names:
        try:
            wait_until(
                chosen[name], engine, positions, timeout=max(deadline - time.monotonic(), 0.0)
            )
        except ProjectionTimeoutError:
            return False
        except Exception as error:  # a read model that cannot be read counts as behind
            log.warning("cannot check projection %s: %s", name, error)
            return False
    return True


def parse_positions(text: str) -> Positions:
    """``"0:123,1:45"`` -> ``{0: 123, 1: 45}``; raises ValueError with a clear message."""
    positions: Positions = {}
    for part in text.split(","):
        if not part.strip():
            continue
        partition, sep, offset = part.strip().partition(":")
        if not sep or not _digits(partition) or not _digits(offset):
            raise ValueError(f"{part.strip()!r} is not PARTITION:OFFSET (e.g. 0:123,1:45)")
        if len(partition) > 6 or len(offset) > 19:
            raise ValueError(f"{part.strip()!r} is out of range")
        positions[int(partition)] = int(offset)
    return positions


def _digits(text: str) -> bool:
    # str.isdigit also accepts superscripts and other scripts' digits, which int() refuses.
    return text.isascii() and text.isdigit()


def check_positions(positions: Mapping[int, int], head: Mapping[int, int]) -> None:
    """Refuse positions the store cannot reach: a partition it does not have, or an offset past
    its end (``head``). Waiting for those would only time out. Raises ValueError."""
    for partition, offset in sorted(positions.items()):
        if partition not in head:
            have = ", ".join(str(p) for p in sorted(head))
            raise ValueError(
                f"partition {partition} does not exist (the store's partitions: {have})"
                if have
                else f"partition {partition} does not exist (the store has no partitions yet)"
            )
        if offset > head[partition]:
            raise ValueError(
                f"{partition}:{offset} is past the end of partition {partition} "
                f"({partition}:{head[partition]})"
            )


def format_positions(positions: Mapping[int, int]) -> str:
    """``{0: 123, 1: 45}`` -> ``"0:123,1:45"`` (what the query views' ``after`` takes)."""
    return ",".join(f"{p}:{o}" for p, o in sorted(positions.items()))


def error_status(error: Exception) -> int:
    """The HTTP status for an error a command raised:

    - 400 invalid input (``CommandValidationError``)
    - 404 an unknown command type, or an aggregate the command names does not exist
    - 409 a domain rule refused it, the id is taken, it lost a race (retry), or its
      ``command_id`` already ran with another payload
    - 503 the event store is unreachable (nothing was written; retry)
    - 504 the outcome is unknown (retry with the same ``command_id``: idempotent)
    """
    if isinstance(error, IdempotencyKeyReusedError):
        return 409
    if isinstance(error, CommandValidationError):
        return 400
    if isinstance(error, UnknownCommandError | AggregateNotFoundError):
        return 404
    if isinstance(
        error, DomainError | AggregateExistsError | ConcurrencyError | CrossShardCommandError
    ):
        return 409
    if isinstance(error, OutcomeUnknownError):
        return 504
    if isinstance(error, StoreUnavailableError):
        return 503
    return 500
