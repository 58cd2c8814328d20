"""The observability API on its own: pinned names, command spans and metrics on an embedded
store, the trace context on events, gauges, health checks and the log context."""

from __future__ import annotations

import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from framework import observability
from framework.application import Application
from framework.observability import _names as n
from framework.observability._batches import traceparents_of
from tests.support import telemetry
from tests.support.bank import Deposit, InsufficientFunds, OpenAccount, Owner, Withdraw, build

OWNER = Owner(name="Ann", email="ann@example.com")


def test_attribute_span_and_metric_names_are_pinned() -> None:
    # The messaging conventions are "Development": a rename upstream must be a decision here.
    assert {k: v for k, v in observability.ATTRIBUTES.items() if not k.startswith("KEEL_")} == {
        "APP": "app",
        "COMMAND": "command",
        "ENDUSER_ID": "enduser.id",
        "ERROR_TYPE": "error.type",
        "FEED": "feed",
        "HTTP_REQUEST_METHOD": "http.request.method",
        "HTTP_ROUTE": "http.route",
        "MESSAGING_BATCH_MESSAGE_COUNT": "messaging.batch.message_count",
        "MESSAGING_CONSUMER_GROUP_NAME": "messaging.consumer.group.name",
        "MESSAGING_DESTINATION_NAME": "messaging.destination.name",
        "MESSAGING_DESTINATION_PARTITION_ID": "messaging.destination.partition.id",
        "MESSAGING_KAFKA_MESSAGE_KEY": "messaging.kafka.message.key",
        "MESSAGING_KAFKA_OFFSET": "messaging.kafka.offset",
        "MESSAGING_MESSAGE_ID": "messaging.message.id",
        "MESSAGING_OPERATION_NAME": "messaging.operation.name",
        "MESSAGING_OPERATION_TYPE": "messaging.operation.type",
        "MESSAGING_SYSTEM": "messaging.system",
        "OUTCOME": "outcome",
        "PARTITION": "partition",
        "PROCESS": "process",
        "PROJECTION": "projection",
        "SHARD": "shard",
        "ACTION": "action",
        "STREAM": "stream",
        "URL_PATH": "url.path",
    }
    assert n.KEEL_AGGREGATE_ID == "keel.aggregate.id"
    assert n.KEEL_AGGREGATE_VERSION == "keel.aggregate.version"
    assert n.KEEL_PROJECTION == "keel.projection"
    assert all(v.startswith("keel.") for k, v in observability.ATTRIBUTES.items() if "KEEL" in k)
    assert observability.SPAN_NAMES == {
        "command": "command {command}",
        "send": "send {topic}",
        "process": "process {topic}",
        "rebuild": "rebuild {projection}",
        "deadline": "deadline {name}",
        "cdc": "process {source}",
    }
    assert set(observability.METRICS) == {
        "keel.command.duration",
        "keel.command.conflicts",
        "keel.command.rejected",
        "keel.store.append.events",
        "keel.store.txn.duration",
        "keel.writer.transactions",
        "keel.writer.fenced",
        "keel.writer.retries",
        "keel.writer.shards",
        "keel.projection.lag",
        "keel.projection.lag.seconds",
        "keel.projection.events",
        "keel.projection.batch.size",
        "messaging.process.duration",
        "keel.projection.dead_letters",
        "keel.window.late_events",
        "keel.window.open",
        "keel.watermark.lag.seconds",
        "keel.process.active",
        "keel.process.deadlines.overdue",
        "keel.process.dead_letters",
        "keel.process.outcomes",
        "keel.cdc.source_lag",
        "keel.cdc.source_lag.seconds",
        "keel.cdc.commands",
        "keel.cdc.dead_letters",
    }


def _total(name: str, **labels: str) -> float:
    return sum(v for _, v in telemetry.scrape(name, **labels))


