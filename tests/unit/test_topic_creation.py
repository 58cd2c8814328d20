"""Creating a store's topic on a cluster: a broker that has not heard of the new topic yet must
not fail the store's start (seen on the three-broker cluster: ``wait_for_topics`` heard of it
from one broker, the next describe went to another)."""

from __future__ import annotations

from typing import Any

import pytest

from framework.backends.kafka_topic import _ensure
from framework.errors import StoreUnavailableError

TOPIC = "shop.events"
DESCRIBED = {"name": TOPIC, "error_code": 0, "partitions": [{"partition": 0, "leader": 1}]}


class LaggingBrokers:
    """An admin client whose describes miss the topic until ``lag`` describes after creation
    (an unknown topic comes back with error code 3, as Kafka answers)."""

    def __init__(self, lag: int | None) -> None:
        self.lag, self.created, self.described = lag, False, 0

    def describe_topics(self, topics: list[str]) -> list[dict[str, Any]]:
        if self.created:
            self.described += 1
            if self.lag is not None and self.described > self.lag:
                return [DESCRIBED]
        return [{"name": topics[0], "error_code": 3, "partitions": []}]

    def create_topics(self, topics: dict[str, Any], timeout_ms: int) -> None:
        self.created = True

    def wait_for_topics(self, topics: list[str], timeout_ms: int) -> None:
        pass  # one broker knows it: that is all wait_for_topics checks


def test_a_broker_that_lags_behind_is_asked_again() -> None:
    admin = LaggingBrokers(lag=3)
    assert _ensure(admin, TOPIC, 1, 3, {}, timeout=5.0) == DESCRIBED  # type: ignore[arg-type]
    assert admin.described == 4


def test_a_topic_never_described_is_a_store_error_at_the_deadline() -> None:
    admin = LaggingBrokers(lag=None)
    with pytest.raises(StoreUnavailableError, match=r"cannot be described within 0\.5 s"):
        _ensure(admin, TOPIC, 1, 3, {}, timeout=0.5)  # type: ignore[arg-type]
    assert admin.described >= 2
