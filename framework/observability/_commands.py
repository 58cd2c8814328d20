"""The signals of executing one command: its span, its log context, its duration and outcome.
Used by :class:`framework.application.Application` and the Kafka shard owner."""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from uuid import UUID

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from framework.observability import _names as n
from framework.observability._logs import set_command_ids
from framework.observability._metrics import Reading, instruments, observe, unobserve
from framework.observability._tracing import (
    command_span,
    context_of,
    current_traceparent,
    send_attributes,
    tracer,
)

if TYPE_CHECKING:
    from framework.commands import Metadata

__all__ = [
    "ObservedCommand",
    "caller_span",
    "end_command",
    "observe_writer",
    "observed_command",
    "observed_transaction",
    "outcome_of",
    "start_command",
    "traced",
    "unobserve_writer",
]


def outcome_of(error: BaseException) -> str:
    """``conflict`` (lost its races), ``rejected`` (the domain or the input refused it) or
    ``error`` (anything else: outages, unknown outcomes, bugs)."""
    from framework import errors

    if isinstance(error, errors.ConcurrencyError):
        return n.CONFLICT
    if isinstance(
        error,
        errors.DomainError
        | errors.CommandError
        | errors.AggregateNotFoundError
        | errors.AggregateExistsError
        | errors.CrossShardCommandError
        | errors.EventTooLargeError,
    ):
        return n.REJECTED
    return n.ERROR


def traced(metadata: Metadata) -> Metadata:
    """``metadata`` carrying the current span's ``traceparent`` (unchanged when untraced)."""
    parent = current_traceparent()
    if parent is None or parent == metadata.traceparent:
        return metadata
    return metadata.model_copy(update={"traceparent": parent})


class ObservedCommand:
    """Around executing one command (what :func:`observed_command` returns; a class, not a
    generator, since every command passes through it): the ``command <Type>`` span, the
    command's ids in the log context and, when ``measure``, its duration and outcome in
    ``keel.command.duration`` / ``keel.command.rejected``. In the block, ``metadata`` is the
    metadata to use (carrying the span's trace context); report a success with :meth:`done`."""

    __slots__ = ("_measure", "_parent", "_reset", "_scope", "_started", "metadata", "span")

    def __init__(self, metadata: Metadata, *, measure: bool = True, parent: str | None = None):
        self.metadata = metadata
        self._measure = measure
        self._parent = parent

    def __enter__(self) -> ObservedCommand:
        metadata = self.metadata
        self._started = time.perf_counter()
        self._reset = set_command_ids(
            metadata.command_id, metadata.correlation_id, metadata.causation_id
        )
        try:
            self._scope = command_span(
                metadata.command_type or "?",
                command_id=metadata.command_id,
                correlation_id=metadata.correlation_id,
                causation_id=metadata.causation_id,
                traceparent=self._parent,
            )
            self.span = self._scope.__enter__()
            self.metadata = traced(metadata)
        except BaseException:
            self._reset()
            raise
        return self

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        command_type = self.metadata.command_type or "?"
        outcome = n.OK
        try:
            if error is not None:
                outcome = outcome_of(error)
                if self.span.is_recording():
                    self.span.set_attribute(n.KEEL_OUTCOME, outcome)
                if self._measure and outcome != n.ERROR:
                    instruments.command_rejected.add(
                        1,
                        {
                            n.COMMAND: command_type,
                            n.OUTCOME: outcome,
                            n.ERROR_TYPE: type(error).__name__,
                        },
                    )
            if self._measure:
                instruments.command_duration.record(
                    time.perf_counter() - self._started,
                    {n.COMMAND: command_type, n.OUTCOME: outcome},
                )
        finally:
            try:
                self._scope.__exit__(kind, error, traceback)
            finally:
                self._reset()

    def done(self, result: Any) -> None:
        """Note the aggregate and versions a successful result wrote on the span."""
        _note_result(self.span, result)


def _note_result(span: trace.Span, result: Any) -> None:
    if span.is_recording() and result.aggregate_id is not None:
        span.set_attribute(n.KEEL_AGGREGATE_ID, str(result.aggregate_id))
        version = result.versions.get(result.aggregate_id)
        if version is not None:
            span.set_attribute(n.KEEL_AGGREGATE_VERSION, version)
        if result.replayed:  # ok is the span's plain status; a replay is worth saying
            span.set_attribute(n.KEEL_OUTCOME, n.REPLAYED)


