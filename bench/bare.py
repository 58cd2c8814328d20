"""The bare clients the benchmarks compare with: kafka-python alone, nothing of keel imported
(the memory section runs them in child processes, where imports count)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["produce_records", "read_kafka", "read_records", "write_records"]


def read_kafka(
    bootstrap: str, topic: str, expected: int, group: str, timeout: float = 600.0
) -> dict[str, Any]:
    """Read ``expected`` records of ``topic`` with a bare kafka-python consumer in its own
    group (``read_committed``, no auto-commit), from the start; nothing is decoded."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        metrics_enabled=False,  # as in keel's clients (not so its selector: see the README)
    )
    started = time.perf_counter()
    consumer.subscribe([topic])
    read = 0
    try:
        while read < expected:
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"read {read} of {expected} records of {topic}")
            batch = consumer.poll(timeout_ms=500)
            read += sum(len(records) for records in batch.values())
        seconds = time.perf_counter() - started
    finally:
        consumer.close(autocommit=False)
    return {"events": read, "seconds": round(seconds, 6)}


def write_records(path: str, records: Iterator[tuple[str, int, str, bytes, int]]) -> int:
    """Keep ``(aggregate id, version, event topic, state, partition)`` records in a JSON-lines
    file for a child process."""
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        for aggregate_id, version, topic, state, partition in records:
            out.write(
                json.dumps([aggregate_id, version, topic, state.decode("latin-1"), partition])
                + "\n"
            )
            count += 1
    return count


def read_records(path: str) -> list[tuple[str, int, str, bytes, int]]:
    out = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            aggregate_id, version, topic, state, partition = json.loads(line)
            out.append((aggregate_id, version, topic, state.encode("latin-1"), partition))
    return out


def produce_records(
    bootstrap: str,
    topic: str,
    records: list[tuple[str, int, str, bytes, int]],
    per_transaction: int,
) -> dict[str, Any]:
    """Produce ``records`` in the store's record layout (key: aggregate id; headers: event
    topic and version) with a bare transactional producer."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        transactional_id=topic + "-tx",
        retry_backoff_ms=5,
        metrics_enabled=False,  # as in keel's clients (not so its selector: see the README)
    )
    producer.init_transactions()
    started = time.perf_counter()
    for start in range(0, len(records), per_transaction):
        producer.begin_transaction()
        for aggregate_id, version, event_topic, state, partition in records[
            start : start + per_transaction
        ]:
            headers = [("keel.topic", event_topic.encode()), ("keel.version", b"%d" % version)]
            producer.send(
                topic, key=aggregate_id.encode(), value=state, headers=headers, partition=partition
            )
        producer.commit_transaction()
    seconds = time.perf_counter() - started
    producer.close()
    return {"events": len(records), "seconds": round(seconds, 6)}
