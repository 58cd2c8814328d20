"""The Kafka event store against a real broker: what the contract cannot see from outside.

Needs ``scripts/kafka start`` (the ``kafka_bootstrap`` fixture fails under CI=true without it).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from framework.backends.kafka import KafkaEventStore, open_store, parse_url, writer_stats
from framework.backends.kafka_client import (
    KafkaAdminClient,
    KafkaConsumer,
    KafkaProducer,
    KafkaTimeoutError,
    QuietSelector,
    TopicPartition,
)
from framework.backends.kafka_records import NIL_UUID, partition_for
from framework.errors import (
    ConcurrencyError,
    ConfigurationError,
    CrossShardCommandError,
    EventTooLargeError,
    OutcomeUnknownError,
    TopicLayoutChangedError,
    UnsafeConfigurationError,
)
from framework.persistence import NewEvent, RecordedEvent, Snapshot

pytestmark = pytest.mark.kafka


def ev(aggregate_id: uuid.UUID, version: int, body: bytes = b"{}", **kw: object) -> NewEvent:
    return NewEvent(aggregate_id, version, "Test.Happened", body, **kw)  # type: ignore[arg-type]


def ids_in_partitions(partitions: int, each: int = 1) -> dict[int, list[uuid.UUID]]:
    """Aggregate ids falling in every partition."""
    found: dict[int, list[uuid.UUID]] = {p: [] for p in range(partitions)}
    while any(len(v) < each for v in found.values()):
        candidate = uuid.uuid4()
        bucket = found[partition_for(candidate, partitions)]
        if len(bucket) < each:
            bucket.append(candidate)
    return found


@pytest.fixture
def url(kafka_bootstrap: str) -> str:
    return f"kafka://{kafka_bootstrap}?partitions=3"


@pytest.fixture
def name(unique_name) -> str:  # type: ignore[no-untyped-def]
    return unique_name("kstore")


@pytest.fixture
def store(url: str, name: str) -> Iterator[KafkaEventStore]:
    with open_store(url, name=name) as opened:
        assert isinstance(opened, KafkaEventStore)
        yield opened


def committed_records(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, int]]:
    """(partition, offset) of every record a read_committed consumer sees."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        consumer.seek_to_beginning(*tps)
        seen: list[tuple[int, int]] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline
            for records in consumer.poll(timeout_ms=200).values():
                seen.extend((r.partition, r.offset) for r in records)
        return seen
    finally:
        consumer.close(autocommit=False)


# -- URL and options (no broker needed) -------------------------------------------------------


def test_url_options_and_security_settings_are_parsed() -> None:
    options = parse_url(
        "kafka://ann:s%40cret@h1:9092,h2:9093?partitions=6&shards=2&topic=t.events"
        "&index=/tmp/i.db&replication_factor=3&commit_timeout=5&security_protocol=SASL_SSL"
        "&sasl_mechanism=SCRAM-SHA-512&ssl_cafile=/etc/ca.pem&ssl_check_hostname=false"
    )
    assert options == {
        "bootstrap_servers": "h1:9092,h2:9093",
        "partitions": 6,
        "shards": 2,
        "topic": "t.events",
        "index": "/tmp/i.db",
        "replication_factor": 3,
        "commit_timeout": 5.0,
        "client": {
            "sasl_plain_username": "ann",
            "sasl_plain_password": "s@cret",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "ssl_cafile": "/etc/ca.pem",
            "ssl_check_hostname": False,
        },
    }


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("kafka://", ConfigurationError),
        ("kafka:///?partitions=3", ConfigurationError),
        ("kafka://h:9092?colour=blue", ConfigurationError),
        ("kafka://h:9092?partitions=many", ConfigurationError),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        open_store(url, name="x")


def test_nonsense_layout_is_refused_before_connecting() -> None:
    with pytest.raises(ConfigurationError):
        KafkaEventStore("x", bootstrap_servers="127.0.0.1:1", shards=0)
    with pytest.raises(ConfigurationError):
        KafkaEventStore("x", bootstrap_servers="")


# -- appending and reading --------------------------------------------------------------------


