"""A projection worker's live subscription to the events topic, as a consumer-group member.

The consumer reads with ``read_committed`` (aborted transactions never show), never commits
offsets to Kafka (``enable_auto_commit=False``; the worker keeps its positions in its own
database) and, when the group gives it partitions, asks the worker where to start in each and
seeks there. Offsets of consecutive events may differ by more than one (commit markers).

The rebalance listener runs on kafka-python's network thread, so it only calls ``on_assign``
and seeks. If ``on_assign`` raises, the partitions it was given stay paused (nothing is read
from an unknown position), its error is raised from the next ``poll``, and the poll after that
asks ``on_assign`` again.
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from framework.backends.kafka_client import (
    ConsumerRebalanceListener,
    KafkaConsumer,
    KafkaError,
    TopicPartition,
)
from framework.backends.kafka_index import TopicIndex
from framework.backends.kafka_records import NIL_UUID, decode_record
from framework.errors import StoreUnavailableError
from framework.persistence import (
    ConsumerSettings,
    FeedReader,
    OnAssign,
    OnRevoke,
    RecordedEvent,
)

__all__ = ["KafkaFeedReader"]

log = logging.getLogger(__name__)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Runs on the consumer's network thread: it only asks for offsets and seeks."""

    def __init__(self, reader: KafkaFeedReader) -> None:
        self._reader = reader

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._reader.unstarted.difference_update(revoked)
        parts = {tp.partition for tp in revoked}
        if parts and self._reader.on_revoke is not None:
            try:
                self._reader.on_revoke(parts)
            except Exception as error:  # raised from the next poll, in the worker's thread
                self._reader.callback_error = error

    def on_partitions_assigned(self, assigned: Any) -> None:
        parts = {tp.partition for tp in assigned}
        if not parts:
            return
        consumer = self._reader.consumer
        try:
            starts = dict(self._reader.on_assign(parts))
        except Exception as error:
            # Without a start position nothing may be read: hold the partitions, raise the
            # worker's own error from the next poll (kafka-python would wrap it) and ask again
            # on the poll after.
            consumer.pause(*assigned)
            self._reader.unstarted.update(assigned)
            self._reader.callback_error = error
            return
        for partition in parts:
            # A partition the worker has no position for starts at the beginning of the log.
            self._reader.read_to.pop(partition, None)
            consumer.seek(TopicPartition(self._reader.topic, partition), starts.get(partition, 0))


