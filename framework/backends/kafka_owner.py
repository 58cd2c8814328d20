"""Shard owners: the one process that decides a writer shard's commands (design.md, 12).

Writer processes are members of the consumer group ``<name>-writers`` on ``<name>.commands``,
which has one partition per writer shard, so Kafka's group protocol gives each shard to one
member. When a member is given a shard, its :class:`ShardOwner`

1. fences the shard: ``init_transactions()`` on ``<name>-writer-<shard>`` settles whatever the
   previous owner left open and makes any older producer of that id unable to commit;
2. reads the shard's partitions of the events topic to the end into the local index;
3. only then starts reading commands, from the offset the group committed last.

From then on it is the only writer of those partitions, so the state it decides on is current by
construction: nothing is re-read from Kafka, and aggregates stay in memory between commands (a
command takes the cached aggregate; only a committed decision puts it back). Each batch of
commands becomes one Kafka transaction holding the events, each command's record (its
idempotency key), the results the senders wait for and the consumed command offsets, so a
command is executed exactly once across crashes and rebalances.

Whenever a transaction fails, is fenced or does not answer, the owner drops its producer and its
cache, fences again (while Kafka still gives it the shard), reads to the end, and decides the
same commands again: those that did commit find their command record and replay their result.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from framework.application import CommandResult, Decision, UnitOfWork, a_an
from framework.backends.kafka_client import (
    ConsumerRebalanceListener,
    GroupStickyAssignor,
    KafkaError,
    KafkaProducer,
    TopicPartition,
    add_partitions_to_transaction,
)
from framework.backends.kafka_commands import (
    KafkaCommandRouter,
    ShardMoved,
    caller_of,
    command_id_of,
    decode_command,
    encode_result,
    traceparent_of,
)
from framework.backends.kafka_markers import positions_of
from framework.backends.kafka_records import encode_event
from framework.backends.kafka_writer import (
    BoundedCallTimeout,
    Gathering,
    call_bounded,
    close_quietly,
    is_fenced,
    recorded_at,
)
from framework.commands import Command, Metadata
from framework.domain import Aggregate
from framework.errors import (
    AggregateNotFoundError,
    ConfigurationError,
    CrossShardCommandError,
    FrameworkError,
    OutcomeUnknownError,
    StoreUnavailableError,
)
from framework.observability import _commands as observed
from framework.persistence import NewEvent, Positions, RecordedEvent

if TYPE_CHECKING:
    from framework.application import Application
    from framework.backends.kafka import KafkaEventStore

__all__ = ["ShardOwner", "WriterMember", "WriterSettings"]

log = logging.getLogger(__name__)

A = TypeVar("A", bound=Aggregate)


@dataclass(frozen=True)
class WriterSettings:
    """How a writer member behaves (see ``python -m framework.writer run --help``)."""

    instance_id: str | None = None
    """Static group membership (``group.instance.id``): a restarted writer with the same id gets
    its shards back at once, without a rebalance. Give each writer process its own stable id."""
    session_timeout: float = 10.0
    """Seconds without a heartbeat before Kafka gives a dead writer's shards to another."""
    heartbeat_interval: float = 2.0
    max_poll_interval: float = 60.0
    max_batch: int = 500
    """Most commands decided into one transaction."""
    linger: float = 0.008
    """Seconds a batch may wait for the callers of the last two transactions to come back
    (never longer than until they all are; a lone caller never waits). A sender that waits for
    its result names itself on the command (``kafka_commands.CALLER_HEADER``); its next command
    comes back over Kafka a few milliseconds after its answer, hence more than the store's
    in-process 2 ms."""
    cache_size: int = 10_000
    """Aggregates kept in memory per shard between commands."""

    def __post_init__(self) -> None:
        # Refused here, before any group is joined: every way of starting a writer gets it.
        if not self.linger >= 0:
            raise ConfigurationError(f"linger must be 0 or more seconds, not {self.linger:g}")
        if self.max_batch < 1:
            raise ConfigurationError(f"max_batch must be 1 or more, not {self.max_batch}")
        if not self.session_timeout > 0:
            raise ConfigurationError(
                f"session_timeout must be more than 0 seconds, not {self.session_timeout:g}"
            )


