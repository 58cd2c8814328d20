"""1,000 legacy changes in concurrent transactions, some committing deliberately late, while
the feed process is SIGKILLed ten times: every change reaches the shop once, none twice.
``KEEL_SOAK=1``: 10,000 changes and 30 kills."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from framework.cdc import PostgresTriggerSource
from sample_app import crm
from sample_app.shop.application import build
from sample_app.shop.domain import Customer
from tests.integration.cdc_support import Crm, make_crm

pytestmark = pytest.mark.timeout(1800 if os.environ.get("KEEL_SOAK") == "1" else 300)
REPO = Path(__file__).resolve().parents[2]

SOAK = os.environ.get("KEEL_SOAK") == "1"  # the opt-in long variant
SNAPSHOT_ROWS = 500 if SOAK else 50
CHANGES = 10_000 if SOAK else 1000
WRITERS = 6
KILLS = 30 if SOAK else 10


@pytest.fixture
def legacy(postgres_url: str) -> Iterator[Crm]:
    yield from make_crm(postgres_url)


class Writer(threading.Thread):
    """One CRM user: transactions of 1-4 changes on the rows it owns; every 6th transaction
    takes its xid, then waits 0.3-1.2 s before committing (while others commit after it)."""

    def __init__(self, legacy: Crm, n: int, budget: int, first_id: int, rows: dict[int, Any]):
        super().__init__(daemon=True)
        self.legacy, self.rng, self.budget = legacy, random.Random(n), budget
        self.next_id = first_id
        self.rows = rows  # crm id -> {"street", "city", "active", "deleted", "events"}
        self.mine = [i for i in rows if i % WRITERS == n] if rows else []
        self.late = 0
        self.error: BaseException | None = None

    def _one(self, conn: sa.Connection) -> None:
        live = [i for i in self.mine if not self.rows[i]["deleted"]]
        active = [i for i in live if self.rows[i]["active"]]
        roll = self.rng.random()
        t = self.legacy.table
        if roll < 0.3 or not live:
            crm_id, self.next_id = self.next_id, self.next_id + WRITERS
            self.legacy.insert(conn, crm_id)
            self.rows[crm_id] = {"street": "Main 1", "city": "Berlin", "active": True}
            self.rows[crm_id].update(deleted=False, events=1)
            self.mine.append(crm_id)
        elif roll < 0.8 and active:
            crm_id = self.rng.choice(active)
            street = f"Street {self.rng.randrange(10**9)}"
            conn.execute(
                sa.text(f"UPDATE {t} SET street = :s WHERE id = :i"), {"s": street, "i": crm_id}
            )
            self.rows[crm_id]["street"] = street
            self.rows[crm_id]["events"] += 1
        elif roll < 0.9 and active:
            crm_id = self.rng.choice(active)
            conn.execute(sa.text(f"UPDATE {t} SET active = false WHERE id = :i"), {"i": crm_id})
            self.rows[crm_id]["active"] = False
            self.rows[crm_id]["events"] += 1
        else:
            crm_id = self.rng.choice(live)
            conn.execute(sa.text(f"DELETE FROM {t} WHERE id = :i"), {"i": crm_id})
            row = self.rows[crm_id]
            row["events"] += 1 if row["active"] else 0  # an inactive row's delete is no news
            row.update(deleted=True, active=False)

    def run(self) -> None:
        try:
            n = 0
            while self.budget > 0:
                n += 1
                with self.legacy.engine.begin() as conn:
                    size = min(self.budget, self.rng.randint(1, 4))
                    for _ in range(size):
                        self._one(conn)
                    self.budget -= size
                    if n % 6 == 0:
                        self.late += 1
                        time.sleep(self.rng.uniform(0.3, 1.2))
                time.sleep(self.rng.uniform(0, 0.01))
        except BaseException as error:  # reported by the test
            self.error = error


def _changes_of(legacy: Crm, crm_id: int) -> list[tuple[str, int, str]]:
    with legacy.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT xid::text AS xid_text, seq, op FROM keel_cdc.changelog "
                "WHERE source = :s AND coalesce(after, before) ->> 'id' = :i ORDER BY xid, seq"
            ),
            {"s": legacy.table, "i": str(crm_id)},
        ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def _start_feed(legacy: Crm, env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    log = open(env["FEED_LOG"], "ab")  # noqa: SIM115 - the child holds it
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "framework.cdc",
            "run",
            "sample_app.crm:feed",
            "--idle",
            "0.05",
            *extra,
        ],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


def test_feed_killed_ten_times_under_late_commits_loses_and_duplicates_nothing(
    legacy: Crm, postgres_url: str, tmp_path: Path
):
    rng = random.Random(14)
    rows: dict[int, Any] = {}
    with legacy.engine.begin() as conn:
        for crm_id in range(1, SNAPSHOT_ROWS + 1):
            legacy.insert(conn, crm_id)
            rows[crm_id] = {"street": "Main 1", "city": "Berlin", "active": True}
            rows[crm_id].update(deleted=False, events=1)
    source = PostgresTriggerSource(legacy.engine, legacy.table, ["id"])
    assert source.install() == SNAPSHOT_ROWS
    store = f"sqlite:///{tmp_path}/shop.db"
    env = {
        "KEEL_CRM_TABLE": legacy.table,
        "KEEL_CRM_FEED": legacy.feed_name,
        "KEEL_SHOP_EVENT_STORE": store,
        "DATABASE_URL": postgres_url,
        "KEEL_CRM_BATCH_SIZE": "20",
        "FEED_LOG": str(tmp_path / "feed.log"),
    }
    per_writer = (CHANGES - SNAPSHOT_ROWS) // WRITERS
    budgets = [per_writer] * WRITERS
    budgets[0] += CHANGES - SNAPSHOT_ROWS - per_writer * WRITERS
    writers = [Writer(legacy, n, budgets[n], 10_000 + n, rows) for n in range(WRITERS)]
    for w in writers:
        w.start()

    def done() -> int:
        with legacy.engine.connect() as conn:
            found = conn.execute(
                sa.text("SELECT changes FROM keel_cdc_feeds WHERE feed = :f"),
                {"f": legacy.feed_name},
            ).scalar()
        return int(found or 0)

    kills = kills_mid_run = 0
    feed = _start_feed(legacy, env)
    try:
        while kills < KILLS:
            # Kill while it works: once it has moved its cursor, at a random point after.
            before, deadline = done(), time.monotonic() + 10
            while done() == before and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.3))
            kills_mid_run += done() != before
            feed.send_signal(signal.SIGKILL)
            feed.wait(timeout=30)
            kills += 1
            feed = _start_feed(legacy, env)
        for w in writers:
            w.join(timeout=120)
            assert w.error is None, w.error
        feed.send_signal(signal.SIGTERM)
        feed.wait(timeout=30)
        final = _start_feed(legacy, env, "--until-caught-up")
        final.wait(timeout=180)
        assert final.returncode == 0, (tmp_path / "feed.log").read_text()[-3000:]
    finally:
        if feed.poll() is None:
            feed.kill()
            feed.wait()

    with legacy.engine.connect() as conn:
        changes = conn.execute(
            sa.text("SELECT count(*) FROM keel_cdc.changelog WHERE source = :s"),
            {"s": legacy.table},
        ).scalar_one()
    app = build(store)
    lost = dup = commands = wrong_state = 0
    short: list[int] = []  # rows missing events, for the diagnosis below
    final_rows = {r["id"]: r for r in crm.crm_rows(legacy.engine, legacy.table)}
    for crm_id, row in rows.items():
        events = app.store.read(crm.customer_id(crm_id))
        commands += len(events)
        lost += max(0, row["events"] - len(events))
        if len(events) < row["events"]:
            short.append(crm_id)
        dup += max(0, len(events) - row["events"])
        if events:
            customer = app.load(Customer, crm.customer_id(crm_id))
            if customer.active != row["active"] or customer.address.street != row["street"]:
                wrong_state += 1
        if not row["deleted"]:
            assert final_rows[crm_id]["street"] == row["street"]
    feed_obj = crm.CrmCustomers(source, app, legacy.engine, name=legacy.feed_name)
    status = feed_obj.status()
    late = sum(w.late for w in writers)
    print(
        f"CDC: changes={changes} commands={commands} lost={lost} dup={dup} kills={kills} "
        f"kills_mid_run={kills_mid_run} "
        f"late_commits={late} wrong_state={wrong_state} dead_letters={status.dead_letters} "
        f"lag={status.lag_changes}"
    )
    for letter in feed_obj.dead_letters(limit=3):  # what went wrong, if anything did
        print(letter.reason, feed_obj.change_of(letter).to_json(), letter.error_message[:300])
    problems = [
        line
        for line in (tmp_path / "feed.log").read_text().splitlines()
        if "parked" in line or "Error" in line
    ]
    print("\n".join(problems[:10]))
    if short:  # which changes of a short row the changelog holds, and what the shop has
        print("cursor", status.cursor, "feed counted", status.changes, "changes", status.commands)
        for crm_id in short[:3]:
            had = [type(e.event).__name__ for e in app.history(crm.customer_id(crm_id))]
            print(crm_id, rows[crm_id], _changes_of(legacy, crm_id), had)
    assert changes == CHANGES
    assert (lost, dup, wrong_state, status.dead_letters, status.lag_changes) == (0, 0, 0, 0, 0)
    assert commands == sum(r["events"] for r in rows.values())
    assert kills == KILLS and late > 0
