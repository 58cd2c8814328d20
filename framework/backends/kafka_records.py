"""How an event is laid out as a Kafka record, and where it goes.

A record's key is the aggregate id as its canonical UUID string (36 ASCII bytes), so tools such
as ``kafka-console-consumer`` show it and clients in other languages partition it the same way
(the Java client's murmur2 partitioner). The value is the encoded event state; two headers carry
the event topic (``keel.topic``, UTF-8) and the version (``keel.version``, ASCII digits).

A record that does not follow this layout (written by another tool, or damaged) still decodes,
as an event with the nil aggregate id, version 0, the topic header's value (or ``""``) and the
raw value as its state, so the projection layer can dead-letter it instead of crashing.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from framework.backends.kafka_client import murmur2
from framework.persistence import NewEvent, RecordedEvent

__all__ = [
    "NIL_UUID",
    "TOPIC_HEADER",
    "VERSION_HEADER",
    "decode_record",
    "encode_event",
    "partition_for",
]

TOPIC_HEADER = "keel.topic"
VERSION_HEADER = "keel.version"
NIL_UUID = UUID(int=0)

Headers = list[tuple[str, bytes]]


def key_bytes(aggregate_id: UUID) -> bytes:
    """The record key of ``aggregate_id``'s events."""
    return str(aggregate_id).encode("ascii")


def partition_for(aggregate_id: UUID, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``aggregate_id``'s key."""
    hashed: int = murmur2(key_bytes(aggregate_id))
    return (hashed & 0x7FFFFFFF) % partitions


def encode_event(event: NewEvent) -> tuple[bytes, bytes, Headers]:
    """Key, value and headers of the record that stores ``event``."""
    headers = [
        (TOPIC_HEADER, event.topic.encode("utf-8")),
        (VERSION_HEADER, str(event.version).encode("ascii")),
    ]
    return key_bytes(event.aggregate_id), event.state, headers


def record_size(event: NewEvent) -> int:
    """An upper bound of the bytes ``event`` takes in a record batch."""
    # Key, value, header names and values, plus generous varint and batch overhead.
    return 36 + len(event.state) + len(event.topic.encode("utf-8")) + 40 + 128


def decode_record(
    key: bytes | None,
    value: bytes | None,
    headers: Any,
    *,
    partition: int,
    offset: int,
) -> tuple[RecordedEvent, bool]:
    """Turn a consumed record into an event; the flag says whether it followed the layout."""
    fields: dict[str, bytes] = {}
    for name, data in headers or ():
        if isinstance(name, str) and isinstance(data, bytes | bytearray):
            fields[name] = bytes(data)
    state = bytes(value) if value is not None else b""
    topic_raw = fields.get(TOPIC_HEADER)
    topic = ""
    valid = True
    try:
        topic = topic_raw.decode("utf-8") if topic_raw is not None else ""
    except UnicodeDecodeError:
        topic, valid = "", False
    try:
        aggregate_id = UUID(bytes(key or b"").decode("ascii"))
        version = int(fields[VERSION_HEADER].decode("ascii"))
    except (KeyError, ValueError, UnicodeDecodeError):
        aggregate_id, version, valid = NIL_UUID, 0, False
    if topic_raw is None or version < 1:
        valid = False
    if not valid:
        aggregate_id, version = NIL_UUID, 0
    return RecordedEvent(aggregate_id, version, topic, state, partition, offset), valid
