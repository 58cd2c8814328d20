"""A small domain for the framework's own tests: accounts and transfers."""

from __future__ import annotations

from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field

from framework.application import Application, UnitOfWork
from framework.commands import Command
from framework.domain import Aggregate, event
from framework.errors import DomainError
from framework.persistence import EventStore


class InsufficientFunds(DomainError):
    """A withdrawal or transfer would overdraw the account."""


class AccountClosed(DomainError):
    """The account is closed."""


class Status(Enum):
    OPEN = "open"
    CLOSED = "closed"


class Owner(BaseModel):
    name: str
    email: str


class Account(Aggregate):
    owner: Owner
    balance: Decimal
    status: Status

    @event("Opened")
    def __init__(self, id: UUID, owner: Owner) -> None:
        self.owner = owner
        self.balance = Decimal(0)
        self.status = Status.OPEN

    def deposit(self, amount: Decimal) -> None:
        self._check_open()
        self._deposited(amount)

    def withdraw(self, amount: Decimal) -> None:
        self._check_open()
        if amount > self.balance:
            raise InsufficientFunds(f"balance {self.balance} is less than {amount}")
        self._withdrawn(amount)

    def close(self) -> None:
        self._check_open()
        self._closed()

    def _check_open(self) -> None:
        if self.status is not Status.OPEN:
            raise AccountClosed(f"account {self.id} is closed")

    @event("Deposited")
    def _deposited(self, amount: Decimal) -> None:
        self.balance += amount

    @event("Withdrawn")
    def _withdrawn(self, amount: Decimal) -> None:
        self.balance -= amount

    @event("Closed")
    def _closed(self) -> None:
        self.status = Status.CLOSED


class OpenAccount(Command):
    account_id: UUID
    owner: Owner


class Deposit(Command):
    account_id: UUID
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2)


class Withdraw(Command):
    account_id: UUID
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2)


class Transfer(Command):
    source: UUID
    target: UUID
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2)


class CloseAccount(Command):
    account_id: UUID


def build(store: str | EventStore = "memory://", name: str = "bank", **options: Any) -> Application:
    """The bank application on ``store``."""
    app = Application(name, store, **options)

    @app.handles(OpenAccount)
    def open_account(command: OpenAccount, uow: UnitOfWork) -> None:
        uow.add(Account(id=command.account_id, owner=command.owner))

    @app.handles(Deposit)
    def deposit(command: Deposit, uow: UnitOfWork) -> None:
        uow.get(Account, command.account_id).deposit(command.amount)

    @app.handles(Withdraw)
    def withdraw(command: Withdraw, uow: UnitOfWork) -> None:
        uow.get(Account, command.account_id).withdraw(command.amount)

    @app.handles(Transfer)
    def transfer(command: Transfer, uow: UnitOfWork) -> None:
        uow.get(Account, command.source).withdraw(command.amount)
        uow.get(Account, command.target).deposit(command.amount)

    @app.handles(CloseAccount)
    def close(command: CloseAccount, uow: UnitOfWork) -> None:
        uow.get(Account, command.account_id).close()

    return app


def from_env() -> Application:
    """The bank on ``$BANK_STORE`` named ``$BANK_NAME`` (for writer processes started with
    ``python -m framework.writer run tests.support.bank:from_env``)."""
    import os

    return build(os.environ["BANK_STORE"], name=os.environ["BANK_NAME"])
