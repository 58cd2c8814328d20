"""The ``KEEL`` settings dict, validated once, and the objects built lazily from it.

In ``settings.py``::

    KEEL = {
        "APPLICATION": "shop.application:build",     # an Application, or a factory(store_url)
        "EVENT_STORE": "sqlite:///var/shop-events.db",
        "READMODELS_DATABASE": "readmodels",         # the DATABASES alias of the read models
        "PROJECTIONS": ["projections.customers:CustomersProjection"],
    }

Environment variables override the dict: ``KEEL_EVENT_STORE=kafka://127.0.0.1:19092``,
``KEEL_READMODELS_URL=postgresql://...``, ``KEEL_PROJECTIONS='["mod:Cls"]'`` (JSON for lists).
Nothing here opens a store or a database until first used: ``AppConfig.ready()`` never touches
them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from framework import loading
from framework.application import Application
from framework.commands import Command
from framework.errors import ConfigurationError

if TYPE_CHECKING:
    import sqlalchemy

    from framework.projection import Projection

__all__ = [
    "KeelSettings",
    "command_classes",
    "consumer_group",
    "django_database",
    "get_application",
    "get_engine",
    "get_projection",
    "get_projections",
    "get_settings",
    "import_object",
    "pick_process_workers",
    "reset",
]


class KeelSettings(BaseSettings):
    """Everything the Django integration needs, from ``settings.KEEL`` and ``KEEL_*`` env vars
    (the environment wins)."""

    model_config = SettingsConfigDict(
        env_prefix="KEEL_", case_sensitive=False, extra="forbid", frozen=True
    )

    application: str = Field(
        description="Dotted path ('pkg.module:name' or 'pkg.module.name') to an Application, "
        "or to a factory called with the event store URL that returns one."
    )
    event_store: str | None = Field(
        None,
        description="Event store URL (sqlite:///..., postgresql://..., kafka://host:port); "
        "None lets the Application choose (KEEL_<NAME>_EVENT_STORE / KEEL_EVENT_STORE).",
    )
    readmodels_database: str = Field(
        "readmodels", description="The DATABASES alias that holds the read-model tables."
    )
    readmodels_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the read-model database; by default derived from "
        "DATABASES[readmodels_database].",
    )
    projections: list[str] = Field(
        default_factory=list,
        description="Dotted paths to Projection classes (or instances) the workers run.",
    )
    process_managers: list[str] = Field(
        default_factory=list,
        description="Dotted paths to factories of framework.process.ProcessWorker (called "
        "with engine=<the read-model engine>): the process managers manage.py "
        "run_process_managers runs and the admin's process-managers page shows.",
    )
    consumer_group_prefix: str = Field(
        "",
        max_length=100,
        description="Prepended to each projection's name to form its Kafka consumer group; "
        "empty (the default): the group is '<application>.<projection>'.",
    )
    cdc_feeds: list[str] = Field(
        default_factory=list,
        description="'module:callable' factories of the framework.cdc change feeds that the "
        "admin's Change feeds page shows (e.g. 'sample_app.crm:feed').",
    )
    alembic_config: str = Field(
        "alembic.ini",
        description="The Alembic configuration of the read models (relative to BASE_DIR).",
    )
    wait_timeout: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Seconds the admin and the query views wait for a "
        "read model to catch up with a command (read-your-writes).",
    )

    api_prefix: str = Field(
        "/api/",
        max_length=200,
        description="Path prefix of the JSON API: error answers under it are JSON "
        "(framework.contrib.django.error_pages).",
    )

    metrics_exporter: Literal["none", "prometheus"] = Field(
        "none",
        description="'prometheus': install the OpenTelemetry SDK's meter provider with a "
        "Prometheus reader, served by the /metrics view (and --metrics-port of the workers and "
        "writers); needs the [metrics] extra. 'none': the application installs its own SDK, "
        "or nothing is measured.",
    )

    health_stall_after: float = Field(
        30.0,
        gt=0,
        description="Seconds a projection may lag without applying an event before its "
        "workers count as stopped (health: not ready).",
    )

    @field_validator("application")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if "." not in value and ":" not in value:
            raise ValueError("must be a dotted path such as 'shop.application:build'")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides settings.KEEL (twelve-factor: deploys change env, not code).
        return env_settings, init_settings


_lock = threading.RLock()
_state: dict[str, Any] = {}


def _cached(key: str, build: Callable[[], Any]) -> Any:
    found = _state.get(key)
    if found is None:
        with _lock:
            found = _state.get(key)
            if found is None:
                found = _state[key] = build()
    return found


def get_settings() -> KeelSettings:
    """The validated ``KEEL`` settings (cached until the settings change)."""

    def build() -> KeelSettings:
        raw = getattr(django_settings, "KEEL", None)
        if not isinstance(raw, Mapping):
            raise ConfigurationError(
                "settings.KEEL is missing: add KEEL = {'APPLICATION': 'pkg.module:app', ...} "
                "to your Django settings"
            )
        try:
            return KeelSettings(**{str(k).lower(): v for k, v in raw.items()})
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']).upper() or 'KEEL'}: {e['msg']}"
                for e in error.errors(include_url=False)
            )
            raise ConfigurationError(f"settings.KEEL is invalid: {problems}") from None

    settings: KeelSettings = _cached("settings", build)
    return settings


def import_object(
    path: str,
    what: str = "object settings.KEEL names",
    example: str = "sample_app.shop.application:build",
) -> Any:
    """Import ``'pkg.module:name'`` or ``'pkg.module.name'``; ConfigurationError (saying what
    to pass) when it cannot be imported."""
    return loading.import_object(path, what=what, example=example, dotted=True)


def get_application() -> Application:
    """The Application named by ``KEEL['APPLICATION']``, on the configured store; built on
    first use and shared by every request of the process."""

    def build() -> Application:
        settings = get_settings()
        target = import_object(settings.application, "application (KEEL['APPLICATION'])")
        if isinstance(target, Application):
            return target
        if callable(target):
            app = target(settings.event_store) if settings.event_store else target()
            if isinstance(app, Application):
                return app
        raise ConfigurationError(
            f"KEEL['APPLICATION'] = {settings.application!r} is neither an Application nor a "
            "factory returning one"
        )

    app: Application = _cached("application", build)
    return app


def command_classes() -> dict[str, type[Command]]:
    """Every command the application handles, by name, without opening the event store when
    ``APPLICATION`` is a factory (it is built once more on an in-memory store)."""

    def build() -> dict[str, type[Command]]:
        if "application" in _state:
            return dict(_state["application"].command_types)
        target = import_object(get_settings().application, "application (KEEL['APPLICATION'])")
        if isinstance(target, Application):
            return dict(target.command_types)
        probe = target("memory://")
        try:
            return dict(probe.command_types)
        finally:
            probe.close()

    found: dict[str, type[Any]] = _cached("commands", build)
    return found


def django_database(url: str, **extra: Any) -> dict[str, Any]:
    """A ``DATABASES`` entry for a SQLAlchemy URL (``sqlite:///path`` or
    ``postgresql://user:pw@host:port/db``), so one URL configures both."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": parsed.database, **extra}
    if backend == "postgresql":
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": parsed.database,
            "USER": parsed.username or "",
            "PASSWORD": parsed.password or "",
            "HOST": parsed.host or "",
            "PORT": str(parsed.port or ""),
            **extra,
        }
    raise ConfigurationError(f"no Django database backend for {url!r} (use sqlite or postgresql)")