# -- work items --------------------------------------------------------------------------------


@dataclass(eq=False)
class _Local:
    """A command executed in this process, for a shard this process owns."""

    command: Command
    metadata: Metadata
    done: threading.Event = field(default_factory=threading.Event)
    outcome: CommandResult | BaseException | None = None
    caller: int = field(default_factory=threading.get_ident)
    """The executing thread (see :class:`~framework.backends.kafka_writer.Gathering`)."""
    span: Any = field(default_factory=observed.caller_span)
    """The caller's ``command <Type>`` span: the command's only one (the owner's ``send``
    spans go under it; the caller ends it)."""


@dataclass(eq=False)
class _Consumed:
    """A command read from the commands topic."""

    offset: int
    value: bytes | None
    caller: int | None = None
    """The waiting caller the record names (see ``kafka_commands.CALLER_HEADER``)."""
    traceparent: str | None = None
    """The sender's span, sampled or not (``kafka_commands.trace_headers``)."""


@dataclass(eq=False)
class _Entry:
    """One command of a batch, decided (or refused) but not yet written."""

    item: _Local | _Consumed
    command: Command | None = None
    reply: int | None = None
    reply_token: str | None = None
    decision: Decision | None = None
    outcome: CommandResult | BaseException | None = None
    recorded: list[RecordedEvent] = field(default_factory=list)
    span: Any = None
    """The command's span (observability), ended once its transaction committed or not."""

    @property
    def owns_span(self) -> bool:
        """Whether the owner started ``span`` (a command from the topic) and so ends it; a
        command of this process keeps its caller's span."""
        return self.span is not None and not isinstance(self.item, _Local)


class _Retry(Exception):
    """The transaction did not (certainly) commit: fence again and decide the batch again."""


class _BatchLoader:
    """Serves a handler the aggregates of one batch: those changed earlier in the batch, then
    the owner's cache, then the local index (current: the owner is the only writer)."""

    def __init__(self, owner: ShardOwner, overlay: dict[UUID, Aggregate]) -> None:
        self._owner = owner
        self._overlay = overlay
        self.touched: set[UUID] = set()
        self.used_overlay = False

    def load(self, cls: type[A], aggregate_id: UUID) -> A:
        self.touched.add(aggregate_id)
        owner = self._owner
        found = self._overlay.get(aggregate_id)
        if found is not None:
            self.used_overlay = True
            if not isinstance(found, cls):
                raise AggregateNotFoundError(
                    f"{aggregate_id} is {a_an(type(found).__name__)}, not {a_an(cls.__name__)}"
                )
            return found
        if owner.store.partition_for(aggregate_id) not in owner.partitions:
            # Another shard's aggregate: read (never changed) as it is now.
            return owner.app.load(cls, aggregate_id)
        cached = owner.cache.pop(aggregate_id, None)
        if isinstance(cached, cls):
            return cached
        return owner.app.load(cls, aggregate_id, deciding=True)

    def exists(self, aggregate_id: UUID) -> bool:
        return (
            aggregate_id in self._overlay
            or aggregate_id in self._owner.cache
            or bool(self._owner.store.read_for_decision(aggregate_id))
        )


# -- the owner of one shard ---------------------------------------------------------------------