def observed_command(
    metadata: Metadata, *, measure: bool = True, parent: str | None = None
) -> ObservedCommand:
    """``with observed_command(metadata) as observed:`` around executing one command (a child
    of ``parent``'s span when given): see :class:`ObservedCommand`."""
    return ObservedCommand(metadata, measure=measure, parent=parent)


def caller_span() -> trace.Span:
    """The span in effect in the calling thread. A command a writer decides for a caller in its
    own process keeps the caller's ``command <Type>`` span as its only one: the writer puts its
    ``send`` spans under it and leaves it to the caller to end."""
    return trace.get_current_span()


def start_command(metadata: Metadata, parent: str | None = None) -> tuple[trace.Span, Metadata]:
    """A writer's ``command <Type>`` span for a command it took from the commands topic (a
    child of the sender's span: ``parent``, the record's ``traceparent`` header, sampled or
    not, else the metadata's), not yet current, and the metadata its events get. End it
    with :func:`end_command` once the command's transaction committed (or did not)."""
    command_type = metadata.command_type or "?"
    attributes: dict[str, Any] = {n.KEEL_COMMAND: command_type}
    if metadata.command_id is not None:
        attributes[n.KEEL_COMMAND_ID] = str(metadata.command_id)
    if metadata.correlation_id is not None:
        attributes[n.KEEL_CORRELATION_ID] = str(metadata.correlation_id)
    span = tracer().start_span(
        n.SPAN_COMMAND.format(command=command_type),
        context=context_of(parent or metadata.traceparent),
        attributes=attributes,
    )
    if not span.is_recording():
        return span, metadata
    with trace.use_span(span, end_on_exit=False):
        return span, traced(metadata)


def end_command(span: trace.Span, result: Any = None, error: BaseException | None = None) -> None:
    if span.is_recording():
        if error is not None:
            span.set_attribute(n.KEEL_OUTCOME, outcome_of(error))
            span.set_attribute(n.ERROR_TYPE, type(error).__qualname__)
            span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
        elif result is not None:
            _note_result(span, result)
    span.end()


@contextmanager
def observed_transaction(
    topic: str, commands: Sequence[tuple[trace.Span, UUID | None, int | None, int]]
) -> Iterator[None]:
    """Around one Kafka transaction holding several commands' events: a ``send <topic>`` span
    under each command's span (``(span, aggregate id, version, events)``), its duration in
    ``keel.store.txn.duration`` and, once committed, the events in
    ``keel.store.append.events``."""
    sends = [
        tracer().start_span(
            n.SPAN_SEND.format(topic=topic),
            context=trace.set_span_in_context(span),
            kind=trace.SpanKind.PRODUCER,
            attributes=send_attributes(topic, count, aggregate_id=aggregate_id, version=version),
        )
        for span, aggregate_id, version, count in commands
        if span.is_recording()
    ]
    started = time.perf_counter()
    try:
        yield
    except BaseException as error:
        for send in sends:
            send.set_attribute(n.ERROR_TYPE, type(error).__qualname__)
            send.set_status(Status(StatusCode.ERROR, str(error)[:200]))
            send.end()
        raise
    instruments.store_txn_duration.record(time.perf_counter() - started)
    instruments.store_append_events.add(sum(count for *_, count in commands))
    for send in sends:
        send.end()


def observe_writer(member: Any) -> list[tuple[str, Any]]:
    """Report a writer member's shard owners (``stats()``, ``owned()``) as
    ``keel.writer.transactions`` / ``fenced`` / ``retries`` and ``keel.writer.shards``."""
    ref = weakref.ref(member)

    def counter(key: str) -> Any:
        def read() -> list[Reading]:
            found = ref()
            if found is None:
                return []
            app = found.app.name
            return [
                (stats.get(key, 0), {n.APP: app, n.SHARD: shard})
                for shard, stats in found.stats().items()
            ]

        return read

    def shards() -> list[Reading]:
        found = ref()
        return [] if found is None else [(len(found.owned()), {n.APP: found.app.name})]

    return [
        (metric, observe(metric, observer))
        for metric, observer in (
            (n.WRITER_TRANSACTIONS, counter("transactions")),
            (n.WRITER_FENCED, counter("fenced")),
            (n.WRITER_RETRIES, counter("retries")),
            (n.WRITER_SHARDS, shards),
        )
    ]


def unobserve_writer(observers: list[tuple[str, Any]]) -> None:
    for metric, observer in observers:
        unobserve(metric, observer)
