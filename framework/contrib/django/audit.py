"""Commands in Django's admin log: every executed command becomes a ``LogEntry``, so it shows in
the admin's *Recent actions* and in the *History* of the record it changed.

The events stay the record of what happened (with who and why in their metadata); the log entry
is the admin's own index of it, written after the command succeeded and never able to fail it.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from django.apps import apps
from django.http import HttpRequest

from framework.application import CommandResult
from framework.commands import Command

__all__ = ["log_command", "model_for_aggregate"]

log = logging.getLogger(__name__)


def model_for_aggregate(aggregate_type: str | None) -> type[Any] | None:
    """The read-model Django model whose admin shows aggregates of ``aggregate_type``."""
    if not aggregate_type or not apps.is_installed("django.contrib.admin"):
        return None
    from django.contrib import admin

    from framework.contrib.django.admin import ReadModelAdmin

    for model, model_admin in admin.site._registry.items():
        if isinstance(model_admin, ReadModelAdmin) and model_admin.aggregate_type == aggregate_type:
            return model
    return None


def log_command(
    request: HttpRequest, command: Command, result: CommandResult, aggregate_type: str | None
) -> None:
    """Record ``command`` in the admin log (ADDITION when it created the aggregate, else
    CHANGE); nothing for a replay, an anonymous request or a project without the admin."""
    user = getattr(request, "user", None)
    if result.replayed or user is None or not user.is_authenticated:
        return
    if not apps.is_installed("django.contrib.admin"):
        return
    from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
    from django.contrib.contenttypes.models import ContentType

    from framework.contrib.django.models import Command as CommandModel

    try:
        model = model_for_aggregate(aggregate_type) or CommandModel
        content_type = ContentType.objects.get_for_model(model, for_concrete_model=False)
        aggregate_id: UUID | None = result.aggregate_id
        created = aggregate_id is not None and result.versions.get(aggregate_id) == 1
        what = f"{aggregate_type or 'record'} {str(aggregate_id)[:8]}" if aggregate_id else ""
        LogEntry.objects.create(
            user_id=user.pk,
            content_type=content_type,
            object_id=str(aggregate_id) if aggregate_id else None,
            object_repr=(f"{what}: {command.verbose_name}" if what else command.verbose_name)[:200],
            action_flag=ADDITION if created else CHANGE,
            change_message=f"{command.verbose_name} (command {result.command_id})",
        )
    except Exception:  # the command is done; a log entry that cannot be written must not undo it
        log.exception("could not record %s in the admin log", command.command_type)
