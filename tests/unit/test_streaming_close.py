"""``on_close`` exactly once in every case: a fixed window whose first contribution comes after
it closed is announced (once, under the effect id a history that saw it in time uses), and a
session id is announced at most once even when a late event merges closed sessions and a void
splits them again; every closed row (window or session) has had its one ``on_close``. Every
test runs on SQLite and on real PostgreSQL (the test kit's ``database=``)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from framework.streaming.testing import Partitions, Tick, given_partitions
from framework.testing import ev
from tests.support.streaming_domain import LateWindows, Sale, SplitSessions

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
A, B, C, D = (uuid.UUID(int=i) for i in range(1, 5))


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def made(sid: uuid.UUID, minutes: float, amount: str, country: str = "CH", shopper: str = "ann"):
    return ev(
        Sale.Made,
        id=sid,
        at=at(minutes),
        amount=Decimal(amount),
        country=country,
        shopper=shopper,
    )


def voided(sid: uuid.UUID, minutes: float):
    return ev(Sale.Voided, id=sid, at=at(minutes))


def corrected(sid: uuid.UUID, minutes: float, amount: str, moved_to: float):
    return ev(Sale.Corrected, id=sid, at=at(minutes), amount=Decimal(amount), moved_to=at(moved_to))


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> str | None:
    """``None`` (SQLite in memory) or the PostgreSQL URL (required under CI)."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


WINDOWS = {
    "hourly": LateWindows.hourly,
    "hourly_final": LateWindows.hourly_final,
    "hopping": LateWindows.hopping,
    "daily": LateWindows.daily,
}


def _windows_announced_once(outcome: Any) -> int:
    """Every closed window of every table had its ``on_close`` run exactly once, and nothing
    else was announced; returns how many were."""
    effects = outcome.rows(LateWindows.window_effects)
    assert {e["closings"] for e in effects} <= {1}, effects
    announced = sorted((e["stream"], e["window_start"], e["country"]) for e in effects)
    closed = sorted(
        (name, row["window_start"], row["country"])
        for name, stream in WINDOWS.items()
        for row in outcome.rows(stream)
        if row["closed"]
    )
    assert announced == closed
    return len(closed)


def test_a_window_whose_first_contribution_comes_after_its_close_is_announced_once(database):
    # Partition 0 reaches midnight (sale B), then sends DE's first sale, from 10:10, 14 hours
    # late, and moves sale A to 08:00, where CH had nothing. Partition 1's tick at 23:30 lets
    # every window of 10:10 and 08:00 (and March 2nd in Zurich) close before, in a live trickle;
    # a rebuild applies partition 0 first, so there the rows are made before anything closes.
    given = given_partitions(
        {
            0: [
                made(A, 5, "1.00"),
                made(B, 14 * 60, "2.00"),
                made(C, 10, "4.00", country="DE"),
                corrected(A, 14 * 60 + 1, "3.00", moved_to=-120),
            ],
            1: [Tick(at(13 * 60 + 30))],
        },
        database=database,
    )
    outcome = given.project(LateWindows)  # a rebuild and redelivery: the same tables, effects too
    late = {"closed": True, "amended_after_close": True, "late_events": 1}
    on_time = {"closed": False, "amended_after_close": False, "late_events": 0}
    outcome.then_rows(
        LateWindows.hourly,
        [
            {"country": "CH", "window_start": at(-120), "sales": 1, **late},
            {"country": "CH", "window_start": at(0), "sales": 0, **late},
            {"country": "CH", "window_start": at(14 * 60), "sales": 1, **on_time},
            {"country": "DE", "window_start": at(0), "sales": 1, **late},
        ],
    )
    outcome.then_rows(
        LateWindows.hourly_final,
        [
            {"country": "CH", "window_start": at(-120), "revenue": Decimal("3.00"), **late},
            {"country": "CH", "window_start": at(0), "revenue": Decimal("0.00"), **late},
            {"country": "DE", "window_start": at(0), "revenue": Decimal("4.00"), **late},
        ],
    )
    outcome.then_rows(
        LateWindows.daily,
        [
            # A's correction moved it within the day: out and in again, both late.
            {"country": "CH", "sales": 1, "revenue": Decimal("3.00"), **late, "late_events": 2},
            {"country": "DE", "sales": 1, "revenue": Decimal("4.00"), **late},
        ],
    )
    # hourly 3, hourly_final 3, hopping 6 (07:00 to 10:00 for CH, 09:00 and 10:00 for DE), daily 2
    assert _windows_announced_once(outcome) == 14
    outcome.close()
    report = given.all_interleavings(LateWindows, examples=10)
    assert report.differing == 0


