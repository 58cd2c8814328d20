"""The contract every event store passes. Subclass :class:`EventStoreContract` per backend and
provide a ``store_url`` fixture (a URL that ``open_store`` can open in this process and in child
processes, each open giving its own instance on the same storage).

The class does not start with ``Test``, so pytest collects only the backend subclasses.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import Any

import pytest

from framework.application import Application
from framework.errors import (
    ConcurrencyError,
    EventTooLargeError,
    OutcomeUnknownError,
    StoreUnavailableError,
)
from framework.persistence import EventStore, NewEvent, RecordedEvent, Snapshot, open_store
from tests.support.bank import Account, Deposit, OpenAccount, Owner, Transfer, build

OWNER = Owner(name="Ann", email="ann@example.com")


def new_event(aggregate_id: uuid.UUID, version: int, body: str = "{}") -> NewEvent:
    return NewEvent(aggregate_id, version, "Test.Happened", body.encode())


def race_worker(url: str, name: str, account: str, attempts: int, seed: int) -> list[tuple]:
    """One writer process of the concurrency test: its own store instance, racing deposits."""
    app = build(url, name=name, max_conflict_retries=1)
    try:
        return [_attempt(app, uuid.UUID(account), seed * 1000 + i) for i in range(attempts)]
    finally:
        app.close()


def _attempt(app: Application, account: uuid.UUID, n: int) -> tuple:
    command = Deposit(account_id=account, amount=Decimal(1))
    try:
        result = app.execute(command)
    except ConcurrencyError:
        return ("conflict", str(command.command_id), None)
    except (OutcomeUnknownError, StoreUnavailableError):
        return ("info", str(command.command_id), None)
    return ("ok", str(command.command_id), result.versions[account])


class EventStoreContract:
    """Behaviour every :class:`~framework.persistence.EventStore` must have."""

    supports_processes = True
    threads = 8
    processes = 4
    attempts = 25

    @pytest.fixture
    def store_name(self) -> str:
        return f"bank_{uuid.uuid4().hex[:10]}"

    @pytest.fixture
    def store(self, store_url: str, store_name: str) -> Iterator[EventStore]:
        with open_store(store_url, name=store_name) as store:
            yield store

    def serving(self, app: Application) -> AbstractContextManager[Any]:
        """What must run while ``app`` executes commands (nothing on an embedded store)."""
        return contextlib.nullcontext()

    @pytest.fixture
    def app(self, store: EventStore, store_name: str) -> Iterator[Application]:
        app = build(store, name=store_name, snapshot_every=5)
        with self.serving(app):
            yield app

    # -- appending and reading ---------------------------------------------------------------

    def test_appends_and_reads_one_aggregate_in_version_order(self, store: EventStore) -> None:
        a = uuid.uuid4()
        store.append([new_event(a, 1, '{"n":1}'), new_event(a, 2, '{"n":2}')])
        store.append([new_event(a, 3, '{"n":3}')])
        events = store.read(a)
        assert [(e.version, e.state) for e in events] == [
            (1, b'{"n":1}'),
            (2, b'{"n":2}'),
            (3, b'{"n":3}'),
        ]
        assert all(e.aggregate_id == a and e.topic == "Test.Happened" for e in events)
        assert [e.version for e in store.read(a, after_version=1, up_to_version=2)] == [2]
        assert store.read(uuid.uuid4()) == []

    def test_a_taken_version_is_a_conflict_and_writes_nothing(self, store: EventStore) -> None:
        a, b = uuid.uuid4(), uuid.uuid4()
        store.append([new_event(a, 1)])
        head = store.head()
        with pytest.raises(ConcurrencyError):
            # b's event is fine, a's version 1 is taken: neither may land.
            store.append([new_event(b, 1), new_event(a, 1, '{"late":true}')])
        assert store.read(b) == []
        assert [e.state for e in store.read(a)] == [b"{}"]
        assert store.head() == head

    def test_a_version_gap_is_a_conflict_and_writes_nothing(self, store: EventStore) -> None:
        a = uuid.uuid4()
        store.append([new_event(a, 1)])
        with pytest.raises(ConcurrencyError):
            store.append([new_event(a, 3)])
        with pytest.raises(ConcurrencyError):
            store.append([new_event(a, 2), new_event(a, 4)])
        with pytest.raises(ConcurrencyError):
            store.append([new_event(uuid.uuid4(), 2)])
        assert [e.version for e in store.read(a)] == [1]

    def test_a_multi_aggregate_append_is_atomic(self, store: EventStore) -> None:
        ids = [uuid.uuid4() for _ in range(5)]
        positions = store.append([new_event(i, 1) for i in ids])
        assert all(len(store.read(i)) == 1 for i in ids)
        head = store.head()
        assert all(head[p] >= offset for p, offset in positions.items())

    def test_positions_returned_are_just_past_the_events_in_the_feed(
        self, store: EventStore
    ) -> None:
        a = uuid.uuid4()
        positions = store.append([new_event(a, 1), new_event(a, 2)])
        partition = store.partition_for(a)
        assert set(positions) == {partition}
        feed = [e for e in store.iter_partition(partition) if e.aggregate_id == a]
        assert [e.version for e in feed] == [1, 2]
        assert positions[partition] == feed[-1].offset + 1
        assert store.head()[partition] >= positions[partition]

    def test_feed_partitions_are_ordered_and_complete(self, store: EventStore) -> None:
        ids = [uuid.uuid4() for _ in range(20)]
        for version in (1, 2, 3):
            store.append([new_event(i, version) for i in ids])
        seen: list[RecordedEvent] = []
        for partition in range(store.partitions):
            events = list(store.iter_partition(partition))
            offsets = [e.offset for e in events]
            assert offsets == sorted(set(offsets)), "offsets strictly increase"
            seen.extend(events)
        ours = [e for e in seen if e.aggregate_id in set(ids)]
        assert Counter((e.aggregate_id, e.version) for e in ours) == Counter(
            (i, v) for i in ids for v in (1, 2, 3)
        )
        for i in ids:  # one aggregate's events stay in order in one partition
            assert [e.version for e in ours if e.aggregate_id == i] == [1, 2, 3]

    def test_read_partition_honours_start_and_limit(self, store: EventStore) -> None:
        a = uuid.uuid4()
        store.append([new_event(a, v) for v in range(1, 6)])
        partition = store.partition_for(a)
        everything = [e for e in store.iter_partition(partition) if e.aggregate_id == a]
        page = store.read_partition(partition, start=everything[1].offset, limit=2)
        assert [e.version for e in page] == [2, 3]

    def test_snapshots_keep_the_latest(self, store: EventStore) -> None:
        a = uuid.uuid4()
        assert store.latest_snapshot(a) is None
        store.save_snapshot(Snapshot(a, 5, "Account", b'{"v":5}'))
        store.save_snapshot(Snapshot(a, 10, "Account", b'{"v":10}'))
        store.save_snapshot(Snapshot(a, 10, "Account", b'{"v":10}'))  # idempotent
        latest = store.latest_snapshot(a)
        assert latest is not None and (latest.version, latest.state) == (10, b'{"v":10}')

    def test_feed_reader_starts_where_told_and_follows_new_events(self, store: EventStore) -> None:
        a = uuid.uuid4()
        store.append([new_event(a, 1), new_event(a, 2)])
        start = store.head()
        store.append([new_event(a, 3)])
        reader = store.feed(f"g-{uuid.uuid4().hex[:8]}", on_assign=lambda parts: dict(start))
        try:
            got: list[RecordedEvent] = []
            deadline = time.monotonic() + 30
            while not got and time.monotonic() < deadline:
                got = [e for e in reader.poll(max_records=100, timeout=0.5) if e.aggregate_id == a]
            assert [e.version for e in got] == [3]
        finally:
            reader.close()

    # -- through the application --------------------------------------------------------------

    def test_execute_is_idempotent_per_command_id(self, app: Application) -> None:
        a = uuid.uuid4()
        app.execute(OpenAccount(account_id=a, owner=OWNER))
        command = Deposit(account_id=a, amount=Decimal(5))
        first = app.execute(command)
        head = app.store.head()
        again = app.execute(command)
        assert again.replayed and not first.replayed
        assert again.versions == first.versions == {a: 2}
        assert app.store.head() == head
        assert app.load(Account, a).balance == Decimal(5)

    def test_a_transfer_changes_both_accounts_atomically(self, app: Application) -> None:
        a, b = uuid.uuid4(), uuid.uuid4()
        app.execute(OpenAccount(account_id=a, owner=OWNER))
        app.execute(OpenAccount(account_id=b, owner=OWNER))
        app.execute(Deposit(account_id=a, amount=Decimal(10)))
        result = app.execute(Transfer(source=a, target=b, amount=Decimal(4)))
        assert result.versions == {a: 3, b: 2}
        assert app.load(Account, a).balance == 6 and app.load(Account, b).balance == 4

    def test_loading_uses_snapshots_and_equals_a_full_replay(self, app: Application) -> None:
        a = uuid.uuid4()
        app.execute(OpenAccount(account_id=a, owner=OWNER))
        for _ in range(11):
            app.execute(Deposit(account_id=a, amount=Decimal(1)))
        snapshot = app.store.latest_snapshot(a)
        assert snapshot is not None and snapshot.version == 10
        fast = app.load(Account, a)
        replayed = app.using(app.store)
        replayed.snapshot_every = None
        assert vars(fast) == vars(replayed.load(Account, a))
        assert fast.balance == 11

    # -- concurrency (T1) ---------------------------------------------------------------------

    @pytest.mark.timeout(300)
    # -- size limits (T23) ------------------------------------------------------------------

    @pytest.mark.timeout(120)
    def test_oversized_events_are_refused_whole_before_anything_is_sent(
        self, store: EventStore
    ) -> None:
        limit, batch_limit = _limits(store)
        a = uuid.uuid4()
        store.append([new_event(a, 1)])
        outcomes: dict[str, str] = {}

        def attempt(case: str, events: list[NewEvent]) -> None:
            try:
                store.append(events)
                outcomes[case] = "ok"
            except EventTooLargeError as error:
                assert "accepts" in str(error) and "Nothing was written" in str(error)
                outcomes[case] = "refused"

        def sized(version: int, size: int) -> NewEvent:
            return NewEvent(a, version, "Test.Happened", b"x" * size)

        attempt("under", [sized(2, limit - 512)])
        attempt("over", [sized(3, limit + 1)])
        attempt("ten_mb", [sized(3, 10 * 1024 * 1024)])
        attempt("mixed_batch", [sized(3, 10), sized(4, limit + 1)])
        if batch_limit is not None:
            count = batch_limit // (limit - 512) + 1
            attempt("big_batch", [sized(3 + i, limit - 512) for i in range(count)])
        partial = len(store.read(a)) - 2
        attempt("after", [sized(3, 10)])
        print(
            f"T23[{type(self).__name__}]: limit={limit} batch_limit={batch_limit} "
            + " ".join(f"{case}={outcome}" for case, outcome in outcomes.items())
            + f" partial={partial}"
        )
        assert partial == 0
        assert outcomes.pop("under") == "ok" and outcomes.pop("after") == "ok"
        assert set(outcomes.values()) == {"refused"}
        assert [e.version for e in store.read(a)] == [1, 2, 3]

    def test_concurrent_writers_write_every_version_exactly_once(
        self, store_url: str, store_name: str, store: EventStore
    ) -> None:
        app = build(store, name=store_name, max_conflict_retries=1)
        with self.serving(app):
            self._race(app, store_url, store_name, store)

    def _race(self, app: Application, store_url: str, store_name: str, store: EventStore) -> None:
        account = uuid.uuid4()
        app.execute(OpenAccount(account_id=account, owner=OWNER))
        initial = len(store.read(account))

        barrier = threading.Barrier(self.threads)

        def thread_worker(seed: int) -> list[tuple]:
            barrier.wait()
            return [_attempt(app, account, seed * 1000 + i) for i in range(self.attempts)]

        outcomes: list[tuple] = []
        context = multiprocessing.get_context("spawn")
        processes = self.processes if self.supports_processes else 0
        with context.Pool(processes or 1) as pool:
            remote = [
                pool.apply_async(
                    race_worker, (store_url, store_name, str(account), self.attempts, 100 + p)
                )
                for p in range(processes)
            ]
            with ThreadPoolExecutor(self.threads) as threads:
                for result in threads.map(thread_worker, range(self.threads)):
                    outcomes.extend(result)
            for r in remote:
                outcomes.extend(r.get(timeout=240))

        events = store.read(account)
        figures = _check_history(events, outcomes, initial, app)
        print(
            f"T1[{type(self).__name__}]: attempts={len(outcomes)} ok={figures['ok']} "
            f"conflicts={figures['conflict']} info={figures['info']} "
            f"final_length={len(events)} dup_versions={figures['dup_versions']} "
            f"gaps={figures['gaps']} missing_ok={figures['missing_ok']}"
        )
        assert figures["dup_versions"] == 0
        assert figures["gaps"] == 0
        assert figures["missing_ok"] == 0
        assert figures["ok"] == len(events) - initial - figures["info_landed"]
        assert figures["ok"] > 0
        assert app.load(Account, account).balance == len(events) - initial

    @pytest.mark.timeout(240)
    def test_a_hot_aggregate_never_gives_up_in_one_process(self, app: Application) -> None:
        """Issue 13, item 7: 8 threads x 30 commands on one aggregate. Same-aggregate commands
        take turns in the process (embedded stores) or at the shard's owner (Kafka), so none
        exhausts its conflict retries."""
        account = uuid.uuid4()
        app.execute(OpenAccount(account_id=account, owner=OWNER))

        def deposit(_: int) -> str:
            try:
                app.execute(Deposit(account_id=account, amount=Decimal(1)))
                return "ok"
            except Exception as error:  # counted, then asserted on
                return type(error).__name__

        with ThreadPoolExecutor(8) as pool:
            outcomes = Counter(pool.map(deposit, range(8 * 30)))
        balance = app.load(Account, account).balance
        print(
            f"HOT-AGGREGATE[{type(self).__name__}]: commands=240 ok={outcomes['ok']} "
            f"exhausted={outcomes['ConflictRetriesExhaustedError']} "
            f"other={240 - outcomes['ok'] - outcomes['ConflictRetriesExhaustedError']} "
            f"balance={balance}"
        )
        assert outcomes == Counter({"ok": 240})
        assert balance == 240


def _limits(store: EventStore) -> tuple[int, int | None]:
    """The largest event the store accepts, and the largest append (None: no such limit)."""
    if hasattr(store, "max_event_bytes"):
        return store.max_event_bytes, store.max_append_bytes
    # Kafka: the record limit less the key and header bytes of these test events.
    return store.max_record_bytes - 217, None  # type: ignore[attr-defined]


def _check_history(
    events: list[RecordedEvent], outcomes: list[tuple], initial: int, app: Application
) -> dict[str, Any]:
    versions = [e.version for e in events]
    by_version = {e.version: e for e in events}
    kinds = Counter(kind for kind, _, _ in outcomes)
    landed_commands = {str(h.metadata.command_id) for h in app.history(events[0].aggregate_id)}
    missing_ok = sum(
        1
        for kind, command_id, version in outcomes
        if kind == "ok" and (version not in by_version or command_id not in landed_commands)
    )
    info_landed = sum(
        1 for kind, command_id, _ in outcomes if kind == "info" and command_id in landed_commands
    )
    wrote_on_conflict = sum(
        1
        for kind, command_id, _ in outcomes
        if kind == "conflict" and command_id in landed_commands
    )
    assert wrote_on_conflict == 0, "a command reported as a conflict wrote events"
    return {
        "ok": kinds["ok"],
        "conflict": kinds["conflict"],
        "info": kinds["info"],
        "info_landed": info_landed,
        "dup_versions": len(versions) - len(set(versions)),
        "gaps": (max(versions) - len(set(versions))) if versions else 0,
        "missing_ok": missing_ok,
    }
