"""Observability overhead: commands/s and projection events/s with tracing and metrics on (the
OpenTelemetry SDK installed, every span sampled and exported; metrics to an in-memory reader)
against off (the API alone, a no-op), side by side, per CPU-second of the process (what the SDK
costs) and per wall-clock second.

A third mode, ``sampled``, is the SDK as production runs it: the same providers with
``ParentBased(TraceIdRatioBased(0.1))``, one command in ten traced (and its events carrying
its trace context), metrics on every command; a figure for the operator, beside the goal's.

The global providers can be set only once per process, so each mode is its own process
(``python -m bench.observability serve MODE ...``). All are alive at once and take turns, a
chunk of commands (or a projection run) each, the order swapped every turn: the CPU time of the
same work on this machine swings by up to two times from one second to the next (a fixed pure
Python loop: 35 to 74 ms), so processes run one after the other, tens of seconds apart,
compared the machine's moods more than the modes. The medians of the turns are compared, and
the median ratio of turns run side by side is given too.

The projection runs read the deposits the commands wrote and, before them, ``more`` events
appended directly (deposits on fresh accounts, each with its own command metadata and, with the
SDK on, its own sampled ``traceparent``, as a traced command leaves it): a run over the
commands' events alone lasts a tenth of a second, and its consumer's start-up, not the batches'
spans, decided the figure. The commands run as in a caller's process, the projection runs as
in a worker process, with the garbage collector tuned (``framework.runtime``): untuned, the
collector's full collections walk the SDK's modules and its queued spans too (measured on
runs over 20,000 events: the on process 11% slower than the off one at Python's defaults, 2%
with the collector switched off).

Spans go through the SDK's ``BatchSpanProcessor`` to an exporter that counts and drops them, as
a network exporter does once it has sent them. The SDK's ``InMemorySpanExporter`` keeps every
span for the life of the process: with thousands of them alive, each full garbage collection of
the projection phase walks them all, and a 0.2 s projection run spent 0.16 s of CPU in one
(0.06 s with tracing off), which measured the exporter's memory rather than keel's tracing.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from typing import Any

from bench.harness import REPO, Context, Row, Section, ServiceMissing, median

__all__ = ["run"]

TITLE = "Observability: tracing + metrics on (SDK, every span exported) vs off"
MODES = ("off", "on", "sampled")
SAMPLED = 0.1
"""The share of commands the ``sampled`` mode traces."""
TRACED = {"off": 0.0, "on": 1.0, "sampled": SAMPLED}
"""The share of a mode's commands whose events carry a sampled trace context."""
PROJECTION_RUNS = 11


