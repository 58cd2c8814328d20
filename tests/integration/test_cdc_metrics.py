"""A running change feed reports its lag (changes and seconds), the commands it issued and the
changes it parked, through the OpenTelemetry SDK (read here from the Prometheus reader, what
``/metrics`` serves); a stopped feed reports no lag at all rather than a stale one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from framework.cdc import PostgresTriggerSource
from sample_app import crm
from sample_app.shop.application import build
from tests.integration.cdc_support import Crm, make_crm
from tests.support import telemetry

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def legacy(postgres_url: str) -> Iterator[Crm]:
    yield from make_crm(postgres_url)


def _value(name: str, **labels: str) -> float | None:
    found = telemetry.scrape(name, **labels)
    return None if not found else sum(v for _, v in found)


def _until(check: Callable[[], bool], what: str, seconds: float = 60) -> None:
    """Wait (bounded) for ``check``: another session's open transaction anywhere on the server
    holds the xid fence back for a moment."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_running_feed_reports_lag_commands_and_dead_letters(legacy: Crm, tmp_path: Path):
    telemetry.install()
    feed_label = {"feed": legacy.feed_name}
    source = PostgresTriggerSource(legacy.engine, legacy.table, ["id"])
    source.install(snapshot=False)
    app = build(f"sqlite:///{tmp_path}/shop.db")
    feed = crm.CrmCustomers(source, app, legacy.engine, name=legacy.feed_name)
    feed.lag_every = 0.0  # sample at every turn of the loop

    # A transaction that takes its xid first and commits last holds back the three changes
    # committed after it: they are in the source, past the cursor, and not yet readable.
    late = legacy.engine.connect()
    late_tx = late.begin()
    legacy.insert(late, 1)
    with legacy.engine.begin() as conn:
        legacy.insert(conn, 2)
        legacy.insert(conn, 3, country="XX")  # refused by the shop: parked
    legacy.sql("UPDATE CRM SET city = 'Bonn' WHERE id = 3")  # held behind it

    assert _value("keel_cdc_source_lag", **feed_label) is None  # not running: no reading
    stop = threading.Event()
    runner = threading.Thread(target=feed.run, args=(stop,), kwargs={"idle": 0.02})
    runner.start()
    try:
        _until(lambda: _value("keel_cdc_source_lag", **feed_label) == 3, "a lag of 3")
        time.sleep(0.1)
        held_back = _value("keel_cdc_source_lag_seconds", **feed_label)
        assert held_back is not None and held_back > 0.1  # the oldest waits since its commit
        assert _value("keel_cdc_commands_total", **feed_label) is None  # nothing issued yet

        late_tx.commit()
        late.close()
        _until(lambda: _value("keel_cdc_source_lag", **feed_label) == 0, "the feed to catch up")
        lag_seconds = _value("keel_cdc_source_lag_seconds", **feed_label)
        commands = _value("keel_cdc_commands_total", **feed_label)
        refused = _value("keel_cdc_dead_letters_total", outcome="dead_lettered", **feed_label)
        held = _value("keel_cdc_dead_letters_total", outcome="held", **feed_label)
    finally:
        stop.set()
        runner.join(timeout=30)
    print(
        f"CDC[metrics]: lag_held_back=3 lag_seconds_held_back={held_back:.2f} "
        f"lag_after={lag_seconds} commands={commands} dead_lettered={refused} held={held}"
    )
    assert lag_seconds == 0
    assert commands == 2  # RegisterCustomer of rows 1 and 2
    assert (refused, held) == (1, 1)
    status = feed.status()
    assert (status.commands, status.dead_letters) == (2, 2)  # the counters agree with the table
    assert _value("keel_cdc_source_lag", **feed_label) is None  # stopped: no stale reading
    assert _value("keel_cdc_source_lag_seconds", **feed_label) is None
    app.close()
