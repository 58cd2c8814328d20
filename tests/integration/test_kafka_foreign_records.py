"""Records the store did not write, in a real events topic: one foreign record with an
out-of-range version header, and a foreign duplicate of a version. Neither may brick the store
or a worker, and every reader applies one rule: the first record of (aggregate, version) wins.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from framework import dead_letters
from framework.backends.kafka import KafkaEventStore
from framework.backends.kafka_client import KafkaProducer
from framework.backends.kafka_records import NIL_UUID, partition_for
from framework.errors import FrameworkError
from framework.persistence import open_store
from framework.projection_testing import table_rows
from framework.worker import ProjectionWorker
from framework.writer import writer as serve_commands
from tests.projection_domain import AddItem, CartSummary, OpenCart, cart_app
from tests.support.projection_support import ready_engine

pytestmark = pytest.mark.kafka


@pytest.fixture
def url(kafka_bootstrap: str) -> str:
    return f"kafka://{kafka_bootstrap}?partitions=3"


def produce(bootstrap: str, topic: str, key: bytes, value: bytes, headers: Any, part: int) -> None:
    """Write one record around the store, as another tool would."""
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        producer.send(topic, key=key, value=value, headers=headers, partition=part).get(10)
    finally:
        producer.close()


def run_worker(worker: ProjectionWorker) -> tuple[bool, BaseException | None]:
    """Run until caught up in a thread; (still fine, error raised)."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            worker.run(until_caught_up=True)
        except BaseException as error:  # recorded: the figure line reports it
            failure.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(90)
    return not thread.is_alive() and not failure, failure[0] if failure else None


@pytest.fixture
def stores(url: str, unique_name: Callable[[str], str]) -> Iterator[Callable[[], KafkaEventStore]]:
    name = unique_name("foreign").replace("-", "_")
    opened: list[KafkaEventStore] = []

    def new() -> KafkaEventStore:
        store = open_store(url, name=name)
        assert isinstance(store, KafkaEventStore)
        opened.append(store)
        return store

    yield new
    for store in opened:
        store.close()


@pytest.mark.timeout(180)
def test_a_foreign_record_with_an_out_of_range_version_bricks_nothing(
    stores: Callable[[], KafkaEventStore],
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    writer = stores()
    app = cart_app(writer, name=writer.name)
    carts = [uuid.uuid4() for _ in range(6)]
    with serve_commands(app):
        for i, cart in enumerate(carts):
            app.execute(OpenCart(cart_id=cart, customer=f"c{i}"))
    victim = carts[0]
    topic = writer.read(victim)[0].topic
    produce(
        kafka_bootstrap,
        writer.topic,
        str(victim).encode(),
        b'{"data": {"sku": "x", "quantity": 1, "price": "1"}}',
        [("keel.topic", topic.encode()), ("keel.version", str(10**20).encode())],
        partition_for(victim, writer.partitions),
    )
    # A new process: its index reads the foreign record while catching up.
    fresh = stores()
    raw_errors = 0
    reads_ok = 0
    for cart in carts:
        try:
            assert [e.version for e in fresh.read(cart)] == [1]
            reads_ok += 1
        except FrameworkError:
            pass
        except Exception:
            raw_errors += 1
    commands_ok = 0
    fresh_app = cart_app(fresh, name=fresh.name)
    with serve_commands(fresh_app):  # the new process takes the shard over: it decides
        for cart in (victim, carts[1]):
            fresh_app.execute(AddItem(cart_id=cart, sku="s"))
            commands_ok += 1
    foreign = [
        e
        for p in range(fresh.partitions)
        for e in fresh.read_partition(p, start=0, limit=100)
        if e.problem
    ]
    engine = ready_engine(f"sqlite:///{tmp_path}/read.db")
    worker = ProjectionWorker(
        CartSummary(), fresh, engine, group=f"g-{uuid.uuid4().hex[:8]}", poll_timeout=0.2
    )
    alive, error = run_worker(worker)
    parked = dead_letters.list_dead_letters(engine, CartSummary())
    carts_applied = {row["id"] for row in table_rows(engine, CartSummary.carts)}
    print(
        f"\nITEM1[kafka]: foreign=1 reads_ok={reads_ok}/{len(carts)} raw_errors={raw_errors} "
        f"commands_ok={commands_ok} problem_records={len(foreign)} dead_letters={len(parked)} "
        f"worker_ok={alive} carts_applied={len(carts_applied)}"
    )
    assert error is None and alive
    assert (reads_ok, raw_errors, commands_ok, len(foreign)) == (len(carts), 0, 2, 1)
    assert "outside 1..2147483647" in foreign[0].problem
    assert [(d.aggregate_id, d.version, d.reason) for d in parked] == [(str(NIL_UUID), 0, "failed")]
    assert parked[0].error_type.endswith("EventDecodingError")
    assert carts_applied == set(carts)
    assert [e.version for e in fresh.read(victim)] == [1, 2]
    engine.dispose()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("first", ["store_reads", "worker_polls"])
def test_a_foreign_duplicate_of_a_version_loses_everywhere(
    stores: Callable[[], KafkaEventStore],
    kafka_bootstrap: str,
    tmp_path: Path,
    first: str,
) -> None:
    writer = stores()
    app = cart_app(writer, name=writer.name)
    cart = uuid.uuid4()
    with serve_commands(app):
        app.execute(OpenCart(cart_id=cart, customer="first"))
        app.execute(AddItem(cart_id=cart, sku="kept", quantity=1))
    second = writer.read(cart)[1]
    # Version 2 again, with another item: only a writer around the fencing can do this.
    produce(
        kafka_bootstrap,
        writer.topic,
        str(cart).encode(),
        second.state.replace(b"kept", b"FAKE"),
        [("keel.topic", second.topic.encode()), ("keel.version", b"2")],
        second.partition,
    )
    fresh = stores()
    if first == "store_reads":  # the index has caught up before the feed polls
        store_view = [e.state for e in fresh.read(cart)]
    engine = ready_engine(f"sqlite:///{tmp_path}/read.db")
    worker = ProjectionWorker(
        CartSummary(),
        fresh,
        engine,
        group=f"g-{uuid.uuid4().hex[:8]}",
        poll_timeout=0.2,
        batch_size=2,  # the duplicate arrives in a later batch than the record it repeats
    )
    alive, error = run_worker(worker)
    if first == "worker_polls":  # the feed's batches filled the index
        store_view = [e.state for e in fresh.read(cart)]
    items = table_rows(engine, CartSummary.lines)
    skus = sorted(row["sku"] for row in items)
    parked = dead_letters.list_dead_letters(engine, CartSummary())
    anomalies = fresh._index.anomalies()
    print(
        f"\nITEM2[kafka,{first}]: duplicates=1 store_kept_first={b'kept' in store_view[1]} "
        f"read_model_skus={','.join(skus)} dead_letters={len(parked)} "
        f"index_duplicates={anomalies['duplicate']} worker_ok={alive}"
    )
    assert error is None and alive
    assert len(store_view) == 2 and b"kept" in store_view[1]
    assert skus == ["kept"]
    assert anomalies == {"malformed": 0, "duplicate": 1}
    assert len(parked) == 1 and "bypassed the store's fencing" in parked[0].error_message
    engine.dispose()
