"""A direct Kafka append keeps its deadline (issue 13, item 5): the logic of the shard writer's
queue, with a producer factory that never returns standing in for an unreachable cluster."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, cast

from framework.backends.kafka_index import TopicIndex
from framework.backends.kafka_writer import AppendRequest, ShardWriter, ShardWriterSettings
from framework.errors import OutcomeUnknownError, StoreUnavailableError
from framework.persistence import NewEvent


def request(deadline: float) -> AppendRequest:
    return AppendRequest([NewEvent(uuid.uuid4(), 1, "T", b"{}")], [0], deadline=deadline)


def test_a_request_is_taken_or_abandoned_never_both() -> None:
    taken = request(time.monotonic() + 60)
    assert taken.take() and not taken.abandon()
    abandoned = request(time.monotonic() + 60)
    assert abandoned.abandon() and not abandoned.take()
    assert not abandoned.done.is_set()  # its caller reports the outcome itself


def test_a_request_past_its_deadline_in_the_queue_is_failed_unwritten() -> None:
    late = request(time.monotonic() - 0.1)
    assert not late.take()
    assert late.done.is_set() and isinstance(late.error, StoreUnavailableError)
    assert "nothing was written" in str(late.error)


def test_appends_end_by_their_deadline_when_the_writer_hangs() -> None:
    """The first append is in flight (its outcome unknown); the one queued behind it was never
    started, so it says nothing was written."""
    release = threading.Event()

    def hanging_factory(**settings: Any) -> Any:
        release.wait(30)  # kafka-python connecting to a cluster that does not answer
        raise StoreUnavailableError("released")

    writer = ShardWriter(
        topic="t",
        shard=0,
        partitions=[0],
        transactional_id="t-writer-0",
        producer_factory=hanging_factory,
        topic_index=cast(TopicIndex, None),  # never reached: the factory hangs first
        settings=ShardWriterSettings(append_timeout=0.5),
    )
    outcomes: dict[str, BaseException] = {}

    def call(name: str) -> None:
        try:
            writer.append([NewEvent(uuid.uuid4(), 1, "T", b"{}")], [0])
        except (OutcomeUnknownError, StoreUnavailableError) as error:
            outcomes[name] = error

    first = threading.Thread(target=call, args=("in_flight",))
    first.start()
    for _ in range(500):  # until the writer thread has taken the first append
        if writer.stats["batched"]:
            break
        time.sleep(0.01)
    call("queued")
    first.join(10)
    release.set()
    writer.close()
    assert isinstance(outcomes["in_flight"], OutcomeUnknownError)
    assert isinstance(outcomes["queued"], StoreUnavailableError)
    assert "was not started; nothing was written" in str(outcomes["queued"])
