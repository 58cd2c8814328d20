"""Session windows with ``emit="final"``: a session's row appears when the session closes (the
slowest partition's stream time past its end plus grace), open sessions merge, ``on_close``
runs once per closed session, and late events follow the policy. Every test runs on SQLite and
on real PostgreSQL (the test kit's ``database=``)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from framework.errors import ConfigurationError
from framework.streaming import Count, Retractions, Session, Windowed
from framework.streaming.testing import Tick, given_partitions
from framework.testing import ev
from tests.support.streaming_domain import Sale, SessionProperty, SessionStreams

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def made(sid: uuid.UUID, minutes: float, amount: str, country: str = "CH", shopper: str = "ann"):
    at = T0 + timedelta(minutes=minutes)
    return ev(Sale.Made, id=sid, at=at, amount=Decimal(amount), country=country, shopper=shopper)


def voided(sid: uuid.UUID, minutes: float):
    return ev(Sale.Voided, id=sid, at=T0 + timedelta(minutes=minutes))


def corrected(sid: uuid.UUID, minutes: float, amount: str, moved_to: float):
    at, moved = T0 + timedelta(minutes=minutes), T0 + timedelta(minutes=moved_to)
    return ev(Sale.Corrected, id=sid, at=at, amount=Decimal(amount), moved_to=moved)


A, B, C, D = (uuid.UUID(int=i) for i in range(1, 5))


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> str | None:
    """``None`` (SQLite in memory) or the PostgreSQL URL (required under CI)."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


def _ids(outcome: Any, stream: Any) -> list[uuid.UUID]:
    return [r["session_id"] for r in outcome.rows(stream)]


def _effects(outcome: Any) -> dict[uuid.UUID, int]:
    """Session id -> how often ``on_close`` ran for it (ids differ between the streams)."""
    return {r["session_id"]: r["closings"] for r in outcome.rows(SessionStreams.session_effects)}


def _announced_once(outcome: Any) -> dict[uuid.UUID, int]:
    """Every closed session of every stream had its ``on_close`` run, exactly once."""
    effects = _effects(outcome)
    for stream in (SessionStreams.amended, SessionStreams.dropped, SessionStreams.parked):
        for row in outcome.rows(stream):
            assert effects.get(row["session_id"]) == 1, (stream.name, row, effects)
    assert set(effects.values()) <= {1}
    return effects


def _session_id(stream: Any, shopper: str, first: uuid.UUID) -> uuid.UUID:
    session_id: uuid.UUID = stream.keeper.session_id({"shopper": shopper}, str(first))
    return session_id


def test_final_sessions_keep_open_ones_apart_and_definitions_are_checked():
    sessions = Windowed(
        "t_def_sessions",
        sa.MetaData(),
        window=Session(gap=timedelta(minutes=30)),
        aggregates={"n": Count()},
        contributes=Sale.Made,
        emit="final",
    )
    assert set(sessions.tables) == {"rows", "contrib", "open"}
    assert sessions.tables["open"].name == "t_def_sessions__open"
    # With on_close, the ids announced are remembered (a split can bring one back).
    hooked = SessionStreams.amended.tables
    assert set(hooked) == {"rows", "contrib", "open", "announced"}
    assert list(hooked["announced"].c.keys()) == ["session_id"]
    for bad, match in [
        ({"aggregates": {"n": Retractions()}}, "Retractions"),
        ({"emit": "later"}, "emit="),
    ]:
        with pytest.raises(ConfigurationError, match=match):
            Windowed(
                "t_def_bad",
                sa.MetaData(),
                **{
                    "window": Session(gap=timedelta(minutes=30)),
                    "aggregates": {"n": Count()},
                    "contributes": Sale.Made,
                    "emit": "final",
                    **bad,
                },
            )


