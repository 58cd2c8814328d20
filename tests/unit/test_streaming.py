"""framework.streaming: windows, retractions, late events, closing, sessions, calendar days,
and the property that every interleaving of the same partitions gives the same tables."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import framework.streaming as streaming
from framework.errors import ConfigurationError
from framework.streaming import Aggregate, Calendar, Hopping, Tumbling
from framework.streaming.testing import Tick, given_partitions
from framework.testing import ev
from tests.support.streaming_domain import Sale, SalesStreams

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


def made(sid: uuid.UUID, minutes: float, amount: str, country: str = "CH", shopper: str = "ann"):
    return ev(
        Sale.Made,
        id=sid,
        at=T0 + timedelta(minutes=minutes),
        amount=Decimal(amount),
        country=country,
        shopper=shopper,
    )


def voided(sid: uuid.UUID, minutes: float):
    return ev(Sale.Voided, id=sid, at=T0 + timedelta(minutes=minutes))


def corrected(sid: uuid.UUID, minutes: float, amount: str, moved_to: float):
    return ev(
        Sale.Corrected,
        id=sid,
        at=T0 + timedelta(minutes=minutes),
        amount=Decimal(amount),
        moved_to=T0 + timedelta(minutes=moved_to),
    )


def hour(n: int) -> datetime:
    return T0 + timedelta(hours=n)


A, B, C, D = (uuid.UUID(int=i) for i in range(1, 5))


def test_the_public_surface_is_sorted_and_complete():
    # isort style, as ruff keeps it: CONSTANTS, then Classes, then functions.
    assert streaming.__all__ == sorted(
        streaming.__all__, key=lambda n: (not n.isupper(), not n[0].isupper(), n)
    )
    assert all(hasattr(streaming, name) for name in streaming.__all__)


def test_a_void_retracts_the_sale_from_the_hour_it_was_counted_in():
    (
        given_partitions({0: [made(A, 5, "10.00"), made(B, 20, "4.50"), voided(A, 90)]})
        .project(SalesStreams)
        .then_rows(
            SalesStreams.hourly,
            [
                {
                    "window_start": hour(0),
                    "sales": 1,
                    "revenue": Decimal("4.50"),
                    "voided": 1,
                    "revision": 3,
                }
            ],
        )
    )


def test_a_correction_moves_revenue_between_hours():
    (
        given_partitions({0: [made(A, 5, "10.00"), corrected(A, 30, "12.00", moved_to=70)]})
        .project(SalesStreams)
        .then_rows(
            SalesStreams.hourly,
            [
                {"window_start": hour(0), "sales": 0, "revenue": Decimal("0.00"), "voided": 0},
                {"window_start": hour(1), "sales": 1, "revenue": Decimal("12.00"), "voided": 0},
            ],
        )
    )


def test_group_by_keys_and_hopping_windows_with_every_aggregate():
    outcome = given_partitions(
        {
            0: [made(A, 5, "10.00", "CH", "ann"), made(B, 65, "2.00", "DE", "bob")],
            1: [made(C, 30, "6.00", "CH", "cid")],
        }
    ).project(SalesStreams)
    outcome.then_rows(
        SalesStreams.hourly,
        [
            {"country": "CH", "window_start": hour(0), "sales": 2, "revenue": Decimal("16.00")},
            {"country": "DE", "window_start": hour(1), "sales": 1, "revenue": Decimal("2.00")},
        ],
    )
    outcome.then_rows(
        SalesStreams.stats,
        [
            {
                "window_start": hour(-1),
                "smallest": Decimal("6"),
                "largest": Decimal("10"),
                "mean": Decimal("8"),
                "last_shopper": "cid",
                "shoppers": ["ann", "cid"],
            },
            {
                "window_start": hour(0),
                "smallest": Decimal("2"),
                "largest": Decimal("10"),
                "mean": Decimal("6"),
                "last_shopper": "bob",
                "shoppers": ["ann", "cid", "bob"],
            },
            {
                "window_start": hour(1),
                "smallest": Decimal("2"),
                "largest": Decimal("2"),
                "mean": Decimal("2"),
                "last_shopper": "bob",
                "shoppers": ["bob"],
            },
        ],
    )


def test_removing_the_minimum_folds_the_window_again_from_its_ledger():
    (
        given_partitions({0: [made(A, 5, "1.00"), made(B, 6, "7.00"), voided(A, 8)]})
        .project(SalesStreams)
        .then_rows(
            SalesStreams.stats,
            [
                {"window_start": hour(-1), "smallest": Decimal("7"), "shoppers": ["ann"]},
                {"window_start": hour(0), "smallest": Decimal("7"), "shoppers": ["ann"]},
            ],
            columns=["window_start", "smallest", "shoppers"],
        )
    )


def test_late_events_are_amended_dropped_or_parked_and_always_recorded():
    # Partition 0 has reached 11:30; a sale at 10:05 is 75 minutes late (grace 10 minutes).
    outcome = given_partitions(
        {0: [made(A, 90, "3.00"), made(B, 5, "8.00")], 1: [made(C, 95, "1.00")]}
    ).project(SalesStreams)
    outcome.then_rows(
        SalesStreams.hourly,
        [
            {"window_start": hour(0), "sales": 1, "late_events": 1, "amended_after_close": True},
            {"window_start": hour(1), "sales": 2, "late_events": 0, "amended_after_close": False},
        ],
    )
    # stats drops late events (grace 0): the 10:05 sale never made a 09:00-11:00 row.
    outcome.then_rows(
        SalesStreams.stats,
        [
            {"window_start": hour(0), "contributions": 2},
            {"window_start": hour(1), "contributions": 2},
        ],
    )
    late = {(r["stream"], r["action"], r["late_by_ms"]) for r in outcome.late_events()}
    assert late == {
        ("hourly", "amend", 75 * 60_000),
        ("stats", "drop", 85 * 60_000),
        ("daily", "dead_letter", 75 * 60_000),
        ("sessions", "amend", 80 * 60_000),
    }
    parked = [r for r in outcome.late_events() if r["action"] == "dead_letter"]
    assert parked[0]["payload"], "a dead-lettered late event keeps its payload for a re-drive"


def test_a_parked_late_event_counts_once_re_driven_through_the_log_and_rebuilds_alike():
    events = {0: [made(A, 90, "3.00"), made(B, 5, "8.00")], 1: [made(C, 95, "1.00")]}
    midnight = datetime(2026, 3, 2, 23, 30, tzinfo=UTC)  # past the Zurich day and its grace
    parked = given_partitions(events).tick(None, midnight).project(SalesStreams)
    parked.then_rows(SalesStreams.daily, [{"country": "CH", "sales": 2, "revenue": Decimal("4")}])
    # B (partition 0, record 1) is re-driven twice: the second record finds nothing parked.
    redriven = (
        given_partitions(events)
        .accept_late(0, 1, "daily", SalesStreams.name)
        .accept_late(0, 1, "daily", SalesStreams.name)
        .tick(None, midnight)
    )
    outcome = redriven.project(SalesStreams)  # also checks a rebuild and redelivery
    outcome.then_rows(SalesStreams.daily, [{"country": "CH", "sales": 3, "revenue": Decimal("12")}])
    outcome.then_rows(SalesStreams.closed_days, [{"country": "CH", "sales": 3, "closings": 1}])
    actions = {(r["stream"], r["action"]) for r in outcome.late_events()}
    assert ("daily", "redriven") in actions and ("daily", "dead_letter") not in actions
    report = redriven.all_interleavings(SalesStreams, examples=15)
    print(report.line())
    assert report.differing == 0


def test_re_driving_a_late_event_after_its_day_closed_amends_the_final_row():
    # Live, the day closes (and on_close runs, with 2 sales) before the re-drive arrives; a
    # rebuild may apply the re-drive first. The rows agree; the hook ran once, with the row it
    # saw at close, and amended_after_close tells the row changed after.
    events = {0: [made(A, 90, "3.00"), made(B, 5, "8.00")], 1: [made(C, 95, "1.00")]}
    midnight = datetime(2026, 3, 2, 23, 30, tzinfo=UTC)
    given = (
        given_partitions(events).tick(None, midnight).accept_late(0, 1, "daily", SalesStreams.name)
    )
    live = given.run(SalesStreams, given.trickle())
    rebuilt = given.run(SalesStreams, None)
    wanted = [{"country": "CH", "sales": 3, "amended_after_close": True, "late_events": 1}]
    live.then_rows(SalesStreams.daily, wanted)
    rebuilt.then_rows(SalesStreams.daily, wanted)
    live.then_rows(SalesStreams.closed_days, [{"sales": 2, "closings": 1}])


def test_windows_close_on_the_slowest_partition_and_ticks_move_idle_ones():
    busy = {0: [made(A, 5, "1.00"), made(B, 200, "1.00")], 1: [made(C, 10, "1.00")]}
    # Partition 1 is idle after 10:10: the 10:00 window stays open, whatever partition 0 does.
    given_partitions(busy).project(SalesStreams).then_rows(
        SalesStreams.hourly,
        [{"window_start": hour(0), "closed": False}, {"window_start": hour(3), "closed": False}],
    )
    # A tick in partition 1 at 11:30 closes 10:00-11:00 (grace 10 minutes) but not 13:00.
    given_partitions(busy).tick(1, hour(1) + timedelta(minutes=30)).project(SalesStreams).then_rows(
        SalesStreams.hourly,
        [{"window_start": hour(0), "closed": True}, {"window_start": hour(3), "closed": False}],
    )


def test_emit_final_rows_appear_at_close_and_on_close_runs_once_per_window():
    parts = given_partitions(
        {0: [made(A, 5, "2.00"), made(B, 60 * 15, "3.00")], 1: [made(C, 7, "4.00")]}
    )
    # Nothing has closed yet (partition 1 never passed midnight): no daily rows at all.
    parts.project(SalesStreams).then_rows(SalesStreams.daily, []).then_rows(
        SalesStreams.closed_days, []
    )
    # Ticks past midnight in Zurich (+10 minutes grace) close March 2nd, not March 3rd.
    closed = parts.tick(None, datetime(2026, 3, 2, 23, 15, tzinfo=UTC)).project(SalesStreams)
    closed.then_rows(
        SalesStreams.daily,
        [
            {
                "window_start": datetime(2026, 3, 1, 23, 0, tzinfo=UTC),
                "sales": 2,
                "revenue": Decimal("6.00"),
                "closed": True,
            }
        ],
    )
    closed.then_rows(SalesStreams.closed_days, [{"sales": 2, "closings": 1}])


@pytest.mark.parametrize(
    ("day", "hours"),
    [
        (datetime(2026, 3, 29, 12, tzinfo=UTC), 23),
        (datetime(2026, 10, 25, 12, tzinfo=UTC), 25),
        (datetime(2026, 3, 2, 12, tzinfo=UTC), 24),
    ],
)
def test_calendar_days_in_zurich_last_23_or_25_hours_when_clocks_change(day, hours):
    ((start, end),) = Calendar(days=1, tz="Europe/Zurich").windows(day)
    assert end - start == timedelta(hours=hours)
    assert start.astimezone(Calendar(days=1, tz="Europe/Zurich").tz).hour == 0


def test_calendar_weeks_months_and_fixed_windows():
    moment = datetime(2026, 2, 18, 15, 45, tzinfo=UTC)
    assert Calendar(weeks=1, tz="UTC").windows(moment) == [
        (datetime(2026, 2, 16, tzinfo=UTC), datetime(2026, 2, 23, tzinfo=UTC))
    ]
    assert Calendar(months=1, tz="UTC").windows(moment) == [
        (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
    ]
    assert Tumbling(minutes=30).windows(moment) == [
        (datetime(2026, 2, 18, 15, 30, tzinfo=UTC), datetime(2026, 2, 18, 16, 0, tzinfo=UTC))
    ]
    assert [
        s.hour for s, _e in Hopping(timedelta(hours=3), timedelta(hours=1)).windows(moment)
    ] == [13, 14, 15]
    with pytest.raises(ConfigurationError, match="time zone"):
        Calendar(days=1, tz="Mars/Olympus")


def test_sessions_merge_without_orphans_keep_their_id_and_split_on_a_void():
    first = given_partitions({0: [made(A, 0, "1.00"), made(B, 50, "2.00")]}).project(SalesStreams)
    ids = [r["session_id"] for r in first.rows(SalesStreams.sessions)]
    assert len(ids) == 2
    # A sale at 10:25 bridges both (gap 30 minutes): one session, the first one's id, no orphan.
    merged = given_partitions(
        {0: [made(A, 0, "1.00"), made(B, 50, "2.00"), made(C, 25, "4.00")]}
    ).project(SalesStreams)
    merged.then_rows(
        SalesStreams.sessions,
        [
            {
                "window_start": T0,
                "window_end": T0 + timedelta(minutes=80),
                "sales": 3,
                "spent": Decimal("7.00"),
                "session_id": ids[0],
            }
        ],
    )
    # Voiding the bridge splits it again into the two original sessions, with their ids.
    split = given_partitions(
        {0: [made(A, 0, "1.00"), made(B, 50, "2.00"), made(C, 25, "4.00"), voided(C, 60)]}
    ).project(SalesStreams)
    assert [r["session_id"] for r in split.rows(SalesStreams.sessions)] == ids


def test_definitions_are_checked():
    class NoMerge(Aggregate):
        def init(self) -> Any:
            return 0

        def add(self, state: Any, value: Any, order: Any) -> Any:
            return state

    with pytest.raises(TypeError, match="merge"):
        NoMerge()  # type: ignore[abstract]
    with pytest.raises(ConfigurationError, match="late="):
        streaming.Windowed(
            "t_bad",
            sa.MetaData(),
            window=Tumbling(hours=1),
            aggregates={"n": streaming.Count()},
            contributes=Sale.Made,
            late="ignore",
        )
    with pytest.raises(ConfigurationError, match="taken"):
        streaming.Windowed(
            "t_bad",
            sa.MetaData(),
            window=Tumbling(hours=1),
            aggregates={"revision": streaming.Count()},
            contributes=Sale.Made,
        )


# -- the property: any interleaving, and a rebuild, give byte-identical tables --------------------


def _scenario(rng: random.Random) -> Any:
    partitions = rng.choice([2, 3])
    sequences: dict[int, list[Any]] = {}
    for p in range(partitions):
        timeline: list[tuple[float, int, Any]] = []
        for n in range(rng.randint(2, 6)):
            sid = uuid.UUID(int=p * 100 + n + 1)
            at = rng.uniform(0, 60 * 30)
            country = rng.choice(["CH", "DE"])
            shopper = rng.choice(["ann", "bob"])
            amount = f"{rng.randint(1, 50)}.{rng.randint(0, 99):02d}"
            steps = [(at, made(sid, at, amount, country, shopper))]
            if rng.random() < 0.3:
                later = at + rng.uniform(1, 120)
                steps.append((later, corrected(sid, later, "9.99", at + rng.uniform(-90, 90))))
            if rng.random() < 0.3:
                later = at + rng.uniform(121, 240)
                steps.append((later, voided(sid, later)))
            timeline += [(t + rng.uniform(-45, 45), i, e) for i, (t, e) in enumerate(steps)]
        # Log order: by jittered time (so some events are late), each sale's events in order.
        timeline.sort(key=lambda x: x[0])
        by_sale: dict[Any, list[Any]] = {}
        for _t, _i, e in sorted(timeline, key=lambda x: (x[2].id, x[1])):
            by_sale.setdefault(e.id, []).append(e)
        seq = [by_sale[e.id].pop(0) for _t, _i, e in timeline]
        for _ in range(rng.randint(0, 2)):
            seq.insert(rng.randint(0, len(seq)), Tick(T0 + timedelta(minutes=rng.uniform(0, 1800))))
        sequences[p] = seq
    return given_partitions(sequences).tick(None, T0 + timedelta(days=3))


@pytest.mark.timeout(300)
def test_streams_every_interleaving_and_a_rebuild_give_identical_tables():
    rng = random.Random(15)
    examples = interleavings = differing = 0
    for _ in range(6):
        report = _scenario(rng).all_interleavings(SalesStreams, examples=20)
        examples += report.examples
        interleavings += report.interleavings
        differing += report.differing
    print(f"STREAMS: examples={examples} interleavings={interleavings} differing={differing}")
    assert differing == 0 and examples >= 100 and interleavings > 50


def test_the_tick_command_appends_a_tick_to_every_partition(tmp_path, capsys):
    from framework.persistence import open_store
    from framework.streaming.__main__ import main

    url = f"sqlite:///{tmp_path}/events.db"
    open_store(url, name="shop").close()  # the application made it
    assert main(["tick", "--name", "shop", "--store", url]) == 0
    assert main(["tick", "--name", "shop", "--store", url]) == 0
    with open_store(url, name="shop") as store:
        topics = [e.topic for e in store.iter_partition(0)]
    assert topics == ["keel.Clock.Started", "keel.Clock.Ticked", "keel.Clock.Ticked"]
    assert "ticked 1 partition(s)" in capsys.readouterr().out


def test_the_tick_command_refuses_a_store_that_does_not_exist(tmp_path):
    missing = tmp_path / "nope.db"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_EVENT_STORE")}
    command = [sys.executable, "-m", "framework.streaming", "tick", "--name", "shop"]
    given = subprocess.run(
        [*command, "--store", f"sqlite:///{missing}"], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert given.returncode == 2, given.stdout + given.stderr
    assert f"the event store file {missing} does not exist: check --store" in given.stderr
    assert "ticked" not in given.stdout and not missing.exists()
    # The default, sqlite:///var/shop-events.db, is under the current directory: none there.
    default = subprocess.run(
        command, cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert default.returncode == 2, default.stdout + default.stderr
    assert "var/shop-events.db does not exist: check KEEL_SHOP_EVENT_STORE" in default.stderr
    assert not (tmp_path / "var").exists()


def test_the_redrive_command_refuses_a_store_that_does_not_exist(tmp_path, capsys):
    from framework.streaming.__main__ import main

    missing = tmp_path / "nope.db"
    database = f"sqlite:///{tmp_path}/read.db"
    argv = ["redrive", "tests.support.streaming_domain:SalesStreams", "--database", database]
    assert main([*argv, "--name", "shop", "--store", f"sqlite:///{missing}"]) == 2
    assert "does not exist" in capsys.readouterr().err and not missing.exists()


def test_the_streaming_help_states_the_default_store(capsys):
    from framework.streaming.__main__ import main

    with pytest.raises(SystemExit):
        main(["tick", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "else sqlite:///var/<NAME>-events.db under the current directory" in text
    assert "does not exist is refused, never created" in text


def test_the_redrive_help_says_it_appends_records_workers_apply(capsys):
    from framework.streaming.__main__ import main

    with pytest.raises(SystemExit):
        main(["--help"])
    listed = " ".join(capsys.readouterr().out.split())
    assert "redrive re-drive late events parked as dead letters (appends LateAccepted" in listed
    assert "count" not in listed
    with pytest.raises(SystemExit):
        main(["redrive", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Nothing is applied here: the projection's workers apply the parked payload" in text
    assert "count" not in text


def test_pull_queries_filter_on_keys_and_window_bounds():
    outcome = given_partitions(
        {0: [made(A, 5, "1.00", "CH"), made(B, 65, "2.00", "CH"), made(C, 70, "3.00", "DE")]}
    ).project(SalesStreams)
    live = next(t for t in outcome.projection.tables if t.name == "t_sales_hourly")
    with outcome.engine.connect() as conn:
        rows = SalesStreams.hourly.query(conn, table=live, country="CH", window_start__gte=hour(1))
        assert [(r["country"], r["sales"]) for r in rows] == [("CH", 1)]
        both = SalesStreams.hourly.query(conn, table=live, country__in=["CH", "DE"])
        assert [r["country"] for r in both] == ["CH", "CH", "DE"]
        with pytest.raises(ConfigurationError, match="cannot filter"):
            SalesStreams.hourly.query(conn, colour="red")


def test_stream_status_reports_watermark_open_windows_and_late_events():
    outcome = given_partitions(
        {0: [made(A, 90, "3.00"), made(B, 5, "8.00")], 1: [made(C, 95, "1.00")]}
    ).project(SalesStreams)
    status = streaming.stream_status(outcome.projection, outcome.engine)
    assert status.partitions is None and status.watermark is None  # no tick yet: nothing closes
    assert status.stream_times == {0: T0 + timedelta(minutes=90), 1: T0 + timedelta(minutes=95)}
    assert status.open_windows["hourly"] == 2 and status.amended_after_close["hourly"] == 1
    assert status.late_events["stats"] == {"drop": 1}
    assert status.late_events["daily"] == {"dead_letter": 1}


def test_stream_figures_are_instruments():
    from framework.observability import StreamSampler
    from tests.support import telemetry

    outcome = given_partitions(
        {0: [made(A, 90, "3.00"), made(B, 5, "8.00")], 1: [made(C, 95, "1.00")]}
    ).project(SalesStreams)
    telemetry.install()
    sampler = StreamSampler([outcome.projection], outcome.engine).start()
    try:
        name = outcome.projection.name
        opened = telemetry.scrape("keel_window_open", projection=name, stream="hourly")
        late = telemetry.scrape("keel_window_late_events_total", projection=name)
    finally:
        sampler.stop()
    status = streaming.stream_status(outcome.projection, outcome.engine)
    assert [v for _, v in opened] == [status.open_windows["hourly"]] == [2]
    assert sorted((labels["stream"], labels["action"], v) for labels, v in late) == sorted(
        (stream, action, count)
        for stream, actions in status.late_events.items()
        for action, count in actions.items()
    )
    assert ("stats", "drop", 1) in [(lb["stream"], lb["action"], v) for lb, v in late]
    assert telemetry.scrape("keel_window_open", projection=name) == []  # stopped: not reported
