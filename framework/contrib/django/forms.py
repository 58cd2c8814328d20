"""Django forms generated from pydantic command models.

``command_form_class(PlaceOrder)`` returns a :class:`CommandForm` subclass with one form field
per leaf of the model: nested models are flattened (``address__country``), lists of nested
models become a formset of repeated rows (``lines-0-quantity``), and:

==============================  =============================================================
pydantic                        Django
==============================  =============================================================
``str`` (with max/min length)   ``CharField`` (``maxlength``/``minlength`` on the widget)
``int`` / ``float``             ``IntegerField`` / ``FloatField`` (``min``/``max`` attributes)
``Decimal``                     ``DecimalField`` (``step`` from ``decimal_places``)
``bool``                        ``BooleanField`` (a checkbox, never required)
``date`` / ``datetime``         ``DateField`` / ``DateTimeField`` (HTML date pickers)
``Enum`` / ``Literal[...]``     ``ChoiceField`` with the members / literal values
``UUID``                        ``UUIDField``
``X | None``, defaults          not required; left blank, the model's default applies
``list[str]`` / ``list[int]``   a textarea, one value per line
anything else                   a JSON textarea
==============================  =============================================================

Constraints are rendered as HTML attributes for the browser, but **pydantic validates**: the
form builds the command's input and calls ``Command.parse``, then puts every pydantic error on
the field (or formset row and field) its ``loc`` names, in plain words. Generated ids
(``command_id``, a new aggregate's id) are read-only: their values come from ``initial`` (the
admin derives them from a signed per-form token), never from submitted data, so submitting the
same form twice executes the command once.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import json
import types
import typing
import uuid
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any, ClassVar

import annotated_types
from django import forms
from django.forms.formsets import BaseFormSet, formset_factory
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from framework.commands import Command
from framework.errors import CommandValidationError

__all__ = ["CommandForm", "ModelRowForm", "command_form_class", "error_fields", "error_summary"]

SEPARATOR = "__"
"""Joins the path of a nested field into a form field name: ``address__country``."""

MAX_DEPTH = 4
_MISSING = object()


# -- reading pydantic annotations -----------------------------------------------------------


class _Leaf(typing.NamedTuple):
    path: tuple[str, ...]
    annotation: Any
    metadata: list[Any]
    required: bool
    default: Any
    description: str | None


def _unwrap(annotation: Any, metadata: list[Any]) -> tuple[Any, list[Any], bool]:
    """Strip ``Annotated`` and ``| None``: the bare type, its constraints, and whether None is
    allowed."""
    optional = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation, *extra = typing.get_args(annotation)
            metadata = [*metadata, *extra]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            optional = optional or len(args) < len(typing.get_args(annotation))
            if len(args) != 1:
                return annotation, metadata, optional
            annotation = args[0]
        else:
            return annotation, metadata, optional


def _constraints(metadata: list[Any]) -> dict[str, Any]:
    """Flatten annotated-types / pydantic constraint objects into one dict."""
    found: dict[str, Any] = {}
    pending = list(metadata)
    while pending:
        item = pending.pop(0)
        if isinstance(item, annotated_types.GroupedMetadata) and not isinstance(item, FieldInfo):
            pending[:0] = list(item)
            continue
        if isinstance(item, FieldInfo):
            pending[:0] = list(item.metadata)
            if item.description:
                found.setdefault("description", item.description)
            extra = item.json_schema_extra
            if isinstance(extra, dict):
                if isinstance(extra.get("enum"), list):
                    found.setdefault("enum", extra["enum"])
                if isinstance(extra.get("format"), str):
                    found.setdefault("format", extra["format"])
            continue
        for name in (
            "gt", "ge", "lt", "le", "min_length", "max_length", "max_digits", "decimal_places",
            "pattern", "strip_whitespace",
        ):  # fmt: skip
            value = getattr(item, name, None)
            if value is not None:
                found[name] = value
    return found


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _model_list_item(annotation: Any) -> type[BaseModel] | None:
    if typing.get_origin(annotation) in (list, tuple, set, frozenset):
        args = typing.get_args(annotation)
        if args:
            item, _, _ = _unwrap(args[0], [])
            if _is_model(item):
                return typing.cast(type[BaseModel], item)
    return None


def _leaves(
    model: type[BaseModel], prefix: tuple[str, ...] = (), optional_parent: bool = False
) -> Iterator[_Leaf]:
    for name, info in model.model_fields.items():
        annotation, metadata, optional = _unwrap(info.annotation, list(info.metadata))
        required = info.is_required() and not optional_parent
        path = (*prefix, name)
        if _is_model(annotation) and len(path) < MAX_DEPTH:
            yield from _leaves(annotation, path, optional_parent or not required or optional)
            continue
        default: Any = _MISSING
        if info.default is not PydanticUndefined:
            default = info.default
        elif info.default_factory is not None:
            default = info.default_factory  # called per form, so each form gets a fresh id
        yield _Leaf(
            path,
            annotation,
            [*metadata, info],  # the field's own json_schema_extra (choices, format) too
            required and not optional,
            default,
            info.description,
        )


# -- building form fields ---------------------------------------------------------------------


class LinesField(forms.CharField):
    """A list of scalars, one per line of a textarea."""

    widget = forms.Textarea(attrs={"rows": 3})

    def to_python(self, value: Any) -> list[str] | None:  # type: ignore[override]
        text = super().to_python(value)
        if not text:
            return None
        return [line.strip() for line in text.splitlines() if line.strip()]

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return "\n".join(str(v) for v in value)
        return value


def _label(path: tuple[str, ...]) -> str:
    return " / ".join(part.replace("_", " ") for part in path).capitalize()


def _choice_value(value: Any) -> str:
    return str(value.value if isinstance(value, enum.Enum) else value)


def _initial(default: Any) -> Any:
    if default is _MISSING or default is None or callable(default):
        return None
    if isinstance(default, enum.Enum):
        return default.value
    return default


def _form_field(leaf: _Leaf) -> forms.Field:
    annotation, metadata, _ = _unwrap(leaf.annotation, leaf.metadata)
    limits = _constraints(metadata)
    common: dict[str, Any] = {
        "required": leaf.required,
        "label": _label(leaf.path[-2:] if len(leaf.path) > 1 else leaf.path),
        "help_text": leaf.description or limits.get("description") or "",
        "initial": _initial(leaf.default),
    }
    attrs: dict[str, Any] = {}
    origin = typing.get_origin(annotation)

    if origin is typing.Literal:
        values = typing.get_args(annotation)
        choices = [(_choice_value(v), str(v)) for v in values]
        if not leaf.required:
            choices.insert(0, ("", "---------"))
        field: forms.Field = forms.ChoiceField(choices=choices, **common)
        return field
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        choices = [(_choice_value(m), m.name.replace("_", " ").title()) for m in annotation]
        if not leaf.required:
            choices.insert(0, ("", "---------"))
        return forms.ChoiceField(choices=choices, **common)
    if annotation is bool:
        common["required"] = False
        return forms.BooleanField(**common)
    if annotation is int or annotation is float:
        for key, attr in (("ge", "min"), ("le", "max")):
            if key in limits:
                attrs[attr] = limits[key]
        if annotation is int:
            if "gt" in limits:
                attrs["min"] = limits["gt"] + 1
            if "lt" in limits:
                attrs["max"] = limits["lt"] - 1
            return forms.IntegerField(widget=forms.NumberInput(attrs=attrs), **common)
        return forms.FloatField(widget=forms.NumberInput(attrs=attrs), **common)
    if annotation is Decimal:
        if "ge" in limits:
            attrs["min"] = limits["ge"]
        places = limits.get("decimal_places")
        attrs["step"] = f"{Decimal(1).scaleb(-places)}" if places else "any"
        return forms.DecimalField(widget=forms.NumberInput(attrs=attrs), **common)
    if annotation is dt.datetime:
        return forms.DateTimeField(
            widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
            **common,
        )
    if annotation is dt.date:
        return forms.DateField(
            widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"), **common
        )
    if annotation is uuid.UUID:
        return forms.UUIDField(widget=forms.TextInput(attrs={"size": 40}), **common)
    if annotation is str and limits.get("enum"):
        choices = [(str(v), str(v)) for v in limits["enum"]]
        if not leaf.required:
            choices.insert(0, ("", "---------"))
        return forms.ChoiceField(choices=choices, **common)
    if annotation is str:
        if "max_length" in limits:
            attrs["maxlength"] = limits["max_length"]
        if limits.get("min_length"):
            attrs["minlength"] = limits["min_length"]
        widget: forms.Widget = (
            forms.EmailInput(attrs=attrs)
            if limits.get("format") == "email"
            else forms.Textarea(attrs={**attrs, "rows": 3})
            if limits.get("max_length", 0) > 200
            else forms.TextInput(attrs=attrs)
        )
        # Blank stays blank: pydantic decides whether an empty string is allowed.
        return forms.CharField(widget=widget, strip=False, empty_value="", **common)
    if origin in (list, set, frozenset, tuple):
        args = typing.get_args(annotation)
        item = _unwrap(args[0], [])[0] if args else Any
        if item in (str, int, Decimal, uuid.UUID, float):
            common["help_text"] = (common["help_text"] + " (one per line)").strip()
            return LinesField(**common)
    common["help_text"] = (common["help_text"] + " (JSON)").strip()
    return forms.JSONField(widget=forms.Textarea(attrs={"rows": 4}), **common)


def _set_path(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value


def _clean_message(message: str, kind: str = "", leaf: _Leaf | None = None) -> str:
    """pydantic's message in plain words: no regular expressions, no "Value error, "."""
    limits = _constraints(leaf.metadata) if leaf is not None else {}
    if kind == "missing" or (kind == "string_too_short" and limits.get("min_length") == 1):
        return "This field is required."
    if kind == "string_too_short" and "min_length" in limits:
        return f"Use at least {limits['min_length']} characters."
    if kind == "string_too_long" and "max_length" in limits:
        return f"Use at most {limits['max_length']} characters."
    if kind == "decimal_max_places" and "decimal_places" in limits:
        return f"Use at most {limits['decimal_places']} decimal places."
    if kind == "decimal_max_digits" and "max_digits" in limits:
        return f"Use at most {limits['max_digits']} digits."
    if kind == "string_pattern_mismatch":
        hint = (leaf.description if leaf is not None else None) or ""
        # Descriptions are noun phrases ("An e-mail address, e.g. ..."): "Enter an e-mail ...".
        return (
            f"Enter {hint[:1].lower()}{hint[1:].rstrip('.')}." if hint else "Enter a valid value."
        )
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


