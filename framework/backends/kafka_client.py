"""The kafka-python names the Kafka backend uses, imported in one place.

kafka-python 3.0.x reads its protocol schemas with ``importlib.resources.read_text``, which
Python 3.11 deprecates; the warning fires while kafka-python imports and is not ours to fix, so
it is silenced here, where it happens, rather than failing every ``-W error`` test suite.
Import kafka-python through this module (``from framework.backends.kafka_client import ...``).
"""

from __future__ import annotations

import selectors
import warnings
from collections.abc import Iterable
from typing import Any

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message=r"(open|read)_text is deprecated", category=DeprecationWarning
    )
    from kafka import KafkaAdminClient as _KafkaAdminClient
    from kafka import KafkaConsumer as _KafkaConsumer
    from kafka import KafkaProducer as _KafkaProducer
    from kafka import TopicPartition
    from kafka.admin import ConfigResource, ConfigResourceType
    from kafka.consumer.subscription_state import ConsumerRebalanceListener
    from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
    from kafka.errors import (
        InvalidProducerEpochError,
        KafkaError,
        KafkaTimeoutError,
        ProducerFencedError,
        TopicAlreadyExistsError,
    )
    from kafka.partitioner.default import murmur2

__all__ = [
    "ConfigResource",
    "ConfigResourceType",
    "ConsumerRebalanceListener",
    "CooperativeStickyAssignor",
    "GroupStickyAssignor",
    "InvalidProducerEpochError",
    "KafkaAdminClient",
    "KafkaConsumer",
    "KafkaError",
    "KafkaProducer",
    "KafkaTimeoutError",
    "ProducerFencedError",
    "QuietSelector",
    "TopicAlreadyExistsError",
    "TopicPartition",
    "add_partitions_to_transaction",
    "knows_topic",
    "murmur2",
]


class QuietSelector(selectors.DefaultSelector):
    """The standard selector, minus one cost kafka-python pays on every request: it asks for a
    socket's key before registering it, and for a socket not registered yet the standard
    ``get_key`` formats ``repr(socket)`` (two system calls) into its ``KeyError``. That was 11 %
    of a writer's CPU; here the miss raises a plain ``KeyError``."""

    def __init__(self) -> None:
        super().__init__()
        # Private to selectors' base class since Python 3.4; without them, the standard path.
        self._lookup = getattr(self, "_fileobj_lookup", None)
        self._keys: dict[int, selectors.SelectorKey] | None = getattr(self, "_fd_to_key", None)

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        if self._lookup is None or self._keys is None or self.get_map() is None:
            return super().get_key(fileobj)  # (a closed selector says so, as it should)
        key = self._keys.get(self._lookup(fileobj))
        if key is None:
            raise KeyError(fileobj)  # repr'd only if someone prints it
        return key


def _defaults(configs: dict[str, Any]) -> None:
    configs.setdefault("selector", QuietSelector)
    # keel reports through OpenTelemetry; kafka-python's own sensors, which nothing reads,
    # cost a few per cent of a writer's CPU on every request.
    configs.setdefault("metrics_enabled", False)


class KafkaProducer(_KafkaProducer):  # type: ignore[misc]
    """kafka-python's producer, on a :class:`QuietSelector` and without its own metrics unless
    told otherwise."""

    def __init__(self, **configs: Any) -> None:
        _defaults(configs)
        super().__init__(**configs)


class KafkaConsumer(_KafkaConsumer):  # type: ignore[misc]
    """kafka-python's consumer, on a :class:`QuietSelector` and without its own metrics unless
    told otherwise."""

    def __init__(self, *topics: str, **configs: Any) -> None:
        _defaults(configs)
        super().__init__(*topics, **configs)


class KafkaAdminClient(_KafkaAdminClient):  # type: ignore[misc]
    """kafka-python's admin client, on a :class:`QuietSelector` unless told otherwise."""

    def __init__(self, **configs: Any) -> None:
        configs.setdefault("selector", QuietSelector)  # it has no metrics switch
        super().__init__(**configs)


def add_partitions_to_transaction(
    producer: KafkaProducer, partitions: Iterable[TopicPartition]
) -> None:
    """Name every partition a transaction will write before its first record is sent, so one
    AddPartitionsToTxn request covers them all: kafka-python adds a partition only when a record
    for it is appended, which costs a broker round trip for each later round of records. Only an
    optimisation: a kafka-python without this hook still adds each partition on its first record."""
    manager = getattr(producer, "_transaction_manager", None)
    add = getattr(manager, "maybe_add_partition_to_transaction", None)
    if add is None:
        return
    for tp in partitions:
        add(tp)


class _SubscribedTopics:
    """Cluster metadata showing only ``topics`` (and what the client knows of them)."""

    def __init__(self, cluster: Any, topics: set[str]) -> None:
        self._cluster = cluster
        self._topics = topics

    def topics(self) -> set[str]:
        return {t for t in self._topics if self._cluster.partitions_for_topic(t) is not None}

    def partitions_for_topic(self, topic: str) -> Any:
        return self._cluster.partitions_for_topic(topic) if topic in self._topics else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cluster, name)


class GroupStickyAssignor(CooperativeStickyAssignor):  # type: ignore[misc]
    """kafka-python's cooperative-sticky assignor, shown only the topics the group's members
    subscribe to. kafka-python's version walks every partition of every topic in the client's
    metadata and drops them from lists one at a time, quadratic in the cluster's partitions: on
    a broker holding 5,211 topics one assignment took 6.8 s, and a writer taking a shard over
    waited for it. Same protocol name, so it shares a group with the plain assignor."""

    def assign(self, cluster: Any, members: Any) -> Any:
        topics: set[str] = set()
        for member in members:
            topics.update(self.parse_member_metadata(member.metadata).subscription)
        return super().assign(_SubscribedTopics(cluster, topics), members)


def knows_topic(producer: KafkaProducer, topic: str) -> bool:
    """Whether ``producer`` has ``topic``'s partitions, so that ``send()`` returns at once
    (kafka-python waits for metadata only when it has none: the same test, on its cluster
    metadata; a producer without that attribute is taken not to know)."""
    cluster = getattr(producer, "_metadata", None)
    return cluster is not None and cluster.partitions_for_topic(topic) is not None
