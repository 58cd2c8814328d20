"""The events topic: created when missing, checked for safety, its layout pinned for life.

Refused at startup (:class:`UnsafeConfigurationError`, naming the setting and the safe value):
compaction or any finite retention (``cleanup.policy`` other than ``delete``, ``retention.ms`` or
``retention.bytes`` other than -1), unclean leader election on a replicated topic, and
``min.insync.replicas`` below 2 when the replication factor is 3 or more. A topic with one
replica (a development broker) or two is accepted with a logged warning: with one replica there
is no second copy to require, and refusing would only stop development.

The layout (partition count and writer-shard count) is recorded in the first record of a small
companion topic, ``<events topic>.layout`` (one partition, never deleted); the first record
written wins a race between two processes creating the topic. Kafka has no custom topic configs,
and the local index is per process, so neither could hold it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from framework.backends.kafka_client import (
    ConfigResource,
    ConfigResourceType,
    KafkaAdminClient,
    KafkaConsumer,
    KafkaError,
    KafkaProducer,
    TopicAlreadyExistsError,
    TopicPartition,
)
from framework.errors import (
    ConfigurationError,
    StoreUnavailableError,
    TopicLayoutChangedError,
    UnsafeConfigurationError,
)

__all__ = [
    "Layout",
    "TopicInfo",
    "check_topic_configs",
    "prepare_command_topics",
    "prepare_topic",
]

log = logging.getLogger(__name__)

DEFAULT_PARTITIONS = 3
COMMANDS_RETENTION_MS = 7 * 24 * 3600 * 1000  # a writer may be down this long
RESULTS_RETENTION_MS = 3600 * 1000  # answers, read within seconds
_warned: set[str] = set()  # topics already warned about in this process


@dataclass(frozen=True)
class Layout:
    """What stays fixed for a topic's life."""

    partitions: int
    shards: int


@dataclass(frozen=True)
class TopicInfo:
    """The events topic as the store found (or made) it."""

    name: str
    topic_id: str
    layout: Layout
    replication_factor: int
    max_message_bytes: int


def check_topic_configs(topic: str, configs: Mapping[str, str], replication_factor: int) -> None:
    """Refuse a topic whose settings would delete or lose events; warn about weak ones."""
    policy = {p.strip() for p in configs.get("cleanup.policy", "delete").split(",")}
    if policy != {"delete"}:
        raise UnsafeConfigurationError(
            f"topic {topic!r} has cleanup.policy={configs.get('cleanup.policy')}: compaction "
            "would delete events. Set cleanup.policy=delete (with retention.ms=-1)"
        )
    for setting in ("retention.ms", "retention.bytes"):
        value = configs.get(setting, "-1")
        if int(value) != -1:
            raise UnsafeConfigurationError(
                f"topic {topic!r} has {setting}={value}: Kafka would delete old events. "
                f"Set {setting}=-1 (keep forever)"
            )
    if replication_factor >= 2 and configs.get("unclean.leader.election.enable") == "true":
        raise UnsafeConfigurationError(
            f"topic {topic!r} has unclean.leader.election.enable=true: an out-of-sync replica "
            "could become leader and drop acknowledged events. Set it to false"
        )
    min_isr = int(configs.get("min.insync.replicas", "1"))
    if replication_factor >= 3 and min_isr < 2:
        raise UnsafeConfigurationError(
            f"topic {topic!r} has replication factor {replication_factor} but "
            f"min.insync.replicas={min_isr}: an append acknowledged by one broker is lost with "
            "it. Set min.insync.replicas=2"
        )
    if topic in _warned:
        return
    _warned.add(topic)
    if replication_factor == 1:
        log.warning(
            "topic %r has a single replica: fine for development, but events are lost with the "
            "broker's disk. Use replication factor 3 and min.insync.replicas=2 in production",
            topic,
        )
    elif min_isr < 2:
        log.warning(
            "topic %r has replication factor %s and min.insync.replicas=%s: an acknowledged "
            "append may live on one broker only. Use replication factor 3 and "
            "min.insync.replicas=2",
            topic,
            replication_factor,
            min_isr,
        )


