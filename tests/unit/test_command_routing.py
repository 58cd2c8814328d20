"""Routing keys, idempotency keys and the wire format of commands and results (no Kafka)."""

from __future__ import annotations

import json
import time
import uuid
from decimal import Decimal

import pytest
from pydantic import Field

from framework.application import CommandResult
from framework.backends.kafka_commands import (
    Answer,
    decode_command,
    decode_result,
    encode_command,
    encode_result,
    error_from_wire,
    error_to_wire,
)
from framework.backends.memory import open_store as open_memory
from framework.commands import Command, Metadata
from framework.errors import (
    CommandValidationError,
    IdempotencyKeyReusedError,
    RemoteCommandError,
    StreamGapError,
    UnknownCommandError,
)
from tests.support.bank import (
    Account,
    Deposit,
    InsufficientFunds,
    OpenAccount,
    Owner,
    Transfer,
    Withdraw,
    build,
)

OWNER = Owner(name="Ann", email="ann@example.com")


class Rename(Command):
    title: str
    item_id: uuid.UUID


class Restock(Command):
    route_by = "item_id"
    warehouse_id: uuid.UUID
    item_id: uuid.UUID
    quantity: int = Field(gt=0)


class Ping(Command):
    text: str = ""


def test_a_command_routes_by_its_first_uuid_field_unless_it_names_one() -> None:
    item, warehouse = uuid.uuid4(), uuid.uuid4()
    assert Rename(title="x", item_id=item).routing_id() == item
    assert Restock(warehouse_id=warehouse, item_id=item, quantity=1).routing_id() == item
    assert Transfer(source=item, target=warehouse, amount=Decimal(1)).routing_id() == item
    ping = Ping()
    assert ping.routing_id() == ping.command_id  # no aggregate id: routed by its own id


def test_route_by_must_name_a_field() -> None:
    with pytest.raises(TypeError, match="not one of its fields"):

        class Broken(Command):
            route_by = "order_id"
            item_id: uuid.UUID


def test_the_fingerprint_covers_type_and_payload_but_not_the_id() -> None:
    account = uuid.uuid4()
    one = Deposit(account_id=account, amount=Decimal("1.00"))
    same = Deposit(account_id=account, amount=Decimal("1.00"))
    assert one.fingerprint() == same.fingerprint()
    assert one.fingerprint() != Deposit(account_id=account, amount=Decimal("2.00")).fingerprint()
    assert one.fingerprint() != Withdraw(account_id=account, amount=Decimal("1.00")).fingerprint()


