"""The Debezium feed against a real Kafka Connect worker (scripts/connect: Connect 4.3.1, the
Debezium 3.6.1 PostgreSQL connector) reading the test PostgreSQL (wal_level=logical), into a
shop on the Kafka store with a writer: the snapshot and the stream arrive once each."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from framework.cdc import DebeziumTopicSource
from framework.persistence import open_store
from framework.writer import writer
from sample_app import crm
from sample_app.shop.application import build
from tests.conftest import _unavailable
from tests.integration.cdc_support import Crm, make_crm, shop_state

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]


def _http(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
    return json.loads(text) if text else None


@pytest.fixture(scope="module")
def connect_url(kafka_bootstrap: str) -> Iterator[str]:
    """One Connect worker for the module (its start-up is the slow part): the one already
    running on KEEL_CONNECT_PORT, or one started here and stopped afterwards."""
    env = {**os.environ, "KEEL_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    started = subprocess.run(
        [str(REPO / "scripts" / "connect"), "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if started.returncode != 0:
        _unavailable(f"scripts/connect start failed:\n{started.stdout}\n{started.stderr}")
    url = subprocess.run(
        [str(REPO / "scripts" / "connect"), "url"], env=env, capture_output=True, text=True
    ).stdout.strip()
    yield url
    if "already running" not in started.stdout:
        subprocess.run([str(REPO / "scripts" / "connect"), "stop"], env=env, timeout=120)


@pytest.fixture
def legacy(postgres_url: str) -> Iterator[Crm]:
    yield from make_crm(postgres_url)


def _wait(what: str, check: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_debezium_snapshot_and_stream_become_shop_commands_once(
    legacy: Crm,
    connect_url: str,
    kafka_bootstrap: str,
    postgres_url: str,
    unique_name: Callable[[str], str],
):
    with legacy.engine.connect() as conn:
        level = conn.execute(sa.text("SHOW wal_level")).scalar_one()
    if level != "logical":
        pytest.fail(
            f"the test PostgreSQL runs with wal_level={level}: Debezium needs logical "
            "(scripts/postgres start sets it; restart the server)",
            pytrace=False,
        )
    legacy.sql("ALTER TABLE CRM REPLICA IDENTITY FULL")  # old rows in updates and deletes
    with legacy.engine.begin() as conn:
        for i in (1, 2, 3):
            legacy.insert(conn, i)

    db = make_url(postgres_url)
    prefix = unique_name("cdc").replace("-", "_")
    connector = prefix
    config = {
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "plugin.name": "pgoutput",
        "database.hostname": db.host or "127.0.0.1",
        "database.port": str(db.port or 5432),
        "database.user": db.username or "postgres",
        "database.password": db.password or "unused-with-trust",
        "database.dbname": db.database,
        "topic.prefix": prefix,
        "table.include.list": legacy.table,
        "slot.name": prefix,
        "slot.drop.on.stop": "true",
        "publication.name": prefix,
        "publication.autocreate.mode": "filtered",
        "snapshot.mode": "initial",
        "tombstones.on.delete": "false",
        "topic.creation.default.replication.factor": "1",
        "topic.creation.default.partitions": "1",
    }
    _http("POST", f"{connect_url}/connectors", {"name": connector, "config": config})
    topic = f"{prefix}.{legacy.table}"
    store_name = unique_name("cdcshop").replace("-", "_")
    app = build(open_store(f"kafka://{kafka_bootstrap}?partitions=1", name=store_name))
    try:

        def running() -> bool:
            try:
                s = _http("GET", f"{connect_url}/connectors/{connector}/status")
            except urllib.error.HTTPError:
                return False
            tasks = s.get("tasks", [])
            if any(t["state"] == "FAILED" for t in tasks):
                raise AssertionError(f"connector task failed: {tasks[0].get('trace', '')[:3000]}")
            return bool(tasks) and all(t["state"] == "RUNNING" for t in tasks)

        _wait("the connector to run", running)
        source = DebeziumTopicSource(kafka_bootstrap, topic, ["id"])
        feed = crm.CrmCustomers(source, app, legacy.engine, name=legacy.feed_name, batch_size=50)

        def read_until(n: int) -> None:
            _wait(f"{n} changes", lambda: (feed.poll(), feed.status().changes)[1] >= n)

        with writer(app):
            _wait("the snapshot topic", lambda: _topic_exists(source))
            read_until(3)  # the snapshot
            legacy.sql("UPDATE CRM SET street = 'Side 2' WHERE id = 1")
            legacy.sql("UPDATE CRM SET active = false WHERE id = 2")
            legacy.sql("DELETE FROM CRM WHERE id = 3")
            with legacy.engine.begin() as conn:
                legacy.insert(conn, 4)
                legacy.insert(conn, 5, email="not-an-email")  # parked
                conn.execute(sa.text(f"UPDATE {legacy.table} SET city = 'Bonn' WHERE id = 4"))
            read_until(9)
            state = shop_state(app, [1, 2, 3, 4, 5])
            events = sum(len(app.store.read(crm.customer_id(i))) for i in range(1, 6))

            # The whole topic again (a lost cursor, Connect re-sending): the same command ids.
            legacy.sql(f"UPDATE keel_cdc_feeds SET cursor = NULL WHERE feed = '{legacy.feed_name}'")
            legacy.sql(f"DELETE FROM keel_dead_letters WHERE projection = 'cdc:{legacy.feed_name}'")
            again = feed.run(until_caught_up=True)
            events_again = sum(len(app.store.read(crm.customer_id(i))) for i in range(1, 6))
        status = feed.status()
        letters = feed.dead_letters()
        source.close()
    finally:
        _http("DELETE", f"{connect_url}/connectors/{connector}")
        app.store.close()
    expected = {
        1: ("active", "Side 2", "Berlin"),
        2: ("deactivated", "Main 1", "Berlin"),
        3: ("deactivated", "Main 1", "Berlin"),
        4: ("active", "Main 1", "Bonn"),
        5: None,
    }
    lost = sum(1 for i, want in expected.items() if state[i] != want)
    print(
        f"CDC[debezium]: changes=9 commands={events} lost={lost} dup={events_again - events} "
        f"reread={again} dead_letters={status.dead_letters} lag={status.lag_changes}"
    )
    assert state == expected
    assert events == 3 + 1 + 1 + 1 + 2 and events_again == events and again == 9
    assert [feed.change_of(d).key for d in letters] == [{"id": 5}]
    assert status.lag_changes == 0


def _topic_exists(source: DebeziumTopicSource) -> bool:
    try:
        source.lag(None)
    except Exception:
        return False
    return True