def test_the_store_clients_run_on_keels_client_defaults(store: KafkaEventStore) -> None:
    a = uuid.uuid4()
    store.append([ev(a, 1, b"1")])  # the store's own clients work on these defaults
    producer = store._new_producer()  # made as the store makes every producer
    try:
        assert producer.config["selector"] is QuietSelector
        assert producer.config["metrics_enabled"] is False
        assert not producer.metrics()  # no sensors at all
    finally:
        producer.close(timeout=5)
    explicit = KafkaConsumer(bootstrap_servers=store._servers, metrics_enabled=True)
    try:  # a setting given explicitly wins
        assert explicit.config["metrics_enabled"] is True
    finally:
        explicit.close()
    assert [e.state for e in store.read(a)] == [b"1"]


@pytest.mark.timeout(60)
def test_append_read_and_conflict(store: KafkaEventStore) -> None:
    a = uuid.uuid4()
    positions = store.append([ev(a, 1, b"1"), ev(a, 2, b"2")])
    assert set(positions) == {store.partition_for(a)}
    assert [(e.version, e.state) for e in store.read(a)] == [(1, b"1"), (2, b"2")]
    with pytest.raises(ConcurrencyError):
        store.append([ev(a, 2, b"late")])
    with pytest.raises(ConcurrencyError):
        store.append([ev(a, 4)])  # a gap is refused too
    with pytest.raises(ConcurrencyError):
        store.append([ev(a, 3), ev(a, 5)])  # and inside one append
    store.append([ev(a, 3)])
    assert [e.version for e in store.read(a, after_version=1, up_to_version=2)] == [2]
    assert [e.version for e in store.read(a)] == [1, 2, 3]


@pytest.mark.timeout(60)
def test_a_batch_across_partitions_is_atomic(store: KafkaEventStore, kafka_bootstrap: str) -> None:
    by_partition = ids_in_partitions(store.partitions)
    ids = [v[0] for v in by_partition.values()]
    positions = store.append([ev(i, 1) for i in ids])
    assert set(positions) == set(range(store.partitions))
    before = committed_records(kafka_bootstrap, store.topic, store.partitions)
    head = store.head()
    with pytest.raises(ConcurrencyError):
        # Versions 2 everywhere, but the last aggregate's version 1 is taken: nothing lands.
        store.append([ev(i, 2) for i in ids[:-1]] + [ev(ids[-1], 1)])
    assert store.head() == head
    assert committed_records(kafka_bootstrap, store.topic, store.partitions) == before
    assert all([e.version for e in store.read(i)] == [1] for i in ids)


@pytest.mark.timeout(60)
def test_route_with_places_an_event_beside_another_aggregate(store: KafkaEventStore) -> None:
    by_partition = ids_in_partitions(store.partitions)
    primary, elsewhere = by_partition[0][0], by_partition[1][0]
    positions = store.append([ev(primary, 1), ev(elsewhere, 1, route_with=primary)])
    assert set(positions) == {0}
    assert store.read(elsewhere)[0].partition == 0


@pytest.mark.timeout(60)
def test_offsets_are_sparse_and_head_is_past_the_commit_marker(store: KafkaEventStore) -> None:
    a = uuid.uuid4()
    p = store.partition_for(a)
    for version in range(1, 4):
        positions = store.append([ev(a, version)])
        assert store.head()[p] > positions[p]  # the commit marker takes an offset
    feed = store.read_partition(p, start=0, limit=100)
    offsets = [e.offset for e in feed]
    assert offsets == [0, 2, 4]  # one transaction each: a marker after every event
    assert store.read_partition(p, start=1, limit=100) == feed[1:]
    assert store.read_partition(p, start=2, limit=1) == feed[1:2]
    assert store.read_partition(store.partitions + 5, start=0, limit=10) == []
    assert list(store.iter_partition(p)) == feed


@pytest.mark.timeout(60)
def test_snapshots_live_in_the_local_index(store: KafkaEventStore) -> None:
    a = uuid.uuid4()
    assert store.latest_snapshot(a) is None
    store.save_snapshot(Snapshot(a, 3, "Acc", b"3"))
    store.save_snapshot(Snapshot(a, 2, "Acc", b"2"))  # older: ignored
    assert store.latest_snapshot(a) == Snapshot(a, 3, "Acc", b"3")