@pytest.mark.parametrize("store", ["memory://", "sqlite"])
def test_a_reused_command_id_with_another_payload_is_refused(store: str, tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/events.db" if store == "sqlite" else store
    app = build(url)
    account = uuid.uuid4()
    app.execute(OpenAccount(account_id=account, owner=OWNER))
    first = Deposit(account_id=account, amount=Decimal("5.00"))
    app.execute(first)
    reused = Deposit(command_id=first.command_id, account_id=account, amount=Decimal("9.00"))
    with pytest.raises(IdempotencyKeyReusedError, match="another payload"):
        app.execute(reused)
    other_type = Withdraw(command_id=first.command_id, account_id=account, amount=Decimal(1))
    with pytest.raises(IdempotencyKeyReusedError, match="as a Deposit, not a Withdraw;"):
        app.execute(other_type)
    assert app.load(Account, account).balance == Decimal("5.00")
    assert len(app.store.read(account)) == 2


def test_a_replayed_command_on_sqlite_returns_positions_to_wait_for(tmp_path) -> None:
    app = build(f"sqlite:///{tmp_path}/events.db")
    account = uuid.uuid4()
    app.execute(OpenAccount(account_id=account, owner=OWNER))
    command = Deposit(account_id=account, amount=Decimal("1.00"))
    first = app.execute(command)
    again = app.execute(command)
    assert again.replayed and again.versions == first.versions
    assert again.positions and all(again.positions[p] >= o for p, o in first.positions.items())


def test_commands_cross_the_wire_with_their_metadata() -> None:
    app = build("memory://")
    command = Deposit(account_id=uuid.uuid4(), amount=Decimal("12.34"))
    metadata = Metadata(command_id=command.command_id, user="alice", correlation_id=uuid.uuid4())
    expires = time.time() + 60
    value = encode_command(
        command, metadata, reply_partition=3, expires_at=expires, reply_token="t-1"
    )
    envelope = decode_command(value, app)
    assert envelope.command == command and envelope.metadata == metadata
    assert envelope.reply_partition == 3 and envelope.reply_token == "t-1"
    assert not envelope.expired()
    assert envelope.expired(now=expires + 1)


def test_undecodable_or_unknown_commands_are_typed_errors() -> None:
    app = build("memory://")
    with pytest.raises(CommandValidationError):
        decode_command(b"\xff not json", app)
    foreign = encode_command(Ping(), Metadata(), reply_partition=None, expires_at=time.time())
    with pytest.raises(UnknownCommandError, match="Ping"):
        decode_command(foreign, app)
    bad = json.loads(
        encode_command(
            Deposit(account_id=uuid.uuid4(), amount=Decimal(1)),
            Metadata(),
            reply_partition=None,
            expires_at=time.time(),
        )
    )
    bad["command"]["amount"] = "-5"
    with pytest.raises(CommandValidationError, match="amount"):
        decode_command(json.dumps(bad).encode(), app)


def test_results_cross_the_wire() -> None:
    command_id, account = uuid.uuid4(), uuid.uuid4()
    result = CommandResult(command_id, account, {account: 4}, {1: 17, 2: 9}, replayed=True)
    decoded = decode_result(encode_result(command_id, result, "t-1"))
    assert decoded == Answer(command_id, result, "t-1")
    assert decoded.answers("t-1") and not decoded.answers("t-2")  # another send's answer
    untokened = decode_result(encode_result(command_id, result))  # a writer before tokens
    assert untokened is not None and untokened.answers("t-2")
    assert decode_result(b"garbage") is None
    assert decode_result(b'{"command_id": "nope"}') is None


def test_errors_cross_the_wire_by_type_and_message() -> None:
    domain = error_from_wire(error_to_wire(InsufficientFunds("balance 0.00 is less than 1")))
    assert type(domain) is InsufficientFunds and str(domain) == "balance 0.00 is less than 1"
    invalid = CommandValidationError("Deposit", [{"loc": ["amount"], "msg": "too small"}])
    back = error_from_wire(error_to_wire(invalid))
    assert isinstance(back, CommandValidationError)
    assert back.errors == invalid.errors and back.command_type == "Deposit"
    unknown = error_from_wire(error_to_wire(KeyError("total")))
    assert isinstance(unknown, RemoteCommandError) and unknown.remote_type == "builtins.KeyError"
    assert "KeyError" in str(unknown)


def test_a_version_gap_is_a_typed_error_naming_the_aggregate() -> None:
    store = open_memory(name="bank")
    full_read = store.read

    def read_with_a_gap(aggregate_id, **kwargs):  # type: ignore[no-untyped-def]
        # As a damaged store would serve it: version 2 is missing.
        return [e for e in full_read(aggregate_id, **kwargs) if e.version != 2]

    app = build(store, snapshot_every=None)
    account = uuid.uuid4()
    app.execute(OpenAccount(account_id=account, owner=OWNER))
    app.execute(Deposit(account_id=account, amount=Decimal(1)))
    app.execute(Deposit(account_id=account, amount=Decimal(1)))
    store.read = read_with_a_gap  # type: ignore[method-assign]
    with pytest.raises(StreamGapError, match=f"{account} has version 3 after version 1"):
        app.load(Account, account)
