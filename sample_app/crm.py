"""The sample's legacy system: a "CRM" whose ``crm.customers`` table becomes shop commands.

The CRM knows nothing of the shop. Its rows are keyed by an integer id, carry the address in
flat columns and mark a closed account with ``active = false`` (or delete the row). The
anti-corruption layer (:class:`CrmCustomers`) maps them onto the shop's language:

========================================  ===============================================
CRM change                                shop command
========================================  ===============================================
insert (or a row of the initial snapshot) ``RegisterCustomer``
update of street/city/postcode/country    ``ChangeCustomerAddress`` (the relocation)
update of ``active`` to false             ``DeactivateCustomer``
delete                                    ``DeactivateCustomer`` (reason: deleted in the CRM)
any other update (name, e-mail, notes)    nothing: the shop has no command for it
========================================  ===============================================

A row the shop's rules refuse (an invalid e-mail, an unknown country) is parked in the dead
letters, with the later changes of that row behind it; fix the row in the CRM or the
translation, then ``python -m framework.cdc redrive sample_app.crm:feed``.

Environment for :func:`feed`: ``KEEL_CRM_DATABASE_URL`` (the CRM's PostgreSQL; default
``DATABASE_URL``), the shop's store as the shop reads it (``KEEL_SHOP_EVENT_STORE`` ...) and
``DATABASE_URL`` for the feed's cursor. With ``KEEL_CRM_DEBEZIUM_TOPIC`` set, the feed reads
that Debezium topic (on ``KEEL_KAFKA_BOOTSTRAP_SERVERS``) instead of the trigger changelog.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from framework.application import Application
from framework.cdc import (
    ChangeFeed,
    ChangeSource,
    DebeziumTopicSource,
    PostgresTriggerSource,
    RowChange,
)
from framework.commands import Command
from framework.errors import ConfigurationError
from framework.persistence import store_url_from_env
from framework.settings import database_url
from sample_app.shop.application import NAME, build
from sample_app.shop.commands import ChangeCustomerAddress, DeactivateCustomer, RegisterCustomer
from sample_app.shop.domain import Address

__all__ = ["TABLE", "CrmCustomers", "create_crm_schema", "crm_rows", "customer_id", "feed"]

TABLE = "crm.customers"

CRM_DDL = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.{table} (
    id integer PRIMARY KEY,
    full_name text NOT NULL,
    email text NOT NULL,
    street text NOT NULL,
    city text NOT NULL,
    postcode text NOT NULL DEFAULT '',
    country text NOT NULL,
    active boolean NOT NULL DEFAULT true,
    notes text
);
"""

_CRM = uuid5(NAMESPACE_URL, "keel:sample:crm.customers")


def create_crm_schema(engine: Engine, table: str = TABLE) -> None:
    """Create the legacy table (the CRM's own DDL; the sample and tests use it)."""
    schema, name = table.split(".")
    with engine.begin() as conn:
        conn.exec_driver_sql(CRM_DDL.format(schema=schema, table=name))


def customer_id(crm_id: int | str) -> UUID:
    """The shop's customer id of a CRM customer (stable: the same CRM id, the same customer)."""
    return uuid5(_CRM, str(crm_id))


def _address(row: RowChange) -> Address:
    r = row.row
    return Address(
        street=r["street"], city=r["city"], postcode=r.get("postcode") or "", country=r["country"]
    )


class CrmCustomers(ChangeFeed):
    """``crm.customers`` -> the shop's customer commands."""

    name = "crm-customers"

    def translate(self, change: RowChange) -> Sequence[Command]:
        cid = customer_id(change.key["id"])
        row = change.row
        if change.op in ("insert", "read"):
            commands: list[Command] = [
                RegisterCustomer(
                    customer_id=cid,
                    name=row["full_name"],
                    email=row["email"],
                    address=_address(change),
                )
            ]
            if row.get("active") is False:
                commands.append(DeactivateCustomer(customer_id=cid, reason="inactive in the CRM"))
            return commands
        if change.op == "delete":
            if change.before is not None and change.before.get("active") is False:
                return []  # deactivated already
            return [DeactivateCustomer(customer_id=cid, reason="deleted in the CRM")]
        commands = []
        if change.changed("street", "city", "postcode", "country"):
            commands.append(ChangeCustomerAddress(customer_id=cid, address=_address(change)))
        was_active = change.before is None or change.before.get("active") is not False
        if was_active and row.get("active") is False:
            commands.append(DeactivateCustomer(customer_id=cid, reason="deactivated in the CRM"))
        return commands


def feed(app: Application | None = None, engine: Engine | None = None) -> CrmCustomers:
    """The CRM feed from the environment (see the module docstring; ``KEEL_CRM_TABLE`` and
    ``KEEL_CRM_FEED`` rename the table and the feed, ``KEEL_CRM_BATCH_SIZE`` sets the changes
    per cursor move, 200)."""
    source: ChangeSource
    table = os.environ.get("KEEL_CRM_TABLE") or TABLE
    topic = os.environ.get("KEEL_CRM_DEBEZIUM_TOPIC")
    if topic:
        source = DebeziumTopicSource(
            os.environ.get("KEEL_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092"), topic, ["id"]
        )
    else:
        crm_url = os.environ.get("KEEL_CRM_DATABASE_URL")
        try:
            source = PostgresTriggerSource(crm_url or database_url(None), table, ["id"])
        except ConfigurationError as error:  # the source cannot know our settings' names
            unset = "" if crm_url else "; it is not set, so DATABASE_URL's database was used"
            raise ConfigurationError(
                f"{error}. KEEL_CRM_DATABASE_URL selects the CRM database (KEEL_CRM_TABLE its "
                f"table){unset}"
            ) from error
    shop = app if app is not None else build(store_url_from_env(NAME))
    return CrmCustomers(
        source,
        shop,
        engine,
        name=os.environ.get("KEEL_CRM_FEED") or None,
        batch_size=int(os.environ.get("KEEL_CRM_BATCH_SIZE") or 200),
    )


def crm_rows(engine: Engine, table: str = TABLE) -> list[dict[str, Any]]:
    """Every CRM row (tests compare the shop against it)."""
    schema, name = table.split(".")
    query = sa.text(f'SELECT * FROM "{schema}"."{name}" ORDER BY id')
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]
