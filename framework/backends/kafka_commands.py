"""Commands as Kafka messages: the commands and results topics, and a sending process's router.

On Kafka every command is decided by the one process that owns its writer shard (see
:mod:`framework.backends.kafka_owner`). Any other process *sends* it:

- ``<name>.commands`` has one partition per writer shard. A command goes to the partition of
  the shard that holds its routing aggregate (``Command.routing_id()``), keyed by its command id,
  as JSON: the command's fields, the metadata the framework set, the results partition to answer
  on, and when it expires. A command whose caller waits for the result also names the calling
  thread in a ``keel.caller`` header, so the owner's group commit can wait for it to come back.
- ``<name>.results`` carries the outcome of each command that asked for one: the
  :class:`~framework.application.CommandResult`, or the error the handler raised, by type and
  message. The owner writes it in the same Kafka transaction as the events and the consumed
  command offset, so a caller reading it with ``read_committed`` never sees an outcome that
  did not happen. Results are kept for an hour: they are answers, not the log of record.

Each sending process reads one results partition (chosen at random when it starts), from the
end it found before sending anything, so no answer to its own commands can be missed. Every
waiting send carries a reply token that its result echoes: several senders share a partition,
and one command id may be sent more than once (a retry, a re-send from another process), so a
command id alone does not say which send a result answers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID

import pydantic_core

from framework.application import CommandResult
from framework.backends.kafka_client import (
    KafkaAdminClient,
    KafkaConsumer,
    KafkaError,
    KafkaProducer,
    KafkaTimeoutError,
    TopicPartition,
    knows_topic,
)
from framework.backends.kafka_writer import BoundedCallTimeout, call_bounded, remaining_ms
from framework.commands import Command, Metadata
from framework.errors import (
    CommandValidationError,
    FrameworkError,
    OutcomeUnknownError,
    RemoteCommandError,
    StoreError,
    StoreUnavailableError,
    UnknownCommandError,
)
from framework.observability._commands import traced
from framework.observability._tracing import TRACEPARENT, current_traceparent, send_span

if TYPE_CHECKING:
    from framework.application import Application
    from framework.backends.kafka import KafkaEventStore

__all__ = [
    "Answer",
    "CommandEnvelope",
    "KafkaCommandRouter",
    "ShardMoved",
    "caller_of",
    "decode_command",
    "decode_result",
    "encode_command",
    "encode_result",
    "error_from_wire",
    "error_to_wire",
]

log = logging.getLogger(__name__)

FORMAT = 1
CALLER_HEADER = "keel.caller"
"""Header of a command whose caller waits for its result, naming the calling thread: an owner
lingers for the callers of its last two transactions (:class:`~framework.backends.kafka_writer.
Gathering`), since a caller that got its answer usually sends again at once. A thread that ends
may pass its ident to a new one; the owner then waits for the new thread as for the old (timing
only, never correctness)."""
_PROCESS_TAG = uuid.uuid4().hex[:16]
DIAGNOSIS_TIMEOUT = 1.0
"""Seconds a call that got no answer spends past its deadline asking whether writers run."""


class ShardMoved(Exception):
    """A local owner gave its shard up before deciding the command: send it instead."""


# -- the wire format -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandEnvelope:
    """A command as read from the commands topic."""

    command: Command
    metadata: Metadata
    reply_partition: int | None
    expires_at: float
    reply_token: str | None = None
    """Names the send that waits on ``reply_partition``; its result carries it back."""

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) > self.expires_at


def encode_command(
    command: Command,
    metadata: Metadata,
    *,
    reply_partition: int | None,
    expires_at: float,
    reply_token: str | None = None,
) -> bytes:
    """The commands-topic value of ``command``."""
    return pydantic_core.to_json(
        {
            "format": FORMAT,
            "type": command.command_type,
            "command": command.model_dump(mode="json"),
            "meta": metadata.model_dump(mode="json"),
            "reply": reply_partition,
            "reply_token": reply_token,
            "expires": expires_at,
        }
    )


def decode_command(value: bytes | None, app: Application) -> CommandEnvelope:
    """Parse a commands-topic value; CommandValidationError or UnknownCommandError when it
    cannot be executed here (a sender with other command classes, or a foreign record)."""
    try:
        data = json.loads(value or b"")
        kind = data["type"]
        fields = data["command"]
        metadata = Metadata.model_validate(data["meta"])
        reply = data.get("reply")
        token = data.get("reply_token")
        expires = float(data["expires"])
    except (ValueError, TypeError, KeyError) as error:
        raise CommandValidationError("(unreadable)", [{"loc": [], "msg": str(error)}]) from None
    cls = app.command_types.get(kind)
    if cls is None:
        raise UnknownCommandError(f"this writer has no handler for command {kind!r}")
    return CommandEnvelope(
        cls.parse(fields),
        metadata,
        int(reply) if isinstance(reply, int) else None,
        expires,
        token if isinstance(token, str) else None,
    )


def caller_header() -> bytes:
    """The calling thread, as :data:`CALLER_HEADER` carries it."""
    return f"{_PROCESS_TAG}-{threading.get_ident():x}".encode("ascii")


def _header(headers: list[tuple[str, bytes]] | None, name: str) -> bytes | None:
    """The value of a record's first header called ``name``."""
    for key, value in headers or ():
        if key == name:
            return value
    return None


