"""Traces, metrics, health and log context: what an operator needs to see (README,
"Observability").

Everything goes through the OpenTelemetry API, which does nothing until the application
installs the SDK; ``pip install keel-cqrs[metrics]`` adds the SDK and the Prometheus client.
Other modules (process managers, CDC, streaming) report through the same small API: the span
helpers, :data:`instruments`, and :func:`observe` for gauges.
"""

from framework.observability._health import Check, Health, bounded, database_check, store_check
from framework.observability._lag import LagSampler, PartitionLag, projection_lag
from framework.observability._logs import CorrelationFilter, command_ids, log_context
from framework.observability._metrics import Reading, instruments, observe, unobserve
from framework.observability._names import ATTRIBUTES, METRICS, SPAN_NAMES
from framework.observability._process import ProcessSampler
from framework.observability._streams import StreamSampler
from framework.observability._tracing import (
    TRACEPARENT,
    cdc_span,
    command_span,
    context_of,
    current_traceparent,
    deadline_span,
    link_to,
    process_span,
    rebuild_span,
    request_span,
    send_span,
    tracer,
)

__all__ = [
    "ATTRIBUTES",
    "METRICS",
    "SPAN_NAMES",
    "TRACEPARENT",
    "Check",
    "CorrelationFilter",
    "Health",
    "LagSampler",
    "PartitionLag",
    "ProcessSampler",
    "Reading",
    "StreamSampler",
    "bounded",
    "cdc_span",
    "command_ids",
    "command_span",
    "context_of",
    "current_traceparent",
    "database_check",
    "deadline_span",
    "instruments",
    "link_to",
    "log_context",
    "observe",
    "process_span",
    "projection_lag",
    "rebuild_span",
    "request_span",
    "send_span",
    "store_check",
    "tracer",
    "unobserve",
]
