"""``IntervalJoin(on_unmatched=...)`` exactly once in every case: a left event that comes after
its interval closed (under each late policy), a late right event that reaches a left whose
trigger has run, a right event at the very end of the interval, and a key with several left
events. Every test runs on SQLite and on real PostgreSQL (the test kit's ``database=``), and
compares every interleaving (Hypothesis) with a rebuild, the triggers included."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from framework.streaming.testing import Partitions, Tick, given_partitions
from framework.testing import ev
from tests.support.streaming_domain import Payment, Sale, UnmatchedJoins

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
S1, S2, S3 = (uuid.UUID(int=i) for i in range(1, 4))
LEFT_JOINS = ("amended", "dropped", "parked", "graced", "outer")


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def sale(sid: uuid.UUID, minutes: float):
    return ev(Sale.Made, id=sid, at=at(minutes), amount=1, country="CH", shopper="ann")


def paid(sid: uuid.UUID, minutes: float, pid: int = 0):
    payment = uuid.UUID(int=1000 + pid) if pid else uuid.uuid5(sid, f"{minutes}")
    return ev(Payment.Received, id=payment, at=at(minutes), sale_id=sid)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> str | None:
    """``None`` (SQLite in memory) or the PostgreSQL URL (required under CI)."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


def _rows(outcome: Any, stream: str) -> dict[uuid.UUID, str]:
    join = getattr(UnmatchedJoins, stream)
    return {r["sale_id"]: r["status"] for r in outcome.rows(join)}


def _triggers(outcome: Any) -> dict[tuple[str, uuid.UUID, str], int]:
    """(stream, key, status) -> how many times its hook ran (one effect id each, except
    ``right_only``, one per right event)."""
    found: dict[tuple[str, uuid.UUID, str], int] = {}
    for e in outcome.rows(UnmatchedJoins.unmatched_effects):
        name = (e["stream"], e["sale_id"], e["status"])
        found[name] = found.get(name, 0) + e["runs"]
    return found


def _triggered_once(outcome: Any) -> int:
    """No hook ran twice for an effect id, and every ``unmatched`` row had its hook; returns
    how many left keys were triggered."""
    effects = outcome.rows(UnmatchedJoins.unmatched_effects)
    assert {e["runs"] for e in effects} <= {1}, effects
    left = {(e["stream"], e["sale_id"]) for e in effects if e["status"] == "unmatched"}
    for stream in LEFT_JOINS:
        for key, status in _rows(outcome, stream).items():
            if status == "unmatched":
                assert (stream, key) in left, (stream, key, effects)
    return len(left)


def _same_everywhere(given: Partitions, examples: int = 12) -> None:
    report = given.all_interleavings(UnmatchedJoins, examples=examples)
    assert report.differing == 0 and report.examples == examples


def test_a_left_event_after_its_interval_closed_triggers_once_under_each_policy(database):
    # Partition 0 is at 12:00 when S1's sale from 10:10 comes, 110 minutes late: its interval
    # (to 10:40) closed everywhere before. A history that saw the sale in time triggers the same
    # effect id; a parked sale triggers when it is re-driven.
    late = given_partitions(
        {0: [Tick(at(120)), sale(S1, 10)], 1: [Tick(at(120))]}, database=database
    ).accept_late(0, 1, "parked", UnmatchedJoins.name)
    late.tick(None, at(180))
    in_time = given_partitions(
        {0: [sale(S1, 10), Tick(at(120))], 1: [Tick(at(120))]}, database=database
    ).tick(None, at(180))
    outcome, reference = late.project(UnmatchedJoins), in_time.project(UnmatchedJoins)
    for stream in ("amended", "parked", "graced", "outer"):
        assert _rows(outcome, stream) == {S1: "unmatched"}, stream
    assert _rows(outcome, "dropped") == {}
    effects = outcome.rows(UnmatchedJoins.unmatched_effects)
    assert sorted(e["stream"] for e in effects) == ["amended", "graced", "outer", "parked"]
    in_time = reference.rows(UnmatchedJoins.unmatched_effects)
    expected = {e["effect_id"] for e in in_time if e["stream"] != "dropped"}
    assert len(in_time) == 5 and {e["effect_id"] for e in effects} == expected
    assert _triggered_once(outcome) == 4
    actions = sorted((r["stream"], r["action"]) for r in outcome.late_events())
    assert ("dropped", "drop") in actions and ("parked", "redriven") in actions
    outcome.close()
    reference.close()
    _same_everywhere(late)