def caller_of(headers: list[tuple[str, bytes]] | None) -> int | None:
    """The caller a commands-topic record names (None: no one waits for it)."""
    value = _header(headers, CALLER_HEADER)
    return None if value is None else hash(value)


def traceparent_of(headers: list[tuple[str, bytes]] | None) -> str | None:
    """The W3C ``traceparent`` header of a commands-topic record: the sender's span, sampled
    or not (a command's metadata names only sampled ones; see :func:`trace_headers`)."""
    value = _header(headers, TRACEPARENT)
    try:
        return None if value is None else value.decode("ascii")
    except UnicodeDecodeError:
        return None


def trace_headers() -> list[tuple[str, bytes]]:
    """The current span as a ``traceparent`` header, also when the sampler dropped it: the
    writer then drops the command's spans too, instead of starting a trace of its own for a
    command whose caller was not sampled (a trace with no beginning)."""
    parent = current_traceparent(sampled_only=False)
    return [] if parent is None else [(TRACEPARENT, parent.encode("ascii"))]


def command_id_of(value: bytes | None) -> UUID | None:
    """The command id inside a commands-topic value, if one can be read at all."""
    try:
        return UUID(str(json.loads(value or b"")["meta"]["command_id"]))
    except (ValueError, TypeError, KeyError):
        return None


