"""What a hook that runs as a window closes (``Windowed(on_close=...)``) or as an interval
join's row is left unmatched (``IntervalJoin(on_unmatched=...)``) is given."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from framework.projection import Projection

__all__ = ["CloseContext", "CloseHook"]


class CloseContext:
    """What an ``on_close`` hook gets besides the row: the transaction's connection and an
    ``effect_id`` unique to the window (``uuid5`` of table, window and key) to key any effect
    by, so a rebuild or a second worker that closes the same window again changes nothing."""

    def __init__(self, conn: sa.Connection, effect_id: uuid.UUID, projection: Projection) -> None:
        self.conn = conn
        self.effect_id = effect_id
        self.projection = projection


CloseHook = Callable[[dict[str, Any], CloseContext], None]
"""The shape of ``Windowed(on_close=...)`` and ``IntervalJoin(on_unmatched=...)``: the row as a
dict and a :class:`CloseContext`. It runs inside the projection's transaction, once per window
(or unmatched row) in every history; key any effect by ``ctx.effect_id`` (an outbox row, a
command id) so a rebuild or a second close adds nothing: the trigger of a process manager."""
