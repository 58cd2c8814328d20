"""Event catalogues (framework.catalogue): generated from the event classes, published in
docs/catalogue, real stored records validate against them, and a public event's schema cannot
change without a new class version."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import jsonschema
import pytest

from framework.catalogue import aggregates_in, asyncapi, check_stable, json_schema, main
from framework.codec import codec
from framework.commands import Metadata
from framework.domain import Aggregate, event
from framework.errors import ConfigurationError
from sample_app.payments.domain import OrderPayment
from sample_app.shop.domain import Address, Customer, Order, OrderLine

DOCS = Path(__file__).resolve().parents[2] / "docs" / "catalogue"


@pytest.mark.parametrize("app", ["shop", "payments"])
def test_the_published_catalogues_are_current(app: str) -> None:
    aggregates = aggregates_in(f"sample_app.{app}.domain")
    for name, document in (
        (f"{app}.schema.json", json_schema(app, aggregates)),
        (f"{app}.asyncapi.json", asyncapi(app, aggregates)),
    ):
        published = json.loads((DOCS / name).read_text())
        assert published == json.loads(json.dumps(document)), (
            f"docs/catalogue/{name} is stale: regenerate it with python -m framework.catalogue"
        )


def stored(event: Any) -> dict[str, Any]:
    return json.loads(codec.encode(event, Metadata(user="ada")).state)


def test_real_records_validate_against_the_catalogue() -> None:
    ada = Customer(
        id=uuid4(),
        name="Ada",
        email="ada@example.com",
        address=Address(street="Main St 1", city="Berlin", country="DE"),
    )
    order = Order.place(
        uuid4(), ada, [OrderLine(product="Tea", quantity=1, unit_price=Decimal("2.50"))]
    )
    order.confirm(ship_to=ada.address)
    order.cancel("customer request")
    payment = OrderPayment(id=uuid4(), order_id=order.id, amount=Decimal("2.50"))
    payment.void("timeout")
    checked = 0
    for app, events in (("shop", order.collect_events()), ("payments", payment.collect_events())):
        doc = json_schema(app, aggregates_in(f"sample_app.{app}.domain"))
        for e in events:
            name = f"{type(e).__qualname__}"
            if name not in doc["$defs"]:
                assert name == "Order.Placed"  # internal: not in the public catalogue
                continue
            record = stored(e)
            schema = {"$defs": doc["$defs"], "$ref": f"#/$defs/{name}"}
            jsonschema.validate(record["data"], schema)
            jsonschema.validate(record["meta"], {"$defs": doc["$defs"], "$ref": "#/$defs/Metadata"})
            bad = {**record["data"]}
            bad.pop(next(k for k in bad if k != "timestamp"))
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(bad, schema)
            checked += 1
    assert checked == 4  # Confirmed, Cancelled, Requested, Voided


def test_every_asyncapi_reference_resolves() -> None:
    doc = asyncapi("payments", aggregates_in("sample_app.payments.domain"))
    refs: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            refs.extend(v for k, v in value.items() if k == "$ref")
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(doc)
    for ref in refs:
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
    assert len(refs) > 10 and doc["channels"]["events"]["address"] == "payments.events"


def test_a_changed_public_schema_needs_a_new_class_version() -> None:
    published = json_schema("payments", [OrderPayment])
    assert check_stable(published, published) == []
    changed = copy.deepcopy(published)
    changed["$defs"]["OrderPayment.Voided"]["properties"]["reason"] = {"type": "integer"}
    assert check_stable(changed, published) == [
        "OrderPayment.Voided changed its schema but kept class_version 1: raise class_version and "
        "add an upcaster"
    ]
    changed["$defs"]["OrderPayment.Voided"]["x-keel-class-version"] = 2
    assert check_stable(changed, published) == []
    del changed["$defs"]["OrderPayment.Received"]
    assert check_stable(changed, published) == [
        "OrderPayment.Received was public and is gone (or no longer public)"
    ]


def test_check_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    published = json_schema("payments", [OrderPayment])
    published["$defs"]["OrderPayment.Requested"]["required"] = ["timestamp"]
    path = tmp_path / "published.json"
    path.write_text(json.dumps(published))
    assert main(["sample_app.payments.domain", "--app", "payments", "--check", str(path)]) == 1
    assert "OrderPayment.Requested changed its schema" in capsys.readouterr().err
    assert (
        main(
            [
                "sample_app.payments.domain",
                "--app",
                "payments",
                "--check",
                str(DOCS / "payments.schema.json"),
            ]
        )
        == 0
    )


def test_public_events_must_name_events() -> None:
    class Widget(Aggregate):
        public_events = ("Made", "Sold")

        @event("Made")
        def __init__(self, id: Any) -> None:
            pass

    with pytest.raises(ConfigurationError, match=r"\['Sold'\]"):
        json_schema("widgets", [Widget])
    shop = aggregates_in("sample_app.shop.domain")
    assert "Order.Placed" not in json_schema("shop", shop)["$defs"]
    assert "Order.Placed" in json_schema("shop", shop, internal=True)["$defs"]
