"""System checks (``manage.py check``).

=========  ====================================================================================
keel.E001  ``settings.KEEL`` is missing
keel.E002  ``settings.KEEL`` is invalid (the message names the key)
keel.E003  a configured projection cannot be imported
keel.E004  the read-model database has no ``DATABASES`` alias
keel.W001  ``DEBUG = True`` in a long-running keel process: Django keeps every query, memory grows
keel.W002  the read-model database is not at the Alembic head (``alembic upgrade head``)
keel.W003  the read-model router is not in ``DATABASE_ROUTERS``
keel.W004  errors under ``KEEL['API_PREFIX']`` would be HTML: ``JsonApiErrors`` is not in
           ``MIDDLEWARE``
=========  ====================================================================================

None of the checks registered by default touches a database or the event store; keel.W002 does,
so it is a *database* check (``manage.py check --database readmodels``, ``keel_check``, and
``run_projections`` at start).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings as django_settings
from django.core import checks

from framework.errors import ConfigurationError

__all__ = ["alembic_revisions", "check_alembic_head", "register"]

ROUTER = "framework.contrib.django.routers.ReadModelRouter"
API_ERRORS = "framework.contrib.django.error_pages.JsonApiErrors"
VERSION_TABLE = "keel_alembic_version"
"""Where migrations/env.py records the read-model database's revision."""

running_worker = False
"""Set by ``run_projections``, ``run_writers`` and ``run_process_managers`` before they run
the checks, so keel.W001 applies only to those long-running commands."""


def register() -> None:
    """Register the checks (``KeelConfig.ready()`` calls this; registering twice is a no-op)."""
    checks.register(check_settings, "keel")
    checks.register(check_worker_debug, "keel")
    checks.register(check_alembic_head, "keel", checks.Tags.database)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from framework.contrib.django.conf import get_projections, get_settings

    if getattr(django_settings, "KEEL", None) is None:
        return [
            checks.Error(
                "settings.KEEL is missing.",
                hint="Add KEEL = {'APPLICATION': 'yourapp.application:build', "
                "'PROJECTIONS': [...]} to your settings.",
                id="keel.E001",
            )
        ]
    try:
        keel = get_settings()
    except ConfigurationError as error:
        return [checks.Error(str(error), id="keel.E002")]
    found: list[checks.CheckMessage] = []
    try:
        get_projections()
    except ConfigurationError as error:
        found.append(checks.Error(str(error), hint="Fix KEEL['PROJECTIONS'].", id="keel.E003"))
    if not keel.readmodels_url and keel.readmodels_database not in django_settings.DATABASES:
        found.append(
            checks.Error(
                f"DATABASES has no {keel.readmodels_database!r} alias for the read models.",
                hint="Add DATABASES['readmodels'] (see framework.contrib.django.conf."
                "django_database) or set KEEL['READMODELS_URL'].",
                id="keel.E004",
            )
        )
    if ROUTER not in getattr(django_settings, "DATABASE_ROUTERS", []):
        found.append(
            checks.Warning(
                "The read-model router is not installed: the admin would look for read-model "
                "tables in the default database, and migrate could create tables there.",
                hint=f"DATABASE_ROUTERS = [{ROUTER!r}]",
                id="keel.W003",
            )
        )
    if keel.api_prefix and API_ERRORS not in getattr(django_settings, "MIDDLEWARE", []):
        found.append(
            checks.Warning(
                f"Errors under {keel.api_prefix} (unknown URLs, CSRF failures, crashes) are "
                "HTML pages, which API clients cannot read.",
                hint=f"Add {API_ERRORS!r} to MIDDLEWARE, or set KEEL['API_PREFIX'] = '' if you "
                "serve no JSON API.",
                id="keel.W004",
            )
        )
    return found


def check_worker_debug(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    if running_worker and django_settings.DEBUG:
        return [
            checks.Warning(
                "DEBUG is True in a long-running keel process (a projection worker, writer or "
                "process manager): Django records every query in memory while DEBUG is on, so "
                "the process's memory grows without bound.",
                hint="Run them with DEBUG = False (e.g. DJANGO_DEBUG=0).",
                id="keel.W001",
            )
        ]
    return []


def _alembic_config() -> Any:
    from alembic.config import Config

    from framework.contrib.django.conf import get_settings

    configured = get_settings().alembic_config
    path = Path(configured)
    if not path.is_absolute():
        base = Path(getattr(django_settings, "BASE_DIR", Path.cwd()))
        path = base / path
    if not path.exists():
        raise ConfigurationError(f"no Alembic configuration at {path}: set KEEL['ALEMBIC_CONFIG']")
    config = Config(str(path))
    location = config.get_main_option("script_location") or "migrations"
    if not Path(location).is_absolute():
        config.set_main_option("script_location", str(path.parent / location))
    return config


def alembic_revisions() -> tuple[set[str], set[str]]:
    """(the heads of the migration scripts, the revisions the read-model DB is at)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from framework.contrib.django.conf import get_engine

    script = ScriptDirectory.from_config(_alembic_config())
    heads = set(script.get_heads())
    with get_engine().connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        current = set(context.get_current_heads())
    return heads, current


def check_alembic_head(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    from framework.contrib.django.conf import get_settings

    try:
        alias = get_settings().readmodels_database
    except ConfigurationError:
        return []  # keel.E002 reports it
    if not databases or alias not in databases:
        return []  # like Django's own database checks: only when asked (--database)
    try:
        heads, current = alembic_revisions()
    except ConfigurationError as error:
        return [checks.Warning(str(error), id="keel.W002")]
    except Exception as error:  # an unreachable database is what this check is for
        return [
            checks.Warning(
                f"cannot read the Alembic revision of the read-model database: {error}",
                hint="Is the database up? Run `alembic upgrade head`.",
                id="keel.W002",
            )
        ]
    if heads != current:
        return [
            checks.Warning(
                f"The read-model database is at {sorted(current) or 'no revision'}, the "
                f"migrations' head is {sorted(heads)}.",
                hint="Run `alembic upgrade head` before starting workers or the admin.",
                id="keel.W002",
            )
        ]
    return []
