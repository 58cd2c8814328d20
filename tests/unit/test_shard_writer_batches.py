"""The shard writer's group commit and its wait for commit markers: the logic alone, with an
in-memory producer and index standing in for the cluster (the real ones: the Kafka tests)."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pytest

from framework.backends.kafka_index import TopicIndex
from framework.backends.kafka_markers import MarkerWatch
from framework.backends.kafka_writer import Gathering, ShardWriter, ShardWriterSettings
from framework.persistence import NewEvent, RecordedEvent

LIVENESS = 60.0
"""Seconds a thread is given to finish: a bound on hanging, not a performance figure."""


@dataclass
class _Metadata:
    partition: int
    offset: int


class _Future:
    def __init__(self, metadata: _Metadata) -> None:
        self._metadata = metadata

    def get(self, timeout: float | None = None) -> _Metadata:
        return self._metadata


class FakeCluster:
    """One topic's offsets, what each transaction held, and the last stable offsets (the
    commit markers written), which a test may hold back."""

    def __init__(self) -> None:
        self.offsets: dict[int, int] = defaultdict(int)
        self.transactions: list[int] = []
        self.versions: dict[uuid.UUID, int] = defaultdict(int)
        self.hold_markers = False
        self._lock = threading.Lock()

    def producer(self, **settings: Any) -> Any:
        cluster = self

        class Producer:
            def __init__(self) -> None:
                self.sent = 0

            def init_transactions(self) -> None: ...

            def begin_transaction(self) -> None:
                self.sent = 0

            def send(self, topic: str, **record: Any) -> _Future:
                with cluster._lock:
                    partition = record["partition"]
                    offset = cluster.offsets[partition]
                    cluster.offsets[partition] += 1
                self.sent += 1
                return _Future(_Metadata(partition, offset))

            def commit_transaction(self) -> None:
                with cluster._lock:
                    cluster.transactions.append(self.sent)

            def abort_transaction(self) -> None: ...

            def close(self, timeout: float = 0) -> None: ...

        return Producer()

    def topic_index(self) -> TopicIndex:
        cluster = self

        class Index:
            def current_versions(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, int]:
                return {i: cluster.versions[i] for i in ids}

            def add_committed(self, events: Sequence[RecordedEvent]) -> None:
                for event in events:
                    cluster.versions[event.aggregate_id] = event.version

            def contains(self, event: RecordedEvent) -> bool:
                return cluster.versions[event.aggregate_id] >= event.version

        class Topic:
            index = Index()

            def catch_up(self, partitions: Sequence[int], force: bool = False) -> None: ...

            def end_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
                if cluster.hold_markers:
                    return {p: 0 for p in partitions}
                with cluster._lock:
                    return {p: cluster.offsets[p] for p in partitions}

        return cast(TopicIndex, Topic())


def writer(cluster: FakeCluster, **settings: Any) -> ShardWriter:
    return ShardWriter(
        topic="t",
        shard=0,
        partitions=[0, 1],
        transactional_id="t-writer-0",
        producer_factory=cluster.producer,
        topic_index=cluster.topic_index(),
        settings=ShardWriterSettings(**settings),
    )


def closed_loop(*, linger: float, callers: int, appends: int) -> list[int]:
    """``callers`` threads on one shard writer, each appending ``appends`` events to its own
    aggregate in turn; every one must finish. The events of each transaction, in order."""
    cluster = FakeCluster()
    shard = writer(cluster, linger=linger)

    def caller(number: int) -> None:
        aggregate = uuid.uuid4()
        for version in range(1, appends + 1):
            shard.append([NewEvent(aggregate, version, "T", b"{}")], [number % 2])

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(callers)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + LIVENESS
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t for t in threads if t.is_alive()]
    shard.close()
    assert not stuck
    return cluster.transactions


def test_concurrent_appends_share_transactions() -> None:
    """Callers in a closed loop are written together. (The waiting rule itself, which can make
    a batch wait its whole linger for a caller that has stopped appending, is tested on
    :class:`Gathering` below.)"""
    transactions = closed_loop(linger=0.05, callers=4, appends=6)
    assert sum(transactions) == 24
    assert len(transactions) < 24
    assert max(transactions) == 4


def test_a_lone_caller_never_lingers() -> None:
    assert closed_loop(linger=3600.0, callers=1, appends=5) == [1] * 5


def test_an_append_returns_only_once_its_commit_markers_are_visible() -> None:
    cluster = FakeCluster()
    cluster.hold_markers = True
    shard = writer(cluster)
    returned = threading.Event()

    def append() -> None:
        shard.append([NewEvent(uuid.uuid4(), 1, "T", b"{}")], [0])
        returned.set()

    thread = threading.Thread(target=append)
    thread.start()
    # The transaction commits; the caller still waits for the markers.
    for _ in range(int(LIVENESS / 0.01)):
        if cluster.transactions:
            break
        threading.Event().wait(0.01)
    assert cluster.transactions == [1]
    assert not returned.is_set()
    cluster.hold_markers = False
    thread.join(LIVENESS)
    shard.close()
    assert returned.is_set()


class _Request:
    def __init__(self) -> None:
        self.recorded: list[RecordedEvent] | None = None
        self.done = threading.Event()

    def succeed(self, recorded: list[RecordedEvent]) -> None:
        self.recorded = recorded
        self.done.set()


def _recorded(partition: int, offset: int) -> list[RecordedEvent]:
    return [RecordedEvent(uuid.uuid4(), 1, "T", b"{}", partition, offset)]


def test_the_watch_completes_each_append_as_its_partitions_become_stable() -> None:
    stable = {0: 0, 1: 0}
    asked: list[dict[int, int]] = []

    def end_offsets(partitions: Iterable[int]) -> dict[int, int]:
        wanted = list(partitions)
        asked.append({p: stable[p] for p in wanted})
        return {p: stable[p] for p in wanted}

    watch = MarkerWatch(end_offsets, stable_timeout=LIVENESS, name="test")
    first, second = _Request(), _Request()
    watch.hand(first, _recorded(0, 4), until=float("inf"))
    watch.hand(second, _recorded(1, 9), until=float("inf"))
    stable[0] = 5
    assert first.done.wait(LIVENESS)
    assert not second.done.is_set()  # partition 1 is not stable yet
    stable[1] = 10
    assert second.done.wait(LIVENESS)
    watch.close(LIVENESS)
    assert first.recorded is not None and first.recorded[0].offset == 4
    # One request a poll asked for every waiting append's partitions.
    assert any(set(a) == {0, 1} for a in asked)


def test_the_watch_completes_a_committed_append_whose_markers_never_show(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Committed is committed: past its time the append succeeds, and a warning says so."""
    watch = MarkerWatch(lambda ps: {p: 0 for p in ps}, stable_timeout=0.05, name="test")
    request = _Request()
    with caplog.at_level(logging.WARNING, logger="framework.backends.kafka_markers"):
        watch.hand(request, _recorded(0, 0), until=float("inf"))
        assert request.done.wait(LIVENESS)
        watch.close(LIVENESS)
    assert "still not visible" in caplog.text