def test_a_late_payment_after_the_interval_closed_corrects_the_row_and_the_trigger_stands(
    database,
):
    # S1's payment (10:10) comes after partition 1 reached 11:00, past S1's interval (to 10:30):
    # in a history where partition 0 catches up first S1's trigger has run, so it runs in every
    # history, and the row becomes matched. S2's payment (10:40) is late too, but partition 1
    # was at 10:50, before S2's interval ends (10:55): no history closes S2 before it, so it
    # counts as paid in time and nothing triggers (except where late payments are dropped).
    given = given_partitions(
        {
            0: [sale(S1, 0), sale(S2, 25), Tick(at(40))],
            1: [Tick(at(50)), paid(S2, 40), Tick(at(60)), paid(S1, 10)],
        },
        database=database,
    ).tick(None, at(120))
    outcome = given.project(UnmatchedJoins)
    for stream in ("amended", "outer"):
        assert _rows(outcome, stream) == {S1: "matched", S2: "matched"}, stream
    for stream in ("dropped", "parked"):
        assert _rows(outcome, stream) == {S1: "unmatched", S2: "unmatched"}, stream
    # grace=10: S2's payment is on time (10:40 >= 10:50 - 10), S1's still late (10:10 < 10:50).
    assert _rows(outcome, "graced") == {S1: "matched", S2: "matched"}
    assert _triggers(outcome) == {
        ("amended", S1, "unmatched"): 1,
        ("outer", S1, "unmatched"): 1,
        ("graced", S1, "unmatched"): 1,
        ("dropped", S1, "unmatched"): 1,
        ("dropped", S2, "unmatched"): 1,
        ("parked", S1, "unmatched"): 1,
        ("parked", S2, "unmatched"): 1,
    }
    outcome.close()
    _same_everywhere(given, examples=20)


def test_a_payment_at_the_end_of_the_interval_is_in_time_in_every_interleaving(database):
    # Paid at 10:30, exactly 30 minutes after the sale, on time in partition 1 (at 10:30): it
    # matches, so the interval may not close when every partition is *at* 10:30, only past it.
    given = given_partitions(
        {0: [sale(S1, 0), Tick(at(30))], 1: [Tick(at(30)), paid(S1, 30)]}, database=database
    ).tick(None, at(90))
    outcome = given.project(UnmatchedJoins)
    for stream in LEFT_JOINS:
        assert _rows(outcome, stream) == {S1: "matched"}, stream
    assert _triggers(outcome) == {}
    outcome.close()
    _same_everywhere(given, examples=20)


def test_a_key_with_several_sales_triggers_at_most_once_and_the_same_in_every_interleaving(
    database,
):
    # S1 is made at 10:05 (partition 0) and again at 10:00, in partition 1 after it reached
    # 11:00: the on-time one decides. S2 likewise, with a payment at 10:02 that only the late
    # 10:00 sale's interval holds: which sale a history saw first must not decide the trigger.
    given = given_partitions(
        {
            0: [sale(S1, 5), sale(S2, 5), Tick(at(60))],
            1: [paid(S2, 2), Tick(at(60)), sale(S1, 0), sale(S2, 0)],
        },
        database=database,
    ).tick(None, at(120))
    outcome = given.project(UnmatchedJoins)
    unpaid = [{"sale_id": s, "left_time": at(5), "status": "unmatched"} for s in (S1, S2)]
    for stream in LEFT_JOINS:
        outcome.then_rows(getattr(UnmatchedJoins, stream), unpaid)
    assert _triggered_once(outcome) == 2 * len(LEFT_JOINS)
    outcome.close()
    _same_everywhere(given, examples=20)


# -- the property: random histories of sales and payments, late ones and ticks among them -----


def _history(rng: random.Random, database: str | None) -> Partitions:
    """Per partition a few sales and payments (some of a sale made twice, some paid twice, some
    for other keys' sales), in log order by a jittered time so that some are late, and ticks."""
    keys = [uuid.UUID(int=k) for k in range(1, 5)]
    sequences: dict[int, list[Any]] = {}
    pid = 0
    for p in range(rng.choice([2, 3])):
        timeline: list[tuple[float, Any]] = []
        for _ in range(rng.randint(2, 6)):
            key, moment = rng.choice(keys), rng.uniform(0, 180)
            if rng.random() < 0.5:
                timeline.append((moment, sale(key, moment)))
            else:
                pid += 1
                timeline.append((moment, paid(key, moment, pid)))
        for _ in range(rng.randint(1, 3)):
            timeline.append((rng.uniform(0, 200), Tick(at(rng.uniform(0, 200)))))
        timeline.sort(key=lambda x: x[0] + rng.uniform(-60, 20))
        sequences[p] = [item for _t, item in timeline]
    return given_partitions(sequences, database=database).tick(None, at(400))


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("db", "scenarios", "examples"), [("sqlite", 12, 12), ("postgres", 3, 5)])
def test_every_interleaving_triggers_each_unmatched_key_once(
    db: str, scenarios: int, examples: int, request: pytest.FixtureRequest
):
    database = None if db == "sqlite" else request.getfixturevalue("postgres_url")
    rng = random.Random(1503)
    total = interleavings = differing = triggered = late = matched_late = 0
    for _ in range(scenarios):
        given = _history(rng, database)
        report = given.all_interleavings(UnmatchedJoins, examples=examples)
        total += report.examples
        interleavings += report.interleavings
        differing += report.differing
        outcome = given.run(UnmatchedJoins, None)
        triggered += _triggered_once(outcome)
        late += len(outcome.late_events())
        hooks = _triggers(outcome)
        matched_late += sum(
            1
            for stream in LEFT_JOINS
            for key, status in _rows(outcome, stream).items()
            if status == "matched" and (stream, key, "unmatched") in hooks
        )
        outcome.close()
    print(
        f"STREAMS[interval on_unmatched, {db}]: examples={total} interleavings={interleavings} "
        f"triggered_keys={triggered} late_events={late} matched_after_trigger={matched_late} "
        f"differing={differing}"
    )
    assert differing == 0 and total >= scenarios * examples // 2 and triggered and late
