"""Django forms generated from pydantic commands: every supported type, and pydantic's errors
on the right fields (nested fields, formset rows)."""

from __future__ import annotations

import datetime as dt
import enum
from decimal import Decimal
from typing import Annotated, Literal
from uuid import UUID, uuid4

from django import forms
from django.utils.datastructures import MultiValueDict
from pydantic import BaseModel, Field, StringConstraints

from framework.commands import Command
from framework.contrib.django.forms import command_form_class, error_fields
from sample_app.shop.commands import AddOrderLine, PlaceOrder, RegisterCustomer


class Colour(enum.Enum):
    RED = "red"
    DARK_BLUE = "dark-blue"


class Part(BaseModel):
    sku: Annotated[str, StringConstraints(min_length=3, max_length=8)]
    count: int = Field(gt=0)


class Place(BaseModel):
    city: str
    zip: str | None = None


class Everything(Command):
    """A command with one field of every supported kind."""

    text: Annotated[str, StringConstraints(max_length=10)]
    number: int = Field(ge=1, le=5)
    amount: Decimal = Field(ge=0, decimal_places=2)
    ratio: float = 0.5
    flag: bool = False
    day: dt.date
    moment: dt.datetime | None = None
    colour: Colour
    size: Literal["S", "M", "L"] = "M"
    ref: UUID
    maybe: str | None = None
    place: Place
    parts: list[Part] = Field(min_length=1, max_length=4)
    tags: list[str] = Field(default_factory=list)
    extra: dict[str, int] = Field(default_factory=dict)


def post(**values: object) -> MultiValueDict[str, str]:
    data = MultiValueDict()
    for key, value in values.items():
        data[key] = str(value)
    return data


def management(prefix: str, total: int) -> dict[str, object]:
    return {
        f"{prefix}-TOTAL_FORMS": total,
        f"{prefix}-INITIAL_FORMS": 0,
        f"{prefix}-MIN_NUM_FORMS": 0,
        f"{prefix}-MAX_NUM_FORMS": 1000,
    }


def valid_input(**override: object) -> dict[str, object]:
    data: dict[str, object] = {
        "text": "hello",
        "number": 3,
        "amount": "9.99",
        "ratio": "0.25",
        "flag": "on",
        "day": "2026-01-31",
        "moment": "2026-01-31T10:30",
        "colour": "dark-blue",
        "size": "L",
        "ref": str(uuid4()),
        "place__city": "Oslo",
        "tags": "a\nb\n\n c ",
        "extra": '{"x": 1}',
        **management("parts", 3),
        "parts-0-sku": "ABC1",
        "parts-0-count": "2",
        "parts-2-sku": "XYZ9",
        "parts-2-count": "1",
    }
    data.update(override)
    return data


def test_every_kind_of_field_gets_a_matching_form_field() -> None:
    form = command_form_class(Everything)()
    fields = form.fields
    assert isinstance(fields["text"], forms.CharField)
    assert fields["text"].widget.attrs["maxlength"] == 10
    assert isinstance(fields["number"], forms.IntegerField)
    assert fields["number"].widget.attrs == {"min": 1, "max": 5}
    assert isinstance(fields["amount"], forms.DecimalField)
    assert fields["amount"].widget.attrs["step"] == "0.01"
    assert isinstance(fields["ratio"], forms.FloatField) and not fields["ratio"].required
    assert isinstance(fields["flag"], forms.BooleanField) and not fields["flag"].required
    assert isinstance(fields["day"], forms.DateField)
    assert isinstance(fields["moment"], forms.DateTimeField) and not fields["moment"].required
    assert isinstance(fields["colour"], forms.ChoiceField)
    assert list(fields["colour"].choices) == [("red", "Red"), ("dark-blue", "Dark Blue")]
    assert list(fields["size"].choices) == [("", "---------"), ("S", "S"), ("M", "M"), ("L", "L")]
    assert fields["size"].initial == "M"
    assert isinstance(fields["ref"], forms.UUIDField)
    assert not fields["maybe"].required
    assert fields["place__city"].required and not fields["place__zip"].required
    assert isinstance(fields["command_id"].widget, forms.HiddenInput)
    assert "parts" in form.formsets and "parts" not in fields
    row = form.formsets["parts"].empty_form
    assert set(row.fields) == {"sku", "count"}
    assert isinstance(fields["extra"], forms.JSONField)
    assert "one per line" in fields["tags"].help_text


