"""The store contract on the embedded backends: memory, SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.contract.store_contract import EventStoreContract


class TestMemoryStore(EventStoreContract):
    supports_processes = False  # each process would have its own memory

    @pytest.fixture
    def store_url(self) -> str:
        return "memory://"

    @pytest.fixture
    def store(self, store_name: str):  # type: ignore[override]
        # Every open of memory:// is a new store, so the threads share this one instance.
        from framework.persistence import open_store

        with open_store("memory://", name=store_name) as store:
            yield store


class TestSQLiteStore(EventStoreContract):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/events.db"


@pytest.mark.postgres
class TestPostgresStore(EventStoreContract):
    @pytest.fixture
    def store_url(self, postgres_url: str) -> str:
        return postgres_url
