"""Section 6: read-your-writes latency, command issued -> row visible in the read model.

A projection worker runs in a thread of its own (its own feed: a Kafka consumer in a group, or
the embedded store's polling reader) with the default settings. The caller executes a deposit,
waits with ``framework.worker.wait_until(projection, engine, result.positions)`` (the function
the admin uses; it polls the stored positions every 20 ms) and reads the account's row, checking
it shows the deposit. One command at a time. The peer is the same command's ``execute`` alone:
the ratio says what waiting for the read model adds.
"""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal
from typing import Any

from bench.domain import Deposit, OpenAccount, build_app
from bench.harness import Context, Row, Section, ServiceMissing, Stopwatch, deciding, percentile

TITLE = "Read-your-writes latency (ms, command -> row visible in the read model)"


def measure(ctx: Context, backend: str, samples: int) -> dict[str, Any]:
    from bench.readmodel import balance_of, balances_projection, open_engine
    from framework.worker import ProjectionWorker, setup_tables, wait_until

    name = ctx.name(f"ryw{backend[:2]}")
    url = ctx.kafka_url(name) if backend == "kafka" else f"sqlite:///{ctx.path(name + '.db')}"
    app = build_app(url, name)
    projection = balances_projection(name)
    engine = open_engine(f"sqlite:///{ctx.path(name + '.read.db')}")
    setup_tables(engine, projection)
    worker = ProjectionWorker(projection, app.store, engine)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True, name="bench-worker")
    thread.start()
    execute_ms: list[float] = []
    visible_ms: list[float] = []
    serving = deciding(app)  # on Kafka: this process owns the shard (in-place decisions)
    serving.__enter__()
    try:
        account = uuid.uuid4()
        opened = app.execute(OpenAccount(account_id=account, owner="Ada", email="a@example.org"))
        # The first wait includes the worker joining its group.
        wait_until(projection, engine, opened.positions, timeout=60)
        expected = 0
        for _ in range(samples):
            with Stopwatch() as total:
                with Stopwatch() as sw:
                    result = app.execute(Deposit(account_id=account, amount=Decimal("1.00")))
                wait_until(projection, engine, result.positions, timeout=30)
                seen = balance_of(engine, projection, account)
            expected += 100
            if seen != expected:
                raise AssertionError(f"the read model shows {seen} cents, expected {expected}")
            execute_ms.append(sw.seconds * 1000)
            visible_ms.append(total.seconds * 1000)
    finally:
        serving.__exit__(None, None, None)
        stop.set()
        thread.join(30)
        app.close()
        engine.dispose()
    return {"execute_ms": execute_ms, "visible_ms": visible_ms}


def run(ctx: Context) -> Section:
    section = Section("latency", TITLE)
    samples = ctx.pick(10, 60, 400)
    backends = ["sqlite"] if ctx.smoke else ["sqlite", "kafka"]
    for backend in backends:
        try:
            if backend == "kafka":
                ctx.services.need_kafka()
            ctx.log(f"  {samples} commands on {backend}")
            data = measure(ctx, backend, samples)
        except ServiceMissing as missing:
            section.skipped.append(f"{backend}: {missing}")
            continue
        for q in (50, 99):
            exec_q = percentile(data["execute_ms"], q)
            seen_q = percentile(data["visible_ms"], q)
            raw = {"samples": samples, "percentile": q}
            section.add(
                Row(
                    f"{backend}_execute_p{q}",
                    f"{backend}: execute() alone, p{q} (peer)",
                    exec_q,
                    "ms",
                    higher_is_better=False,
                    raw=raw,
                )
            )
            section.add(
                Row(
                    f"{backend}_visible_p{q}",
                    f"{backend}: command -> row visible, p{q}",
                    seen_q,
                    "ms",
                    peer=f"{backend}_execute_p{q}",
                    higher_is_better=False,
                    raw=raw,
                )
            )
    section.notes.append(
        f"{samples} commands per store, one at a time; the worker polls the feed with the "
        "default poll_timeout (0.5 s); wait_until polls the positions every 20 ms"
    )
    return section