@pytest.mark.timeout(60)
def test_each_instance_has_its_own_index_file(url: str, name: str, tmp_path: Path) -> None:
    with open_store(url, name=name) as one, open_store(url, name=name) as two:
        assert isinstance(one, KafkaEventStore) and isinstance(two, KafkaEventStore)
        assert one.index_path is None  # opened on first use: a sender never needs one
        assert one.topic_index.index.path != two.topic_index.index.path
        a = uuid.uuid4()
        one.append([ev(a, 1)])
        assert [e.version for e in two.read(a)] == [1]  # the other instance catches up
        two.append([ev(a, 2)])  # and takes the writer over
        assert [e.version for e in one.read(a)] == [1, 2]
    index = tmp_path / "index.sqlite"
    with open_store(f"{url}&index={index}", name=name) as explicit:
        assert isinstance(explicit, KafkaEventStore) and explicit.index_path == index
        with pytest.raises(ConfigurationError, match="in use"):
            open_store(f"{url}&index={index}", name=name)


@pytest.mark.timeout(60)
def test_too_large_events_are_refused_whole(store: KafkaEventStore) -> None:
    a = uuid.uuid4()
    with pytest.raises(EventTooLargeError):
        store.append([ev(a, 1), ev(a, 2, b"x" * 2_000_000)])
    assert store.read(a) == []


# -- group commit -----------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_concurrent_appends_share_transactions_and_conflicts_fail_alone(
    store: KafkaEventStore,
) -> None:
    contested = uuid.uuid4()
    store.append([ev(uuid.uuid4(), 1)])  # initialise the writer first
    before = writer_stats(store)[0]["transactions"]
    barrier = threading.Barrier(24)

    def one(i: int) -> str:
        barrier.wait()
        # Eight appends race for version 1 of one aggregate; the others write their own.
        target = contested if i % 3 == 0 else uuid.uuid4()
        try:
            store.append([ev(target, 1, str(i).encode()), ev(target, 2)])
        except ConcurrencyError:
            return "conflict"
        return "ok"

    with ThreadPoolExecutor(24) as pool:
        outcomes = Counter(pool.map(one, range(24)))
    transactions = writer_stats(store)[0]["transactions"] - before
    print(f"group commit: appends=24 transactions={transactions} outcomes={dict(outcomes)}")
    assert outcomes == {"ok": 17, "conflict": 7}
    assert [e.version for e in store.read(contested)] == [1, 2]
    assert transactions < 24


# -- shards and layout ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_commands_across_shards_are_refused(kafka_bootstrap: str, name: str) -> None:
    with open_store(f"kafka://{kafka_bootstrap}?partitions=4&shards=2", name=name) as store:
        assert isinstance(store, KafkaEventStore)
        by_partition = ids_in_partitions(4)
        same_shard = [by_partition[0][0], by_partition[2][0]]
        store.append([ev(i, 1) for i in same_shard])
        with pytest.raises(CrossShardCommandError):
            store.append([ev(by_partition[0][0], 2), ev(by_partition[1][0], 1)])
        assert [e.version for e in store.read(by_partition[0][0])] == [1]
        store.append([ev(by_partition[1][0], 1)])
        assert sorted(store._writers) == [0, 1]
        assert store._writers[1].transactional_id == f"{name}-writer-1"


@pytest.mark.timeout(60)
def test_a_changed_layout_is_refused(kafka_bootstrap: str, name: str) -> None:
    base = f"kafka://{kafka_bootstrap}"
    open_store(f"{base}?partitions=2&shards=2", name=name).close()
    open_store(base, name=name).close()  # adopting the recorded layout is fine
    with pytest.raises(TopicLayoutChangedError, match="shards=1"):
        open_store(f"{base}?shards=1", name=name)
    with pytest.raises(TopicLayoutChangedError, match="partitions=3"):
        open_store(f"{base}?partitions=3", name=name)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_partitions({f"{name}.events": 3})
    finally:
        admin.close()
    with pytest.raises(TopicLayoutChangedError, match="now has 3 partitions"):
        open_store(base, name=name)


