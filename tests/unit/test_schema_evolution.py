"""T9: events written by old versions of the code still load (golden fixtures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from framework.application import Application
from framework.codec import codec
from framework.commands import Metadata
from framework.errors import EventDecodingError, UnknownEventTypeError, UpcastingError
from framework.persistence import NewEvent, RecordedEvent
from tests.support.versioned import Member

FIXTURES = sorted((Path(__file__).parent.parent / "fixtures" / "events").glob("*.json"))


def recorded(aggregate_id: UUID, version: int, topic: str, state: Any) -> RecordedEvent:
    return RecordedEvent(aggregate_id, version, topic, json.dumps(state).encode(), 0, version)


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_golden_payloads_load_through_the_store(fixture: Path) -> None:
    golden = json.loads(fixture.read_text())
    aggregate_id = UUID(golden["aggregate_id"])
    app = Application("members", "memory://")
    app.store.append(
        [
            NewEvent(aggregate_id, e["version"], e["topic"], json.dumps(e["state"]).encode())
            for e in golden["events"]
        ]
    )
    member = app.load(Member, aggregate_id)
    expected = golden["expected_state"]
    assert {k: getattr(member, k) for k in expected} == expected


def test_there_is_a_fixture_for_every_class_version() -> None:
    written = {json.loads(p.read_text())["events"][0]["state"].get("v", 1) for p in FIXTURES}
    assert written == set(range(1, Member.Joined.class_version + 1))


def test_current_events_round_trip_at_the_current_class_version() -> None:
    member = Member(id=uuid4(), full_name="Di Eve", email=None, country="IT")
    member.move("DE")
    for event in member.collect_events():
        new = codec.encode(event, Metadata(user="u"))
        assert json.loads(new.state)["v"] == getattr(type(event), "class_version", 1)
        back = codec.decode(
            RecordedEvent(new.aggregate_id, new.version, new.topic, new.state, 0, 0)
        )
        assert vars(back.event) == vars(event)
        assert back.metadata.user == "u"


def test_a_failing_upcaster_is_a_typed_error_naming_the_step() -> None:
    broken = {"v": 2, "data": {"timestamp": "2025-03-05T10:00:00Z"}, "meta": {}}  # no "name"
    with pytest.raises(UpcastingError, match="upcast_v2_v3"):
        codec.decode(recorded(uuid4(), 1, "Member.Joined", broken))


def test_a_payload_from_the_future_is_refused() -> None:
    future = {"v": 9, "data": {}, "meta": {}}
    with pytest.raises(EventDecodingError, match="class version 9"):
        codec.decode(recorded(uuid4(), 1, "Member.Joined", future))


@pytest.mark.parametrize(
    ("topic", "state", "error"),
    [
        ("Member.Vanished", {"data": {}}, UnknownEventTypeError),
        ("Member.Moved", "not an object", EventDecodingError),
        ("Member.Moved", {"nodata": 1}, EventDecodingError),
        ("Member.Moved", {"data": {"timestamp": "2025-01-01T00:00:00Z"}}, EventDecodingError),
        ("Member.Moved", {"data": {"timestamp": "yesterday", "country": "FR"}}, EventDecodingError),
    ],
    ids=["unknown-type", "not-an-object", "no-data", "missing-field", "bad-timestamp"],
)
def test_undecodable_events_are_typed_errors(topic: str, state: Any, error: type) -> None:
    with pytest.raises(error):
        codec.decode(recorded(uuid4(), 2, topic, state))


def test_bytes_that_are_not_json_are_a_typed_error() -> None:
    bad = RecordedEvent(uuid4(), 1, "Member.Moved", b"\x80\x81 not json", 0, 7)
    with pytest.raises(EventDecodingError, match="offset 7"):
        codec.decode(bad)