def test_a_command_is_a_span_with_its_append_and_its_events_carry_it(tmp_path: Path) -> None:
    app = build(f"sqlite:///{tmp_path}/bank.db")
    account = uuid.uuid4()
    telemetry.install()
    before = _total("keel_command_duration_seconds_count", command="OpenAccount", outcome="ok")
    appended = _total("keel_store_append_events_total")
    with telemetry.recording() as exporter:
        app.execute(OpenAccount(account_id=account, owner=OWNER))
        spans = {s.name: s for s in exporter.get_finished_spans()}
    command, send = spans["command OpenAccount"], spans["send bank.events"]
    assert send.parent is not None and send.parent.span_id == command.context.span_id
    assert send.kind == SpanKind.PRODUCER
    assert send.attributes[n.MESSAGING_SYSTEM] == "keel"  # the embedded store is not Kafka
    assert send.attributes[n.MESSAGING_BATCH_MESSAGE_COUNT] == 2  # the event and the record
    assert command.attributes[n.KEEL_AGGREGATE_VERSION] == 1
    (opened,) = app.store.read(account)
    (carried,) = traceparents_of([opened])
    assert carried.split("-")[:3] == [
        "00",
        f"{command.context.trace_id:032x}",
        f"{command.context.span_id:016x}",
    ]
    after = _total("keel_command_duration_seconds_count", command="OpenAccount", outcome="ok")
    assert after == before + 1
    # Untraced (not sampled), the events carry no trace context at all.
    app.execute(Deposit(account_id=account, amount=Decimal(1)))
    assert app.history(account)[1].metadata.traceparent is None
    # Two events (the command records are not counted), observed from keel's own total.
    assert _total("keel_store_append_events_total") == appended + 2
    app.close()


def test_a_refusal_is_an_error_span_and_counts_as_rejected(tmp_path: Path) -> None:
    app = build(f"sqlite:///{tmp_path}/bank.db")
    account = uuid.uuid4()
    app.execute(OpenAccount(account_id=account, owner=OWNER))
    telemetry.install()
    labels = {"command": "Withdraw", "outcome": "rejected", "error_type": "InsufficientFunds"}
    before = _total("keel_command_rejected_total", **labels)
    with telemetry.recording() as exporter, pytest.raises(InsufficientFunds):
        app.execute(Withdraw(account_id=account, amount=Decimal(5)))
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes[n.ERROR_TYPE] == "InsufficientFunds"
    assert span.attributes[n.KEEL_OUTCOME] == "rejected"
    assert _total("keel_command_rejected_total", **labels) == before + 1
    app.close()