@pytest.mark.timeout(30)
def test_unsafe_client_settings_are_refused_before_connecting() -> None:
    with pytest.raises(UnsafeConfigurationError, match="acks"):
        open_store("kafka://127.0.0.1:1?acks=1", name="x")


# -- the feed ---------------------------------------------------------------------------------


def poll_until(reader, predicate, seconds: float = 30) -> list[RecordedEvent]:  # type: ignore[no-untyped-def]
    got: list[RecordedEvent] = []
    deadline = time.monotonic() + seconds
    while not predicate(got) and time.monotonic() < deadline:
        got.extend(reader.poll(max_records=500, timeout=0.5))
    return got


@pytest.mark.timeout(90)
def test_feed_seeks_where_on_assign_says_and_shares_partitions(store: KafkaEventStore) -> None:
    by_partition = ids_in_partitions(store.partitions, each=2)
    firsts = [ids[0] for ids in by_partition.values()]
    seconds = [ids[1] for ids in by_partition.values()]
    store.append([ev(i, 1) for i in firsts])
    start = store.head()
    store.append([ev(i, 1) for i in seconds])
    assigned: list[set[int]] = []

    def on_assign(parts: set[int]) -> dict[int, int]:
        assigned.append(set(parts))
        return {p: start[p] for p in parts}

    group = f"g-{uuid.uuid4().hex[:8]}"
    reader = store.feed(group, on_assign=on_assign)
    try:
        got = poll_until(reader, lambda got: len(got) >= len(seconds))
        assert sorted(e.aggregate_id for e in got) == sorted(seconds)
        assert reader.assignment() == set(range(store.partitions))
        assert assigned[0] == set(range(store.partitions))
        reader.seek(0, 0)
        again = poll_until(reader, lambda got: len(got) >= 2)
        assert [e.aggregate_id for e in again] == [by_partition[0][0], by_partition[0][1]]
        # A second member of the group takes some partitions over.
        revoked: list[set[int]] = []
        other = store.feed(group, on_assign=on_assign, on_revoke=revoked.append)
        try:
            deadline = time.monotonic() + 30
            # Until the rebalance settles: the old member gives partitions up on its next poll.
            while time.monotonic() < deadline and not (
                reader.assignment()
                and other.assignment()
                and reader.assignment() | other.assignment() == set(range(store.partitions))
                and not reader.assignment() & other.assignment()
            ):
                reader.poll(max_records=10, timeout=0.2)
                other.poll(max_records=10, timeout=0.2)
            assert reader.assignment() and other.assignment()
            assert not reader.assignment() & other.assignment()
        finally:
            other.close()
    finally:
        reader.close()


@pytest.mark.timeout(60)
def test_malformed_records_come_out_as_events_to_dead_letter(
    store: KafkaEventStore, kafka_bootstrap: str
) -> None:
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        producer.send(store.topic, key=b"not-a-uuid", value=b"raw", partition=0).get(10)
        producer.send(
            store.topic,
            key=str(uuid.uuid4()).encode(),
            value=b"no-version",
            headers=[("keel.topic", b"Some.Topic")],
            partition=0,
        ).get(10)
    finally:
        producer.close()
    good = ids_in_partitions(store.partitions)[0][0]
    store.append([ev(good, 1)])
    reader = store.feed(f"g-{uuid.uuid4().hex[:8]}", on_assign=lambda parts: {})
    try:
        got = poll_until(reader, lambda got: any(e.aggregate_id == good for e in got))
    finally:
        reader.close()
    bad = [e for e in got if e.aggregate_id == NIL_UUID]
    assert [(e.version, e.topic, e.state) for e in bad] == [
        (0, "", b"raw"),
        (0, "Some.Topic", b"no-version"),
    ]
    indexed = store.read_partition(0, start=0, limit=10)
    assert [e.state for e in indexed] == [b"raw", b"no-version", b"{}"]
    assert [e.version for e in store.read(good)] == [1]
    assert store.read(NIL_UUID) == []