# -- the forms --------------------------------------------------------------------------------


class _LeafForm(forms.Form):
    """A form whose fields are the flattened leaves of a pydantic model."""

    leaves: ClassVar[dict[str, _Leaf]] = {}

    def model_input(self) -> dict[str, Any]:
        """The cleaned values as the nested dict pydantic expects; blank optional values are
        left out so the model's defaults apply."""
        data: dict[str, Any] = {}
        cleaned = getattr(self, "cleaned_data", {})
        for name, leaf in self.leaves.items():
            value = cleaned.get(name, _MISSING)
            if value is _MISSING:
                continue
            if (value is None or value == "" or value == []) and not leaf.required:
                continue
            _set_path(data, leaf.path, value)
        return data

    def field_for(self, loc: tuple[Any, ...]) -> str | None:
        """The form field a pydantic error location points at (or None)."""
        name = SEPARATOR.join(str(p) for p in loc)
        if name in self.fields:
            return name
        # An error on a list item of a scalar list (tags, 2) belongs to the list's field.
        for cut in range(len(loc) - 1, 0, -1):
            name = SEPARATOR.join(str(p) for p in loc[:cut])
            if name in self.fields:
                return name
        return None


class ModelRowForm(_LeafForm):
    """One row of a formset for a ``list[SomeModel]`` field."""

    def has_input(self) -> bool:
        return self.has_changed()


