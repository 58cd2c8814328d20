"""Read models in Django: unmanaged models generated from the projections' SQLAlchemy tables.

The SQLAlchemy ``Table`` is the one definition of a read model (Alembic migrates it, the worker
writes it); :func:`django_model` derives a read-only Django model from it for the admin and the
ORM, so the two never drift apart::

    # shop/models.py
    Order = django_model(projections.orders.orders, app_label="shop", name="Order")

Put such models in an app with migrations off (``MIGRATION_MODULES = {"shop": None}``) and
route them to the read-model database with :class:`~framework.contrib.django.routers.
ReadModelRouter`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from django.db import models

__all__ = ["READMODEL_ATTRIBUTE", "django_model", "is_readmodel", "model_for_table"]

READMODEL_ATTRIBUTE = "_keel_table"
"""Set on generated model classes: the SQLAlchemy Table they come from."""


def _django_field(column: sa.Column[Any], *, primary_key: bool) -> models.Field[Any, Any]:
    kwargs: dict[str, Any] = {
        "db_column": column.name,
        "null": bool(column.nullable) and not primary_key,
        "blank": bool(column.nullable),
        "primary_key": primary_key,
        "editable": False,
        "help_text": column.doc or column.comment or "",
    }
    kind = column.type
    if isinstance(kind, sa.Uuid):
        return models.UUIDField(**kwargs)
    if isinstance(kind, sa.Boolean):
        return models.BooleanField(**kwargs)
    if isinstance(kind, sa.BigInteger):
        return models.BigIntegerField(**kwargs)
    if isinstance(kind, sa.SmallInteger):
        return models.SmallIntegerField(**kwargs)
    if isinstance(kind, sa.Integer):
        return models.IntegerField(**kwargs)
    if isinstance(kind, sa.Float):
        return models.FloatField(**kwargs)
    if isinstance(kind, sa.Numeric):
        return models.DecimalField(
            max_digits=kind.precision or 18, decimal_places=kind.scale or 2, **kwargs
        )
    if isinstance(kind, sa.DateTime):
        return models.DateTimeField(**kwargs)
    if isinstance(kind, sa.Date):
        return models.DateField(**kwargs)
    if isinstance(kind, sa.JSON):
        return models.JSONField(**kwargs)
    if isinstance(kind, sa.Enum):
        choices = [(v, v) for v in kind.enums]
        return models.CharField(max_length=kind.length or 64, choices=choices, **kwargs)
    if isinstance(kind, sa.String) and not isinstance(kind, sa.Text) and kind.length:
        return models.CharField(max_length=kind.length, **kwargs)
    if isinstance(kind, sa.String):
        return models.TextField(**kwargs)
    raise TypeError(
        f"column {column.table.name}.{column.name} has type {kind!r}, which django_model "
        "cannot map: give it a standard SQLAlchemy type"
    )


def django_model(
    table: sa.Table,
    *,
    app_label: str,
    name: str | None = None,
    module: str | None = None,
    verbose_name: str | None = None,
    verbose_name_plural: str | None = None,
    ordering: list[str] | None = None,
    display: Callable[[Any], str] | None = None,
) -> type[models.Model]:
    """Build an unmanaged Django model over ``table`` (columns by the same names).

    The table needs a primary key; a composite one becomes a Django 5.2
    ``CompositePrimaryKey`` (the admin cannot show such models, the ORM can). ``display(row)``
    is the row's ``__str__`` (what admin messages and titles show).
    """
    pk = list(table.primary_key.columns)
    if not pk:
        raise TypeError(f"table {table.name} has no primary key; django_model needs one")
    attrs: dict[str, Any] = {}
    for column in table.columns:
        attrs[column.key] = _django_field(column, primary_key=len(pk) == 1 and column in pk)
    if len(pk) > 1:
        attrs["pk"] = models.CompositePrimaryKey(*(c.key for c in pk))
    meta: dict[str, Any] = {
        "managed": False,
        "db_table": table.name,
        "app_label": app_label,
        "default_permissions": ("view",),
    }
    if verbose_name:
        meta["verbose_name"] = verbose_name
    if verbose_name_plural:
        meta["verbose_name_plural"] = verbose_name_plural
    if ordering:
        meta["ordering"] = ordering
    model_name = name or "".join(part.capitalize() for part in table.name.split("_"))
    attrs["Meta"] = type("Meta", (), meta)
    attrs["__module__"] = module or f"{app_label}.models"
    attrs[READMODEL_ATTRIBUTE] = table
    attrs["__str__"] = (lambda self: display(self)) if display else _describe
    model: type[models.Model] = type(model_name, (models.Model,), attrs)
    return model


def _describe(self: models.Model) -> str:
    for attribute in ("name", "title", "label"):
        value = getattr(self, attribute, None)
        if value:
            return str(value)
    return f"{type(self)._meta.verbose_name} {self.pk}"


def is_readmodel(model: type[models.Model] | None) -> bool:
    """Whether ``model`` was generated by :func:`django_model`."""
    return model is not None and getattr(model, READMODEL_ATTRIBUTE, None) is not None


def model_for_table(table: sa.Table) -> type[models.Model] | None:
    """The Django model :func:`django_model` generated over ``table``, if one is installed."""
    from django.apps import apps

    for model in apps.get_models():
        if getattr(model, READMODEL_ATTRIBUTE, None) is table:
            return model
    return None