class ShardOwner:
    """Decides one shard's commands while its member owns the shard (module docstring)."""

    def __init__(self, member: WriterMember, shard: int) -> None:
        self.member = member
        self.app: Application = member.app
        self.store: KafkaEventStore = member.store
        self.shard = shard
        self.partitions = frozenset(self.store.shard_partitions(shard))
        self.transactional_id = f"{self.store.name}-writer-{shard}"
        self.settings = member.settings
        self.inbox: queue.Queue[_Local | _Consumed] = queue.Queue()
        self._gathering = Gathering(self.settings.linger)
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.cache: OrderedDict[UUID, Aggregate] = OrderedDict()
        self.stats = {
            "transactions": 0,
            "commands": 0,
            "fenced": 0,
            "retries": 0,
            "expired": 0,
            "mispredicted": 0,
        }
        # The next offset of each partition this owner has written since it fenced the shard.
        self._ends: dict[int, int] = {}
        self._producer: KafkaProducer | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"keel-owner-{self.transactional_id}", daemon=True
        )
        self._thread.start()

    # Called from other threads.

    def execute_local(self, command: Command, metadata: Metadata, timeout: float) -> CommandResult:
        """Decide ``command`` here; ShardMoved when the shard is given up before it is."""
        if self.stopping.is_set():
            raise ShardMoved()
        item = _Local(command, metadata)
        self.inbox.put(item)
        if not item.done.wait(timeout):
            raise OutcomeUnknownError(
                f"{command.command_type} {command.command_id} was not decided within "
                f"{timeout:g} s; re-sending the same command (same command id) is safe"
            )
        if isinstance(item.outcome, ShardMoved):
            raise item.outcome
        if isinstance(item.outcome, BaseException):
            raise item.outcome
        assert item.outcome is not None
        return item.outcome

    def stop(self) -> None:
        """Stop deciding (the shard is being taken away); the thread ends on its own."""
        self.stopping.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    # The owner's thread.

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                if not self._fence():
                    continue
                self.ready.set()
                batch = self._take()
                if batch:
                    self._process(batch)
        except BaseException:
            log.exception("the owner of shard %s failed; giving the shard up", self.shard)
            self.stopping.set()
            self.member.lost(self.shard)
        finally:
            self._drop_producer()
            self._release_waiting()

    def _fence(self) -> bool:
        """Have a producer that fenced the shard, with the shard read to the end."""
        if self._producer is not None:
            return True
        timeout = self.store.commit_timeout
        try:
            producer = self.store._new_producer(
                transactional_id=self.transactional_id, retry_backoff_ms=5
            )
        except KafkaError as error:
            return self._backoff(f"cannot create a producer: {error}")
        try:
            call_bounded(producer.init_transactions, timeout, "init")
            self.store.topic_index.catch_up(self.partitions, force=True)
        except (KafkaError, BoundedCallTimeout, StoreUnavailableError) as error:
            close_quietly(producer)
            return self._backoff(f"cannot take shard {self.shard} over: {error}")
        self.cache.clear()
        self._producer = producer
        return True

    def _backoff(self, why: str) -> bool:
        log.warning("%s; retrying", why)
        self.stopping.wait(0.5)
        return False

    def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        self.cache.clear()
        self._ends.clear()
        if producer is not None:
            close_quietly(producer)

    def _take(self) -> list[_Local | _Consumed]:
        try:
            first = self.inbox.get(timeout=0.1)
        except queue.Empty:
            return []
        batch, _ = self._gathering.gather(
            self.inbox,
            first,
            limit=self.settings.max_batch,
            weight=lambda _: 1,
            caller_of=lambda item: item.caller,
        )
        return batch

    def _process(self, batch: list[_Local | _Consumed]) -> None:
        while batch and not self.stopping.is_set():
            if not self._fence():
                continue
            entries, rest, spoiled = self._decide(batch)
            try:
                with observed.observed_transaction(self.store.topic, _sends(entries)):
                    self._transact(entries)
            except _Retry as retry:
                for entry in entries:
                    if entry.owns_span:
                        observed.end_command(entry.span, error=retry)
                self.stats["retries"] += 1
                log.warning("shard %s: %s; deciding the batch again", self.shard, retry)
                self._drop_producer()
                continue
            self._finish(entries, spoiled)
            batch = rest
        for item in batch:
            if isinstance(item, _Local):
                self._answer(item, ShardMoved())

    def _decide(
        self, batch: list[_Local | _Consumed]
    ) -> tuple[list[_Entry], list[_Local | _Consumed], set[UUID]]:
        """Decide commands in order on current state; stop early (returning the rest) where a
        command must wait for the ones before it to be written."""
        overlay: dict[UUID, Aggregate] = {}
        in_batch: set[UUID] = set()
        entries: list[_Entry] = []
        for i, item in enumerate(batch):
            entry = _Entry(item)
            if isinstance(item, _Local):
                command, metadata = item.command, item.metadata
            else:
                try:
                    envelope = decode_command(item.value, self.app)
                except FrameworkError as error:
                    log.warning(
                        "shard %s: cannot execute the command at offset %s (%s): skipped",
                        self.shard,
                        item.offset,
                        error,
                    )
                    entries.append(entry)
                    continue
                entry.reply, entry.reply_token = envelope.reply_partition, envelope.reply_token
                if envelope.expired():
                    self.stats["expired"] += 1
                    log.warning(
                        "shard %s: %s %s expired before it could run: skipped",
                        self.shard,
                        envelope.command.command_type,
                        command_id_of(item.value),
                    )
                    entry.reply = None
                    entries.append(entry)
                    continue
                command, metadata = envelope.command, envelope.metadata
            if command.command_id in in_batch:
                return entries, batch[i:], set()  # a resend: answer it once the first is written
            in_batch.add(command.command_id)
            entry.command = command
            if isinstance(item, _Local):
                entry.span = item.span  # its metadata already carries the span's context
            else:
                entry.span, metadata = observed.start_command(metadata, item.traceparent)
            loader = _BatchLoader(self, overlay)
            try:
                previous = self.app.previous_result(command)
                if previous is None:
                    uow = UnitOfWork(self.app, loader)
                    entry.decision = self.app.decide(command, metadata, uow)
                    self._check_placement(entry.decision)
                else:
                    entry.outcome = previous
            except Exception as error:
                if loader.used_overlay and any(e.decision for e in entries):
                    # The handler may have half-changed aggregates of earlier commands: write
                    # those first, then decide this one again on clean state.
                    if entry.owns_span:
                        observed.end_command(entry.span, error=error)
                    return entries, batch[i:], loader.touched
                for aggregate_id in loader.touched:
                    self.cache.pop(aggregate_id, None)
                    overlay.pop(aggregate_id, None)
                if not isinstance(error, FrameworkError):
                    log.exception("the handler of %s failed", command.command_type)
                entry.decision, entry.outcome = None, error
            if entry.decision is not None:
                for aggregate in entry.decision.touched:
                    overlay[aggregate.id] = aggregate
            entries.append(entry)
        return entries, [], set()

    def _check_placement(self, decision: Decision) -> None:
        changed = [e.aggregate_id for e in decision.events] + [decision.record_route]
        for aggregate_id, partition in zip(changed, self._placement(decision), strict=True):
            if partition not in self.partitions:
                raise CrossShardCommandError(
                    f"{decision.command.command_type} changes aggregate {aggregate_id}, which "
                    f"belongs to writer shard {self.store.shard_of(partition)}, but the command "
                    f"was routed to shard {self.shard} (by "
                    f"{type(decision.command).route_by or 'its first UUID field'}); nothing was "
                    "written. Route it by the aggregate it changes (Command.route_by), or split "
                    "the work with a process manager"
                )
        for event in decision.events:
            self.store.check_size(event)
        self.store.check_size(decision.record())

    def _placement(self, decision: Decision) -> list[int]:
        """The events-topic partition of each of a decision's events, then of its record."""
        return [self.store.partition_for(route) for route in _routes(decision)]

    def _records_placement(self, entries: Sequence[_Entry]) -> list[int]:
        """The events-topic partitions a batch writes, in the order :meth:`_write` sends the
        records: every event, then every command record."""
        decided = [entry.decision for entry in entries if entry.decision is not None]
        placed = [self._placement(decision) for decision in decided]
        return [p for partitions in placed for p in partitions[:-1]] + [
            partitions[-1] for partitions in placed
        ]

    def _transact(self, entries: Sequence[_Entry]) -> None:
        """Write a decided batch in one transaction (raises _Retry unless it committed).

        The owner is its partitions' only writer, so once a committed transaction has shown
        where its records landed, it knows where the next ones will (each transaction ends with
        one commit marker per partition). With those offsets known up front, the events, the
        command records and the results all go out in one round of produce requests; the
        offsets are checked when the broker answers, and a transaction whose records landed
        elsewhere (something wrote around the owner) is aborted and written in two rounds."""
        producer = self._producer
        assert producer is not None
        timeout = self.store.commit_timeout
        plan = self._plan(entries)
        try:
            while True:
                producer.begin_transaction()
                add_partitions_to_transaction(producer, self._partitions_written(entries))
                if self._write(producer, entries, plan):
                    break
                self.stats["mispredicted"] += 1
                call_bounded(producer.abort_transaction, timeout, "abort")
                self._ends.clear()
                plan = None
        except Exception as error:
            fenced = is_fenced(producer, error)
            self.stats["fenced"] += int(fenced)
            with contextlib.suppress(KafkaError, BoundedCallTimeout):
                call_bounded(producer.abort_transaction, timeout, "abort")
            what = "fenced" if fenced else "the transaction failed"
            raise _Retry(f"{what}: {error!r}") from error
        try:
            call_bounded(producer.commit_transaction, timeout, "commit")
        except (KafkaError, BoundedCallTimeout) as error:
            raise _Retry(f"the commit got no definite answer: {error!r}") from error
        for event in (e for entry in entries for e in entry.recorded):
            self._ends[event.partition] = max(self._ends.get(event.partition, 0), event.offset + 2)
        self.stats["transactions"] += 1
        self.stats["commands"] += len(entries)

    def _plan(self, entries: Sequence[_Entry]) -> list[tuple[int, int]] | None:
        """Where each record this batch writes to the events topic will land, in the order
        :meth:`_write` sends them (events, then command records); None while some partition's
        next offset is not known yet."""
        ends = dict(self._ends)
        plan = []
        for partition in self._records_placement(entries):
            if partition not in ends:
                return None
            plan.append((partition, ends[partition]))
            ends[partition] += 1
        return plan

    def _write(
        self, producer: KafkaProducer, entries: Sequence[_Entry], plan: list[tuple[int, int]] | None
    ) -> bool:
        """Send the batch's records and offsets inside the open transaction; False when the
        records did not land where ``plan`` said they would."""
        timeout = self.store.commit_timeout
        events = [
            (entry, event)
            for entry in entries
            if entry.decision is not None
            for event in entry.decision.events
        ]
        futures = [self._send(producer, event) for _, event in events]
        if plan is not None:
            records = self._send_answers(producer, entries, _positions(events, plan))
        consumed = [e.item.offset for e in entries if isinstance(e.item, _Consumed)]
        if consumed:
            tp = TopicPartition(self.store.commands_topic, self.shard)
            producer.send_offsets_to_transaction(
                {tp: _offset_and_metadata(max(consumed) + 1)}, self.store.writer_group
            )
        landed = [
            recorded_at(event, future.get(timeout=timeout))
            for (_, event), future in zip(events, futures, strict=True)
        ]
        if plan is None:
            places = [(r.partition, r.offset) for r in landed]
            records = self._send_answers(producer, entries, _positions(events, places))
        landed += [recorded_at(rec, future.get(timeout=timeout)) for _, rec, future in records]
        if plan is not None and [(r.partition, r.offset) for r in landed] != plan:
            return False
        owners = [entry for entry, _ in events] + [entry for entry, _, _ in records]
        for entry in owners:
            entry.recorded.clear()
        for entry, recorded in zip(owners, landed, strict=True):
            entry.recorded.append(recorded)
        return True

    def _send_answers(
        self, producer: KafkaProducer, entries: Sequence[_Entry], positions: dict[int, Positions]
    ) -> list[tuple[_Entry, NewEvent, Any]]:
        """Each decided command's record and each sender's result, given where the events land."""
        store = self.store
        records = []
        for entry in entries:
            if entry.decision is not None:
                at = positions.get(id(entry), {})
                entry.outcome = entry.decision.result(at)
                record = entry.decision.record(at)
                records.append((entry, record, self._send(producer, record)))
            if entry.reply is not None and entry.command is not None and entry.outcome:
                producer.send(
                    store.results_topic,
                    key=str(entry.command.command_id).encode("ascii"),
                    value=encode_result(entry.command.command_id, entry.outcome, entry.reply_token),
                    partition=entry.reply % store.results_partitions,
                )
        return records

    def _partitions_written(self, entries: Sequence[_Entry]) -> set[TopicPartition]:
        """Every partition the transaction will write: events, command records and results."""
        store = self.store
        written = {TopicPartition(store.topic, p) for p in self._records_placement(entries)}
        written |= {
            TopicPartition(store.results_topic, entry.reply % store.results_partitions)
            for entry in entries
            if entry.reply is not None
        }
        return written

    def _send(self, producer: KafkaProducer, event: NewEvent) -> Any:
        key, value, headers = encode_event(event)
        partition = self.store.partition_for(event.route_with or event.aggregate_id)
        return producer.send(
            self.store.topic, key=key, value=value, headers=headers, partition=partition
        )

    def _finish(self, entries: Sequence[_Entry], spoiled: set[UUID]) -> None:
        try:
            self.store.topic_index.index.add_committed(
                [event for entry in entries for event in entry.recorded]
            )
        except sqlite3.Error:
            # The next decisions must see these events: fencing again reads to the end.
            log.exception("could not index the committed events; taking the shard over again")
            self._drop_producer()
        for entry in entries:
            if entry.owns_span:
                failed = entry.outcome if isinstance(entry.outcome, BaseException) else None
                observed.end_command(entry.span, entry.outcome if not failed else None, failed)
            if entry.decision is not None:
                self.app.committed(entry.decision, positions_of(entry.recorded))
                for aggregate in entry.decision.touched:
                    if aggregate.id not in spoiled and self._producer is not None:
                        self._remember(aggregate)
            if isinstance(entry.item, _Local):
                self._answer(entry.item, entry.outcome or ShardMoved())

    def _remember(self, aggregate: Aggregate) -> None:
        self.cache[aggregate.id] = aggregate
        self.cache.move_to_end(aggregate.id)
        while len(self.cache) > self.settings.cache_size:
            self.cache.popitem(last=False)

    @staticmethod
    def _answer(item: _Local, outcome: CommandResult | BaseException) -> None:
        item.outcome = outcome
        item.done.set()

    def _release_waiting(self) -> None:
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Local):
                self._answer(item, ShardMoved())