def test_closing_the_watch_completes_what_it_holds() -> None:
    stable = {0: 0}
    watch = MarkerWatch(lambda ps: {p: stable[p] for p in ps}, stable_timeout=LIVENESS, name="t")
    request = _Request()
    watch.hand(request, _recorded(0, 0), until=float("inf"))
    closing = threading.Thread(target=watch.close, args=(LIVENESS,))
    closing.start()
    stable[0] = 1
    closing.join(LIVENESS)
    assert request.done.is_set() and not watch.is_alive()


# -- the batching rule itself --------------------------------------------------------------------


def _gather(gathering: Gathering, source: queue.Queue[Any], first: Any) -> tuple[list[Any], bool]:
    return gathering.gather(
        source, first, limit=100, weight=lambda _: 1, caller_of=lambda item: item[0], stop="stop"
    )


def test_gathering_takes_what_waits_and_lingers_only_for_recent_callers() -> None:
    gathering = Gathering(linger=3600.0)
    source: queue.Queue[Any] = queue.Queue()
    # A first batch: no one to wait for, whatever is queued comes along.
    source.put((2, "b"))
    assert _gather(gathering, source, (1, "a")) == ([(1, "a"), (2, "b")], False)
    # Callers 1 and 2 were in it: once both are back the batch is complete, at once.
    source.put((1, "c"))
    assert _gather(gathering, source, (2, "d")) == ([(2, "d"), (1, "c")], False)
    # Items without a caller (commands read from the topic) neither wait nor are waited for.
    source.put((None, "e"))
    source.put((1, "f"))
    source.put((2, "g"))
    batch, _ = _gather(gathering, source, (None, "h"))
    assert [text for _, text in batch] == ["h", "e", "f", "g"]


