"""The trigger changelog feed on real PostgreSQL: the xid fence, the snapshot hand-over,
dead letters with re-drive, redelivery, outages, status and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa

from framework.cdc import (
    ChangeFeed,
    HighWaterMarkSource,
    PostgresTriggerSource,
    RowChange,
)
from framework.commands import Command
from framework.database import create_engine
from framework.errors import ConfigurationError, StoreUnavailableError
from sample_app import crm
from sample_app.shop.application import build
from tests.integration.cdc_support import Crm, make_crm, shop_state, unreachable_url

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def legacy(postgres_url: str) -> Iterator[Crm]:
    yield from make_crm(postgres_url)


def _read_all(source, cursor=None, *, want: int, limit: int = 100) -> list[RowChange]:
    """Read until ``want`` changes came (bounded): another session's open transaction, on any
    database of the server, holds the xid fence back for a moment."""
    out: list[RowChange] = []
    deadline = time.monotonic() + 30
    while len(out) < want and time.monotonic() < deadline:
        batch = source.read(cursor, limit)
        if batch:
            out += batch
            cursor = batch[-1].cursor
        else:
            time.sleep(0.05)
    return out


def _feed(legacy: Crm, app=None, cls: type[crm.CrmCustomers] = crm.CrmCustomers, **kw):
    source = PostgresTriggerSource(legacy.engine, legacy.table, ["id"])
    return cls(source, app or build("memory://"), legacy.engine, name=legacy.feed_name, **kw)


def test_a_late_commit_is_never_skipped_where_high_water_mark_polling_loses_it(legacy: Crm):
    feed = _feed(legacy)
    feed.source.install(snapshot=False)
    hwm = HighWaterMarkSource(legacy.engine, legacy.table, "id", ["id"])
    late = legacy.engine.connect()
    late_tx = late.begin()
    legacy.insert(late, 1)  # takes an xid first, commits last
    with legacy.engine.begin() as conn:
        legacy.insert(conn, 2)

    assert feed.source.read(None, 100) == []  # held back by the open transaction
    polled = hwm.read(None, 100)
    assert [c.key["id"] for c in polled] == [2]
    late_tx.commit()
    late.close()

    fenced = _read_all(feed.source, want=2)
    after_late = hwm.read(polled[-1].cursor, 100)
    seen_fence = {c.key["id"] for c in fenced}
    seen_hwm = {c.key["id"] for c in polled + after_late}
    print(f"CDC[late commit]: fence_lost={2 - len(seen_fence)} hwm_lost={2 - len(seen_hwm)}")
    assert [c.key["id"] for c in fenced] == [1, 2]
    assert seen_hwm == {2}  # the documented failure of high-water-mark polling


def test_the_snapshot_hands_over_to_the_stream_without_gap_or_duplicate(legacy: Crm):
    with legacy.engine.begin() as conn:
        for i in range(1, 6):
            legacy.insert(conn, i)
    feed = _feed(legacy)
    feed.source.install(snapshot=False)  # the trigger first
    with legacy.engine.begin() as conn:  # seen by the snapshot and in the changelog
        legacy.insert(conn, 6)
        conn.execute(sa.text(f"UPDATE {legacy.table} SET city = 'Hamburg' WHERE id = 2"))
    open_conn = legacy.engine.connect()
    open_tx = open_conn.begin()  # not seen by the snapshot: streamed after it
    open_conn.execute(sa.text(f"UPDATE {legacy.table} SET city = 'Munich' WHERE id = 1"))
    assert feed.source.install(snapshot=True) == 6
    assert feed.source.install(snapshot=True) == 0  # once only
    open_tx.commit()
    open_conn.close()
    with legacy.engine.begin() as conn:
        legacy.insert(conn, 7)

    read = _read_all(feed.source, want=8, limit=3)  # small batches cross the hand-over
    assert feed.source.read(read[-1].cursor, 100) == []
    seen = [(c.op, c.key["id"], c.row["city"]) for c in read]
    assert sorted(seen[:6]) == [  # the snapshot, in the table's physical order
        ("read", 1, "Berlin"),
        ("read", 2, "Hamburg"),
        ("read", 3, "Berlin"),
        ("read", 4, "Berlin"),
        ("read", 5, "Berlin"),
        ("read", 6, "Berlin"),
    ]
    assert seen[6:] == [("update", 1, "Munich"), ("insert", 7, "Berlin")]
    assert feed.run(until_caught_up=True) == 8
    state = shop_state(feed.app, list(range(1, 8)))
    assert state[1] == ("active", "Main 1", "Munich")
    assert state[2] == ("active", "Main 1", "Hamburg")
    assert all(state[i] == ("active", "Main 1", "Berlin") for i in (3, 4, 5, 6, 7))
    status = feed.status()
    assert status.lag_changes == 0
    assert status.cursor is not None and feed.source.prune(status.cursor) == 10  # all read
    with legacy.engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT count(*) FROM keel_cdc.changelog WHERE source = :s"),
            {"s": legacy.table},
        ).scalar_one()
    assert left == 0 and feed.status().lag_changes == 0


class _FixedEmails(crm.CrmCustomers):
    """The fix an operator ships: the CRM writes some e-mails as name(at)host."""

    def translate(self, change: RowChange) -> Sequence[Command]:
        if change.after and "(at)" in str(change.after.get("email")):
            after = {**change.after, "email": change.after["email"].replace("(at)", "@")}
            change = RowChange(**{**change.__dict__, "after": after})
        return super().translate(change)


def test_untranslatable_and_refused_changes_are_parked_in_order_and_redriven(legacy: Crm):
    feed = _feed(legacy)
    feed.source.install()
    with legacy.engine.begin() as conn:
        legacy.insert(conn, 1, email="ada(at)example.com")  # the shop refuses the e-mail
        legacy.insert(conn, 2)
        legacy.insert(conn, 3)
    legacy.sql("UPDATE CRM SET city = 'Bonn' WHERE id = 1")  # held behind the first
    legacy.sql("UPDATE CRM SET active = false WHERE id = 3")
    legacy.sql("UPDATE CRM SET city = 'Ulm' WHERE id = 3")  # refused: customer deactivated
    legacy.sql("UPDATE CRM SET city = 'Kiel' WHERE id = 2")

    assert feed.run(until_caught_up=True) == 7
    letters = feed.dead_letters()
    assert [(feed.change_of(d).key["id"], feed.change_of(d).op, d.reason) for d in letters] == [
        (1, "insert", "failed"),
        (1, "update", "held"),
        (3, "update", "failed"),
    ]
    assert "email" in letters[0].error_message
    assert letters[2].error_type.endswith("CustomerInactive")
    status = feed.status()
    assert (status.dead_letters, status.lag_changes, status.changes) == (3, 0, 7)
    assert shop_state(feed.app, [1, 2])[2] == ("active", "Main 1", "Kiel")  # others went on

    still = feed.redrive()  # nothing fixed yet: everything stays, with the new error
    assert (still.done, still.remaining, len(still.failed)) == (0, 3, 2)
    assert feed.dead_letters()[0].attempts == 2

    fixed = _feed(legacy, app=feed.app, cls=_FixedEmails)
    one = fixed.redrive([letters[0].aggregate_id])
    assert (one.done, one.remaining) == (2, 1)
    assert shop_state(feed.app, [1])[1] == ("active", "Main 1", "Bonn")
    fixed.discard([d.id for d in fixed.dead_letters()])  # the operator drops the refused one
    assert fixed.status().dead_letters == 0


def test_reading_every_change_again_runs_no_command_twice(legacy: Crm):
    feed = _feed(legacy)
    feed.source.install()
    with legacy.engine.begin() as conn:
        for i in range(1, 21):
            legacy.insert(conn, i)
    legacy.sql("UPDATE CRM SET street = 'Side 2' WHERE id <= 10")
    legacy.sql("DELETE FROM CRM WHERE id > 15")
    feed.run(until_caught_up=True)
    events = sum(len(feed.app.store.read(crm.customer_id(i))) for i in range(1, 21))
    assert events == 20 + 10 + 5

    legacy.sql(f"UPDATE keel_cdc_feeds SET cursor = NULL WHERE feed = '{legacy.feed_name}'")
    again = feed.run(until_caught_up=True)
    events_again = sum(len(feed.app.store.read(crm.customer_id(i))) for i in range(1, 21))
    print(f"CDC[redelivery]: changes={again} events_before={events} events_after={events_again}")
    assert again == 35 and events_again == events


def test_xids_of_different_lengths_are_read_in_number_order(legacy: Crm):
    """Issue 14: the stream sorted xids as text, so once the readable changes spanned a power
    of ten ("999", "1000") a batch took "1000" first and the cursor passed every shorter xid.
    The changes here are real trigger rows whose xids are set to straddle one (below the
    fence, as transactions long over)."""
    feed = _feed(legacy, batch_size=2)
    feed.source.install(snapshot=False)
    with legacy.engine.begin() as conn:
        legacy.insert(conn, 1)
    legacy.sql("UPDATE CRM SET street = 'Side 1' WHERE id = 1")
    with legacy.engine.begin() as conn:
        legacy.insert(conn, 2)
    legacy.sql("UPDATE CRM SET street = 'Side 2' WHERE id = 2")
    with legacy.engine.begin() as conn:
        fence = int(
            conn.execute(
                sa.text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
            ).scalar_one()
        )
        power = 10 ** (len(str(fence - 3)) - 1)  # power - 2 .. power + 1 all below the fence
        seqs = (
            conn.execute(
                sa.text("SELECT seq FROM keel_cdc.changelog WHERE source = :s ORDER BY seq"),
                {"s": legacy.table},
            )
            .scalars()
            .all()
        )
        assert len(seqs) == 4 and power >= 10
        for n, seq in enumerate(seqs):  # power-2, power-1, power, power+1
            conn.execute(
                sa.text("UPDATE keel_cdc.changelog SET xid = CAST(:x AS xid8) WHERE seq = :q"),
                {"x": str(power - 2 + n), "q": seq},
            )

    first = feed.source.read(None, 2)
    done = feed.run(until_caught_up=True)
    state = shop_state(feed.app, [1, 2])
    lost = 4 - sum(len(feed.app.store.read(crm.customer_id(i))) for i in (1, 2))
    order = [c.position.split(":")[0] for c in first]
    print(f"CDC[xid digits]: xids={power - 2}..{power + 1} first_batch={order} lost={lost}")
    assert order == [str(power - 2), str(power - 1)]
    assert done == 4 and lost == 0
    assert state == {1: ("active", "Side 1", "Berlin"), 2: ("active", "Side 2", "Berlin")}
    assert feed.status().lag_changes == 0


class _LookupDown(crm.CrmCustomers):
    """A translation that asks another system (down twice) for something."""

    failures = 2

    def translate(self, change: RowChange) -> Sequence[Command]:
        if type(self).failures:
            type(self).failures -= 1
            raise StoreUnavailableError("the address service is not answering")
        return super().translate(change)


def test_an_outage_keeps_the_cursor_and_is_reported_then_recovers(legacy: Crm):
    feed = _feed(legacy, cls=_LookupDown)
    feed.source.install()
    with legacy.engine.begin() as conn:
        legacy.insert(conn, 1)
    with pytest.raises(StoreUnavailableError):
        feed.poll()
    assert feed.status().cursor is None
    assert feed.run(until_caught_up=True) == 1
    status = feed.status()
    assert status.last_error is not None and "not answering" in status.last_error
    assert status.last_error_at is not None and status.dead_letters == 0
    assert shop_state(feed.app, [1])[1] == ("active", "Main 1", "Berlin")


def test_an_unreachable_source_is_reported_by_status_and_retried_by_run(legacy: Crm):
    url = unreachable_url()
    source = PostgresTriggerSource(url, legacy.table, ["id"])
    feed = crm.CrmCustomers(source, build("memory://"), legacy.engine, name=legacy.feed_name)
    with pytest.raises(StoreUnavailableError) as down:
        source.read(None, 10)
    message = str(down.value)
    assert legacy.table in message and url.replace(":secret", ":***") in message
    assert "secret" not in message

    status = feed.status()  # the feed's own database answers: everything but the lag
    assert (status.lag_changes, status.lag_seconds, status.dead_letters) == (None, None, 0)
    assert status.source_error is not None and "cannot reach" in status.source_error

    reads = 0
    read = source.read

    def counted(cursor: str | None, limit: int) -> list[RowChange]:
        nonlocal reads
        reads += 1
        return read(cursor, limit)

    source.read = counted  # type: ignore[method-assign]
    stop = threading.Event()
    runner = threading.Thread(target=feed.run, args=(stop,), kwargs={"until_caught_up": True})
    runner.start()
    time.sleep(1.0)  # backs off 0.2, 0.4 s...: the outage is retried, not fatal
    stop.set()
    runner.join(15)
    assert not runner.is_alive() and reads >= 2
    status = feed.status()
    assert status.cursor is None and status.last_error is not None
    assert "StoreUnavailableError" in status.last_error and "secret" not in status.last_error


def test_bad_configuration_is_a_clear_error(legacy: Crm, tmp_path: Path):
    with pytest.raises(ConfigurationError, match="PostgreSQL") as refused:
        PostgresTriggerSource(f"sqlite:///{tmp_path}/x.db", "crm.customers", ["id"])
    assert f"sqlite:///{tmp_path}/x.db is sqlite" in str(refused.value)  # the URL it got
    with pytest.raises(ConfigurationError, match="plain"):
        PostgresTriggerSource(legacy.engine, "crm.customers; DROP TABLE x", ["id"])
    with pytest.raises(ConfigurationError, match="primary-key"):
        PostgresTriggerSource(legacy.engine, legacy.table, [])

    class Nameless(ChangeFeed):
        pass

    source = PostgresTriggerSource(legacy.engine, legacy.table, ["id"])
    with pytest.raises(ConfigurationError, match="name"):
        Nameless(source, build("memory://"), legacy.engine)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "framework.cdc", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_installs_runs_and_reports(legacy: Crm, postgres_url: str, tmp_path: Path):
    env = {
        "KEEL_CRM_TABLE": legacy.table,
        "KEEL_CRM_FEED": legacy.feed_name,
        "KEEL_SHOP_EVENT_STORE": f"sqlite:///{tmp_path}/shop.db",
        "DATABASE_URL": postgres_url,
    }
    helped = _cli("--help", env=env)
    assert helped.returncode == 0 and "module:callable" in helped.stdout
    assert "install" in helped.stdout and "redrive" in helped.stdout
    bad = _cli("status", "sample_app.crm", env=env)
    assert bad.returncode == 2 and "module:callable" in bad.stderr

    with legacy.engine.begin() as conn:
        legacy.insert(conn, 1)
        legacy.insert(conn, 2, country="XX")  # no such country: parked
    installed = _cli("install", "sample_app.crm:feed", env=env)
    assert installed.returncode == 0, installed.stderr
    assert "snapshot rows copied: 2" in installed.stdout
    before = json.loads(_cli("status", "sample_app.crm:feed", "--json", env=env).stdout)
    assert (before["lag_changes"], before["changes"]) == (2, 0)

    ran = _cli("run", "sample_app.crm:feed", "--until-caught-up", env=env)
    assert ran.returncode == 0, ran.stderr
    status = _cli("status", "sample_app.crm:feed", env=env)
    assert status.returncode == 3  # a dead letter: operators' scripts can alert on it
    assert "dead letters  1" in status.stdout and "lag           0 change(s)" in status.stdout
    listed = _cli("dead-letters", "sample_app.crm:feed", env=env)
    assert "{'id': 2}" in listed.stdout and "failed" in listed.stdout
    redriven = _cli("redrive", "sample_app.crm:feed", env=env)
    assert redriven.returncode == 1 and "1 row(s) still failing" in redriven.stdout


def test_the_cli_status_of_an_unreachable_source_exits_3(legacy: Crm, postgres_url: str):
    env = {
        "KEEL_CRM_TABLE": legacy.table,
        "KEEL_CRM_FEED": legacy.feed_name,
        "KEEL_CRM_DATABASE_URL": unreachable_url(),
        "KEEL_SHOP_EVENT_STORE": "memory://",
        "DATABASE_URL": postgres_url,
    }
    status = _cli("status", "sample_app.crm:feed", env=env)
    assert status.returncode == 3, status.stderr  # an error, for alerting: not a traceback
    assert "Traceback" not in status.stderr
    assert "lag           unknown" in status.stdout and "cannot reach" in status.stdout
    as_json = json.loads(_cli("status", "sample_app.crm:feed", "--json", env=env).stdout)
    assert as_json["lag_changes"] is None and "cannot reach" in as_json["source_error"]


def test_the_cli_reports_an_unreachable_feed_database_and_run_waits_for_it(
    legacy: Crm, postgres_url: str
):
    url = unreachable_url()  # the feed's own database (cursor, dead letters); the source is up
    env = {
        "KEEL_CRM_TABLE": legacy.table,
        "KEEL_CRM_FEED": legacy.feed_name,
        "KEEL_CRM_DATABASE_URL": postgres_url,
        "KEEL_SHOP_EVENT_STORE": "memory://",
        "DATABASE_URL": url,
    }
    for command in ("status", "dead-letters", "redrive"):
        done = _cli(command, "sample_app.crm:feed", env=env)
        assert done.returncode == 1, done.stderr  # an error: neither a usage error nor an alert
        assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
        assert f"cannot reach its database {url.replace(':secret', ':***')}" in done.stderr
        assert "secret" not in done.stderr

    source = PostgresTriggerSource(legacy.engine, legacy.table, ["id"])
    feed = crm.CrmCustomers(source, build("memory://"), create_engine(url), name=legacy.feed_name)
    with pytest.raises(StoreUnavailableError, match=f"feed {legacy.feed_name}: cannot reach"):
        feed.status()
    failures: list[BaseException] = []
    feed._record_error = failures.append  # type: ignore[method-assign]
    stop = threading.Event()
    runner = threading.Thread(target=feed.run, args=(stop,), kwargs={"until_caught_up": True})
    runner.start()
    time.sleep(1.0)  # backs off 0.2, 0.4 s...: an outage of its own database is waited out too
    stop.set()
    runner.join(15)
    assert not runner.is_alive() and len(failures) >= 2
    assert all(isinstance(f, StoreUnavailableError) for f in failures)


@pytest.mark.parametrize("batch_size", [200, 2])  # 2: the earlier change is past the batch
def test_a_row_changed_by_two_overlapping_transactions_ends_as_the_last_commit_left_it(
    legacy: Crm, batch_size: int
):
    feed = _feed(legacy, batch_size=batch_size)
    feed.source.install(snapshot=False)
    with legacy.engine.begin() as conn:
        legacy.insert(conn, 1)
        legacy.insert(conn, 2)
    assert feed.run(until_caught_up=True) == 2
    early = legacy.engine.connect()
    early_tx = early.begin()
    early.execute(sa.text(f"UPDATE {legacy.table} SET notes = 'x' WHERE id = 2"))  # takes its xid
    legacy.sql("UPDATE CRM SET street = 'Second 2' WHERE id = 1")  # a later xid, committed first
    early.execute(sa.text(f"UPDATE {legacy.table} SET street = 'Third 3' WHERE id = 1"))
    early_tx.commit()  # the CRM's row 1 now says 'Third 3'
    early.close()
    # xid order reads the 'Third 3' change first; its row's earlier change comes before it.
    assert feed.run(until_caught_up=True) == (3 if batch_size > 2 else 4)  # 4: one read twice
    street = shop_state(feed.app, [1])[1]
    events = len(feed.app.store.read(crm.customer_id(1)))
    print(f"CDC[interleaving]: crm=Third 3 shop={street[1]} events={events}")
    assert street == ("active", "Third 3", "Berlin")
    assert events == 3  # registered, moved twice: the change read ahead replayed in its place
