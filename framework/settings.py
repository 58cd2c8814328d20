"""Settings read from the environment (pydantic-settings), with per-component prefixes.

Read-model databases: a projection named ``orders`` uses the first of
``KEEL_PROJECTION_ORDERS_DATABASE_URL``, ``KEEL_DATABASE_URL``, ``DATABASE_URL``, else the
embedded default ``sqlite:///var/read_models.db``. ``postgres://`` and ``postgresql://`` URLs
are given the psycopg 3 driver (``postgresql+psycopg://``).

Projection workers: ``KEEL_PROJECTION_BATCH_SIZE``, ``KEEL_PROJECTION_MAX_ATTEMPTS`` and the
other fields of :class:`ProjectionSettings`, each overridable per projection with
``KEEL_PROJECTION_<NAME>_<FIELD>`` (``KEEL_PROJECTION_ORDERS_BATCH_SIZE=50``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from framework.errors import ConfigurationError

__all__ = [
    "DEFAULT_DATABASE_URL",
    "ProjectionSettings",
    "database_url",
    "normalise_database_url",
    "projection_settings",
]

DEFAULT_DATABASE_URL = "sqlite:///var/read_models.db"
"""The embedded read-model database when nothing is configured."""


class ProjectionSettings(BaseSettings):
    """How a projection worker batches, retries and backs off. Every delay is in seconds."""

    model_config = SettingsConfigDict(env_prefix="KEEL_PROJECTION_", extra="ignore")

    batch_size: int = Field(
        1000, ge=1, description="most events read in one poll and applied in one SQL transaction"
    )
    poll_timeout: float = Field(0.5, gt=0, description="how long one poll of the feed may wait")
    max_attempts: int = Field(
        5, ge=1, description="tries of a failing event before it becomes a dead letter"
    )
    retry_initial: float = Field(0.1, ge=0, description="first backoff after a handler error")
    retry_max: float = Field(5.0, ge=0, description="cap of the handler-error backoff")
    outage_initial: float = Field(0.25, ge=0, description="first backoff after a DB outage")
    outage_max: float = Field(30.0, ge=0, description="cap of the DB-outage backoff")
    # Consumer-group membership (Kafka; the embedded stores have no group).
    session_timeout: float = Field(
        10.0,
        ge=1,
        description="a worker that stops heartbeating (killed, host gone) loses its partitions "
        "after this long (the broker allows 6-1800 s by default; kafka-python's own default is 45)",
    )
    heartbeat_interval: float = Field(
        2.0, gt=0, description="how often a worker heartbeats (well under session_timeout)"
    )
    max_poll_interval: float = Field(
        300.0,
        ge=1,
        description="a worker that does not poll for this long (a batch stuck retrying) is "
        "taken out of the group; its partitions move to the others",
    )
    instance_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="a stable identity per worker process (pod name, host-N) for Kafka static "
        "membership: a restarted worker gets its partitions back at once, without a rebalance",
    )

    @model_validator(mode="after")
    def _heartbeat_under_session(self) -> ProjectionSettings:
        if self.heartbeat_interval >= self.session_timeout:
            raise ValueError(
                f"heartbeat_interval ({self.heartbeat_interval}) must be below session_timeout "
                f"({self.session_timeout}); a third of it is usual"
            )
        return self


def _env_key(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).upper()


def projection_settings(
    name: str, environ: Mapping[str, str] | None = None, **overrides: Any
) -> ProjectionSettings:
    """The worker settings of projection ``name``: ``KEEL_PROJECTION_<NAME>_<FIELD>``, else
    ``KEEL_PROJECTION_<FIELD>``, else the defaults; ``overrides`` win over both."""
    env = os.environ if environ is None else environ
    prefix = f"KEEL_PROJECTION_{_env_key(name)}_"
    values: dict[str, Any] = {}
    for field in ProjectionSettings.model_fields:
        for key in (prefix + field.upper(), "KEEL_PROJECTION_" + field.upper()):
            if env.get(key):
                values[field] = env[key]
                break
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ProjectionSettings.model_validate(values)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
            for e in error.errors()
        )
        raise ConfigurationError(
            f"the worker settings of projection {name!r} are not valid ({problems}); fix the "
            f"{prefix}<FIELD> / KEEL_PROJECTION_<FIELD> variables or the options given"
        ) from error


def normalise_database_url(url: str) -> str:
    """Give bare PostgreSQL URLs the psycopg 3 driver SQLAlchemy should use."""
    for bare in ("postgres://", "postgresql://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare) :]
    return url


def database_url(projection: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The read-model database URL of ``projection`` (or the global one when ``None``)."""
    env = os.environ if environ is None else environ
    keys = ["KEEL_DATABASE_URL", "DATABASE_URL"]
    if projection:
        keys.insert(0, f"KEEL_PROJECTION_{_env_key(projection)}_DATABASE_URL")
    for key in keys:
        if env.get(key):
            return normalise_database_url(env[key])
    return DEFAULT_DATABASE_URL
