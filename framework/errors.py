"""One exception tree for the whole framework.

Every error the framework raises derives from :class:`FrameworkError`, and most
also derive from the builtin they resemble, so ``except ValueError`` keeps working::

    FrameworkError
    ├── ConfigurationError (ValueError)
    │   └── UnsafeConfigurationError
    ├── CommandError (ValueError)
    │   ├── CommandValidationError
    │   ├── UnknownCommandError (LookupError)
    │   └── IdempotencyKeyReusedError        a command id re-used for another command
    ├── DomainError (ValueError)            raised by your aggregates' invariants
    ├── AggregateNotFoundError (LookupError)
    ├── AggregateExistsError
    ├── ConcurrencyError                     a version was already taken
    │   └── ConflictRetriesExhaustedError
    ├── CrossShardCommandError
    ├── RemoteCommandError                   a writer process failed with an unknown error
    ├── EventDecodingError (ValueError)
    │   ├── UnknownEventTypeError (LookupError)
    │   ├── UpcastingError
    │   └── StreamGapError                   an aggregate's stored versions skip a number
    ├── EventEncodingError (TypeError)
    ├── EventTooLargeError (ValueError)
    ├── StoreError
    │   ├── StoreUnavailableError (ConnectionError)
    │   ├── OutcomeUnknownError (TimeoutError)
    │   ├── WriterFencedError
    │   ├── TopicLayoutChangedError
    │   └── IndexDamagedError
    ├── ProjectionError
    │   ├── PositionConflictError
    │   ├── ProjectionTimeoutError (TimeoutError)
    │   ├── ProjectionStoppedError
    │   ├── ReadModelNotMigratedError        the framework's tables are missing
    │   └── DeadLetterError
    └── ProcessError                         a process manager is misused or failed
        ├── ProcessConflictError             another worker moved the same instance first
        └── UnknownInstanceError             an input for an instance never started
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AggregateExistsError",
    "AggregateNotFoundError",
    "CommandError",
    "CommandValidationError",
    "ConcurrencyError",
    "ConfigurationError",
    "ConflictRetriesExhaustedError",
    "CrossShardCommandError",
    "DeadLetterError",
    "DomainError",
    "EventDecodingError",
    "EventEncodingError",
    "EventTooLargeError",
    "FrameworkError",
    "IdempotencyKeyReusedError",
    "IndexDamagedError",
    "OutcomeUnknownError",
    "PositionConflictError",
    "ProcessConflictError",
    "ProcessError",
    "ProjectionError",
    "ProjectionStoppedError",
    "ProjectionTimeoutError",
    "ReadModelNotMigratedError",
    "RemoteCommandError",
    "StoreError",
    "StoreUnavailableError",
    "StreamGapError",
    "TopicLayoutChangedError",
    "UnknownCommandError",
    "UnknownEventTypeError",
    "UnknownInstanceError",
    "UnsafeConfigurationError",
    "UpcastingError",
    "WriterFencedError",
]


class FrameworkError(Exception):
    """The base of every error this framework raises."""


class ConfigurationError(FrameworkError, ValueError):
    """A setting is missing or has a value the framework cannot use."""


class UnsafeConfigurationError(ConfigurationError):
    """A setting would lose or corrupt events (e.g. a compacted events topic); the store refuses
    to start. The message names the setting and the safe value."""


class CommandError(FrameworkError, ValueError):
    """A command was rejected before any event was written."""


class CommandValidationError(CommandError):
    """A command's input failed validation. ``errors`` lists every field error as pydantic
    reports them (``loc``, ``msg``, ``type``), so a form can show each next to its field."""

    def __init__(self, command_type: str, errors: list[dict[str, Any]]) -> None:
        self.command_type = command_type
        self.errors = errors
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or '(command)'}: {e.get('msg')}"
            for e in errors
        )
        super().__init__(f"invalid {command_type}: {fields}")


class UnknownCommandError(CommandError, LookupError):
    """No handler is registered for this command type. Register one with ``@app.handles``."""


class IdempotencyKeyReusedError(CommandError):
    """A command id that already ran was sent again with another command type or payload.
    Nothing was written. A command id names one intent: give a new command a new id (the
    default), and re-send the very same command to retry."""


class DomainError(FrameworkError, ValueError):
    """An aggregate refused a command because it would break an invariant. Subclass it for
    your domain's rules (``class OrderAlreadyShipped(DomainError)``)."""


class AggregateNotFoundError(FrameworkError, LookupError):
    """No events exist for this aggregate id."""