def _session_rows(outcome: Any) -> list[list[dict[str, Any]]]:
    tables = (SplitSessions.final, SplitSessions.final.tables["open"], SplitSessions.updating)
    return [outcome.rows(table) for table in tables]


def _sessions_announced_once(outcome: Any) -> int:
    """No session id was announced twice, and every closed session in either table was
    announced; returns how many closed sessions there are."""
    effects = outcome.rows(SplitSessions.session_effects)
    assert {e["closings"] for e in effects} <= {1}, effects
    announced = {e["session_id"] for e in effects}
    closed = [
        row["session_id"]
        for stream in (SplitSessions.final, SplitSessions.updating)
        for row in outcome.rows(stream)
        if row["closed"]
    ]
    missing = set(closed) - announced
    assert not missing, (missing, effects)
    return len(closed)


def test_a_closed_session_merged_and_split_again_is_announced_once(database):
    # ann's 10:00 and 10:50 sessions close (partition 1 ticks 12:30, partition 0 is at 13:20);
    # then 10:25 arrives late and bridges them into the first one's id, and is voided: the two
    # sessions are back, each under its own id, each announced once (in both emit modes).
    given = given_partitions(
        {
            0: [
                made(A, 0, "1.00"),
                made(B, 50, "2.00"),
                made(D, 200, "5.00", shopper="bob"),
                made(C, 25, "4.00"),
                voided(C, 201),
            ],
            1: [Tick(at(150))],
        },
        database=database,
    )
    outcome = given.project(SplitSessions)  # every history closes and announces the same two
    ann = [{"shopper": "ann", "window_start": at(0)}, {"shopper": "ann", "window_start": at(50)}]
    outcome.then_rows(SplitSessions.final, [{**s, "sales": 1, "closed": True} for s in ann])
    outcome.then_rows(
        SplitSessions.updating,
        [
            *({**s, "closed": True} for s in ann),
            {"shopper": "bob", "window_start": at(200), "closed": False},
        ],
    )
    assert _sessions_announced_once(outcome) == 4
    assert len(outcome.rows(SplitSessions.session_effects)) == 4
    outcome.close()


def test_a_closed_session_a_late_event_reopens_is_not_announced_again(database):
    # ann's 10:00 session closes at 11:00 (bob's sale and partition 1's tick); 10:28 arrives
    # late and extends it to 10:58, past what the watermark (11:01) minus grace has closed, so
    # it is open again until the last ticks close it once more: still one announcement.
    given = given_partitions(
        {
            0: [made(A, 0, "1.00"), made(D, 200, "5.00", shopper="bob"), made(C, 28, "4.00")],
            1: [Tick(at(60)), Tick(at(61))],
        },
        database=database,
    ).tick(None, at(300))
    live = given.run(SplitSessions, given.trickle())
    reopened = {"shopper": "ann", "window_end": at(58), "late_events": 1, "closed": True}
    bob = {"shopper": "bob", "late_events": 0, "closed": True}
    for outcome in (live, given.project(SplitSessions)):
        for stream in (SplitSessions.final, SplitSessions.updating):
            outcome.then_rows(stream, [reopened, {**bob, "window_end": at(230)}])
        assert _sessions_announced_once(outcome) == 4
        assert len(outcome.rows(SplitSessions.session_effects)) == 4
        outcome.close()


# -- the properties: random histories with late events, corrections, voids and ticks ----------


