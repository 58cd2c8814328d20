"""Store URL options: a typo or a bad value is a ConfigurationError that names the option and
lists the known ones, on every backend, before anything is opened or created."""

from __future__ import annotations

from pathlib import Path

import pytest

from framework.application import Application
from framework.backends import postgres
from framework.backends.kafka import parse_url as kafka_url
from framework.errors import ConfigurationError
from framework.persistence import open_store


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("max_event_byte=10", r"unknown option 'max_event_byte' in the SQLite store URL; "
         r"known: lock_timeout, max_append_bytes, max_event_bytes$"),
        ("lock_timeout=abc", r"option lock_timeout='abc' in the SQLite store URL must be a "
         r"positive whole number"),
        ("lock_timeout=0", "lock_timeout='0'.*positive whole number"),
        ("max_event_bytes=ten", "max_event_bytes='ten'.*positive number of bytes"),
    ],
)  # fmt: skip
def test_a_bad_sqlite_option_is_refused_before_the_file_is_made(
    tmp_path: Path, query: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Application("t", f"sqlite:///{tmp_path}/var/t.db?{query}")
    assert not (tmp_path / "var").exists()


def test_sqlite_options_are_honoured(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db?lock_timeout=7&max_event_bytes=100&max_append_bytes=500"
    with open_store(url, name="t") as store:
        assert (store.max_event_bytes, store.max_append_bytes) == (100, 500)
    assert (tmp_path / "t.db").exists()


def test_a_memory_store_refuses_an_unknown_option() -> None:
    with pytest.raises(ConfigurationError, match="unknown option 'max_events' in the memory"):
        open_store("memory://?max_events=1", name="t")


PG = "postgresql://ann:s%40cret@db.example:5433/shop"


def test_postgres_options_and_libpq_parameters_are_parsed_without_connecting() -> None:
    settings = postgres.parse_url(
        f"{PG}?pool_size=2&statement_timeout=4.5&max_append_bytes=1000"
        "&sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=shop-web"
    )
    assert settings == {
        "dbname": "shop",
        "host": "db.example",
        "port": 5433,
        "user": "ann",
        "password": "s@cret",
        "pool_size": 2,
        "max_overflow": 2,
        "statement_timeout": 4.5,
        "lock_timeout": 4,
        "idle_in_transaction_session_timeout": 4.5,
        "connect_options": {
            "sslmode": "verify-full",
            "sslrootcert": "/etc/ca.pem",
            "application_name": "shop-web",
        },
        "max_event_bytes": 1000,
        "max_append_bytes": 1000,
    }


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("pool_size=abc", "option pool_size='abc' in the PostgreSQL store URL must be a positive"),
        ("pool_sise=3", r"unknown option 'pool_sise' in the PostgreSQL store URL; known: "
         r"max_append_bytes, max_event_bytes, pool_size, statement_timeout, and libpq's "
         r"connection parameters \(sslmode"),
        ("sslmod=require", "unknown option 'sslmod'"),
        ("statement_timeout=0.5", "statement_timeout='0.5'.*at least 1"),
        ("statement_timeout=nan", "statement_timeout='nan'.*at least 1"),
        ("password=x", "unknown option 'password'"),  # the URL's own part gives it
    ],
)  # fmt: skip
def test_a_bad_postgres_option_is_refused_before_connecting(query: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        open_store(f"{PG}?{query}", name="t")  # db.example is never resolved


def test_the_kafka_store_uses_the_same_rules() -> None:
    with pytest.raises(ConfigurationError, match="unknown option 'colour' in the Kafka store"):
        kafka_url("kafka://h:9092?colour=blue")
    with pytest.raises(ConfigurationError, match=r"partitions='many'.*must be a whole number"):
        kafka_url("kafka://h:9092?partitions=many")
    with pytest.raises(ConfigurationError, match=r"ssl_check_hostname='maybe'.*true or false"):
        kafka_url("kafka://h:9092?ssl_check_hostname=maybe")