class AggregateExistsError(FrameworkError):
    """A command tried to create an aggregate whose id is already taken."""


class ConcurrencyError(FrameworkError):
    """Another writer appended to the same aggregate first: the expected version was stale.
    Nothing was written. Reload the aggregate and decide again (``execute`` does this)."""


class ConflictRetriesExhaustedError(ConcurrencyError):
    """``execute`` reloaded and retried a command as many times as configured and still lost
    every race. Nothing was written; raise ``max_conflict_retries`` or reduce contention."""


class CrossShardCommandError(FrameworkError):
    """One command touched aggregates owned by different writer shards, which cannot be
    appended in one atomic transaction. Use one shard, or split the work with a process
    manager."""


class RemoteCommandError(FrameworkError):
    """The writer process that decided a command failed with an error this process does not
    know (a bug in a handler, or an error class not imported here). ``remote_type`` names it;
    the writer's log has the traceback. Nothing was written."""

    def __init__(self, message: str, remote_type: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type


class EventDecodingError(FrameworkError, ValueError):
    """A stored event could not be turned back into a domain event."""


class UnknownEventTypeError(EventDecodingError, LookupError):
    """A stored event names a type no registered event class has. Import the module that
    defines it, or register an upcaster for a renamed event."""


class UpcastingError(EventDecodingError):
    """An upcaster failed on an old event payload."""


class StreamGapError(EventDecodingError):
    """An aggregate's stored events skip a version (the message names the aggregate and the
    gap). The store never writes one: something wrote around it or the data was damaged."""


class EventEncodingError(FrameworkError, TypeError):
    """An event holds a value that has no JSON form (the framework never pickles)."""


class EventTooLargeError(FrameworkError, ValueError):
    """An event or batch exceeds what the store accepts; nothing was written."""


class StoreError(FrameworkError):
    """The event store failed."""


class StoreUnavailableError(StoreError, ConnectionError):
    """The event store, or a database the framework keeps state in (read models, a feed's
    cursor, a process manager's facts), cannot be reached; the message names it, password
    hidden. Nothing was written; it is safe to retry."""


class OutcomeUnknownError(StoreError, TimeoutError):
    """An append may or may not have been written (e.g. a commit timed out and the store could
    not find out). Retry with the same command id: idempotency makes that safe."""


class WriterFencedError(StoreError):
    """Another process took over this writer's transactional id; this writer must re-initialise
    before it writes again."""


class TopicLayoutChangedError(StoreError):
    """The events topic's partition count (or shard count) differs from when the store was
    created. Changing it would break per-aggregate ordering; restore the original layout."""


class IndexDamagedError(StoreError):
    """A Kafka store's local index file is damaged and rebuilding it from the topic did not
    help. The message names the file: stop the process, delete the file (the store rebuilds it
    from the topic) and check the disk."""


class ProjectionError(FrameworkError):
    """A projection worker failed."""


class PositionConflictError(ProjectionError):
    """A projection's stored position moved under this worker (another worker applied the same
    partition); the batch was rolled back and nothing was applied twice."""


class ProjectionTimeoutError(ProjectionError, TimeoutError):
    """A projection did not reach the requested positions in time."""


class ProjectionStoppedError(ProjectionError):
    """A worker or rebuild was asked to stop (its stop event was set) while it waited to retry
    or before it finished; nothing half-done was committed, and a restart resumes from the
    stored positions."""


class ReadModelNotMigratedError(ProjectionError):
    """Tables the framework needs are missing from the read-model database: it was never
    migrated (or is behind). ``missing`` names them; run ``alembic upgrade head``."""

    def __init__(self, what: str, missing: list[str]) -> None:
        self.missing = missing
        # The fix first: probes and status tables cut long messages.
        super().__init__(
            f"{what}: the read-model database is not migrated: run `alembic upgrade head` (or "
            f"setup_tables(engine, projection) in tests); missing tables: {', '.join(missing)}"
        )


class DeadLetterError(ProjectionError):
    """An event could not be applied after every retry and was parked as a dead letter."""


class ProcessError(FrameworkError):
    """A process manager (:mod:`framework.process`) is misdeclared, misused, or failed."""


class ProcessConflictError(ProcessError):
    """Another worker appended to the same process instance first (optimistic concurrency):
    this input's transaction was rolled back and is tried again on fresh state."""


class UnknownInstanceError(ProcessError):
    """A non-starting event arrived for a process instance that was never started (with
    ``on_unknown="dead_letter"``): it is parked at once, since retrying cannot help."""

    retryable = False
