"""The store contract on the Kafka backend (a real broker: ``scripts/kafka start``).

Every test gets a fresh application name, so a fresh ``<name>.events`` topic; each open of the
URL (in this process or a child) is its own store instance with its own local index file.
"""

from __future__ import annotations

import pytest

from tests.contract.store_contract import EventStoreContract


@pytest.mark.kafka
class TestKafkaStore(EventStoreContract):
    attempts = 15

    @pytest.fixture
    def store_url(self, kafka_bootstrap: str) -> str:
        return f"kafka://{kafka_bootstrap}?partitions=3"
