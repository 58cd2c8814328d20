"""Traces and metrics on the Kafka command path: a command sent through ``<name>.commands``
to the shard's writer is one trace (the caller's span, the record's PRODUCER span, the
writer's command span and its ``send <events>`` span), and the events carry the writer's
trace context for the projection batches."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from decimal import Decimal

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind

from framework.observability import _names as n
from framework.writer import writer
from tests.support import telemetry
from tests.support.bank import Deposit, InsufficientFunds, OpenAccount, Owner, Withdraw, build

OWNER = Owner(name="Ann", email="ann@example.com")

pytestmark = pytest.mark.kafka


@pytest.mark.timeout(120)
def test_a_command_sent_to_the_writer_joins_the_callers_trace(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("obs").replace("-", "_")
    url = f"kafka://{kafka_bootstrap}?partitions=2"
    app, sender = build(url, name=name), build(url, name=name)
    telemetry.install()
    try:
        with writer(app):
            account = uuid.uuid4()
            app.execute(OpenAccount(account_id=account, owner=OWNER))
            with telemetry.recording() as exporter:
                result = sender.execute(Deposit(account_id=account, amount=Decimal("5.00")))
                with pytest.raises(InsufficientFunds):
                    sender.execute(Withdraw(account_id=account, amount=Decimal("9.00")))
                deadline = time.monotonic() + 10
                while len(exporter.get_finished_spans()) < 7 and time.monotonic() < deadline:
                    time.sleep(0.05)  # the writer ends its spans after answering
                spans = list(exporter.get_finished_spans())
            history = app.history(account)
            transactions = telemetry.scrape("keel_writer_transactions_total", app=name)
            shards = telemetry.scrape("keel_writer_shards", app=name)
    finally:
        sender.close()
        app.close()
    children = telemetry.tree(spans)
    roots = {s.name: s for s in children[None]}
    caller = roots["command Deposit"]
    (record,) = children[caller.context.span_id]
    assert record.kind == SpanKind.PRODUCER
    assert record.name == f"send {name}.commands"
    (decided,) = children[record.context.span_id]
    assert decided.name == "command Deposit"
    (send,) = children[decided.context.span_id]
    assert send.kind == SpanKind.PRODUCER and send.name == f"send {name}.events"
    assert send.attributes[n.MESSAGING_SYSTEM] == "kafka"
    assert send.attributes[n.KEEL_AGGREGATE_ID] == str(account)
    assert send.attributes[n.KEEL_AGGREGATE_VERSION] == result.versions[account] == 2
    assert len({caller.context.trace_id, decided.context.trace_id, send.context.trace_id}) == 1
    # The event carries the writer's command span: the projection batch links there.
    deposited = history[1].metadata.traceparent
    assert deposited is not None
    assert deposited.split("-")[2] == f"{decided.context.span_id:016x}"
    # The refused withdrawal: an error on both sides, with the domain error's type.
    refused = [s for s in spans if s.name == "command Withdraw"]
    assert {s.attributes[n.KEEL_OUTCOME] for s in refused} == {"rejected"}
    assert all(s.status.is_ok is False for s in refused)
    assert sum(v for _, v in transactions) >= 2 and sum(v for _, v in shards) == 1
    print(
        f"KAFKA TRACE: spans={len(spans)} trace_ids={len({s.context.trace_id for s in spans})} "
        f"writer_transactions={sum(v for _, v in transactions):g}"
    )


@pytest.mark.timeout(120)
def test_a_command_whose_caller_was_not_sampled_leaves_no_spans_in_the_writer(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    """The sampler's decision travels with the command record (its ``traceparent`` header,
    flags 00): the writer does not start a trace of its own for the command, and its events
    carry no trace context; the next, sampled, command is traced whole."""
    name = unique_name("obs").replace("-", "_")
    url = f"kafka://{kafka_bootstrap}?partitions=1"
    app, sender = build(url, name=name), build(url, name=name)
    telemetry.install()
    dropped = NonRecordingSpan(
        SpanContext(random.getrandbits(128), random.getrandbits(64), is_remote=False)
    )
    assert not dropped.get_span_context().trace_flags.sampled
    try:
        with writer(app):
            account = uuid.uuid4()
            app.execute(OpenAccount(account_id=account, owner=OWNER))
            with telemetry.recording() as exporter:
                unsampled = Deposit(account_id=account, amount=Decimal("5.00"))
                with trace.use_span(dropped):
                    sender.execute(unsampled)
                sampled = Deposit(account_id=account, amount=Decimal("7.00"))
                sender.execute(sampled)
                deadline = time.monotonic() + 10
                # The writer decides in order and ends a command's span after answering:
                # once the second command's span is in, the first one's would be too.
                while time.monotonic() < deadline and not any(
                    s.attributes.get(n.KEEL_COMMAND_ID) == str(sampled.command_id)
                    and s.parent is not None
                    and s.parent.is_remote
                    for s in exporter.get_finished_spans()
                ):
                    time.sleep(0.05)
                spans = list(exporter.get_finished_spans())
            history = app.history(account)
    finally:
        sender.close()
        app.close()
    by_command = {s.attributes.get(n.KEEL_COMMAND_ID) for s in spans if s.name == "command Deposit"}
    assert by_command == {str(sampled.command_id)}
    assert dropped.get_span_context().trace_id not in {s.context.trace_id for s in spans}
    assert len({s.context.trace_id for s in spans}) == 1  # the sampled command's, whole
    assert history[1].metadata.command_id == unsampled.command_id
    assert history[1].metadata.traceparent is None
    assert history[2].metadata.traceparent is not None


@pytest.mark.timeout(120)
def test_a_command_its_own_process_writes_is_one_command_span(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    """With the writer in the caller's process there is no second ``command`` span: the
    shard owner puts its ``send`` span under the caller's and leaves that span to the caller,
    and the events carry it."""
    name = unique_name("obs_local").replace("-", "_")
    app = build(f"kafka://{kafka_bootstrap}?partitions=2", name=name)
    telemetry.install()
    try:
        with writer(app):
            account = uuid.uuid4()
            with telemetry.recording() as exporter:
                app.execute(OpenAccount(account_id=account, owner=OWNER))
                result = app.execute(Deposit(account_id=account, amount=Decimal("5.00")))
                with pytest.raises(InsufficientFunds):
                    app.execute(Withdraw(account_id=account, amount=Decimal("9.00")))
                spans = list(exporter.get_finished_spans())
            history = app.history(account)
    finally:
        app.close()
    children = telemetry.tree(spans)
    roots = {s.name: s for s in children[None]}
    assert sorted(roots) == ["command Deposit", "command OpenAccount", "command Withdraw"]
    assert [s.name for s in spans].count("command Deposit") == 1
    deposit = roots["command Deposit"]
    (send,) = children[deposit.context.span_id]
    assert send.kind == SpanKind.PRODUCER and send.name == f"send {name}.events"
    assert send.attributes[n.KEEL_AGGREGATE_VERSION] == result.versions[account] == 2
    assert deposit.attributes[n.KEEL_AGGREGATE_ID] == str(account)
    assert deposit.end_time >= send.end_time  # the caller ended its own span, after the send
    deposited = history[1].metadata.traceparent
    assert deposited is not None
    assert deposited.split("-")[2] == f"{deposit.context.span_id:016x}"
    refused = roots["command Withdraw"]
    assert refused.attributes[n.KEEL_OUTCOME] == "rejected" and refused.status.is_ok is False
    assert refused.context.span_id not in children  # refused before any send
