"""Table-less models that give the admin a place for commands, projections and change feeds,
and carry their permissions.

Each command ``C`` of the application gets the permission ``keel.execute_<c>`` (lower-cased
command type, e.g. ``keel.execute_placeorder``), created after ``migrate`` like Django's own
model permissions (see :func:`framework.contrib.django.apps.create_command_permissions`).
"""

from __future__ import annotations

from django.db import models


class Command(models.Model):
    """Not a table: the content type that command permissions hang on."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [("view_events", "Can view the event history of aggregates")]
        verbose_name = "command"
        verbose_name_plural = "commands"


class Projection(models.Model):
    """Not a table: the admin's projections page and its permissions."""

    class Meta:
        managed = False
        default_permissions = ("view",)
        permissions = [
            ("rebuild_projection", "Can rebuild a projection"),
            ("redrive_deadletter", "Can re-drive dead letters of a projection"),
        ]
        verbose_name = "projection"
        verbose_name_plural = "projections"


class ChangeFeed(models.Model):
    """Not a table: the admin's change feeds page (framework.cdc) and its permissions."""

    class Meta:
        managed = False
        default_permissions = ("view",)
        permissions = [("redrive_cdc", "Can re-drive or discard a change feed's dead letters")]
        verbose_name = "change feed"
        verbose_name_plural = "change feeds"


def execute_codename(command_type: str) -> str:
    """The codename of the permission to execute ``command_type`` (without the app label)."""
    return f"execute_{command_type.lower()}"


def execute_permission(command_type: str) -> str:
    """The full permission name for ``user.has_perm``: ``keel.execute_<type>``."""
    return f"keel.{execute_codename(command_type)}"


class Stream(models.Model):
    """Not a table: the admin's page of streaming projections (stream time, late events).
    Viewing it takes ``keel.view_projection``, re-driving late events
    ``keel.redrive_deadletter``."""

    class Meta:
        managed = False
        default_permissions = ()
        verbose_name = "stream (late events)"
        verbose_name_plural = "streams (late events)"