class KafkaFeedReader(FeedReader):
    """A :class:`FeedReader` over a ``KafkaConsumer`` in consumer group ``group``.

    Records are decoded as the store's index decodes them: one that breaks the record layout,
    or repeats a version another record took first (as the process's topic index says), is
    handed out with the nil aggregate id, version 0 and its ``problem``, so projections park it
    instead of applying it, and ``stats`` counts it (``malformed``, ``duplicate``).
    """

    index: TopicIndex | None = None
    """The topic index whose first-record-wins rule the feed applies; by default the store's
    (any open index of the topic in this process)."""

    def __init__(
        self,
        new_consumer: Callable[..., KafkaConsumer],
        *,
        topic: str,
        group: str,
        on_assign: OnAssign,
        on_revoke: OnRevoke | None,
        settings: ConsumerSettings | None = None,
    ) -> None:
        settings = settings or ConsumerSettings()
        self.topic = topic
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self.callback_error: Exception | None = None
        self.unstarted: set[Any] = set()  # assigned partitions on_assign failed for
        self.stats: Counter[str] = Counter()
        # Where each partition's previous batch ended (the consumer's position after it, past
        # any commit markers); forgotten on every seek.
        self.read_to: dict[int, int] = {}
        try:
            self.consumer = new_consumer(
                group_id=group,
                enable_auto_commit=False,
                isolation_level="read_committed",
                auto_offset_reset="earliest",
                # kafka-python's 45 s session timeout made a killed worker's partitions wait
                # 45 s for a new owner; the framework's default is 10 s.
                session_timeout_ms=int(settings.session_timeout * 1000),
                heartbeat_interval_ms=int(settings.heartbeat_interval * 1000),
                max_poll_interval_ms=int(settings.max_poll_interval * 1000),
                # Static membership: a restarted member with the same id takes its partitions
                # back at once (no rebalance); it never sends LeaveGroup, so its partitions wait
                # session_timeout for it when it stops for good.
                group_instance_id=settings.instance_id,
            )
            self.consumer.subscribe([topic], listener=_Listener(self))
            # With no metadata for the topic yet, the group leader may assign nothing and the
            # group would wait for a metadata refresh (minutes): have it before joining.
            self.consumer.partitions_for_topic(topic)
        except KafkaError as error:
            raise StoreUnavailableError(f"cannot subscribe to {topic!r}: {error}") from error

    def poll(self, *, max_records: int, timeout: float) -> list[RecordedEvent]:
        """The next events of the assigned partitions, each partition in offset order."""
        self._raise_callback_error()
        self._start_held_partitions()
        try:
            batch = self.consumer.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
        except KafkaError as error:
            self._raise_callback_error()
            raise StoreUnavailableError(f"cannot read {self.topic!r}: {error}") from error
        except (ValueError, TypeError, AssertionError, struct.error) as error:
            # kafka-python could not parse a fetched batch (e.g. a header name that is not
            # UTF-8): typed, and the worker polls again after its backoff.
            raise StoreUnavailableError(
                f"cannot decode a record batch of {self.topic!r}: {type(error).__name__}: {error}"
            ) from error
        self._raise_callback_error()
        events = [
            decode_record(
                r.key,
                r.value,
                r.headers,
                partition=r.partition,
                offset=r.offset,
            )
            for tp in sorted(batch, key=lambda tp: tp.partition)
            for r in batch[tp]
        ]
        index = self.index or TopicIndex.live(self.topic)
        started = {tp.partition: self.read_to.get(tp.partition) for tp in batch}
        for tp in batch:
            self.read_to[tp.partition] = int(self.consumer.position(tp))
        if index is not None and events:
            try:
                events = self._first_wins(index, events, started)
            except BaseException:
                # Nothing of this batch was handed out: read it again next time.
                for p, offset in _first_offsets(events).items():
                    self.seek(p, offset)
                raise
        for event in events:
            if event.problem:
                kind = "duplicate" if "repeats version" in event.problem else "malformed"
                self.stats[kind] += 1
                log.error(
                    "%s record at %s:%s offset %s: %s",
                    kind,
                    self.topic,
                    event.partition,
                    event.offset,
                    event.problem,
                )
        return events

    def _first_wins(
        self, index: TopicIndex, events: list[RecordedEvent], started: dict[int, int | None]
    ) -> list[RecordedEvent]:
        """Apply the index's rule to a polled batch: a record that repeats a version another
        record took first is handed out as a problem record, as the index serves it."""
        offsets: dict[int, list[int]] = {}
        for event in events:
            if not event.problem:
                offsets.setdefault(event.partition, []).append(event.offset)
        if not offsets:
            return events
        known = index.index.positions()
        behind = []
        for p, offs in offsets.items():
            start = known.get(p, 0)
            if start > max(offs):
                continue
            batch = [e for e in events if e.partition == p]
            begun = started.get(p)
            if batch[0].offset <= start or (begun is not None and begun <= start):
                # The batch continues the index: add it, instead of reading it twice.
                end = self.read_to.get(p, batch[-1].offset + 1)
                index.index.apply([e for e in batch if e.offset >= start], {p: end})
            else:
                behind.append(p)
        if behind:
            # Every polled record is below the last stable offset, so this reaches past them.
            index.catch_up(behind)
        problems = {
            (p, offset): problem
            for p, offs in offsets.items()
            for offset, problem in index.index.problems(p, offs).items()
        }
        if not problems:
            return events
        return [
            RecordedEvent(NIL_UUID, 0, e.topic, e.state, e.partition, e.offset, problem)
            if (problem := problems.get((e.partition, e.offset)))
            else e
            for e in events
        ]

    def _start_held_partitions(self) -> None:
        held = self.unstarted & set(self.consumer.assignment())
        self.unstarted.clear()
        if not held:
            return
        try:
            starts = dict(self.on_assign({tp.partition for tp in held}))
        except Exception:
            self.unstarted.update(held)
            raise
        for tp in held:
            self.read_to.pop(tp.partition, None)
            self.consumer.seek(tp, starts.get(tp.partition, 0))
        self.consumer.resume(*held)

    def _raise_callback_error(self) -> None:
        error, self.callback_error = self.callback_error, None
        if error is not None:
            raise error

    def seek(self, partition: int, offset: int) -> None:
        """Make the next poll of ``partition`` start at ``offset``."""
        self.read_to.pop(partition, None)
        self.consumer.seek(TopicPartition(self.topic, partition), offset)

    def assignment(self) -> set[int]:
        """The partitions this reader owns now."""
        return {tp.partition for tp in self.consumer.assignment()}

    def close(self) -> None:
        """Leave the group (the partitions go to the other members)."""
        try:
            self.consumer.close(autocommit=False)
        except KafkaError:
            log.debug("closing the feed consumer failed", exc_info=True)


def _first_offsets(events: Sequence[RecordedEvent]) -> dict[int, int]:
    first: dict[int, int] = {}
    for event in events:
        first.setdefault(event.partition, event.offset)
    return first