def error_to_wire(error: BaseException) -> dict[str, Any]:
    """An error as JSON: its class, message and plain attributes (e.g. field errors)."""
    attributes = {}
    for key, item in vars(error).items():
        with contextlib.suppress(ValueError, TypeError):
            attributes[key] = json.loads(json.dumps(item, default=_plain))
    cls = type(error)
    return {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "message": str(error),
        "attributes": attributes,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, UUID | Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


def _framework_errors() -> dict[str, type[FrameworkError]]:
    found: dict[str, type[FrameworkError]] = {}
    stack: list[type[FrameworkError]] = [FrameworkError]
    while stack:
        cls = stack.pop()
        found[f"{cls.__module__}.{cls.__qualname__}"] = cls
        stack.extend(cls.__subclasses__())
    return found


def error_from_wire(data: dict[str, Any]) -> FrameworkError:
    """The error a writer reported, as its own class when this process has that class (only
    subclasses of FrameworkError are rebuilt); otherwise a RemoteCommandError naming it."""
    name = str(data.get("type", "?"))
    message = str(data.get("message", ""))
    cls = _framework_errors().get(name)
    if cls is None:
        return RemoteCommandError(f"the writer failed with {name}: {message}", remote_type=name)
    error = cls.__new__(cls)
    error.args = (message,)
    attributes = data.get("attributes")
    if isinstance(attributes, dict):
        for key, item in attributes.items():
            with contextlib.suppress(AttributeError, TypeError):
                setattr(error, key, item)
    return error


def encode_result(
    command_id: UUID, outcome: CommandResult | BaseException, reply_token: str | None = None
) -> bytes:
    """The results-topic value for one command's outcome, answering the send ``reply_token``
    names."""
    body: dict[str, Any] = {"format": FORMAT, "command_id": str(command_id)}
    if reply_token is not None:
        body["reply_token"] = reply_token
    if isinstance(outcome, CommandResult):
        body["result"] = {
            "aggregate_id": str(outcome.aggregate_id) if outcome.aggregate_id else None,
            "versions": {str(k): v for k, v in outcome.versions.items()},
            "positions": {str(p): o for p, o in outcome.positions.items()},
            "replayed": outcome.replayed,
        }
    else:
        body["error"] = error_to_wire(outcome)
    return pydantic_core.to_json(body)


@dataclass(frozen=True, slots=True)
class Answer:
    """A results-topic record: the outcome of one send of a command."""

    command_id: UUID
    outcome: CommandResult | FrameworkError
    reply_token: str | None = None
    """The send it answers (None from a writer that predates tokens: any send of the id)."""

    def answers(self, reply_token: str) -> bool:
        return self.reply_token is None or self.reply_token == reply_token


def decode_result(value: bytes | None) -> Answer | None:
    """Parse a results-topic value (None for a record that is not one)."""
    try:
        data = json.loads(value or b"")
        command_id = UUID(data["command_id"])
        token = data.get("reply_token")
        token = token if isinstance(token, str) else None
        if "error" in data:
            return Answer(command_id, error_from_wire(data["error"]), token)
        result = data["result"]
        primary = result.get("aggregate_id")
        outcome = CommandResult(
            command_id=command_id,
            aggregate_id=UUID(primary) if primary else None,
            versions={UUID(k): int(v) for k, v in result["versions"].items()},
            positions={int(p): int(o) for p, o in result["positions"].items()},
            replayed=bool(result.get("replayed")),
        )
        return Answer(command_id, outcome, token)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


# -- the sending side -------------------------------------------------------------------------


class _Waiter:
    def __init__(self, reply_token: str) -> None:
        self.reply_token = reply_token
        self.done = threading.Event()
        self.outcome: CommandResult | FrameworkError | None = None


class ResultsReader:
    """Reads one results partition from its end and hands each outcome to its waiter."""

    def __init__(self, new_consumer: Callable[..., KafkaConsumer], topic: str, partition: int):
        self.topic = topic
        self.partition = partition
        self._new_consumer = new_consumer
        self._waiters: dict[UUID, list[_Waiter]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"keel-results-{topic}-{partition}", daemon=True
        )
        self._thread.start()

    def wait_ready(self, timeout: float) -> None:
        """Block until the reader is positioned (answers from then on are seen)."""
        if not self._ready.wait(timeout):
            raise StoreUnavailableError(
                f"cannot read the results topic {self.topic!r} within {timeout:.1f} s; "
                "nothing was sent"
            )
        if self._error is not None:
            raise StoreUnavailableError(f"cannot read {self.topic!r}: {self._error}")

    @property
    def failed(self) -> bool:
        """The reader could not connect and has stopped."""
        return self._ready.is_set() and self._error is not None

    @contextlib.contextmanager
    def expect(self, command_id: UUID) -> Iterator[_Waiter]:
        """A waiter for the answer to one send of ``command_id``: send it with the waiter's
        ``reply_token``. Another process's send of the same id may be answered on this
        partition too, as may this process's earlier send: neither is this send's answer (an
        earlier rejection is not the outcome of a retry that runs)."""
        waiter = _Waiter(uuid.uuid4().hex)
        with self._lock:
            self._waiters.setdefault(command_id, []).append(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                left = [w for w in self._waiters.get(command_id, []) if w is not waiter]
                if left:
                    self._waiters[command_id] = left
                else:
                    self._waiters.pop(command_id, None)

    def _run(self) -> None:
        consumer: KafkaConsumer | None = None
        try:
            consumer = self._new_consumer(
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",
                auto_offset_reset="latest",
                # The broker answers a fetch as soon as a record (or a commit marker) arrives;
                # a long wait only saves the idle polling (5 % of a core per process at 20 ms).
                fetch_max_wait_ms=500,
            )
            tp = TopicPartition(self.topic, self.partition)
            consumer.assign([tp])
            # The last stable offset: every answer to a command sent from now on lies past it.
            consumer.seek(tp, consumer.end_offsets([tp])[tp])
        except (KafkaError, KeyError) as error:
            self._error = error
            self._ready.set()
            if consumer is not None:
                consumer.close(autocommit=False)
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                try:
                    batch = consumer.poll(timeout_ms=200, max_records=1000)
                except KafkaError as error:
                    log.warning("reading %s failed (%s); retrying", self.topic, error)
                    time.sleep(0.2)
                    continue
                for records in batch.values():
                    for record in records:
                        self._deliver(record.value)
        finally:
            consumer.close(autocommit=False)

    def _deliver(self, value: bytes | None) -> None:
        answer = decode_result(value)
        if answer is None:
            return
        with self._lock:
            for waiter in self._waiters.get(answer.command_id, []):
                if waiter.outcome is None and answer.answers(waiter.reply_token):
                    waiter.outcome = answer.outcome
                    waiter.done.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class KafkaCommandRouter:
    """Sends ``app``'s commands to their shard owners and waits for the results; decides them
    in place when this process owns the shard (a writer member registered with
    :meth:`attach`)."""

    def __init__(self, store: KafkaEventStore, app: Application) -> None:
        self.store = store
        self.app = app
        self._lock = threading.Lock()
        self._producer: KafkaProducer | None = None
        self._reader: ResultsReader | None = None
        self._owner: Any = None  # a kafka_owner.WriterMember, when this process runs one
        self._closed = False
        self._connecting = threading.Lock()

    def attach(self, member: Any) -> None:
        """Decide commands of the shards ``member`` owns in this process, without a round trip."""
        self._owner = member

    def detach(self, member: Any) -> None:
        if self._owner is member:
            self._owner = None

    def execute(self, command: Command, metadata: Metadata, timeout: float | None) -> CommandResult:
        """Decide in place when this process owns the shard, else send and wait."""
        timeout = self.store.command_timeout if timeout is None else timeout
        # One deadline for the whole call: connecting, sending and waiting share it.
        deadline = time.monotonic() + timeout
        shard = self.store.shard_for(command.routing_id())
        owner = self._owner
        if owner is not None and owner.owns(shard):
            with contextlib.suppress(ShardMoved):
                result: CommandResult = owner.execute_local(shard, command, metadata, timeout)
                return result
        reader = self._ready_reader(deadline)
        with reader.expect(command.command_id) as waiter:
            self._produce(
                command, metadata, shard, (reader.partition, waiter.reply_token), timeout, deadline
            )
            if not waiter.done.wait(max(0.0, deadline - time.monotonic())):
                raise OutcomeUnknownError(self._no_answer(command, timeout))
        outcome = waiter.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        self.store.saw(outcome.positions)
        return outcome

    def send(self, command: Command, metadata: Metadata) -> None:
        """Put ``command`` in the commands topic; its owner executes it exactly once."""
        shard = self.store.shard_for(command.routing_id())
        timeout = self.store.command_timeout
        self._produce(command, metadata, shard, None, timeout, time.monotonic() + timeout)

    def _produce(
        self,
        command: Command,
        metadata: Metadata,
        shard: int,
        reply: tuple[int, str] | None,
        timeout: float,
        deadline: float,
    ) -> None:
        """Send ``command``; ``reply`` is the results partition and token of a waiting send."""
        expires = time.time() + max(self.store.command_ttl, timeout)
        with send_span(self.store.commands_topic, count=1, partition=shard):
            producer = self._ready_producer(deadline)
            # The record carries this span's trace context: the writer's spans join the trace.
            partition, token = reply if reply is not None else (None, None)
            value = encode_command(
                command,
                traced(metadata),
                reply_partition=partition,
                expires_at=expires,
                reply_token=token,
            )
            headers = trace_headers()
            if reply is not None:
                headers.append((CALLER_HEADER, caller_header()))

            def send() -> Any:
                return producer.send(
                    self.store.commands_topic,
                    key=str(command.command_id).encode("ascii"),
                    value=value,
                    partition=shard,
                    headers=headers or None,
                )

            try:
                if knows_topic(producer, self.store.commands_topic):
                    future = send()  # hands the record to the producer's thread: no wait
                else:
                    # send() waits for the topic's metadata (up to max_block_ms, longer than
                    # a command's deadline may be): in a thread the deadline bounds.
                    future = call_bounded(
                        send, max(0.0, deadline - time.monotonic()), "keel-command-send"
                    )
                future.get(timeout=max(0.0, deadline - time.monotonic()))
            except (KafkaTimeoutError, BoundedCallTimeout) as error:
                raise OutcomeUnknownError(
                    f"sending {command.command_type} {command.command_id} timed out ({error}); "
                    "it may or may not run: re-send the same command (same command id) to find "
                    "out"
                ) from error
            except KafkaError as error:
                raise StoreUnavailableError(
                    f"cannot send {command.command_type} to {self.store.commands_topic!r}: "
                    f"{error}; nothing was sent"
                ) from error

    def _no_answer(self, command: Command, timeout: float) -> str:
        what = f"no result for {command.command_type} {command.command_id} within {timeout:g} s"
        try:  # past the deadline already: ask briefly (this is the documented slack)
            members = call_bounded(
                lambda: self.store.writer_members(DIAGNOSIS_TIMEOUT), DIAGNOSIS_TIMEOUT, "diagnose"
            )
        except BoundedCallTimeout:
            members = None
        if members == 0:
            return (
                f"{what}: no writer is running for {self.store.name!r} (consumer group "
                f"{self.store.writer_group!r} has no members). Start one with "
                f"`python -m framework.writer run <module:app>` or `manage.py run_writers`; the "
                "command waits in the commands topic and may still run. Re-sending the same "
                "command (same command id) is safe"
            )
        busy = "busy or taking over" if members else "busy, taking over or not running"
        return (
            f"{what}; the shard's writer is {busy}, and the command may still run. "
            "Re-sending the same command (same command id) is safe"
        )

    def _ready_producer(self, deadline: float) -> KafkaProducer:
        # kafka-python connects in the constructor: one caller connects, within its deadline;
        # the others wait for it within theirs.
        if not self._connecting.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise StoreUnavailableError(
                "cannot connect to Kafka before the command's deadline; nothing was sent"
            )
        try:
            with self._lock:
                if self._closed:
                    raise StoreError("the command router is closed")
                producer = self._producer
            if producer is None:
                try:
                    producer = self.store._new_producer(
                        retry_backoff_ms=5, bootstrap_timeout_ms=remaining_ms(deadline)
                    )
                except KafkaError as error:
                    raise StoreUnavailableError(
                        f"cannot connect a Kafka producer: {error}; nothing was sent"
                    ) from error
                with self._lock:
                    self._producer = producer
            return producer
        finally:
            self._connecting.release()

    def _ready_reader(self, deadline: float) -> ResultsReader:
        with self._lock:
            if self._closed:
                raise StoreError("the command router is closed")
            if self._reader is None or self._reader.failed:
                # A reader that could not connect is replaced: the cluster may be back.
                partition = uuid.uuid4().int % self.store.results_partitions
                self._reader = ResultsReader(
                    self.store._new_consumer, self.store.results_topic, partition
                )
            reader = self._reader
        reader.wait_ready(max(0.0, min(self.store.read_timeout, deadline - time.monotonic())))
        return reader

    def close(self) -> None:
        with self._lock:
            self._closed = True
            producer, self._producer = self._producer, None
            reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        if producer is not None:
            with contextlib.suppress(KafkaError):
                producer.close(timeout=5)


def count_group_members(admin: KafkaAdminClient, group: str) -> int | None:
    """How many members consumer group ``group`` has (None when the cluster cannot say)."""
    try:
        described = admin.describe_groups([group])
    except KafkaError:
        return None
    info = described.get(group)
    if not isinstance(info, dict):
        return None
    if info.get("error") and "GroupIdNotFound" not in str(info["error"]):
        return None
    return len(info.get("members") or ())