def test_rows_appear_only_when_the_slowest_partition_passes_end_plus_grace(database):
    # ann: 10:00 and 10:20 (one session, ends 10:50); bob: 10:05 (ends 10:35). Grace 5 min.
    events = {0: [made(A, 0, "1.00"), made(B, 20, "2.00")], 1: [made(C, 5, "4.00", shopper="bob")]}
    opened = given_partitions(events, database=database).project(SessionStreams)
    opened.then_rows(SessionStreams.amended, []).then_rows(SessionStreams.session_effects, [])
    opened.then_rows(
        SessionStreams.amended.tables["open"],
        [
            {"shopper": "ann", "sales": 2, "window_end": at(50), "closed": False},
            {"shopper": "bob", "sales": 1, "window_end": at(35), "closed": False},
        ],
    )
    ann, bob = _ids(opened, SessionStreams.amended.tables["open"])
    opened.close()
    # A tick at 10:45 in both partitions closes bob's session (10:35 + 5) but not ann's.
    half = given_partitions(events, database=database).tick(None, at(45)).project(SessionStreams)
    half.then_rows(SessionStreams.amended, [{"shopper": "bob", "sales": 1, "closed": True}])
    half.then_rows(SessionStreams.amended.tables["open"], [{"shopper": "ann", "sales": 2}])
    assert _ids(half, SessionStreams.amended) == [bob]
    half.close()
    # A tick in one partition only closes nothing: the other partition may still send 10:10.
    one = given_partitions(events, database=database).tick(1, at(300)).project(SessionStreams)
    one.then_rows(SessionStreams.amended, [])
    one.close()
    # Both partitions past 10:55: both sessions closed, each announced once, ids unchanged.
    closed = given_partitions(events, database=database).tick(None, at(55)).project(SessionStreams)
    closed.then_rows(
        SessionStreams.amended,
        [
            {"shopper": "ann", "sales": 2, "spent": Decimal("3.00"), "window_start": at(0)},
            {"shopper": "bob", "sales": 1, "spent": Decimal("4.00"), "window_start": at(5)},
        ],
    )
    closed.then_rows(SessionStreams.amended.tables["open"], [])
    assert _ids(closed, SessionStreams.amended) == [ann, bob]
    # Three streams announce their two sessions each, once (redelivery and a rebuild included:
    # project() compared those tables byte for byte).
    effects = _announced_once(closed)
    assert len(effects) == 6 and {ann, bob} <= set(effects)
    closed.close()


def test_open_sessions_merge_with_a_stable_id_and_no_orphan_row(database):
    # 10:00 and 10:50 are two sessions until 10:25 bridges them (gap 30 minutes).
    apart = given_partitions({0: [made(A, 0, "1.00"), made(B, 50, "2.00")]}, database=database)
    opened = apart.project(SessionStreams)
    ids = _ids(opened, SessionStreams.amended.tables["open"])
    assert len(ids) == 2 and not _effects(opened)
    opened.close()
    bridged = given_partitions(
        {0: [made(A, 0, "1.00"), made(B, 50, "2.00")], 1: [made(C, 25, "4.00")]},
        database=database,
    ).tick(None, at(200))
    outcome = bridged.project(SessionStreams)
    outcome.then_rows(
        SessionStreams.amended,
        [{"window_start": at(0), "window_end": at(80), "sales": 3, "session_id": ids[0]}],
    )
    outcome.then_rows(SessionStreams.amended.tables["open"], [])
    effects = _announced_once(outcome)
    assert len(effects) == 3 and ids[0] in effects and ids[1] not in effects
    report = bridged.all_interleavings(SessionStreams, examples=8)
    assert report.differing == 0
    outcome.close()


def _late_after_close(database: str | None) -> Any:
    """Partition 0 reaches 11:40 (bob), then sends ann's 10:10: late by 85 minutes. The tick
    in partition 1 (11:00) lets ann's 10:00 session (ends 10:30) close before it arrives."""
    return given_partitions(
        {
            0: [made(A, 0, "1.00"), made(D, 100, "5.00", shopper="bob"), made(B, 10, "2.00")],
            1: [Tick(at(60))],
        },
        database=database,
    )


def test_a_late_event_amends_a_closed_session_and_on_close_does_not_run_again(database):
    outcome = _late_after_close(database).project(SessionStreams)
    outcome.then_rows(
        SessionStreams.amended,
        [
            {
                "shopper": "ann",
                "sales": 2,
                "spent": Decimal("3.00"),
                "window_end": at(40),
                "revision": 2,
                "late_events": 1,
                "amended_after_close": True,
            }
        ],
    )
    (ann,) = _ids(outcome, SessionStreams.amended)
    assert ann == _session_id(SessionStreams.amended, "ann", A)  # the first sale's, as before
    assert len(_announced_once(outcome)) == 3  # ann's session in each stream (bob's is open)
    outcome.then_rows(
        SessionStreams.dropped,
        [{"shopper": "ann", "sales": 1, "late_events": 0, "amended_after_close": False}],
    )
    outcome.then_rows(SessionStreams.parked, [{"shopper": "ann", "sales": 1}])
    late = {(r["stream"], r["action"], r["late_by_ms"]) for r in outcome.late_events()}
    assert late == {
        ("amended", "amend", 85 * 60_000),
        ("dropped", "drop", 85 * 60_000),
        ("parked", "dead_letter", 85 * 60_000),
    }
    outcome.close()


