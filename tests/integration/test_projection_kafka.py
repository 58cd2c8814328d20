"""Projection workers on the real Kafka feed: a consumer group of two workers with a rebalance
mid-stream (B joins while A runs, then A leaves), and one worker end to end."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from framework.persistence import open_store
from framework.projection_testing import digest, table_rows
from framework.worker import ProjectionWorker, status, wait_until
from framework.writer import writer as serve_commands
from tests.projection_domain import CartSummary, OpenCart, cart_app
from tests.support.projection_support import Traffic, check_counts, clean_digest, ready_engine


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.timeout(240)
def test_two_workers_in_one_group_survive_a_rebalance(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    name = unique_name("carts").replace("-", "_")
    url = f"kafka://{kafka_bootstrap}?partitions=3"
    writer_store = open_store(url, name=name)
    traffic_app = cart_app(writer_store, name=name)
    serving = serve_commands(traffic_app)
    serving.__enter__()
    traffic = Traffic(traffic_app, seed=12)
    traffic.run(150)
    engine = ready_engine(f"sqlite:///{tmp_path}/read.db")
    group = unique_name("cart-summary")
    stores = [open_store(url, name=name) for _ in range(2)]
    a, b = (
        ProjectionWorker(CartSummary(), s, engine, group=group, batch_size=10, poll_timeout=0.2)
        for s in stores
    )
    stop_a, stop_b, stop_writer = threading.Event(), threading.Event(), threading.Event()
    thread_a = threading.Thread(target=a.run, args=(stop_a,), daemon=True)
    thread_a.start()
    writer = traffic.in_thread(stop_writer, pause=0.02)
    try:
        assert wait_for(lambda: a.stats.events_applied > 60, 90), "A never started applying"
        a_before = set(a.applier.positions)
        thread_b = threading.Thread(target=b.run, args=(stop_b,), daemon=True)
        thread_b.start()
        assert wait_for(lambda: b.stats.transactions > 0, 90), "B never got a partition"
        shared = (set(a.applier.positions), set(b.applier.positions))
        stop_a.set()  # A leaves the group mid-stream: B takes its partitions over
        thread_a.join(30)
        assert wait_for(lambda: len(b.applier.positions) == 3, 90), "B never got everything"
        time.sleep(0.5)
        stop_writer.set()
        writer.join(10)
        wait_until(CartSummary(), engine, traffic.positions, timeout=90)
    finally:
        stop_a.set()
        stop_b.set()
        stop_writer.set()
        serving.__exit__(None, None, None)
    thread_b.join(30)
    events, dup, missing = check_counts(engine, writer_store)
    equal = digest(engine, CartSummary().tables) == clean_digest(
        writer_store, f"sqlite:///{tmp_path}/clean.db"
    )
    lag = status(CartSummary(), writer_store, engine).lag
    print(
        f"\nKAFKA-GROUP: partitions=3 events={events} a_applied={a.stats.events_applied} "
        f"b_applied={b.stats.events_applied} a_alone={sorted(a_before)} "
        f"split_a={sorted(shared[0])} split_b={sorted(shared[1])} "
        f"conflicts={a.stats.conflicts + b.stats.conflicts} dup={dup} missing={missing} "
        f"lag={lag} digest_equal={equal}"
    )
    assert a_before == {0, 1, 2} and shared[0] and shared[1] and not shared[0] & shared[1]
    assert b.stats.events_applied > 0 and a.stats.events_applied > 0
    assert (dup, missing, lag, equal) == (0, 0, 0, True)
    for store in (*stores, writer_store):
        store.close()
    engine.dispose()


@pytest.mark.timeout(120)
def test_read_your_writes_end_to_end_on_kafka(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    name = unique_name("carts").replace("-", "_")
    store = open_store(f"kafka://{kafka_bootstrap}?partitions=3", name=name)
    app = cart_app(store, name=name)
    engine = ready_engine(f"sqlite:///{tmp_path}/read.db")
    projection = CartSummary()
    worker = ProjectionWorker(projection, store, engine, group=unique_name("rw"), poll_timeout=0.1)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    waits = []
    serving = serve_commands(app)
    serving.__enter__()
    try:
        for i in range(10):
            cart = uuid.uuid4()
            result = app.execute(OpenCart(cart_id=cart, customer=f"k{i}"))
            started = time.monotonic()
            wait_until(projection, engine, result.positions, timeout=60)
            waits.append(time.monotonic() - started)
            rows = table_rows(engine, CartSummary.carts)
            assert any(r["id"] == cart for r in rows), "wait_until returned before the write"
        # The head ends in commit markers, which no worker position passes: given the store,
        # wait_until counts a partition as reached when no event remains before the target.
        head = store.head()
        assert any(offset > 0 for offset in head.values())
        wait_until(projection, engine, head, timeout=60, store=store)
        assert len(table_rows(engine, CartSummary.carts)) == 10
    finally:
        serving.__exit__(None, None, None)
        stop.set()
        thread.join(30)
    lag = status(projection, store, engine)
    print(
        f"\nKAFKA-RYW: commands=10 first_wait={waits[0]:.2f}s "
        f"median_wait={sorted(waits)[5]:.3f}s lag={lag.lag} partitions={len(lag.partitions)}"
    )
    assert lag.lag == 0 and len(lag.partitions) == 3
    store.close()
    engine.dispose()
