"""The shop's read models in the admin: read-only lists with search and filters, commands
offered on a row only when its state allows them, and admin actions that issue commands on the
selected rows (asking for a reason or a carrier once, and confirming the destructive ones)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from framework.contrib.django.admin import ReadModelAdmin, RowCommand, command_action
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


def _active(customer: Any) -> bool:
    return bool(customer.status == "active")


def _open(order: Any) -> bool:
    return bool(order.status == "open")


def _confirmed(order: Any) -> bool:
    return bool(order.status == "confirmed")


def _cancellable(order: Any) -> bool:
    return order.status in {"open", "confirmed"}


def _amount(line: dict[str, Any]) -> str:
    try:
        return str(Decimal(str(line["unit_price"])) * int(line["quantity"]))
    except (KeyError, ValueError, ArithmeticError):
        return ""


def _search_by_short_id(
    queryset: QuerySet[Any], term: str, field: str
) -> tuple[QuerySet[Any], bool]:
    """The lists show ids by their first 8 hex digits: let people search by what they see."""
    digits = term.strip().lower().replace("-", "")
    if 4 <= len(digits) <= 32 and all(c in "0123456789abcdef" for c in digits):
        return queryset.filter(**{f"{field}__startswith": digits}), True
    return queryset.none(), False


@admin.register(models.Customer)
class CustomerAdmin(ReadModelAdmin):
    aggregate_type = "Customer"
    list_display = ["name", "email", "city", "country", "status", "registered", "history_link"]
    list_filter = ["status", "country"]
    search_fields = ["name", "email", "city", "postcode"]
    ordering = ["name"]
    date_hierarchy = "registered_at"
    fields = [
        "name",
        "email",
        "street",
        "postcode",
        "city",
        "country",
        "status",
        "registered_at",
        "updated_at",
        "orders_link",
        "customer_id",
        "version",
    ]
    actions = [
        command_action(
            DeactivateCustomer,
            lambda c: {"customer_id": c.customer_id},
            description="Deactivate selected customers",
            when=_active,
            parameters=["reason"],
            confirm=True,
        )
    ]
    chooser_filters = {  # the customer chooser offers whom the command can apply to
        "PlaceOrder": {"status": "active"},
        "ChangeCustomerAddress": {"status": "active"},
        "DeactivateCustomer": {"status": "active"},
    }
    row_commands = [
        RowCommand(PlaceOrder, "customer_id", when=_active),
        RowCommand(ChangeCustomerAddress, "customer_id", when=_active),
        RowCommand(DeactivateCustomer, "customer_id", when=_active, destructive=True),
    ]

    @admin.display(description="registered", ordering="registered_at")
    def registered(self, obj: Any) -> str:
        return f"{obj.registered_at:%Y-%m-%d}"

    @admin.display(description="orders")
    def orders_link(self, obj: Any) -> str:
        url = reverse("admin:shop_order_changelist")
        return format_html('<a href="{}?customer_id={}">orders of {}</a>', url, obj.pk, obj.name)


@admin.register(models.Order)
class OrderAdmin(ReadModelAdmin):
    aggregate_type = "Order"
    list_display = [  # narrow columns: the list fits a 1400 px window
        "short_id",
        "customer_link",
        "country",
        "status",
        "lines_short",
        "total",
        "placed",
        "history_link",
    ]
    list_filter = ["status", "customer_country", "gift_wrap", "carrier"]
    search_fields = ["customer_name", "customer_city", "tracking_number"]
    ordering = ["-placed_at"]
    date_hierarchy = "placed_at"
    list_per_page = 50
    fields = [
        "short_id",
        "status",
        "customer_link",
        "customer_city",
        "customer_country",
        "lines_table",
        "total",
        "gift_wrap",
        "requested_delivery",
        "carrier",
        "tracking_number",
        "placed_at",
        "confirmed_at",
        "shipped_at",
        "cancelled_at",
        "updated_at",
        "order_id",
        "version",
    ]
    actions = [
        command_action(
            ConfirmOrder,
            lambda o: {"order_id": o.order_id},
            description="Confirm selected orders",
            when=_open,
        ),
        command_action(
            ShipOrder,
            lambda o: {"order_id": o.order_id},
            description="Ship selected orders",
            when=_confirmed,
            parameters=["carrier"],
        ),
        command_action(
            CancelOrder,
            lambda o: {"order_id": o.order_id},
            description="Cancel selected orders",
            when=_cancellable,
            parameters=["reason", "note"],
            confirm=True,
        ),
    ]
    chooser_filters = {
        "AddOrderLine": {"status": "open"},
        "RemoveOrderLine": {"status": "open"},
        "ConfirmOrder": {"status": "open"},
        "ShipOrder": {"status": "confirmed"},
        "CancelOrder": {"status__in": ["open", "confirmed"]},
    }
    row_commands = [
        RowCommand(AddOrderLine, "order_id", when=_open),
        RowCommand(RemoveOrderLine, "order_id", when=lambda o: _open(o) and o.line_count > 1),
        RowCommand(ConfirmOrder, "order_id", when=_open),
        RowCommand(ShipOrder, "order_id", when=_confirmed),
        RowCommand(CancelOrder, "order_id", when=_cancellable, destructive=True),
    ]

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        found, duplicates = super().get_search_results(request, queryset, search_term)
        by_id, _ = _search_by_short_id(queryset, search_term, "order_id")
        if search_term.strip():
            return queryset.filter(
                Q(pk__in=found.values("pk")) | Q(pk__in=by_id.values("pk"))
            ), duplicates
        return found, duplicates

    @admin.display(description="country", ordering="customer_country")
    def country(self, obj: Any) -> str:
        return str(obj.customer_country or "")

    @admin.display(description="lines", ordering="line_count")
    def lines_short(self, obj: Any) -> int:
        return int(obj.line_count)

    @admin.display(description="placed", ordering="placed_at")
    def placed(self, obj: Any) -> str:
        return f"{obj.placed_at:%Y-%m-%d %H:%M}"

    @admin.display(description="order", ordering="order_id")
    def short_id(self, obj: Any) -> str:
        return str(obj.order_id)[:8]

    @admin.display(description="customer", ordering="customer_name")
    def customer_link(self, obj: Any) -> str:
        url = reverse("admin:shop_customer_change", args=[obj.customer_id])
        return format_html(
            '<a href="{}" style="white-space:nowrap">{}</a>',
            url,
            obj.customer_name or str(obj.customer_id)[:8],
        )

    @admin.display(description="lines")
    def lines_table(self, obj: Any) -> str:
        rows = format_html_join(
            "",
            '<tr><td>{}</td><td style="text-align:right">{}</td>'
            '<td style="text-align:right">{}</td><td style="text-align:right">{}</td></tr>',
            (
                (
                    line.get("product", ""),
                    line.get("quantity", ""),
                    line.get("unit_price", ""),
                    _amount(line),
                )
                for line in (obj.lines or [])
            ),
        )
        return format_html(
            '<table class="keel-lines"><thead><tr><th>Product</th><th>Quantity</th>'
            "<th>Unit price</th><th>Amount</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )


@admin.register(models.SalesPerHour)
class SalesPerHourAdmin(ReadModelAdmin):
    list_display = ["hour", "orders", "revenue", "cancelled", "late_events", "closed"]
    ordering = ["-window_start"]
    date_hierarchy = "window_start"

    @admin.display(description="hour (UTC)", ordering="window_start")
    def hour(self, obj: Any) -> str:
        return f"{obj.window_start:%Y-%m-%d %H:00}"

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> Any:
        from sample_app.shop.charts import daily_chart, sales_chart

        charts = {"sales_chart": sales_chart(request, self), "daily_chart": daily_chart()}
        return super().changelist_view(request, {**(extra_context or {}), **charts})
