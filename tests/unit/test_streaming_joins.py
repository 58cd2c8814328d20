"""framework.streaming joins: foreign-key (latest) and as-of joins against a lookup, and the
interval join ("made, but not paid within 30 minutes")."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from framework.streaming.testing import given_partitions
from framework.testing import ev
from tests.support.streaming_domain import JoinStreams, OuterJoinStreams, Payment, Sale, Shopper

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
ANN, P1, P2 = (uuid.UUID(int=100 + i) for i in range(3))
S1, S2, S3 = (uuid.UUID(int=i) for i in range(1, 4))


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def registered(minutes: float, country: str):
    return ev(Shopper.Registered, id=ANN, at=at(minutes), handle="ann", country=country)


def moved(minutes: float, country: str):
    return ev(Shopper.Moved, id=ANN, at=at(minutes), handle="ann", country=country)


def sale(sid: uuid.UUID, minutes: float):
    return ev(
        Sale.Made,
        id=sid,
        at=at(minutes),
        amount=Decimal("5.00"),
        country="--",
        shopper="ann",
    )


def paid(pid: uuid.UUID, sid: uuid.UUID, minutes: float):
    return ev(Payment.Received, id=pid, at=at(minutes), sale_id=sid)


def test_a_foreign_key_join_fills_in_a_late_right_side_and_follows_its_changes():
    # The sales (partition 1) may be applied before the shopper registers (partition 0).
    parts = given_partitions(
        {0: [registered(0, "CH"), moved(40, "DE")], 1: [sale(S1, 10), sale(S2, 50)]}
    )
    outcome = parts.project(JoinStreams)
    outcome.then_rows(
        JoinStreams.latest,
        [{"sale_id": S1, "country": "DE"}, {"sale_id": S2, "country": "DE"}],
    )
    report = parts.all_interleavings(JoinStreams, examples=15)
    assert report.differing == 0 and report.examples == 15


def test_an_as_of_join_takes_the_version_valid_at_the_left_time_and_late_versions_correct_it():
    outcome = given_partitions(
        {0: [registered(0, "CH"), moved(40, "DE")], 1: [sale(S1, 10), sale(S2, 50)]}
    ).project(JoinStreams)
    outcome.then_rows(
        JoinStreams.as_of,
        [{"sale_id": S1, "country": "CH"}, {"sale_id": S2, "country": "DE"}],
    )
    # A move at 10:30 recorded after the move at 10:40 (a late version): only the rows from
    # 10:30 on change; the 10:10 sale keeps CH.
    late = given_partitions(
        {
            0: [registered(0, "CH"), moved(40, "DE"), moved(30, "AT")],
            1: [sale(S1, 10), sale(S2, 35), sale(S3, 50)],
        }
    ).project(JoinStreams)
    late.then_rows(
        JoinStreams.as_of,
        [
            {"sale_id": S1, "country": "CH"},
            {"sale_id": S2, "country": "AT"},
            {"sale_id": S3, "country": "DE"},
        ],
    )
    late.then_rows(
        JoinStreams.shoppers,
        [
            {"valid_from": at(0), "country": "CH"},
            {"valid_from": at(30), "country": "AT"},
            {"valid_from": at(40), "country": "DE"},
        ],
    )


def test_unpaid_rows_appear_once_when_the_interval_closes_never_before():
    events = {0: [sale(S1, 0), sale(S2, 5)], 1: [paid(P1, S1, 20)]}
    # Partition 1 has not passed 10:35 yet: S2's 30 minutes are not over everywhere.
    open_ = given_partitions(events).project(JoinStreams)
    open_.then_rows(JoinStreams.unpaid, [{"sale_id": S1, "status": "matched"}])
    open_.then_rows(JoinStreams.reminders, [])
    closed = given_partitions(events).tick(None, at(36)).tick(None, at(90)).project(JoinStreams)
    closed.then_rows(
        JoinStreams.unpaid,
        [
            {"sale_id": S1, "status": "matched", "right_time": at(20)},
            {"sale_id": S2, "status": "unmatched", "right_time": None},
        ],
    )
    closed.then_rows(JoinStreams.reminders, [{"sale_id": S2, "sent": 1}])


def test_a_payment_before_its_sale_and_a_late_payment_both_match():
    outcome = (
        given_partitions({0: [sale(S1, 10), sale(S2, 12)], 1: [paid(P1, S1, 15)]})
        .tick(1, at(200))
        .tick(0, at(200))
        .project(JoinStreams)
    )
    outcome.then_rows(
        JoinStreams.unpaid,
        [{"sale_id": S1, "status": "matched"}, {"sale_id": S2, "status": "unmatched"}],
    )
    # Paid at 10:20 but recorded after partition 1 reached 13:20: late, amended, recorded.
    late = given_partitions({0: [sale(S1, 10)], 1: [paid(P1, S3, 1), paid(P2, S1, 20)]}).tick(
        None, at(100)
    )
    late.items[1].insert(1, late.items[1].pop())  # the tick at 11:40 before the payment
    outcome = late.project(JoinStreams)
    outcome.then_rows(JoinStreams.unpaid, [{"sale_id": S1, "status": "matched"}])
    assert [r["action"] for r in outcome.late_events() if r["stream"] == "unpaid"] == ["amend"]


def test_an_outer_interval_join_writes_unpaid_sales_and_unclaimed_payments_once_at_close():
    # S1 paid in time; S2 never paid; P2 pays S3, a sale nobody made; P1 is S1's second payment.
    events = {
        0: [sale(S1, 0), sale(S2, 5)],
        1: [paid(P1, S1, 20), paid(P2, S3, 25)],
    }
    # Every partition at 10:22: S2's 30 minutes run on, and a sale at 10:25 could still claim P2.
    before = given_partitions(events).tick(None, at(22)).project(OuterJoinStreams)
    before.then_rows(OuterJoinStreams.payments, [{"sale_id": S1, "status": "matched"}])
    before.then_rows(OuterJoinStreams.effects, [])
    closed = given_partitions(events).tick(None, at(40)).project(OuterJoinStreams)
    closed.then_rows(
        OuterJoinStreams.payments,
        [
            {"sale_id": S1, "status": "matched", "left_time": at(0), "right_time": at(20)},
            {"sale_id": S2, "status": "unmatched", "left_time": at(5), "right_time": None},
            {"sale_id": S3, "status": "right_only", "left_time": None, "right_time": at(25)},
        ],
    )
    effects = sorted(
        (r["sale_id"], r["status"], r["runs"]) for r in closed.rows(OuterJoinStreams.effects)
    )
    print(f"OUTER: effects={len(effects)} runs={sum(r for *_x, r in effects)}")
    assert effects == [(S2, "unmatched", 1), (S3, "right_only", 1)]


def test_a_sale_made_after_an_unclaimed_payment_keeps_its_own_row_and_the_payment_its_trigger():
    # P1 pays S1 at 10:00, before the sale exists (10:10): no sale can claim it once all
    # partitions pass 10:00, whether the sale arrives first or last.
    events = {0: [sale(S1, 10)], 1: [paid(P1, S1, 0)]}
    outcome = given_partitions(events).tick(None, at(60)).project(OuterJoinStreams)
    outcome.then_rows(OuterJoinStreams.payments, [{"sale_id": S1, "status": "unmatched"}])
    assert sorted(r["status"] for r in outcome.rows(OuterJoinStreams.effects)) == [
        "right_only",
        "unmatched",
    ]


def test_every_interleaving_of_an_outer_join_gives_the_same_rows_and_effects():
    events = {
        0: [sale(S1, 0), sale(S2, 5), sale(S3, 50)],
        1: [paid(P1, S1, 20), paid(P2, uuid.UUID(int=9), 25), paid(uuid.UUID(int=10), S3, 40)],
    }
    report = (
        given_partitions(events)
        .tick(None, at(45))
        .tick(None, at(120))
        .all_interleavings(OuterJoinStreams, examples=30)
    )
    print(report.line())
    assert report.differing == 0 and report.interleavings > 5


def test_an_interval_join_refuses_an_unknown_how():
    import pytest
    import sqlalchemy as sa

    from framework.errors import ConfigurationError
    from framework.streaming import IntervalJoin

    with pytest.raises(ConfigurationError, match="how= must be"):
        IntervalJoin(
            "t_bad_how",
            sa.MetaData(),
            left=Sale.Made,
            right=Payment.Received,
            key=("sale_id", sa.Uuid, lambda e: e.originator_id),
            within=timedelta(minutes=5),
            how="full",
        )


def test_a_late_unclaimed_payment_after_the_last_close_still_gets_its_row():
    # P2 (10:20, for a sale nobody made) is recorded after partition 1's tick at 11:40: late,
    # amended. Whether partition 0's tick closes everything before or after it, the row comes.
    given = given_partitions({0: [sale(S1, 0)], 1: [paid(P1, S1, 10)]}).tick(None, at(100))
    given.items[1].append(paid(P2, S3, 20))
    outcome = given.project(OuterJoinStreams)
    outcome.then_rows(
        OuterJoinStreams.payments,
        [{"sale_id": S1, "status": "matched"}, {"sale_id": S3, "status": "right_only"}],
    )
    report = given.all_interleavings(OuterJoinStreams, examples=10)
    assert report.differing == 0