def prepare_topic(
    admin: KafkaAdminClient,
    *,
    topic: str,
    partitions: int | None,
    shards: int | None,
    replication_factor: int | None,
    min_insync_replicas: int | None,
    new_producer: Callable[..., KafkaProducer],
    new_consumer: Callable[..., KafkaConsumer],
    timeout: float,
) -> TopicInfo:
    """Create the events topic if missing, check it, and return its fixed layout."""
    try:
        brokers = len(admin.describe_cluster()["brokers"])
        rf = replication_factor or min(3, brokers)
        if rf > brokers:
            raise ConfigurationError(
                f"replication_factor={rf} but the cluster has {brokers} broker(s)"
            )
        min_isr = min_insync_replicas or min(2, rf)
        topic_configs = {
            "cleanup.policy": "delete",
            "retention.ms": "-1",
            "retention.bytes": "-1",
            "min.insync.replicas": str(min_isr),
            "unclean.leader.election.enable": "false",
        }
        described = _ensure(
            admin, topic, partitions or DEFAULT_PARTITIONS, rf, topic_configs, timeout
        )
        actual_partitions = len(described["partitions"])
        actual_rf = len(described["partitions"][0]["replica_nodes"])
        configs = _configs(admin, topic)
        check_topic_configs(topic, configs, actual_rf)
        layout_topic = f"{topic}.layout"
        layout_rf = min(actual_rf, brokers)
        _ensure(
            admin,
            layout_topic,
            1,
            layout_rf,
            {**topic_configs, "min.insync.replicas": str(min(min_isr, layout_rf))},
            timeout,
        )
        layout = read_layout(new_consumer, layout_topic, timeout)
        if layout is None:
            write_layout(
                new_producer, layout_topic, Layout(actual_partitions, shards or 1), timeout
            )
            layout = read_layout(new_consumer, layout_topic, timeout)
            assert layout is not None
    except KafkaError as error:
        raise StoreUnavailableError(f"cannot prepare topic {topic!r}: {error!r}") from error
    if layout.partitions != actual_partitions:
        raise TopicLayoutChangedError(
            f"topic {topic!r} now has {actual_partitions} partitions but was created with "
            f"{layout.partitions}: aggregates would move to other partitions. Restore the topic"
        )
    if partitions is not None and partitions != layout.partitions:
        raise TopicLayoutChangedError(
            f"partitions={partitions} is configured but topic {topic!r} has "
            f"{layout.partitions}, fixed for its life. Configure partitions={layout.partitions}"
        )
    if shards is not None and shards != layout.shards:
        raise TopicLayoutChangedError(
            f"shards={shards} is configured but topic {topic!r} was created with "
            f"{layout.shards} writer shards, fixed for its life. Configure shards={layout.shards}"
        )
    if layout.shards > layout.partitions:
        raise ConfigurationError(
            f"{layout.shards} shards cannot share {layout.partitions} partitions"
        )
    return TopicInfo(
        name=topic,
        topic_id=str(described["topic_id"]),
        layout=layout,
        replication_factor=actual_rf,
        max_message_bytes=int(configs.get("max.message.bytes", "1048588")),
    )


def prepare_command_topics(
    admin: KafkaAdminClient,
    info: TopicInfo,
    *,
    commands_topic: str,
    results_topic: str,
    results_partitions: int,
    timeout: float,
) -> int:
    """Create the commands topic (one partition per writer shard) and the results topic when
    missing; return the results topic's partition count.

    Neither is the log of record: commands are kept a week (a writer may be down that long),
    results an hour."""
    rf = info.replication_factor
    base = {
        "cleanup.policy": "delete",
        "min.insync.replicas": str(min(2, rf)),
        "unclean.leader.election.enable": "false",
    }
    try:
        commands = _ensure(
            admin,
            commands_topic,
            info.layout.shards,
            rf,
            {**base, "retention.ms": str(COMMANDS_RETENTION_MS)},
            timeout,
        )
        results = _ensure(
            admin,
            results_topic,
            results_partitions,
            rf,
            {**base, "retention.ms": str(RESULTS_RETENTION_MS)},
            timeout,
        )
    except KafkaError as error:
        raise StoreUnavailableError(f"cannot prepare {commands_topic!r}: {error!r}") from error
    if len(commands["partitions"]) != info.layout.shards:
        raise TopicLayoutChangedError(
            f"topic {commands_topic!r} has {len(commands['partitions'])} partitions but "
            f"{info.name!r} has {info.layout.shards} writer shards: each shard needs exactly "
            f"one commands partition. Recreate {commands_topic!r} with "
            f"{info.layout.shards} partitions (it holds no history)"
        )
    return len(results["partitions"])


