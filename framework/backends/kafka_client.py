"""The kafka-python names the Kafka backend uses, imported in one place.

kafka-python 3.0.x reads its protocol schemas with ``importlib.resources.read_text``, which
Python 3.11 deprecates; the warning fires while kafka-python imports and is not ours to fix, so
it is silenced here, where it happens, rather than failing every ``-W error`` test suite.
Import kafka-python through this module (``from framework.backends.kafka_client import ...``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message=r"(open|read)_text is deprecated", category=DeprecationWarning
    )
    from kafka import (
        KafkaAdminClient,
        KafkaConsumer,
        KafkaProducer,
        TopicPartition,
    )
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
    "InvalidProducerEpochError",
    "KafkaAdminClient",
    "KafkaConsumer",
    "KafkaError",
    "KafkaProducer",
    "KafkaTimeoutError",
    "ProducerFencedError",
    "TopicAlreadyExistsError",
    "TopicPartition",
    "add_partitions_to_transaction",
    "murmur2",
]


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
