"""Routes the generated read-model models to the read-model database, and keeps Django's
migrations away from it (Alembic owns that schema)."""

from __future__ import annotations

from typing import Any

from django.db import models

from framework.contrib.django.readmodels import is_readmodel


def _alias() -> str:
    from framework.contrib.django.conf import get_settings

    return get_settings().readmodels_database


class ReadModelRouter:
    """``DATABASE_ROUTERS = ["framework.contrib.django.routers.ReadModelRouter"]``."""

    def db_for_read(self, model: type[models.Model], **hints: Any) -> str | None:
        return _alias() if is_readmodel(model) else None

    def db_for_write(self, model: type[models.Model], **hints: Any) -> str | None:
        # The admin never writes read models; a stray write goes where a read would, and fails
        # there loudly rather than creating a table in the default database.
        return _alias() if is_readmodel(model) else None

    def allow_relation(self, obj1: models.Model, obj2: models.Model, **hints: Any) -> bool | None:
        if is_readmodel(type(obj1)) or is_readmodel(type(obj2)):
            return is_readmodel(type(obj1)) and is_readmodel(type(obj2))
        return None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        if db == _alias():
            return False  # Alembic migrates the read models; Django's tables live elsewhere.
        if is_readmodel(hints.get("model")):
            return False
        return None