def _install_sdk(ratio: float) -> Any:
    """The SDK's providers, tracing the share ``ratio`` of the traces that start here."""
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    class CountingExporter(SpanExporter):
        """Counts the spans it is given and lets them go (see the module's docstring)."""

        def __init__(self) -> None:
            self.exported = 0

        def export(self, spans: Any) -> SpanExportResult:
            self.exported += len(spans)
            return SpanExportResult.SUCCESS

    exporter = CountingExporter()
    # ``on`` keeps the SDK's default sampler (every trace); ``sampled`` one in ``1 / ratio``.
    sampler = None if ratio >= 1 else ParentBased(TraceIdRatioBased(ratio))
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=65536))
    trace.set_tracer_provider(provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return provider, exporter, reader


def _traced_deposits(count: int, traced: float) -> list[Any]:
    """``count`` encoded events of fresh accounts (opened, then deposits), each with the
    metadata of its own command; the share ``traced`` of them carrying a sampled trace
    context, as events of commands traced by the SDK do (an unsampled command's carry none)."""
    from bench.domain import Account
    from framework.codec import codec
    from framework.commands import Metadata

    out: list[Any] = []
    while len(out) < count:
        account = Account(id=uuid.uuid4(), owner="bench", email="b@example.com")
        for _ in range(19):
            account.deposit(Decimal("1.00"))
        for event in account.collect_events():
            parent = f"00-{random.getrandbits(128):032x}-{random.getrandbits(64):016x}-01"
            metadata = Metadata(
                command_id=uuid.uuid4(),
                command_type="BenchDeposit",
                traceparent=parent if random.random() < traced else None,
            )
            out.append(codec.encode(event, metadata))
    return out[:count]


class Subject:
    """One mode's process: an application on its own store (the SDK installed when ``on``),
    doing one chunk of work at a time when the parent asks (see :func:`serve`)."""

    def __init__(self, mode: str, store_url: str, db_url: str, name: str, more: int) -> None:
        from bench.domain import OpenAccount, build_app
        from bench.readmodel import open_engine

        self.mode, self.name = mode, name
        self.sdk = _install_sdk(TRACED[mode]) if mode != "off" else None
        self.app = build_app(store_url, name, snapshot_every=None)
        self.writer = None
        if store_url.startswith("kafka"):
            from framework.writer import writer as writer_context

            self.writer = writer_context(self.app)
            self.writer.__enter__()
        prefill = _traced_deposits(more, traced=TRACED[mode])
        for start in range(0, len(prefill), 1000):
            self.app.store.append(prefill[start : start + 1000])
        self.accounts = [uuid.uuid4() for _ in range(20)]
        for account in self.accounts:
            self.app.execute(OpenAccount(account_id=account, owner="bench", email="b@example.com"))
        self.engine = open_engine(db_url)
        self.done = 0
        self.worker_process = False

    def commands(self, count: int) -> dict[str, float]:
        """``count`` deposits; their wall and CPU seconds (all threads of this process: the
        span exporter's too)."""
        from bench.domain import Deposit

        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            account = self.accounts[self.done % len(self.accounts)]
            self.app.execute(Deposit(account_id=account, amount=Decimal("1.00")))
            self.done += 1
        return {"count": count, "wall": time.perf_counter() - started, "cpu": _cpu_since(cpu)}

    def project(self, run: int) -> dict[str, float]:
        """A new projection caught up from the start of the log, with the garbage collector
        tuned from the first run on, as a worker process tunes it once started (the commands
        before ran as in a caller's process, untuned)."""
        from bench.readmodel import balances_projection
        from framework.runtime import tune_garbage_collector
        from framework.worker import ProjectionWorker, setup_tables

        if not self.worker_process:
            tune_garbage_collector()
            self.worker_process = True

        projection = balances_projection(f"{self.name}_balances_{run}")
        setup_tables(self.engine, projection)
        worker = ProjectionWorker(
            projection, self.app.store, self.engine, group=f"{self.name}-obs-{run}"
        )
        started, cpu = time.perf_counter(), time.process_time()
        stats = worker.run(until_caught_up=True)
        events = stats.events_applied + stats.events_skipped
        return {"count": events, "wall": time.perf_counter() - started, "cpu": _cpu_since(cpu)}

    def finish(self) -> dict[str, Any]:
        figures: dict[str, Any] = {"mode": self.mode}
        if self.sdk is not None:
            provider, exporter, reader = self.sdk
            provider.force_flush()
            figures["spans"] = exporter.exported
            data = reader.get_metrics_data()
            figures["metrics"] = sum(
                len(scope.metrics) for rm in data.resource_metrics for scope in rm.scope_metrics
            )
        if self.writer is not None:
            self.writer.__exit__(None, None, None)
        self.app.close()
        self.engine.dispose()
        return figures


def _cpu_since(started: float) -> float:
    return max(time.process_time() - started, 1e-9)


def serve(argv: list[str]) -> None:
    """The child's loop: a line ``commands N``, ``project K`` or ``finish`` on stdin, a JSON
    line with the figures on stdout."""
    subject = Subject(argv[0], argv[1], argv[2], argv[3], int(argv[4]))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        verb, _, arg = line.strip().partition(" ")
        if verb == "commands":
            print(json.dumps(subject.commands(int(arg))), flush=True)
        elif verb == "project":
            print(json.dumps(subject.project(int(arg))), flush=True)
        else:
            print(json.dumps(subject.finish()), flush=True)
            return


class _Child:
    """The parent's handle on one mode's process."""

    def __init__(self, mode: str, argv: list[str]) -> None:
        self.mode = mode
        # A file, not a pipe: nobody reads the child's log while it runs, and a full pipe
        # would stop it mid-run.
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - held for the child's life
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.observability", "serve", mode, *argv],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.ask(None)

    def ask(self, request: str | None) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        if request is not None:
            self.process.stdin.write(request + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            self.process.kill()
            self.process.communicate(timeout=30)
            self.log.seek(0)
            stderr = self.log.read()
            raise RuntimeError(f"bench.observability {self.mode} failed:\n{stderr[-2000:]}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> dict[str, Any]:
        figures = self.ask("finish")
        self.process.communicate(timeout=60)
        self.log.close()
        return figures


def _interleaved(
    store_url: dict[str, str],
    db_url: dict[str, str],
    name: str,
    commands: int,
    more: int,
    chunks: int,
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, Any]]]:
    """Every mode's process alive at once, taking turns chunk by chunk (off, on, sampled;
    then the other way round: a drift of the machine within a turn cancels), so that the
    modes' chunks run within a second of each other on a machine whose speed changes from
    one second to the next. Returns the samples and each SDK mode's closing figures."""
    children = {
        mode: _Child(mode, [store_url[mode], db_url[mode], f"{name}_{mode}", str(more)])
        for mode in MODES
    }
    samples: dict[str, dict[str, list[float]]] = {mode: {} for mode in MODES}
    try:
        chunk = max(1, commands // chunks)

        def turn(i: int, request: str, kind: str) -> None:
            for mode in MODES if i % 2 == 0 else MODES[::-1]:
                got = children[mode].ask(request)
                samples[mode].setdefault(f"{kind}_wall", []).append(got["count"] / got["wall"])
                samples[mode].setdefault(f"{kind}_cpu", []).append(got["count"] / got["cpu"])
                samples[mode].setdefault(f"{kind}_count", []).append(got["count"])

        for i in range(chunks):
            turn(i, f"commands {chunk}", "commands")
        for run in range(PROJECTION_RUNS):
            turn(run, f"project {run}", "events")
        finished = {mode: child.close() for mode, child in children.items()}
    finally:
        for child in children.values():
            if child.process.poll() is None:
                child.process.kill()
    return samples, finished


def _paired(off: list[float], on: list[float]) -> float:
    """The median of the on/off ratios of chunks run side by side."""
    return median([b / a for a, b in zip(off, on, strict=True)])


def run(ctx: Context) -> Section:
    section = Section("observability", TITLE)
    commands = ctx.pick(60, 1500, 4500)
    chunks = ctx.pick(2, 10, 30)
    more = ctx.pick(0, 5000, 20000)
    stores = ["sqlite"] if ctx.smoke or ctx.quick else ["sqlite", "kafka"]
    for store in stores:
        # A Kafka command costs a transaction (~10-30 ms here): fewer, or the run takes long.
        n = commands // 3 if store == "kafka" else commands
        if store == "kafka":
            try:
                ctx.services.need_kafka()
            except ServiceMissing as missing:
                section.skipped.append(f"Kafka: {missing}")
                continue
        name = ctx.name(f"obs_{store}")
        stores_of, reads_of = {}, {}
        for mode in MODES:
            if store == "kafka":
                stores_of[mode] = ctx.kafka_url(f"{name}_{mode}", partitions=1)
            else:
                stores_of[mode] = f"sqlite:///{ctx.path(f'{name}_{mode}-events.db')}"
            reads_of[mode] = f"sqlite:///{ctx.path(f'{name}_{mode}-read.db')}"
        ctx.log(f"  {store}: {', '.join(MODES)} side by side, {n:,} commands each, {chunks} turns")
        samples, finished = _interleaved(stores_of, reads_of, name, n, more, chunks)
        for key, unit, what in (
            ("commands_cpu", "commands/CPU-s", "Application.execute (deposits, 1 caller)"),
            ("events_cpu", "events/CPU-s", "ProjectionWorker into SQLite"),
            ("commands_wall", "commands/s", "Application.execute, wall clock"),
            ("events_wall", "events/s", "ProjectionWorker, wall clock"),
        ):
            off = samples["off"][key]
            section.add(
                Row(f"{store}_{key}_off", f"{what}, {store}: off (peer)", median(off), unit)
            )
            for mode, how in (
                ("on", "tracing + metrics on"),
                ("sampled", f"metrics on, {SAMPLED:.0%} of commands traced"),
            ):
                on = samples[mode][key]
                section.add(
                    Row(
                        f"{store}_{key}_{mode}",
                        f"{what}, {store}: {how}",
                        median(on),
                        unit,
                        peer=f"{store}_{key}_off",
                        raw={mode: on, "off": off, "paired_ratio": _paired(off, on)},
                    )
                )
        paired = {
            (mode, key): _paired(samples["off"][key], samples[mode][key])
            for mode in MODES[1:]
            for key in ("commands_cpu", "events_cpu")
        }
        section.notes.append(
            f"{store}: an off, an on and a sampled process side by side, taking turns: "
            f"{n:,} commands each in {chunks} turns, then {PROJECTION_RUNS} projection runs "
            f"each over the commands' events and {more:,} events appended directly (carrying "
            f"a trace context as the mode's commands' do, "
            f"{samples['on']['events_count'][-1]:,.0f} events a run); medians of the turns, "
            f"per CPU-second of the process (all its threads) and per wall-clock second; the "
            f"median ratio to off of turns side by side, per CPU-s: on, commands "
            f"{paired['on', 'commands_cpu']:.2f}, events {paired['on', 'events_cpu']:.2f}; "
            f"sampled, commands {paired['sampled', 'commands_cpu']:.2f}, events "
            f"{paired['sampled', 'events_cpu']:.2f}; spans recorded: on "
            f"{finished['on'].get('spans', 0):,}, sampled {finished['sampled'].get('spans', 0):,}"
        )
    return section


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        raise SystemExit(
            "usage: python -m bench --only observability (this module's own "
            "entry point is the child: serve MODE STORE DB NAME MORE)"
        )
    serve(sys.argv[2:])