def _sales(rng: random.Random, span: float, keys: list[str], database: str | None) -> Partitions:
    """Per partition a few sales (some corrected or voided), in log order by a jittered time,
    so that some are late; ticks mid-way close windows while late events still come."""
    sequences: dict[int, list[Any]] = {}
    for p in range(rng.choice([2, 3])):
        timeline: list[tuple[float, int, Any]] = []
        for n in range(rng.randint(2, 7)):
            sid = uuid.UUID(int=p * 100 + n + 1)
            moment = rng.uniform(0, span)
            key = rng.choice(keys)
            amount = f"{rng.randint(1, 50)}.{rng.randint(0, 99):02d}"
            steps = [(moment, made(sid, moment, amount, country=key, shopper=key))]
            if rng.random() < 0.25:
                later = moment + rng.uniform(1, 60)
                steps.append((later, corrected(sid, later, "9.99", moment + rng.uniform(-90, 90))))
            if rng.random() < 0.3:
                later = moment + rng.uniform(61, 120)
                steps.append((later, voided(sid, later)))
            timeline += [(t + rng.uniform(-90, 30), i, e) for i, (t, e) in enumerate(steps)]
        timeline.sort(key=lambda x: x[0])
        by_sale: dict[Any, list[Any]] = {}
        for _t, _i, e in sorted(timeline, key=lambda x: (x[2].id, x[1])):
            by_sale.setdefault(e.id, []).append(e)
        sequence = [by_sale[e.id].pop(0) for _t, _i, e in timeline]
        for _ in range(rng.randint(1, 3)):
            sequence.insert(rng.randint(0, len(sequence)), Tick(at(rng.uniform(0, span))))
        sequences[p] = sequence
    return given_partitions(sequences, database=database).tick(None, at(span + 60 * 24))


def _schedule(rng: random.Random, given: Partitions) -> list[tuple[int, int, bool]]:
    """A random interleaving with batch sizes and duplicate deliveries."""
    left = {p: len(events) for p, events in given.recorded().items()}
    schedule: list[tuple[int, int, bool]] = []
    while any(left.values()):
        partition = rng.choice([p for p, n in left.items() if n])
        size = rng.randint(1, min(left[partition], 4))
        schedule.append((partition, size, rng.random() < 0.3))
        left[partition] -= size
    return schedule


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("db", "scenarios", "examples"), [("sqlite", 6, 15), ("postgres", 2, 5)])
def test_fixed_windows_every_interleaving_announces_each_closed_window_once(
    db: str, scenarios: int, examples: int, request: pytest.FixtureRequest
):
    database = None if db == "sqlite" else request.getfixturevalue("postgres_url")
    rng = random.Random(1501)
    total = interleavings = differing = closed = amended = 0
    for _ in range(scenarios):
        given = _sales(rng, 60 * 6, ["CH", "DE", "FR"], database)
        report = given.all_interleavings(LateWindows, examples=examples)
        total += report.examples
        interleavings += report.interleavings
        differing += report.differing
        outcome = given.run(LateWindows, None)
        closed += _windows_announced_once(outcome)
        amended += sum(
            1 for s in WINDOWS.values() for r in outcome.rows(s) if r["amended_after_close"]
        )
        outcome.close()
    print(
        f"STREAMS[fixed windows on_close, {db}]: examples={total} interleavings={interleavings} "
        f"closed_windows={closed} amended_after_close={amended} differing={differing}"
    )
    assert differing == 0 and total >= scenarios * examples // 2 and closed and amended


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("db", "scenarios", "runs"), [("sqlite", 10, 8), ("postgres", 3, 3)])
def test_sessions_every_history_announces_each_closed_id_once(
    db: str, scenarios: int, runs: int, request: pytest.FixtureRequest
):
    # Which ids a history announces may differ (a closed session that changes afterwards was
    # announced under the id it had then), so this checks each history's own effects.
    database = None if db == "sqlite" else request.getfixturevalue("postgres_url")
    rng = random.Random(1502)
    histories = closed = effects = 0
    for _ in range(scenarios):
        given = _sales(rng, 60 * 4, ["ann", "bob"], database)
        rebuilt = given.run(SplitSessions, None)
        rows = _session_rows(rebuilt)
        schedules = [given.trickle(), *(_schedule(rng, given) for _ in range(runs))]
        for outcome in [rebuilt, *(given.run(SplitSessions, s) for s in schedules)]:
            assert _session_rows(outcome) == rows  # the rows agree in every history
            closed += _sessions_announced_once(outcome)
            effects += len(outcome.rows(SplitSessions.session_effects))
            histories += 1
            outcome.close()
    print(
        f"STREAMS[sessions on_close, {db}]: histories={histories} closed_sessions={closed} "
        f"announced={effects}"
    )
    assert histories == scenarios * (runs + 2) and closed and effects >= closed
