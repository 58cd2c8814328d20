"""The Django app: ``INSTALLED_APPS += ["framework.contrib.django"]`` (label ``keel``)."""

from __future__ import annotations

import logging
from typing import Any

from django.apps import AppConfig
from django.apps import apps as global_apps
from django.db import DEFAULT_DB_ALIAS, router
from django.db.models.signals import post_migrate

log = logging.getLogger(__name__)


class KeelConfig(AppConfig):
    """Registers the system checks and the command permissions hook. ``ready()`` never touches
    a database or the event store: it runs for every management command."""

    name = "framework.contrib.django"
    label = "keel"
    verbose_name = "Event sourcing"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        from framework.contrib.django import checks

        checks.register()
        post_migrate.connect(
            create_command_permissions,
            sender=self,
            dispatch_uid="keel.create_command_permissions",
        )


def create_command_permissions(
    app_config: AppConfig,
    verbosity: int = 2,
    using: str = DEFAULT_DB_ALIAS,
    apps: Any = global_apps,
    **kwargs: Any,
) -> None:
    """After ``migrate``: one ``keel.execute_<command>`` permission per command of the
    application, as Django creates ``add_``/``change_`` permissions per model."""
    from django.contrib.auth.models import Permission
    from django.contrib.contenttypes.management import create_contenttypes
    from django.contrib.contenttypes.models import ContentType

    from framework.contrib.django.conf import command_classes
    from framework.contrib.django.models import Command, execute_codename
    from framework.errors import FrameworkError

    if not router.allow_migrate_model(using, Permission):
        return
    try:
        commands = command_classes()
    except FrameworkError as error:
        log.warning("no command permissions created: %s", error)
        return
    create_contenttypes(app_config, verbosity=verbosity, using=using, apps=apps)
    content_type = ContentType.objects.db_manager(using).get_for_model(
        Command, for_concrete_model=False
    )
    existing = set(
        Permission.objects.using(using)
        .filter(content_type=content_type)
        .values_list("codename", flat=True)
    )
    new = [
        Permission(
            content_type=content_type,
            codename=execute_codename(name),
            name=f"Can execute {name}"[:255],
        )
        for name in sorted(commands)
        if execute_codename(name) not in existing
    ]
    Permission.objects.using(using).bulk_create(new)
    if verbosity >= 2:
        for permission in new:
            print(f"Adding permission '{permission}'")