def test_a_lost_race_counts_as_a_conflict(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/bank.db"
    app, rival = build(url), build(url)  # two applications: two processes, one store
    account = uuid.uuid4()
    app.execute(OpenAccount(account_id=account, owner=OWNER))
    deposit = app._handlers[Deposit]
    raced: list[bool] = []

    def racing_deposit(command: Any, uow: Any) -> None:
        deposit(command, uow)
        if not raced:  # the rival appends version 2 while this attempt still decides
            raced.append(True)
            rival.execute(Deposit(account_id=account, amount=Decimal(1)))

    app._handlers[Deposit] = racing_deposit
    telemetry.install()
    before = _total("keel_command_conflicts_total", command="Deposit")
    app.execute(Deposit(account_id=account, amount=Decimal(2)))
    assert app.load(_account(), account).balance == 3
    assert _total("keel_command_conflicts_total", command="Deposit") == before + 1
    app.close()
    rival.close()


def _account() -> Any:
    from tests.support.bank import Account

    return Account


def test_gauges_report_their_observers_and_skip_broken_ones() -> None:
    telemetry.install()

    def good() -> list[observability.Reading]:
        return [(3, {"process": "checkout"})]

    def broken() -> list[observability.Reading]:
        raise RuntimeError("source away")

    observability.observe(n.PROCESS_ACTIVE, broken)
    observability.observe(n.PROCESS_ACTIVE, good)
    try:
        assert telemetry.scrape("keel_process_active", process="checkout")[0][1] == 3
    finally:
        observability.unobserve(n.PROCESS_ACTIVE, good)
        observability.unobserve(n.PROCESS_ACTIVE, broken)
    assert telemetry.scrape("keel_process_active", process="checkout") == []
    with pytest.raises(ValueError, match="not an observed instrument"):
        observability.observe("keel.command.duration", good)


def test_a_store_that_hangs_fails_the_health_check_in_time() -> None:
    release = threading.Event()

    class Hanging:
        def head(self) -> dict[int, int]:
            release.wait(10)
            return {}

    started = time.monotonic()
    check = observability.store_check(Hanging(), timeout=0.2)
    release.set()
    assert not check.ok and "TimeoutError" in check.detail
    assert time.monotonic() - started < 5
    health = observability.Health([check, observability.Check("db", True, "answers")])
    assert not health.ok and health.as_json()["status"] == "unavailable"
    assert health.describe().splitlines()[0] == "NOT READY"
    ok = observability.store_check(Application("h", "memory://").store)
    assert ok.ok and ok.detail == "1 partition(s)"


def test_process_manager_and_cdc_spans_are_available() -> None:
    with telemetry.recording() as exporter:
        with observability.command_span("Ship") as parent:
            traceparent = observability.current_traceparent()
        with observability.deadline_span("checkout", "payment-due", traceparent=traceparent):
            pass
        with observability.cdc_span("pg.public.orders", count=3, traceparents=[traceparent]):
            pass
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert (
        spans["deadline payment-due"].links[0].context.span_id == parent.get_span_context().span_id
    )
    assert spans["process pg.public.orders"].kind == SpanKind.CONSUMER
    assert observability.context_of("garbage") is None


@pytest.mark.parametrize(
    "traceparent",
    [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",  # not sampled
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # invalid trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # invalid span id
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later",  # a later version
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # the forbidden one
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "garbage",
    ],
)
def test_a_traceparent_is_read_as_the_w3c_propagator_reads_it(traceparent: str) -> None:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from framework.observability._tracing import span_context_of

    extracted = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    expected = trace.get_current_span(extracted).get_span_context()
    found = span_context_of(traceparent)
    if not expected.is_valid:
        assert found is None
        assert observability.context_of(traceparent) is None
        return
    assert found is not None
    assert (found.trace_id, found.span_id, found.trace_flags, found.is_remote) == (
        expected.trace_id,
        expected.span_id,
        expected.trace_flags,
        True,
    )
    (link,) = observability.link_to([traceparent, traceparent])
    assert link.context == found


def test_a_command_record_carries_the_senders_sampling_decision_in_a_header() -> None:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from framework.backends.kafka_commands import trace_headers, traceparent_of

    assert trace_headers() == [] and observability.current_traceparent() is None
    for flags in (TraceFlags(0), TraceFlags(TraceFlags.SAMPLED)):
        span = NonRecordingSpan(SpanContext(0xA1, 0xB2, is_remote=False, trace_flags=flags))
        with trace.use_span(span):
            headers = trace_headers()
            in_metadata = observability.current_traceparent()
        expected = f"00-{0xA1:032x}-{0xB2:016x}-{flags:02x}"
        assert headers == [("traceparent", expected.encode("ascii"))]
        assert traceparent_of([("keel.caller", b"x"), *headers]) == expected
        # Metadata (kept with the events forever) names sampled spans only.
        assert in_metadata == (expected if flags.sampled else None)
    assert traceparent_of([("traceparent", b"\xff")]) is None
    assert traceparent_of(None) is None


def test_a_worker_process_can_serve_metrics_on_its_own_port() -> None:
    import urllib.request

    from framework.observability import prometheus

    telemetry.install()
    observability.instruments.projection_events.add(
        2, {"projection": "served", "outcome": "applied"}
    )
    server = prometheus.serve(20216)
    try:
        with urllib.request.urlopen("http://127.0.0.1:20216/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
    assert telemetry.parse_metrics(
        text, "keel_projection_events_total", projection="served", outcome="applied"
    ) == [2.0]
