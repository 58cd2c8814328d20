from django.apps import AppConfig


class ShopConfig(AppConfig):
    """The shop's Django app: read-model models (generated, never migrated by Django), their
    admin, the query URLs and the ``seed_demo`` command."""

    name = "sample_app.shop"
    label = "shop"
    verbose_name = "Shop (read models)"
    default_auto_field = "django.db.models.BigAutoField"