@pytest.mark.timeout(90)
def test_a_failing_on_assign_holds_its_partitions_and_is_asked_again(
    store: KafkaEventStore,
) -> None:
    a = uuid.uuid4()
    store.append([ev(a, 1), ev(a, 2)])
    start = store.head()
    store.append([ev(a, 3)])
    calls: list[set[int]] = []

    class Unavailable(Exception):
        pass

    def on_assign(parts: set[int]) -> dict[int, int]:
        calls.append(set(parts))
        if len(calls) == 1:
            raise Unavailable("the position table is locked")
        return {p: start[p] for p in parts}

    reader = store.feed(f"g-{uuid.uuid4().hex[:8]}", on_assign=on_assign)
    try:
        with pytest.raises(Unavailable):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                assert reader.poll(max_records=100, timeout=0.5) == []
        got = poll_until(reader, lambda got: len(got) >= 1)
        assert [(e.aggregate_id, e.version) for e in got] == [(a, 3)]
        assert calls == [set(range(store.partitions))] * 2
    finally:
        reader.close()


@pytest.mark.timeout(120)
def test_an_unanswered_commit_is_settled_by_looking_in_the_topic(
    url: str, name: str, kafka_bootstrap: str
) -> None:
    """A commit that does not answer in time: committed (the answer was lost), never sent, or
    unknowable (the writer cannot re-initialise)."""
    store = open_store(f"{url}&commit_timeout=1.5&append_timeout=3", name=name)
    assert isinstance(store, KafkaEventStore)
    mode = {"commit": "normal", "init": "normal"}
    factory = store._new_producer

    def producer(**settings: object) -> KafkaProducer:
        made = factory(**settings)
        commit, init = made.commit_transaction, made.init_transactions

        def hanging_commit() -> None:
            how, mode["commit"] = mode["commit"], "normal"
            if how == "lose-answer":
                commit()
            if how != "normal":
                time.sleep(4)  # longer than commit_timeout: the writer gives up waiting
                return
            commit()

        def failing_init() -> None:
            if mode["init"] == "fail":
                raise KafkaTimeoutError("injected: the coordinator is unreachable")
            init()

        made.commit_transaction = hanging_commit
        made.init_transactions = failing_init
        return made

    store._new_producer = producer  # type: ignore[method-assign]
    try:
        a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        store.append([ev(a, 1)])  # the writer is up
        mode["commit"] = "lose-answer"
        found = store.append([ev(a, 2, b"answer lost")])
        mode["commit"] = "never-sent"
        rewritten = store.append([ev(b, 1, b"never sent")])
        mode["commit"], mode["init"] = "lose-answer", "fail"
        with pytest.raises(OutcomeUnknownError):
            store.append([ev(c, 1, b"unknowable")])
        mode["init"] = "normal"
        with pytest.raises(ConcurrencyError):  # it had landed: a retry finds the version taken
            store.append([ev(c, 1, b"unknowable")])
        stats = writer_stats(store)[0]
        assert found == {store.partition_for(a): store.read(a)[-1].offset + 1}
        assert rewritten == {store.partition_for(b): store.read(b)[-1].offset + 1}
        states = Counter(
            e.state
            for p in range(store.partitions)
            for e in store.read_partition(p, start=0, limit=100)
        )
    finally:
        store.close()
    print(
        f"unknown outcomes: settled={stats['unknown']} found={int(states[b'answer lost'])} "
        f"rewritten={int(states[b'never sent'])} unknowable_landed={int(states[b'unknowable'])}"
    )
    assert states[b"answer lost"] == states[b"never sent"] == states[b"unknowable"] == 1
    assert stats["unknown"] == 3


@pytest.mark.timeout(90)
def test_an_index_built_for_a_deleted_namesake_topic_is_not_served(
    kafka_bootstrap: str, name: str, tmp_path: Path
) -> None:
    url = f"kafka://{kafka_bootstrap}?partitions=1&index={tmp_path / 'index.sqlite'}"
    a = uuid.uuid4()
    with open_store(url, name=name) as store:
        store.append([ev(a, 1, b"old")])
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_topics([f"{name}.events", f"{name}.events.layout"])
        deadline = time.monotonic() + 30
        while {f"{name}.events", f"{name}.events.layout"} & set(admin.list_topics()):
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        admin.close()
    with open_store(url, name=name) as store:
        assert store.read(a) == []  # the topic id changed: the index was emptied
        store.append([ev(a, 1, b"new")])
        assert [e.state for e in store.read(a)] == [b"new"]
