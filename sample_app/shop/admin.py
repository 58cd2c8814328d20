"""The shop's read models in the admin: read-only lists with search and filters, and admin
actions that issue commands on the selected rows."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from framework.contrib.django.admin import ReadModelAdmin, command_action
from sample_app.shop import models
from sample_app.shop.commands import (
    AddOrderLine,
    CancelOrder,
    ChangeCustomerAddress,
    ConfirmOrder,
    DeactivateCustomer,
    PlaceOrder,
    RemoveOrderLine,
    ShipOrder,
)


@admin.register(models.Customer)
class CustomerAdmin(ReadModelAdmin):
    aggregate_type = "Customer"
    list_display = ["name", "email", "city", "country", "status", "registered_at", "history_link"]
    list_filter = ["status", "country"]
    search_fields = ["name", "email", "city", "postcode"]
    ordering = ["name"]
    date_hierarchy = "registered_at"
    actions = [
        command_action(
            DeactivateCustomer,
            lambda c: {"customer_id": c.customer_id, "reason": "deactivated in the admin"},
            description="Deactivate selected customers",
        )
    ]
    row_commands = [
        (PlaceOrder, "customer_id"),
        (ChangeCustomerAddress, "customer_id"),
        (DeactivateCustomer, "customer_id"),
    ]


@admin.register(models.Order)
class OrderAdmin(ReadModelAdmin):
    aggregate_type = "Order"
    list_display = [
        "short_id",
        "customer_name",
        "customer_country",
        "status",
        "line_count",
        "total",
        "placed_at",
        "confirmed_at",
        "history_link",
    ]
    list_filter = ["status", "customer_country", "gift_wrap", "carrier"]
    search_fields = ["customer_name", "customer_city", "tracking_number"]
    ordering = ["-placed_at"]
    date_hierarchy = "placed_at"
    actions = [
        command_action(
            ConfirmOrder, lambda o: {"order_id": o.order_id}, description="Confirm selected orders"
        ),
        command_action(
            ShipOrder, lambda o: {"order_id": o.order_id}, description="Ship selected orders"
        ),
        command_action(
            CancelOrder,
            lambda o: {"order_id": o.order_id, "reason": "other", "note": "cancelled in the admin"},
            description="Cancel selected orders",
        ),
    ]
    row_commands = [
        (AddOrderLine, "order_id"),
        (RemoveOrderLine, "order_id"),
        (ConfirmOrder, "order_id"),
        (ShipOrder, "order_id"),
        (CancelOrder, "order_id"),
    ]

    @admin.display(description="order", ordering="order_id")
    def short_id(self, obj: Any) -> str:
        return str(obj.order_id)[:8]


@admin.register(models.SalesPerHour)
class SalesPerHourAdmin(ReadModelAdmin):
    list_display = ["hour", "orders", "revenue", "cancelled"]
    ordering = ["-hour"]
    date_hierarchy = "hour"
