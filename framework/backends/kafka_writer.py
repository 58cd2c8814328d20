"""The fenced transactional writer of one shard, with group commit.

A shard is a fixed set of partitions written by one transactional id, ``<name>-writer-<shard>``.
``init_transactions()`` fences every older producer of that id and completes (commits or aborts)
whatever transaction it left open, so after it the writer reads its partitions to the end into the
local index and is, until someone fences it in turn, the only writer there: its version checks
against the index cannot be stale. A fenced producer can commit nothing, so a check made before
another process took over never lands; the writer re-initialises, catches up and checks again.

Appends from every thread of the process queue here; one thread takes as many as are waiting,
checks each against the index and the appends before it in the batch (a conflicting append fails
alone), writes the rest in one transaction and hands each caller its own result.

A commit that does not answer in time has an unknown outcome. The writer drops the producer,
initialises a new one (which settles the old transaction either way), reads to the end again and
looks for the batch's records at the offsets the broker gave them: found means committed; absent
means aborted, and the appends are checked and written again. Only when the writer cannot get
back in touch with the cluster does an append end in :class:`OutcomeUnknownError`.
"""

from __future__ import annotations

import logging
import queue
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from framework.backends.kafka_client import (
    InvalidProducerEpochError,
    KafkaError,
    KafkaProducer,
    ProducerFencedError,
)
from framework.backends.kafka_index import TopicIndex
from framework.backends.kafka_markers import MarkerWatch, positions_of
from framework.backends.kafka_records import encode_event
from framework.errors import (
    ConcurrencyError,
    OutcomeUnknownError,
    StoreError,
    StoreUnavailableError,
    WriterFencedError,
)
from framework.persistence import NewEvent, Positions, RecordedEvent

__all__ = [
    "AppendRequest",
    "BoundedCallTimeout",
    "Gathering",
    "ShardWriter",
    "ShardWriterSettings",
    "call_bounded",
    "close_quietly",
    "is_fenced",
    "recorded_at",
    "remaining_ms",
]

log = logging.getLogger(__name__)

_STOP = object()
DEADLINE_SLACK = 1.0
"""Seconds past its ``append_timeout`` a caller still waits for a writer about to finish."""


class BoundedCallTimeout(Exception):
    """A call wrapped by :func:`call_bounded` did not return in time (it may still run)."""


def call_bounded(fn: Callable[[], Any], timeout: float, name: str = "kafka-call") -> Any:
    """Run ``fn`` in a daemon thread and wait at most ``timeout`` seconds for it.

    kafka-python's ``commit_transaction()`` and ``abort_transaction()`` wait with no timeout;
    a call left hanging keeps its thread, which dies with the process.
    """
    outcome: list[Any] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as error:  # handed to the caller below
            outcome.append((False, error))
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    if not done.wait(timeout):
        raise BoundedCallTimeout(f"{name} did not return in {timeout} s")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def recorded_at(event: NewEvent, metadata: Any) -> RecordedEvent:
    """``event`` as written, at the partition and offset a produce response (``metadata``)
    gave it."""
    return RecordedEvent(
        event.aggregate_id,
        event.version,
        event.topic,
        event.state,
        metadata.partition,
        metadata.offset,
    )


@dataclass(eq=False)
class AppendRequest:
    """One caller's append, waiting in a shard writer's queue."""

    events: Sequence[NewEvent]
    partitions: Sequence[int]
    deadline: float = float("inf")
    """``time.monotonic()`` past which the caller no longer waits."""
    caller: int = field(default_factory=threading.get_ident)
    """The appending thread (callers that come back in turn need not be waited for)."""
    recorded: list[RecordedEvent] = field(default_factory=list)
    positions: Positions | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"
    """queued, then taken (by the writer) or abandoned (by its caller): never both."""
    _claim: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> bool:
        """The writer starts on this append; False when its caller gave up or its deadline
        passed in the queue (then it is failed here and must not be written)."""
        with self._claim:
            if self.state == "queued" and time.monotonic() >= self.deadline:
                self.state = "abandoned"
                self.fail(
                    StoreUnavailableError(
                        "the append's deadline passed while it waited behind other appends; "
                        "nothing was written"
                    )
                )
            elif self.state == "queued":
                self.state = "taken"
            return self.state == "taken"

    def abandon(self) -> bool:
        """The caller stops waiting; True when the writer never started on it."""
        with self._claim:
            if self.state == "queued":
                self.state = "abandoned"
            return self.state == "abandoned"

    def succeed(self, recorded: list[RecordedEvent]) -> None:
        self.recorded, self.positions = recorded, positions_of(recorded)
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


class _Fenced(Exception):
    pass


