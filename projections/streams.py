"""The shop's other stream tables (:mod:`framework.streaming`).

=========================  =====================================================================
``shop_shopping_sessions`` a session window: a customer's orders placed less than 30 minutes
                           apart form one shopping session
``shop_unshipped_orders``  an interval join: confirmed orders not shipped within 24 hours (a
                           trigger for a reminder), written once the 24 hours are over
=========================  =====================================================================

Sales per hour and per day are :mod:`projections.sales`, orders with their customer
:mod:`projections.orders`.
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from framework.streaming import Count, IntervalJoin, Session, StreamProjection, Windowed
from sample_app.shop.domain import Order

metadata = sa.MetaData()


class ShopStreams(StreamProjection):
    name = "shop_streams"
    version = 2  # 1 also held the twins of sales and orders, now those projections themselves
    metadata = metadata

    sessions = Windowed(
        "shop_shopping_sessions",
        metadata,
        window=Session(gap=timedelta(minutes=30)),
        key={"customer_id": (sa.Uuid(), lambda e: e.customer_id)},
        aggregates={"orders": Count()},
        contributes=Order.Placed,
        contribution_id=lambda e: e.originator_id,
    )
    unshipped = IntervalJoin(
        "shop_unshipped_orders",
        metadata,
        left=Order.Confirmed,
        right=Order.Shipped,
        key=("order_id", sa.Uuid(), lambda e: e.originator_id),
        within=timedelta(hours=24),
    )
