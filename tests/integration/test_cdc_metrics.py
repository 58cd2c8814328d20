"""A running change feed reports its lag (changes and seconds), the commands it issued and the
changes it parked, through the OpenTelemetry SDK (read here from the Prometheus reader, what
``/metrics`` serves); a stopped feed reports no lag at all rather than a stale one."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from framework.cdc import PostgresTriggerSource
from framework.cdc.__main__ import main
from sample_app import crm
from sample_app.shop.application import build
from tests.integration.cdc_support import Crm, make_crm
from tests.support import telemetry

pytestmark = pytest.mark.timeout(120)
PORT, TAKEN_PORT = 20517, 20518  # this session's range (20500-20999), loopback only


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


def test_the_cli_serves_the_feed_metrics_and_refuses_a_port_in_use(
    legacy: Crm,
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    telemetry.install()
    monkeypatch.setenv("KEEL_CRM_TABLE", legacy.table)
    monkeypatch.setenv("KEEL_CRM_FEED", legacy.feed_name)
    monkeypatch.setenv("KEEL_SHOP_EVENT_STORE", f"sqlite:///{tmp_path}/shop.db")
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    PostgresTriggerSource(legacy.engine, legacy.table, ["id"]).install()
    with legacy.engine.begin() as conn:
        legacy.insert(conn, 1)

    with socket.socket() as taken:  # a port in this session's range, held by someone else
        taken.bind(("127.0.0.1", TAKEN_PORT))
        taken.listen()
        code = main(["run", "sample_app.crm:feed", "--metrics-port", str(TAKEN_PORT)])
    assert code == 2 and f"error: --metrics-port {TAKEN_PORT}:" in capsys.readouterr().err

    stop = threading.Event()
    codes: list[int] = []
    argv = ["run", "sample_app.crm:feed", "--idle", "0.02", "--metrics-port", str(PORT)]
    runner = threading.Thread(target=lambda: codes.append(main(argv, stop)))
    runner.start()
    try:

        def served() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=5) as r:
                    return str(r.read().decode())
            except OSError:
                return ""

        wanted = f'keel_cdc_commands_total{{feed="{legacy.feed_name}"'
        _until(lambda: wanted in served(), "the feed's counter on /metrics")
        page = served()
    finally:
        stop.set()
        runner.join(timeout=30)
    assert codes == [0]
    assert f'keel_cdc_source_lag{{feed="{legacy.feed_name}"' in page
    assert telemetry.parse_metrics(page, "keel_cdc_commands_total", feed=legacy.feed_name) == [1]
