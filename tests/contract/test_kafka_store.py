"""The store contract on the Kafka backend (a real broker: ``scripts/kafka start``).

Every test gets a fresh application name, so a fresh ``<name>.events`` topic; each open of the
URL (in this process or a child) is its own store instance with its own local index file.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import pytest

from framework.application import Application
from framework.writer import writer
from tests.contract.store_contract import EventStoreContract


@pytest.mark.kafka
class TestKafkaStore(EventStoreContract):
    """``store.append`` is the fenced append; ``app.execute`` goes through a writer, here one
    running in the test process, which the child processes' commands reach over Kafka."""

    attempts = 15

    def serving(self, app: Application) -> AbstractContextManager[Any]:
        return writer(app)

    @pytest.fixture
    def store_url(self, kafka_bootstrap: str) -> str:
        return f"kafka://{kafka_bootstrap}?partitions=3"
