"""The benchmark's domain: one kind of account, written twice.

``Account`` is a keel aggregate driven by commands through :class:`framework.application.
Application`; ``PeerAccount`` is the same aggregate (same fields, same events, same invariant) on
the eventsourcing library's own ``Aggregate`` and ``Application``, the peer of the command
benchmarks. Both check the same pydantic command before they act, so validation costs the same.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.application import Application as LibraryApplication
from eventsourcing.domain import Aggregate as LibraryAggregate
from eventsourcing.domain import event as library_event
from pydantic import Field

from framework.application import Application, UnitOfWork
from framework.codec import codec
from framework.commands import Command, Metadata
from framework.domain import Aggregate, event
from framework.errors import DomainError
from framework.persistence import EventStore, NewEvent

__all__ = [
    "Account",
    "Deposit",
    "OpenAccount",
    "PeerAccount",
    "build_app",
    "build_peer",
    "history",
]


class AccountClosed(DomainError):
    """The account is closed."""


class Account(Aggregate):
    type_name = "BenchAccount"  # distinct from the test suite's bank "Account"
    # Made by the @event decorators below; declared so that type checkers see them.
    Opened: ClassVar[type[Aggregate.Event]]
    Deposited: ClassVar[type[Aggregate.Event]]

    owner: str
    email: str
    balance: Decimal
    status: str

    @event("Opened")
    def __init__(self, id: UUID, owner: str, email: str) -> None:
        self.owner = owner
        self.email = email
        self.balance = Decimal(0)
        self.status = "open"

    def deposit(self, amount: Decimal) -> None:
        if self.status != "open":
            raise AccountClosed(f"account {self.id} is closed")
        self._deposited(amount)

    @event("Deposited")
    def _deposited(self, amount: Decimal) -> None:
        self.balance += amount


class OpenAccount(Command):
    command_type = "BenchOpenAccount"
    account_id: UUID
    owner: str = Field(max_length=200)
    email: str = Field(max_length=200)


class Deposit(Command):
    command_type = "BenchDeposit"
    account_id: UUID
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2)


def build_app(store: str | EventStore, name: str, **options: Any) -> Application:
    """The keel application on ``store``."""
    app = Application(name, store, **options)

    @app.handles(OpenAccount)
    def open_account(command: OpenAccount, uow: UnitOfWork) -> None:
        uow.add(Account(id=command.account_id, owner=command.owner, email=command.email))

    @app.handles(Deposit)
    def deposit(command: Deposit, uow: UnitOfWork) -> None:
        uow.get(Account, command.account_id).deposit(command.amount)

    return app


# -- the peer: the eventsourcing library on its own ---------------------------------------------


class PeerAccount(LibraryAggregate):
    @library_event("Opened")
    def __init__(self, id: UUID, owner: str, email: str) -> None:
        self.owner = owner
        self.email = email
        self.balance = Decimal(0)
        self.status = "open"

    def deposit(self, amount: Decimal) -> None:
        if self.status != "open":
            raise AccountClosed(f"account {self.id} is closed")
        self._deposited(amount)

    @library_event("Deposited")
    def _deposited(self, amount: Decimal) -> None:
        self.balance += amount


class PeerBank(LibraryApplication[UUID]):
    """The eventsourcing library's Application, configured only through its environment."""

    def open_account(self, command: OpenAccount) -> None:
        self.save(PeerAccount(id=command.account_id, owner=command.owner, email=command.email))

    def deposit(self, command: Deposit) -> None:
        account: PeerAccount = self.repository.get(command.account_id)
        account.deposit(command.amount)
        self.save(account)


def build_peer(name: str, env: dict[str, str]) -> PeerBank:
    """A PeerBank whose tables are named after ``name`` (``<name>_events``)."""
    cls = type(name, (PeerBank,), {"name": name})
    app: PeerBank = cls(env=env)
    return app


# -- bulk histories -----------------------------------------------------------------------------


def history(
    aggregate_id: UUID, events: int, *, metadata: Metadata | None = None
) -> tuple[Account, list[NewEvent]]:
    """An account with ``events`` events (opened, then deposits of 10.00) and the encoded
    events the application would have appended for it."""
    meta = metadata or Metadata(command_id=uuid.uuid4(), command_type="BenchDeposit", user="bench")
    account = Account(id=aggregate_id, owner="Ada Lovelace", email="ada@example.org")
    for _ in range(events - 1):
        account.deposit(Decimal("10.00"))
    return account, [codec.encode(e, meta) for e in account.collect_events()]


def more_deposits(account: Account, events: int) -> list[NewEvent]:
    """``events`` more deposits on ``account``, encoded."""
    meta = Metadata(command_id=uuid.uuid4(), command_type="BenchDeposit", user="bench")
    for _ in range(events):
        account.deposit(Decimal("10.00"))
    return [codec.encode(e, meta) for e in account.collect_events()]


def sample_events(count: int) -> list[NewEvent]:
    """``count`` events shaped like a deposit command's: each deposit plus its command record."""
    out: list[NewEvent] = []
    meta = Metadata(command_id=uuid.uuid4(), command_type="BenchDeposit", user="bench")
    while len(out) < count:
        out.extend(history(uuid.uuid4(), 20, metadata=meta)[1])
    return out[:count]
