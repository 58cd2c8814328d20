"""Observability with the Django host: one admin command is one connected trace from the view
through the store to the projection batches; ``/metrics`` shows lag rising while the workers
are stopped and back at 0 after they restart; the health probes turn unready and ready again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from opentelemetry.trace import SpanKind

from framework.contrib.django import conf
from framework.contrib.django.operations import DjangoProjectionWorker
from framework.observability import _names as n
from tests.django.test_shop_admin import ADDRESS, register
from tests.support import telemetry

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "readmodels"])


@pytest.fixture
def metrics_on(shop: Any, settings: Any) -> Iterator[None]:
    telemetry.install()
    settings.KEEL = {**settings.KEEL, "METRICS_EXPORTER": "prometheus", "HEALTH_STALL_AFTER": 1}
    conf.reset()  # closes the shop's application: use the one built from these settings
    shop.app = conf.get_application()
    yield


def _wait_for(found: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout} s")


def test_an_admin_command_is_one_connected_trace(
    admin_client: Client, shop: Any, worker: Callable[[], None]
) -> None:
    with telemetry.recording() as exporter:
        customer_id = register(admin_client)
        worker()
        spans = _wait_for(
            lambda: [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER],
            "process span",
        )
        spans = list(exporter.get_finished_spans())
    children = telemetry.tree(spans)
    # The view's span is the root; the command, its append and the batches hang below it.
    (request,) = [s for s in children[None] if s.kind == SpanKind.SERVER]
    assert request.attributes[n.HTTP_REQUEST_METHOD] == "POST"
    assert request.attributes[n.ENDUSER_ID] == "root"
    (command,) = children[request.context.span_id]
    assert command.name == "command RegisterCustomer"
    assert command.attributes[n.KEEL_AGGREGATE_ID] == str(customer_id)
    below = children[command.context.span_id]
    (send,) = [s for s in below if s.kind == SpanKind.PRODUCER]
    assert send.name == "send shop.events"
    assert send.attributes[n.MESSAGING_OPERATION_TYPE] == "send"
    assert send.attributes[n.KEEL_AGGREGATE_ID] == str(customer_id)
    assert send.attributes[n.KEEL_AGGREGATE_VERSION] == 1
    batches = [s for s in below if s.kind == SpanKind.CONSUMER]
    projections = {s.attributes[n.KEEL_PROJECTION] for s in batches}
    assert "customers" in projections, projections
    for batch in batches:
        assert batch.name == "process shop.events"
        assert batch.attributes[n.MESSAGING_BATCH_MESSAGE_COUNT] >= 1
        assert [link.context.span_id for link in batch.links] == [command.context.span_id]
    # One trace: every span reached from the root shares its trace id.
    walked, stack = [], [request]
    while stack:
        span = stack.pop()
        walked.append(span)
        stack.extend(children.get(span.context.span_id, []))
    assert {s.context.trace_id for s in walked} == {request.context.trace_id}
    assert {s.name for s in walked} >= {
        request.name,
        "command RegisterCustomer",
        "send shop.events",
        "process shop.events",
    }
    print(f"TRACE: spans={len(walked)} batches={len(batches)} projections={sorted(projections)}")


class _Workers:
    """Every projection's worker in a thread, stoppable and restartable."""

    def __init__(self, shop: Any) -> None:
        self.shop = shop
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        self.stop_event = threading.Event()
        workers = [
            DjangoProjectionWorker(p, self.shop.app.store, self.shop.engine, poll_timeout=0.05)
            for p in conf.get_projections().values()
        ]
        for w in workers:
            w.pulse.interval = 0.2
        self.threads = [
            threading.Thread(target=w.run, args=(self.stop_event,), daemon=True) for w in workers
        ]
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=10)


def _lag(client: Client) -> float:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    return sum(telemetry.parse_metrics(text, "keel_projection_lag", projection="customers"))


def test_metrics_show_lag_while_workers_stop_and_health_follows(
    admin_client: Client, shop: Any, metrics_on: None
) -> None:
    workers = _Workers(shop)
    workers.start()
    try:
        register(admin_client, "First")
        _wait_for(lambda: _lag(admin_client) == 0 and _ready(admin_client), "caught up")
        workers.stop()
        lags = []
        for i in range(3):
            register(admin_client, f"Customer {i}")
            time.sleep(1.1)  # the lag sample is at most a second old
            lags.append(_lag(admin_client))
        assert lags == sorted(lags) and lags[-1] > lags[0] > 0, lags
        unready = admin_client.get("/health/workers")
        assert unready.status_code == 503, unready.content
        assert "stopped applying" in unready.content.decode()
        workers.start()
        _wait_for(lambda: _lag(admin_client) == 0, "lag back to 0", timeout=15)
        _wait_for(lambda: _ready(admin_client), "ready again", timeout=15)
        seconds = telemetry.parse_metrics(
            admin_client.get("/metrics").content.decode(),
            "keel_projection_lag_seconds",
            projection="customers",
        )
        assert seconds and max(seconds) == 0
        applied = telemetry.scrape(
            "keel_projection_events_total", projection="customers", outcome="applied"
        )
        assert sum(v for _, v in applied) >= 4
    finally:
        workers.stop()
    print(f"METRICS: lag_while_stopped={lags} lag_after_restart=0 health=503->200")


