"""Log records that say which command they belong to.

While a command is decided (and while a projection handles one of its events) the command's
ids are in a context variable; :class:`CorrelationFilter` copies them onto every log record as
``correlation_id``, ``causation_id`` and ``command_id`` (``"-"`` outside a command), so a
format string or a JSON formatter can show them::

    LOGGING = {
        "filters": {"keel": {"()": "framework.observability.CorrelationFilter"}},
        "handlers": {"console": {..., "filters": ["keel"]}},
        "formatters": {"plain": {"format": "%(levelname)s %(correlation_id)s %(message)s"}},
    }
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["CorrelationFilter", "command_ids", "log_context", "set_command_ids"]

_ids: ContextVar[tuple[str, str, str] | None] = ContextVar("keel_command_ids", default=None)


def set_command_ids(
    command_id: object = None, correlation_id: object = None, causation_id: object = None
) -> Callable[[], None]:
    """From now on, log records carry these ids; call what it returns to put back the ones
    before (what :func:`log_context` does around a block)."""
    token = _ids.set(
        (
            str(command_id) if command_id is not None else "-",
            str(correlation_id) if correlation_id is not None else "-",
            str(causation_id) if causation_id is not None else "-",
        )
    )
    return lambda: _ids.reset(token)


@contextmanager
def log_context(
    *, command_id: object = None, correlation_id: object = None, causation_id: object = None
) -> Iterator[None]:
    """Within this block, log records carry these ids."""
    reset = set_command_ids(command_id, correlation_id, causation_id)
    try:
        yield
    finally:
        reset()


def command_ids() -> dict[str, str]:
    """The ids of the command in effect (``"-"`` for each outside one)."""
    command, correlation, causation = _ids.get() or ("-", "-", "-")
    return {"command_id": command, "correlation_id": correlation, "causation_id": causation}


class CorrelationFilter(logging.Filter):
    """Adds ``command_id``, ``correlation_id`` and ``causation_id`` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in command_ids().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True
