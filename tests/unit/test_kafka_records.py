"""Decoding Kafka records: every header checked for type and range; the local index keeps the
first record of (aggregate, version) whatever order records arrive in (no broker needed)."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from framework.backends.kafka_index import LocalIndex
from framework.backends.kafka_records import NIL_UUID, decode_record, encode_event
from framework.codec import codec
from framework.errors import EventDecodingError
from framework.persistence import NewEvent, RecordedEvent

A = uuid.UUID("abcdef12-1234-5678-9abc-def012345678")
KEY = str(A).encode()


def decode(key: Any = KEY, value: Any = b"{}", headers: Any = None) -> RecordedEvent:
    if headers is None:
        headers = [("keel.topic", b"T.Happened"), ("keel.version", b"3")]
    return decode_record(key, value, headers, partition=1, offset=9)


def test_a_record_in_the_layout_decodes_to_its_event() -> None:
    key, value, headers = encode_event(NewEvent(A, 7, "T.Happened", b"{}"))
    assert decode(key, value, headers) == RecordedEvent(A, 7, "T.Happened", b"{}", 1, 9)


@pytest.mark.parametrize(
    ("key", "value", "headers", "reason"),
    [
        (KEY, b"{}", [("keel.topic", b"T"), ("keel.version", str(10**20).encode())], "outside"),
        (KEY, b"{}", [("keel.topic", b"T"), ("keel.version", b"2147483648")], "outside"),
        (KEY, b"{}", [("keel.topic", b"T"), ("keel.version", b"0")], "not one decimal"),
        (KEY, b"{}", [("keel.topic", b"T"), ("keel.version", b"-1")], "not one decimal"),
        (KEY, b"{}", [("keel.topic", b"T"), ("keel.version", b" 1")], "not one decimal"),
        (KEY, b"{}", [("keel.topic", b"T"), ("keel.version", b"1_0")], "not one decimal"),
        (KEY, b"{}", [("keel.topic", b"T"), ("keel.version", "1")], "repeated (or not bytes)"),
        (KEY, b"{}", [("keel.topic", b"T")], "not one decimal"),
        (KEY, b"{}", [("keel.topic", b"T"), ("keel.version", b"1")] * 2, "repeated"),
        (KEY, b"{}", [("keel.topic", b"\xff"), ("keel.version", b"1")], "not UTF-8"),
        (KEY, b"{}", [("keel.topic", b"T\x00"), ("keel.version", b"1")], "printable"),
        (KEY, b"{}", [("keel.topic", b"T" * 301), ("keel.version", b"1")], "printable"),
        (KEY, b"{}", [("keel.version", b"1")], "missing"),
        (KEY.upper(), b"{}", None, "canonical"),
        (b"not-a-uuid", b"{}", None, "canonical"),
        (None, b"{}", None, "canonical"),
        (str(NIL_UUID).encode(), b"{}", None, "nil UUID"),
        (KEY, None, None, "no value"),
        (KEY, b"{}", "garbage", "repeated (or not bytes)"),
    ],
)
def test_a_record_breaking_the_layout_is_in_no_aggregate_stream(
    key: Any, value: Any, headers: Any, reason: str
) -> None:
    event = decode(key, value, headers)
    assert (event.aggregate_id, event.version) == (NIL_UUID, 0)
    assert reason in event.problem
    with pytest.raises(EventDecodingError, match="not an event of this store"):
        codec.decode(event)


def row(version: int, offset: int, state: bytes = b"{}") -> RecordedEvent:
    return RecordedEvent(A, version, "T.Happened", state, 0, offset)


@pytest.mark.parametrize("order", ["in offset order", "the later one first"])
def test_the_index_keeps_the_first_record_of_a_version(tmp_path: Path, order: str) -> None:
    first, second = row(2, 5, b"first"), row(2, 8, b"second")
    index = LocalIndex(tmp_path / "i.sqlite")
    index.apply([row(1, 1)], {0: 2})
    if order == "in offset order":
        index.apply([first, second], {0: 9})
    else:
        index.add_committed([second])  # the writer's own record, indexed ahead of the position
        index.apply([first, second], {0: 9})
    assert [e.state for e in index.aggregate_events(A, 0, None)] == [b"{}", b"first"]
    problems = index.problems(0, [5, 8])
    assert list(problems) == [8] and "bypassed the store's fencing" in problems[8]
    served = index.partition_events(0, 0, 10)
    assert [(e.offset, e.aggregate_id, e.version) for e in served] == [
        (1, A, 1),
        (5, A, 2),
        (8, NIL_UUID, 0),
    ]
    assert index.anomalies() == {"malformed": 0, "duplicate": 1}
    index.close()


def test_an_index_of_the_old_schema_is_replaced_not_misread(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema', '1');"
        "CREATE TABLE records (part INTEGER, off INTEGER, aggregate_id BLOB, version INTEGER,"
        " topic TEXT, state BLOB, indexed INTEGER, PRIMARY KEY (part, off));"
        "CREATE TABLE positions (part INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL);"
        "INSERT INTO positions VALUES (0, 100);"
    )
    db.commit()
    db.close()
    index = LocalIndex(path)
    assert index.positions() == {}
    index.bind("t", "id")
    index.apply([row(1, 1)], {0: 2})
    assert [e.version for e in index.aggregate_events(A, 0, None)] == [1]
    index.close()


def test_a_known_topic_still_has_its_key_and_version_checked() -> None:
    """Topic headers that passed once are not checked again; the rest of each record is."""
    topic = b"Known.Topic" + uuid.uuid4().hex.encode()
    good_key = str(uuid.uuid4()).encode()
    first = decode_record(good_key, b"{}", [("keel.topic", topic), ("keel.version", b"1")],
                          partition=0, offset=0)  # fmt: skip
    assert first.problem == "" and first.version == 1
    for key, version, why in (
        (b"not-a-uuid", b"2", "is not an aggregate id"),
        (good_key, b"9" * 12, "outside 1.."),
        (good_key, b"x", "is not one decimal number"),
    ):
        again = decode_record(key, b"{}", [("keel.topic", topic), ("keel.version", version)],
                              partition=0, offset=1)  # fmt: skip
        assert why in again.problem and again.aggregate_id == NIL_UUID and again.version == 0
        assert again.topic == topic.decode()
    bad = decode_record(good_key, b"{}", [("keel.topic", b"bad\x00topic"), ("keel.version", b"3")],
                        partition=0, offset=2)  # fmt: skip
    assert "printable" in bad.problem