def _ready(client: Client) -> bool:
    return client.get("/health/workers").status_code == 200


def test_health_views_and_command(shop: Any, settings: Any, capsys: Any) -> None:
    client = Client()
    assert client.get("/health/live").json() == {"status": "ok", "checks": []}
    ready = client.get("/health/ready")
    assert ready.status_code == 200, ready.content
    assert {c["name"] for c in ready.json()["checks"]} == {"event store", "read-model database"}
    writers = client.get("/health/writers")
    assert writers.status_code == 200  # the embedded store decides commands itself
    # No worker ever ran: the workers probe says so, as a 503 and as exit code 1.
    workers = client.get("/health/workers")
    assert workers.status_code == 503
    assert "no worker ever ran" in workers.content.decode()
    with pytest.raises(SystemExit) as exit_:
        call_command("keel_health", "workers", "--projection", "customers")
    assert exit_.value.code == 1
    assert "FAIL customers: no worker ever ran" in capsys.readouterr().out
    call_command("keel_health", "web")  # ready: returns, exit code 0
    assert capsys.readouterr().out.startswith("ready")
    # A probe with a typo is misconfigured, not unready: 400, and the command's bad-argument code.
    typo = client.get("/health/workers", {"projection": ["customers", "nope"]})
    assert typo.status_code == 400
    assert "no projection is named 'nope'" in typo.json()["error"]
    assert "customers" in typo.json()["error"]  # among the known ones
    with pytest.raises(CommandError, match="no projection is named 'nope'") as refused:
        call_command("keel_health", "workers", "--projection", "nope")
    assert refused.value.returncode == 2
    with pytest.raises(CommandError, match="must be 0 seconds or more"):
        call_command("keel_health", "workers", "--stall-after", "-5")


def test_metrics_off_is_a_404_that_says_how(shop: Any, client: Client) -> None:
    response = client.get("/metrics")
    assert response.status_code == 404
    assert b"METRICS_EXPORTER" in response.content


def test_logs_carry_the_command_ids(
    admin_client: Client, shop: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from framework.observability import CorrelationFilter, command_ids, log_context

    seen: list[dict[str, str]] = []
    app = shop.app

    class Probe(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append({k: getattr(record, k) for k in ("command_id", "correlation_id")})

    probe = Probe()
    probe.addFilter(CorrelationFilter())
    logger = logging.getLogger("tests.probe")
    logger.addHandler(probe)
    from sample_app.shop.commands import RegisterCustomer

    original = app.handler_for

    def logging_handler(command: Any) -> Any:
        handler = original(command)

        def run(c: Any, uow: Any) -> None:
            logger.warning("deciding")
            handler(c, uow)

        return run

    app.handler_for = logging_handler  # type: ignore[method-assign]
    try:
        command = RegisterCustomer(
            name="Ada",
            email="ada@example.com",
            address=dict(
                street=ADDRESS["address__street"],
                city=ADDRESS["address__city"],
                postcode=ADDRESS["address__postcode"],
                country=ADDRESS["address__country"],
            ),
        )
        correlation = UUID(int=7)
        app.execute(command, correlation_id=correlation)
    finally:
        app.handler_for = original  # type: ignore[method-assign]
        logger.removeHandler(probe)
    assert seen == [{"command_id": str(command.command_id), "correlation_id": str(correlation)}]
    assert command_ids()["command_id"] == "-"  # outside the command again
    with log_context(command_id="x"):
        assert command_ids()["command_id"] == "x"


def test_writer_heartbeats_say_which_shards_are_owned(shop: Any) -> None:
    from framework.contrib.django.observability import WriterBeat, shards_check

    class Member:  # what a WriterMember tells its beat: the shards it decides now
        shards: list[int] = [0, 1]

        def owned(self) -> list[int]:
            return list(self.shards)

    member = Member()
    assert not shards_check(3).ok  # no writer ever beat
    beat = WriterBeat(member, "writer:test-1", interval=0.05).start()
    try:
        beat.beat()
        check = shards_check(3)
        assert not check.ok and check.detail == "no live writer owns shard(s) [2]"
        member.shards = [0, 1, 2]
        beat.beat()
        assert shards_check(3).ok
        member.shards = [0, 2]  # lost shard 1 in a rebalance
        beat.beat()
        assert shards_check(3).detail == "no live writer owns shard(s) [1]"
    finally:
        beat.stop()
    assert shards_check(1).detail == "no live writer owns shard(s) [0]"  # stopped: owns nothing
