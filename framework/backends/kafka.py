"""The Kafka event store: ``kafka://host:9092[,host2:9092]?option=value&...``.

Kafka is the log of record (design.md, decisions 1-4). One events topic per application,
``<name>.events`` by default, keyed by aggregate id (its canonical UUID string), kept forever
and never compacted; written only through fenced transactional producers, one per writer shard
(``<name>-writer-<shard>``), with ``acks=all`` and idempotence; read back through a local SQLite
index per process, so reading an aggregate never scans Kafka.

URL options (all optional):

=========================  ======================================================================
``topic``                  events topic (default ``<name>.events``)
``partitions``             partitions when creating the topic (default 3); fixed for its life
``shards``                 writer shards (default 1: every append, multi-aggregate included, is
                           one atomic transaction); fixed for the topic's life
``replication_factor``     when creating topics (default: min(3, brokers))
``min_insync_replicas``    when creating topics (default: min(2, replication factor))
``index``                  the local index file (default: a free slot per store instance under
                           ``$KEEL_KAFKA_INDEX_DIR`` or ``<tmp>/keel-kafka-index``)
``client_id``              prefix of the Kafka client ids (default ``keel-<name>``)
``commit_timeout``         seconds to wait for ``init_transactions``/``commit`` (default 30)
``append_timeout``         seconds a direct append may take in all: connecting, re-fencing,
                           retrying (default 60; 1 s of slack, see kafka_writer)
``read_timeout``           seconds a catch-up read may take (default 30)
``max_batch``              most events in one group-commit transaction (default 1000)
``max_event_bytes``        the largest event accepted (default: the topic's max.message.bytes,
                           at most 1 MiB, less 512 bytes of record overhead)
``command_timeout``        seconds ``execute`` may take in all: connecting, sending, waiting
                           for the result (default 30; ``execute(timeout=)`` overrides it)
``command_ttl``            seconds a sent command stays executable (default 300): a writer
                           skips a command it reads later than that, so a command whose caller
                           gave up long ago never runs by surprise
``results_partitions``     partitions of ``<name>.results`` when creating it (default 6)
=========================  ======================================================================

Security settings go to every kafka-python client unchanged, under kafka-python's names:
``security_protocol``, ``sasl_mechanism`` (e.g. ``SCRAM-SHA-512``), ``sasl_plain_username``,
``sasl_plain_password``, ``sasl_kerberos_service_name``, ``sasl_kerberos_domain_name``,
``ssl_cafile``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_password``, ``ssl_crlfile``,
``ssl_ciphers``, ``ssl_check_hostname``. ``kafka://user:password@host:9092`` is a shorthand for
the two ``sasl_plain_*`` settings (URL-encode special characters).

The store sets ``acks='all'``, ``enable_idempotence=True``, ``isolation_level='read_committed'``
and ``enable_auto_commit=False`` itself; naming any of them with another value in the URL or in
``client=`` is refused with :class:`UnsafeConfigurationError`, as are unsafe topic settings.

How it behaves:

- ``Application.execute`` sends each command to the process that owns its writer shard
  (``python -m framework.writer run``; see :mod:`framework.backends.kafka_owner`) through
  ``<name>.commands`` and waits for its outcome on ``<name>.results``; a writer process decides
  the commands of its own shards in place. ``store.append`` is the low-level fenced append
  below both, for tools and tests.
- ``append`` hands the events to its shard's writer thread, which batches concurrent appends
  into one transaction (see :mod:`framework.backends.kafka_writer`) and returns once the commit
  markers are written: ``head()`` is then past the returned positions and every
  ``read_committed`` reader, in any process, can read the events.
- Several processes may write one shard: each takes the transactional id over when it writes,
  fencing the others. That is correct but costs a takeover (about 0.1 s) whenever the writing
  process changes; route heavy writing through few processes or configure more shards.
- ``read`` and ``read_partition`` bring the local index up to the current last stable offsets,
  then answer from SQLite (the index holds every committed record; malformed ones come back
  with the nil aggregate id). ``head`` is the last stable offsets. Snapshots live in the index
  only: a cache each process rebuilds as it goes.
- ``feed(group, ...)`` uses ``group`` as the Kafka consumer group id, unchanged.
- The events topic and ``<topic>.layout`` are created when missing; without the right to
  create topics, create both beforehand with the settings above (the layout topic: one
  partition). Open the store after forking: its threads and sockets do not survive a fork.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import unquote, urlsplit
from uuid import UUID

from framework.backends.kafka_client import (
    KafkaAdminClient,
    KafkaConsumer,
    KafkaError,
    KafkaProducer,
    TopicPartition,
)
from framework.backends.kafka_commands import KafkaCommandRouter, count_group_members
from framework.backends.kafka_feed import KafkaFeedReader
from framework.backends.kafka_index import (
    LocalIndex,
    TopicIndex,
    default_index_path,
    lock_index_file,
)
from framework.backends.kafka_records import partition_for, record_size
from framework.backends.kafka_topic import TopicInfo, prepare_command_topics, prepare_topic
from framework.backends.kafka_writer import ShardWriter, ShardWriterSettings
from framework.backends.url_options import Parser, flag, integer, number, parse_options, text
from framework.errors import (
    ConfigurationError,
    CrossShardCommandError,
    EventTooLargeError,
    StoreError,
    StoreUnavailableError,
    UnsafeConfigurationError,
)
from framework.persistence import (
    ConsumerSettings,
    EventStore,
    FeedReader,
    NewEvent,
    OnAssign,
    OnRevoke,
    Positions,
    RecordedEvent,
    Snapshot,
)

if TYPE_CHECKING:
    from framework.application import Application

__all__ = ["KafkaEventStore", "open_store", "parse_url"]

log = logging.getLogger(__name__)

SECURITY_SETTINGS = frozenset(
    {
        "security_protocol",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
        "ssl_cafile",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_crlfile",
        "ssl_ciphers",
        "ssl_check_hostname",
    }
)
# The store sets these itself; another value would lose events or expose aborted ones.
GUARDED_SETTINGS = {
    "acks": ("all", {"all", "-1"}),
    "enable_idempotence": ("true", {"true", "1", "yes"}),
    "enable_auto_commit": ("false", {"false", "0", "no"}),
    "isolation_level": ("read_committed", {"read_committed"}),
}
OPTIONS: dict[str, Parser] = {
    **dict.fromkeys(
        (
            "partitions",
            "shards",
            "replication_factor",
            "min_insync_replicas",
            "max_batch",
            "max_event_bytes",
            "results_partitions",
        ),
        integer,
    ),
    **dict.fromkeys(
        ("commit_timeout", "append_timeout", "read_timeout", "command_timeout", "command_ttl"),
        number,
    ),
    **dict.fromkeys(("topic", "index", "client_id"), text),
}
"""The URL options that are :class:`KafkaEventStore` arguments."""
CLIENT_OPTIONS: dict[str, Parser] = {
    **dict.fromkeys(SECURITY_SETTINGS | GUARDED_SETTINGS.keys(), text),
    "ssl_check_hostname": flag,
}
"""The URL options passed to the clients (the guarded ones only to be checked)."""


def parse_url(url: str) -> dict[str, Any]:
    """The keyword arguments of :class:`KafkaEventStore` that ``url`` spells."""
    parts = urlsplit(url)
    if parts.scheme != "kafka":
        raise ConfigurationError(f"{url!r} is not a kafka:// URL")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    if not hosts.strip(","):
        raise ConfigurationError(f"{url!r} names no broker: use kafka://host:9092[,host2:9092]")
    parsed = parse_options(
        parts.query, {**OPTIONS, **CLIENT_OPTIONS}, store="Kafka", unlisted=GUARDED_SETTINGS
    )
    client: dict[str, Any] = {}
    if userinfo:
        user, _, password = userinfo.partition(":")
        client["sasl_plain_username"] = unquote(user)
        client["sasl_plain_password"] = unquote(password)
    client.update({k: parsed.pop(k) for k in CLIENT_OPTIONS.keys() & parsed.keys()})
    options: dict[str, Any] = {"bootstrap_servers": hosts, **parsed}
    if client:
        options["client"] = client
    return options


def check_client_settings(client: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse unsafe client settings; return those passed on to every client."""
    passed = {}
    for key, value in client.items():
        if key in GUARDED_SETTINGS:
            safe, accepted = GUARDED_SETTINGS[key]
            if str(value).strip().lower() not in accepted:
                raise UnsafeConfigurationError(
                    f"{key}={value!r} would let events be lost or aborted writes be read; the "
                    f"store needs {key}={safe!r} (leave it out: the store sets it)"
                )
        elif key in SECURITY_SETTINGS:
            passed[key] = value
        else:
            raise ConfigurationError(
                f"client setting {key!r} is not passed through; allowed: "
                f"{', '.join(sorted(SECURITY_SETTINGS))}"
            )
    return passed


