"""GroupStickyAssignor: kafka-python's cooperative-sticky assignment, computed over the topics
the group subscribes to instead of every topic in the client's metadata (quadratic there)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from framework.backends.kafka_client import CooperativeStickyAssignor, GroupStickyAssignor


class Metadata:
    """A client's cluster metadata (logic only): ``topics`` with their partition counts; it
    records which topics the assignor asked about."""

    def __init__(self, topics: dict[str, int]) -> None:
        self._partitions = {t: set(range(n)) for t, n in topics.items()}
        self.asked: set[str] = set()

    def topics(self) -> set[str]:
        return set(self._partitions)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        self.asked.add(topic)
        return self._partitions.get(topic)


def members(assignor: Any, topics: list[str], count: int) -> list[Any]:
    subscription = assignor.metadata(topics)
    return [SimpleNamespace(member_id=f"m{i}", metadata=subscription) for i in range(count)]


def shares(assignment: dict[str, Any]) -> dict[str, list[tuple[str, list[int]]]]:
    return {member: sorted(a.assigned_partitions) for member, a in assignment.items()}


def test_it_assigns_as_the_plain_assignor_does_on_the_subscribed_topics() -> None:
    topics = {"shop.commands": 4, **{f"other{i}.events": 6 for i in range(40)}}
    ours, plain = GroupStickyAssignor(), CooperativeStickyAssignor()
    got = shares(ours.assign(Metadata(topics), members(ours, ["shop.commands"], 2)))
    expected = shares(plain.assign(Metadata(topics), members(plain, ["shop.commands"], 2)))
    assert got == expected
    assigned = sorted(p for share in got.values() for _, ps in share for p in ps)
    assert assigned == [0, 1, 2, 3]  # every shard once
    assert sorted(len(ps) for share in got.values() for _, ps in share) == [2, 2]


def test_it_never_looks_at_topics_the_group_does_not_subscribe_to() -> None:
    metadata = Metadata({"shop.commands": 3, **{f"other{i}.events": 3 for i in range(500)}})
    assignor = GroupStickyAssignor()
    assignor.assign(metadata, members(assignor, ["shop.commands"], 1))
    assert metadata.asked == {"shop.commands"}
    plain_metadata = Metadata({"shop.commands": 3, "other.events": 3})
    CooperativeStickyAssignor().assign(plain_metadata, members(assignor, ["shop.commands"], 1))
    assert "other.events" in plain_metadata.asked  # what made kafka-python's version slow


def test_a_subscribed_topic_without_metadata_yet_is_left_out() -> None:
    assignor = GroupStickyAssignor()
    got = shares(assignor.assign(Metadata({"a": 2}), members(assignor, ["a", "b"], 1)))
    assert got == {"m0": [("a", [0, 1])]}