def _describe(admin: KafkaAdminClient, topic: str) -> dict[str, Any] | None:
    found = admin.describe_topics([topic])
    if not found or found[0].get("error_code") or not found[0].get("partitions"):
        return None
    described: dict[str, Any] = found[0]
    return described


def _described_or_none(admin: KafkaAdminClient, topic: str) -> dict[str, Any] | None:
    try:
        return _describe(admin, topic)
    except KafkaError as error:  # a broker that lags may also fail the request: ask again
        log.debug("describing %r: %s", topic, error)
        return None


def _ensure(
    admin: KafkaAdminClient,
    topic: str,
    partitions: int,
    replication_factor: int,
    configs: Mapping[str, str],
    timeout: float,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    described = _describe(admin, topic)
    if described is not None:
        return described
    try:
        admin.create_topics(
            {
                topic: {
                    "num_partitions": partitions,
                    "replication_factor": replication_factor,
                    "configs": dict(configs),
                }
            },
            timeout_ms=max(1, int((deadline - time.monotonic()) * 1000)),
        )
        log.info("created topic %r (%s partitions, RF %s)", topic, partitions, replication_factor)
    except TopicAlreadyExistsError:
        pass  # Another process created it first.
    admin.wait_for_topics([topic], timeout_ms=max(1, int((deadline - time.monotonic()) * 1000)))
    # wait_for_topics heard of the topic from one broker; on a cluster the next request may go
    # to another whose metadata has not caught up yet: ask again until the deadline.
    while (described := _described_or_none(admin, topic)) is None:
        if time.monotonic() >= deadline:
            raise StoreUnavailableError(
                f"topic {topic!r} was created but cannot be described within {timeout:g} s"
            )
        time.sleep(0.1)
    return described


def _configs(admin: KafkaAdminClient, topic: str) -> dict[str, str]:
    found = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all"
    )
    entries = found["topic"][topic]
    return {name: str(entry.get("value")) for name, entry in entries.items()}


def read_layout(
    new_consumer: Callable[..., KafkaConsumer], layout_topic: str, timeout: float
) -> Layout | None:
    """The layout recorded first in ``layout_topic``, or None when nothing is recorded."""
    consumer = new_consumer(
        group_id=None, enable_auto_commit=False, isolation_level="read_committed"
    )
    try:
        tp = TopicPartition(layout_topic, 0)
        consumer.assign([tp])
        end = consumer.end_offsets([tp], timeout_ms=int(timeout * 1000))[tp]
        if end == 0:
            return None
        consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200, max_records=1).values():
                try:
                    data = json.loads(records[0].value)
                    return Layout(int(data["partitions"]), int(data["shards"]))
                except (ValueError, KeyError, TypeError) as error:
                    raise TopicLayoutChangedError(
                        f"the layout record of {layout_topic!r} is unreadable: {error}"
                    ) from error
        raise StoreUnavailableError(f"cannot read the layout record of {layout_topic!r}")
    finally:
        consumer.close(autocommit=False)


def write_layout(
    new_producer: Callable[..., KafkaProducer], layout_topic: str, layout: Layout, timeout: float
) -> None:
    """Record ``layout`` (only the first record of the topic counts)."""
    producer = new_producer()
    try:
        value = json.dumps({"format": 1, "partitions": layout.partitions, "shards": layout.shards})
        producer.send(layout_topic, key=b"layout", value=value.encode(), partition=0).get(
            timeout=timeout
        )
    finally:
        producer.close(timeout=timeout)