def test_a_parked_late_event_re_driven_after_close_amends_the_session(database):
    given = _late_after_close(database).accept_late(0, 2, "parked", SessionStreams.name)
    outcome = given.project(SessionStreams)
    outcome.then_rows(
        SessionStreams.parked,
        [{"shopper": "ann", "sales": 2, "late_events": 1, "amended_after_close": True}],
    )
    assert _ids(outcome, SessionStreams.parked) == [_session_id(SessionStreams.parked, "ann", A)]
    assert len(_announced_once(outcome)) == 3
    actions = {(r["stream"], r["action"]) for r in outcome.late_events()}
    assert ("parked", "redriven") in actions
    outcome.close()


def test_a_late_event_that_bridges_two_closed_sessions_merges_them_into_the_earlier(database):
    # ann's 10:00 and 10:50 sessions both close (watermark 11:30) before 10:25 arrives, late.
    given = given_partitions(
        {
            0: [
                made(A, 0, "1.00"),
                made(B, 50, "2.00"),
                made(D, 200, "5.00", shopper="bob"),
                made(C, 25, "4.00"),
            ],
            1: [Tick(at(150))],
        },
        database=database,
    )
    live = given.run(SessionStreams, given.trickle())
    rebuilt = given.run(SessionStreams, None)  # partition 0 first: 10:25 bridges open sessions
    merged = [{"window_start": at(0), "window_end": at(80), "sales": 3, "late_events": 1}]
    for outcome in (live, rebuilt):
        outcome.then_rows(SessionStreams.amended, merged)
        outcome.then_rows(SessionStreams.amended.tables["open"], [{"shopper": "bob"}])
    first = _session_id(SessionStreams.amended, "ann", A)
    later = _session_id(SessionStreams.amended, "ann", B)
    assert _ids(live, SessionStreams.amended) == _ids(rebuilt, SessionStreams.amended) == [first]
    # The rows agree. Live, both sessions had closed and were announced, once each; the later
    # one's row is gone, its effect stands. The rebuild merged them first: one announcement.
    # (The other two streams dropped or parked 10:25: two sessions each, in both histories.)
    live_effects, rebuilt_effects = _announced_once(live), _announced_once(rebuilt)
    assert {first, later} <= set(live_effects) and len(live_effects) == 6
    assert first in rebuilt_effects and later not in rebuilt_effects
    assert len(rebuilt_effects) == 5
    live.close()
    rebuilt.close()


def test_a_void_after_close_shrinks_or_removes_the_closed_session(database):
    # ann: 10:00 and 10:10, closed at 11:00; then sale A (the first) is voided.
    given = given_partitions(
        {
            0: [
                made(A, 0, "1.00"),
                made(B, 10, "2.00"),
                made(D, 100, "5.00", shopper="bob"),
                voided(A, 101),
                voided(B, 102),
            ],
            1: [Tick(at(60))],
        },
        database=database,
    )
    live = given.run(SessionStreams, given.trickle())
    rebuilt = given.run(SessionStreams, None)
    for outcome in (live, rebuilt):
        # Both sales voided: ann's session is gone, no orphan row anywhere.
        outcome.then_rows(SessionStreams.amended, [])
        outcome.then_rows(SessionStreams.amended.tables["open"], [{"shopper": "bob"}])
        _announced_once(outcome)
    live.close()
    rebuilt.close()
    # Voiding only the first sale leaves 10:10 alone: the session's id is now that of its first
    # sale (B), as in every history; it is announced under that id. Live, the session had
    # closed (and been announced) as A's before the void: that effect stands.
    shrunk = given_partitions({0: given.items[0][:4], 1: [Tick(at(60))]}, database=database)
    live, rebuilt = shrunk.run(SessionStreams, shrunk.trickle()), shrunk.run(SessionStreams, None)
    by_a = _session_id(SessionStreams.amended, "ann", A)
    by_b = _session_id(SessionStreams.amended, "ann", B)
    for outcome in (live, rebuilt):
        outcome.then_rows(
            SessionStreams.amended,
            [
                {
                    "window_start": at(10),
                    "sales": 1,
                    "spent": Decimal("2.00"),
                    "contributions": 1,
                    "session_id": by_b,
                }
            ],
        )
        assert _announced_once(outcome)[by_b] == 1
    assert by_a in _effects(live) and by_a not in _effects(rebuilt)
    live.close()
    rebuilt.close()