def test_a_valid_form_builds_the_command() -> None:
    ref = uuid4()
    form = command_form_class(Everything)(post(**valid_input(ref=ref)))
    assert form.is_valid(), error_fields(form)
    command = form.command
    assert isinstance(command, Everything)
    assert command.ref == ref
    assert command.amount == Decimal("9.99")
    assert command.flag is True
    assert command.colour is Colour.DARK_BLUE
    assert command.size == "L"
    assert command.day == dt.date(2026, 1, 31)
    assert command.moment is not None and command.moment.hour == 10
    assert command.place == Place(city="Oslo")
    assert command.parts == [Part(sku="ABC1", count=2), Part(sku="XYZ9", count=1)]  # empty row 1
    assert command.tags == ["a", "b", "c"]
    assert command.extra == {"x": 1}
    assert command.maybe is None


def test_pydantic_errors_land_on_their_fields() -> None:
    form = command_form_class(Everything)(
        post(
            **valid_input(
                text="x" * 11,
                number=9,
                **{"parts-0-sku": "AB", "parts-2-count": "0"},
            )
        )
    )
    assert not form.is_valid()
    errors = error_fields(form)
    assert errors["text"] == ["Use at most 10 characters."]
    assert errors["number"] == ["Input should be less than or equal to 5"]
    assert errors["parts.0.sku"] == ["Use at least 3 characters."]
    # The third row was the second filled one: pydantic's index 1 maps back to row 2.
    assert errors["parts.2.count"] == ["Input should be greater than 0"]
    assert form.command is None


def test_nested_and_list_level_errors() -> None:
    data = valid_input()
    for key in list(data):
        if key.startswith("parts-") and key[6].isdigit():
            del data[key]
    form = command_form_class(Everything)(post(**{**data, "place__city": ""}))
    assert not form.is_valid()
    errors = error_fields(form)
    assert errors["place.city"] == ["This field is required."]
    form = command_form_class(Everything)(post(**data))
    assert not form.is_valid()
    assert error_fields(form) == {
        "parts": ["List should have at least 1 item after validation, not 0"]
    }


def test_django_type_errors_stop_before_pydantic() -> None:
    form = command_form_class(Everything)(post(**valid_input(number="many", ref="not-a-uuid")))
    assert not form.is_valid()
    errors = error_fields(form)
    assert errors["number"] == ["Enter a whole number."]
    assert errors["ref"] == ["Enter a valid UUID."]


def test_the_shop_commands_render_and_validate() -> None:
    form = command_form_class(RegisterCustomer)()
    assert {"name", "email", "address__street", "address__country", "customer_id"} <= set(
        form.fields
    )
    assert (
        form.initial["customer_id"] != command_form_class(RegisterCustomer)().initial["customer_id"]
    )  # a fresh id per form
    bad = command_form_class(RegisterCustomer)(
        post(
            name="Ada",
            email="ada@",
            address__street="1 Main St",
            address__city="Berlin",
            address__country="XX",
        )
    )
    assert not bad.is_valid()
    errors = error_fields(bad)
    assert errors["email"] == ["Enter an e-mail address, e.g. ada@example.com."]
    assert errors["address.country"] == [  # a list of countries: Django says it
        "Select a valid choice. XX is not one of the available choices."
    ]
    line = command_form_class(AddOrderLine)(
        post(order_id=uuid4(), line__product="Tea", line__quantity=0, line__unit_price="1.5")
    )
    assert not line.is_valid()
    assert error_fields(line) == {"line.quantity": ["Input should be greater than 0"]}
    html = command_form_class(PlaceOrder)().formsets["lines"].management_form.as_p()
    assert "lines-TOTAL_FORMS" in html
