"""The given / when / then helpers pass what is right and explain what is wrong."""

from __future__ import annotations

from decimal import Decimal
from uuid import uuid4

import pytest

from framework.application import UnitOfWork
from framework.testing import ev, given, scenario
from tests.support.bank import (
    Account,
    AccountClosed,
    Deposit,
    InsufficientFunds,
    OpenAccount,
    Owner,
    Transfer,
    Withdraw,
    build,
)

OWNER = Owner(name="Ann", email="ann@example.com")
A, B = uuid4(), uuid4()
bank = scenario(build())


def test_given_when_then_through_the_application() -> None:
    (
        bank.given(ev(Account.Opened, owner=OWNER), id=A)
        .when(Deposit(account_id=A, amount=Decimal("2.50")))
        .then(ev(Account.Deposited, amount=Decimal("2.50")))
        .then_state(balance=Decimal("2.50"))
    )


def test_creation_from_no_history() -> None:
    bank.given().when(OpenAccount(account_id=A, owner=OWNER)).then(
        ev(Account.Opened, owner=OWNER, id=A)
    ).then_state(lambda account: account.balance == 0)


def test_multi_aggregate_commands() -> None:
    bank.given(
        ev(Account.Opened, owner=OWNER, id=A),
        ev(Account.Deposited, amount=Decimal(10), id=A),
        ev(Account.Opened, owner=OWNER, id=B),
    ).when(Transfer(source=A, target=B, amount=Decimal(4))).then(
        ev(Account.Withdrawn, amount=Decimal(4), id=A),
        ev(Account.Deposited, amount=Decimal(4), id=B),
    )


def test_then_raises_checks_type_and_message() -> None:
    outcome = bank.given(ev(Account.Opened, owner=OWNER), id=A).when(
        Withdraw(account_id=A, amount=Decimal(1))
    )
    outcome.then_raises(InsufficientFunds, match="less than 1")
    with pytest.raises(AssertionError, match="expected AccountClosed, got InsufficientFunds"):
        outcome.then_raises(AccountClosed)
    with pytest.raises(AssertionError, match="does not match"):
        outcome.then_raises(InsufficientFunds, match="overdraft")
    with pytest.raises(AssertionError, match="raised InsufficientFunds"):
        outcome.then(ev(Account.Withdrawn))


def test_aggregate_only_scenarios() -> None:
    given(ev(Account.Opened, owner=OWNER)).when(lambda account: account.close()).then(
        ev(Account.Closed)
    )
    given(ev(Account.Opened, owner=OWNER), ev(Account.Closed)).when(
        lambda account: account.close()
    ).then_raises(AccountClosed)
    given(ev(Account.Opened, owner=OWNER)).when(lambda account: None).then_nothing()


def test_a_wrong_expectation_shows_a_readable_diff() -> None:
    outcome = bank.given(ev(Account.Opened, owner=OWNER), id=A).when(
        Deposit(account_id=A, amount=Decimal(5))
    )
    with pytest.raises(AssertionError) as caught:
        outcome.then(ev(Account.Deposited, amount=Decimal(6)))
    message = str(caught.value)
    assert "-Account.Deposited(amount=Decimal('6'))" in message
    assert "+Account.Deposited(amount=Decimal('5'))" in message
    with pytest.raises(AssertionError, match=r"balance: expected Decimal\(.1.\)"):
        outcome.then_state(balance=Decimal(1))
    with pytest.raises(AssertionError, match=r"Account\.Deposited"):
        outcome.then_nothing()


def test_a_change_outside_an_event_method_is_caught_by_the_replay_check() -> None:
    def sneaky(account: Account) -> None:
        account.balance = Decimal(99)  # not recorded as an event: lost on reload

    with pytest.raises(AssertionError, match="replayed from its events differs") as caught:
        given(ev(Account.Opened, owner=OWNER)).when(sneaky)
    message = str(caught.value)
    assert "'balance': Decimal('99')" in message and "'balance': Decimal('0')" in message


def test_given_events_must_be_encodable() -> None:
    with pytest.raises(TypeError):
        given(ev(Account.Opened, owner=OWNER, unexpected=1))


class LeakyTransfer(Transfer):
    pass


class LookThenDeposit(Deposit):
    pass


def test_the_replay_check_covers_an_aggregate_that_recorded_no_event() -> None:
    """A transfer that records the debit but edits the target's balance directly: the target
    has no pending event, and its lost deposit is caught all the same."""
    app = build()

    @app.handles(LeakyTransfer)
    def leaky_transfer(command: LeakyTransfer, uow: UnitOfWork) -> None:
        uow.get(Account, command.source).withdraw(command.amount)
        target = uow.get(Account, command.target)
        target.balance += command.amount  # no event: the money vanishes on reload

    with pytest.raises(AssertionError, match="replayed from its events differs") as caught:
        scenario(app).given(
            ev(Account.Opened, owner=OWNER, id=A),
            ev(Account.Deposited, amount=Decimal(10), id=A),
            ev(Account.Opened, owner=OWNER, id=B),
        ).when(LeakyTransfer(source=A, target=B, amount=Decimal(4)))
    assert str(B) in str(caught.value) and "Decimal('4')" in str(caught.value)


def test_then_state_looks_at_the_first_aggregate_the_command_changed() -> None:
    app = build()

    @app.handles(LookThenDeposit)
    def deposit_after_a_look(command: LookThenDeposit, uow: UnitOfWork) -> None:
        uow.get(Account, B)  # loaded, left unchanged
        uow.get(Account, command.account_id).deposit(command.amount)

    scenario(app).given(
        ev(Account.Opened, owner=OWNER, id=A), ev(Account.Opened, owner=OWNER, id=B)
    ).when(LookThenDeposit(account_id=A, amount=Decimal(3))).then_state(balance=Decimal(3))