class KafkaEventStore(EventStore):
    """An :class:`EventStore` on a Kafka topic (see the module docstring for the options)."""

    def __init__(
        self,
        name: str,
        *,
        bootstrap_servers: str | Sequence[str],
        topic: str | None = None,
        partitions: int | None = None,
        shards: int | None = None,
        replication_factor: int | None = None,
        min_insync_replicas: int | None = None,
        index: str | Path | None = None,
        client_id: str | None = None,
        commit_timeout: float = 30.0,
        append_timeout: float = 60.0,
        read_timeout: float = 30.0,
        max_batch: int = 1000,
        max_event_bytes: int | None = None,
        command_timeout: float = 30.0,
        command_ttl: float = 300.0,
        results_partitions: int = 6,
        client: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.topic = topic or f"{name}.events"
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,240}", self.topic):
            raise ConfigurationError(
                f"{self.topic!r} is not a valid Kafka topic name (letters, digits, '.', '_', "
                "'-'): choose another application name or set topic="
            )
        servers = (
            bootstrap_servers.split(",")
            if isinstance(bootstrap_servers, str)
            else bootstrap_servers
        )
        self._servers = [s.strip() for s in servers if s.strip()]
        if not self._servers:
            raise ConfigurationError("the Kafka store needs bootstrap_servers (host:port)")
        for option, value in (
            ("partitions", partitions),
            ("shards", shards),
            ("max_batch", max_batch),
            ("max_event_bytes", max_event_bytes),
            ("results_partitions", results_partitions),
        ):
            if value is not None and value < 1:
                raise ConfigurationError(f"{option} must be at least 1, not {value}")
        self._security = check_client_settings(client or {})
        self._client_id = client_id or f"keel-{name}"
        self._read_timeout = read_timeout
        self.read_timeout = read_timeout
        self.commit_timeout = commit_timeout
        self.command_timeout = command_timeout
        self.command_ttl = command_ttl
        self.commands_topic = f"{self.topic.removesuffix('.events')}.commands"
        self.results_topic = f"{self.topic.removesuffix('.events')}.results"
        self.writer_group = f"{name}-writers"
        self._lock = threading.Lock()
        self._writers: dict[int, ShardWriter] = {}
        self._closed = False
        self._settings = ShardWriterSettings(
            commit_timeout=commit_timeout,
            append_timeout=append_timeout,
            max_batch=max_batch,
            stable_timeout=read_timeout,
        )
        self._index_lock: TextIO | None = None
        self._routers: list[KafkaCommandRouter] = []
        self._seen: Positions = {}  # positions of results this process received
        self._visible: Positions = {}  # end offsets last seen at or past them
        self._head_reader: KafkaConsumer | None = None
        self._head_lock = threading.Lock()
        self._admin_timeout = read_timeout
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self._servers,
                client_id=f"{self._client_id}-admin",
                request_timeout_ms=int(read_timeout * 1000),
                bootstrap_timeout_ms=int(read_timeout * 1000),
                **self._security,
            )
        except KafkaError as error:
            raise StoreUnavailableError(
                f"cannot reach Kafka at {self._servers}: {error!r}"
            ) from error
        try:
            self.info: TopicInfo = prepare_topic(
                admin,
                topic=self.topic,
                partitions=partitions,
                shards=shards,
                replication_factor=replication_factor,
                min_insync_replicas=min_insync_replicas,
                new_producer=self._new_producer,
                new_consumer=self._new_consumer,
                timeout=read_timeout,
            )
            self.results_partitions = prepare_command_topics(
                admin,
                self.info,
                commands_topic=self.commands_topic,
                results_topic=self.results_topic,
                results_partitions=results_partitions,
                timeout=read_timeout,
            )
        finally:
            admin.close()
        self.shards = self.info.layout.shards
        limit = min(self.info.max_message_bytes, 1048576) - 512
        self._max_record = min(max_event_bytes, limit) if max_event_bytes else limit
        # The local index is opened on first use: a process that only sends commands and reads
        # read models never needs one, so it starts in the same time whatever the history.
        self._index_option = index
        self._topic_index_instance: TopicIndex | None = None
        self.index_path: Path | None = None
        if index is not None:
            _ = self.topic_index  # a file named in the URL is claimed at once

    @property
    def topic_index(self) -> TopicIndex:
        """The local index and its reader, opened (and caught up as needed) on first use."""
        with self._lock:
            self._check_open()
            if self._topic_index_instance is None:
                self.index_path, self._index_lock = self._open_index_file(self._index_option)
                index = LocalIndex(self.index_path)
                index.bind(self.topic, self.info.topic_id)
                self._topic_index_instance = TopicIndex(
                    index, self.topic, self.partitions, self._new_consumer, self._read_timeout
                )
            return self._topic_index_instance

    @property
    def _index(self) -> LocalIndex:
        return self.topic_index.index

    @property
    def _topic_index(self) -> TopicIndex:
        return self.topic_index

    def _open_index_file(self, index: str | Path | None) -> tuple[Path, TextIO]:
        if index is None:
            return default_index_path(self.topic)
        path = Path(index)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = lock_index_file(path)
        if lock is None:
            raise ConfigurationError(
                f"index file {path} is in use by another store instance; each process (and "
                "each store) needs its own index file"
            )
        return path, lock

    def _new_consumer(self, **settings: Any) -> KafkaConsumer:
        return KafkaConsumer(
            bootstrap_servers=self._servers,
            client_id=f"{self._client_id}-consumer",
            allow_auto_create_topics=False,
            request_timeout_ms=max(int(self._read_timeout * 1000), 31000),
            # kafka-python connects in the constructor, for 30 s unless told otherwise.
            **{"bootstrap_timeout_ms": int(self._read_timeout * 1000), **settings},
            **self._security,
        )

    def _new_producer(self, **settings: Any) -> KafkaProducer:
        options: dict[str, Any] = {
            "bootstrap_servers": self._servers,
            "client_id": f"{self._client_id}-producer",
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 0,
            "transaction_timeout_ms": 15000,
            "delivery_timeout_ms": int(self._settings.commit_timeout * 1000),
            "request_timeout_ms": min(int(self._settings.commit_timeout * 1000) - 1, 10000),
            "max_block_ms": int(self._settings.commit_timeout * 1000),
            "bootstrap_timeout_ms": int(self._settings.commit_timeout * 1000),
            "allow_auto_create_topics": False,
            # init_transactions and the first AddPartitionsToTxn poll while the coordinator
            # settles the previous epoch; 100 ms steps double the cost of taking a writer over.
            "retry_backoff_ms": 20,
            **self._security,
        }
        options.update(settings)
        return KafkaProducer(**options)

    @property
    def partitions(self) -> int:
        """The topic's partition count (fixed for its life)."""
        return self.info.layout.partitions

    def partition_for(self, aggregate_id: UUID) -> int:
        """Kafka's default partition of ``aggregate_id``'s key."""
        return partition_for(aggregate_id, self.partitions)

    def shard_of(self, partition: int) -> int:
        """The writer shard that owns ``partition``."""
        return partition % self.shards

    def shard_for(self, aggregate_id: UUID) -> int:
        """The writer shard of ``aggregate_id`` (the commands partition its commands go to)."""
        return self.shard_of(self.partition_for(aggregate_id))

    def shard_partitions(self, shard: int) -> list[int]:
        """The events-topic partitions writer shard ``shard`` owns."""
        return [p for p in range(self.partitions) if self.shard_of(p) == shard]

    @property
    def max_record_bytes(self) -> int:
        """The largest record (key, value and headers) the store writes: ``max_event_bytes``,
        at most the topic's ``max.message.bytes`` (and 1 MiB) less 512 bytes of overhead."""
        return self._max_record

    def check_size(self, event: NewEvent) -> None:
        """Refuse an event larger than the store accepts (before anything is sent)."""
        if record_size(event) > self._max_record:
            raise EventTooLargeError(
                f"event {event.topic} v{event.version} of {event.aggregate_id} takes about "
                f"{record_size(event)} bytes; the store accepts {self._max_record} "
                "(max_event_bytes). Nothing was written"
            )

    def command_router(self, app: Application) -> KafkaCommandRouter:
        """Commands go to their shard's owner over ``<name>.commands``."""
        self._check_open()
        router = KafkaCommandRouter(self, app)
        with self._lock:
            self._routers.append(router)
        return router

    def writer_members(self, timeout: float = 5.0) -> int | None:
        """How many writer processes are members of ``<name>-writers`` now (None: unknown)."""
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self._servers,
                client_id=f"{self._client_id}-admin",
                request_timeout_ms=int(timeout * 1000),
                bootstrap_timeout_ms=int(timeout * 1000),
                **self._security,
            )
        except KafkaError:
            return None
        try:
            return count_group_members(admin, self.writer_group)
        finally:
            admin.close()

    def append(self, events: Sequence[NewEvent]) -> Positions:
        """Append atomically, checking each aggregate's next version (see the module doc)."""
        if not events:
            return {}
        self._check_open()
        placed = [self.partition_for(e.route_with or e.aggregate_id) for e in events]
        shards = {self.shard_of(p) for p in placed}
        if len(shards) > 1:
            raise CrossShardCommandError(
                f"these events fall in writer shards {sorted(shards)} of {self.topic!r}, which "
                "cannot be written in one atomic transaction; nothing was written. Use one "
                "shard, or split the work with a process manager"
            )
        for event in events:
            self.check_size(event)
        return self._writer(shards.pop()).append(events, placed)

    def _writer(self, shard: int) -> ShardWriter:
        topic_index = self.topic_index
        with self._lock:
            self._check_open()
            writer = self._writers.get(shard)
            if writer is None:
                writer = ShardWriter(
                    topic=self.topic,
                    shard=shard,
                    partitions=self.shard_partitions(shard),
                    transactional_id=f"{self.name}-writer-{shard}",
                    producer_factory=self._new_producer,
                    topic_index=topic_index,
                    settings=self._settings,
                )
                self._writers[shard] = writer
            return writer

    def read(
        self, aggregate_id: UUID, *, after_version: int = 0, up_to_version: int | None = None
    ) -> list[RecordedEvent]:
        """One aggregate's events, from the local index once its partition has caught up (to
        past every write this process was told about: read your own writes)."""
        self._check_open()
        partition = self.partition_for(aggregate_id)
        deadline = time.monotonic() + self._read_timeout  # one for the whole read
        self._await_visible(partition, deadline)
        self._topic_index.catch_up([partition], deadline=deadline)
        return self._index.aggregate_events(aggregate_id, after_version, up_to_version)

    def saw(self, positions: Positions) -> None:
        """Record positions of writes this process was told about (a command's result): a read
        here waits, bounded, until their commit markers are visible."""
        with self._lock:
            for partition, offset in positions.items():
                if offset > self._seen.get(partition, 0):
                    self._seen[partition] = offset

    def _await_visible(self, partition: int, deadline: float) -> None:
        # A result can arrive before the commit marker reaches the events partition.
        wanted = self._seen.get(partition, 0)
        if wanted <= self._visible.get(partition, 0):
            return
        delay = 0.002
        while True:
            end = self._head(max(0.2, deadline - time.monotonic()))[partition]
            self._visible[partition] = end
            if end >= wanted or time.monotonic() > deadline:
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def read_for_decision(
        self, aggregate_id: UUID, *, after_version: int = 0
    ) -> list[RecordedEvent]:
        """Straight from the local index, without catching up: the shard writer checks every
        append against an index that holds every committed write (it is fenced, re-initialised
        and caught up whenever another process wrote), so a stale read can only end in a
        ConcurrencyError, and the writer's catch-up has refreshed the index for the retry."""
        self._check_open()
        return self._index.aggregate_events(aggregate_id, after_version, None)

    def read_partition(self, partition: int, *, start: int, limit: int) -> list[RecordedEvent]:
        """Served from the local index, which holds every committed record of the topic
        (malformed ones as events with the nil aggregate id)."""
        self._check_open()
        if not 0 <= partition < self.partitions or limit < 1:
            return []
        self._topic_index.catch_up([partition])
        return self._index.partition_events(partition, start, limit)

    def head(self) -> Positions:
        """Each partition's last stable offset (the end a ``read_committed`` reader sees)."""
        return self._head(self._read_timeout)

    def _head(self, timeout: float) -> Positions:
        self._check_open()
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        try:
            with self._head_lock:
                reader = self._head_reader
                if reader is None:
                    reader = self._head_reader = self._new_consumer(
                        group_id=None,
                        enable_auto_commit=False,
                        isolation_level="read_committed",
                        bootstrap_timeout_ms=int(timeout * 1000),
                    )
                ends = reader.end_offsets(tps, timeout_ms=int(timeout * 1000))
        except KafkaError as error:
            raise StoreUnavailableError(
                f"cannot read the end offsets of {self.topic}: {error}"
            ) from error
        return {tp.partition: int(ends[tp]) for tp in tps}

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot`` in the local index (a cache: it is not written to Kafka)."""
        self._check_open()
        self._index.save_snapshot(snapshot)

    def latest_snapshot(self, aggregate_id: UUID) -> Snapshot | None:
        """The newest snapshot this process kept of ``aggregate_id``."""
        self._check_open()
        return self._index.latest_snapshot(aggregate_id)

    def feed(
        self,
        group: str,
        *,
        on_assign: OnAssign,
        on_revoke: OnRevoke | None = None,
        consumer: ConsumerSettings | None = None,
    ) -> FeedReader:
        """A member of consumer group ``group`` (used as the Kafka group id, unchanged)."""
        self._check_open()
        return KafkaFeedReader(
            self._new_consumer,
            topic=self.topic,
            group=group,
            on_assign=on_assign,
            on_revoke=on_revoke,
            settings=consumer,
        )

    def catch_up(self) -> None:
        """Bring the local index up to the topic's current end (reads do this themselves)."""
        self._topic_index.catch_up()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the event store is closed")

    def close(self) -> None:
        """Finish queued appends, release the producers, the consumer and the index file."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            writers = list(self._writers.values())
            routers, self._routers = self._routers, []
            topic_index, self._topic_index_instance = self._topic_index_instance, None
            head_reader, self._head_reader = self._head_reader, None
        for router in routers:
            router.close()
        for writer in writers:
            writer.close()
        if head_reader is not None:
            head_reader.close(autocommit=False)
        if topic_index is not None:
            topic_index.close()
            topic_index.index.close()
        if self._index_lock is not None:
            self._index_lock.close()


def open_store(url: str, *, name: str) -> KafkaEventStore:
    """Open the Kafka event store that ``url`` names for the application ``name``."""
    return KafkaEventStore(name, **parse_url(url))


def writer_stats(store: KafkaEventStore) -> dict[int, dict[str, int]]:
    """Counters of each shard writer of ``store`` (transactions, inits, fenced, unknown)."""
    return {shard: dict(w.stats) for shard, w in store._writers.items()}
