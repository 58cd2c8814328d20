"""The real broker behaves the way the framework relies on (kafka-python against Kafka 4.3).

Needs ``scripts/kafka start`` (``make test`` does it); see tests/conftest.py.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# kafka-python 3.0.x reads its protocol schemas with a deprecated importlib.resources call while
# it imports; the suite turns warnings into errors, so silence exactly that one, here.
with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message=r"(open|read)_text is deprecated", category=DeprecationWarning
    )
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import ConfigResource, ConfigResourceType
    from kafka.errors import ProducerFencedError

pytestmark = pytest.mark.timeout(120)

TXN_TIMEOUT_MS = 15_000


def bounded(call: Callable[[], Any], seconds: float = 30.0) -> Any:
    """Run a kafka-python call that can block forever (commit/abort) with a deadline.

    A daemon thread, so a hung call cannot hold up interpreter exit; its exception is re-raised.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"{call!r} did not finish within {seconds}s (outcome unknown)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@pytest.fixture
def admin(kafka_bootstrap: str) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=15_000)
    yield client
    client.close()


@pytest.fixture
def topic(admin: KafkaAdminClient, unique_name: Callable[[str], str]) -> Iterator[str]:
    name = unique_name("broker-test")
    admin.create_topics(
        {name: {"num_partitions": 1, "replication_factor": 1}}, wait_for_metadata=True
    )
    yield name
    admin.delete_topics([name])


def transactional_producer(bootstrap: str, txn_id: str) -> KafkaProducer:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=txn_id,
        enable_idempotence=True,
        acks="all",
        transaction_timeout_ms=TXN_TIMEOUT_MS,
        max_block_ms=30_000,
    )
    producer.init_transactions()
    return producer


def read_committed(bootstrap: str, topic: str) -> list[tuple[int, bytes]]:
    """Every record a read_committed reader sees in partition 0, as (offset, value)."""
    tp = TopicPartition(topic, 0)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        group_id=None,
    )
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        # For read_committed, end_offsets is the last stable offset: read up to it.
        end = consumer.end_offsets([tp])[tp]
        seen: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + 30
        while consumer.position(tp) < end:
            assert time.monotonic() < deadline, f"read only up to {consumer.position(tp)} of {end}"
            for records in consumer.poll(timeout_ms=500).values():
                seen.extend((r.offset, r.value) for r in records)
        return seen
    finally:
        consumer.close()


def test_read_committed_sees_committed_transactions_only(kafka_bootstrap: str, topic: str) -> None:
    producer = transactional_producer(kafka_bootstrap, f"{topic}-txn")
    try:
        producer.begin_transaction()
        for value in (b"c1", b"c2", b"c3"):
            producer.send(topic, value, partition=0)
        bounded(producer.commit_transaction)

        producer.begin_transaction()
        for value in (b"a1", b"a2", b"a3"):
            producer.send(topic, value, partition=0)
        producer.flush(timeout=30)  # the aborted records really reach the log
        bounded(producer.abort_transaction)

        producer.begin_transaction()
        for value in (b"c4", b"c5"):
            producer.send(topic, value, partition=0)
        bounded(producer.commit_transaction)
    finally:
        producer.close(timeout=5)

    seen = read_committed(kafka_bootstrap, topic)

    assert [value for _, value in seen] == [b"c1", b"c2", b"c3", b"c4", b"c5"]
    # Offsets are sparse: each transaction marker takes an offset (3 and 7), and so do the
    # three aborted records (4-6), so a reader must never assume offset + 1 is the next record.
    assert [offset for offset, _ in seen] == [0, 1, 2, 8, 9]


def test_a_second_producer_with_the_same_transactional_id_fences_the_first(
    kafka_bootstrap: str, topic: str
) -> None:
    txn_id = f"{topic}-txn"
    first = transactional_producer(kafka_bootstrap, txn_id)
    second = None
    try:
        first.begin_transaction()
        first.send(topic, b"zombie", partition=0)
        first.flush(timeout=30)

        # init_transactions of the newcomer bumps the epoch and aborts the open transaction.
        second = transactional_producer(kafka_bootstrap, txn_id)

        with pytest.raises(ProducerFencedError):
            bounded(first.commit_transaction)

        second.begin_transaction()
        second.send(topic, b"successor", partition=0)
        bounded(second.commit_transaction)
    finally:
        first.close(timeout=5)
        if second is not None:
            second.close(timeout=5)

    assert [value for _, value in read_committed(kafka_bootstrap, topic)] == [b"successor"]


def test_topic_created_with_explicit_configs_reports_them(
    admin: KafkaAdminClient, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("configured")
    admin.create_topics(
        {
            name: {
                "num_partitions": 3,
                "replication_factor": 1,
                "configs": {"retention.ms": "-1", "cleanup.policy": "delete"},
            }
        },
        wait_for_metadata=True,
    )
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        configs = described["topic"][name]
        assert configs["retention.ms"]["value"] == "-1"
        assert configs["cleanup.policy"]["value"] == "delete"
        assert configs["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"

        (info,) = admin.describe_topics([name])
        assert len(info["partitions"]) == 3
    finally:
        admin.delete_topics([name])