def test_gathering_lingers_for_a_missing_caller_until_it_comes() -> None:
    gathering = Gathering(linger=3600.0)
    source: queue.Queue[Any] = queue.Queue()
    source.put((2, "b"))
    _gather(gathering, source, (1, "a"))
    late = threading.Timer(0.2, source.put, args=((2, "d"),))
    late.start()
    batch, _ = _gather(gathering, source, (1, "c"))  # caller 2 is not back yet: it waits
    late.join()
    assert batch == [(1, "c"), (2, "d")]


def test_gathering_brings_callers_split_into_alternate_batches_together() -> None:
    gathering = Gathering(linger=3600.0)
    source: queue.Queue[Any] = queue.Queue()
    # Callers 1 and 2 fell into alternate transactions, one each (neither waited for anyone).
    assert _gather(gathering, source, (1, "a")) == ([(1, "a")], False)
    assert _gather(gathering, source, (2, "b")) == ([(2, "b")], False)
    # Caller 1 is back first: the batch waits for caller 2, the other half, and they are one
    # transaction again (remembering the last batch alone would have kept them apart).
    late = threading.Timer(0.2, source.put, args=((2, "d"),))
    late.start()
    batch, _ = _gather(gathering, source, (1, "c"))
    late.join()
    assert batch == [(1, "c"), (2, "d")]


def test_a_caller_that_left_is_waited_for_in_two_batches_at_most() -> None:
    gathering = Gathering(linger=0.01)
    source: queue.Queue[Any] = queue.Queue()
    source.put((2, "b"))
    _gather(gathering, source, (1, "a"))
    # Caller 2 is gone: the next two batches linger (briefly) for it, then it is forgotten.
    assert _gather(gathering, source, (1, "c"))[0] == [(1, "c")]
    assert _gather(gathering, source, (1, "d"))[0] == [(1, "d")]
    gathering.linger = 3600.0  # a batch that still waited for caller 2 would hang here
    done: list[list[Any]] = []
    thread = threading.Thread(target=lambda: done.append(_gather(gathering, source, (1, "e"))[0]))
    thread.start()
    thread.join(LIVENESS)
    assert done == [[(1, "e")]]


def test_gathering_stops_at_the_stop_item_and_at_the_limit() -> None:
    gathering = Gathering(linger=0.0)
    source: queue.Queue[Any] = queue.Queue()
    for item in [(1, "b"), "stop", (1, "c")]:
        source.put(item)
    assert _gather(gathering, source, (1, "a")) == ([(1, "a"), (1, "b")], True)
    assert source.get_nowait() == (1, "c")
    for n in range(5):
        source.put((None, n))
    batch, stopped = gathering.gather(
        source, (None, "x"), limit=3, weight=lambda _: 1, caller_of=lambda item: item[0]
    )
    assert len(batch) == 3 and not stopped and source.qsize() == 3
