"""Spans, through the OpenTelemetry API only: a no-op until the application installs the SDK
(``opentelemetry.sdk.trace.TracerProvider``), then every command, append and projection batch
is a span of one connected trace.

The trace context travels with the work as a W3C ``traceparent`` string: in the metadata of a
command sent to its writer (so the writer's spans are children of the caller's), and in the
metadata of every event (so the projection batch that applies it links back to the command).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from contextvars import Token
from typing import Any, TypedDict, Unpack

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from framework.observability import _names as n

__all__ = [
    "MAX_LINKS",
    "TRACEPARENT",
    "cdc_span",
    "command_span",
    "context_of",
    "current_traceparent",
    "deadline_span",
    "destination_of",
    "link_to",
    "process_span",
    "rebuild_span",
    "request_span",
    "send_attributes",
    "send_span",
    "span_context_of",
    "tracer",
    "tracing_enabled",
]

TRACEPARENT = "traceparent"
"""The carrier key (W3C Trace Context), in command and event metadata and Kafka headers."""

_propagator = TraceContextTextMapPropagator()


_tracer = trace.get_tracer("keel")


def tracer() -> trace.Tracer:
    """keel's tracer (a proxy: it follows whichever provider the application installs)."""
    return _tracer


def tracing_enabled() -> bool:
    """Whether an SDK tracer provider is installed (else every span is a no-op, and work
    done only for spans, such as scanning events for their trace context, is skipped)."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def current_traceparent(*, sampled_only: bool = True) -> str | None:
    """The ``traceparent`` of the span in effect, or None when nothing is traced.
    ``sampled_only=False`` also names a span the sampler dropped (flags ``00``): a message
    that travels only for a while carries that decision, so its receiver drops its part too."""
    found = trace.get_current_span().get_span_context()
    # Only sampled traces travel in metadata: the events keep their metadata forever.
    if not found.is_valid or (sampled_only and not found.trace_flags.sampled):
        return None
    # W3C Trace Context, version 00 (what the propagator writes, without its carrier dance).
    return f"00-{found.trace_id:032x}-{found.span_id:016x}-{found.trace_flags:02x}"


# What current_traceparent writes; anything else (other versions) goes through the propagator.
_VERSION_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def span_context_of(traceparent: str | None) -> SpanContext | None:
    """The (remote) span a ``traceparent`` names (None for None or a malformed one)."""
    if not traceparent:
        return None
    match = _VERSION_00.fullmatch(traceparent)
    if match is None:
        extracted = _propagator.extract({TRACEPARENT: traceparent})
        found = trace.get_current_span(extracted).get_span_context()
    else:  # parsed here: a projection batch links up to MAX_LINKS of them
        found = SpanContext(
            int(match[1], 16),
            int(match[2], 16),
            is_remote=True,
            trace_flags=TraceFlags(int(match[3], 16)),
        )
    return found if found.is_valid else None


def context_of(traceparent: str | None) -> otel_context.Context | None:
    """The context a ``traceparent`` names (None for None or a malformed one)."""
    found = span_context_of(traceparent)
    return None if found is None else trace.set_span_in_context(NonRecordingSpan(found))


MAX_LINKS = 16
"""Links per batch span: enough to follow a batch back to its commands, cheap to make (a
batch of a thousand events may come from a thousand commands)."""


def link_to(traceparents: Iterable[str | None]) -> list[Link]:
    """Links to the first :data:`MAX_LINKS` distinct valid contexts among ``traceparents``."""
    links: list[Link] = []
    seen: set[str] = set()
    for parent in traceparents:
        if len(links) >= MAX_LINKS:
            break
        if not parent or parent in seen:
            continue
        seen.add(parent)
        found = span_context_of(parent)
        if found is not None:
            links.append(Link(found))
    return links


class _Scope:
    """One span made current for a ``with`` block, ended when it ends; an error leaving the
    block is noted the way the semantic conventions ask (``error.type``, status, exception).
    What ``start_as_current_span`` does, without its generator layers: commands pass through
    here twice each."""

    __slots__ = ("_token", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self._token: Token[otel_context.Context] | None = None

    def __enter__(self) -> Span:
        span = self.span
        if span.get_span_context().is_valid:  # a no-op span changes no one's context
            self._token = otel_context.attach(trace.set_span_in_context(span))
        return span

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        span = self.span
        try:
            if error is not None and span.is_recording():
                span.set_attribute(n.ERROR_TYPE, type(error).__qualname__)
                span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
                span.record_exception(error)
        finally:
            if self._token is not None:
                otel_context.detach(self._token)
            span.end()


def _span(
    name: str,
    kind: SpanKind,
    attributes: Mapping[str, Any],
    *,
    parent: otel_context.Context | None = None,
    links: list[Link] | None = None,
) -> _Scope:
    return _Scope(
        tracer().start_span(name, context=parent, kind=kind, attributes=attributes, links=links)
    )


def command_span(
    command_type: str,
    *,
    command_id: object = None,
    correlation_id: object = None,
    causation_id: object = None,
    traceparent: str | None = None,
) -> Any:
    """``command <Type>`` around deciding and appending one command. ``traceparent`` (from a
    command record) makes it a child of the span that sent it."""
    attributes: dict[str, Any] = {n.KEEL_COMMAND: command_type}
    for key, value in (
        (n.KEEL_COMMAND_ID, command_id),
        (n.KEEL_CORRELATION_ID, correlation_id),
        (n.KEEL_CAUSATION_ID, causation_id),
    ):
        # A command's own correlation and causation ids default to its id: say it once.
        if value is not None and (key == n.KEEL_COMMAND_ID or value != command_id):
            attributes[key] = str(value)
    return _span(
        n.SPAN_COMMAND.format(command=command_type),
        SpanKind.INTERNAL,
        attributes,
        parent=context_of(traceparent),
    )


def destination_of(store: Any) -> tuple[str, str]:
    """``(messaging.system, topic)`` of a store's events: ``("kafka", "shop.events")``; the
    embedded stores are ``("keel", "<name>.events")``."""
    name = getattr(store, "topic", None) or f"{store.name}.events"
    return (n.MESSAGING_SYSTEM_KAFKA if hasattr(store, "commands_topic") else "keel"), name


class SendFields(TypedDict, total=False):
    """What a ``send <topic>`` span says besides its topic and count."""

    aggregate_id: object
    version: int | None
    partition: int | None
    system: str


def _messaging(operation: str, topic: str, count: int, system: str) -> dict[str, Any]:
    """The messaging-convention attributes every ``send`` and ``process`` span carries."""
    return {
        n.MESSAGING_SYSTEM: system,
        n.MESSAGING_OPERATION_NAME: operation,
        n.MESSAGING_OPERATION_TYPE: operation,
        n.MESSAGING_DESTINATION_NAME: topic,
        n.MESSAGING_BATCH_MESSAGE_COUNT: count,
    }


def send_attributes(topic: str, count: int, **fields: Unpack[SendFields]) -> dict[str, Any]:
    """The attributes of a ``send <topic>`` span."""
    system = fields.get("system", n.MESSAGING_SYSTEM_KAFKA)
    attributes = _messaging("send", topic, count, system)
    aggregate_id = fields.get("aggregate_id")
    if aggregate_id is not None:
        attributes[n.KEEL_AGGREGATE_ID] = str(aggregate_id)
        if system == n.MESSAGING_SYSTEM_KAFKA:  # the record key is the aggregate id
            attributes[n.MESSAGING_KAFKA_MESSAGE_KEY] = attributes[n.KEEL_AGGREGATE_ID]
    version = fields.get("version")
    if version is not None:
        attributes[n.KEEL_AGGREGATE_VERSION] = version
    partition = fields.get("partition")
    if partition is not None:
        attributes[n.MESSAGING_DESTINATION_PARTITION_ID] = str(partition)
    return attributes


def send_span(topic: str, *, count: int, **fields: Unpack[SendFields]) -> Any:
    """``send <topic>`` (PRODUCER) around one append to the events topic."""
    return _span(
        n.SPAN_SEND.format(topic=topic),
        SpanKind.PRODUCER,
        send_attributes(topic, count, **fields),
    )


def process_span(
    topic: str,
    *,
    projection: str,
    partition: int,
    first_offset: int,
    last_offset: int,
    count: int,
    group: str | None = None,
    traceparents: Iterable[str | None] = (),
    system: str = n.MESSAGING_SYSTEM_KAFKA,
) -> Any:
    """``process <topic>`` (CONSUMER) around one applied batch, linked to the commands whose
    events it holds (``traceparents``, from their metadata)."""
    attributes = _messaging("process", topic, count, system)
    attributes.update(
        {
            n.MESSAGING_DESTINATION_PARTITION_ID: str(partition),
            n.MESSAGING_KAFKA_OFFSET: first_offset,
            n.KEEL_OFFSET_FIRST: first_offset,
            n.KEEL_OFFSET_LAST: last_offset,
            n.KEEL_PROJECTION: projection,
        }
    )
    if group:
        attributes[n.MESSAGING_CONSUMER_GROUP_NAME] = group
    links = link_to(traceparents)
    # One command's events: the batch continues that command's trace (as the messaging
    # conventions have it for a single creation context); several: linked only.
    parent = None
    if len(links) == 1:
        parent = trace.set_span_in_context(NonRecordingSpan(links[0].context))
    return _span(
        n.SPAN_PROCESS.format(topic=topic),
        SpanKind.CONSUMER,
        attributes,
        parent=parent,
        links=links,
    )


def rebuild_span(projection: str) -> Any:
    """``rebuild <projection>`` around a whole rebuild (shadow tables to swap)."""
    return _span(
        n.SPAN_REBUILD.format(projection=projection),
        SpanKind.INTERNAL,
        {n.KEEL_PROJECTION: projection},
    )


def deadline_span(process: str, name: str, *, traceparent: str | None = None) -> Any:
    """``deadline <name>`` around a process manager handling a deadline that fell due
    (for :mod:`framework.process`); ``traceparent`` links it to what scheduled it."""
    return _span(
        n.SPAN_DEADLINE.format(name=name),
        SpanKind.INTERNAL,
        {n.KEEL_PROCESS: process, n.KEEL_DEADLINE: name},
        links=link_to([traceparent]),
    )


def cdc_span(source: str, *, count: int, traceparents: Iterable[str | None] = ()) -> Any:
    """``process <source>`` (CONSUMER) around one batch of captured changes (for
    :mod:`framework.cdc`)."""
    return _span(
        n.SPAN_CDC.format(source=source),
        SpanKind.CONSUMER,
        {**_messaging("process", source, count, n.MESSAGING_SYSTEM_KAFKA), n.KEEL_SOURCE: source},
        links=link_to(traceparents),
    )


def request_span(
    method: str, route: str, path: str, *, user: str | None, traceparent: str | None
) -> Any:
    """``<METHOD> <route>`` (SERVER): where a web request that issues a command starts its
    trace (continuing the client's when it sent a ``traceparent`` header)."""
    attributes: dict[str, Any] = {
        n.HTTP_REQUEST_METHOD: method,
        n.HTTP_ROUTE: route,
        n.URL_PATH: path,
    }
    if user:
        attributes[n.ENDUSER_ID] = user
    return _span(f"{method} {route}", SpanKind.SERVER, attributes, parent=context_of(traceparent))
