"""Commands validate untrusted input with one typed error listing every field."""

from __future__ import annotations

import json
from uuid import uuid4

import pytest

from framework.errors import CommandValidationError, UnknownCommandError
from tests.support.bank import Deposit, OpenAccount, build


def test_every_field_error_is_listed_with_its_location() -> None:
    with pytest.raises(CommandValidationError) as caught:
        OpenAccount.parse({"account_id": "not-a-uuid", "owner": {"name": 3}, "extra": True})
    locations = {tuple(e["loc"]) for e in caught.value.errors}
    assert locations == {("account_id",), ("owner", "name"), ("owner", "email"), ("extra",)}
    assert "invalid OpenAccount" in str(caught.value)


@pytest.mark.parametrize("amount", ["NaN", "Infinity", "-1", "0", "1.001", "1e400", "", None, [1]])
def test_bad_amounts_are_rejected(amount: object) -> None:
    with pytest.raises(CommandValidationError):
        Deposit.parse({"account_id": str(uuid4()), "amount": amount})


def test_json_input_is_accepted_and_commands_are_frozen() -> None:
    account = uuid4()
    command = Deposit.parse(json.dumps({"account_id": str(account), "amount": "12.50"}))
    assert command.account_id == account and str(command.amount) == "12.50"
    with pytest.raises(ValueError, match="frozen"):
        command.amount = 1  # type: ignore[misc]


def test_command_type_defaults_to_the_class_name_and_ids_are_unique() -> None:
    assert Deposit.command_type == "Deposit"
    a, b = (Deposit(account_id=uuid4(), amount=1) for _ in range(2))
    assert a.command_id != b.command_id


def test_execute_raw_validates_before_anything_is_written() -> None:
    app = build()
    head = app.store.head()
    with pytest.raises(CommandValidationError):
        app.execute_raw("Deposit", {"account_id": "x", "amount": "y"})
    with pytest.raises(UnknownCommandError, match="known: CloseAccount, Deposit"):
        app.execute_raw("Rob", {})
    assert app.store.head() == head