class _Failed(Exception):
    """The transaction did not commit (it never reached the commit call)."""


class _Unknown(Exception):
    """The commit was sent and its answer did not come back."""


class Gathering:
    """Group commit's batching rule, for a queue that callers in other threads fill: take the
    first item and whatever else is waiting; when the last two batches held several callers,
    linger up to ``linger`` seconds for them to come back (they were waiting on those
    transactions and return together), but only until every one of them is back: no one else is
    coming then. A lone caller never waits.

    Two batches, not one: callers that fell into alternate transactions (half of them queue
    while the other half's commit is under way) are each other's missing half, and waiting for
    the callers of the last batch alone would keep them apart for good."""

    def __init__(self, linger: float) -> None:
        self.linger = linger
        self._last: set[int] = set()
        self._before: set[int] = set()

    def gather(
        self,
        source: queue.Queue[Any],
        first: Any,
        *,
        limit: int,
        weight: Callable[[Any], int],
        caller_of: Callable[[Any], int | None],
        stop: object = None,
    ) -> tuple[list[Any], bool]:
        """The batch starting with ``first`` (up to ``limit`` of ``weight``), and whether
        ``stop`` (never in the batch) was taken from ``source``."""
        batch, total = [first], weight(first)
        caller = caller_of(first)
        callers = set() if caller is None else {caller}
        expected = self._last | self._before
        until = time.monotonic() + (self.linger if len(expected) > 1 else 0.0)
        stopped = False
        while total < limit:
            back = expected <= callers
            try:
                item = source.get(timeout=0 if back else max(0.0, until - time.monotonic()))
            except queue.Empty:
                break
            if stop is not None and item is stop:
                stopped = True
                break
            batch.append(item)
            total += weight(item)
            caller = caller_of(item)
            if caller is not None:
                callers.add(caller)
        self._before, self._last = self._last, callers
        return batch, stopped


@dataclass
class ShardWriterSettings:
    """Tuning of a :class:`ShardWriter` (see the store's URL options)."""

    commit_timeout: float = 30.0
    append_timeout: float = 60.0
    max_batch: int = 1000
    stable_timeout: float = 10.0
    linger: float = 0.002
    """How long a batch waits for more appends, when the last batch had several (a lone
    caller never waits)."""