def _routes(decision: Decision) -> list[UUID]:
    """What places each of a decision's events, then its command record."""
    return [e.route_with or e.aggregate_id for e in decision.events] + [decision.record_route]


def _positions(
    events: Sequence[tuple[_Entry, NewEvent]], places: Sequence[tuple[int, int]]
) -> dict[int, Positions]:
    """Each entry's positions (by ``id``): past the last of its events in every partition."""
    out: dict[int, Positions] = {}
    for (entry, _), (partition, offset) in zip(events, places, strict=False):
        at = out.setdefault(id(entry), {})
        at[partition] = max(at.get(partition, 0), offset + 1)
    return out


def _sends(entries: Sequence[_Entry]) -> list[tuple[Any, UUID | None, int | None, int]]:
    """Each decided command's span, aggregate, version and event count (observability)."""
    found = []
    for entry in entries:
        decision = entry.decision
        if decision is not None and entry.span is not None:
            primary = decision.primary
            version = decision.versions.get(primary) if primary else None
            found.append((entry.span, primary, version, len(decision.events)))
    return found


def _offset_and_metadata(offset: int) -> Any:
    from kafka.structs import OffsetAndMetadata

    return OffsetAndMetadata(offset, "", -1)


# -- the group member ----------------------------------------------------------------------------


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Runs on kafka-python's network thread: it only records what changed."""

    def __init__(self, member: WriterMember) -> None:
        self._member = member

    def on_partitions_revoked(self, revoked: Any) -> None:
        parts = {tp.partition for tp in revoked}
        for part in parts:
            owner = self._member.owners.get(part)
            if owner is not None:
                owner.stop()  # stop deciding before the shard is given to someone else
        self._member.changes.put(("revoke", parts))

    def on_partitions_lost(self, lost: Any) -> None:
        self.on_partitions_revoked(lost)

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._member.changes.put(("assign", {tp.partition for tp in assigned}))