class _RowFormSet(BaseFormSet):  # type: ignore[type-arg]
    def rows(self) -> list[tuple[ModelRowForm, dict[str, Any]]]:
        """The rows the user filled in, with their model input."""
        found = []
        for form in self.forms:
            if not form.has_changed():
                continue
            found.append((form, form.model_input()))
        return found


@functools.cache
def _row_form_class(model: type[BaseModel]) -> type[ModelRowForm]:
    leaves = {SEPARATOR.join(leaf.path): leaf for leaf in _leaves(model)}
    attrs: dict[str, Any] = {name: _form_field(leaf) for name, leaf in leaves.items()}
    for field in attrs.values():
        field.initial = None  # rows start empty; defaults apply when a cell is left blank
    attrs["leaves"] = leaves
    return type(f"{model.__name__}RowForm", (ModelRowForm,), attrs)


class CommandForm(_LeafForm):
    """A form for one command class; build it with :func:`command_form_class`.

    After ``is_valid()`` returns True, ``form.command`` holds the validated command. Otherwise
    every error is on the field, formset row or form it concerns.
    """

    command_class: ClassVar[type[Command]]
    formset_classes: ClassVar[dict[str, type[_RowFormSet]]] = {}
    generated_ids: ClassVar[tuple[str, ...]] = ()
    """Fields holding ids generated for the form (``command_id``, a new aggregate's id): shown
    read-only, their values come from ``initial``, never from submitted data."""

    def __init__(
        self,
        data: Mapping[str, Any] | None = None,
        *,
        initial: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(data, initial=dict(initial or {}), **kwargs)
        self.command: Command | None = None
        self.formsets: dict[str, _RowFormSet] = {
            name: cls(data, prefix=name) for name, cls in self.formset_classes.items()
        }
        if not self.is_bound:
            # Fresh ids per form shown (new aggregate ids, the command id): a form submitted
            # twice executes once, and two forms never share an id.
            for name, leaf in self.leaves.items():
                if callable(leaf.default) and name in self.fields:
                    self.initial.setdefault(name, leaf.default())

    def is_valid(self) -> bool:
        valid = super().is_valid()
        return (
            valid
            and self.command is not None
            and all(fs.is_valid() for fs in self.formsets.values())
        )

    def _post_clean(self) -> None:
        # pydantic runs even when some fields failed Django's own parsing, so every error shows
        # at once; it does not repeat an error on a field that has one already.
        formsets_valid = all(fs.is_valid() for fs in self.formsets.values())
        data = self.model_input()
        rows: dict[str, list[ModelRowForm]] = {}
        for name, formset in self.formsets.items():
            filled = (
                formset.rows() if formset.is_bound and formset.management_form.is_valid() else []
            )
            rows[name] = [form for form, _ in filled]
            data[name] = [row for _, row in filled]
        try:
            command = self.command_class.parse(data)
        except CommandValidationError as error:
            for problem in error.errors:
                self._place_error(
                    tuple(problem.get("loc", ())),
                    problem.get("msg", ""),
                    rows,
                    str(problem.get("type", "")),
                )
            return
        if not self.errors and formsets_valid:
            self.command = command

    def _place_error(
        self,
        loc: tuple[Any, ...],
        message: str,
        rows: dict[str, list[ModelRowForm]],
        kind: str = "",
    ) -> None:
        if loc and loc[0] in self.formsets:
            formset = self.formsets[loc[0]]
            if len(loc) >= 2 and isinstance(loc[1], int) and loc[1] < len(rows[loc[0]]):
                row = rows[loc[0]][loc[1]]
                field = row.field_for(loc[2:]) if len(loc) > 2 else None
                message = _clean_message(message, kind, row.leaves.get(field or ""))
                if field is None or field not in row.errors:
                    row.add_error(field, message)
            else:
                formset.non_form_errors().append(_clean_message(message, kind))
            return
        name = self.field_for(loc) if loc else None
        message = _clean_message(message, kind, self.leaves.get(name or ""))
        if name is not None and name in self.errors:
            return  # Django could not even parse it; its message says more
        if name is None and loc:
            message = f"{_label(tuple(str(p) for p in loc))}: {message}"
        self.add_error(name, message)

    @property
    def all_errors(self) -> dict[str, list[str]]:
        """Every error, keyed by the pydantic-style dotted location (for tests and APIs)."""
        return error_fields(self)


def error_summary(form: CommandForm) -> dict[str, list[str]]:
    """Every error of a bound form keyed by where people see it: ``"Lines, row 2: unit
    price"``, ``"Address: country"``, ``"Email"`` (``""`` for the form as a whole)."""
    found: dict[str, list[str]] = {}
    for key, messages in error_fields(form).items():
        parts = key.split(".")
        if key == "__all__":
            label = ""
        elif len(parts) >= 2 and parts[0] in form.formsets and parts[1].isdigit():
            rest = " ".join(p.replace("_", " ") for p in parts[2:])
            label = f"{_label((parts[0],))}, row {int(parts[1]) + 1}" + (
                f": {rest}" if rest else ""
            )
        else:
            label = _label((parts[0],)) + "".join(f": {p.replace('_', ' ')}" for p in parts[1:])
        found.setdefault(label, []).extend(messages)
    return found


def error_fields(form: CommandForm) -> dict[str, list[str]]:
    """Every error of a bound form, keyed by ``field`` or ``formset.row.field``."""
    found: dict[str, list[str]] = {}
    for name, errors in form.errors.items():
        key = name if name == "__all__" else name.replace(SEPARATOR, ".")
        found.setdefault(key, []).extend(str(e) for e in errors)
    for name, formset in form.formsets.items():
        if not formset.is_bound:
            continue
        for message in formset.non_form_errors():
            found.setdefault(name, []).append(str(message))
        for index, row in enumerate(formset.forms):
            for field, errors in row.errors.items():
                key = f"{name}.{index}" + (
                    "" if field == "__all__" else "." + field.replace(SEPARATOR, ".")
                )
                found.setdefault(key, []).extend(errors)
    return found


@functools.cache
def command_form_class(command_class: type[Command]) -> type[CommandForm]:
    """The form class for ``command_class`` (built once per class)."""
    attrs: dict[str, Any] = {}
    leaves: dict[str, _Leaf] = {}
    formsets: dict[str, type[_RowFormSet]] = {}
    generated: list[str] = []
    for leaf in _leaves(command_class):
        name = SEPARATOR.join(leaf.path)
        item = _model_list_item(_unwrap(leaf.annotation, [])[0]) if len(leaf.path) == 1 else None
        if item is not None:
            limits = _constraints(leaf.metadata)
            max_rows = int(limits.get("max_length", 50))
            formsets[name] = formset_factory(  # type: ignore[assignment]
                _row_form_class(item),
                formset=_RowFormSet,
                extra=min(3, max_rows),
                max_num=max_rows,
                absolute_max=max_rows + 10,
            )
            continue
        leaves[name] = leaf
        field = _form_field(leaf)
        if callable(leaf.default):
            field.initial = None  # a fresh value per form, in CommandForm.__init__
        if callable(leaf.default) and _unwrap(leaf.annotation, [])[0] is uuid.UUID:
            # A generated id (the command id, a new aggregate's id) is chosen with the form and
            # never taken from the request: a resubmitted form then replays, and a link
            # cannot choose the id for you.
            field.disabled = True
            field.required = False
            field.help_text = "chosen for you"
            generated.append(name)
        if name == "command_id":
            field.widget = forms.HiddenInput()
        attrs[name] = field
    attrs["leaves"] = leaves
    attrs["formset_classes"] = formsets
    attrs["command_class"] = command_class
    attrs["generated_ids"] = tuple(generated)
    attrs["__doc__"] = command_class.__doc__
    return type(f"{command_class.__name__}Form", (CommandForm,), attrs)


def describe(command_class: type[Command]) -> dict[str, Any]:
    """The JSON schema of a command, for documentation pages and API clients."""
    return json.loads(json.dumps(command_class.model_json_schema(), default=str))  # type: ignore[no-any-return]
