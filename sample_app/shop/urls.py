"""The shop's JSON API: queries over the read models, and commands.

=================================  ==============================================================
``GET  /api/customers/``           ``country=DE,FR``, ``status``, ``search`` (name contains),
                                   ``ordering=name|-registered_at|country``, ``limit``, ``offset``
``GET  /api/customers/<id>``       one customer (404 when unknown)
``GET  /api/orders/``              ``status=open,confirmed``, ``customer=<id>``, ``country``,
                                   ``ordering=-placed_at|total|customer_name|status``
``GET  /api/orders/<id>``          one order, with its customer's name and country
``GET  /api/orders/<id>/history``  the order's events (version, type, payload, metadata, time)
``GET  /api/sales/hourly``         a pull query over the hourly window: ``since``/``until``
                                   (window starts, ISO times), ``ends_by``, ``closed``,
                                   ``amended``, ``ordering=window_start|-revenue|...``
``GET  /api/sales/daily``          the same over sales per country per Zurich day, plus
                                   ``country=CH,DE``
``GET  /api/sales/hourly/events``  server-sent events: the matching rows, then each change
``GET  /api/sales/daily/events``   (same filters as the lists)
``POST /api/commands/<Type>``      execute a command (see framework.contrib.django.views)
=================================  ==============================================================

Every GET takes ``after=P:O,...`` (the ``after`` of a command's answer) to read your own writes.
Every view needs a logged-in user with the read model's view permission (``shop.view_customer``,
``shop.view_order``, ``shop.view_orderevent``, ``shop.view_salesperhour``; the daily sales
need ``shop.view_salesperhour`` too).
"""

from __future__ import annotations

import json
import uuid

from django.http import HttpRequest, HttpResponse
from django.urls import path

from framework.contrib.django.streams import push_view, window_query
from framework.contrib.django.views import Filter, ReadModelQuery, command_view, json_error
from projections import customers, order_history, orders
from projections.sales import SalesPerHourProjection
from sample_app.shop.domain import CustomerStatus, OrderStatus

customer_query = ReadModelQuery(
    table=customers.customers,
    key="customer_id",
    filters={
        "country": Filter("country", convert=str.upper),
        "status": Filter("status", choices=[s.value for s in CustomerStatus]),
        "search": Filter("name", lookup="icontains"),
    },
    ordering=["name", "registered_at", "country", "city"],
    default_ordering=["name"],
    projection="customers",
)

order_query = ReadModelQuery(
    table=orders.orders,
    key="order_id",
    filters={
        "status": Filter("status", choices=[s.value for s in OrderStatus]),
        "customer": Filter("customer_id"),
        "country": Filter("customer_country", convert=str.upper),
        "placed_since": Filter("placed_at", lookup="gte"),
    },
    ordering=["placed_at", "total", "customer_name", "status", "confirmed_at"],
    default_ordering=["-placed_at"],
    projection="orders",
)

history_query = ReadModelQuery(
    table=order_history.order_events,
    key="version",
    filters={"order": Filter("order_id")},
    ordering=["version"],
    default_ordering=["version"],
    projection="order_history",
    max_limit=500,
    default_limit=500,
)

sales_query = window_query(
    SalesPerHourProjection.hourly, projection="sales_per_hour", max_limit=24 * 31
)
daily_query = window_query(
    SalesPerHourProjection.daily,
    projection="sales_per_hour",
    filters={"country": Filter("country", convert=str.upper)},
    permission="shop.view_salesperhour",
    max_limit=400,
)


def order_history_view(request: HttpRequest, key: str) -> HttpResponse:
    """The events of one order, oldest first; 404 when the order has none."""
    refused = history_query.refuse(request)
    if refused is not None:
        return refused
    try:
        order_id = str(uuid.UUID(key[:100]))
    except ValueError:
        return json_error(404, f"no order has id {key[:100]!r}")
    query = request.GET.copy()
    query["order"] = order_id
    request.GET = query
    response = history_query.list_view(request)
    if response.status_code == 200 and json.loads(response.content)["count"] == 0:
        return json_error(404, f"no order has id {order_id}")
    return response


app_name = "shop"
urlpatterns = [
    path("customers/", customer_query.list_view, name="customers"),
    path("customers/<str:key>", customer_query.detail_view, name="customer"),
    path("orders/", order_query.list_view, name="orders"),
    path("orders/<str:key>", order_query.detail_view, name="order"),
    path("orders/<str:key>/history", order_history_view, name="order-history"),
    path("sales/hourly", sales_query.list_view, name="sales-hourly"),
    path("sales/hourly/events", push_view(sales_query), name="sales-hourly-events"),
    path("sales/daily", daily_query.list_view, name="sales-daily"),
    path("sales/daily/events", push_view(daily_query), name="sales-daily-events"),
    path("commands/<str:command_type>", command_view, name="command"),
]
