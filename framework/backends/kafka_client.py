"""The kafka-python names the Kafka backend uses, imported in one place.

kafka-python 3.0.x reads its protocol schemas with ``importlib.resources.read_text``, which
Python 3.11 deprecates; the warning fires while kafka-python imports and is not ours to fix, so
it is silenced here, where it happens, rather than failing every ``-W error`` test suite.
Import kafka-python through this module (``from framework.backends.kafka_client import ...``).
"""

from __future__ import annotations

import warnings

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
    "InvalidProducerEpochError",
    "KafkaAdminClient",
    "KafkaConsumer",
    "KafkaError",
    "KafkaProducer",
    "KafkaTimeoutError",
    "ProducerFencedError",
    "TopicAlreadyExistsError",
    "TopicPartition",
    "murmur2",
]