def readmodels_url() -> str:
    """The SQLAlchemy URL of the read models: ``KEEL['READMODELS_URL']``, else built from the
    Django database alias (so tests, which rename it, point both at the same file)."""
    settings = get_settings()
    if settings.readmodels_url:
        return settings.readmodels_url
    from django.db import connections

    alias = settings.readmodels_database
    if alias not in django_settings.DATABASES:
        raise ConfigurationError(
            f"DATABASES has no {alias!r} alias for the read models: add one, or set "
            "KEEL['READMODELS_URL']"
        )
    db = connections[alias].settings_dict
    engine = db["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    if engine.endswith("postgresql"):
        from sqlalchemy.engine import URL

        return URL.create(
            "postgresql+psycopg",
            username=db.get("USER") or None,
            password=db.get("PASSWORD") or None,
            host=db.get("HOST") or None,
            port=int(db["PORT"]) if db.get("PORT") else None,
            database=db["NAME"],
        ).render_as_string(hide_password=False)
    raise ConfigurationError(f"read models on {engine} are not supported (sqlite, postgresql)")


def get_engine() -> sqlalchemy.Engine:
    """The SQLAlchemy engine of the read-model database."""

    def build() -> sqlalchemy.Engine:
        from framework.database import create_engine

        return create_engine(readmodels_url())

    engine: sqlalchemy.Engine = _cached("engine", build)
    return engine


def get_projections() -> dict[str, Projection]:
    """Every configured projection, by name."""

    def build() -> dict[str, Projection]:
        found: dict[str, Projection] = {}
        for path in get_settings().projections:
            target = import_object(
                path, "projection (KEEL['PROJECTIONS'])", "projections.orders:OrdersProjection"
            )
            projection = target() if isinstance(target, type) else target
            name = getattr(projection, "name", None)
            if not name:
                raise ConfigurationError(f"{path!r} is not a Projection (it has no name)")
            if name in found:
                raise ConfigurationError(f"two projections are named {name!r}")
            found[name] = projection
        return found

    projections: dict[str, Projection] = _cached("projections", build)
    return projections


def get_process_workers() -> dict[str, Any]:
    """Every configured process manager's worker (``KEEL["PROCESS_MANAGERS"]``), by the
    manager's name; built once, on the read-model engine. Building one opens no connection."""

    def build() -> dict[str, Any]:
        from framework.process import ProcessWorker

        found: dict[str, ProcessWorker] = {}
        for path in get_settings().process_managers:
            target = import_object(
                path,
                "process manager (KEEL['PROCESS_MANAGERS'])",
                "sample_app.payments.service:payment_process_worker",
            )
            worker = target if isinstance(target, ProcessWorker) else target(engine=get_engine())
            if not isinstance(worker, ProcessWorker):
                raise ConfigurationError(f"{path!r} did not give a ProcessWorker")
            if worker.pm.name in found:
                raise ConfigurationError(f"two process managers are named {worker.pm.name!r}")
            found[worker.pm.name] = worker
        return found

    workers: dict[str, Any] = _cached("process_workers", build)
    return workers


def pick_process_workers(names: Sequence[str] | None = None) -> dict[str, Any]:
    """The configured process managers' workers named ``names`` (default: every one), in
    that order; a ConfigurationError names the unknown ones and the known ones, or says none
    is configured."""
    workers = get_process_workers()
    if not workers:
        raise ConfigurationError(
            "no process manager is configured: list their worker factories in "
            "KEEL['PROCESS_MANAGERS']"
        )
    chosen = list(names or sorted(workers))
    unknown = [n for n in chosen if n not in workers]
    if unknown:
        raise ConfigurationError(
            f"unknown process manager {unknown} (known: {', '.join(sorted(workers))})"
        )
    return {n: workers[n] for n in chosen}


def get_cdc_feeds() -> dict[str, Any]:
    """The configured change feeds (``CDC_FEEDS``), by factory path; a factory that fails
    maps to its error, so the admin can show it beside the others."""

    def build() -> dict[str, Any]:
        from framework.cdc.__main__ import load_feed

        found: dict[str, Any] = {}
        for path in get_settings().cdc_feeds:
            try:
                found[path] = load_feed(path)
            except Exception as error:  # shown on the page; the other feeds still work
                found[path] = error
        return found

    feeds: dict[str, Any] = _cached("cdc_feeds", build)
    return feeds


def consumer_group(name: str) -> str:
    """The Kafka consumer group of projection ``name``'s workers: ``<application>.<name>``
    (``framework.worker.consumer_group``), or ``CONSUMER_GROUP_PREFIX + name`` when a prefix
    is configured."""
    prefix = get_settings().consumer_group_prefix
    if prefix:
        return prefix + name
    from framework.worker import consumer_group as default_group

    return default_group(get_application().name, name)


def get_projection(name: str) -> Projection:
    """One configured projection; raises ConfigurationError naming the known ones."""
    projections = get_projections()
    try:
        return projections[name]
    except KeyError:
        known = ", ".join(sorted(projections)) or "none"
        raise ConfigurationError(f"no projection is named {name!r} (known: {known})") from None


def reset() -> None:
    """Forget everything built from the settings, closing the store and the engine (tests call
    this; it also runs when ``KEEL`` or ``DATABASES`` change under ``override_settings``)."""
    with _lock:
        state = dict(_state)
        _state.clear()
    from framework.contrib.django import observability

    observability.reset()  # its lag sampler holds the old store and engine
    app = state.get("application")
    if app is not None:
        app.close()
    engine = state.get("engine")
    if engine is not None:
        engine.dispose()


@receiver(setting_changed)
def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in {"KEEL", "DATABASES"}:
        reset()
