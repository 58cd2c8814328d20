"""Each order's event history: version, type, payload, metadata and time of every event."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from framework.codec import EventEnvelope
from framework.projection import Projection, handles
from sample_app.shop.domain import Order

metadata = sa.MetaData()

order_events = sa.Table(
    "shop_order_events",
    metadata,
    sa.Column("order_id", sa.Uuid, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("event_type", sa.String(200), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.Column("user", sa.String(150), nullable=True),
    sa.Column("correlation_id", sa.Uuid, nullable=True),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("position", sa.String(40), nullable=False),
)


class OrderHistoryProjection(Projection):
    name = "order_history"
    version = 1
    metadata = metadata
    order_events = order_events

    @handles(
        Order.Placed,
        Order.LineAdded,
        Order.LineRemoved,
        Order.Confirmed,
        Order.Shipped,
        Order.Cancelled,
    )
    def recorded(self, event: Any, conn: Connection, envelope: EventEnvelope) -> None:
        payload = json.loads(envelope.recorded.state)
        conn.execute(
            self.order_events.insert().values(
                order_id=event.originator_id,
                version=event.originator_version,
                event_type=envelope.type_name,
                payload=payload.get("data", {}),
                meta=envelope.metadata.model_dump(mode="json", exclude_none=True),
                user=envelope.metadata.user,
                correlation_id=envelope.metadata.correlation_id,
                occurred_at=event.timestamp,
                position=f"{envelope.recorded.partition}:{envelope.recorded.offset}",
            )
        )
