"""How an event is laid out as a Kafka record, and where it goes.

A record's key is the aggregate id as its canonical UUID string (36 ASCII bytes), so tools such
as ``kafka-console-consumer`` show it and clients in other languages partition it the same way
(the Java client's murmur2 partitioner). The value is the encoded event state; two headers carry
the event topic (``keel.topic``, UTF-8) and the version (``keel.version``, ASCII digits).

A record that does not follow this layout exactly (written by another tool, or damaged: a key
that is not a canonical UUID, a version header that is not a decimal in 1..MAX_VERSION, a topic
header that is not printable UTF-8, a header given twice, no value) still decodes, as an event
with the nil aggregate id, version 0, the topic header's printable text (or ``""``), the raw
value as its state and the reason in ``problem``. It is then in no aggregate's stream: the store
never decides on it, and a projection parks it as a dead letter instead of crashing.
"""

from __future__ import annotations

import functools
import re
from typing import Any
from uuid import UUID

from framework.backends.kafka_client import murmur2
from framework.persistence import NewEvent, RecordedEvent

__all__ = [
    "MAX_TOPIC",
    "MAX_VERSION",
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
MAX_VERSION = 2**31 - 1
"""The highest version a record may carry: what every SQL column holding a version accepts."""
MAX_TOPIC = 300
"""The longest event topic (type name) a record may carry, in characters."""

Headers = list[tuple[str, bytes]]


def key_bytes(aggregate_id: UUID) -> bytes:
    """The record key of ``aggregate_id``'s events."""
    return str(aggregate_id).encode("ascii")


@functools.lru_cache(maxsize=1 << 16)
def partition_for(aggregate_id: UUID, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``aggregate_id``'s key.

    Remembered for the most recent aggregates: kafka-python's murmur2 is pure Python, and a
    writer asks several times per event (placement, the check, the send), which was a tenth of
    a routed command's CPU in the writer."""
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
) -> RecordedEvent:
    """Turn a consumed record into an event, checking every field of the layout (type and
    range). A record that breaks it comes back with the nil aggregate id, version 0 and the
    reason in ``problem``, so it is in no aggregate's stream. (The partition is not checked:
    command records sit in the partition of the aggregate they are routed with.)

    Every record a projection or an index reads passes through here, so it reads each field
    once: the headers in one pass, the key parsed once."""
    topic_raw, version_raw = _layout_headers(headers)
    state = bytes(value) if isinstance(value, bytes | bytearray) else b""
    topic = _KNOWN_TOPICS.get(topic_raw) if isinstance(topic_raw, bytes) else None
    if topic is not None:  # a topic seen before: checked then
        aggregate_id, problem = _check_layout(
            key, value, topic_raw, version_raw, topic_unchecked=False
        )
    else:
        topic = topic_raw.decode("utf-8", "replace") if isinstance(topic_raw, bytes) else ""
        aggregate_id, problem = _check_layout(key, value, topic_raw, version_raw)
        if not problem and len(_KNOWN_TOPICS) < _KNOWN_TOPICS_MAX:
            _KNOWN_TOPICS[topic_raw] = topic  # type: ignore[index]
    if problem:
        return RecordedEvent(NIL_UUID, 0, _printable(topic), state, partition, offset, problem)
    version = int(version_raw)  # type: ignore[arg-type]
    return RecordedEvent(aggregate_id, version, topic, state, partition, offset)


Header = bytes | str | None
"""A layout header's value: its bytes; ``""`` when it repeats or is not bytes; None if absent."""


def _layout_headers(headers: Any) -> tuple[Header, Header]:
    """The topic and version headers, in one pass over the record's headers."""
    topic: Header = None
    version: Header = None
    try:
        for name, data in headers or ():
            if name == TOPIC_HEADER:
                topic = "" if topic is not None else _header_value(data)
            elif name == VERSION_HEADER:
                version = "" if version is not None else _header_value(data)
    except (TypeError, ValueError):  # not a list of (name, value) pairs
        return "", ""
    return topic, version


def _header_value(data: Any) -> bytes | str:
    return bytes(data) if isinstance(data, bytes | bytearray) else ""


_KNOWN_TOPICS: dict[bytes, str] = {}
"""Topic headers that passed the checks, decoded: a topic has few event types, and each record
would check its type's name again."""
_KNOWN_TOPICS_MAX = 10_000


def _check_layout(
    key: Any, value: Any, topic: Header, version: Header, *, topic_unchecked: bool = True
) -> tuple[UUID, str]:
    """The record's aggregate id, and what breaks the layout (``""`` when nothing does);
    ``topic_unchecked=False`` for a topic header known to be good."""
    if not isinstance(value, bytes | bytearray):
        return NIL_UUID, "it has no value"
    if not isinstance(key, bytes | bytearray) or not _CANONICAL_UUID.fullmatch(key):
        return NIL_UUID, f"its key {_show(key)} is not an aggregate id (a UUID in canonical form)"
    aggregate_id = UUID(bytes(key).decode("ascii"))
    if aggregate_id == NIL_UUID:
        return NIL_UUID, "its key is the nil UUID, which names no aggregate"
    for name, found in ((TOPIC_HEADER, topic), (VERSION_HEADER, version)):
        if found == "":
            return NIL_UUID, f"its {name} header is repeated (or not bytes)"
    if not isinstance(version, bytes) or not _DIGITS.fullmatch(version):
        return NIL_UUID, f"its {VERSION_HEADER} header {_show(version)} is not one decimal number"
    if not 1 <= int(version) <= MAX_VERSION:
        return NIL_UUID, (
            f"its {VERSION_HEADER} header {_show(version)} is outside 1..{MAX_VERSION}"
        )
    if not topic_unchecked:
        return aggregate_id, ""
    if not isinstance(topic, bytes) or not topic:
        return NIL_UUID, f"its {TOPIC_HEADER} header {_show(topic)} is missing or empty"
    try:
        text = topic.decode("utf-8")
    except UnicodeDecodeError:
        return NIL_UUID, f"its {TOPIC_HEADER} header {_show(topic)} is not UTF-8"
    if len(text) > MAX_TOPIC or not text.isprintable():
        return NIL_UUID, (
            f"its {TOPIC_HEADER} header {_show(topic)} is not a printable name of at most "
            f"{MAX_TOPIC} characters"
        )
    return aggregate_id, ""


_CANONICAL_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_DIGITS = re.compile(rb"[1-9][0-9]{0,39}")


def _show(data: Any) -> str:
    """A short, safe rendering of a field for an error message."""
    text = repr(data)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _printable(topic: str) -> str:
    return "".join(c for c in topic if c.isprintable())[:MAX_TOPIC]
