"""The shop's read models as Django models, generated from the projections' SQLAlchemy tables
(one definition; Django never migrates them: ``MIGRATION_MODULES = {"shop": None}``)."""

from __future__ import annotations

from framework.contrib.django.readmodels import django_model
from projections import customers, order_history, orders, sales

__all__ = ["Customer", "Order", "OrderEvent", "SalesPerHour"]

Customer = django_model(
    customers.customers,
    app_label="shop",
    name="Customer",
    module=__name__,
    ordering=["name"],
)
Order = django_model(
    orders.orders,
    app_label="shop",
    name="Order",
    module=__name__,
    verbose_name="order (with customer)",
    verbose_name_plural="orders (with customer)",
    ordering=["-placed_at"],
    display=lambda o: f"order {str(o.order_id)[:8]} of {o.customer_name or o.customer_id}",
)
SalesPerHour = django_model(
    sales.sales_per_hour,
    app_label="shop",
    name="SalesPerHour",
    module=__name__,
    verbose_name="sales per hour",
    verbose_name_plural="sales per hour",
    ordering=["-window_start"],
    display=lambda s: f"{s.window_start:%Y-%m-%d %H:00} UTC",
)
OrderEvent = django_model(
    order_history.order_events,
    app_label="shop",
    name="OrderEvent",
    module=__name__,
    verbose_name="order event",
    ordering=["order_id", "version"],
)
