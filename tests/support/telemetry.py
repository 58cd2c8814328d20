"""The OpenTelemetry SDK for tests: installed once per test process (the global providers can
be set only once), recording spans into memory only inside :func:`recording`, so other tests
pay nothing for it. Metrics go to a Prometheus reader (what ``/metrics`` serves)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

from framework.observability import prometheus

_lock = threading.Lock()
_exporter = InMemorySpanExporter()
_on = threading.Event()


class _Switch(Sampler):
    """Samples (and so records and exports) spans only while a test records; a span whose
    parent was dropped is dropped too, as by the SDK's ``ParentBased`` samplers."""

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if not _on.is_set() or (parent.is_valid and not parent.trace_flags.sampled):
            return SamplingResult(Decision.DROP)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "keel-tests"


def install() -> None:
    with _lock:
        if not isinstance(trace.get_tracer_provider(), TracerProvider):
            provider = TracerProvider(sampler=_Switch())
            provider.add_span_processor(SimpleSpanProcessor(_exporter))
            trace.set_tracer_provider(provider)
        prometheus.install(service_name="keel-tests")


@contextmanager
def recording() -> Iterator[InMemorySpanExporter]:
    """Spans finished within the block land in the yielded exporter."""
    install()
    _exporter.clear()
    _on.set()
    try:
        yield _exporter
    finally:
        _on.clear()


def scrape(name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """The samples of one metric (Prometheus name) in the registry, with their labels."""
    from prometheus_client import REGISTRY

    found = []
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found.append((dict(sample.labels), float(sample.value)))
    return found


def parse_metrics(text: str, name: str, **labels: str) -> list[float]:
    """Values of ``name`` with ``labels`` in Prometheus text output (what ``/metrics`` sent)."""
    from prometheus_client.parser import text_string_to_metric_families

    values = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                values.append(float(sample.value))
    return values


def tree(spans: Any) -> dict[int | None, list[Any]]:
    """Spans by their parent's span id (None: roots)."""
    children: dict[int | None, list[Any]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent, []).append(span)
    return children