class WriterMember:
    """One writer process's membership of ``<name>-writers``: a :class:`ShardOwner` for each
    shard Kafka assigns it. ``run()`` blocks; ``start()`` runs it in a thread."""

    def __init__(self, app: Application, settings: WriterSettings | None = None) -> None:
        from framework.backends.kafka import KafkaEventStore

        if not isinstance(app.store, KafkaEventStore):
            raise ConfigurationError(
                f"{app.name!r} runs on {type(app.store).__name__}, which decides commands in "
                "the calling process: it needs no writer. Writers are for the Kafka store"
            )
        self.app = app
        self.store: KafkaEventStore = app.store
        self.settings = settings or WriterSettings()
        self.owners: dict[int, ShardOwner] = {}
        self.changes: queue.Queue[tuple[str, set[int]]] = queue.Queue()
        self._holding: set[int] = set()  # assigned, waiting for their owner to be ready
        self._throttled: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observers = observed.observe_writer(self)
        s = self.settings
        try:
            self.consumer = self.store._new_consumer(
                group_id=self.store.writer_group,
                group_instance_id=s.instance_id,
                enable_auto_commit=False,
                isolation_level="read_committed",
                auto_offset_reset="earliest",
                session_timeout_ms=int(s.session_timeout * 1000),
                heartbeat_interval_ms=int(min(s.heartbeat_interval, s.session_timeout / 3) * 1000),
                max_poll_interval_ms=int(s.max_poll_interval * 1000),
                max_poll_records=s.max_batch,
                # The broker answers a fetch as soon as a record (or a commit marker) arrives;
                # a long wait only saves the idle polling (5 % of a core per process at 20 ms).
                fetch_max_wait_ms=500,
                # Incremental rebalances: a shard that stays with its member keeps its owner
                # (fenced, caught up, cache warm) when another writer joins or leaves.
                partition_assignment_strategy=(GroupStickyAssignor,),
            )
            self.consumer.subscribe([self.store.commands_topic], listener=_Listener(self))
            # Metadata before joining: a leader without it assigns nothing (see kafka_feed).
            self.consumer.partitions_for_topic(self.store.commands_topic)
        except KafkaError as error:
            raise StoreUnavailableError(
                f"cannot join the writer group {self.store.writer_group!r}: {error}"
            ) from error

    # Used by the router of this process.

    def owns(self, shard: int) -> bool:
        owner = self.owners.get(shard)
        return owner is not None and owner.ready.is_set() and not owner.stopping.is_set()

    def execute_local(
        self, shard: int, command: Command, metadata: Metadata, timeout: float
    ) -> CommandResult:
        owner = self.owners.get(shard)
        if owner is None:
            raise ShardMoved()
        return owner.execute_local(command, metadata, timeout)

    def owned(self) -> list[int]:
        """The shards this member decides now."""
        return sorted(s for s in self.owners if self.owns(s))

    def lost(self, shard: int) -> None:
        """An owner gave up after an unexpected error: leave and rejoin the group later."""
        self.changes.put(("failed", {shard}))

    # Running.

    def start(self) -> WriterMember:
        """Run the member in a background thread (returns at once)."""
        self._attach()
        self._thread = threading.Thread(target=self.run, name="keel-writer-member", daemon=True)
        self._thread.start()
        return self

    def wait_owning(self, shards: int | None = None, timeout: float = 60.0) -> None:
        """Block until this member owns ``shards`` shards (all by default) or raise."""
        wanted = self.store.shards if shards is None else shards
        deadline = time.monotonic() + timeout
        while len(self.owned()) < wanted:
            if time.monotonic() > deadline:
                raise StoreUnavailableError(
                    f"the writer owns shards {self.owned()} after {timeout:g} s, not {wanted}"
                )
            time.sleep(0.05)

    def run(self, stop: threading.Event | None = None) -> None:
        """Poll commands and dispatch them to the owners until ``stop`` (or ``close()``)."""
        self._attach()
        try:
            while not self._stop.is_set() and not (stop is not None and stop.is_set()):
                self._step()
        finally:
            self._shutdown()

    def _step(self) -> None:
        try:
            batch = self.consumer.poll(timeout_ms=100)
        except KafkaError as error:
            log.warning("polling %s failed (%s); retrying", self.store.commands_topic, error)
            time.sleep(0.2)
            return
        self._apply_changes()
        self._start_ready()
        for tp, records in batch.items():
            owner = self.owners.get(tp.partition)
            if owner is None or tp.partition in self._holding or owner.stopping.is_set():
                continue  # read again from the committed offset once the owner is ready
            for record in records:
                headers = record.headers
                owner.inbox.put(
                    _Consumed(
                        record.offset, record.value, caller_of(headers), traceparent_of(headers)
                    )
                )
        self._flow_control()

    def _tp(self, shard: int) -> TopicPartition:
        return TopicPartition(self.store.commands_topic, shard)

    def _apply_changes(self) -> None:
        while True:
            try:
                kind, parts = self.changes.get_nowait()
            except queue.Empty:
                return
            for part in parts:
                if kind in ("revoke", "failed"):
                    owner = self.owners.pop(part, None)
                    if owner is not None:
                        owner.stop()
                    self._holding.discard(part)
                    self._throttled.discard(part)
                else:
                    old = self.owners.get(part)
                    if old is not None and not old.stopping.is_set():
                        continue
                    with contextlib.suppress(KafkaError, AssertionError):
                        self.consumer.pause(self._tp(part))
                    self.owners[part] = ShardOwner(self, part)
                    self._holding.add(part)
            if kind == "failed":
                # Let Kafka give the shard to another member (or back to this one, afresh).
                with contextlib.suppress(KafkaError):
                    self.consumer.unsubscribe()
                    self.consumer.subscribe([self.store.commands_topic], listener=_Listener(self))

    def _start_ready(self) -> None:
        for part in sorted(self._holding):
            owner = self.owners.get(part)
            if owner is None or not owner.ready.is_set():
                continue
            tp = self._tp(part)
            try:
                # Read after fencing: the previous owner's last transaction is settled.
                committed = self.consumer.committed(tp)
                if committed is None:
                    self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, int(committed))
                self.consumer.resume(tp)
            except (KafkaError, AssertionError) as error:
                log.warning("cannot start shard %s yet (%s)", part, error)
                continue
            self._holding.discard(part)
            log.info("writer %s owns shard %s", self.settings.instance_id or "", part)

    def _flow_control(self) -> None:
        high = 4 * self.settings.max_batch
        for part, owner in self.owners.items():
            if part in self._holding:
                continue
            size = owner.inbox.qsize()
            with contextlib.suppress(KafkaError, AssertionError):
                if size > high and part not in self._throttled:
                    self.consumer.pause(self._tp(part))
                    self._throttled.add(part)
                elif size < self.settings.max_batch and part in self._throttled:
                    self.consumer.resume(self._tp(part))
                    self._throttled.discard(part)

    def _attach(self) -> None:
        # Commands this process executes for its own shards are then decided in place.
        router = self.app.router
        if isinstance(router, KafkaCommandRouter):
            router.attach(self)

    def _shutdown(self) -> None:
        observed.unobserve_writer(self._observers)
        router = self.app.router
        if isinstance(router, KafkaCommandRouter):
            router.detach(self)
        owners = list(self.owners.values())
        self.owners.clear()
        for owner in owners:
            owner.stop()
        for owner in owners:
            owner.join(self.store.commit_timeout)
        with contextlib.suppress(KafkaError):
            self.consumer.close(autocommit=False)

    def close(self) -> None:
        """Stop deciding, finish the transaction in flight, leave the group."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.store.commit_timeout + 5)

    def stats(self) -> dict[int, dict[str, int]]:
        """Counters of each owned shard (transactions, commands, fenced, retries, expired)."""
        return {shard: dict(owner.stats) for shard, owner in self.owners.items()}