def test_a_correction_moves_a_sale_between_sessions(database):
    given = given_partitions(
        {0: [made(A, 0, "1.00"), made(B, 100, "2.00"), corrected(A, 101, "3.00", 110)], 1: []},
        database=database,
    ).tick(None, at(200))
    live, rebuilt = given.run(SessionStreams, given.trickle()), given.run(SessionStreams, None)
    for outcome in (live, rebuilt):
        outcome.then_rows(
            SessionStreams.amended,
            [
                {
                    "window_start": at(100),
                    "window_end": at(140),
                    "sales": 2,
                    "spent": Decimal("5.00"),
                    "session_id": _session_id(SessionStreams.amended, "ann", B),
                }
            ],
        )
        outcome.then_rows(SessionStreams.amended.tables["open"], [])
        _announced_once(outcome)
        outcome.close()


# -- the property: any interleaving, duplicate deliveries and a rebuild agree ----------------------


def _scenario(rng: random.Random, database: str | None) -> Any:
    sequences: dict[int, list[Any]] = {}
    for p in range(rng.choice([2, 3])):
        timeline: list[tuple[float, int, Any]] = []
        for n in range(rng.randint(2, 6)):
            sid = uuid.UUID(int=p * 100 + n + 1)
            moment = rng.uniform(0, 240)
            shopper = rng.choice(["ann", "bob"])
            amount = f"{rng.randint(1, 50)}.{rng.randint(0, 99):02d}"
            steps = [(moment, made(sid, moment, amount, shopper=shopper))]
            if rng.random() < 0.25:
                later = moment + rng.uniform(1, 60)
                moved = moment + rng.uniform(-60, 60)
                steps.append((later, corrected(sid, later, "9.99", moved)))
            if rng.random() < 0.25:
                later = moment + rng.uniform(61, 120)
                steps.append((later, voided(sid, later)))
            timeline += [(t + rng.uniform(-40, 40), i, e) for i, (t, e) in enumerate(steps)]
        timeline.sort(key=lambda x: x[0])  # log order by jittered time: some events are late
        by_sale: dict[Any, list[Any]] = {}
        for _t, _i, e in sorted(timeline, key=lambda x: (x[2].id, x[1])):
            by_sale.setdefault(e.id, []).append(e)
        sequence = [by_sale[e.id].pop(0) for _t, _i, e in timeline]
        for _ in range(rng.randint(1, 3)):  # ticks mid-way: sessions close while others run
            sequence.insert(rng.randint(0, len(sequence)), Tick(at(rng.uniform(0, 300))))
        sequences[p] = sequence
    return given_partitions(sequences, database=database).tick(None, at(60 * 24))


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("db", "scenarios", "examples"), [("sqlite", 6, 20), ("postgres", 2, 6)])
def test_final_sessions_every_interleaving_and_a_rebuild_give_identical_tables(
    db: str, scenarios: int, examples: int, request: pytest.FixtureRequest
):
    database = None if db == "sqlite" else request.getfixturevalue("postgres_url")
    rng = random.Random(150)
    total = interleavings = differing = closed = late = 0
    for _ in range(scenarios):
        given = _scenario(rng, database)
        report = given.all_interleavings(SessionProperty, examples=examples)
        total += report.examples
        interleavings += report.interleavings
        differing += report.differing
        outcome = given.run(SessionProperty, None)
        closed += len(outcome.rows(SessionProperty.announced))
        late += len(outcome.late_events())
        # Every closed session of the drop stream was announced exactly once.
        effects = outcome.rows(SessionProperty.session_effects)
        assert sorted(r["session_id"] for r in effects) == sorted(
            r["session_id"] for r in outcome.rows(SessionProperty.announced)
        )
        assert {r["closings"] for r in effects} <= {1}
        outcome.close()
    print(
        f"STREAMS[sessions final, {db}]: examples={total} interleavings={interleavings} "
        f"closed_sessions={closed} late_events={late} differing={differing}"
    )
    assert differing == 0 and total >= scenarios * examples // 2 and closed and late
