"""Alembic environment for the read-model databases.

Target metadata: the framework's tables (positions, dead letters, projection versions), the
operational ones (heartbeats, samples) and the tables of every projection in the modules
below. Autogenerate only ever touches tables it owns: a table in the database that no owned
metadata names (Django's, another service's, a rebuild's ``__rebuild`` shadow) is never
proposed for dropping.

**Adding a projection** is one line: append its module to ``PROJECTION_MODULES`` (for example
``"projections.orders"``), then ``alembic revision --autogenerate -m "orders projection"``.
Extra modules can also be given per run, ``alembic -x projections=pkg.mod1,pkg.mod2 check``,
or through ``KEEL_ALEMBIC_PROJECTIONS``. The database URL: ``-x url=...``, else
``KEEL_DATABASE_URL``, else ``DATABASE_URL``, else the embedded SQLite default.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import sqlalchemy as sa
from alembic import context

import framework.cdc  # its keel_cdc_feeds table joins framework_metadata
import framework.process.store  # noqa: F401 - registers the process managers' tables
from framework.database import create_engine
from framework.positions import framework_metadata
from framework.projection import SHADOW_SUFFIX, projections_in
from framework.settings import database_url

PROJECTION_MODULES: list[str] = [
    "projections.customers",
    "projections.orders",
    "projections.sales",
    "projections.streams",
    "projections.order_history",
    "projections.payments",
]
"""Modules whose Projection classes' tables Alembic migrates (one line per module)."""

VERSION_TABLE = "keel_alembic_version"

config = context.config
x_args = context.get_x_argument(as_dictionary=True)


def _modules() -> list[str]:
    extra = x_args.get("projections") or os.environ.get("KEEL_ALEMBIC_PROJECTIONS", "")
    return [*PROJECTION_MODULES, *(m.strip() for m in extra.split(",") if m.strip())]


def _target_metadata() -> list[sa.MetaData]:
    # Operational tables (heartbeats, samples): plain SQLAlchemy, importable without Django.
    from framework.contrib.django.heartbeats import metadata as operations_metadata

    found: list[sa.MetaData] = [framework_metadata, operations_metadata]
    for name in _modules():
        module = importlib.import_module(name)
        for projection in projections_in(vars(module).values()):
            if projection.metadata not in found:
                found.append(projection.metadata)
    return found


target_metadata = _target_metadata()
owned_tables = {t for m in target_metadata for t in m.tables}


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Reflect only the tables this environment owns."""
    if type_ == "table":
        return name in owned_tables
    return True


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Never propose dropping what another owner created, nor a rebuild's shadow tables."""
    if type_ == "table":
        if name and name.endswith(SHADOW_SUFFIX):
            return False
        if reflected and compare_to is None:
            return False
    return True


def _url() -> str:
    return x_args.get("url") or database_url()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        include_name=include_name,
        include_object=include_object,
        version_table=VERSION_TABLE,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url())
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                include_name=include_name,
                include_object=include_object,
                version_table=VERSION_TABLE,
                compare_type=True,
                render_as_batch=connection.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
