"""T3 on Kafka (reliability.md): a projection worker process SIGKILLed at 20 random points while
commands keep arriving, restarted each time with the same static identity; the read model must
equal a clean rebuild, and the restart must make progress within seconds (kafka-python's 45 s
session timeout used to hold the partitions of the killed member for 36-43 s)."""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from framework.persistence import open_store
from framework.positions import read_positions
from framework.projection_testing import digest
from framework.worker import ProjectionWorker
from framework.writer import writer as serve_commands
from tests.projection_domain import CartSummary, cart_app
from tests.support.projection_support import (
    PYTHON,
    REPO,
    Traffic,
    check_counts,
    clean_digest,
    ready_engine,
)


def stored(engine: sa.Engine) -> dict[int, int]:
    with engine.connect() as conn:
        return read_positions(conn, "cart_summary")


@pytest.mark.timeout(420)
def test_t3_kafka_worker_sigkilled_and_restarted(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    name = unique_name("carts").replace("-", "_")
    url = f"kafka://{kafka_bootstrap}?partitions=3"
    writer_store = open_store(url, name=name)
    traffic = Traffic(cart_app(writer_store, name=name), seed=33)
    serving = serve_commands(traffic.app)  # this process decides the commands
    serving.__enter__()
    traffic.run(60)
    db_url = f"sqlite:///{tmp_path}/read.db"
    engine = ready_engine(db_url)
    rng = random.Random(33)
    env = {**os.environ, "KEEL_TEST_HANDLER_DELAY": "0.002", "PYTHONPATH": str(REPO)}
    command = [
        PYTHON, "-m", "framework.worker", "run", "tests.projection_domain:CartSummary",
        "--app", name, "--store", url, "--database", db_url, "--batch-size", "4",
        "--instance-id", "t3-worker-1",
    ]  # fmt: skip
    stop_writer = threading.Event()
    writer = traffic.in_thread(stop_writer, pause=0.03)
    kills = starts = stalls = 0
    restart_to_progress: list[float] = []
    deadline = time.monotonic() + 300
    try:
        with open(tmp_path / "worker.log", "ab") as log:
            while kills < 20 and time.monotonic() < deadline:
                before = stored(engine)
                proc = subprocess.Popen(command, env=env, stdout=log, stderr=log)
                starts += 1
                started = time.monotonic()
                while stored(engine) == before and time.monotonic() - started < 60:
                    time.sleep(0.01)
                if stored(engine) == before:
                    stalls += 1
                restart_to_progress.append(time.monotonic() - started)
                time.sleep(rng.uniform(0, 0.3))  # mid-batch, between batches, mid-commit...
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                kills += 1
            stop_writer.set()
            writer.join(30)
            started = time.monotonic()
            subprocess.run([*command, "--until-caught-up"], env=env, stdout=log, stderr=log,
                           timeout=180, check=True)  # fmt: skip
            final = time.monotonic() - started
    finally:
        stop_writer.set()
        serving.__exit__(None, None, None)
    events, dup, missing = check_counts(engine, writer_store)
    equal = digest(engine, CartSummary().tables) == clean_digest(
        writer_store, f"sqlite:///{tmp_path}/clean.db"
    )
    ordered = sorted(restart_to_progress)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(
        f"\nT3[kafka]: kills={kills} restarts={starts + 1} events={events} "
        f"commands={traffic.commands} dup_applied={dup} missing={missing} digest_equal={equal} "
        f"stalls={stalls} restart_to_progress_p50={p50:.2f}s p99={p99:.2f}s "
        f"final_catchup={final:.1f}s static_membership=True session_timeout=10s"
    )
    assert (kills, stalls, dup, missing, equal) == (20, 0, 0, 0, True)
    writer_store.close()
    engine.dispose()


@pytest.mark.timeout(60)
def test_the_worker_s_consumer_settings_reach_kafka(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    name = unique_name("carts").replace("-", "_")
    store = open_store(f"kafka://{kafka_bootstrap}?partitions=1", name=name)
    engine = ready_engine(f"sqlite:///{tmp_path}/read.db")
    worker = ProjectionWorker(
        CartSummary(), store, engine, session_timeout=7, heartbeat_interval=1, instance_id="w-7"
    )
    reader = worker.open_feed()
    try:
        config = reader.consumer.config  # type: ignore[attr-defined]
        seen = {k: config[k] for k in ("group_id", "session_timeout_ms",
                                       "heartbeat_interval_ms", "group_instance_id")}  # fmt: skip
    finally:
        reader.close()
        store.close()
        engine.dispose()
    assert seen == {
        "group_id": f"{name}.cart_summary",
        "session_timeout_ms": 7000,
        "heartbeat_interval_ms": 1000,
        "group_instance_id": "w-7",
    }
