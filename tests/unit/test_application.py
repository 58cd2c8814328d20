"""The application service: routing, errors that write nothing, retries, metadata."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from uuid import uuid4

import pytest

from framework.application import Application, UnitOfWork
from framework.commands import Command
from framework.errors import (
    AggregateExistsError,
    AggregateNotFoundError,
    ConcurrencyError,
    ConfigurationError,
    ConflictRetriesExhaustedError,
    FrameworkError,
    UnknownCommandError,
)
from framework.persistence import EventStore, NewEvent, Positions
from tests.support.bank import (
    Account,
    CloseAccount,
    Deposit,
    InsufficientFunds,
    OpenAccount,
    Owner,
    Transfer,
    Withdraw,
    build,
)

OWNER = Owner(name="Ann", email="ann@example.com")


def opened(app: Application, balance: int = 0) -> object:
    account = uuid4()
    app.execute(OpenAccount(account_id=account, owner=OWNER))
    if balance:
        app.execute(Deposit(account_id=account, amount=Decimal(balance)))
    return account


def test_metadata_records_user_and_correlation() -> None:
    app = build()
    account = uuid4()
    correlation = uuid4()
    command = OpenAccount(account_id=account, owner=OWNER)
    app.execute(command, user="alice", correlation_id=correlation)
    meta = app.history(account)[0].metadata
    assert (meta.user, meta.correlation_id, meta.command_id, meta.command_type) == (
        "alice",
        correlation,
        command.command_id,
        "OpenAccount",
    )
    assert meta.causation_id == command.command_id


def test_domain_errors_write_nothing() -> None:
    app = build()
    account = opened(app, balance=5)
    head = app.store.head()
    with pytest.raises(InsufficientFunds, match="less than 10"):
        app.execute(Withdraw(account_id=account, amount=Decimal(10)))
    assert app.store.head() == head


def test_a_failed_transfer_leaves_both_accounts_untouched() -> None:
    app = build()
    a, b = opened(app, balance=5), opened(app)
    app.execute(CloseAccount(account_id=b))
    head = app.store.head()
    with pytest.raises(FrameworkError, match="closed"):
        app.execute(Transfer(source=a, target=b, amount=Decimal(1)))
    assert app.store.head() == head
    assert app.load(Account, a).balance == 5


def test_creating_an_existing_aggregate_is_a_typed_error() -> None:
    app = build()
    account = opened(app)
    with pytest.raises(AggregateExistsError, match=str(account)):
        app.execute(OpenAccount(account_id=account, owner=OWNER))


def test_unknown_aggregates_and_wrong_types_are_not_found() -> None:
    app = build()
    with pytest.raises(AggregateNotFoundError):
        app.execute(Deposit(account_id=uuid4(), amount=Decimal(1)))

    class Other(Command):
        pass

    assert isinstance(AggregateNotFoundError("x"), LookupError)
    with pytest.raises(UnknownCommandError, match="Other"):
        app.execute(Other())


def test_a_handler_can_only_be_registered_once() -> None:
    app = build()
    with pytest.raises(ConfigurationError):
        app.handles(Deposit)(lambda command, uow: None)


class RacingStore(EventStore):
    """Wraps a store; before each of the first ``races`` appends, a rival writer commits."""

    def __init__(self, inner: EventStore, races: int, rival: Callable[[], object]) -> None:
        self.inner, self.races, self.rival, self.name = inner, races, rival, inner.name
        self.appends = 0

    @property
    def partitions(self) -> int:
        return self.inner.partitions

    def append(self, events: list[NewEvent]) -> Positions:  # type: ignore[override]
        self.appends += 1
        if self.races:
            self.races -= 1
            self.rival()
        return self.inner.append(events)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    read = property(lambda self: self.inner.read)  # type: ignore[assignment]
    read_partition = property(lambda self: self.inner.read_partition)  # type: ignore[assignment]
    head = property(lambda self: self.inner.head)  # type: ignore[assignment]
    save_snapshot = property(lambda self: self.inner.save_snapshot)  # type: ignore[assignment]
    latest_snapshot = property(lambda self: self.inner.latest_snapshot)  # type: ignore[assignment]
    feed = property(lambda self: self.inner.feed)  # type: ignore[assignment]


def test_conflicts_are_retried_on_fresh_state() -> None:
    base = build()
    account = opened(base, balance=1)
    racing = RacingStore(
        base.store, 2, lambda: base.execute(Deposit(account_id=account, amount=Decimal(1)))
    )
    app = base.using(racing)
    result = app.execute(Deposit(account_id=account, amount=Decimal(1)))
    assert racing.appends == 3
    # Two racing deposits landed first; ours was decided again on top of them.
    assert result.versions[account] == 5
    assert app.load(Account, account).balance == 4


def test_retries_are_bounded_and_the_last_conflict_is_typed() -> None:
    base = build()
    account = opened(base)
    rival = lambda: base.execute(Deposit(account_id=account, amount=Decimal(1)))  # noqa: E731
    app = base.using(RacingStore(base.store, 100, rival))
    app.max_conflict_retries = 2
    command = Deposit(account_id=account, amount=Decimal(1))
    with pytest.raises(ConflictRetriesExhaustedError, match="lost 3 races") as caught:
        app.execute(command)
    assert isinstance(caught.value, ConcurrencyError)
    assert command.command_id not in {h.metadata.command_id for h in app.history(account)}


def test_a_command_that_changes_nothing_is_still_idempotent() -> None:
    app = build()

    class Noop(Command):
        pass

    calls = []

    @app.handles(Noop)
    def noop(command: Noop, uow: UnitOfWork) -> None:
        calls.append(command)

    command = Noop()
    first, second = app.execute(command), app.execute(command)
    assert first.versions == {} and second.replayed and len(calls) == 1


def test_same_command_from_many_threads_runs_once() -> None:
    app = build()
    account = opened(app)
    command = Deposit(account_id=account, amount=Decimal(7))
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(app.execute(command))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert sum(not r.replayed for r in results) == 1
    assert app.load(Account, account).balance == 7


def test_state_without_json_form_turns_snapshots_off_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from framework.domain import Aggregate, event

    class Loose(Aggregate):  # `tags` is not annotated, so it decodes as a list, not a set
        @event("Made")
        def __init__(self, id: object) -> None:
            self.tags = {"a"}

        @event("Touched")
        def touch(self) -> None:
            pass

    class Make(Command):
        n: int = 0

    app = Application("loose", "memory://", snapshot_every=2)
    ids: list[object] = []

    @app.handles(Make)
    def make(command: Make, uow: UnitOfWork) -> None:
        if not ids:
            ids.append(uuid4())
            uow.add(Loose(id=ids[0]))
        else:
            uow.get(Loose, ids[0]).touch()

    for n in range(4):
        app.execute(Make(n=n))
    assert app.store.latest_snapshot(ids[0]) is None  # type: ignore[arg-type]
    assert "snapshots of Loose are off" in caplog.text


def test_the_store_comes_from_the_environment_with_a_per_app_prefix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    from framework.persistence import store_url_from_env

    assert store_url_from_env("shop", {}) == "sqlite:///var/shop-events.db"
    assert store_url_from_env("shop", {"KEEL_EVENT_STORE": "memory://"}) == "memory://"
    both = {"KEEL_EVENT_STORE": "memory://", "KEEL_SHOP_EVENT_STORE": "kafka://h:9092"}
    assert store_url_from_env("shop", both) == "kafka://h:9092"
    monkeypatch.setenv("KEEL_BANK_EVENT_STORE", f"sqlite:///{tmp_path}/bank.db")
    app = Application("bank")
    assert app.store.read(uuid4()) == []
    app.close()


def test_an_unknown_store_url_says_which_are_known() -> None:
    with pytest.raises(ConfigurationError, match=r"kafka://.*memory://"):
        Application("x", "redis://localhost")