class ShardWriter:
    """Owns one shard's transactional id and writes every append of this process to it."""

    def __init__(
        self,
        *,
        topic: str,
        shard: int,
        partitions: Sequence[int],
        transactional_id: str,
        producer_factory: Callable[..., KafkaProducer],
        topic_index: TopicIndex,
        settings: ShardWriterSettings,
    ) -> None:
        self.topic = topic
        self.shard = shard
        self.partitions = list(partitions)
        self.transactional_id = transactional_id
        self._new_producer = producer_factory
        self._topic_index = topic_index
        self._settings = settings
        self._producer: KafkaProducer | None = None
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self.stats = {"transactions": 0, "inits": 0, "fenced": 0, "unknown": 0, "batched": 0}
        self._markers = MarkerWatch(
            lambda partitions: topic_index.end_offsets(partitions),
            stable_timeout=settings.stable_timeout,
            name=transactional_id,
        )
        self._thread = threading.Thread(
            target=self._run, name=f"keel-writer-{transactional_id}", daemon=True
        )
        self._thread.start()

    def append(self, events: Sequence[NewEvent], partitions: Sequence[int]) -> Positions:
        """Queue ``events`` (already placed in ``partitions``) and wait for their outcome."""
        if self._closed:
            raise StoreError("the event store is closed")
        timeout = self._settings.append_timeout
        request = AppendRequest(events, partitions, deadline=time.monotonic() + timeout)
        self._queue.put(request)
        # The writer works to the request's deadline (it connects, fences and retries within
        # it); a writer stuck in one call past it is not waited for beyond a little slack.
        give_up = request.deadline + DEADLINE_SLACK
        while not request.done.wait(max(0.0, min(0.5, give_up - time.monotonic()))):
            if not (self._thread.is_alive() and self._markers.is_alive()):
                raise StoreError("the shard writer thread stopped")
            if time.monotonic() >= give_up:
                if request.abandon():
                    raise StoreUnavailableError(
                        f"the append waited {timeout:g} s (append_timeout) behind other "
                        "appends and was not started; nothing was written"
                    )
                raise OutcomeUnknownError(
                    f"the append got no outcome within {timeout:g} s (append_timeout: the "
                    "cluster is slow or out of reach); it may or may not be written: retry "
                    "with the same command id"
                )
        if request.error is not None:
            raise request.error
        assert request.positions is not None
        return request.positions

    def close(self) -> None:
        """Finish queued appends, then release the producer."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(self._settings.append_timeout)
        self._markers.close(self._settings.stable_timeout + DEADLINE_SLACK)
        self._drop_producer()

    # The writer thread.

    def _run(self) -> None:
        gathering = Gathering(self._settings.linger)
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch, stop = gathering.gather(
                self._queue,
                item,
                limit=self._settings.max_batch,
                weight=lambda request: len(request.events),
                caller_of=lambda request: request.caller,
                stop=_STOP,
            )
            batch = [request for request in batch if request.take()]
            try:
                if batch:
                    self._write(batch)
            except BaseException as error:  # never leave a caller waiting
                log.exception("shard writer %s failed", self.transactional_id)
                for request in batch:
                    if not request.done.is_set():
                        request.fail(StoreError(f"the shard writer failed: {error!r}"))
            if stop:
                return

    def _write(self, batch: list[AppendRequest]) -> None:
        self.stats["batched"] += len(batch)
        deadline = min(request.deadline for request in batch)
        pending = batch
        attempt = failures = 0
        last: StoreError = StoreUnavailableError("nothing was written")
        while pending:
            attempt += 1
            if attempt > 1 and (time.monotonic() >= deadline or failures >= 3):
                for request in pending:
                    request.fail(last)
                return
            try:
                producer = self._ready_producer(deadline)
            except StoreUnavailableError as error:
                # Nothing of this batch is written; the cluster may come back before the deadline.
                last = error
                time.sleep(min(1.0, 0.1 * attempt))
                continue
            accepted = self._check(pending)
            if not accepted:
                return
            try:
                recorded = self._transact(producer, accepted)
            except _Unknown as unknown:
                self.stats["unknown"] += 1
                pending = self._settle_unknown(accepted, unknown, deadline)
                last = StoreUnavailableError(
                    "commits kept timing out (each was settled as not written); nothing was written"
                )
            except _Fenced:
                self.stats["fenced"] += 1
                self._drop_producer()
                pending = accepted
                last = WriterFencedError(
                    f"writer {self.transactional_id} was fenced by another process on every "
                    "attempt; nothing was written"
                )
            except _Failed as error:
                failures += 1
                self._drop_producer()
                pending = accepted
                last = StoreUnavailableError(
                    f"the transaction failed; nothing was written: {error}"
                )
            else:
                self._finish(accepted, recorded, deadline)
                return
            if pending:
                # Writers of one shard in several processes take turns: back off at random.
                time.sleep(random.uniform(0, min(1.0, 0.025 * 2**attempt)))

    def _ready_producer(self, deadline: float) -> KafkaProducer:
        """The producer, (re)initialised and with the shard's partitions read to the end;
        connecting and fencing end by ``deadline``."""
        if self._producer is not None:
            return self._producer
        try:
            # kafka-python connects in the constructor, for 30 s unless told otherwise.
            producer = self._new_producer(
                transactional_id=self.transactional_id,
                bootstrap_timeout_ms=remaining_ms(deadline),
            )
        except KafkaError as error:
            raise StoreUnavailableError(f"cannot create a Kafka producer: {error}") from error
        try:
            # init_transactions fences older producers of this id and settles their transaction.
            wait = min(self._settings.commit_timeout, remaining_ms(deadline) / 1000)
            call_bounded(producer.init_transactions, wait, "init")
        except (KafkaError, BoundedCallTimeout) as error:
            close_quietly(producer)
            raise StoreUnavailableError(
                f"cannot initialise transactions for {self.transactional_id}: {error}"
            ) from error
        self.stats["inits"] += 1
        try:
            self._topic_index.catch_up(self.partitions, force=True)
        except StoreUnavailableError:
            close_quietly(producer)
            raise
        self._producer = producer
        return producer

    def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            close_quietly(producer)

    def _check(self, pending: list[AppendRequest]) -> list[AppendRequest]:
        """Fail the appends whose versions are taken; return the others, checked in order."""
        ids = {e.aggregate_id for r in pending for e in r.events}
        known = self._topic_index.index.current_versions(ids)
        accepted = []
        for request in pending:
            mine = dict(known)
            conflict = None
            for event in request.events:
                # Check this event is the next in its sequence.
                expected = mine[event.aggregate_id] + 1
                if event.version != expected:
                    conflict = (event, expected)
                    break
                mine[event.aggregate_id] = event.version
            if conflict is None:
                known = mine
                accepted.append(request)
            else:
                event, expected = conflict
                request.fail(
                    ConcurrencyError(
                        f"aggregate {event.aggregate_id} is at version {expected - 1}, so the "
                        f"next event must have version {expected}, not {event.version}; "
                        "nothing was written"
                    )
                )
        return accepted

    def _transact(
        self, producer: KafkaProducer, accepted: list[AppendRequest]
    ) -> list[list[RecordedEvent]]:
        timeout = self._settings.commit_timeout
        sent = []
        try:
            producer.begin_transaction()
            for request in accepted:
                for event, partition in zip(request.events, request.partitions, strict=True):
                    key, value, headers = encode_event(event)
                    future = producer.send(
                        self.topic, key=key, value=value, headers=headers, partition=partition
                    )
                    sent.append((request, event, future))
            deadline = time.monotonic() + timeout
            recorded: dict[int, list[RecordedEvent]] = {id(r): [] for r in accepted}
            for request, event, future in sent:
                metadata = future.get(timeout=max(0.1, deadline - time.monotonic()))
                recorded[id(request)].append(recorded_at(event, metadata))
        except Exception as error:
            self._abort(producer)
            if is_fenced(producer, error):
                raise _Fenced(str(error)) from error
            raise _Failed(repr(error)) from error
        try:
            call_bounded(producer.commit_transaction, timeout, "commit")
        except BoundedCallTimeout as error:
            raise _Unknown([recorded[id(r)] for r in accepted]) from error
        except KafkaError as error:
            # Even "fenced" is no proof: a retried EndTxn is refused once another producer has
            # taken the id, though the first attempt may have committed. Settle it.
            raise _Unknown([recorded[id(r)] for r in accepted]) from error
        self.stats["transactions"] += 1
        return [recorded[id(r)] for r in accepted]

    def _abort(self, producer: KafkaProducer) -> None:
        try:
            call_bounded(producer.abort_transaction, self._settings.commit_timeout, "abort")
        except (KafkaError, BoundedCallTimeout) as error:
            # A transaction we never asked to commit cannot commit; the next init aborts it.
            log.debug("abort of %s failed (%s); re-initialising", self.transactional_id, error)
        self._drop_producer()

    def _settle_unknown(
        self, accepted: list[AppendRequest], unknown: _Unknown, deadline: float
    ) -> list[AppendRequest]:
        """Find out whether an unanswered commit happened; return the appends to write again."""
        self._drop_producer()
        log.warning(
            "commit of %s got no definite answer (%r); settling it",
            self.transactional_id,
            unknown.__cause__,
        )
        delay = 0.1
        while True:
            try:
                self._ready_producer(deadline)
                break
            except StoreUnavailableError as error:
                # The cluster may be electing a new leader or coordinator: keep asking a while.
                if time.monotonic() + delay > deadline:
                    for request in accepted:
                        request.fail(
                            OutcomeUnknownError(
                                "the commit did not answer and the store could not find out "
                                f"whether it happened ({error}); retry with the same command id"
                            )
                        )
                    return []
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        again = []
        index = self._topic_index.index
        for request, recorded in zip(accepted, unknown.args[0], strict=True):
            present = [index.contains(event) for event in recorded]
            if all(present):
                self._markers.hand(request, recorded, deadline)
            elif not any(present):
                again.append(request)
            else:  # A transaction is atomic: this cannot happen.
                request.fail(OutcomeUnknownError("the append was found only in part"))
        return again

    def _finish(
        self, accepted: list[AppendRequest], recorded: list[list[RecordedEvent]], deadline: float
    ) -> None:
        everything = [event for events in recorded for event in events]
        try:
            self._topic_index.index.add_committed(everything)
        except sqlite3.Error:
            # The check of the next batch must see these events: re-initialising reads the
            # shard's partitions to the end again.
            log.exception("could not index the committed events; re-initialising the writer")
            self._drop_producer()
        # The callers hear once the commit markers are visible; the next batch need not wait.
        for request, events in zip(accepted, recorded, strict=True):
            self._markers.hand(request, events, deadline)


def remaining_ms(deadline: float, least: float = 0.2) -> int:
    """Milliseconds to ``deadline``, at least ``least`` seconds' worth (a client needs some)."""
    return int(max(least, deadline - time.monotonic()) * 1000)


def is_fenced(producer: KafkaProducer, error: BaseException) -> bool:
    fencing = (ProducerFencedError, InvalidProducerEpochError)
    if isinstance(error, fencing) or any(isinstance(a, fencing) for a in error.args):
        return True
    manager = getattr(producer, "_transaction_manager", None)
    return isinstance(getattr(manager, "last_error", None), fencing)


def close_quietly(producer: KafkaProducer) -> None:
    def close() -> None:
        try:
            producer.close(timeout=0)
        except Exception:  # closing a broken producer may fail; it is discarded either way
            log.debug("closing a producer failed", exc_info=True)

    threading.Thread(target=close, name="keel-producer-close", daemon=True).start()
