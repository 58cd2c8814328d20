"""The CRM's anti-corruption layer and the change model, without a database."""

from __future__ import annotations

from typing import Any

import pytest

from framework.cdc import RowChange, change_command_id
from framework.errors import ConfigurationError
from sample_app import crm
from sample_app.shop.commands import ChangeCustomerAddress, DeactivateCustomer, RegisterCustomer

ROW = {
    "id": 7,
    "full_name": "Ada Lovelace",
    "email": "ada@example.com",
    "street": "Main 1",
    "city": "Berlin",
    "postcode": "10115",
    "country": "DE",
    "active": True,
    "notes": None,
}


def change(op: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> RowChange:
    return RowChange(
        table="crm.customers", op=op, key={"id": 7}, before=before, after=after, position="9:1"
    )  # type: ignore[arg-type]


def translate(c: RowChange) -> list[Any]:
    return list(crm.CrmCustomers.translate(None, c))  # type: ignore[arg-type]


def test_inserts_and_snapshot_rows_register_the_customer() -> None:
    for op in ("insert", "read"):
        [command] = translate(change(op, None, ROW))
        assert isinstance(command, RegisterCustomer)
        assert command.customer_id == crm.customer_id(7) and command.address.city == "Berlin"
    registered, deactivated = translate(change("read", None, {**ROW, "active": False}))
    assert isinstance(registered, RegisterCustomer) and isinstance(deactivated, DeactivateCustomer)


def test_updates_become_relocations_and_deactivations_and_other_columns_nothing() -> None:
    [moved] = translate(change("update", ROW, {**ROW, "city": "Bonn"}))
    assert isinstance(moved, ChangeCustomerAddress) and moved.address.city == "Bonn"
    [closed] = translate(change("update", ROW, {**ROW, "active": False}))
    assert isinstance(closed, DeactivateCustomer)
    assert translate(change("update", ROW, {**ROW, "notes": "VIP", "full_name": "A. L."})) == []
    assert translate(change("update", {**ROW, "active": False}, {**ROW, "active": False})) == []


def test_deletes_deactivate_unless_the_row_was_inactive() -> None:
    [gone] = translate(change("delete", ROW, None))
    assert isinstance(gone, DeactivateCustomer) and gone.reason == "deleted in the CRM"
    assert translate(change("delete", {**ROW, "active": False}, None)) == []


def test_rows_the_shop_refuses_raise_validation_errors() -> None:
    with pytest.raises(ValueError, match="email"):
        translate(change("insert", None, {**ROW, "email": "ada(at)example.com"}))
    with pytest.raises(ValueError, match="country"):
        translate(change("insert", None, {**ROW, "country": "XX"}))


def test_command_ids_depend_on_feed_table_key_position_and_index_only() -> None:
    a = change_command_id("crm", "crm.customers", {"id": 7}, "9:1", 0)
    assert a == change_command_id("crm", "crm.customers", {"id": 7}, "9:1", 0)
    others = {
        change_command_id("crm2", "crm.customers", {"id": 7}, "9:1", 0),
        change_command_id("crm", "crm.other", {"id": 7}, "9:1", 0),
        change_command_id("crm", "crm.customers", {"id": 8}, "9:1", 0),
        change_command_id("crm", "crm.customers", {"id": 7}, "9:2", 0),
        change_command_id("crm", "crm.customers", {"id": 7}, "9:1", 1),
    }
    assert a not in others and len(others) == 5


def test_a_change_survives_its_dead_letter_round_trip() -> None:
    c = change("update", ROW, {**ROW, "city": "Bonn"})
    back = RowChange.from_json(c.to_json())
    assert back == c and back.changed("city") and not back.changed("street")


def test_the_sample_feed_names_the_setting_that_selects_the_crm_database(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEL_CRM_DATABASE_URL", f"sqlite:///{tmp_path}/crm.db")
    monkeypatch.delenv("KEEL_CRM_DEBEZIUM_TOPIC", raising=False)
    with pytest.raises(ConfigurationError) as refused:
        crm.feed(engine=None)
    message = str(refused.value)
    assert f"sqlite:///{tmp_path}/crm.db is sqlite" in message
    assert "KEEL_CRM_DATABASE_URL selects the CRM database" in message
    assert "is not set" not in message  # it is set: only the fallback says so
    monkeypatch.delenv("KEEL_CRM_DATABASE_URL")
    monkeypatch.delenv("KEEL_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/read_models.db")
    with pytest.raises(ConfigurationError, match="not set, so DATABASE_URL's database was used"):
        crm.feed(engine=None)
