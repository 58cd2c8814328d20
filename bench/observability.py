"""Observability overhead: commands/s and projection events/s with tracing and metrics on (the
OpenTelemetry SDK installed, every span sampled and exported; metrics to an in-memory reader)
against off (the API alone, a no-op), side by side, per CPU-second of the process (what the SDK
costs) and per wall-clock second.

The global providers can be set only once per process, so each measurement is its own
process (``python -m bench.observability MODE ...``), and the modes alternate (off, on, off,
on...) so that drift of the machine hits both; the medians of every chunk are compared.

Spans go through the SDK's ``BatchSpanProcessor`` to an exporter that counts and drops them, as
a network exporter does once it has sent them. The SDK's ``InMemorySpanExporter`` keeps every
span for the life of the process: with thousands of them alive, each full garbage collection of
the projection phase walks them all, and a 0.2 s projection run spent 0.16 s of CPU in one
(0.06 s with tracing off), which measured the exporter's memory rather than keel's tracing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from typing import Any

from bench.harness import REPO, Context, Row, Section, ServiceMissing, median

__all__ = ["run"]

TITLE = "Observability: tracing + metrics on (SDK, every span exported) vs off"
CHUNKS = 3
PROJECTION_RUNS = 5


def _install_sdk() -> Any:
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class CountingExporter(SpanExporter):
        """Counts the spans it is given and lets them go (see the module's docstring)."""

        def __init__(self) -> None:
            self.exported = 0

        def export(self, spans: Any) -> SpanExportResult:
            self.exported += len(spans)
            return SpanExportResult.SUCCESS

    exporter = CountingExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=65536))
    trace.set_tracer_provider(provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return provider, exporter, reader


def measure(mode: str, store_url: str, db_url: str, commands: int, name: str) -> dict[str, Any]:
    """One process's figures: ``commands`` deposits through ``Application.execute``, then one
    worker projecting them."""
    from bench.domain import Deposit, OpenAccount, build_app
    from bench.readmodel import balances_projection, open_engine
    from framework.worker import ProjectionWorker, setup_tables

    sdk = _install_sdk() if mode == "on" else None
    app = build_app(store_url, name, snapshot_every=None)
    writer = None
    if store_url.startswith("kafka"):
        from framework.writer import writer as writer_context

        writer = writer_context(app)
        writer.__enter__()
    accounts = [uuid.uuid4() for _ in range(20)]
    for account in accounts:
        app.execute(OpenAccount(account_id=account, owner="bench", email="b@example.com"))
    # Several chunks (and projection runs) per process; wall and CPU time of each. The CPU
    # time (all threads of this process: the span exporter's too) is what the SDK adds; wall
    # time on a shared machine also holds whatever else ran.
    command_rates, command_cpu = [], []
    for chunk in range(CHUNKS):
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(commands // CHUNKS):
            account = accounts[(i + chunk) % len(accounts)]
            app.execute(Deposit(account_id=account, amount=Decimal("1.00")))
        command_rates.append((commands // CHUNKS) / (time.perf_counter() - started))
        command_cpu.append((commands // CHUNKS) / max(time.process_time() - cpu, 1e-9))
    engine = open_engine(db_url)
    event_rates, event_cpu = [], []
    events = 0
    for run in range(PROJECTION_RUNS):
        projection = balances_projection(f"{name}_balances_{run}")
        setup_tables(engine, projection)
        worker = ProjectionWorker(projection, app.store, engine, group=f"{name}-obs-{run}")
        started, cpu = time.perf_counter(), time.process_time()
        stats = worker.run(until_caught_up=True)
        events = stats.events_applied + stats.events_skipped
        event_rates.append(events / (time.perf_counter() - started))
        event_cpu.append(events / max(time.process_time() - cpu, 1e-9))
    figures: dict[str, Any] = {
        "mode": mode,
        "commands": commands,
        "events": events,
        "commands_wall": command_rates,
        "commands_cpu": command_cpu,
        "events_wall": event_rates,
        "events_cpu": event_cpu,
    }
    if sdk is not None:
        provider, exporter, reader = sdk
        provider.force_flush()
        figures["spans"] = exporter.exported
        data = reader.get_metrics_data()
        figures["metrics"] = sum(
            len(scope.metrics) for rm in data.resource_metrics for scope in rm.scope_metrics
        )
    if writer is not None:
        writer.__exit__(None, None, None)
    app.close()
    engine.dispose()
    return figures


def _run_one(ctx: Context, mode: str, store: str, commands: int) -> dict[str, Any]:
    name = ctx.name(f"obs_{store}")
    if store == "kafka":
        store_url = ctx.kafka_url(name, partitions=1)
    else:
        store_url = f"sqlite:///{ctx.path(name + '-events.db')}"
    db_url = f"sqlite:///{ctx.path(name + '-read.db')}"
    argv = [mode, store_url, db_url, str(commands), name]
    done = subprocess.run(
        [sys.executable, "-m", "bench.observability", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.observability {mode} {store} failed:\n{done.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def run(ctx: Context) -> Section:
    section = Section("observability", TITLE)
    commands = ctx.pick(60, 1500, 4500)
    rounds = ctx.pick(1, 2, 3)
    stores = ["sqlite"] if ctx.smoke or ctx.quick else ["sqlite", "kafka"]
    for store in stores:
        # A Kafka command costs a transaction (~10-30 ms here): fewer, or the run takes long.
        n, r = (commands // 3, 2) if store == "kafka" else (commands, rounds)
        if store == "kafka":
            try:
                ctx.services.need_kafka()
            except ServiceMissing as missing:
                section.skipped.append(f"Kafka: {missing}")
                continue
        samples: dict[str, dict[str, list[float]]] = {"off": {}, "on": {}}
        runs: list[dict[str, Any]] = []
        for _ in range(r):
            for mode in ("off", "on"):
                ctx.log(f"  {store}, observability {mode}: {n:,} commands")
                figures = _run_one(ctx, mode, store, n)
                runs.append(figures)
                for key in ("commands_wall", "commands_cpu", "events_wall", "events_cpu"):
                    samples[mode].setdefault(key, []).extend(figures[key])
        spans = max(run.get("spans", 0) for run in runs)
        for key, unit, what in (
            ("commands_cpu", "commands/CPU-s", "Application.execute (deposits, 1 caller)"),
            ("events_cpu", "events/CPU-s", "ProjectionWorker into SQLite"),
            ("commands_wall", "commands/s", "Application.execute, wall clock"),
            ("events_wall", "events/s", "ProjectionWorker, wall clock"),
        ):
            off, on = samples["off"][key], samples["on"][key]
            section.add(
                Row(f"{store}_{key}_off", f"{what}, {store}: off (peer)", median(off), unit)
            )
            section.add(
                Row(
                    f"{store}_{key}_on",
                    f"{what}, {store}: tracing + metrics on",
                    median(on),
                    unit,
                    peer=f"{store}_{key}_off",
                    raw={"on": on, "off": off},
                )
            )
        section.notes.append(
            f"{store}: {n:,} commands per process in {CHUNKS} chunks, then "
            f"{PROJECTION_RUNS} projection runs over them, in {r} alternating processes per "
            f"mode; medians of every chunk and run; per CPU-second of the process (all its "
            f"threads) and per wall-clock second; with the SDK on, a process recorded "
            f"{spans:,} spans (all sampled)"
        )
    return section


if __name__ == "__main__":
    mode, store_url, db_url, count, name = sys.argv[1:6]
    print(json.dumps(measure(mode, store_url, db_url, int(count), name)))
